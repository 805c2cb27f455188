"""Reading the files every format may point at: FITS HDUs and folders of FITS stamps, catalog
tables (FITS, CSV, ECSV, Parquet) and side arrays (PSF, ivar, wavelength grid)."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from deepfield.data.importers._common import (_FITS_SUFFIXES, _READ_ERRORS_HINT, _Plan, _Rows,
                                              _array_rows, _existing, file_record, _to_angstrom)
from deepfield.errors import DeepfieldError, InputError

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


def _side_file_rows(plan, key, what: str, stack: contextlib.ExitStack) -> _Rows:
    """The rows of a PSF / ivar array given as a file of its own (named `key`), recorded in the
    plan's provenance with its size and digest."""
    other = _existing(key, what)
    rows = _external_array(other, what, stack)
    plan.files[str(other.resolve())] = file_record(other)
    return rows


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
    plan.files[str(path.resolve())] = file_record(path)
    return np.asarray(_external_array(path, "wavelength", stack).read_all(),
                      dtype=np.float64).reshape(-1)
