"""FITS: an image cube (N, H, W) / (N, C, H, W) or spectra (N, L) in one HDU, or a folder of
FITS stamps; pixel scale, bands and wavelength axis from the headers."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from deepfield._names import comma_list
from deepfield.data.importers._common import (_READ_ERRORS_HINT, _Plan, _array_rows, _existing,
                                              file_record, _is_name, _merge_catalog, _to_angstrom)
from deepfield.data.importers._readers import (_side_file_rows, _describe_hdus, _find_hdu, _has_hdu,
                                               _hdu_rows, _image_hdu, _open_fits, _read_catalog_file,
                                               _resolve_wavelength, _stamp_rows, _table_columns,
                                               _wavelength_from_table_hdu)
from deepfield.errors import InputError

def _header_get(headers, *keys):
    for header in headers:
        for key in keys:
            if key in header and header[key] not in (None, ""):
                return header[key]
    return None


def _angle_to_arcsec(value: float, unit: str | None) -> float:
    if not unit:
        return value * 3600.0
    import astropy.units as u

    try:
        return float((value * u.Unit(unit.strip())).to_value(u.arcsec))
    except (ValueError, u.UnitsError):
        return value * 3600.0


def pixel_scale_from_headers(headers) -> float | None:
    """Arcsec per pixel: sqrt(|det CD|), else sqrt(|det PC * CDELT|), else PIXSCALE."""
    for header in headers:
        unit = header.get("CUNIT1")
        cd = [header.get(k) for k in ("CD1_1", "CD1_2", "CD2_1", "CD2_2")]
        if any(v is not None for v in cd):
            c11, c12, c21, c22 = (float(v or 0.0) for v in cd)
            det = abs(c11 * c22 - c12 * c21)
            if det > 0:
                return _angle_to_arcsec(float(np.sqrt(det)), unit)
        if header.get("CDELT1") is not None:
            d1 = float(header["CDELT1"])
            d2 = float(header.get("CDELT2", d1))
            pc = [float(header.get(k, default)) for k, default in
                  (("PC1_1", 1.0), ("PC1_2", 0.0), ("PC2_1", 0.0), ("PC2_2", 1.0))]
            det = abs((pc[0] * pc[3] - pc[1] * pc[2]) * d1 * d2)
            if det > 0:
                return _angle_to_arcsec(float(np.sqrt(det)), unit)
    value = _header_get(headers, "PIXSCALE", "PIXSCAL1", "SECPIX", "SECPIX1")
    return None if value is None else float(value)


def bands_from_headers(headers, channels: int) -> tuple[str, ...]:
    numbered = []
    for i in range(1, channels + 1):
        value = _header_get(headers, f"BAND{i}", f"FILTER{i}")
        if value is None:
            break
        numbered.append(str(value).strip())
    if len(numbered) == channels:
        return tuple(numbered)
    value = _header_get(headers, "BAND", "FILTER")
    return () if value is None else comma_list(str(value))


def _header_wavelength(headers, length: int) -> np.ndarray | None:
    """A linear WAVE/AWAV axis 1 (CRVAL1 + (i + 1 - CRPIX1) * CDELT1), in Angstrom."""
    for header in headers:
        ctype = str(header.get("CTYPE1", "")).upper()
        if not ctype.startswith(("WAVE", "AWAV")) or "CRVAL1" not in header:
            continue
        step = header.get("CDELT1", header.get("CD1_1"))
        if step is None:
            continue
        pix = np.arange(length, dtype=np.float64) + 1.0 - float(header.get("CRPIX1", 1.0))
        return _to_angstrom(float(header["CRVAL1"]) + pix * float(step), header.get("CUNIT1"),
                            "the header wavelength axis")
    return None


def _plan_fits(source, options: Mapping[str, Any], stack: contextlib.ExitStack) -> _Plan:
    path = _existing(source)
    hdul = None
    if path.is_dir():
        x, stamp_headers = _stamp_rows(path, options.get("hdu"), "images")
        headers = [stamp_headers[0][1], stamp_headers[0][2]]
        plan = _Plan(x=x, files={str(path.resolve()): file_record(path)})
        channels = x.shape[1] if x.ndim == 4 else 1
        if "bands" not in options and channels == 1:
            seen = {}
            for stamp, h, h0 in stamp_headers:
                band = bands_from_headers([h, h0], 1)
                if band:
                    seen.setdefault(band, stamp.name)
            if len(seen) > 1:
                which = ", ".join(f"{f} ({b[0]})" for b, f in seen.items())
                raise InputError(f"stamps in {path} are in different bands: {which}; a store channel "
                                 "holds one band: import each band separately, or pass bands= to "
                                 "override the headers")
        plan.catalog["stamp_file"] = np.array([x.name_row(i) for i in range(len(x))], dtype=object)
    else:
        hdul = _open_fits(path, stack)
        hdu = _image_hdu(hdul, path, options.get("hdu"))
        x = _hdu_rows(hdu, path)
        headers = [hdu.header, hdul[0].header]
        plan = _Plan(x=x, files={str(path.resolve()): file_record(path)})

    channels = x.shape[1] if x.ndim == 4 else 1
    if x.ndim >= 3:
        plan.pixel_scale = pixel_scale_from_headers(headers)
        plan.header_bands = bands_from_headers(headers, channels)

    def in_file(key) -> bool:
        return hdul is not None and _is_name(key) and not isinstance(key, os.PathLike) \
            and _has_hdu(hdul, key) and not (isinstance(key, str) and Path(key).is_file())

    # catalog: an HDU of this file, a file, or (default) the first table HDU of this file
    cat = options.get("catalog")
    if cat is None and hdul is not None:
        tables = [i for i, h in enumerate(hdul) if not getattr(h, "is_image", True)]
        cat = tables[0] if tables else None
    if cat not in (None, "", False):
        if in_file(cat):
            from astropy.table import Table

            cat_hdu = _find_hdu(hdul, cat, path, "catalog")
            if getattr(cat_hdu, "is_image", True):
                raise InputError(f"{path} HDU {cat!r} is an image, not a catalog table; its HDUs: "
                                 f"{_describe_hdus(hdul)}")
            label = f"catalog {path} (HDU {cat_hdu.name})"
            try:
                table = Table.read(hdul, hdu=hdul.index_of(cat_hdu), mask_invalid=False)
            except Exception as err:
                raise InputError(f"{label}: cannot read it ({type(err).__name__}: {err}); "
                                 f"{_READ_ERRORS_HINT}") from None
            cols, units = _table_columns(table, label)
        else:
            cat_path = _existing(cat, "catalog")
            cols, units, label = _read_catalog_file(cat_path)
            plan.files[str(cat_path.resolve())] = file_record(cat_path)
        _merge_catalog(plan, cols, units, label)

    for what in ("psf", "ivar"):
        key = options.get(what)
        if key is None:
            continue
        if isinstance(key, np.ndarray):
            rows = _array_rows(key, "given as an array")
        elif in_file(key):
            rows = _hdu_rows(_image_hdu(hdul, path, key, min_ndim=2), path)
        else:
            rows = _side_file_rows(plan, key, what, stack)
        setattr(plan, what, rows)  # plan.psf or plan.ivar

    if x.ndim == 2:
        plan.wavelength = _resolve_wavelength(options.get("wavelength"), plan, path,
                                              lambda k: _fits_wavelength(hdul, k, path) if in_file(k) else None,
                                              stack)
        if plan.wavelength is None:
            plan.wavelength = _header_wavelength(headers, x.shape[1])
    elif "wavelength" in options:
        raise InputError(f"option 'wavelength' applies to spectra, but {x.label} of shape "
                         f"{x.shape} holds images")
    return plan


def _fits_wavelength(hdul, key, path: Path) -> np.ndarray:
    hdu = _find_hdu(hdul, key, path, "wavelength grid")
    if getattr(hdu, "is_image", False):
        return _to_angstrom(np.asarray(hdu.data).reshape(-1), hdu.header.get("BUNIT"),
                            f"{path} HDU {hdu.name}")
    return _wavelength_from_table_hdu(hdu, path)
