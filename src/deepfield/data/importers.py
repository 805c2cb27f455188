"""Importers: survey data in FITS, HDF5, NumPy or scikit-learn's bundled sets, into a store.

:func:`import_data` reads a source and writes a store (see :mod:`deepfield.data.store`),
batch by batch, so a file larger than memory imports in bounded memory (except ``.npz``
members, which NumPy can only load whole).

Conventions, stated once:

* Pixels are stored as float32 ``(N, C, H, W)``; a 2-D ``(H, W)`` stamp, or an
  ``(N, H, W)`` cube, gains a channel axis of length 1. Spectra are ``(N, L)`` with an
  observed-frame wavelength grid in Angstrom; tabular features are ``(N, D)`` (kind "table").
* Pixel scale is in arcsec/pixel: from the ``pixel_scale`` option, else the header's CD
  matrix or CDELT (degrees, or CUNIT1) as ``sqrt(|det|) * 3600``, else a PIXSCALE keyword.
* ``mask`` (written only with ``nan_policy="zero"``) is True for *bad* pixels: those that
  were NaN or inf in the source and were set to 0. Their ``ivar``, if any, is set to 0 too.
* A catalog has one row per object, in the order of the objects. Its ``id`` column (or the
  one named by ``id_column``) becomes the store's integer ids; otherwise ids are 0..N-1.
  Units come from FITS TUNIT, astropy/Parquet column units, HDF5 ``unit`` attributes or
  the ``units`` option.

Bad input raises :class:`~deepfield.errors.InputError` naming the file, the problem and the
fix, and leaves nothing at ``out``.

Example:
    >>> import numpy as np, tempfile, os
    >>> from deepfield.data.importers import import_data
    >>> tmp = tempfile.mkdtemp()
    >>> np.savez(os.path.join(tmp, "cut.npz"), x=np.ones((5, 8, 8), "f4"), magnitude=np.arange(5.0))
    >>> store = import_data(os.path.join(tmp, "cut.npz"), os.path.join(tmp, "store"))
    >>> len(store), store.sample_shape, store.columns
    (5, (1, 8, 8), ('id', 'magnitude'))
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepfield._names import comma_list
from deepfield.data.store import Store, create_store
from deepfield.errors import DeepfieldError, InputError, StoreError

__all__ = ["import_data", "detect_format", "FORMATS", "SKLEARN_SETS"]

FORMATS = ("fits", "hdf5", "numpy", "sklearn")
SKLEARN_SETS = ("iris", "digits", "wine", "breast_cancer")

_EXTENSIONS = {
    ".fits": "fits", ".fit": "fits", ".fts": "fits", ".fits.gz": "fits", ".fit.gz": "fits",
    ".fz": "fits", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".he5": "hdf5",
    ".npy": "numpy", ".npz": "numpy",
}
_FITS_SUFFIXES = tuple(k for k, v in _EXTENSIONS.items() if v == "fits")

_COMMON_OPTIONS = ("catalog", "bands", "pixel_scale", "wavelength", "psf", "ivar", "nan_policy",
                   "batch_rows", "units", "id_column", "kind")
_OPTIONS = {
    "fits": _COMMON_OPTIONS + ("hdu",),
    "hdf5": _COMMON_OPTIONS + ("x",),
    "numpy": _COMMON_OPTIONS + ("x",),
    "sklearn": ("nan_policy", "batch_rows"),
}

_DEFAULT_BATCH_ROWS = 4096
_READ_ERRORS_HINT = "the file may be corrupt or truncated: re-write or re-download it"


# --------------------------------------------------------------------------------------
# lazily read arrays


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


# --------------------------------------------------------------------------------------
# what to write


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


# --------------------------------------------------------------------------------------
# public API


def detect_format(source: str | os.PathLike, format: str | None = None) -> str:
    """The importer for `source`: `format` if given, else from the extension or prefix.

    Returns one of :data:`FORMATS`. A directory is a folder of FITS stamps; a string
    ``"sklearn:NAME"`` is one of scikit-learn's bundled data sets.
    """
    if format is not None:
        fmt = str(format).lower()
        fmt = {"fit": "fits", "h5": "hdf5", "npy": "numpy", "npz": "numpy"}.get(fmt, fmt)
        if fmt not in FORMATS:
            raise InputError(f"unknown import format {format!r}; choose one of {', '.join(FORMATS)}")
        return fmt
    text = os.fspath(source)
    if text.startswith("sklearn:"):
        return "sklearn"
    path = Path(text)
    if path.is_dir():
        return "fits"
    name = path.name.lower()
    for ext in sorted(_EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext):
            return _EXTENSIONS[ext]
    if not path.exists():
        raise InputError(f"no such file or folder: {path}; check the path")
    raise InputError(f"{path}: cannot tell the format from the extension {path.suffix!r}; "
                     f"known extensions: {', '.join(_EXTENSIONS)}. Pass format= "
                     f"(--format) one of {', '.join(FORMATS)}")


def import_data(source: str | os.PathLike, out: str | os.PathLike, *, format: str | None = None,
                overwrite: bool = False, **options: Any) -> Store:
    """Import survey data from `source` into a new store at `out`; returns the opened store.

    Arguments:
        source: a FITS file holding an image cube, a folder of FITS stamps (one image per
            file, taken in name order), an HDF5 file, a ``.npy``/``.npz`` file, or
            ``"sklearn:iris"`` / ``"sklearn:digits"`` (also "wine", "breast_cancer").
        out: the store directory to create.
        format: "fits", "hdf5", "numpy" or "sklearn" (default: from the extension).
        overwrite: replace an existing store at `out` (only once the import has succeeded).

    Options (all formats except sklearn, which takes only the last two):
        catalog: one row per object. A path (FITS binary table, CSV, ECSV, Parquet), or a
            name inside the source: a FITS table HDU (name or index; default: the first
            table HDU of the FITS file), an HDF5 group of 1-D datasets or compound dataset
            (default: "catalog" if present, else the 1-D root datasets of length N), or,
            for ``.npz``, every 1-D member of length N. ``catalog=""`` imports no catalog.
        id_column: catalog column holding integer ids (default "id", any case); ``""``
            numbers objects 0..N-1 and keeps a non-integer "id" column as "source_id".
        units: catalog units, a mapping or "col=unit,col=unit", added to those in the file.
        bands: band names, a sequence or "g,r,i", one per channel (default: header
            BAND/FILTER or BAND1..BANDn/FILTER1..FILTERn keywords).
        pixel_scale: arcsec per pixel (default: from the header, see the module doc).
        psf: a (h, w) or (C, h, w) PSF shared by all objects, or (N, C, h, w) one per
            object: a path (FITS or .npy) or a name inside the source (HDU, dataset, key).
            An (N, h, w) array is one PSF per object when the images have one band.
        ivar: inverse variance with the shape of the images: a path (FITS cube, folder of
            stamps or .npy) or a name inside the source (HDU, dataset, npz key "ivar").
        wavelength: spectra's wavelength grid in Angstrom: an array, a path (.npy, text,
            FITS), or a name inside the source (HDU, dataset, key "wavelength", taken by
            default). FITS spectra default to the header's linear WAVE/AWAV axis.
        kind: "spectrum" (default) or "table" for 2-D (N, L) data.
        hdu: FITS only: the HDU (name or index) with the cube, or in each stamp (default:
            the first with >= 3-D data; in a stamp, the first with >= 2-D data).
        x: HDF5 dataset / npz member holding the pixels (default "x" for npz; else the
            only 2-D/3-D/4-D float dataset).
        nan_policy: "raise" (default) refuses NaN/inf pixels, naming the objects; "zero"
            sets them to 0 and writes a boolean ``mask`` array, True for bad pixels. With
            "raise" the import stops at the first batch with bad pixels, naming its objects.
        batch_rows: objects read and written per batch (default 4096).

    Provenance (source path, format, options, file sizes, masked pixel counts) goes into
    the store's ``meta["provenance"]``.
    """
    fmt = detect_format(source, format)
    out = Path(out)
    unknown = sorted(set(options) - set(_OPTIONS[fmt]))
    if unknown:
        raise InputError(f"unknown option(s) {', '.join(unknown)} for a {fmt} import; the {fmt} "
                         f"importer takes: {', '.join(_OPTIONS[fmt])}")
    options = {k: v for k, v in options.items() if v is not None}
    nan_policy = str(options.get("nan_policy", "raise")).lower()
    if nan_policy not in ("raise", "zero"):
        raise InputError(f"nan_policy {options['nan_policy']!r}: choose 'raise' (refuse NaN/inf "
                         "pixels) or 'zero' (set them to 0 and record a mask)")
    batch_rows = _positive_int(options.get("batch_rows", _DEFAULT_BATCH_ROWS), "batch_rows")
    if out.exists() and not overwrite:
        raise StoreError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it "
                         "or choose another path")
    planner = {"fits": _plan_fits, "hdf5": _plan_hdf5, "numpy": _plan_numpy,
               "sklearn": _plan_sklearn}[fmt]
    with contextlib.ExitStack() as stack:
        plan = planner(source, options, stack)
        _finish_plan(plan, options)
        provenance = {
            "importer": "deepfield.data.importers.import_data",
            "source": os.fspath(source) if fmt == "sklearn" else str(Path(source).resolve()),
            "format": fmt,
            "options": _jsonable(options),
            "files": plan.files,
            "nan_policy": nan_policy,
        }
        return _write(plan, out, overwrite=overwrite, nan_policy=nan_policy,
                      batch_rows=batch_rows, provenance=provenance)


# --------------------------------------------------------------------------------------
# shared checks and writing


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


def _file_record(path: Path) -> dict[str, Any]:
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


# --------------------------------------------------------------------------------------
# FITS


def _open_fits(path: Path, stack: contextlib.ExitStack | None = None):
    """Open a FITS file (all headers read), refusing truncated or corrupt files."""
    from astropy.io import fits

    hdul = None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hdul = fits.open(path, memmap=True, lazy_load_hdus=False)
        truncated = [w for w in caught if "truncated" in str(w.message).lower()]
        if truncated:
            raise InputError(f"{path} is truncated ({truncated[0].message}); re-write or "
                             "re-download it")
        for w in caught:
            if not issubclass(w.category, ResourceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    except DeepfieldError:
        if hdul is not None:
            hdul.close()
        raise
    except Exception as err:
        if hdul is not None:
            hdul.close()
        raise InputError(f"{path} is not a readable FITS file ({type(err).__name__}: {err}); "
                         f"{_READ_ERRORS_HINT}") from None
    if stack is not None:
        stack.callback(hdul.close)
    return hdul


def _hdu_shape(hdu) -> tuple[int, ...]:
    if not getattr(hdu, "is_image", False):
        return ()
    return tuple(hdu.shape)


def _describe_hdus(hdul) -> str:
    parts = []
    for i, hdu in enumerate(hdul):
        if getattr(hdu, "is_image", False):
            parts.append(f"{i} {hdu.name} image {_hdu_shape(hdu) or 'empty'}")
        else:
            parts.append(f"{i} {hdu.name} table of {hdu.header.get('NAXIS2', 0)} rows")
    return "; ".join(parts)


def _find_hdu(hdul, key, path: Path, what: str):
    """The HDU named or numbered `key` (an int, digit string or EXTNAME, any case)."""
    if isinstance(key, str) and key.strip().lstrip("-").isdigit():
        key = int(key)
    try:
        return hdul[key]
    except (KeyError, IndexError):
        raise InputError(f"{path} has no HDU {key!r} for the {what}; its HDUs: "
                         f"{_describe_hdus(hdul)}") from None


def _has_hdu(hdul, key) -> bool:
    if isinstance(key, int) or (isinstance(key, str) and key.strip().isdigit()):
        return 0 <= int(key) < len(hdul)
    try:
        hdul[key]
        return True
    except (KeyError, IndexError):
        return False


def _image_hdu(hdul, path: Path, key=None, min_ndim: int = 3):
    if key is not None:
        hdu = _find_hdu(hdul, key, path, "images")
        if not _hdu_shape(hdu):
            raise InputError(f"{path} HDU {key!r} holds no image data; its HDUs: {_describe_hdus(hdul)}")
        return hdu
    for hdu in hdul:
        if len(_hdu_shape(hdu)) >= min_ndim:
            return hdu
    want = "an image cube (N, H, W) or (N, C, H, W)" if min_ndim >= 3 else "an image"
    raise InputError(f"{path} has no HDU with {want}; its HDUs: {_describe_hdus(hdul)}. Pass "
                     "hdu= (--hdu) to pick one, or pass a folder of stamp files")


def _hdu_rows(hdu, path: Path) -> _Rows:
    label = f"{path} (HDU {hdu.name or '0'})"
    return _Rows(_hdu_shape(hdu), lambda a, b: hdu.section[a:b], label)


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


def _header_pixel_scale(headers) -> float | None:
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


def _header_bands(headers, channels: int) -> tuple[str, ...]:
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


def _stamp_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.name.lower().endswith(_FITS_SUFFIXES))
    if not files:
        raise InputError(f"folder {folder} has no FITS files ({', '.join(_FITS_SUFFIXES)}); "
                         "give a folder of stamp files or a FITS cube")
    return files


def _stamp_rows(folder: Path, hdu_key, what: str) -> tuple[_Rows, list]:
    """Rows from a folder of stamps, one image per file; checks every file's shape first."""
    files = _stamp_files(folder)
    shape = None
    headers = []
    hdu_index = []
    for i, path in enumerate(files):
        hdul = _open_fits(path)
        try:
            hdu = _image_hdu(hdul, path, hdu_key, min_ndim=2)
            this = _hdu_shape(hdu)
            if len(this) not in (2, 3):
                raise InputError(f"stamp {path} has shape {this}; a stamp is one (H, W) or "
                                 "(C, H, W) image")
            if shape is None:
                shape = this
            elif this != shape:
                raise InputError(f"stamp {path.name} in {folder} has shape {this} but {files[0].name} "
                                 f"has {shape}: all stamps must share one shape; cut them to the "
                                 "same size or move the odd one out")
            hdu_index.append(hdul.index_of(hdu))
            if i == 0 or what == "images":
                headers.append((path, hdu.header.copy(), hdul[0].header.copy()))
        finally:
            hdul.close()

    def read(a: int, b: int) -> np.ndarray:
        from astropy.io import fits

        out = np.empty((b - a, *shape), dtype=np.float32)
        for k in range(a, b):
            try:
                with fits.open(files[k], memmap=False) as hl:
                    out[k - a] = hl[hdu_index[k]].data
            except Exception as err:
                raise InputError(f"stamp {files[k]}: cannot read its pixels ({type(err).__name__}: "
                                 f"{err}); {_READ_ERRORS_HINT}") from None
        return out

    label = f"stamp folder {folder}"
    return _Rows((len(files), *shape), read, label, lambda i: files[i].name), headers


