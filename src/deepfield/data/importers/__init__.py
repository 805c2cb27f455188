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
import os
from pathlib import Path
from typing import Any

from deepfield.data.importers._common import (_DEFAULT_BATCH_ROWS, _EXTENSIONS, _finish_plan, _jsonable,
                                              _positive_int, _write)
from deepfield.data.importers.cosmos import import_cosmos
from deepfield.data.importers.cutouts import import_cutouts
from deepfield.data.importers.fits import _plan_fits
from deepfield.data.importers.hdf5 import _plan_hdf5
from deepfield.data.importers.npy import _plan_numpy
from deepfield.data.importers.sklearn_sets import SKLEARN_SETS, _plan_sklearn
from deepfield.data.store import Store
from deepfield.errors import InputError, StoreError

__all__ = ["import_data", "import_cosmos", "import_cutouts", "detect_format", "FORMATS", "SKLEARN_SETS"]

FORMATS = ("fits", "hdf5", "numpy", "sklearn")

_COMMON_OPTIONS = ("catalog", "bands", "pixel_scale", "wavelength", "psf", "ivar", "nan_policy",
                   "batch_rows", "units", "id_column", "kind")

_OPTIONS = {
    "fits": _COMMON_OPTIONS + ("hdu",),
    "hdf5": _COMMON_OPTIONS + ("x",),
    "numpy": _COMMON_OPTIONS + ("x",),
    "sklearn": ("nan_policy", "batch_rows"),
}


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
