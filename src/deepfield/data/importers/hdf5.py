"""HDF5: the pixels, PSF, ivar and wavelength grid as datasets, the catalog as a group of 1-D
datasets or a compound dataset (units from ``unit`` attributes)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from deepfield.data.importers._common import (_READ_ERRORS_HINT, _Plan, _Rows, _array_rows, _existing,
                                              file_record, _is_name, _merge_catalog, _to_angstrom)
from deepfield.data.importers._readers import (_external_array, _read_catalog_file,
                                               _resolve_wavelength)
from deepfield.errors import InputError

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
    plan = _Plan(x=x, files={str(path.resolve()): file_record(path)})
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
            plan.files[str(cat_path.resolve())] = file_record(cat_path)
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
            plan.files[str(Path(key).resolve())] = file_record(Path(key))
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
