"""Querying an index folder: open_index and the SimilarityIndex it returns (by id, image, store or code)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from deepfield.data.batches import check_model_store
from deepfield.data.store import Store, is_store, open_store
from deepfield.errors import InputError, StoreError
from deepfield.models import Model
from deepfield.progress import progress_bar
from deepfield.tasks.search.embed import (code_form, describe_model, describe_store, model_and_folder,
                                          model_identity)
from deepfield.tasks.search.engine import prepare_vectors, raw_search

__all__ = ["INDEX_FORMAT_VERSION", "SimilarityIndex", "open_index", "read_image_file"]


INDEX_FORMAT_VERSION = 1
_IMAGE_SUFFIXES = (".npy", ".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fz")


def open_index(path, *, model: Model | str | os.PathLike | None = None,
               store: Store | str | os.PathLike | None = None) -> "SimilarityIndex":
    """Open an index folder written by :func:`build_index`.

    Arguments:
        model: the model queries will be encoded with (folder or loaded model). It must be the
            one the index was built for, else the index is refused naming both; by default the
            recorded model folder is loaded when an image query needs it.
        store: a store the caller means to use with the index (its source store or its codes
            store); any other is refused naming both.
    """
    import faiss

    p = Path(path)
    if not (p / "meta.json").is_file():
        raise StoreError(f"no index at {p}: build one with `deepfield index CODES --out {p}`")
    rebuild = f"rebuild it with `deepfield index CODES --out {p} --overwrite`"
    try:
        meta = json.loads((p / "meta.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StoreError(f"{p / 'meta.json'} is corrupt ({err}); {rebuild}") from None
    if not isinstance(meta, dict):
        raise StoreError(f"{p / 'meta.json'} holds a JSON {type(meta).__name__}, not an index record; {rebuild}")
    if meta.get("format_version") != INDEX_FORMAT_VERSION:
        raise StoreError(f"{p} has index format version {meta.get('format_version')!r}; this deepfield reads "
                         f"version {INDEX_FORMAT_VERSION}: rebuild it with `deepfield index`")
    count = meta.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise StoreError(f"{p / 'meta.json'} has count = {count!r}, not a number of vectors; {rebuild}")
    missing = [f for f in ("index.faiss", "ids.npy", "catalog.parquet") if not (p / f).is_file()]
    if missing:
        raise StoreError(f"index {p} is incomplete (missing {', '.join(missing)}): rebuild it with `deepfield index`")
    try:
        index = faiss.read_index(str(p / "index.faiss"))
    except RuntimeError as err:  # faiss reports every damaged file as a RuntimeError
        first = str(err).splitlines()[0][-160:]
        raise StoreError(f"{p / 'index.faiss'} is corrupt or truncated ({first}); {rebuild}") from None
    ids = load_npy(p / "ids.npy", "index ids", "iu", f"; {rebuild}", error=StoreError)
    if ids.ndim != 1:
        raise StoreError(f"{p / 'ids.npy'} has shape {ids.shape}, expected (N,) ids; {rebuild}")
    try:
        catalog = pq.read_table(p / "catalog.parquet")
    except (pa.ArrowException, OSError) as err:
        raise StoreError(f"{p / 'catalog.parquet'} is corrupt or truncated ({err}); {rebuild}") from None
    if not (index.ntotal == ids.size == catalog.num_rows == count):
        raise StoreError(f"index {p} is inconsistent ({index.ntotal} vectors, {ids.size} ids, "
                         f"{catalog.num_rows} catalog rows, {count} recorded): rebuild it")
    out = SimilarityIndex(index, ids, catalog, meta, p)
    if model is not None:
        out.use_model(model)
    if store is not None:
        out.check_store(store)
    return out


def read_image_file(path) -> np.ndarray:
    """Pixels of a .npy or FITS file (the first HDU with an image) as float32."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"no image file at {p}")
    name = p.name.lower()
    if name.endswith(".npy"):
        return load_npy(p, "query image", "iuf", "").astype(np.float32)
    if not name.endswith(_IMAGE_SUFFIXES):
        raise InputError(f"{p}: query images must be .npy or FITS ({', '.join(_IMAGE_SUFFIXES[1:])})")
    from astropy.io import fits

    with fits.open(p) as hdul:
        for hdu in hdul:
            if hdu.data is not None and getattr(hdu.data, "ndim", 0) >= 2 and hdu.data.dtype.names is None:
                return np.asarray(hdu.data, dtype=np.float32)
    raise InputError(f"{p} has no image HDU")


