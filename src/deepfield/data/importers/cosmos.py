"""GalSim's RealGalaxyCatalog format (the COSMOS training samples) into a store.

A RealGalaxyCatalog is a FITS table, one row per galaxy, naming for each galaxy a FITS file and
HDU holding its stamp (``GAL_FILENAME``, ``GAL_HDU``), another holding its PSF (``PSF_FILENAME``,
``PSF_HDU``), its pixel scale (``PIXEL_SCALE``, arcsec), noise (``NOISE_VARIANCE``, ``NOISE_MEAN``,
and optionally ``NOISE_FILENAME``, an image of the noise correlation function), ``IDENT``, ``MAG``,
``BAND``, ``WEIGHT`` and in newer layouts ``RA``, ``DEC`` and ``stamp_flux``. GalSim's
``galsim_download_cosmos`` fetches the COSMOS samples in this format (COSMOS_23.5 / 25.2).

What the store holds (N galaxies, C bands, H = W = ``size``, h = w = ``psf_size``):

- ``x`` (N, C, H, W): the stamp as the catalog gives it (the catalog's image units), cut or
  padded about its centre: the source pixel ``(h_s // 2, w_s // 2)`` of an (h_s, w_s) stamp lands
  on ``(H // 2, W // 2)``. No pixel is rescaled, so the flux inside the kept area is the
  source's; the flux cut off is recorded in ``cut_flux_<band>``, the source's shape in
  ``source_height_<band>``, ``source_width_<band>``. Padded pixels are 0;
- ``mask`` (N, C, H, W), True for pixels without data: padding, and NaN pixels when
  ``nan_policy="zero"``;
- ``ivar`` (N, C, H, W): ``1 / NOISE_VARIANCE`` where there are data, 0 under the mask;
- ``noise_ps`` (N, C, H, W): the noise power spectrum in deepfield.physics' convention (unitary
  fft2, unshifted: the expected ``|fft2(noise, norm="ortho")|**2`` per mode). Built from the
  correlation function in ``NOISE_FILENAME`` (zero lag on its centre pixel ``(h // 2, w // 2)``,
  as GalSim's noise files are written), scaled to zero-lag ``NOISE_VARIANCE`` as GalSim's
  ``withVariance`` does, and kept to lags within the stamp; white (``NOISE_VARIANCE`` in every
  mode) when the catalog names no noise file. Its mean over modes is the pixel variance;
- ``psf`` (N, C, h, w): the catalog's PSF image (HST effective PSF, pixel response included)
  interpolated as GalSim's ``RealGalaxyCatalog.getPSF`` does (``InterpolatedImage``, unit flux)
  and drawn with ``method="no_pixel"`` on an odd stamp centred on its middle pixel at the
  native pixel scale, unit sum, so that ``x ~= galaxy sampled at pixel centres (*) psf``.

Catalog columns (unit): ``id`` (IDENT when unique in the catalog, else the row number) and
``ident``; ``ra``, ``dec`` (deg) when the catalog has them; ``weight``; ``magnitude`` (mag,
the first catalog's band) and per band ``mag_<band>`` (mag), ``noise_variance_<band>``,
``noise_mean_<band>``, ``stamp_flux_<band>`` (catalog), ``flux_<band>`` (sum of the source stamp),
``cut_flux_<band>`` (source flux outside the stored stamp), ``source_height_<band>``,
``source_width_<band>`` (pixels), ``catalog_row_<band>``; flux-like columns are in the catalog's
image units. When the companion parametric catalog (``NAME_fits.fits`` beside ``NAME.fits``, as
GalSim's COSMOSCatalog finds it) is there, its columns join by IDENT with the prefix ``fit_``
(vector columns flattened to ``fit_NAME_0``, ...), plus the named ones GalSim's parametric
galaxies use: ``half_light_radius``, ``bulge_half_light_radius``, ``disk_half_light_radius``
(arcsec), ``sersic_n``, ``sersic_q``, ``sersic_beta`` (rad), ``bulge_fraction`` (of the bulge
+ disk fit's flux), ``redshift`` (photometric) and ``mag_auto`` (mag).

Several catalogs of the same galaxies in other bands (e.g. F606W and F814W) make one
multi-band store: the first catalog sets the order, the others join by IDENT, and galaxies
missing from any band are left out (counted in the provenance).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepfield._names import comma_list
from deepfield.data.importers._common import _READ_ERRORS_HINT, _existing, file_record, _positive_int
from deepfield.data.store import Store
from deepfield.errors import DeepfieldError, InputError

__all__ = ["import_cosmos", "noise_power_spectrum_from_cf"]

_DEFAULT_PSF_SIZE = 25
_DEFAULT_BATCH = 64
_OPEN_FILES = 8  # image files kept open per process (COSMOS stores ~1000 stamps per file)


# --------------------------------------------------------------------------------------
# physics


def noise_power_spectrum_from_cf(cf: np.ndarray, variance: float, size: int) -> np.ndarray:
    """Power spectrum (size, size) of stationary noise from its correlation-function image.

    Arguments:
        cf: (h, w) correlation function sampled at pixel lags, zero lag on pixel
            ``(h // 2, w // 2)`` (GalSim's noise files), any normalisation.
        variance: the noise's pixel variance (image units^2): the zero lag is scaled to it.
        size: the stamp side H = W the spectrum is for.

    Returns:
        ``noise_ps`` (size, size) in deepfield.physics' convention: the expected
        ``|fft2(noise, norm="ortho")|**2`` per mode, unshifted. Lags are kept within the stamp
        (``-size // 2 ... (size - 1) // 2``), and the few slightly negative modes that
        truncation leaves are set to 0.
    """
    cf = np.asarray(cf, dtype=np.float64)
    h, w = cf.shape
    cy, cx = h // 2, w // 2
    if not np.isfinite(cf).all() or cf[cy, cx] <= 0:
        raise InputError("the noise correlation function has NaN values or a zero lag <= 0; "
                         "check the catalog's noise file")
    lags = np.zeros((size, size))
    lo, hi = -(size // 2), (size - 1) // 2
    ly = np.arange(max(lo, -cy), min(hi, h - 1 - cy) + 1)
    lx = np.arange(max(lo, -cx), min(hi, w - 1 - cx) + 1)
    lags[np.ix_(ly % size, lx % size)] = cf[np.ix_(cy + ly, cx + lx)]
    ps = np.fft.fft2(lags * (variance / cf[cy, cx])).real
    return np.clip(ps, 0.0, None)


def _crop_or_pad(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(size, size) stamp and its validity (True = data) from an (h, w) image, source pixel
    (h // 2, w // 2) on (size // 2, size // 2); no pixel value changes."""
    out = np.zeros((size, size), dtype=np.float64)
    valid = np.zeros((size, size), dtype=bool)
    src, dst = [], []
    for n in image.shape:
        offset = n // 2 - size // 2  # source index of stamp index 0
        s0, s1 = max(0, offset), min(n, offset + size)
        src.append(slice(s0, s1))
        dst.append(slice(s0 - offset, s1 - offset))
    out[dst[0], dst[1]] = image[src[0], src[1]]
    valid[dst[0], dst[1]] = True
    return out, valid


# --------------------------------------------------------------------------------------
# reading the catalogs


class CatalogBand:
    """One RealGalaxyCatalog (one band), read with GalSim's reader."""

    def __init__(self, path: Path, image_dir: str | None):
        import galsim

        self.path = path
        try:
            rgc = galsim.RealGalaxyCatalog(str(path), dir=image_dir)
            cat = rgc.cat
            names = {n.upper(): n for n in cat.columns.names}
            self.n = len(rgc)
            self.gal_file = np.asarray(rgc.gal_file_name, dtype=object)
            self.psf_file = np.asarray(rgc.psf_file_name, dtype=object)
            self.noise_file = (None if rgc.noise_file_name is None else
                               np.asarray([f.strip() for f in rgc.noise_file_name], dtype=object))
            self.gal_hdu = np.asarray(rgc.gal_hdu, dtype=np.int64)
            self.psf_hdu = np.asarray(rgc.psf_hdu, dtype=np.int64)
            self.pixel_scale = np.asarray(rgc.pixel_scale, dtype=np.float64)
            self.variance = np.asarray(rgc.variance, dtype=np.float64)
            self.mag = np.asarray(rgc.mag, dtype=np.float64)
            bands = sorted({str(b).strip() for b in rgc.band})
            self.ident_text = [s.strip() for s in rgc.ident]

            def column(name, dtype=np.float64):
                key = names.get(name)
                return None if key is None else np.asarray(cat.field(key), dtype=dtype)

            self.ra, self.dec = column("RA"), column("DEC")
            self.weight = column("WEIGHT")
            self.noise_mean = column("NOISE_MEAN")
            self.stamp_flux = column("STAMP_FLUX")
        except DeepfieldError:
            raise
        except Exception as err:  # GalSim and astropy raise many types on a bad catalog
            raise InputError(f"{path} is not a readable RealGalaxyCatalog ({type(err).__name__}: "
                             f"{err}); it needs the columns IDENT, GAL_FILENAME, PSF_FILENAME, "
                             "GAL_HDU, PSF_HDU, PIXEL_SCALE, NOISE_VARIANCE, MAG, BAND") from None
        if len(bands) != 1:
            raise InputError(f"{path} mixes bands {bands} in its BAND column; a store channel holds "
                             "one band: split the catalog by band and give the parts comma-separated")
        self.band = bands[0]
        try:
            self.ident = np.asarray([int(s) for s in self.ident_text], dtype=np.int64)
        except ValueError:
            bad = next(s for s in self.ident_text if not s.lstrip("-").isdigit())
            raise InputError(f"{path}: IDENT {bad!r} is not an integer; store ids are integers") from None

    def row_name(self, i: int) -> str:
        return f"row {i} (IDENT {self.ident_text[i]}) of {self.path}"


def check_catalog_band(band: CatalogBand) -> None:
    """Refuse what cannot be imported, naming the catalog row: pixel scales, variances, files
    that are missing, HDU indices past a file's end."""
    bad = np.flatnonzero(~(band.pixel_scale > 0))
    if bad.size:
        i = int(bad[0])
        raise InputError(f"PIXEL_SCALE = {float(band.pixel_scale[i])!r} in {band.row_name(i)}"
                         f"{f' and {bad.size - 1} other rows' if bad.size > 1 else ''}; a pixel scale "
                         "is a positive number of arcsec per pixel: fix or drop those rows")
    bad = np.flatnonzero(~(band.variance > 0))
    if bad.size:
        i = int(bad[0])
        raise InputError(f"NOISE_VARIANCE = {float(band.variance[i])!r} in {band.row_name(i)}; the noise "
                         "variance per pixel must be positive: fix or drop that row")
    for what, files, hdus, column in (("galaxy image", band.gal_file, band.gal_hdu, "GAL_HDU"),
                                      ("PSF image", band.psf_file, band.psf_hdu, "PSF_HDU"),
                                      ("noise file", band.noise_file, None, "")):
        if files is None:
            continue
        names, first, which = np.unique(files, return_index=True, return_inverse=True)
        for name, i in zip(names, first):
            if not os.path.isfile(name):
                raise InputError(f"{what} {name} (named by {band.row_name(int(i))}) does not exist; "
                                 "pass --dir (dir=) with the folder holding the catalog's image files, "
                                 "or download them (galsim_download_cosmos)")
        if hdus is None:
            continue
        counts = np.array([_hdu_count(name) for name in names])[which]
        outside = np.flatnonzero((hdus < 0) | (hdus >= counts))
        if outside.size:
            i = int(outside[0])
            raise InputError(f"{column} {int(hdus[i])} in {band.row_name(i)} is out of range: "
                             f"{what} file {files[i]} has HDUs 0..{counts[i] - 1}; fix the catalog "
                             "row or the file")


def _hdu_count(path: str) -> int:
    return len(_hdu_index(path))


_BLOCK = 2880  # FITS files are written in blocks of 36 cards of 80 bytes
_BITPIX = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


def _scan_hdus(path: str) -> list[tuple[int, tuple[int, ...], str, float, float]] | None:
    """Where each HDU's data lie: (byte offset, shape, dtype, BSCALE, BZERO) per HDU, found by
    reading only the header cards that size the data. None for a file this scan does not
    handle (compressed, gzipped, tables); astropy reads those.

    COSMOS image files hold ~1000 stamps each; astropy parses every card of every header on the
    way to HDU k (~1 ms per HDU), this scan only the few that say how far to skip.
    """
    entries = []
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if f.read(2) == b"\x1f\x8b":
            return None
        offset = 0
        while offset < size:
            cards: dict[str, str] = {}
            header_end = None
            while header_end is None:
                f.seek(offset)
                block = f.read(_BLOCK)
                if len(block) < _BLOCK:  # not a whole block: let astropy say what is wrong
                    return None
                offset += _BLOCK
                for k in range(0, _BLOCK, 80):
                    card = block[k:k + 80]
                    key = card[:8].decode("ascii", "replace").strip()
                    if key == "END":
                        header_end = offset
                        break
                    if card[8:10] == b"= ":
                        cards[key] = card[10:].split(b"/")[0].decode("ascii", "replace").strip()
            first = not entries
            if first and cards.get("SIMPLE") != "T":
                return None
            if not first and cards.get("XTENSION", "").strip("' ") != "IMAGE":
                return None
            if "ZIMAGE" in cards:
                return None
            try:
                bitpix = int(cards["BITPIX"])
                naxis = int(cards["NAXIS"])
                shape = tuple(int(cards[f"NAXIS{i}"]) for i in range(naxis, 0, -1))
                pcount, gcount = int(cards.get("PCOUNT", 0)), int(cards.get("GCOUNT", 1))
                bscale, bzero = float(cards.get("BSCALE", 1.0)), float(cards.get("BZERO", 0.0))
            except (KeyError, ValueError):
                return None
            if bitpix not in _BITPIX:
                return None
            nbytes = abs(bitpix) // 8 * gcount * (pcount + (int(np.prod(shape)) if naxis else 0))
            entries.append((header_end, shape if naxis else (), _BITPIX[bitpix], bscale, bzero))
            offset = header_end + -(-nbytes // _BLOCK) * _BLOCK
    return entries


_INDEX: OrderedDict[str, Any] = OrderedDict()


def _hdu_index(path: str) -> list:
    """The HDUs of `path` (cached for a few files): scanned entries, or astropy's HDU list."""
    full = os.path.abspath(path)
    try:
        stat = os.stat(full)
    except OSError as err:
        raise InputError(f"{path} cannot be read ({err}); check the path") from None
    key = (full, stat.st_mtime_ns, stat.st_size)  # a file rewritten in place is scanned afresh
    if key in _INDEX:
        _INDEX.move_to_end(key)
        return _INDEX[key]
    try:
        entries = _scan_hdus(full)
    except OSError as err:
        raise InputError(f"{path} cannot be read ({err}); {_READ_ERRORS_HINT}") from None
    if entries is None:
        from astropy.io import fits

        try:
            with fits.open(full, memmap=True) as hdul:
                entries = [None] * len(hdul)  # None: read this file's HDUs with astropy
        except Exception as err:
            raise InputError(f"{path} is not a readable FITS file ({type(err).__name__}: {err}); "
                             f"{_READ_ERRORS_HINT}") from None
    _INDEX[key] = entries
    while len(_INDEX) > 4 * _OPEN_FILES:
        _INDEX.popitem(last=False)
    return entries


def _companion_columns(path: Path, ident: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, str], str | None]:
    """The parametric-fit catalog beside `path` (NAME_fits.fits), joined on IDENT to `ident`."""
    name = path.name
    if not name.lower().endswith(".fits"):
        return {}, {}, None
    fits_path = path.with_name(name[:-5] + "_fits.fits")
    if not fits_path.is_file():
        return {}, {}, None
    from astropy.table import Table

    try:
        table = Table.read(fits_path, hdu=1)
    except Exception as err:
        raise InputError(f"parametric catalog {fits_path}: cannot read it ({type(err).__name__}: "
                         f"{err}); {_READ_ERRORS_HINT}") from None
    upper = {c.upper(): c for c in table.colnames}
    if "IDENT" not in upper:
        raise InputError(f"parametric catalog {fits_path} has no IDENT column to join on; its "
                         f"columns: {', '.join(table.colnames)}")
    where = {int(v): k for k, v in enumerate(np.asarray(table[upper["IDENT"]]))}
    take = np.array([where.get(int(i), -1) for i in ident])
    found = take >= 0
    columns: dict[str, np.ndarray] = {}
    units: dict[str, str] = {}

    def joined(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values)
        if values.dtype.kind in "SUO":
            out = np.full(len(take), "", dtype=object)
            out[found] = [v.decode() if isinstance(v, bytes) else str(v) for v in values[take[found]]]
            return out
        out = np.full(len(take), np.nan)
        out[found] = values[take[found]].astype(np.float64)
        return out

    for col in table.colnames:
        if col.upper() == "IDENT":
            continue
        data = np.asarray(table[col])
        unit = table[col].unit.to_string() if table[col].unit is not None else ""
        if data.ndim == 1:
            columns[f"fit_{col}"] = joined(data)
            if unit:
                units[f"fit_{col}"] = unit
        else:
            flat = data.reshape(len(data), -1)
            for j in range(flat.shape[1]):
                columns[f"fit_{col}_{j}"] = joined(flat[:, j])
                if unit:
                    units[f"fit_{col}_{j}"] = unit

    # the named quantities, read as GalSim's COSMOSCatalog reads them for parametric galaxies
    def part(col: str, j: int | None = None) -> np.ndarray | None:
        key = upper.get(col.upper())
        if key is None:
            return None
        data = np.asarray(table[key], dtype=np.float64)
        if j is not None:
            if data.ndim != 2 or data.shape[1] <= j:
                return None
            data = data[:, j]
        return joined(data)

    named = {"half_light_radius": (part("hlr", 0), "arcsec"),
             "bulge_half_light_radius": (part("hlr", 1), "arcsec"),
             "disk_half_light_radius": (part("hlr", 2), "arcsec"),
             "sersic_n": (part("sersicfit", 2), ""), "sersic_q": (part("sersicfit", 3), ""),
             "sersic_beta": (part("sersicfit", 7), "rad"),
             "redshift": (part("zphot"), ""), "mag_auto": (part("mag_auto"), "mag")}
    flux_bulge, flux_disk = part("flux", 1), part("flux", 2)
    if flux_bulge is not None and flux_disk is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            named["bulge_fraction"] = (flux_bulge / (flux_bulge + flux_disk), "")
    for key, (values, unit) in named.items():
        if values is not None:
            columns[key] = values
            if unit:
                units[key] = unit
    return columns, units, str(fits_path)


# --------------------------------------------------------------------------------------
# making batches (in this process or in spawned workers)


class _ImageFiles:
    """Stamps read one HDU at a time, straight from where the HDU index says its data lie, a few
    files kept open: a catalog of any size streams through bounded memory."""

    def __init__(self, keep: int = _OPEN_FILES):
        self.keep = keep
        self._open: OrderedDict[str, Any] = OrderedDict()

    def _handle(self, path: str, opener):
        handle = self._open.pop(path, None)
        if handle is None:
            handle = opener()
            while len(self._open) >= self.keep:
                self._open.popitem(last=False)[1].close()
        self._open[path] = handle
        return handle

    def read(self, path: str, hdu: int) -> np.ndarray:
        entry = _hdu_index(path)[hdu]
        if entry is None:  # a file the scan does not handle
            from astropy.io import fits

            hdul = self._handle(path, lambda: fits.open(path, memmap=True))
            out = np.array(hdul[hdu].data, dtype=np.float64)
            del hdul[hdu].data  # drop astropy's cached view of the map
            return out
        offset, shape, dtype, bscale, bzero = entry
        f = self._handle(path, lambda: open(path, "rb"))
        f.seek(offset)
        count = int(np.prod(shape)) if shape else 0
        data = np.fromfile(f, dtype=dtype, count=count)
        if data.size != count:
            raise InputError(f"{path} HDU {hdu} is truncated; {_READ_ERRORS_HINT}")
        out = data.astype(np.float64).reshape(shape)
        if bscale != 1.0 or bzero != 0.0:
            out = out * bscale + bzero
        return out

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()


class _CosmosBatchMaker:
    """Turns joined catalog rows lo ... hi - 1 into stamps (x, psf, ivar, mask, noise_ps) and the
    per-object columns measured on them."""

    def __init__(self, spec: dict):
        import galsim

        self.galsim = galsim
        self.spec = spec
        self.files = _ImageFiles()
        self._ps: dict[int, np.ndarray] = {}  # unit-variance noise_ps per noise file

    def _noise_ps(self, key: int) -> np.ndarray:
        if key not in self._ps:
            size = self.spec["size"]
            if key < 0:
                self._ps[key] = np.ones((size, size))
            else:
                self._ps[key] = noise_power_spectrum_from_cf(self.spec["noise_cf"][key], 1.0, size)
        return self._ps[key]

    def _psf(self, image: np.ndarray, scale: float) -> np.ndarray:
        galsim = self.galsim
        size = self.spec["psf_size"]
        # drawn in real space (no_pixel): stepk and maxk, which only size Fourier draws, are not needed
        profile = galsim.InterpolatedImage(galsim.Image(np.ascontiguousarray(image), scale=scale),
                                           flux=1.0, calculate_stepk=False, calculate_maxk=False)
        drawn = profile.drawImage(nx=size, ny=size, scale=scale, method="no_pixel").array
        return drawn / drawn.sum()

    def __call__(self, lo: int, hi: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        spec = self.spec
        bands, size, psf_size = spec["bands"], spec["size"], spec["psf_size"]
        n, C = hi - lo, len(bands)
        arrays = {"x": np.zeros((n, C, size, size), np.float32),
                  "mask": np.zeros((n, C, size, size), bool),
                  "ivar": np.zeros((n, C, size, size), np.float32),
                  "noise_ps": np.zeros((n, C, size, size), np.float32),
                  "psf": np.zeros((n, C, psf_size, psf_size), np.float32)}
        columns: dict[str, np.ndarray] = {}
        for c, band in enumerate(bands):
            flux, cut, height, width, masked = (np.zeros(n) for _ in range(5))
            for k in range(n):
                j = lo + k
                where = (f"row {band['rows'][j]} (IDENT {band['ident'][j]}) of {band['catalog']} "
                         f"({band['gal_file'][j]} HDU {band['gal_hdu'][j]})")
                try:
                    image = self.files.read(band["gal_file"][j], int(band["gal_hdu"][j]))
                    psf_image = self.files.read(band["psf_file"][j], int(band["psf_hdu"][j]))
                except Exception as err:
                    raise InputError(f"cannot read the stamps of {where} ({type(err).__name__}: "
                                     f"{err}); {_READ_ERRORS_HINT}") from None
                if image.ndim != 2 or psf_image.ndim != 2:
                    raise InputError(f"{where}: a galaxy or PSF HDU of shape {image.shape} / "
                                     f"{psf_image.shape} is not one 2-D stamp")
                bad = ~np.isfinite(image)
                if bad.any() and spec["nan_policy"] == "raise":
                    raise InputError(f"{where} has {int(bad.sum())} NaN or inf pixels; pass "
                                     "nan_policy='zero' (--nan-policy zero) to set them to 0 and "
                                     "mask them (ivar 0), or drop the galaxy from the catalog")
                if not np.isfinite(psf_image).all() or not psf_image.sum() > 0:
                    raise InputError(f"the PSF of {where} ({band['psf_file'][j]} HDU "
                                     f"{band['psf_hdu'][j]}) has NaN pixels or no flux; fix or drop it")
                image[bad] = 0.0
                stamp, valid = _crop_or_pad(image, size)
                bad_in, _ = _crop_or_pad(bad.astype(np.float64), size)
                valid &= bad_in == 0
                flux[k] = image.sum()
                cut[k] = flux[k] - stamp.sum()
                height[k], width[k] = image.shape
                masked[k] = bad.sum()
                variance = float(band["variance"][j])
                arrays["x"][k, c] = stamp
                arrays["mask"][k, c] = ~valid
                arrays["ivar"][k, c] = np.where(valid, 1.0 / variance, 0.0)
                arrays["noise_ps"][k, c] = variance * self._noise_ps(int(band["noise_key"][j]))
                arrays["psf"][k, c] = self._psf(psf_image, spec["pixel_scale"])
            name = band["name"]
            columns[f"flux_{name}"] = flux
            columns[f"cut_flux_{name}"] = cut
            columns[f"source_height_{name}"] = height.astype(np.int64)
            columns[f"source_width_{name}"] = width.astype(np.int64)
            columns[f"nan_pixels_{name}"] = masked.astype(np.int64)
        return columns, arrays


# --------------------------------------------------------------------------------------
# public entry point


def import_cosmos(
    catalogs: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    dir: str | os.PathLike | None = None,
    size: int = 64,
    psf_size: int = _DEFAULT_PSF_SIZE,
    max_mag: float | None = None,
    nan_policy: str = "raise",
    workers: int = 1,
    batch: int = _DEFAULT_BATCH,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> Store:
    """Import galaxies from GalSim RealGalaxyCatalog(s) into a store at `out`.

    Module docstring: what each array and column holds, and in which units.

    Arguments:
        catalogs: one catalog file, or several of the same galaxies in other bands (a
            sequence or "a.fits,b.fits"), joined by IDENT into one store of C bands in the
            order given.
        out: the store directory to create.
        dir: folder of the image, PSF and noise files (default: the catalog's folder; GalSim's
            ``dir``).
        size: stamp side H = W in pixels (>= 8), at the catalog's pixel scale.
        psf_size: PSF stamp side in pixels (odd, >= 3).
        max_mag: keep galaxies with MAG <= max_mag in the first catalog (e.g. 25.2).
        nan_policy: "raise" (default) refuses a stamp with NaN/inf pixels, naming it; "zero"
            sets them to 0 under the mask (ivar 0).
        workers: processes reading and cutting stamps (spawned; 1 works in this process).
        batch: galaxies per batch handed to a worker and appended to the store.
        overwrite: replace an existing store at `out` (at commit).
        resume: finish an interrupted import of the same catalogs with the same options.
        progress: show a progress bar (stderr).

    Bad input (a missing image, PSF or noise file, an HDU past a file's end, PIXEL_SCALE <= 0,
    NaN pixels) raises :class:`~deepfield.errors.InputError` naming the catalog row and file,
    and leaves nothing at `out`.

    References:
        Mandelbaum et al. (2012), MNRAS 420, 1518, arXiv:1107.4629 (the COSMOS training sample).
        Rowe et al. (2015), GalSim, arXiv:1407.7676 (RealGalaxyCatalog, noise correlation).
        Lanusse et al. (2021), MNRAS 504, 5543, arXiv:2008.03833 (deep generative models of
        these galaxies with their PSF and noise power spectrum).
    """
    paths = [Path(p) for p in (comma_list(catalogs) if isinstance(catalogs, str)
                               else [os.fspath(c) for c in ([catalogs] if isinstance(catalogs, os.PathLike)
                                                            else catalogs)])]
    if not paths:
        raise InputError("no catalog given; pass a RealGalaxyCatalog FITS file (or several, comma-separated)")
    size = _positive_int(size, "size")
    if size < 8:
        raise InputError(f"size={size} pixels is too small for a galaxy stamp; use --size 8 or more")
    psf_size = _positive_int(psf_size, "psf_size")
    if psf_size < 3 or psf_size % 2 == 0:
        raise InputError(f"psf_size={psf_size}: give an odd PSF stamp side >= 3 (the PSF centre "
                         "sits on the middle pixel), e.g. 25")
    workers = _positive_int(workers, "workers")
    batch = _positive_int(batch, "batch")
    nan_policy = str(nan_policy).lower()
    if nan_policy not in ("raise", "zero"):
        raise InputError(f"nan_policy {nan_policy!r}: choose 'raise' (refuse NaN pixels) or 'zero' "
                         "(set them to 0 under the mask)")
    if max_mag is not None and not np.isfinite(float(max_mag)):
        raise InputError(f"max_mag={max_mag!r}: give a finite magnitude, e.g. 25.2")
    image_dir = None if dir is None else os.fspath(dir)
    if image_dir is not None and not Path(image_dir).is_dir():
        raise InputError(f"--dir {image_dir}: no such folder; give the folder holding the "
                         "catalog's image files")

    bands = []
    for path in paths:
        _existing(path, "catalog")
        bands.append(CatalogBand(path, image_dir))
    names = [b.band for b in bands]
    if len(set(names)) != len(names):
        raise InputError(f"catalogs {', '.join(map(str, paths))} are in bands {names}: each band "
                         "may come once; give one catalog per band")
    scales = {float(s) for b in bands for s in np.unique(b.pixel_scale[b.pixel_scale > 0])}
    for band in bands:
        check_catalog_band(band)
    if len(scales) != 1:
        raise InputError(f"the catalogs' PIXEL_SCALE values differ ({sorted(scales)} arcsec); a "
                         "store has one pixel scale: import each scale into its own store")
    pixel_scale = scales.pop()

    # the rows: the first catalog's order and magnitude cut, the other bands joined by IDENT
    first = bands[0]
    keep = np.arange(first.n)
    if max_mag is not None:
        keep = keep[first.mag[keep] <= float(max_mag)]
    rows = [keep]
    dropped = {}
    if len(bands) > 1:
        for band in bands:
            uniq, counts = np.unique(band.ident, return_counts=True)
            if (counts > 1).any():
                raise InputError(f"{band.path} repeats IDENT {uniq[counts > 1][:5].tolist()}; "
                                 "joining bands by IDENT needs each galaxy once per catalog")
        found = np.ones(len(keep), bool)
        lookups = []
        for band in bands[1:]:
            where = {int(v): k for k, v in enumerate(band.ident)}
            take = np.array([where.get(int(i), -1) for i in first.ident[keep]], dtype=np.int64)
            lookups.append(take)
            found &= take >= 0
            dropped[band.band] = int((take < 0).sum())
        rows = [keep[found]] + [take[found] for take in lookups]
    n = len(rows[0])
    if n == 0:
        raise InputError(f"no galaxies to import from {', '.join(map(str, paths))}"
                         f"{f' with MAG <= {max_mag}' if max_mag is not None else ''}"
                         f"{' found in every band' if len(bands) > 1 else ''}")

    ident = first.ident[rows[0]]
    unique_ids = len(np.unique(ident)) == n
    catalog: dict[str, np.ndarray] = {
        "id": ident if unique_ids else rows[0].astype(np.int64),
        "ident": ident,
    }
    units: dict[str, str] = {"magnitude": "mag"}
    if first.ra is not None and first.dec is not None:
        catalog["ra"], catalog["dec"] = first.ra[rows[0]], first.dec[rows[0]]
        units.update(ra="deg", dec="deg")
    if first.weight is not None:
        catalog["weight"] = first.weight[rows[0]]
    catalog["magnitude"] = first.mag[rows[0]]
    for band, r in zip(bands, rows):
        b = band.band
        catalog[f"mag_{b}"] = band.mag[r]
        units[f"mag_{b}"] = "mag"
        catalog[f"noise_variance_{b}"] = band.variance[r]
        if band.noise_mean is not None:
            catalog[f"noise_mean_{b}"] = band.noise_mean[r]
        if band.stamp_flux is not None:
            catalog[f"stamp_flux_{b}"] = band.stamp_flux[r]
        catalog[f"catalog_row_{b}"] = r.astype(np.int64)
        units[f"source_height_{b}"] = units[f"source_width_{b}"] = "pix"
    fit_columns, fit_units, fit_path = _companion_columns(first.path, ident)
    clash = sorted(set(fit_columns) & set(catalog))
    if clash:
        raise InputError(f"parametric catalog {fit_path} has columns {clash} that the import "
                         "already writes; rename them")
    catalog.update(fit_columns)
    units.update(fit_units)

    # the noise correlation functions, read once here and shipped to the workers
    noise_cf: list[np.ndarray] = []
    noise_index: dict[str, int] = {}
    band_specs = []
    for band, r in zip(bands, rows):
        keys = np.full(len(r), -1, dtype=np.int64)
        if band.noise_file is not None:
            for k, name in enumerate(band.noise_file[r]):
                if name not in noise_index:
                    noise_index[name] = len(noise_cf)
                    noise_cf.append(_read_cf(name, band.row_name(int(r[k]))))
                keys[k] = noise_index[name]
        band_specs.append({"name": band.band, "gal_file": band.gal_file[r], "gal_hdu": band.gal_hdu[r],
                           "psf_file": band.psf_file[r], "psf_hdu": band.psf_hdu[r],
                           "variance": band.variance[r], "noise_key": keys,
                           "catalog": str(band.path), "rows": r, "ident": band.ident[r]})

    from importlib.metadata import version

    from deepfield.progress import progress_task
    from deepfield.data.importers._common import _jsonable
    from deepfield.data.store import create_store

    files = {str(p.resolve()): file_record(p) for p in paths}
    if fit_path:
        files[str(Path(fit_path).resolve())] = file_record(Path(fit_path))
    provenance = {
        "importer": "deepfield.data.importers.import_cosmos",
        "catalogs": [str(p.resolve()) for p in paths],
        "dir": None if image_dir is None else str(Path(image_dir).resolve()),
        "options": _jsonable({"size": size, "psf_size": psf_size, "max_mag": max_mag,
                              "nan_policy": nan_policy}),
        "files": files,
        "parametric_catalog": fit_path,
        "n_catalog": first.n,
        "dropped_missing_band": dropped,
        "ids": "IDENT" if unique_ids else "catalog row (IDENT repeats; kept in 'ident')",
        "galsim_version": version("galsim"),
    }
    conventions = {
        "source": "GalSim RealGalaxyCatalog",
        "centre_pixel": [size // 2, size // 2],
        "x": "catalog stamp cut or padded about its centre pixel, values unchanged (catalog image units)",
        "mask": "True where the stamp has no data (padding, NaN pixels)",
        "ivar": "1 / NOISE_VARIANCE where there are data, 0 under the mask",
        "noise_ps": "expected |fft2(noise, norm='ortho')|^2 per mode, unshifted, from NOISE_FILENAME's "
                    "correlation function scaled to NOISE_VARIANCE (white if none)",
        "psf": "catalog PSF (effective, pixel included) as GalSim's InterpolatedImage, drawn "
               "method='no_pixel', unit sum, centre on the middle pixel",
    }
    C = len(bands)
    writer = create_store(
        out, (C, size, size), kind="image", bands=names, pixel_scale=pixel_scale,
        arrays={"psf": (C, psf_size, psf_size), "ivar": (C, size, size), "mask": (C, size, size),
                "noise_ps": (C, size, size)},
        units=units, provenance=provenance, extra_meta=conventions, overwrite=overwrite, resume=resume)
    start = writer.n_written
    spans = [(lo, min(lo + batch, n)) for lo in range(start, n, batch)]
    spec = {"bands": band_specs, "size": size, "psf_size": psf_size, "nan_policy": nan_policy,
            "pixel_scale": pixel_scale, "noise_cf": noise_cf}
    from deepfield.data.galaxies.pool import ordered_batches

    bar, task = progress_task(progress, n, "galaxies", completed=start)
    with writer, bar:
        made = ordered_batches(_CosmosBatchMaker, (spec,), spans, min(workers, max(len(spans), 1)))
        for (lo, hi), (measured, arrays) in zip(spans, made):
            rows_catalog = {k: v[lo:hi] for k, v in catalog.items()}
            rows_catalog.update(measured)
            writer.append(x=arrays.pop("x"), catalog=rows_catalog, **arrays)
            bar.advance(task, hi - lo)
    return writer.store


def _read_cf(path: str, row_name: str) -> np.ndarray:
    from astropy.io import fits

    try:
        with fits.open(path) as hdul:
            cf = np.array(hdul[0].data, dtype=np.float64)
    except Exception as err:
        raise InputError(f"noise file {path} (named by {row_name}) is not a readable FITS image "
                         f"({type(err).__name__}: {err}); {_READ_ERRORS_HINT}") from None
    if cf.ndim != 2:
        raise InputError(f"noise file {path} (named by {row_name}) holds an array of shape {cf.shape}, "
                         "not a 2-D correlation-function image")
    return cf

