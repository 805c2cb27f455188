"""Building an index folder from codes (a codes store, an array or a table) with build_index."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepfield._atomic import staged_dir
from deepfield._version import __version__
from deepfield.data.store import Store, open_store
from deepfield.errors import ConfigError, InputError
from deepfield.progress import progress_bar
from deepfield.tasks.search.engine import (PARAMS, TUNE_K, auto_kind, default_params, held_out, make_faiss,
                                          prepare_vectors, tune)
from deepfield.tasks.search.query import INDEX_FORMAT_VERSION, SimilarityIndex

__all__ = ["KINDS", "build_index"]


KINDS = ("flat", "hnsw", "ivf", "ivfpq")


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
    if not 0 < target_recall <= 1:
        raise ConfigError(f"target recall {target_recall}: a recall@10 is a fraction in (0, 1], e.g. 0.95")
    if out is not None and Path(out).exists() and not overwrite:
        raise InputError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    vectors, ids, table, records = _as_codes(codes, ids, catalog)
    n, dim = vectors.shape
    if n == 0:
        raise InputError("no codes to index")
    what = records["codes"]["path"] if records["codes"] else "the codes"
    vectors = prepare_vectors(vectors, ids, metric, what)
    kind = auto_kind(n) if kind == "auto" else kind
    if kind != "flat" and n < 2 * TUNE_K:
        raise InputError(f"{n} codes are too few for an approximate {kind} index: use kind='flat'")
    given = dict(params or {})
    unknown = sorted(set(given) - set(PARAMS[kind]))
    if unknown:
        raise ConfigError(f"{kind} index parameters {unknown} unknown; valid: {list(PARAMS[kind]) or 'none'}")
    settings = {**default_params(kind, n, dim), **given}
    if kind == "ivfpq" and dim % int(settings["pq_m"]):
        raise ConfigError(f"pq_m={settings['pq_m']} must divide the code length {dim}")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    held = 0
    if kind != "flat":
        # tune on codes held out until the end, so they search like new objects; the index
        # keeps its own order of positions (ids.npy and the catalog follow it)
        held = held_out(n)
        last = np.zeros(n, dtype=bool)
        last[rng.choice(n, size=held, replace=False)] = True
        order = np.concatenate([np.flatnonzero(~last), np.flatnonzero(last)])
        vectors, ids, table = vectors[order], ids[order], table.take(order)
    index = make_faiss(kind, dim, settings)
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
            settings, recall = tune(index, kind, settings, vectors[n - held:], vectors[:n - held], target_recall)
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


def _clear_stale_staging(final: Path) -> None:
    """Remove ``.NAME.tmp-PID`` folders left beside `final` by killed writers (PID no longer alive)."""
    prefix = f".{final.name}.tmp-"
    if not final.parent.is_dir():
        return
    for entry in final.parent.iterdir():
        if not entry.name.startswith(prefix) or not entry.is_dir():
            continue
        try:
            pid = int(entry.name[len(prefix):])
        except ValueError:
            continue
        if pid == os.getpid():
            continue  # staged_dir clears its own
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except PermissionError:
            pass  # alive, owned by someone else


def _write_index_folder(final: Path, index, ids: np.ndarray, catalog: pa.Table, meta: dict) -> None:
    import faiss

    _clear_stale_staging(final)
    with staged_dir(final) as tmp:
        faiss.write_index(index, str(tmp / "index.faiss"))
        np.save(tmp / "ids.npy", np.asarray(ids, dtype=np.int64))
        pq.write_table(catalog, tmp / "catalog.parquet")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
