"""The store: survey data on disk as Zarr v3 arrays, a Parquet catalog and a JSON record.

A store is a directory::

    STORE/
      zarr.json            Zarr v3 group
      x/                   (N, C, H, W) images or (N, L) spectra, float32
      psf/ ivar/ mask/ truth/   optional per-object arrays, first axis N
                           (a *shared* array, e.g. one PSF (C, h, w) for all objects, has no N axis)
      _digest/             (N, 16) uint8: a hash of each object's rows, for the fingerprint
      catalog.parquet      one row per object: `id` (int64, unique) + physical columns;
                           units in each field's metadata (b"unit")
      meta.json            kind, bands, pixel scale (arcsec), wavelength grid (Angstrom),
                           provenance, fingerprint, format version, and `n`: the commit record

Writes are atomic. A new store is built under a hidden partial name (``.NAME.partial``) and
renamed to NAME only when complete, so a killed writer leaves nothing that opens as a good
store. Appending to an existing store writes rows past ``n`` and commits by replacing
``catalog.parquet`` then ``meta.json``; readers only see the first ``meta['n']`` rows, so a
killed append leaves the store exactly as it was. Both kinds of write are resumable: the rows
written so far are recorded after every batch, and ``resume=True`` continues from there.
One writer at a time: a writer holds a lock (``.NAME.lock``, released when it commits, aborts or
its process ends), and a second writer of the same path is refused instead of deleting the
first one's unfinished rows.

Example:
    >>> import numpy as np, tempfile, os
    >>> from deepfield.data.store import create_store, open_store
    >>> path = os.path.join(tempfile.mkdtemp(), "s")
    >>> with create_store(path, sample_shape=(1, 8, 8), bands=("r",), pixel_scale=0.2,
    ...                   units={"magnitude": "mag"}) as w:
    ...     w.append(x=np.zeros((3, 1, 8, 8), "f4"), catalog={"magnitude": [20.0, 21.0, 22.0]})
    >>> s = open_store(path)
    >>> len(s), s.bands, s.units["magnitude"]
    (3, ('r',), 'mag')
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepfield._atomic import replace_dir, write_json_atomic, write_parquet_atomic
from deepfield._version import __version__
from deepfield.data.splits import split_fractions
from deepfield.errors import DeepfieldError, InputError, StoreError

__all__ = [
    "FORMAT_VERSION",
    "Store",
    "StoreWriter",
    "StoreDataset",
    "create_store",
    "open_store",
    "is_store",
    "split_fractions",
]

FORMAT_VERSION = 1
_PER_ROW_ARRAYS = ("x", "psf", "ivar", "mask", "truth", "noise_ps")
_DIGEST = "_digest"
_PROGRESS_DIR = "_progress"
_CHUNK_BYTES = 2 * 1024**2


def _partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


class _WriteLock:
    """An exclusive lock on writing the store at `final`, held from create_store to commit/abort.

    A ``flock`` on the hidden file ``.NAME.lock`` beside the store: the kernel releases it when
    the holding process ends however it ends, so a killed writer never leaves a stale lock (the
    file may stay; the next writer takes it over and removes it). Without the lock a second
    writer of the same path would delete the first one's partial directory and the two would
    interleave their rows.
    """

    def __init__(self, final: Path):
        import fcntl

        final.parent.mkdir(parents=True, exist_ok=True)
        self.path = final.with_name(f".{final.name}.lock")
        while True:
            handle = open(self.path, "a+")  # noqa: SIM115 (held until release, closed by GC otherwise)
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise StoreError(f"{final} is being written by another process (it holds {self.path}); wait "
                                 "for that write to finish, or write to another path") from None
            try:  # the file we locked must still be the one at the path (a releasing writer unlinks it)
                if os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()
        self._handle = handle

    def release(self) -> None:
        if self._handle is None:
            return
        import fcntl

        try:
            self.path.unlink(missing_ok=True)  # before unlocking: a waiter then locks a fresh file
        finally:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def _chunk_rows(row_shape: Sequence[int]) -> int:
    row_bytes = 4 * int(np.prod(row_shape, dtype=np.int64)) if len(row_shape) else 4
    return int(max(1, min(4096, _CHUNK_BYTES // max(row_bytes, 1))))


def is_store(path: str | os.PathLike) -> bool:
    """True if `path` is a committed store directory (has meta.json and catalog.parquet)."""
    p = Path(path)
    return (p / "meta.json").is_file() and (p / "catalog.parquet").is_file()


# --------------------------------------------------------------------------------------
# catalog helpers


def _catalog_table(catalog: Any, n: int, first_id: int, units: Mapping[str, str]) -> pa.Table:
    """Normalise a dict of columns / pyarrow Table into a table with an int64 `id` column."""
    if catalog is None:
        catalog = {}
    if isinstance(catalog, pa.Table):
        columns = {name: catalog.column(name).to_numpy(zero_copy_only=False) for name in catalog.column_names}
    elif isinstance(catalog, Mapping):
        columns = dict(catalog)
    else:
        raise InputError(
            f"catalog must be a dict of columns or a pyarrow.Table, got {type(catalog).__name__}"
        )
    arrays: dict[str, pa.Array] = {}
    if "id" not in columns:
        arrays["id"] = pa.array(np.arange(first_id, first_id + n, dtype=np.int64))
    for name, values in columns.items():
        arr = np.asarray(values)
        if arr.ndim != 1 or len(arr) != n:
            raise InputError(
                f"catalog column {name!r} has shape {arr.shape} but the batch has {n} objects: "
                "give one value per object"
            )
        if name == "id":
            if not np.issubdtype(arr.dtype, np.integer):
                raise InputError(f"catalog column 'id' must be integers, got dtype {arr.dtype}")
            arr = arr.astype(np.int64)
        if arr.dtype.kind == "S":  # FITS tables give bytes: store text
            arr = np.char.decode(arr, "utf-8", errors="replace")
        if arr.dtype.kind in "UO":
            arrays[name] = pa.array([str(v).rstrip() for v in arr.tolist()], type=pa.string())
        else:
            if arr.dtype.byteorder not in ("=", "|", "<" if np.little_endian else ">"):
                arr = arr.astype(arr.dtype.newbyteorder("="))  # FITS is big-endian; Arrow wants native
            arrays[name] = pa.array(arr)
    fields = []
    for name, arr in arrays.items():
        md = {b"unit": units[name].encode()} if name in units else None
        fields.append(pa.field(name, arr.type, metadata=md))
    return pa.Table.from_arrays(list(arrays.values()), schema=pa.schema(fields))


def _with_units(table: pa.Table, units: Mapping[str, str]) -> pa.Table:
    fields = []
    for field in table.schema:
        md = dict(field.metadata or {})
        if field.name in units:
            md[b"unit"] = units[field.name].encode()
        fields.append(field.with_metadata(md or None))
    return table.cast(pa.schema(fields))


# --------------------------------------------------------------------------------------
# query language for `select(where="magnitude < 22 and redshift > 0.5")`

_ALLOWED_CMP = {
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
}


def evaluate_query(expr: str, column) -> np.ndarray:
    """Evaluate a small, safe boolean expression over catalog columns.

    Supports comparisons (chained too: ``21 < magnitude < 23``), ``and``/``or``/``not``,
    ``&``/``|``/``~``, numbers, strings, and arithmetic (+ - * /) on columns.
    """
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as err:
        raise InputError(f"cannot parse query {expr!r}: {err.msg}") from None

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.BoolOp):
            vals = [np.asarray(ev(v), dtype=bool) for v in node.values]
            op = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            out = vals[0]
            for v in vals[1:]:
                out = op(out, v)
            return out
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, (ast.Not, ast.Invert)):
                return np.logical_not(np.asarray(ev(node.operand), dtype=bool))
            if isinstance(node.op, ast.USub):
                return -ev(node.operand)
        if isinstance(node, ast.BinOp):
            ops = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply,
                   ast.Div: np.divide, ast.BitAnd: np.logical_and, ast.BitOr: np.logical_or}
            if type(node.op) in ops:
                return ops[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Compare):
            left = ev(node.left)
            out = None
            for op, comp in zip(node.ops, node.comparators):
                if type(op) not in _ALLOWED_CMP:
                    break
                right = ev(comp)
                res = _ALLOWED_CMP[type(op)](left, right)
                out = res if out is None else np.logical_and(out, res)
                left = right
            else:
                return out
        if isinstance(node, ast.Name):
            return column(node.id)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
            return node.value
        raise InputError(
            f"query {expr!r}: unsupported expression {ast.unparse(node)!r}; use comparisons of "
            "catalog columns joined by and/or/not, e.g. 'magnitude < 22 and redshift > 0.5'"
        )

    result = np.asarray(ev(tree))
    if result.dtype != bool:
        raise InputError(f"query {expr!r} does not give True/False per object")
    return result


# --------------------------------------------------------------------------------------
# reading


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
            return np.asarray(arr[: self._n])
        if isinstance(index, slice):
            start, stop, _ = index.indices(self._n)
            return np.asarray(arr[start:stop])
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
            block = np.asarray(arr[lo:hi])
            out = block[idx - lo]
        else:
            out = np.asarray(arr.get_orthogonal_selection((sorted_idx,)))
            inv = np.empty_like(order)
            inv[order] = np.arange(order.size)
            out = out[inv]
        return out

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

    # -- copies
    def copy_to(self, path: str | os.PathLike, indices=None, overwrite: bool = False,
                batch_rows: int = 4096, provenance: Mapping[str, Any] | None = None) -> "Store":
        """Write the rows `indices` (default all) to a new store at `path` (atomically)."""
        idx = np.arange(self._n) if indices is None else np.asarray(indices, dtype=np.int64)
        per_row = {n: self.array_shape(n) for n in self.array_names if n != "x"}
        shared = {n: self.read_shared(n) for n in self.shared_arrays}
        prov = dict(self.meta.get("provenance", {}))
        prov.update({"copied_from": str(self.path), "source_fingerprint": self.fingerprint})
        prov.update(provenance or {})
        catalog = self._catalog
        with create_store(path, sample_shape=self.sample_shape, kind=self.kind, bands=self.bands,
                          pixel_scale=self.pixel_scale, wavelength=self.wavelength,
                          arrays=per_row, shared=shared, units=self.units,
                          provenance=prov, overwrite=overwrite,
                          extra_meta=self.meta.get("extra")) as w:
            for start in range(0, idx.size, batch_rows):
                rows = idx[start:start + batch_rows]
                batch = {n: self.read(n, rows) for n in self.array_names}
                w.append(catalog=catalog.take(pa.array(rows)), **batch)
        return open_store(path)

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
        partial = _partial_path(p)
        hint = (f"; an unfinished write is at {partial}: rerun the same command with --resume to "
                "finish it") if partial.exists() else ""
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
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreError(f"{p} has store format version {version!r}; this deepfield reads version "
                         f"{FORMAT_VERSION}. Re-create the store with this version of deepfield")
    for key in ("n", "kind", "sample_shape", "arrays", "fingerprint"):
        if key not in meta:
            raise StoreError(f"{meta_path} lacks the key {key!r}; the store is corrupt, re-create it")
    n = int(meta["n"])
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


# --------------------------------------------------------------------------------------
# writing


class StoreWriter:
    """Writes a store batch by batch; commit on clean exit of the `with` block.

    Created by :func:`create_store`. `n_written` is the number of rows already written
    (non-zero when resuming), so a producer can skip the objects it already wrote.
    """

    def __init__(self, final: Path, root: Path, meta: dict, units: dict, base_n: int,
                 new_store: bool, overwrite: bool, allow_nonfinite: bool, resumed: bool = False,
                 lock: _WriteLock | None = None):
        import zarr

        self._lock = lock
        self.final = final
        self.root = root
        self.meta = meta
        self.units = dict(units)
        self.base_n = base_n
        self.new_store = new_store
        self.overwrite = overwrite
        self.allow_nonfinite = allow_nonfinite
        self.resumed = resumed
        self._group = zarr.open_group(str(root), mode="a")
        self._progress_dir = root / _PROGRESS_DIR
        if not resumed and not new_store:
            shutil.rmtree(self._progress_dir, ignore_errors=True)  # a stale, abandoned append
        self._progress_dir.mkdir(exist_ok=True)
        progress = self._progress_dir / "progress.json"
        self.n_written = base_n
        if progress.is_file():
            self.n_written = int(json.loads(progress.read_text())["n"])
        # a killed batch may have written array rows or a catalog part past n_written: drop them
        for part in self._progress_dir.glob("part-*.parquet"):
            if int(part.stem.split("-")[1]) >= self.n_written:
                part.unlink()
        self._closed = False
        self.store: Store | None = None

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                try:
                    self.commit()
                except DeepfieldError:
                    if self.new_store and not self.resumed:
                        self.abort()
                    raise
            elif issubclass(exc_type, DeepfieldError) and self.new_store and not self.resumed:
                # bad input cannot be resumed: leave nothing half-written behind
                self.abort()
            # on a crash or Ctrl-C the partial state stays, resumable with resume=True
        finally:
            self.release()

    def release(self) -> None:
        """Let other writers at this path (done by commit, abort and the `with` block's end)."""
        if self._lock is not None:
            self._lock.release()

    def update_provenance(self, **entries: Any) -> None:
        """Add provenance known only while writing (e.g. counts of masked pixels)."""
        self.meta["provenance"] = {**self.meta.get("provenance", {}), **entries}

    @property
    def per_row_arrays(self) -> tuple[str, ...]:
        return tuple(self.meta["arrays"])

    def append(self, x: np.ndarray, catalog=None, **arrays: np.ndarray) -> None:
        """Append a batch: `x` (n, *sample_shape) plus the store's other per-row arrays."""
        if self._closed:
            raise StoreError(f"store writer for {self.final} is already committed")
        x = np.asarray(x)
        shape = tuple(self.meta["sample_shape"])
        if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
            raise InputError(f"x batch has shape {x.shape}; the store {self.final.name} holds "
                             f"samples of shape {shape}, so expected (n, {', '.join(map(str, shape))})")
        n = x.shape[0]
        batch = {"x": x}
        expected = set(self.per_row_arrays) - {"x"}
        unknown = set(arrays) - expected
        if unknown:
            raise InputError(f"arrays {sorted(unknown)} were not declared when the store was created "
                             f"(declared: {sorted(expected)})")
        missing = expected - set(arrays)
        if missing:
            raise InputError(f"batch lacks the store's arrays {sorted(missing)}")
        for name, arr in arrays.items():
            arr = np.asarray(arr)
            want = tuple(self._group[name].shape[1:])
            if arr.shape != (n, *want):
                raise InputError(f"array {name!r} batch has shape {arr.shape}, expected ({n}, "
                                 f"{', '.join(map(str, want))})")
            batch[name] = arr
        for name, arr in batch.items():
            dtype = self._group[name].dtype
            batch[name] = np.ascontiguousarray(arr, dtype=dtype)
            if not self.allow_nonfinite and dtype.kind == "f":
                bad = ~np.isfinite(batch[name].reshape(n, -1)).all(axis=1)
                if bad.any():
                    rows = (self.n_written + np.flatnonzero(bad)[:10]).tolist()
                    raise InputError(f"array {name!r} has NaN or inf values in rows {rows}; "
                                     "clean them (or set them to 0 and flag them in a 'mask' "
                                     "array) before writing")
        table = _catalog_table(catalog, n, self.n_written, self.units)
        if table.num_rows != n:
            raise InputError(f"catalog has {table.num_rows} rows for a batch of {n} objects")
        start, stop = self.n_written, self.n_written + n
        for name in list(batch):
            arr = self._group[name]
            if arr.shape[0] < stop:
                arr.resize((stop, *arr.shape[1:]))
            arr[start:stop] = batch[name]
        digest = np.empty((n, 16), dtype=np.uint8)
        names = sorted(batch)
        for i in range(n):
            h = hashlib.blake2b(digest_size=16)
            for name in names:
                h.update(batch[name][i].tobytes())
            digest[i] = np.frombuffer(h.digest(), dtype=np.uint8)
        d = self._group[_DIGEST]
        if d.shape[0] < stop:
            d.resize((stop, 16))
        d[start:stop] = digest
        pq.write_table(table, self._progress_dir / f"part-{start:012d}.parquet")
        self.n_written = stop
        write_json_atomic(self._progress_dir / "progress.json", {"n": stop}, indent=2, sort_keys=True)

    def commit(self) -> Store:
        """Merge the catalog, write meta.json with the fingerprint, and make the store visible."""
        if self._closed:
            return self.store
        parts = sorted(p for p in self._progress_dir.glob("part-*.parquet")
                       if self.base_n <= int(p.stem.split("-")[1]) < self.n_written)
        tables = []
        if self.base_n:
            tables.append(pq.read_table(self.root / "catalog.parquet").slice(0, self.base_n))
        tables += [pq.read_table(p) for p in parts]
        n = self.n_written
        if tables:
            try:
                catalog = pa.concat_tables(tables, promote_options="permissive")
            except pa.ArrowInvalid as err:
                raise InputError(f"catalog batches have incompatible columns: {err}") from None
        else:
            catalog = _catalog_table({}, 0, 0, self.units)
        catalog = _with_units(catalog, self.units)
        ids = catalog.column("id").to_numpy()
        if len(np.unique(ids)) != len(ids):
            uniq, counts = np.unique(ids, return_counts=True)
            raise InputError(f"catalog ids are not unique, e.g. {uniq[counts > 1][:5].tolist()}")
        h = hashlib.blake2b(digest_size=16)
        h.update(np.asarray(self._group[_DIGEST][:n]).tobytes())
        h.update(ids.astype("<i8").tobytes())
        for name in sorted(self.meta.get("shared", [])):
            h.update(np.asarray(self._group[name][...]).tobytes())
        meta = dict(self.meta)
        meta.update(n=n, fingerprint=h.hexdigest(), columns=catalog.column_names,
                    written_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        write_parquet_atomic(self.root / "catalog.parquet", catalog)
        write_json_atomic(self.root / "meta.json", meta, indent=2, sort_keys=True)
        if self.new_store:
            replace_dir(self.root, self.final)
        # the progress record goes last: a crash before this leaves a complete store whose
        # stale record the next append ignores
        shutil.rmtree(self.final / _PROGRESS_DIR, ignore_errors=True)
        self._closed = True
        self.release()
        self.store = open_store(self.final)
        return self.store

    def abort(self) -> None:
        """Throw away everything this writer wrote (a new store's partial directory)."""
        if self.new_store:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            shutil.rmtree(self._progress_dir, ignore_errors=True)
        self._closed = True
        self.release()


def create_store(
    path: str | os.PathLike,
    sample_shape: Sequence[int] | None = None,
    *,
    kind: str | None = None,
    bands: Sequence[str] = (),
    pixel_scale: float | None = None,
    wavelength: np.ndarray | None = None,
    arrays: Mapping[str, Sequence[int]] | None = None,
    shared: Mapping[str, np.ndarray] | None = None,
    units: Mapping[str, str] | None = None,
    provenance: Mapping[str, Any] | None = None,
    extra_meta: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    append: bool = False,
    allow_nonfinite: bool = False,
) -> StoreWriter:
    """Start writing a store at `path`; returns a :class:`StoreWriter` (use it in `with`).

    Arguments:
        sample_shape: shape of one object's `x`: (C, H, W) images or (L,) spectra.
        kind: 'image', 'spectrum' or 'table' (default: from the number of axes).
        bands: band names, one per image channel, e.g. ("g", "r", "i").
        pixel_scale: arcsec per pixel (images).
        wavelength: observed wavelength grid in Angstrom, length L (spectra).
        arrays: other per-object arrays and their per-object shapes, e.g.
            {"psf": (C, 25, 25), "ivar": (C, H, W), "truth": (C, H, W)}.
        shared: arrays common to all objects, e.g. {"psf": one (C, h, w) PSF}.
        units: catalog column units, e.g. {"half_light_radius": "arcsec"}.
        provenance: free-form record of how the data were made (command, seed, versions).
        overwrite: replace an existing store at `path` (only at commit; until then it stays).
        resume: continue an unfinished write of the same store (same shapes) at `path`.
        append: add objects to the existing store at `path` (committed at the end).
        allow_nonfinite: accept NaN/inf pixels (default: refuse them, naming the rows).
    """
    final = Path(path)
    if append:
        if not (final / "meta.json").is_file():
            open_store(final)  # raises, naming what is missing, before anything is created beside it
        # locked before its length is read: an append committing in between would otherwise be overwritten
        lock = _WriteLock(final)
        try:
            store = open_store(final)
            if sample_shape is not None and tuple(sample_shape) != store.sample_shape:
                raise InputError(f"cannot append objects of shape {tuple(sample_shape)} to store "
                                 f"{final} of shape {store.sample_shape}")
            return StoreWriter(final, final, dict(store.meta), {**store.units, **(units or {})}, len(store),
                               new_store=False, overwrite=False, allow_nonfinite=allow_nonfinite, resumed=resume,
                               lock=lock)
        except BaseException:
            lock.release()
            raise
    if sample_shape is None:
        raise InputError("create_store needs sample_shape, e.g. (1, 64, 64) or (3000,)")
    sample_shape = tuple(int(s) for s in sample_shape)
    if kind is None:
        kind = {3: "image", 1: "spectrum"}.get(len(sample_shape))
        if kind is None:
            raise InputError(f"sample shape {sample_shape}: expected (C, H, W) images or (L,) spectra")
    if kind not in ("image", "spectrum", "table"):
        raise InputError(f"store kind {kind!r}: expected 'image', 'spectrum' or 'table'")
    if kind == "image":
        if len(sample_shape) != 3:
            raise InputError(f"image stores hold (C, H, W) samples, got shape {sample_shape}")
        if bands and len(bands) != sample_shape[0]:
            raise InputError(f"{len(bands)} band names {tuple(bands)} for {sample_shape[0]} channels")
    if wavelength is not None:
        wavelength = np.asarray(wavelength, dtype=np.float64)
        if kind == "spectrum" and wavelength.shape != (sample_shape[-1],):
            raise InputError(f"wavelength grid has {wavelength.size} points for spectra of length "
                             f"{sample_shape[-1]}")
    if final.exists() and not overwrite:
        raise StoreError(f"{final} already exists; pass overwrite=True (--overwrite) to replace it "
                         "or choose another path")
    arrays = {k: tuple(int(s) for s in v) for k, v in (arrays or {}).items()}
    shared = dict(shared or {})
    for name in list(arrays) + list(shared):
        if name in ("x", _DIGEST) or name.startswith("_"):
            raise InputError(f"array name {name!r} is reserved")
    both = set(arrays) & set(shared)
    if both:
        raise InputError(f"arrays {sorted(both)} are given both per-object and shared")
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "sample_shape": list(sample_shape),
        "bands": list(bands),
        "pixel_scale": None if pixel_scale is None else float(pixel_scale),
        "wavelength": None if wavelength is None else wavelength.tolist(),
        "arrays": ["x", *arrays],
        "shared": sorted(shared),
        "provenance": dict(provenance or {}),
        "extra": dict(extra_meta or {}),
        "library_version": __version__,
        "n": 0,
    }
    lock = _WriteLock(final)  # before touching the partial directory another writer may be filling
    try:
        return _new_store_writer(final, meta, arrays, shared, units, overwrite, resume, allow_nonfinite, lock)
    except BaseException:
        lock.release()
        raise


def _new_store_writer(final: Path, meta: dict, arrays: dict, shared: dict, units, overwrite: bool, resume: bool,
                      allow_nonfinite: bool, lock: _WriteLock) -> StoreWriter:
    """create_store's writer of a new store (or of the unfinished one it resumes), under `lock`."""
    import zarr

    sample_shape = tuple(meta["sample_shape"])
    root = _partial_path(final)
    if root.exists():
        record = root / "_progress" / "meta.json"
        if resume and record.is_file():
            old = json.loads(record.read_text())
            same = {k: old.get(k) for k in ("kind", "sample_shape", "arrays", "shared", "bands", "pixel_scale",
                                            "wavelength", "provenance")}
            now = {k: meta.get(k) for k in same}
            if same != now:
                diffs = []
                for key in same:
                    a, b = same[key], now[key]
                    if key == "provenance" and isinstance(a, dict) and isinstance(b, dict):
                        diffs += [f"{k}: {a.get(k)!r} then, {b.get(k)!r} now" for k in sorted(set(a) | set(b))
                                  if a.get(k) != b.get(k)]
                    elif a != b:
                        diffs.append(f"{key}: {a!r} then, {b!r} now")
                raise StoreError(f"cannot resume {root}: it was started with other settings "
                                 f"({'; '.join(diffs)}). Rerun with the original options, or delete it "
                                 "to start afresh")
            return StoreWriter(final, root, old, dict(units or {}), 0, new_store=True,
                               overwrite=overwrite, allow_nonfinite=allow_nonfinite, resumed=True, lock=lock)
        shutil.rmtree(root)
    root.mkdir(parents=True)
    group = zarr.open_group(str(root), mode="w")
    group.create_array("x", shape=(0, *sample_shape), chunks=(_chunk_rows(sample_shape), *sample_shape),
                       dtype="float32")
    for name, shape in arrays.items():
        dtype = "bool" if name == "mask" else "float32"
        group.create_array(name, shape=(0, *shape), chunks=(_chunk_rows(shape), *shape), dtype=dtype)
    for name, value in shared.items():
        value = np.asarray(value, dtype=np.float32)
        a = group.create_array(name, shape=value.shape, chunks=value.shape, dtype="float32")
        a[...] = value
    group.create_array(_DIGEST, shape=(0, 16), chunks=(65536, 16), dtype="uint8")
    (root / _PROGRESS_DIR).mkdir()
    write_json_atomic(root / _PROGRESS_DIR / "meta.json", meta, indent=2, sort_keys=True)
    return StoreWriter(final, root, meta, dict(units or {}), 0, new_store=True,
                       overwrite=overwrite, allow_nonfinite=allow_nonfinite, lock=lock)


# --------------------------------------------------------------------------------------
# torch view


class StoreDataset:
    """A map-style torch Dataset over store rows; items are dicts of tensors.

    Each item has the requested arrays (float32 tensors; a shared PSF is repeated), the
    requested catalog columns (float32 scalars) and ``"id"`` (int64) and ``"index"`` (row).
    Small selections are read into memory once (default below 2 GiB); larger ones are read
    from Zarr chunk by chunk with a one-chunk cache, which suits sequential samplers.
    """

    def __init__(self, store: Store, indices=None, arrays=("x",), columns=(), in_memory=None):
        self.store = store
        self.indices = np.arange(len(store)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.arrays = tuple(arrays)
        self.columns = tuple(columns)
        for name in self.arrays:
            if not store.has(name):
                store.read(name, slice(0, 0))  # raises the helpful error
        self._cols = {c: store.column(c).astype(np.float32) for c in self.columns}
        self._ids = store.ids
        nbytes = sum(4 * int(np.prod(store.array_shape(a))) for a in self.arrays if a not in store.shared_arrays)
        if in_memory is None:
            in_memory = nbytes * len(self.indices) < 2 * 1024**3
        self._mem = {a: store.read(a, self.indices) for a in self.arrays} if in_memory else None
        self._cache: dict[str, tuple[int, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.indices)

    def _row(self, name: str, pos: int) -> np.ndarray:
        if self._mem is not None:
            return self._mem[name][pos]
        row = int(self.indices[pos])
        if name in self.store.shared_arrays:
            return self.store.read(name, [row])[0]
        c = self.store.chunk_rows(name)
        key = row // c
        cached = self._cache.get(name)
        if cached is None or cached[0] != key:
            cached = (key, self.store.read(name, slice(key * c, (key + 1) * c)))
            self._cache[name] = cached
        return cached[1][row - key * c]

    def __getitem__(self, pos: int) -> dict:
        import torch

        item = {name: torch.from_numpy(np.array(self._row(name, pos), dtype=np.float32)) for name in self.arrays}
        row = int(self.indices[pos])
        for c in self.columns:
            item[c] = torch.tensor(self._cols[c][row])
        item["id"] = torch.tensor(int(self._ids[row]), dtype=torch.int64)
        item["index"] = torch.tensor(row, dtype=torch.int64)
        return item

    def tensors(self) -> dict:
        """All rows at once as tensors (for small in-memory sets)."""
        import torch

        out = {a: torch.from_numpy(np.ascontiguousarray(self.store.read(a, self.indices) if self._mem is None else self._mem[a], dtype=np.float32)) for a in self.arrays}
        for c in self.columns:
            out[c] = torch.from_numpy(self._cols[c][self.indices])
        out["id"] = torch.from_numpy(self._ids[self.indices].astype(np.int64))
        return out