def load_npy(path: Path, what: str, kinds: str, fix: str, error=InputError) -> np.ndarray:
    """A .npy file's array, refused (as `error`) unless its dtype kind is one of `kinds`.

    Never unpickles: an object-dtype file is refused with its name, not loaded.
    """
    numbers = {"iu": "integer", "iuf": "float"}.get(kinds, kinds)
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as err:
        if "Object arrays" in str(err):
            raise error(f"{path}: the {what} file holds Python objects (dtype object), not {numbers} "
                        f"numbers; save a plain numeric array (np.save(path, arr.astype(...))){fix}") from None
        raise error(f"{path} is not a readable .npy file ({err}){fix}") from None
    except (OSError, EOFError) as err:
        raise error(f"{path} is not a readable .npy file ({err}){fix}") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in kinds:
        dtype = getattr(arr, "dtype", type(arr).__name__)
        raise error(f"{path}: the {what} file has dtype {dtype}, expected {numbers} numbers{fix}")
    return arr


class _Codes:
    """Marks an array as codes (not images) for :meth:`SimilarityIndex.search`."""

    def __init__(self, values):
        self.values = values


class SimilarityIndex:
    """A FAISS index over codes with their ids, catalog and provenance; see :func:`open_index`.

    ``search`` takes ids, images (an array, a .npy or FITS file) encoded with the index's
    model, codes, or a whole store, and returns the top-k table.
    """

    def __init__(self, index, ids: np.ndarray, catalog: pa.Table, meta: dict, path: Path | None = None):
        self.index = index
        self.ids = np.asarray(ids, dtype=np.int64)
        self.catalog = catalog
        self.meta = meta
        self.path = path
        self._model: Model | None = None
        self._order = np.argsort(self.ids, kind="stable")
        self._columns: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.meta["count"])

    def __repr__(self) -> str:
        return (f"SimilarityIndex({str(self.path) if self.path else 'in memory'!r}, kind={self.kind!r}, "
                f"metric={self.metric!r}, n={len(self)}, dim={self.dim})")

    @property
    def metric(self) -> str:
        return self.meta["metric"]

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def form(self) -> str:
        """How the indexed codes were written ('codes' or 'polar', see deepfield.tasks.search.embed)."""
        return (self.meta.get("model") or {}).get("form", "codes")

    @property
    def label(self) -> str:
        return f"index {self.path}" if self.path else "the index"

    # -- provenance checks
    def use_model(self, model: Model | str | os.PathLike) -> Model:
        """Encode image queries with `model`, refused unless it is the model the index was built for."""
        model, path = model_and_folder(model)
        recorded = self.meta.get("model")
        if not recorded:
            raise InputError(f"{self.label} was built from codes with no recorded model (not made by "
                             "`deepfield embed`), so images cannot be encoded for it: re-embed with "
                             "`deepfield embed MODEL` and rebuild, or query with codes")
        got = model_identity(model, path)
        if got["fingerprint"] != recorded["fingerprint"]:
            raise InputError(f"{self.label} was built for model {describe_model(recorded)}, not model "
                             f"{describe_model(got)}: query with the index's model, or re-embed and "
                             "rebuild the index for this one")
        self._model = model
        return model

    @property
    def model(self) -> Model:
        """The model image queries are encoded with (loaded from its recorded folder if not given)."""
        if self._model is None:
            recorded = self.meta.get("model") or {}
            path = recorded.get("path")
            if not path or not Path(path).exists():
                where = f" (recorded at {path}, which no longer exists)" if path else ""
                raise InputError(f"{self.label} needs its model {describe_model(recorded or None)}{where} to "
                                 "encode images: pass it with --model / model=")
            self.use_model(path)
        return self._model

    def check_store(self, store: Store | str | os.PathLike) -> Store:
        """Refuse a store other than the index's source store or codes store, naming both."""
        store = store if isinstance(store, Store) else open_store(store)
        known = [r for r in (self.meta.get("store"), self.meta.get("codes")) if r]
        if not any(r.get("fingerprint") == store.fingerprint for r in known):
            built = " and its codes ".join(describe_store(r) for r in known) if known else "an array of codes"
            raise InputError(f"{self.label} was built from store {built}, not "
                             f"{describe_store({'path': store.path, 'fingerprint': store.fingerprint})}: "
                             "use the index built for this store, or embed it and build one")
        return store

    def _is_source(self, store: Store) -> bool:
        return any(r and r.get("fingerprint") == store.fingerprint
                   for r in (self.meta.get("store"), self.meta.get("codes")))

    # -- catalog
    def column(self, name: str) -> np.ndarray:
        """A catalog column of the indexed objects, in index order."""
        if name not in self._columns:
            if name not in self.catalog.column_names:
                raise InputError(f"{self.label} has no catalog column {name!r}; it has: "
                                 f"{', '.join(self.catalog.column_names)}")
            self._columns[name] = self.catalog.column(name).to_numpy(zero_copy_only=False)
        return self._columns[name]

    def positions(self, ids, missing_ok: bool = False) -> np.ndarray:
        """Index positions of object ids; those not in the index are an error naming them (or -1)."""
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        where = np.searchsorted(self.ids, ids, sorter=self._order)
        where = np.minimum(where, len(self.ids) - 1)
        pos = self._order[where]
        absent = self.ids[pos] != ids
        if missing_ok:
            return np.where(absent, -1, pos)
        missing = ids[absent]
        if missing.size:
            raise InputError(f"ids {missing[:10].tolist()}{' ...' if missing.size > 10 else ''} are not in "
                             f"{self.label} ({len(self)} objects)")
        return pos

    def vectors(self, ids) -> np.ndarray:
        """The indexed codes (unit-normalised for cosine) of object ids, (Q, D).

        Exact, except for an IVF-PQ index without re-ranking (k_factor=0): its decoded PQ codes.
        """
        return self.index.reconstruct_batch(self.positions(ids).astype(np.int64))

    # -- queries into vectors
    def _normalise(self, vectors: np.ndarray, labels: np.ndarray, what: str) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim == 1:
            vectors = vectors[None]
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise InputError(f"{what} has shape {vectors.shape}; {self.label} holds codes of length {self.dim}")
        return prepare_vectors(vectors, labels, self.metric, what)

    def encode_images(self, x, what: str = "query image") -> np.ndarray:
        """Codes of images (N, C, H, W) or one (C, H, W) (or (H, W) for one band) in store units."""
        model = self.model
        want = model.input_shape
        x = np.asarray(x, dtype=np.float32)
        if x.shape == want or (len(want) == 3 and want[0] == 1 and x.shape == want[1:]):
            x = x.reshape(1, *want)
        if x.ndim != len(want) + 1 or x.shape[1:] != want:
            bands = ((getattr(model, "record", None) or {}).get("store") or {}).get("bands")
            band_text = f" (band{'s' if len(bands) > 1 else ''} {', '.join(bands)})" if bands else ""
            raise InputError(f"{what} has shape {x.shape} but {self.label}'s model {type(model).__name__} takes "
                             f"{want}{band_text} per image, or (N, {', '.join(map(str, want))}): cut stamps of "
                             "that size, with the same bands in the same order")
        if model.data_columns or model.data_arrays:
            raise InputError(f"{self.label}'s model reads {', '.join((*model.data_columns, *model.data_arrays))} "
                             "besides the pixels: query with a store (--catalog) that has them")
        bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
        if bad.size:
            raise InputError(f"{what} has NaN/inf pixels in image(s) {bad[:10].tolist()}: mask or clean them first")
        with torch.no_grad():
            z = torch.cat([model.encode(torch.from_numpy(x[s:s + 256])) for s in range(0, len(x), 256)])
            z = code_form(z, self.form)
        return self._normalise(z.numpy(), np.arange(len(x)), what)

    def _store_queries(self, store: Store, progress: bool) -> np.ndarray:
        """Codes of every object of `store`: indexed codes, a codes store, or images encoded."""
        if self._is_source(store) and (self.positions(store.ids, missing_ok=True) >= 0).all():
            return self.vectors(store.ids)
        if store.kind == "table" and store.sample_shape == (self.dim,):
            recorded, theirs = self.meta.get("model"), (store.meta.get("provenance") or {}).get("model")
            if not recorded or not theirs or theirs.get("fingerprint") != recorded.get("fingerprint") \
                    or theirs.get("form", "codes") != recorded.get("form", "codes"):
                raise InputError(f"{self.label} was built for model {describe_model(recorded)}, but codes store "
                                 f"{store.path} was embedded with {describe_model(theirs)}: embed the queries "
                                 "with the index's model")
            return self._normalise(store.read("x"), store.ids, f"codes store {store.path}")
        theirs = (store.meta.get("provenance") or {}).get("model")
        if store.kind == "table" and theirs:
            raise InputError(f"codes store {store.path} holds codes of length {store.sample_shape[0]} ("
                             f"{theirs.get('form', 'codes')} form) but {self.label} holds length {self.dim} ("
                             f"{self.form} form): embed the queries with the index's model and --form {self.form}")
        model = self.model
        check_model_store(model, store)
        trained = ((getattr(model, "record", None) or {}).get("store") or {}).get("bands")
        if trained and store.bands and tuple(trained) != store.bands:
            raise InputError(f"store {store.path} has bands {store.bands} but {self.label}'s model was trained "
                             f"on {tuple(trained)}: query with stamps in those bands")
        from deepfield.data.batches import iterate_batches

        rows = np.arange(len(store))
        parts = []
        with torch.no_grad(), progress_bar(progress) as bar:
            task = bar.add_task("encoding queries", total=rows.size)
            for batch in iterate_batches(store, rows, model, 256):
                parts.append(code_form(model.encode_batch(batch), self.form).numpy())
                bar.advance(task, len(batch["id"]))
        return self._normalise(np.concatenate(parts), store.ids, f"store {store.path}")

    def _is_image_array(self, arr: np.ndarray) -> bool:
        want = tuple((self.meta.get("model") or {}).get("input_shape") or ())
        if not want:
            return False
        return tuple(arr.shape[-len(want):]) == want or (len(want) == 3 and want[0] == 1 and arr.shape == want[1:])

    def _resolve(self, queries, progress: bool) -> tuple[np.ndarray, np.ndarray, dict, np.ndarray | None]:
        """(vectors, query ids, where the query catalog values are, own index positions or None)."""
        if isinstance(queries, _Codes):
            vectors = self._normalise(queries.values, np.arange(len(np.atleast_2d(queries.values))), "query codes")
            return vectors, np.arange(len(vectors), dtype=np.int64), {}, None
        id_list = isinstance(queries, (list, tuple)) and queries and all(
            isinstance(q, (int, np.integer)) for q in queries)
        id_array = isinstance(queries, np.ndarray) and queries.dtype.kind in "iu" and queries.ndim <= 1
        if isinstance(queries, (int, np.integer)) or id_list or id_array:
            qids = np.atleast_1d(np.asarray(queries, dtype=np.int64))
            pos = self.positions(qids)
            return self.vectors(qids), qids, {"index_positions": pos}, pos
        if isinstance(queries, (str, os.PathLike)):
            p = Path(queries)
            if is_store(p):
                return self._resolve(open_store(p), progress)
            x = self.encode_images(read_image_file(p), what=f"query image {p}")
            return x, np.arange(len(x), dtype=np.int64), {}, None
        if isinstance(queries, Store):
            vectors = self._store_queries(queries, progress)
            own = self.positions(queries.ids, missing_ok=True) if self._is_source(queries) else None
            return vectors, queries.ids, {"store": queries}, own
        arr = queries.detach().cpu().numpy() if torch.is_tensor(queries) else np.asarray(queries, dtype=np.float32)
        if not self._is_image_array(arr) and arr.ndim in (1, 2) and arr.shape[-1] == self.dim:
            return self._resolve(_Codes(arr), progress)
        x = self.encode_images(arr)
        return x, np.arange(len(x), dtype=np.int64), {}, None

    def _query_values(self, name: str, source: dict, n: int, given: Mapping[str, Any] | None) -> np.ndarray:
        if given and name in given:
            values = np.broadcast_to(np.asarray(given[name], dtype=np.float64), (n,))
            return np.asarray(values)
        if "index_positions" in source:
            return self.column(name)[source["index_positions"]].astype(np.float64)
        if "store" in source:
            return source["store"].column(name).astype(np.float64)
        raise InputError(f"the window filter on {name!r} needs each query's {name}: pass "
                         f"query_values={{'{name}': ...}} (CLI: --query-value {name}=VALUE)")

    def search(self, queries, k: int = 10, filters: Mapping[str, float] | None = None, *, where: str | None = None,
               query_values: Mapping[str, Any] | None = None, columns: Sequence[str] = (),
               exclude_self: bool = False, batch_size: int = 4096, progress: bool = False) -> pa.Table:
        """The k nearest indexed objects of each query, as a table.

        Arguments:
            queries: object id(s) in the index; an image array (C, H, W) or (N, C, H, W) in store
                units, or a .npy/FITS file, encoded with the index's model; codes (D,) or (N, D);
                or a store (images, or codes embedded with the same model) for a batch search.
            k: neighbours per query.
            filters: windows on catalog columns, {column: half_width}: a neighbour is kept if
                |its value - the query's| <= half_width (e.g. {"magnitude": 0.5}). Query values
                come from the index (id queries), the query store's catalog, or `query_values`.
            where: a catalog query every neighbour must pass, e.g. "redshift < 1".
            query_values: {column: value(s)} for the windows of image or code queries.
            columns: catalog columns of the neighbours to add to the table.
            exclude_self: leave an indexed query object out of its own neighbours.

        Returns:
            A pyarrow Table: query_id (the id, or the row of an image/code batch), rank (1 =
            nearest), neighbour_id, distance (see the module docstring), then `columns`. Filtered
            searches fetch more candidates until k pass (exact for flat indexes); a query with
            fewer than k passing neighbours in the whole index gets fewer rows.
        """
        if int(k) < 1:
            raise InputError(f"k={k}: ask for at least one neighbour")
        vectors, qids, source, own = self._resolve(queries, progress)
        windows = {name: float(w) for name, w in (filters or {}).items()}
        for name, width in windows.items():
            if not width >= 0:
                raise InputError(f"window on {name!r} has half-width {width}: give a non-negative number")
        values = {name: self._query_values(name, source, len(vectors), query_values) for name in windows}
        static = None
        if where:
            from deepfield.data.store import evaluate_query

            static = evaluate_query(where, self.column)
        parts = []
        with progress_bar(progress and len(vectors) > batch_size) as bar:
            task = bar.add_task("searching", total=len(vectors))
            for start in range(0, len(vectors), batch_size):
                sl = slice(start, start + batch_size)
                dist, pos = self._filtered(vectors[sl], int(k), {n: v[sl] for n, v in values.items()}, windows,
                                           static, None if own is None or not exclude_self else own[sl])
                parts.append((qids[sl], dist, pos))
                bar.advance(task, len(vectors[sl]))
        return self._table(parts, columns)

    def search_codes(self, codes, k: int = 10, filters: Mapping[str, float] | None = None, **options) -> pa.Table:
        """:meth:`search` with codes (D,) or (N, D) as queries, never read as images."""
        values = codes.detach().cpu().numpy() if torch.is_tensor(codes) else np.asarray(codes, dtype=np.float32)
        return self.search(_Codes(values), k, filters, **options)

    def _filtered(self, vectors, k, values, windows, static, own):
        """Top-k positions per query passing the filters: fetch more until enough pass."""
        n, q = len(self), len(vectors)
        out_d = np.full((q, k), np.inf, dtype=np.float32)
        out_p = np.full((q, k), -1, dtype=np.int64)
        filtered = bool(windows) or static is not None
        pass_rate = float(static.mean()) if static is not None else 1.0
        # first try: the k nearest (one more to drop the query itself); filtered, enough that
        # ~4k candidates pass the catalog query
        fetch = min(n, max(4 * k, 64, int(4 * k / max(pass_rate, 1e-6))) if filtered else k + (own is not None))
        nprobe = self.meta["params"].get("nprobe")
        nlist = self.meta["params"].get("nlist")
        pending = np.arange(q)
        while pending.size:
            # bound the candidate matrix to ~16M entries per call
            step = max(1, (1 << 24) // fetch)
            still, exhausted = [], False
            for s in range(0, pending.size, step):
                rows = pending[s:s + step]
                dist, pos = raw_search(self.index, self.kind, self.meta["params"], vectors[rows], fetch, nprobe)
                ok = pos >= 0
                safe = np.where(ok, pos, 0)
                if static is not None:
                    ok &= static[safe]
                for name, width in windows.items():
                    ok &= np.abs(self.column(name)[safe] - values[name][rows, None]) <= width
                if own is not None:
                    ok &= pos != own[rows, None]
                returned = (pos >= 0).sum(axis=1)
                # done: enough pass, or every object was seen, or no wider search can find more
                done = (ok.sum(axis=1) >= k) | (returned >= n)
                if fetch >= n and (nprobe is None or nprobe >= nlist):
                    done[:] = True
                if self.kind == "hnsw":
                    done |= returned < fetch
                first = np.argsort(~ok, axis=1, kind="stable")[:, :k]  # passing candidates, nearest first
                chosen = np.take_along_axis(ok, first, axis=1)
                width = first.shape[1]
                out_p[rows[done], :width] = np.where(chosen, np.take_along_axis(pos, first, axis=1), -1)[done]
                out_d[rows[done], :width] = np.where(chosen, np.take_along_axis(dist, first, axis=1), np.inf)[done]
                still.append(rows[~done])
                exhausted |= bool((returned[~done] < fetch).any())
            pending = np.concatenate(still)
            if exhausted and nprobe is not None and nprobe < nlist:
                nprobe = min(nlist, 4 * nprobe)  # the probed cells ran out: probe more of them
            else:
                fetch = min(n, 4 * fetch)
        return out_d, out_p

    def _table(self, parts, columns: Sequence[str]) -> pa.Table:
        qid, rank, dist, pos = [], [], [], []
        for qids, d, p in parts:
            valid = p >= 0
            qid.append(np.repeat(qids, valid.sum(axis=1)))
            rank.append((np.cumsum(valid, axis=1) - 1)[valid] + 1)
            pos.append(p[valid])
            dist.append(d[valid].astype(np.float64))
        pos = np.concatenate(pos) if pos else np.zeros(0, np.int64)
        d2 = np.maximum(np.concatenate(dist) if dist else np.zeros(0), 0.0)
        distance = np.sqrt(d2) if self.metric == "l2" else d2 / 2
        table = pa.table({"query_id": np.concatenate(qid).astype(np.int64) if qid else np.zeros(0, np.int64),
                          "rank": np.concatenate(rank).astype(np.int32) if rank else np.zeros(0, np.int32),
                          "neighbour_id": self.ids[pos], "distance": distance})
        for name in columns:
            if name in table.column_names:
                continue
            values = pa.array(self.column(name)[pos])
            table = table.append_column(pa.field(name, values.type, metadata=self.catalog.schema.field(name).metadata),
                                        values)
        return table.replace_schema_metadata({"index": str(self.path) if self.path else "", "metric": self.metric,
                                              "kind": self.kind})
