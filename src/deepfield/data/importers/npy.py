"""NumPy: a ``.npy`` array of pixels, or a ``.npz`` archive whose 1-D members are catalog columns."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from deepfield.data.importers._common import (_READ_ERRORS_HINT, _Plan, _array_rows, _existing,
                                              file_record, _merge_catalog)
from deepfield.data.importers._readers import (_side_file_rows, _read_catalog_file,
                                               _resolve_wavelength)
from deepfield.errors import InputError

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
    plan = _Plan(x=x, files={str(path.resolve()): file_record(path)})
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
            rows = _side_file_rows(plan, key, what, stack)
        setattr(plan, what, rows)  # plan.psf or plan.ivar
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
        plan.files[str(cat_path.resolve())] = file_record(cat_path)
        _merge_catalog(plan, cols, units, label)
    return plan
