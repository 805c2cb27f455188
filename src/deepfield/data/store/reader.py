"""Reading a committed store: :func:`open_store` validates it and returns a :class:`Store`.

Only the first ``meta['n']`` rows (the committed ones) are ever visible, so a killed append
leaves what readers see unchanged.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepfield.data.splits import split_fractions
from deepfield.data.store.dataset import StoreDataset
from deepfield.data.store.format import DIGEST_ARRAY, FORMAT_VERSION, partial_path
from deepfield.data.store.query import evaluate_query
from deepfield.errors import InputError, StoreError

__all__ = ["Store", "open_store"]


class Store:
    """A committed store, opened read-only. Use :func:`open_store`.

    Arrays are read lazily from Zarr; the catalog is read once. Only the first ``len(self)``
    rows (the committed ones) are ever visible.
    """

    def __init__(self, path: Path, meta: dict, catalog: pa.Table, group):
        self.path = path
        self.meta = meta
        self._catalog = catalog
        self._group = group
        self._n = int(meta["n"])

    # -- description
    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, n={self._n}, kind={self.kind!r}, shape={self.sample_shape})"

    @property
    def kind(self) -> str:
        """'image' for (N, C, H, W) stores, 'spectrum' for (N, L), 'table' for (N, D)."""
        return self.meta["kind"]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["sample_shape"])

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(self.meta.get("bands") or ())

    @property
    def pixel_scale(self) -> float | None:
        """Pixel scale in arcsec/pixel (images), or None."""
        return self.meta.get("pixel_scale")

    @property
    def wavelength(self) -> np.ndarray | None:
        """Observed-frame wavelength grid in Angstrom (spectra), or None."""
        wl = self.meta.get("wavelength")
        return None if wl is None else np.asarray(wl, dtype=np.float64)

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def array_names(self) -> tuple[str, ...]:
        return tuple(self.meta["arrays"])

    @property
    def shared_arrays(self) -> tuple[str, ...]:
        return tuple(self.meta.get("shared", ()))

    def has(self, name: str) -> bool:
        return name in self.meta["arrays"] or name in self.shared_arrays

    def array_shape(self, name: str) -> tuple[int, ...]:
        """The per-object shape of array `name` (a shared array's full shape)."""
        if not self.has(name):
            raise InputError(f"store {self.path} has no array {name!r}; it has {', '.join(self.array_names)}")
        shape = tuple(self._group[name].shape)
        return shape if name in self.shared_arrays and name not in self.meta["arrays"] else shape[1:]

    def read_shared(self, name: str) -> np.ndarray:
        """The whole of shared array `name` (no N axis), e.g. one (C, h, w) PSF for every object."""
        if name not in self.shared_arrays:
            raise InputError(f"store {self.path} has no shared array {name!r}; its shared arrays are: "
                             f"{', '.join(self.shared_arrays) or 'none'}")
        return np.asarray(self._group[name][...])

    def chunk_rows(self, name: str = "x") -> int:
        """Rows per on-disk chunk of the per-object array `name`: whole chunks read fastest."""
        if name not in self.meta["arrays"]:
            raise InputError(f"store {self.path} has no per-object array {name!r}; it has {', '.join(self.array_names)}")
        return int(self._group[name].chunks[0])

    # -- catalog
    @property
    def catalog(self) -> pa.Table:
        """The catalog as a pyarrow Table (one row per object, in store order)."""
        return self._catalog

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self._catalog.column_names)

    @property
    def units(self) -> dict[str, str]:
        out = {}
        for field in self._catalog.schema:
            if field.metadata and b"unit" in field.metadata:
                out[field.name] = field.metadata[b"unit"].decode()
        return out

    @property
    def ids(self) -> np.ndarray:
        return self.column("id")

    def column(self, name: str) -> np.ndarray:
        if name not in self._catalog.column_names:
            raise InputError(
                f"store {self.path} has no catalog column {name!r}; it has: "
                f"{', '.join(self._catalog.column_names)}"
            )
        return self._catalog.column(name).to_numpy(zero_copy_only=False)

    # -- arrays
    def read(self, name: str = "x", index=None) -> np.ndarray:
        """Read rows of an array: `index` is None (all), a slice, or integer indices.

        Shared arrays (no N axis) are broadcast: rows of a shared PSF are the PSF itself.
        """
        if isinstance(index, slice) and index.step not in (None, 1):
            index = np.arange(*index.indices(self._n))  # zarr reads forward steps only
        if name in self.shared_arrays:
            arr = np.asarray(self._group[name][...])
            if index is None:
                return np.broadcast_to(arr, (self._n, *arr.shape))
            if isinstance(index, slice):
                count = len(range(*index.indices(self._n)))
            else:
                idx = np.atleast_1d(np.asarray(index))
                count = int(idx.sum()) if idx.dtype == bool else idx.size
            return np.broadcast_to(arr, (count, *arr.shape))
        if name not in self.meta["arrays"]:
            raise InputError(
                f"store {self.path} has no array {name!r}; it has: {', '.join(self.array_names)}"
                + (". Simulate or import with a PSF, or pass --psf-fwhm" if name == "psf" else "")
            )
        arr = self._group[name]
        if index is None:
            return self._zarr_read(name, lambda: arr[: self._n])
        if isinstance(index, slice):
            start, stop, _ = index.indices(self._n)
            return self._zarr_read(name, lambda: arr[start:stop])
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self._n):
            raise InputError(f"row index out of range for store {self.path} with {self._n} objects")
        if idx.size == 0:
            return np.zeros((0, *arr.shape[1:]), dtype=arr.dtype)
        # read the covering range once when indices are dense, else one chunk-friendly pass
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        lo, hi = int(sorted_idx[0]), int(sorted_idx[-1]) + 1
        if hi - lo <= 4 * idx.size:
            block = self._zarr_read(name, lambda: arr[lo:hi])
            out = block[idx - lo]
        else:
            out = self._zarr_read(name, lambda: arr.get_orthogonal_selection((sorted_idx,)))
            inv = np.empty_like(order)
            inv[order] = np.arange(order.size)
            out = out[inv]
        return out

    def _zarr_read(self, name: str, read) -> np.ndarray:
        # a truncated or garbled chunk fails inside zarr's codecs with many exception types
        try:
            return np.asarray(read())
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as err:
            raise StoreError(f"{self.path}: array {name!r} cannot be read ({type(err).__name__}: {err}); "
                             f"a chunk is damaged. Run `deepfield verify {self.path}` to name the bad rows, "
                             "then re-create the store") from None

    # -- integrity
    def verify(self, rows=None, batch_rows: int | None = None) -> list[int]:
        """Recompute each row's content digest and compare it with the one stored at write time.

        Returns the sorted row indices whose content differs or cannot be read (empty: whole).
        `rows` limits the check (default all rows). Reads every per-object array once, so it
        costs one pass over the store; :func:`open_store` only checks that chunks exist.
        """
        rows = np.arange(self._n) if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
        if rows.size and (rows.min() < 0 or rows.max() >= self._n):
            raise InputError(f"row index out of range for store {self.path} with {self._n} objects")
        names = sorted(self.meta["arrays"])
        step = batch_rows or max(1, min(self._group[n].chunks[0] for n in names + [DIGEST_ARRAY]))
        bad: list[int] = []
        for lo in range(0, rows.size, step):
            chunk = rows[lo: lo + step]
            try:
                stored = np.asarray(self._group[DIGEST_ARRAY].get_orthogonal_selection((chunk,)))
                data = [np.asarray(self._group[n].get_orthogonal_selection((chunk,))) for n in names]
            except (MemoryError, KeyboardInterrupt):
                raise
            except Exception:
                if chunk.size == 1:
                    bad.append(int(chunk[0]))
                else:  # find the unreadable rows one by one
                    bad += self.verify(chunk, batch_rows=1)
                continue
            for i, row in enumerate(chunk):
                h = hashlib.blake2b(digest_size=16)
                for a in data:
                    h.update(np.ascontiguousarray(a[i]).tobytes())
                if h.digest() != stored[i].tobytes():
                    bad.append(int(row))
        return sorted(bad)

    # -- selection and splits
    def select(self, ids: Iterable[int] | None = None, where: str | np.ndarray | None = None) -> np.ndarray:
        """Row indices (sorted) of objects with the given ids and/or matching `where`.

        `where` is a boolean mask over rows or a query over catalog columns, e.g.
        ``"magnitude < 22 and half_light_radius > 0.5"``.
        """
        mask = np.ones(self._n, dtype=bool)
        if ids is not None:
            wanted = np.asarray(list(ids), dtype=np.int64)
            present = np.isin(wanted, self.ids)
            if not present.all():
                missing = wanted[~present][:10]
                raise InputError(f"ids not in store {self.path}: {missing.tolist()}")
            mask &= np.isin(self.ids, wanted)
        if where is not None:
            if isinstance(where, str):
                mask &= evaluate_query(where, self.column)
            else:
                w = np.asarray(where, dtype=bool)
                if w.shape != (self._n,):
                    raise InputError(f"boolean selection has shape {w.shape}, expected ({self._n},)")
                mask &= w
        return np.flatnonzero(mask)

    def split(self, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
              names: Sequence[str] = ("train", "val", "test")) -> dict[str, np.ndarray]:
        """Deterministic split into row-index arrays, by a seeded hash of each object's id."""
        if len(names) != len(fractions):
            raise InputError(f"{len(fractions)} split fractions but {len(names)} names")
        labels = split_fractions(self.ids, fractions, seed)
        return {name: np.flatnonzero(labels == i) for i, name in enumerate(names)}

    # -- torch view
    def dataset(self, indices=None, arrays: Sequence[str] = ("x",), columns: Sequence[str] = (),
                in_memory: bool | None = None) -> "StoreDataset":
        """A torch Dataset over rows `indices` (default all), yielding dicts of tensors."""
        return StoreDataset(self, indices, arrays, columns, in_memory)

    def summary(self, max_rows: int = 20000) -> dict[str, Any]:
        """Shapes, bands, pixel scale, columns and pixel/column statistics (from <= max_rows rows)."""
        rows = np.arange(min(self._n, max_rows))
        out: dict[str, Any] = {
            "path": str(self.path),
            "n": self._n,
            "kind": self.kind,
            "sample_shape": list(self.sample_shape),
            "bands": list(self.bands),
            "pixel_scale_arcsec": self.pixel_scale,
            "arrays": {n: list(self._group[n].shape[1:]) for n in self.array_names},
            "shared": {n: list(self._group[n].shape) for n in self.shared_arrays},
            "fingerprint": self.fingerprint,
            "provenance": self.meta.get("provenance", {}),
        }
        if self.wavelength is not None:
            out["wavelength_angstrom"] = [float(self.wavelength[0]), float(self.wavelength[-1]), len(self.wavelength)]
        stats = {}
        if self._n:
            x = self.read("x", rows)
            per_band = x.reshape(x.shape[0], x.shape[1], -1) if self.kind == "image" else x.reshape(x.shape[0], 1, -1)
            for c in range(per_band.shape[1]):
                v = per_band[:, c]
                name = self.bands[c] if self.kind == "image" and c < len(self.bands) else ("x" if per_band.shape[1] == 1 else f"ch{c}")
                stats[name] = {"mean": float(v.mean()), "std": float(v.std()),
                               "min": float(v.min()), "max": float(v.max())}
        out["pixel_stats"] = stats
        cols = {}
        units = self.units
        for name in self.columns:
            v = self.column(name)
            entry: dict[str, Any] = {"unit": units.get(name, "")}
            if v.dtype.kind in "iuf" and v.size:
                entry.update(mean=float(np.mean(v)), std=float(np.std(v)), min=float(np.min(v)), max=float(np.max(v)))
            elif v.size:
                uniq, counts = np.unique(v.astype(str), return_counts=True)
                entry["values"] = {str(u): int(c) for u, c in zip(uniq[:10], counts[:10])}
            cols[name] = entry
        out["columns"] = cols
        return out


