"""The FAISS side of search: index kinds and their parameters, building, tuning the search effort to a
target recall, and raw k-nearest-neighbour queries over prepared (normalised) code vectors."""

from __future__ import annotations

import math
import warnings

import numpy as np

from deepfield.errors import InputError

__all__ = ["PARAMS", "TUNE_K", "auto_kind", "held_out", "default_params", "make_faiss", "search_parameters",
           "raw_search", "tune", "prepare_vectors"]


#: tunable parameters of each kind (build_index(params=...))
PARAMS = {"flat": (), "hnsw": ("M", "ef_construction", "ef_search"),
          "ivf": ("nlist", "nprobe"), "ivfpq": ("nlist", "nprobe", "pq_m", "pq_bits", "k_factor")}
#: the search effort is tuned for the recall of the exact top TUNE_K
TUNE_K = 10
_EF_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
_NPROBE_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048)
_RAISE_RECALL = {"hnsw": "build with larger M / ef_construction, or use kind='ivf'",
                 "ivf": "pass a larger nprobe, or use kind='flat'",
                 "ivfpq": "re-rank with the raw codes (k_factor > 0) or use more bytes per code (pq_m)"}


def auto_kind(n: int) -> str:
    """The kind 'auto' picks for `n` codes: exact below 100,000, IVF above."""
    return "flat" if n < 100_000 else "ivf"


def held_out(n: int) -> int:
    """Codes held out of an approximate index until the end of the build, to tune its search."""
    return min(500, n // 5)


def default_params(kind: str, n: int, dim: int) -> dict:
    """Sensible starting parameters for `n` codes of length `dim`."""
    # IVF: ~4 sqrt(N) cells (FAISS's guideline), but at least ~39 training points per cell
    # (from the codes left after the tuning sample is held out)
    nlist = int(max(1, min(round(4 * math.sqrt(n)), (n - held_out(n)) // 39)))
    if kind == "hnsw":
        # links per node: 16 suits codes of up to ~32 dimensions, longer codes want more
        return {"M": 16 if dim <= 32 else 32, "ef_construction": 40}
    if kind == "ivf":
        return {"nlist": nlist}
    if kind == "ivfpq":
        pq_m = next(m for m in (dim // 2, dim // 4, dim // 3, dim, 1) if m >= 1 and dim % m == 0)
        # 2^bits centroids per sub-quantiser need ~39 training points each
        pq_bits = int(min(8, max(4, math.floor(math.log2(max((n - held_out(n)) // 39, 16))))))
        return {"nlist": nlist, "pq_m": pq_m, "pq_bits": pq_bits, "k_factor": 8}
    return {}


def make_faiss(kind: str, dim: int, params: dict):
    """An empty FAISS index of `kind` over `dim`-long vectors (L2; cosine codes are normalised first)."""
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


def search_parameters(kind: str, params: dict, fetch: int, nprobe: int | None = None, n: int | None = None):
    """FAISS per-call search parameters (kept alive by the caller while searching)."""
    import faiss

    if kind == "hnsw":
        # efSearch was tuned for the top 10: scale it with the number fetched, up to the index size
        ef = int(math.ceil(fetch * params["ef_search"] / TUNE_K))
        return faiss.SearchParametersHNSW(efSearch=max(int(params["ef_search"]), fetch, min(ef, n or ef)))
    if kind == "ivf" or kind == "ivfpq" and not params["k_factor"]:
        return faiss.SearchParametersIVF(nprobe=int(nprobe or params["nprobe"]))
    if kind == "ivfpq":
        base = faiss.SearchParametersIVF(nprobe=int(nprobe or params["nprobe"]))
        refine = faiss.IndexRefineSearchParameters(k_factor=float(params["k_factor"]), base_index_params=base)
        refine._base = base  # keep the Python object alive as long as the parameters
        return refine
    return None


def raw_search(index, kind: str, params: dict, vectors: np.ndarray, fetch: int, nprobe: int | None = None):
    """FAISS's (squared L2 distances, positions), each (len(vectors), fetch), with `kind`'s tuned effort."""
    sp = search_parameters(kind, params, fetch, nprobe, index.ntotal)
    return index.search(np.ascontiguousarray(vectors, dtype=np.float32), int(fetch), params=sp)


def _recall_at_k(index, kind: str, params: dict, queries: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's exact k nearest neighbours that the index returns."""
    _, found = raw_search(index, kind, params, queries, truth.shape[1])
    return float(np.mean([len(set(f) & set(t)) for f, t in zip(found, truth)])) / truth.shape[1]


def tune(index, kind: str, params: dict, queries: np.ndarray, indexed: np.ndarray,
          target_recall: float) -> tuple[dict, float]:
    """Smallest efSearch / nprobe whose recall@10 on held-out `queries` reaches the target.

    `indexed` are the codes in the index so far (positions 0..len-1); the queries are codes
    not yet added, so they behave like new objects. Returns the parameters and their recall.
    """
    import faiss

    _, truth = faiss.knn(queries, indexed, min(TUNE_K, len(indexed)))
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


def _ids_of(store_ids: np.ndarray, rows: np.ndarray, limit: int = 10) -> str:
    shown = store_ids[rows[:limit]].tolist()
    more = f" and {rows.size - limit} more" if rows.size > limit else ""
    return f"{shown}{more}"


def prepare_vectors(vectors: np.ndarray, ids: np.ndarray, metric: str, what: str) -> np.ndarray:
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
