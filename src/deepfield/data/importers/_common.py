"""What every importer shares: lazily read rows, the plan of what to write, the checks of
that plan against the pixels, and the batch-by-batch writer (see the package docstring for the
conventions)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepfield._names import comma_list
from deepfield.data.store import Store, create_store
from deepfield.errors import DeepfieldError, InputError

_EXTENSIONS = {
    ".fits": "fits", ".fit": "fits", ".fts": "fits", ".fits.gz": "fits", ".fit.gz": "fits",
    ".fz": "fits", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".he5": "hdf5",
    ".npy": "numpy", ".npz": "numpy",
}

_FITS_SUFFIXES = tuple(k for k, v in _EXTENSIONS.items() if v == "fits")

_DEFAULT_BATCH_ROWS = 4096

_READ_ERRORS_HINT = "the file may be corrupt or truncated: re-write or re-download it"


class _Rows:
    """An array read lazily by row slices ``[start:stop]``; `label` says where it lives.

    `name_row(i)` names row `i` in messages (a stamp's file name, or "object i").
    """

    def __init__(self, shape: Sequence[int], read: Callable[[int, int], Any], label: str,
                 name_row: Callable[[int], str] | None = None):
        self.shape = tuple(int(s) for s in shape)
        self._read = read
        self.label = label
        self.name_row = name_row or (lambda i: f"object {i}")

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def read(self, start: int, stop: int) -> np.ndarray:
        try:
            return np.asarray(self._read(start, stop))
        except DeepfieldError:
            raise
        except Exception as err:  # astropy, h5py and numpy raise many types on damaged files
            raise InputError(f"{self.label}: cannot read rows {start}..{stop - 1} "
                             f"({type(err).__name__}: {err}); {_READ_ERRORS_HINT}") from None

    def read_all(self) -> np.ndarray:
        return self.read(0, self.shape[0]) if self.shape else self.read(0, 0)

    def with_channel_axis(self) -> "_Rows":
        """(N, H, W) -> (N, 1, H, W)."""
        return _Rows((self.shape[0], 1, *self.shape[1:]),
                     lambda a, b: self.read(a, b)[:, None], self.label, self.name_row)


def _array_rows(arr, label: str) -> _Rows:
    return _Rows(arr.shape, lambda a, b: arr[a:b], label)


@dataclass
class _Plan:
    x: _Rows
    catalog: dict[str, np.ndarray] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    catalog_label: str = ""
    bands: tuple[str, ...] = ()
    header_bands: tuple[str, ...] = ()
    pixel_scale: float | None = None
    wavelength: np.ndarray | None = None
    psf: _Rows | np.ndarray | None = None
    ivar: _Rows | None = None
    files: dict[str, Any] = field(default_factory=dict)
    extra_meta: dict[str, Any] = field(default_factory=dict)
    kind: str | None = None
    sample_shape: tuple[int, ...] = ()
    psf_shared: np.ndarray | None = None
    psf_rows: _Rows | None = None


def _positive_int(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or (isinstance(value, float) and value != number):
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return number


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return f"<array shape {list(obj.shape)} dtype {obj.dtype}>"
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        return repr(obj)


def _existing(source: str | os.PathLike, what: str = "") -> Path:
    path = Path(source)
    if not path.exists():
        hint = ""
        if path.parent.is_dir():
            near = sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name[:3]))[:5]
            if near:
                hint = f" (in {path.parent}: {', '.join(near)})"
        for_what = f" for the {what}" if what else ""
        raise InputError(f"no such file or folder{for_what}: {path}{hint}; check the path")
    return path


def file_record(path: Path) -> dict[str, Any]:
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file()]
        return {"n_files": len(files), "bytes": int(sum(p.stat().st_size for p in files))}
    return {"bytes": int(path.stat().st_size)}


def _parse_units(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    out = {}
    for item in comma_list(value):
        if "=" not in item:
            raise InputError(f"units entry {item!r}: write column=unit, e.g. 'magnitude=mag,radius=arcsec'")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _is_name(value: Any) -> bool:
    """True for an option value that may name something (a path, HDU, dataset or key)."""
    return isinstance(value, (str, int, os.PathLike)) and not isinstance(value, bool)


def _finish_plan(plan: _Plan, options: Mapping[str, Any]) -> None:
    """Decide the kind and shapes, and check every piece against the pixels."""
    x = plan.x
    n = len(x) if x.ndim else 0
    if x.ndim < 2 or x.ndim > 4:
        raise InputError(f"{x.label} has shape {x.shape}; expected (N, H, W) or (N, C, H, W) "
                         "images, or (N, L) spectra")
    if n == 0:
        raise InputError(f"{x.label} holds no objects (shape {x.shape}); nothing to import")
    if plan.kind is None:
        if x.ndim == 2:
            plan.kind = str(options.get("kind", "spectrum"))
            if plan.kind not in ("spectrum", "table"):
                raise InputError(f"kind {plan.kind!r} for 2-D (N, L) data from {x.label}: choose "
                                 "'spectrum' or 'table'")
        else:
            if options.get("kind", "image") != "image":
                raise InputError(f"kind {options['kind']!r} does not fit {x.label} of shape "
                                 f"{x.shape}: it holds images")
            plan.kind = "image"
    if x.ndim == 3:
        plan.x = x = x.with_channel_axis()
    plan.sample_shape = x.shape[1:]

    if plan.kind == "image":
        channels = plan.sample_shape[0]
        if "bands" in options:
            bands = comma_list(options["bands"])
            if len(bands) != channels:
                raise InputError(f"{len(bands)} band names {bands} for {x.label}, which has "
                                 f"{channels} channel(s) (shape {x.shape}): give one band per channel")
            plan.bands = bands
        elif len(plan.header_bands) == channels:
            plan.bands = plan.header_bands
        if "pixel_scale" in options:
            try:
                plan.pixel_scale = float(options["pixel_scale"])
            except (TypeError, ValueError):
                plan.pixel_scale = -1.0
            if not (np.isfinite(plan.pixel_scale) and plan.pixel_scale > 0):
                raise InputError(f"pixel_scale {options['pixel_scale']!r}: give a positive "
                                 "number of arcsec per pixel, e.g. 0.2")
    else:
        for name in ("bands", "pixel_scale", "psf"):
            if name in options:
                raise InputError(f"option {name!r} applies to images, but {x.label} of shape "
                                 f"{x.shape} imports as {plan.kind} data")
        plan.pixel_scale = None

    if plan.wavelength is not None:
        if plan.kind != "spectrum":
            if "wavelength" in options:
                raise InputError(f"option 'wavelength' applies to spectra, but {x.label} imports "
                                 f"as {plan.kind} data")
            plan.wavelength = None
        else:
            wl = np.asarray(plan.wavelength, dtype=np.float64).reshape(-1)
            if wl.size != plan.sample_shape[0]:
                raise InputError(f"wavelength grid has {wl.size} values but the spectra in {x.label} "
                                 f"have {plan.sample_shape[0]} pixels: give one wavelength (Angstrom) "
                                 "per pixel")
            if not np.all(np.isfinite(wl)):
                raise InputError("wavelength grid has NaN or inf values; give finite Angstrom values")
            plan.wavelength = wl

    if plan.ivar is not None:
        ivar = plan.ivar
        if ivar.ndim == 3 and plan.kind == "image" and ivar.shape[0] == n:
            plan.ivar = ivar = ivar.with_channel_axis()
        if ivar.shape != x.shape:
            raise InputError(f"inverse variance {ivar.label} has shape {ivar.shape} but the data "
                             f"{x.label} have {x.shape}: give one ivar value per pixel")

    if plan.psf is not None:
        _classify_psf(plan)

    _check_catalog(plan, n, options)


def _classify_psf(plan: _Plan) -> None:
    """Shared (h, w)/(C, h, w) PSF, or per-object (N, C, h, w) (or (N, h, w) for one band)."""
    psf = plan.psf
    n, channels = len(plan.x), plan.sample_shape[0]
    shape = psf.shape
    label = psf.label if isinstance(psf, _Rows) else "the PSF array"
    fix = (f"give one PSF per band: ({channels}, h, w) shared by all objects, or "
           f"({n}, {channels}, h, w) one per object")

    def data() -> np.ndarray:  # read only once the PSF is known to be a small shared one
        return np.asarray(psf.read_all() if isinstance(psf, _Rows) else psf, dtype=np.float32)

    if len(shape) == 2:
        if channels != 1:
            raise InputError(f"PSF {label} has shape {shape}: 1 band, but the images have "
                             f"{channels} bands {plan.bands or ''}; {fix}")
        plan.psf_shared = data()[None]
    elif len(shape) == 3 and shape[0] == channels:
        plan.psf_shared = data()
    elif len(shape) == 3 and channels == 1 and shape[0] == n:
        rows = psf if isinstance(psf, _Rows) else _array_rows(psf, label)
        plan.psf_rows = rows.with_channel_axis()
    elif len(shape) == 4 and shape[0] == n and shape[1] == channels:
        plan.psf_rows = psf if isinstance(psf, _Rows) else _array_rows(psf, label)
    elif len(shape) == 4 and shape[0] == n:
        raise InputError(f"PSF {label} has shape {shape}: {shape[1]} bands, but the images have "
                         f"{channels}; {fix}")
    elif len(shape) == 4:
        raise InputError(f"PSF {label} has shape {shape}: {shape[0]} objects, but there are {n} "
                         f"images; {fix}")
    else:
        raise InputError(f"PSF {label} has shape {shape}, which does not fit {n} images of "
                         f"{channels} band(s); {fix}")
    if plan.psf_shared is not None and not np.all(np.isfinite(plan.psf_shared)):
        raise InputError(f"PSF {label} has NaN or inf values; give a finite PSF")


def _check_catalog(plan: _Plan, n: int, options: Mapping[str, Any]) -> None:
    """Flatten, decode and check the catalog: n rows, integer unique ids, units."""
    label = plan.catalog_label or "the catalog"
    units = dict(plan.units)
    columns: dict[str, np.ndarray] = {}
    for name, values in plan.catalog.items():
        arr = np.asarray(values)
        if arr.dtype.kind == "S":
            arr = np.char.decode(arr, "utf-8", errors="replace")
        elif arr.dtype.kind == "O":
            arr = np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in arr.ravel()],
                           dtype=object).reshape(arr.shape)
        if arr.dtype.byteorder not in ("=", "|"):  # FITS tables are big-endian; Arrow wants native
            arr = arr.astype(arr.dtype.newbyteorder("="))
        if arr.ndim == 0:
            raise InputError(f"{label}: column {name!r} is a single value, not one per object")
        if len(arr) != n:
            raise InputError(f"{label} has {len(arr)} rows (column {name!r}) but {plan.x.label} has "
                             f"{n} objects: give one catalog row per object, in the same order")
        if arr.ndim == 1:
            columns[name] = arr
            continue
        # a vector column (e.g. aperture fluxes) becomes scalar columns name_0, name_1, ...
        flat = arr.reshape(n, -1)
        for j in range(flat.shape[1]):
            columns[f"{name}_{j}"] = flat[:, j]
            if name in units:
                units[f"{name}_{j}"] = units[name]
        units.pop(name, None)

    extra = _parse_units(options.get("units"))
    missing = sorted(set(extra) - set(columns))
    if missing:
        raise InputError(f"units given for {', '.join(missing)}, which {label} does not have; "
                         f"its columns: {', '.join(columns) or '(none)'}")
    units.update(extra)

    id_column = options.get("id_column")
    if id_column is None:
        matches = [c for c in columns if c.lower() == "id"]
        id_column = "id" if "id" in columns else (matches[0] if len(matches) == 1 else "")
    elif id_column and id_column not in columns:
        raise InputError(f"id_column {id_column!r} is not a column of {label}; its columns: "
                         f"{', '.join(columns) or '(none)'}")
    if id_column == "":
        if "id" in columns:
            columns["source_id"] = columns.pop("id")
            if "id" in units:
                units["source_id"] = units.pop("id")
    else:
        ids = columns.pop(id_column)
        units.pop(id_column, None)
        if "id" in columns:  # another column named "id" when id_column names a different one
            columns["source_id"] = columns.pop("id")
        fix = (f"pass id_column=NAME of an integer column, or id_column='' to number objects "
               f"0..{n - 1} and keep this column as 'source_id'")
        if ids.dtype.kind == "f" and np.all(np.isfinite(ids)) and np.all(ids == np.round(ids)):
            ids = ids.astype(np.int64)
        if ids.dtype.kind not in "iu":
            raise InputError(f"{label}: id column {id_column!r} holds non-integer values "
                             f"(e.g. {ids[:3].tolist()}); store ids are integers: {fix}")
        uniq, counts = np.unique(ids, return_counts=True)
        if len(uniq) != n:
            raise InputError(f"{label}: id column {id_column!r} repeats ids, e.g. "
                             f"{uniq[counts > 1][:5].tolist()}; ids must be unique: {fix}")
        columns = {"id": ids.astype(np.int64), **columns}
    plan.catalog = columns
    plan.units = {k: v for k, v in units.items() if k in columns and v}


def _write(plan: _Plan, out: Path, *, overwrite: bool, nan_policy: str, batch_rows: int,
           provenance: dict[str, Any]) -> Store:
    arrays: dict[str, tuple[int, ...]] = {}
    if plan.psf_rows is not None:
        arrays["psf"] = plan.psf_rows.shape[1:]
    if plan.ivar is not None:
        arrays["ivar"] = plan.sample_shape
    if nan_policy == "zero":
        arrays["mask"] = plan.sample_shape
    shared = {"psf": plan.psf_shared} if plan.psf_shared is not None else None
    n = len(plan.x)
    masked_pixels = masked_objects = 0
    writer = create_store(out, sample_shape=plan.sample_shape, kind=plan.kind, bands=plan.bands,
                          pixel_scale=plan.pixel_scale, wavelength=plan.wavelength, arrays=arrays,
                          shared=shared, units=plan.units, provenance=provenance,
                          extra_meta=plan.extra_meta, overwrite=overwrite)
    with writer:
        for start in range(0, n, batch_rows):
            stop = min(n, start + batch_rows)
            x = np.array(plan.x.read(start, stop), dtype=np.float32)
            batch: dict[str, np.ndarray] = {}
            bad = ~np.isfinite(x)
            bad_rows = np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))
            if bad_rows.size and nan_policy == "raise":
                named = ", ".join(plan.x.name_row(start + int(i)) for i in bad_rows[:10])
                raise InputError(
                    f"{plan.x.label} has NaN or inf pixels in {named}"
                    f"{' and more' if bad_rows.size > 10 else ''}; pass nan_policy='zero' "
                    "(--nan-policy zero) to set them to 0 and record them in a 'mask' array "
                    "(True = bad pixel), or clean the data")
            if nan_policy == "zero":
                x[bad] = 0.0
                batch["mask"] = bad
                masked_pixels += int(bad.sum())
                masked_objects += int(bad_rows.size)
            if plan.ivar is not None:
                ivar = np.array(plan.ivar.read(start, stop), dtype=np.float32)
                ivar_bad = ~np.isfinite(ivar)
                if ivar_bad.any() and nan_policy == "raise":
                    rows = np.flatnonzero(ivar_bad.reshape(len(x), -1).any(axis=1))[:10]
                    named = ", ".join(plan.ivar.name_row(start + int(i)) for i in rows)
                    raise InputError(f"inverse variance {plan.ivar.label} has NaN or inf values "
                                     f"in {named}; pass nan_policy='zero' to set them (and the "
                                     "ivar of masked pixels) to 0, or clean the data")
                ivar[ivar_bad] = 0.0
                if (ivar < 0).any():
                    rows = np.flatnonzero((ivar < 0).reshape(len(x), -1).any(axis=1))[:10]
                    named = ", ".join(plan.ivar.name_row(start + int(i)) for i in rows)
                    raise InputError(f"inverse variance {plan.ivar.label} is negative in "
                                     f"{named}; ivar = 1/sigma^2 must be >= 0 (0 = no data)")
                if nan_policy == "zero":
                    ivar[bad] = 0.0
                batch["ivar"] = ivar
            if plan.psf_rows is not None:
                psf = np.array(plan.psf_rows.read(start, stop), dtype=np.float32)
                psf_bad = ~np.isfinite(psf).reshape(len(psf), -1).all(axis=1)
                if psf_bad.any():
                    named = ", ".join(plan.psf_rows.name_row(start + int(i))
                                      for i in np.flatnonzero(psf_bad)[:10])
                    raise InputError(f"PSF {plan.psf_rows.label} has NaN or inf values in "
                                     f"{named}; give finite PSFs")
                batch["psf"] = psf
            catalog = {k: v[start:stop] for k, v in plan.catalog.items()}
            writer.append(x=x, catalog=catalog, **batch)
        if nan_policy == "zero":
            writer.meta["provenance"].update(masked_pixels=masked_pixels,
                                             masked_objects=masked_objects)
    return writer.store


def _merge_catalog(plan: _Plan, columns: Mapping[str, np.ndarray], units: Mapping[str, str],
                   label: str) -> None:
    clash = sorted(set(columns) & set(plan.catalog) - {"stamp_file"})
    if clash:
        raise InputError(f"{label} has columns {clash} that are already taken (from "
                         f"{plan.catalog_label or 'the source'}); rename them")
    plan.catalog.update(columns)
    plan.units.update(units)
    plan.catalog_label = label if not plan.catalog_label else f"{plan.catalog_label} + {label}"


def _to_angstrom(values, unit, label: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if not unit:
        return values
    import astropy.units as u

    try:
        return (values * u.Unit(str(unit).strip())).to_value(u.AA, equivalencies=u.spectral())
    except (ValueError, u.UnitsError):
        raise InputError(f"{label} has unit {unit!r}, which is not a wavelength; give it in "
                         "Angstrom") from None