def _table_columns(table, label: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Columns and units of an astropy Table (masked values: NaN for floats, '' for text)."""
    columns, units = {}, {}
    for col in table.itercols():
        data = col
        if hasattr(col, "mask") and np.any(col.mask):
            if col.dtype.kind in "iu":
                data = col.astype(np.float64).filled(np.nan)
            elif col.dtype.kind == "f":
                data = col.filled(np.nan)
            elif col.dtype.kind in "SU":
                data = col.filled("")
            else:
                data = col.filled()
        columns[col.name] = np.asarray(data)
        if col.unit is not None:
            text = col.unit.to_string()
            if text:
                units[col.name] = text
    return columns, units


def _read_catalog_file(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str], str]:
    """A catalog from a FITS table, CSV, ECSV or Parquet file: columns, units, label."""
    name = path.name.lower()
    label = f"catalog {path}"
    try:
        if name.endswith(_FITS_SUFFIXES):
            from astropy.table import Table

            hdul = _open_fits(path)
            try:
                tables = [i for i, h in enumerate(hdul) if not getattr(h, "is_image", True)]
                if not tables:
                    raise InputError(f"{path} has no table HDU for the catalog; its HDUs: "
                                     f"{_describe_hdus(hdul)}")
                table = Table.read(hdul, hdu=tables[0], mask_invalid=False)
            finally:
                hdul.close()
            cols, units = _table_columns(table, label)
            return cols, units, label
        if name.endswith(".ecsv"):
            from astropy.table import Table

            cols, units = _table_columns(Table.read(path, format="ascii.ecsv"), label)
            return cols, units, label
        if name.endswith((".csv", ".txt", ".tsv")):
            import pyarrow.csv as pacsv

            opts = pacsv.ParseOptions(delimiter="\t" if name.endswith(".tsv") else ",")
            table = pacsv.read_csv(path, parse_options=opts)
            return _arrow_columns(table) + (label,)
        if name.endswith((".parquet", ".pq")):
            import pyarrow.parquet as pq

            return _arrow_columns(pq.read_table(path)) + (label,)
    except DeepfieldError:
        raise
    except Exception as err:
        raise InputError(f"{label}: cannot read it ({type(err).__name__}: {err}); "
                         f"{_READ_ERRORS_HINT}") from None
    raise InputError(f"catalog {path}: unknown catalog format; give a FITS binary table, CSV, "
                     "ECSV or Parquet file")


def _arrow_columns(table) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    columns, units = {}, {}
    for fld in table.schema:
        columns[fld.name] = table.column(fld.name).to_numpy(zero_copy_only=False)
        if fld.metadata and b"unit" in fld.metadata:
            units[fld.name] = fld.metadata[b"unit"].decode()
    return columns, units


def _external_array(path: Path, what: str, stack: contextlib.ExitStack) -> _Rows:
    """A PSF / ivar / wavelength array from its own file (FITS, .npy, folder of stamps, text)."""
    name = path.name.lower()
    if path.is_dir():
        return _stamp_rows(path, None, what)[0]
    if name.endswith(_FITS_SUFFIXES):
        hdul = _open_fits(path, stack)
        hdu = _image_hdu(hdul, path, None, min_ndim=1)
        return _Rows(_hdu_shape(hdu), lambda a, b: hdu.section[a:b], f"{path} (HDU {hdu.name or '0'})")
    if name.endswith(".npy"):
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as err:
            raise InputError(f"{path} is not a readable .npy file ({type(err).__name__}: {err}); "
                             f"{_READ_ERRORS_HINT}") from None
        return _array_rows(arr, str(path))
    if name.endswith((".txt", ".dat", ".csv")) and what == "wavelength":
        try:
            arr = np.loadtxt(path, delimiter="," if name.endswith(".csv") else None, ndmin=1)
        except Exception as err:
            raise InputError(f"{path}: cannot read a wavelength list ({err}); give one number "
                             "(Angstrom) per line") from None
        return _array_rows(arr.reshape(-1), str(path))
    raise InputError(f"{path}: cannot read a {what} array from this kind of file; give a FITS "
                     "or .npy file")


def _wavelength_from_table_hdu(hdu, path: Path) -> np.ndarray:
    from astropy.table import Table

    table = Table.read(hdu)
    col = table.columns[0]
    return _to_angstrom(np.asarray(col), col.unit.to_string() if col.unit else None,
                        f"{path} HDU {hdu.name}")


def _plan_fits(source, options: Mapping[str, Any], stack: contextlib.ExitStack) -> _Plan:
    path = _existing(source)
    hdul = None
    if path.is_dir():
        x, stamp_headers = _stamp_rows(path, options.get("hdu"), "images")
        headers = [stamp_headers[0][1], stamp_headers[0][2]]
        plan = _Plan(x=x, files={str(path.resolve()): _file_record(path)})
        channels = x.shape[1] if x.ndim == 4 else 1
        if "bands" not in options and channels == 1:
            seen = {}
            for stamp, h, h0 in stamp_headers:
                band = _header_bands([h, h0], 1)
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
        plan = _Plan(x=x, files={str(path.resolve()): _file_record(path)})

    channels = x.shape[1] if x.ndim == 4 else 1
    if x.ndim >= 3:
        plan.pixel_scale = _header_pixel_scale(headers)
        plan.header_bands = _header_bands(headers, channels)

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
            plan.files[str(cat_path.resolve())] = _file_record(cat_path)
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
            other = _existing(key, what)
            rows = _external_array(other, what, stack)
            plan.files[str(other.resolve())] = _file_record(other)
        if what == "psf":
            plan.psf = rows
        else:
            plan.ivar = rows

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


def _resolve_wavelength(value, plan: _Plan, source: Path, lookup: Callable,
                        stack: contextlib.ExitStack) -> np.ndarray | None:
    """Wavelength grid from an array, a name inside the source (via `lookup`), or a file."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike, int)) or isinstance(value, bool):
        return np.asarray(value, dtype=np.float64)
    found = lookup(value)
    if found is not None:
        return found
    path = Path(value)
    if not path.exists():
        raise InputError(f"wavelength {value!r} is neither in {source} nor a file; give the name "
                         "of the wavelength dataset/HDU/key, or a file of Angstrom values")
    plan.files[str(path.resolve())] = _file_record(path)
    return np.asarray(_external_array(path, "wavelength", stack).read_all(),
                      dtype=np.float64).reshape(-1)


def _merge_catalog(plan: _Plan, columns: Mapping[str, np.ndarray], units: Mapping[str, str],
                   label: str) -> None:
    clash = sorted(set(columns) & set(plan.catalog) - {"stamp_file"})
    if clash:
        raise InputError(f"{label} has columns {clash} that are already taken (from "
                         f"{plan.catalog_label or 'the source'}); rename them")
    plan.catalog.update(columns)
    plan.units.update(units)
    plan.catalog_label = label if not plan.catalog_label else f"{plan.catalog_label} + {label}"


# --------------------------------------------------------------------------------------
# HDF5


def _plan_hdf5(source, options: Mapping[str, Any], stack: contextlib.ExitStack) -> _Plan:
    import h5py

    path = _existing(source)
    try:
        f = h5py.File(path, "r")
    except Exception as err:
        raise InputError(f"{path} is not a readable HDF5 file ({type(err).__name__}: {err}); "
                         f"{_READ_ERRORS_HINT}") from None
    stack.callback(f.close)
    datasets: dict[str, Any] = {}
    try:
        f.visititems(lambda name, obj: datasets.__setitem__(name, obj)
                     if isinstance(obj, h5py.Dataset) else None)
    except Exception as err:
        raise InputError(f"{path}: cannot list its datasets ({type(err).__name__}: {err}); "
                         f"{_READ_ERRORS_HINT}") from None

    def listing() -> str:
        return ", ".join(f"{k} {ds.shape} {ds.dtype}" for k, ds in datasets.items()) or "(none)"

    def dataset(name: str, what: str):
        name = str(name).lstrip("/")
        if name not in datasets:
            raise InputError(f"{path} has no dataset {name!r} for the {what}; it has: {listing()}")
        return datasets[name]

    def in_file(key) -> bool:
        return isinstance(key, str) and key.lstrip("/") in f

    def h5_rows(ds) -> _Rows:
        return _Rows(ds.shape, lambda a, b: ds[a:b], f"{path} dataset {ds.name!r}")

    named = {str(options[k]).lstrip("/") for k in ("psf", "ivar", "wavelength", "catalog")
             if _is_name(options.get(k))}
    cat_key = options.get("catalog")
    if cat_key is None and "catalog" in f:
        cat_key = "catalog"
    cat_prefix = f"{str(cat_key).lstrip('/')}/" if isinstance(cat_key, str) else None

    if "x" in options:
        x_ds = dataset(options["x"], "pixels (x)")
    else:
        candidates = [k for k, ds in datasets.items()
                      if ds.dtype.kind == "f" and ds.ndim in (2, 3, 4) and k not in named
                      and not (cat_prefix and k.startswith(cat_prefix))]
        if len(candidates) != 1:
            which = ", ".join(f"{k} {datasets[k].shape}" for k in candidates) or "none"
            raise InputError(f"{path}: pass x= (--x) naming the pixel dataset; the 2-D/3-D/4-D "
                             f"float datasets are: {which}. All datasets: {listing()}")
        x_ds = datasets[candidates[0]]
    x = h5_rows(x_ds)
    plan = _Plan(x=x, files={str(path.resolve()): _file_record(path)})
    n = x.shape[0] if x.ndim else 0
    x_name = x_ds.name.lstrip("/")

    if cat_key not in (None, "", False):
        if in_file(cat_key):
            cols, units = _h5_catalog(f[str(cat_key).lstrip("/")], path)
            _merge_catalog(plan, cols, units, f"catalog {path}:{str(cat_key).lstrip('/')}")
        else:
            cat_path = Path(cat_key)
            if not cat_path.is_file():
                raise InputError(f"catalog {cat_key!r} is neither a group/dataset in {path} nor a "
                                 f"file; datasets in {path}: {listing()}")
            cols, units, label = _read_catalog_file(cat_path)
            plan.files[str(cat_path.resolve())] = _file_record(cat_path)
            _merge_catalog(plan, cols, units, label)
    elif cat_key is None:
        # no catalog named: the root-level 1-D datasets are the catalog columns
        cols, units = {}, {}
        for key, ds in f.items():
            if isinstance(ds, h5py.Dataset) and ds.ndim == 1 and key not in named and key != x_name \
                    and not (key == "wavelength" and x.ndim == 2):
                cols[key], unit = _h5_column(ds, path)
                if unit:
                    units[key] = unit
        if cols:
            _merge_catalog(plan, cols, units, f"catalog {path} (root 1-D datasets)")

    for what in ("psf", "ivar"):
        key = options.get(what)
        if key is None:
            continue
        if isinstance(key, np.ndarray):
            rows = _array_rows(key, "given as an array")
        elif in_file(key):
            rows = h5_rows(dataset(key, what))
        elif Path(str(key)).exists():
            rows = _external_array(Path(key), what, stack)
            plan.files[str(Path(key).resolve())] = _file_record(Path(key))
        else:
            raise InputError(f"{path} has no dataset {key!r} for the {what}, and no such file "
                             f"exists; datasets: {listing()}")
        if what == "psf":
            plan.psf = rows
        else:
            plan.ivar = rows

    wl = options.get("wavelength")
    if wl is None and x.ndim == 2 and "wavelength" in datasets and n:
        wl = "wavelength"
    if wl is not None:
        def lookup(key):
            if not in_file(key):
                return None
            ds = dataset(key, "wavelength grid")
            return _to_angstrom(ds[...].reshape(-1), _h5_unit(ds), f"{path} dataset {ds.name!r}")

        plan.wavelength = _resolve_wavelength(wl, plan, path, lookup, stack)
    return plan


def _h5_unit(ds) -> str | None:
    for key in ("unit", "units", "UNIT", "TUNIT"):
        if key in ds.attrs:
            value = ds.attrs[key]
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def _h5_column(ds, path: Path) -> tuple[np.ndarray, str | None]:
    import h5py

    try:
        if h5py.check_string_dtype(ds.dtype) is not None:
            values = np.asarray(ds.asstr()[...], dtype=object)
        else:
            values = ds[...]
    except Exception as err:
        raise InputError(f"{path} dataset {ds.name!r}: cannot read it ({type(err).__name__}: "
                         f"{err}); {_READ_ERRORS_HINT}") from None
    return values, _h5_unit(ds)


def _h5_catalog(obj, path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Catalog columns from a group of 1-D datasets or one compound dataset."""
    import h5py

    columns, units = {}, {}
    if isinstance(obj, h5py.Group):
        for key, ds in obj.items():
            if isinstance(ds, h5py.Dataset):
                columns[key], unit = _h5_column(ds, path)
                if unit:
                    units[key] = unit
        if not columns:
            raise InputError(f"{path} group {obj.name!r} has no datasets to use as catalog columns")
        return columns, units
    if obj.dtype.names is None:
        raise InputError(f"{path} dataset {obj.name!r} is not a catalog: give a group of 1-D "
                         "datasets or a compound (table) dataset")
    try:
        data = obj[...]
    except Exception as err:
        raise InputError(f"{path} dataset {obj.name!r}: cannot read it ({type(err).__name__}: "
                         f"{err}); {_READ_ERRORS_HINT}") from None
    for name in obj.dtype.names:
        columns[name] = data[name]
        unit = obj.attrs.get(f"unit_{name}")
        if unit is not None:
            units[name] = unit.decode() if isinstance(unit, bytes) else str(unit)
    return columns, units


# --------------------------------------------------------------------------------------
# NumPy


def _plan_numpy(source, options: Mapping[str, Any], stack: contextlib.ExitStack) -> _Plan:
    path = _existing(source)
    is_npz = path.name.lower().endswith(".npz")
    try:
        if is_npz:
            archive = np.load(path, allow_pickle=False)
            stack.callback(archive.close)
            members = {k: archive[k] for k in archive.files}
        else:
            members = {"x": np.load(path, mmap_mode="r", allow_pickle=False)}
    except Exception as err:
        raise InputError(f"{path} is not a readable NumPy file ({type(err).__name__}: {err}); "
                         f"{_READ_ERRORS_HINT}") from None
    x_key = str(options.get("x", "x"))
    if not is_npz and "x" in options:
        raise InputError(f"{path} is a .npy file holding one array; option x= applies to .npz files")
    if x_key not in members:
        listing = ", ".join(f"{k} {v.shape}" for k, v in members.items()) or "(none)"
        raise InputError(f"{path} has no member {x_key!r} for the pixels; it has: {listing}. "
                         "Pass x= (--x) naming the one to import")
    x = _array_rows(members[x_key], f"{path}" if not is_npz else f"{path} member {x_key!r}")
    plan = _Plan(x=x, files={str(path.resolve()): _file_record(path)})
    n = len(x) if x.ndim else 0

    used = {x_key}
    for what in ("psf", "ivar"):
        key = options.get(what, what if what in members else None)
        if key is None:
            continue
        if isinstance(key, str) and key in members:
            used.add(key)
            rows = _array_rows(members[key], f"{path} member {key!r}")
        elif isinstance(key, np.ndarray):
            rows = _array_rows(key, "given as an array")
        else:
            other = _existing(key, what)
            rows = _external_array(other, what, stack)
            plan.files[str(other.resolve())] = _file_record(other)
        if what == "psf":
            plan.psf = rows
        else:
            plan.ivar = rows
    wl = options.get("wavelength", "wavelength" if "wavelength" in members else None)
    if wl is not None:
        if isinstance(wl, str) and wl in members:
            used.add(wl)
        if x.ndim != 2 and "wavelength" in options:
            raise InputError(f"option 'wavelength' applies to spectra, but {x.label} of shape "
                             f"{x.shape} holds images")
        if x.ndim == 2:
            plan.wavelength = _resolve_wavelength(
                wl, plan, path, lambda k: np.asarray(members[k], dtype=np.float64).reshape(-1)
                if isinstance(k, str) and k in members else None, stack)

    cat = options.get("catalog")
    if is_npz and cat is None:
        cols = {}
        for key, value in members.items():
            if key in used or value.ndim == 0:
                continue
            if value.ndim != 1:
                raise InputError(f"{path} member {key!r} has shape {value.shape}; the npz importer "
                                 f"understands x (the pixels, or x=NAME), psf, ivar, wavelength "
                                 f"and 1-D catalog columns of length {n}: rename or drop it")
            cols[key] = value
        if cols:
            _merge_catalog(plan, cols, {}, f"catalog {path} (1-D members)")
    elif cat not in (None, "", False):
        cat_path = _existing(cat, "catalog")
        cols, units, label = _read_catalog_file(cat_path)
        plan.files[str(cat_path.resolve())] = _file_record(cat_path)
        _merge_catalog(plan, cols, units, label)
    return plan


# --------------------------------------------------------------------------------------
# scikit-learn's bundled data sets


def _plan_sklearn(source, options: Mapping[str, Any], stack: contextlib.ExitStack) -> _Plan:
    """iris/wine/breast_cancer as (N, D) "table" stores; digits as (N, 1, 8, 8) images.

    Digits pixels are kept as scikit-learn gives them: integer counts 0-16 (not scaled).
    """
    name = os.fspath(source)
    name = name.split(":", 1)[1] if name.startswith("sklearn:") else name
    name = name.strip().lower().replace("-", "_")
    if name not in SKLEARN_SETS:
        raise InputError(f"unknown scikit-learn data set {name!r}; the bundled ones are: "
                         f"{', '.join('sklearn:' + s for s in SKLEARN_SETS)}")
    import sklearn
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    target = np.asarray(bunch.target, dtype=np.int64)
    target_names = [str(t) for t in np.asarray(bunch.target_names).tolist()]
    extra = {"sklearn_dataset": name, "sklearn_version": sklearn.__version__,
             "target_names": target_names}
    if name == "digits":
        x = np.asarray(bunch.images, dtype=np.float32)[:, None]
        extra["pixel_values"] = "integer counts 0-16 as given by scikit-learn (not normalised)"
        plan = _Plan(x=_array_rows(x, "sklearn:digits"), kind="image")
        plan.catalog = {"target": target}
    else:
        x = np.asarray(bunch.data, dtype=np.float32)
        extra["feature_names"] = [str(f) for f in bunch.feature_names]
        plan = _Plan(x=_array_rows(x, f"sklearn:{name}"), kind="table")
        plan.catalog = {"target": target,
                        "target_name": np.array([target_names[t] for t in target], dtype=object)}
    plan.catalog_label = f"sklearn:{name} targets"
    plan.extra_meta = extra
    return plan