def open_store(path: str | os.PathLike) -> Store:
    """Open and validate a committed store. Raises StoreError with the fix on any problem."""
    import zarr

    p = Path(path)
    if not p.exists():
        partial = partial_path(p)
        hint = f"; an unfinished write is at {partial}: {_resume_advice(partial)}" if partial.exists() else ""
        raise StoreError(f"no store at {p}{hint}")
    if not p.is_dir():
        raise StoreError(f"{p} is a file, not a store directory")
    meta_path = p / "meta.json"
    if not meta_path.is_file():
        raise StoreError(f"{p} is not a deepfield store: it has no meta.json (was it written by "
                         "deepfield, and did the write finish?)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StoreError(f"{meta_path} is corrupt ({err}); re-create the store") from None
    if not isinstance(meta, dict):
        raise StoreError(f"{meta_path} holds a JSON {type(meta).__name__}, not the object deepfield "
                         "writes; the store is corrupt, re-create it")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreError(f"{p} has store format version {version!r}; this deepfield reads version "
                         f"{FORMAT_VERSION}. Re-create the store with this version of deepfield")
    for key in ("n", "kind", "sample_shape", "arrays", "fingerprint"):
        if key not in meta:
            raise StoreError(f"{meta_path} lacks the key {key!r}; the store is corrupt, re-create it")
    n = meta["n"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise StoreError(f"{meta_path} has n = {n!r}; it must be the committed row count, an integer "
                         ">= 0. The store is corrupt, re-create it")
    for key, types in (("arrays", list), ("sample_shape", list), ("shared", list), ("kind", str),
                       ("fingerprint", str)):
        if key in meta and not isinstance(meta[key], types):
            raise StoreError(f"{meta_path} has {key} = {meta[key]!r}, expected a JSON "
                             f"{'array' if types is list else 'string'}; the store is corrupt, re-create it")
    try:
        group = zarr.open_group(str(p), mode="r")
    except Exception as err:  # zarr raises several types for a damaged group
        raise StoreError(f"{p}: the Zarr group cannot be opened ({type(err).__name__}: {err}); "
                         "the store is corrupt, re-create it") from None
    for name in list(meta["arrays"]) + list(meta.get("shared", [])):
        try:
            arr = group[name]
        except Exception:
            raise StoreError(f"{p}: array {name!r} listed in meta.json is missing; the store is "
                             "truncated or corrupt, re-create it") from None
        if arr.dtype not in (np.dtype("float32"), np.dtype("uint8"), np.dtype("bool")):
            raise StoreError(f"{p}: array {name!r} has dtype {arr.dtype}, expected float32")
        if name in meta["arrays"] and arr.shape[0] < n:
            raise StoreError(f"{p}: array {name!r} has {arr.shape[0]} rows but the store records "
                             f"{n}; the store is truncated, re-create it")
    _check_chunks(p, meta, group, n)
    x_shape = tuple(group["x"].shape[1:])
    if x_shape != tuple(meta["sample_shape"]):
        raise StoreError(f"{p}: array 'x' has sample shape {x_shape}, meta.json says "
                         f"{tuple(meta['sample_shape'])}; the store is corrupt")
    cat_path = p / "catalog.parquet"
    try:
        catalog = pq.read_table(cat_path)
    except FileNotFoundError:
        raise StoreError(f"{p} has no catalog.parquet; the store is truncated, re-create it") from None
    except (pa.ArrowException, OSError) as err:
        raise StoreError(f"{cat_path} is corrupt or truncated ({err}); re-create the store") from None
    if catalog.num_rows < n:
        raise StoreError(f"{cat_path} has {catalog.num_rows} rows but the store records {n}; "
                         "the store is truncated, re-create it")
    catalog = catalog.slice(0, n)
    if "id" not in catalog.column_names:
        raise StoreError(f"{cat_path} has no 'id' column; the store is corrupt")
    return Store(p, meta, catalog, group)


def _missing_chunks(path: Path, arr, name: str, rows: int | None) -> list[tuple[int, ...]]:
    """Chunk grid positions of `arr` that hold data (rows < `rows`; all if None) but have no file."""
    shape = arr.shape if rows is None else (min(rows, arr.shape[0]), *arr.shape[1:])
    grids = [range(-(-s // c)) for s, c in zip(shape, arr.chunks)]
    missing = []
    for pos in itertools.product(*grids):
        key = arr.metadata.encode_chunk_key(pos)
        if not os.path.exists(path / name / key):
            missing.append(pos)
    return missing


def _check_chunks(p: Path, meta: dict, group, n: int) -> None:
    """Refuse a store with lost chunks: zarr would serve them as zeros without complaint.

    Only file presence is checked (one stat per chunk). zarr does not write a chunk that is all
    fill value, so a missing chunk of a per-object array is accepted when the stored digests of
    its rows match rows of zeros.
    """
    if not n:
        return
    per_row = list(meta["arrays"])
    lost = []
    for name in per_row + [DIGEST_ARRAY]:
        if name == DIGEST_ARRAY and name not in group:
            raise StoreError(f"{p}: the per-row digest array {DIGEST_ARRAY!r} is missing; the store "
                             "is truncated or corrupt, re-create it")
        arr = group[name]
        for pos in _missing_chunks(p, arr, name, n):
            lo = pos[0] * arr.chunks[0]
            lost.append((name, pos, lo, min(n, lo + arr.chunks[0])))
    for name in meta.get("shared", []):
        if name in per_row:
            continue
        for pos in _missing_chunks(p, group[name], name, None):
            lost.append((name, pos, None, None))
    if not lost:
        return
    store = Store(p, meta, pa.table({"id": np.zeros(0, np.int64)}), group)
    store._n = n
    for name, pos, lo, hi in lost:
        if name in per_row and store.verify(np.arange(lo, hi)) == []:
            continue  # an all-fill-value chunk that zarr chose not to write
        where = f"chunk {pos[0]} (rows {lo}-{hi - 1})" if lo is not None else f"chunk {pos}"
        key = group[name].metadata.encode_chunk_key(pos)
        raise StoreError(f"{p}: array {name!r} has lost {where}: the file {p / name / key} is missing "
                         f"({len(lost)} chunk(s) missing in all); zarr would read it as zeros. The store "
                         "is damaged: re-create it (or restore it from a backup), and run "
                         f"`deepfield verify {p}` on the copy")


def _resume_advice(partial: Path) -> str:
    """What finishes the unfinished write at `partial`: true for the command that started it."""
    try:
        prov = json.loads((partial / "_progress" / "meta.json").read_text()).get("provenance") or {}
    except (OSError, ValueError, AttributeError):
        prov = {}
    if isinstance(prov, dict) and prov.get("importer"):
        # import re-reads its source in one pass and has no --resume: a rerun replaces the partial
        return ("rerun the same `deepfield import` command; it starts the write afresh (an import cannot be "
                "resumed; its source files are read again)")
    if isinstance(prov, dict) and prov.get("simulator"):
        return "rerun the same `deepfield simulate` command with --resume to finish it"
    return ("rerun the command that wrote it: with --resume where that command has it (simulate), "
            "otherwise it starts the write afresh")
