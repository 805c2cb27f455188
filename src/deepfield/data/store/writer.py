"""Writing a store: :func:`create_store` returns a :class:`StoreWriter` (use it in ``with``).

Writes are atomic. A new store is built under a hidden partial name (``.NAME.partial``) and
renamed to NAME only when complete, so a killed writer leaves nothing that opens as a good
store. Appending to an existing store writes rows past ``n`` and commits by replacing
``catalog.parquet`` then ``meta.json``; readers only see the first ``meta['n']`` rows, so a
killed append leaves the store exactly as it was. Both kinds of write are resumable: the rows
written so far are recorded after every batch, and ``resume=True`` continues from there.
One writer at a time: a writer holds a lock (``.NAME.lock``, released when it commits, aborts or
its process ends), and a second writer of the same path is refused instead of deleting the
first one's unfinished rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepfield._atomic import WriteLock, replace_dir, write_json_atomic, write_parquet_atomic
from deepfield._version import __version__
from deepfield.data.store.format import DIGEST_ARRAY, FORMAT_VERSION, PROGRESS_DIR, chunk_rows, partial_path
from deepfield.data.store.reader import Store, open_store
from deepfield.errors import DeepfieldError, InputError, StoreError

__all__ = ["StoreWriter", "create_store", "copy_store"]


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


class StoreWriter:
    """Writes a store batch by batch; commit on clean exit of the `with` block.

    Created by :func:`create_store`. `n_written` is the number of rows already written
    (non-zero when resuming), so a producer can skip the objects it already wrote.
    """

    def __init__(self, final: Path, root: Path, meta: dict, units: dict, base_n: int,
                 new_store: bool, overwrite: bool, allow_nonfinite: bool, resumed: bool = False,
                 lock: WriteLock | None = None):
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
        self._progress_dir = root / PROGRESS_DIR
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
                    if (self.new_store and not self.resumed) or getattr(self, "_disk_full", False):
                        self.abort()
                    raise
            elif getattr(self, "_disk_full", False):
                self.abort()  # a partial store on a full disk only keeps the disk full
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
        try:
            self._write_batch(batch, table, start, stop)
        except OSError as err:
            self._raise_if_disk_full(err, sum(a.nbytes for a in batch.values()))
            raise
        self.n_written = stop
        write_json_atomic(self._progress_dir / "progress.json", {"n": stop}, indent=2, sort_keys=True)

    def _raise_if_disk_full(self, err: OSError, needed: int) -> None:
        """Turn ENOSPC into a StoreError naming the path and the space needed (see __exit__)."""
        import errno

        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            return
        try:
            free = shutil.disk_usage(self.root).free
        except OSError:
            free = 0
        self._disk_full = True
        raise StoreError(f"no space left on the device holding {self.final}: writing this batch needs "
                         f"{needed / 1e6:.1f} MB more (uncompressed; {free / 1e6:.1f} MB free). The partial "
                         "output was removed; free some space or write the store elsewhere, then rerun") from None

    def _write_batch(self, batch: dict, table: pa.Table, start: int, stop: int) -> None:
        n = stop - start
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
        d = self._group[DIGEST_ARRAY]
        if d.shape[0] < stop:
            d.resize((stop, 16))
        d[start:stop] = digest
        pq.write_table(table, self._progress_dir / f"part-{start:012d}.parquet")

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
        h.update(np.asarray(self._group[DIGEST_ARRAY][:n]).tobytes())
        h.update(ids.astype("<i8").tobytes())
        for name in sorted(self.meta.get("shared", [])):
            h.update(np.asarray(self._group[name][...]).tobytes())
        meta = dict(self.meta)
        meta.update(n=n, fingerprint=h.hexdigest(), columns=catalog.column_names,
                    written_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        try:
            write_parquet_atomic(self.root / "catalog.parquet", catalog)
            write_json_atomic(self.root / "meta.json", meta, indent=2, sort_keys=True)
        except OSError as err:
            self._raise_if_disk_full(err, catalog.nbytes)
            raise
        if self.new_store:
            replace_dir(self.root, self.final)
        # the progress record goes last: a crash before this leaves a complete store whose
        # stale record the next append ignores
        shutil.rmtree(self.final / PROGRESS_DIR, ignore_errors=True)
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
        lock = WriteLock(final, StoreError, "store")
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
        if name in ("x", DIGEST_ARRAY) or name.startswith("_"):
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
    lock = WriteLock(final, StoreError, "store")  # before touching the partial directory another writer may be filling
    try:
        return _new_store_writer(final, meta, arrays, shared, units, overwrite, resume, allow_nonfinite, lock)
    except BaseException:
        lock.release()
        raise


def _new_store_writer(final: Path, meta: dict, arrays: dict, shared: dict, units, overwrite: bool, resume: bool,
                      allow_nonfinite: bool, lock: WriteLock) -> StoreWriter:
    """create_store's writer of a new store (or of the unfinished one it resumes), under `lock`."""
    import zarr

    sample_shape = tuple(meta["sample_shape"])
    root = partial_path(final)
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
    group.create_array("x", shape=(0, *sample_shape), chunks=(chunk_rows(sample_shape), *sample_shape),
                       dtype="float32")
    for name, shape in arrays.items():
        dtype = "bool" if name == "mask" else "float32"
        group.create_array(name, shape=(0, *shape), chunks=(chunk_rows(shape), *shape), dtype=dtype)
    for name, value in shared.items():
        value = np.asarray(value, dtype=np.float32)
        a = group.create_array(name, shape=value.shape, chunks=value.shape, dtype="float32")
        a[...] = value
    group.create_array(DIGEST_ARRAY, shape=(0, 16), chunks=(65536, 16), dtype="uint8")
    (root / PROGRESS_DIR).mkdir()
    write_json_atomic(root / PROGRESS_DIR / "meta.json", meta, indent=2, sort_keys=True)
    return StoreWriter(final, root, meta, dict(units or {}), 0, new_store=True,
                       overwrite=overwrite, allow_nonfinite=allow_nonfinite, lock=lock)


def copy_store(store: Store, path: str | os.PathLike, indices=None, *, overwrite: bool = False,
               batch_rows: int = 4096, provenance: Mapping[str, Any] | None = None) -> Store:
    """Write the rows `indices` (default all) of `store` to a new store at `path` (atomically),
    with every array, shared array, catalog column and unit; the provenance records the source
    and its fingerprint."""
    idx = np.arange(len(store)) if indices is None else np.asarray(indices, dtype=np.int64)
    per_row = {n: store.array_shape(n) for n in store.array_names if n != "x"}
    shared = {n: store.read_shared(n) for n in store.shared_arrays}
    prov = dict(store.meta.get("provenance", {}))
    prov.update({"copied_from": str(store.path), "source_fingerprint": store.fingerprint})
    prov.update(provenance or {})
    catalog = store.catalog
    with create_store(path, sample_shape=store.sample_shape, kind=store.kind, bands=store.bands,
                      pixel_scale=store.pixel_scale, wavelength=store.wavelength,
                      arrays=per_row, shared=shared, units=store.units,
                      provenance=prov, overwrite=overwrite,
                      extra_meta=store.meta.get("extra")) as writer:
        for start in range(0, idx.size, batch_rows):
            rows = idx[start:start + batch_rows]
            batch = {n: store.read(n, rows) for n in store.array_names}
            writer.append(catalog=catalog.take(pa.array(rows)), **batch)
    return open_store(path)
