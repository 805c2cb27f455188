"""Similarity search over latent codes: embed a store, build a FAISS index, query it.

    codes = embed_store("models/ae", "stores/galaxies", "codes/ae")   # (N, D) codes keyed by id
    build_index(codes, "indexes/ae", metric="cosine")                 # exact below 100k objects
    index = open_index("indexes/ae")
    table = index.search([1234], k=10, filters={"magnitude": 0.5})    # neighbours within +-0.5 mag

An index folder::

    INDEX/
      index.faiss      the FAISS index over positions 0..N-1
      ids.npy          (N,) int64: the object id at each position
      catalog.parquet  the indexed objects' catalog (id + physical columns): filters and tables
      meta.json        format version, metric, kind, dim, count, search parameters, the recall@10
                       measured at build time, and what the index was built from: the model
                       (class, weight fingerprint, folder), the codes store and its source store
                       (path, fingerprint)

Distances: 'l2' is the Euclidean distance between codes (code units); 'cosine' is
1 - cos(angle) between codes (0: same direction, 2: opposite). Cosine codes are normalised to
unit length and searched with L2, since |a - b|^2 = 2 (1 - cos) for unit vectors.

Kinds: 'flat' is exact; 'hnsw' a navigable small-world graph (Malkov & Yashunin 2018,
arXiv:1603.09320); 'ivf' an inverted file of k-means cells over the raw codes; 'ivfpq' the
same cells with product-quantised codes (Jegou et al. 2011, doi:10.1109/TPAMI.2010.57), D/2
bytes per code, whose candidates are re-ranked with the raw codes (k_factor > 0, the default:
recall as IVF's, memory not saved) or not (k_factor=0: 8x smaller than the raw codes, recall
capped by the quantisation). 'auto' takes flat below 100,000 objects and IVF above: on 1M
32-D codes (benchmarks/search.py) it built 6x faster than HNSW and answered batches of queries
faster at the same recall. The approximate kinds'
search effort (efSearch, nprobe) is tuned at build time to reach `target_recall` of the exact
top 10, on 500 of the codes held out of the index until the end (so they search like new
objects); the recall reached is recorded in meta.json.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from deepfield._atomic import staged_dir
from deepfield._version import __version__
from deepfield.data.store import Store, is_store, open_store
from deepfield.errors import ConfigError, InputError, StoreError
from deepfield.models import Model
from deepfield.models.base import config_to_dict
from deepfield.models.folder import as_model
from deepfield.progress import progress_bar
from deepfield.tasks.apply import map_store
from deepfield.tasks.encode import check_model_store

__all__ = ["INDEX_FORMAT_VERSION", "KINDS", "SimilarityIndex", "embed_store", "build_index", "open_index",
           "model_identity", "read_image_file"]

INDEX_FORMAT_VERSION = 1
KINDS = ("flat", "hnsw", "ivf", "ivfpq")
#: tunable parameters of each kind (build_index(params=...))
_PARAMS = {"flat": (), "hnsw": ("M", "ef_construction", "ef_search"),
           "ivf": ("nlist", "nprobe"), "ivfpq": ("nlist", "nprobe", "pq_m", "pq_bits", "k_factor")}
_TUNE_K = 10
_EF_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
_NPROBE_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048)
_RAISE_RECALL = {"hnsw": "build with larger M / ef_construction, or use kind='ivf'",
                 "ivf": "pass a larger nprobe, or use kind='flat'",
                 "ivfpq": "re-rank with the raw codes (k_factor > 0) or use more bytes per code (pq_m)"}
_IMAGE_SUFFIXES = (".npy", ".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fz")


# --------------------------------------------------------------------------------------
# identities: what an index was built from


def model_identity(model: Model, path: str | os.PathLike | None = None) -> dict:
    """Class, a fingerprint of config + weights, and the folder (if known) of `model`.

    The fingerprint is a hash of the class, its config and every parameter and buffer, so a
    model retrained into the same folder, or copied elsewhere, is told apart (or recognised).
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(type(model).__name__.encode())
    h.update(json.dumps(config_to_dict(model.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    record = getattr(model, "record", None) or {}
    return {"class": type(model).__name__, "fingerprint": h.hexdigest(),
            "path": None if path is None else str(Path(path).resolve()), "input_shape": list(model.input_shape),
            "trained_on": (record.get("store") or {}).get("fingerprint")}


def _describe_model(identity: dict | None) -> str:
    if not identity:
        return "no recorded model"
    where = f" at {identity['path']}" if identity.get("path") else ""
    return f"{identity['class']} {identity['fingerprint'][:12]}{where}"


def _describe_store(record: dict | None) -> str:
    if not record or not record.get("fingerprint"):
        return "no recorded store"
    return f"{record.get('path')} (fingerprint {record['fingerprint'][:12]})"


def _model_and_folder(model) -> tuple[Model, Path | None]:
    """The model, and its folder when it was given as one."""
    return as_model(model), None if isinstance(model, torch.nn.Module) else Path(model)


def _ids_of(store_ids: np.ndarray, rows: np.ndarray, limit: int = 10) -> str:
    shown = store_ids[rows[:limit]].tolist()
    more = f" and {rows.size - limit} more" if rows.size > limit else ""
    return f"{shown}{more}"


# --------------------------------------------------------------------------------------
# embed


def embed_store(model: Model | str | os.PathLike, store: Store | str | os.PathLike, out, *, indices=None,
                batch_size: int = 256, overwrite: bool = False, progress: bool = True) -> Store:
    """Codes (N, latent_dim) of `store`'s objects under `model`, written as a codes store at `out`.

    Like :func:`deepfield.tasks.encode.encode_store` (same codes store: ids and catalog kept),
    plus what an index needs to refuse a mismatched query later: the model's identity (class,
    weight fingerprint, folder) in the provenance beside the source store's fingerprint. The
    model reads the batch it was trained with (PSF, conditions), and codes that come out NaN
    or infinite are reported by object id.

    Arguments:
        model: a model folder or a loaded model.
        store: the store to embed.
        out: the codes store to write (atomically).
        indices: rows of `store` to embed (default: all).
    """
    model, path = _model_and_folder(model)
    store = store if isinstance(store, Store) else open_store(store)
    check_model_store(model, store)
    model.eval()
    identity = model_identity(model, path)

    def codes_of(batch: dict) -> torch.Tensor:
        z = model.encode_batch(batch)
        bad = ~torch.isfinite(z).all(dim=1)
        if bool(bad.any()):
            ids = batch["id"][bad].tolist()
            raise InputError(f"{_describe_model(identity)} gives NaN/inf codes for objects with ids "
                             f"{ids[:10]}{' ...' if len(ids) > 10 else ''} of {store.path}: check their pixels "
                             "(deepfield info), or leave them out with --where")
        return z

    provenance = {"task": "embed", "model_class": identity["class"], "model": identity,
                  "model_store_fingerprint": identity["trained_on"]}
    return map_store(codes_of, store, out, out_kind="table", indices=indices, batch_size=batch_size,
                     description="embedding", provenance=provenance, overwrite=overwrite, progress=progress,
                     model=model)


# --------------------------------------------------------------------------------------
# building


def _auto_kind(n: int) -> str:
    return "flat" if n < 100_000 else "ivf"


def _held_out(n: int) -> int:
    """Codes held out of an approximate index until the end of the build, to tune its search."""
    return min(500, n // 5)


def _default_params(kind: str, n: int, dim: int) -> dict:
    """Sensible starting parameters for `n` codes of length `dim`."""
    # IVF: ~4 sqrt(N) cells (FAISS's guideline), but at least ~39 training points per cell
    # (from the codes left after the tuning sample is held out)
    nlist = int(max(1, min(round(4 * math.sqrt(n)), (n - _held_out(n)) // 39)))
    if kind == "hnsw":
        # links per node: 16 suits codes of up to ~32 dimensions, longer codes want more
        return {"M": 16 if dim <= 32 else 32, "ef_construction": 40}
    if kind == "ivf":
        return {"nlist": nlist}
    if kind == "ivfpq":
        pq_m = next(m for m in (dim // 2, dim // 4, dim // 3, dim, 1) if m >= 1 and dim % m == 0)
        # 2^bits centroids per sub-quantiser need ~39 training points each
        pq_bits = int(min(8, max(4, math.floor(math.log2(max((n - _held_out(n)) // 39, 16))))))
        return {"nlist": nlist, "pq_m": pq_m, "pq_bits": pq_bits, "k_factor": 8}
    return {}


def _make_faiss(kind: str, dim: int, params: dict):
    import faiss

    if kind == "flat":
        return faiss.IndexFlatL2(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(params["M"]))
        index.hnsw.efConstruction = int(params["ef_construction"])
        return index
    quantizer = faiss.IndexFlatL2(dim)
    if kind == "ivf":
        return faiss.IndexIVFFlat(quantizer, dim, int(params["nlist"]))
    ivfpq = faiss.IndexIVFPQ(quantizer, dim, int(params["nlist"]), int(params["pq_m"]), int(params["pq_bits"]))
    if not params["k_factor"]:
        return ivfpq
    refine = faiss.IndexRefineFlat(ivfpq)  # keeps the raw codes to re-rank candidates exactly
    refine.k_factor = float(params["k_factor"])
    return refine


def _search_parameters(kind: str, params: dict, fetch: int, nprobe: int | None = None, n: int | None = None):
    """FAISS per-call search parameters (kept alive by the caller while searching)."""
    import faiss

    if kind == "hnsw":
        # efSearch was tuned for the top 10: scale it with the number fetched, up to the index size
        ef = int(math.ceil(fetch * params["ef_search"] / _TUNE_K))
        return faiss.SearchParametersHNSW(efSearch=max(int(params["ef_search"]), fetch, min(ef, n or ef)))
    if kind == "ivf" or kind == "ivfpq" and not params["k_factor"]:
        return faiss.SearchParametersIVF(nprobe=int(nprobe or params["nprobe"]))
    if kind == "ivfpq":
        base = faiss.SearchParametersIVF(nprobe=int(nprobe or params["nprobe"]))
        refine = faiss.IndexRefineSearchParameters(k_factor=float(params["k_factor"]), base_index_params=base)
        refine._base = base  # keep the Python object alive as long as the parameters
        return refine
    return None


def _raw_search(index, kind: str, params: dict, vectors: np.ndarray, fetch: int, nprobe: int | None = None):
    sp = _search_parameters(kind, params, fetch, nprobe, index.ntotal)
    return index.search(np.ascontiguousarray(vectors, dtype=np.float32), int(fetch), params=sp)


def _recall_at_k(index, kind: str, params: dict, queries: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's exact k nearest neighbours that the index returns."""
    _, found = _raw_search(index, kind, params, queries, truth.shape[1])
    return float(np.mean([len(set(f) & set(t)) for f, t in zip(found, truth)])) / truth.shape[1]


def _tune(index, kind: str, params: dict, queries: np.ndarray, indexed: np.ndarray,
          target_recall: float) -> tuple[dict, float]:
    """Smallest efSearch / nprobe whose recall@10 on held-out `queries` reaches the target.

    `indexed` are the codes in the index so far (positions 0..len-1); the queries are codes
    not yet added, so they behave like new objects. Returns the parameters and their recall.
    """
    import faiss

    _, truth = faiss.knn(queries, indexed, min(_TUNE_K, len(indexed)))
    name, grid = ("ef_search", _EF_GRID) if kind == "hnsw" else ("nprobe", _NPROBE_GRID)
    if name in params:  # given by the user: measure only
        return params, _recall_at_k(index, kind, params, queries, truth)
    if kind != "hnsw":
        grid = sorted({min(g, int(params["nlist"])) for g in grid})
    measured = []
    for value in grid:
        recall = _recall_at_k(index, kind, {**params, name: value}, queries, truth)
        if recall >= target_recall:
            return {**params, name: value}, recall
        measured.append((value, recall))
    # out of reach (e.g. PQ codes without re-ranking): the least effort within 0.005 of the best
    top = max(r for _, r in measured)
    value, recall = next((v, r) for v, r in measured if r >= top - 0.005)
    warnings.warn(f"{kind} index: recall@10 {recall:.3f} on held-out codes, below the target {target_recall} "
                  f"at any {name}: {_RAISE_RECALL[kind]}", stacklevel=3)
    return {**params, name: value}, recall


def _as_codes(codes, ids, catalog) -> tuple[np.ndarray, np.ndarray, pa.Table, dict]:
    """Vectors (N, D), ids, catalog and provenance records of a codes store or an array."""
    if isinstance(codes, (str, os.PathLike, Store)):
        store = codes if isinstance(codes, Store) else open_store(codes)
        vectors = store.read("x")
        if vectors.ndim != 2:
            raise InputError(f"{store.path} holds objects of shape {store.sample_shape}, not codes: "
                             "embed it first with `deepfield embed MODEL --store ... --out CODES`")
        prov = store.meta.get("provenance") or {}
        source = ({"path": prov["source_store"], "fingerprint": prov.get("source_fingerprint")}
                  if prov.get("source_store") else None)
        records = {"model": prov.get("model"), "store": source,
                   "codes": {"path": str(Path(store.path).resolve()), "fingerprint": store.fingerprint}}
        return np.asarray(vectors, dtype=np.float32), store.ids, store.catalog, records
    vectors = np.asarray(codes, dtype=np.float32)
    if vectors.ndim != 2:
        raise InputError(f"codes must be an (N, D) array, got shape {vectors.shape}")
    ids = np.arange(len(vectors), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    if ids.shape != (len(vectors),):
        raise InputError(f"{ids.size} ids for {len(vectors)} codes: give one id per code")
    if len(np.unique(ids)) != ids.size:
        raise InputError("ids are not unique")
    table = pa.table({"id": ids})
    if catalog is not None:
        extra = catalog if isinstance(catalog, pa.Table) else pa.table(dict(catalog))
        if extra.num_rows != len(vectors):
            raise InputError(f"catalog has {extra.num_rows} rows for {len(vectors)} codes")
        for name in extra.column_names:
            if name != "id":
                table = table.append_column(extra.schema.field(name), extra.column(name))
    return vectors, ids, table, {"model": None, "store": None, "codes": None}


def _prepare_vectors(vectors: np.ndarray, ids: np.ndarray, metric: str, what: str) -> np.ndarray:
    """Check codes are finite (naming the ids that are not) and normalise them for cosine."""
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if bad.size:
        raise InputError(f"{what} has NaN/inf codes for {bad.size} object(s), ids {_ids_of(ids, bad)}: "
                         "re-embed them, or leave them out (deepfield embed --where)")
    if metric == "cosine":
        norm = np.linalg.norm(vectors, axis=1, keepdims=True)
        zero = np.flatnonzero(norm[:, 0] == 0)
        if zero.size:
            raise InputError(f"{what} has all-zero codes (no direction for a cosine distance) for ids "
                             f"{_ids_of(ids, zero)}: use --metric l2")
        vectors = vectors / norm
    return np.ascontiguousarray(vectors, dtype=np.float32)


def build_index(codes, out=None, *, metric: str = "cosine", kind: str = "auto", ids=None, catalog=None,
                params: Mapping[str, float] | None = None, target_recall: float = 0.95, seed: int = 0,
                overwrite: bool = False, progress: bool = True) -> "SimilarityIndex":
    """A FAISS index over codes, written as an index folder at `out` (or kept in memory if None).

    Arguments:
        codes: a codes store (from :func:`embed_store`; its model and store are recorded), or an
            (N, D) array.
        out: index folder to write atomically (temporary name, then rename); None: in memory.
        metric: 'cosine' (1 - cos angle) or 'l2' (Euclidean, code units).
        kind: 'auto', 'flat' (exact), 'hnsw', 'ivf' or 'ivfpq' (see the module docstring).
        ids: object ids of an array's rows (default 0..N-1); stores bring their own.
        catalog: columns for an array's rows (dict or pyarrow Table), for filters.
        params: override the kind's parameters: hnsw M, ef_construction, ef_search; ivf nlist,
            nprobe; ivfpq nlist, nprobe, pq_m (bytes per code at 8 bits), pq_bits, k_factor
            (candidates re-ranked with the raw codes per result; 0: keep only the PQ codes).
            A given ef_search/nprobe is kept; otherwise it is tuned to `target_recall`.
        target_recall: recall@10 against exact search that the tuned effort must reach.
        seed: seed of the k-means training sample and of the held-out tuning sample (500 codes,
            added to the index last).
    """
    import faiss

    if metric not in ("cosine", "l2"):
        raise ConfigError(f"metric {metric!r}: choose cosine or l2")
    if kind not in ("auto", *KINDS):
        raise ConfigError(f"index kind {kind!r}: choose auto, {', '.join(KINDS)}")
    if out is not None and Path(out).exists() and not overwrite:
        raise InputError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    vectors, ids, table, records = _as_codes(codes, ids, catalog)
    n, dim = vectors.shape
    if n == 0:
        raise InputError("no codes to index")
    what = records["codes"]["path"] if records["codes"] else "the codes"
    vectors = _prepare_vectors(vectors, ids, metric, what)
    kind = _auto_kind(n) if kind == "auto" else kind
    if kind != "flat" and n < 2 * _TUNE_K:
        raise InputError(f"{n} codes are too few for an approximate {kind} index: use kind='flat'")
    given = dict(params or {})
    unknown = sorted(set(given) - set(_PARAMS[kind]))
    if unknown:
        raise ConfigError(f"{kind} index parameters {unknown} unknown; valid: {list(_PARAMS[kind]) or 'none'}")
    settings = {**_default_params(kind, n, dim), **given}
    if kind == "ivfpq" and dim % int(settings["pq_m"]):
        raise ConfigError(f"pq_m={settings['pq_m']} must divide the code length {dim}")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    held = 0
    if kind != "flat":
        # tune on codes held out until the end, so they search like new objects; the index
        # keeps its own order of positions (ids.npy and the catalog follow it)
        held = _held_out(n)
        last = np.zeros(n, dtype=bool)
        last[rng.choice(n, size=held, replace=False)] = True
        order = np.concatenate([np.flatnonzero(~last), np.flatnonzero(last)])
        vectors, ids, table = vectors[order], ids[order], table.take(order)
    index = _make_faiss(kind, dim, settings)
    recall = 1.0
    with progress_bar(progress) as bar:
        if kind in ("ivf", "ivfpq"):
            task = bar.add_task("training k-means cells", total=None)
            size, pool = 64 * int(settings["nlist"]), n - held
            sample = vectors[:pool] if pool <= size else vectors[np.sort(rng.choice(pool, size=size, replace=False))]
            faiss.extract_index_ivf(index).cp.seed = seed
            index.train(sample)
            bar.update(task, total=1, completed=1)
        task = bar.add_task(f"adding codes ({kind})", total=n)
        # HNSW in one call: FAISS inserts a batch's upper-layer nodes first, and a graph built
        # from 65k-code batches reached recall@10 0.89 where one built at once reached 0.96
        # (1M codes, efSearch 512-1024)
        chunk = n if kind == "hnsw" else 65536
        for start in range(0, n - held, chunk):
            stop = min(start + chunk, n - held)
            index.add(vectors[start:stop])
            bar.advance(task, stop - start)
        if held:
            settings, recall = _tune(index, kind, settings, vectors[n - held:], vectors[:n - held], target_recall)
            index.add(vectors[n - held:])
            bar.advance(task, held)
        if kind in ("ivf", "ivfpq"):
            faiss.extract_index_ivf(index).make_direct_map()  # reconstruct codes by position
    meta = {
        "format_version": INDEX_FORMAT_VERSION, "metric": metric, "kind": kind, "dim": int(dim), "count": int(n),
        "params": settings, "recall_at_10": float(recall), "target_recall": float(target_recall),
        "build_seconds": time.perf_counter() - t0, **records,
        "library_version": __version__, "faiss_version": faiss.__version__,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if out is not None:
        _write_index_folder(Path(out), index, ids, table, meta)
    return SimilarityIndex(index, ids, table, meta, None if out is None else Path(out))


def _write_index_folder(final: Path, index, ids: np.ndarray, catalog: pa.Table, meta: dict) -> None:
    import faiss

    with staged_dir(final) as tmp:
        faiss.write_index(index, str(tmp / "index.faiss"))
        np.save(tmp / "ids.npy", np.asarray(ids, dtype=np.int64))
        pq.write_table(catalog, tmp / "catalog.parquet")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------------------
# opening


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
    meta = json.loads((p / "meta.json").read_text())
    if meta.get("format_version") != INDEX_FORMAT_VERSION:
        raise StoreError(f"{p} has index format version {meta.get('format_version')!r}; this deepfield reads "
                         f"version {INDEX_FORMAT_VERSION}: rebuild it with `deepfield index`")
    missing = [f for f in ("index.faiss", "ids.npy", "catalog.parquet") if not (p / f).is_file()]
    if missing:
        raise StoreError(f"index {p} is incomplete (missing {', '.join(missing)}): rebuild it with `deepfield index`")
    index = faiss.read_index(str(p / "index.faiss"))
    ids = np.load(p / "ids.npy")
    catalog = pq.read_table(p / "catalog.parquet")
    if not (index.ntotal == ids.size == catalog.num_rows == meta["count"]):
        raise StoreError(f"index {p} is inconsistent ({index.ntotal} vectors, {ids.size} ids, "
                         f"{catalog.num_rows} catalog rows, {meta['count']} recorded): rebuild it")
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
        return np.asarray(np.load(p, allow_pickle=False), dtype=np.float32)
    if not name.endswith(_IMAGE_SUFFIXES):
        raise InputError(f"{p}: query images must be .npy or FITS ({', '.join(_IMAGE_SUFFIXES[1:])})")
    from astropy.io import fits

    with fits.open(p) as hdul:
        for hdu in hdul:
            if hdu.data is not None and getattr(hdu.data, "ndim", 0) >= 2 and hdu.data.dtype.names is None:
                return np.asarray(hdu.data, dtype=np.float32)
    raise InputError(f"{p} has no image HDU")


# --------------------------------------------------------------------------------------
# searching


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
    def label(self) -> str:
        return f"index {self.path}" if self.path else "the index"

    # -- provenance checks
    def use_model(self, model: Model | str | os.PathLike) -> Model:
        """Encode image queries with `model`, refused unless it is the model the index was built for."""
        model, path = _model_and_folder(model)
        recorded = self.meta.get("model")
        if not recorded:
            raise InputError(f"{self.label} was built from codes with no recorded model (not made by "
                             "`deepfield embed`), so images cannot be encoded for it: re-embed with "
                             "`deepfield embed MODEL` and rebuild, or query with codes")
        got = model_identity(model, path)
        if got["fingerprint"] != recorded["fingerprint"]:
            raise InputError(f"{self.label} was built for model {_describe_model(recorded)}, not model "
                             f"{_describe_model(got)}: query with the index's model, or re-embed and "
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
                raise InputError(f"{self.label} needs its model {_describe_model(recorded or None)}{where} to "
                                 "encode images: pass it with --model / model=")
            self.use_model(path)
        return self._model

    def check_store(self, store: Store | str | os.PathLike) -> Store:
        """Refuse a store other than the index's source store or codes store, naming both."""
        store = store if isinstance(store, Store) else open_store(store)
        known = [r for r in (self.meta.get("store"), self.meta.get("codes")) if r]
        if not any(r.get("fingerprint") == store.fingerprint for r in known):
            built = " and its codes ".join(_describe_store(r) for r in known) if known else "an array of codes"
            raise InputError(f"{self.label} was built from store {built}, not "
                             f"{_describe_store({'path': store.path, 'fingerprint': store.fingerprint})}: "
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
        return _prepare_vectors(vectors, labels, self.metric, what)

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
        return self._normalise(z.numpy(), np.arange(len(x)), what)

    def _store_queries(self, store: Store, progress: bool) -> np.ndarray:
        """Codes of every object of `store`: indexed codes, a codes store, or images encoded."""
        if self._is_source(store) and (self.positions(store.ids, missing_ok=True) >= 0).all():
            return self.vectors(store.ids)
        if store.kind == "table" and store.sample_shape == (self.dim,):
            recorded, theirs = self.meta.get("model"), (store.meta.get("provenance") or {}).get("model")
            if not recorded or not theirs or theirs.get("fingerprint") != recorded.get("fingerprint"):
                raise InputError(f"{self.label} was built for model {_describe_model(recorded)}, but codes store "
                                 f"{store.path} was embedded with {_describe_model(theirs)}: embed the queries "
                                 "with the index's model")
            return self._normalise(store.read("x"), store.ids, f"codes store {store.path}")
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
                parts.append(model.encode_batch(batch).numpy())
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
                dist, pos = _raw_search(self.index, self.kind, self.meta["params"], vectors[rows], fetch, nprobe)
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
