"""Similarity search: approximate FAISS indexes against exact search, and what neighbours share.

Part 1, speed and recall: 1,000,000 synthetic codes of dimension 32 from a Gaussian mixture
(100 components with Dirichlet weights, means ~ N(0, 0.5^2 I), each an anisotropic Gaussian:
a random rotation of axis scales 1/sqrt(1 + i), i = 0..31, times a log-normal jitter, so the
clusters overlap and most variance lies in a few directions, as in trained latent codes).
Queries are 3,000 fresh draws from the same mixture. For the exact flat index, HNSW, IVF-Flat
and IVF-PQ (with exact re-ranking, and with PQ codes only), built by deepfield.tasks.search.build_index with its
recall tuning (target recall@10 0.95 on 500 codes held out until the end of the build): build
time, queries/s through SimilarityIndex.search_codes (one batch of queries, all cores; best of
interleaved rounds, so other jobs on the machine slow every index alike), and recall@10 against
the exact top 10; each approximate index also at half and twice its tuned search effort.
Target: recall@10 >= 0.95 at >= 20x the exact index's queries/s.

Part 2, what neighbours share: simulated 32x32 r-band galaxies (GalSim); a conv autoencoder
and PCA, both with 16-D codes, trained on the same split; exact cosine and L2 indexes of all
codes. For every galaxy (excluding itself) the fraction of its 10 nearest neighbours with the
same type (bulge-dominated: bulge_fraction > 0.5, else disk) and the same 1-mag magnitude bin,
against the fraction expected for random neighbours.

    python benchmarks/search.py           # the numbers of docs/benchmarks.md (~15 min on 2 cores)
    python benchmarks/search.py --quick   # 100,000 codes and 1,000 galaxies, a few minutes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

# FAISS's OpenMP threads sleep instead of spinning while they wait: on a machine shared
# with other jobs, spinning threads made k-means training several times slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import RESULTS, cached_store, markdown_table, write_results  # noqa: E402


def gaussian_mixture(n: int, dim: int = 32, components: int = 100, seed: int = 0, draw_seed: int = 1) -> np.ndarray:
    """`n` draws (float32) of the fixed mixture of seed `seed` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 0.5, (components, dim))
    weights = rng.dirichlet(np.full(components, 2.0))
    axes = (1.0 / np.sqrt(1.0 + np.arange(dim)))[None] * rng.lognormal(0.0, 0.3, (components, dim))
    rotations = np.stack([np.linalg.qr(rng.normal(size=(dim, dim)))[0] for _ in range(components)])
    draw = np.random.default_rng(draw_seed)
    which = draw.choice(components, size=n, p=weights)
    out = np.empty((n, dim), dtype=np.float32)
    for c in range(components):
        rows = np.flatnonzero(which == c)
        out[rows] = (draw.normal(size=(rows.size, dim)) * axes[c]) @ rotations[c].T + means[c]
    return out


def timed_search(index, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    table = index.search_codes(queries, k=k)
    seconds = time.perf_counter() - t0
    return np.asarray(table.column("neighbour_id")).reshape(len(queries), k), len(queries) / seconds


def recall_at(found: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, exact)]))


def part_speed(args) -> dict:
    import faiss

    from deepfield.tasks.search import build_index

    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    codes = gaussian_mixture(args.n_codes, draw_seed=1)
    queries = gaussian_mixture(args.n_queries, draw_seed=2)
    print(f"{args.n_codes} codes of dim 32 drawn in {time.perf_counter() - t0:.1f} s", flush=True)
    builds = {"flat": ("flat", {}), "hnsw": ("hnsw", {}), "ivf": ("ivf", {}), "ivfpq": ("ivfpq", {}),
              "ivfpq, PQ codes only": ("ivfpq", {"k_factor": 0})}
    indexes, build_s, size_mb = {}, {}, {}
    for label, (kind, params) in builds.items():
        t0 = time.perf_counter()
        indexes[label] = build_index(codes, metric="l2", kind=kind, params=params, target_recall=0.95,
                                     progress=kind != "flat")
        build_s[label] = time.perf_counter() - t0
        size_mb[label] = faiss.serialize_index(indexes[label].index).nbytes / 2**20
        print(f"{label}: built in {build_s[label]:.1f} s, {size_mb[label]:.0f} MB, {indexes[label].meta['params']}",
              flush=True)
    # every setting is timed in each of `rounds` interleaved rounds and keeps its best, so that
    # other jobs on a shared machine slow the exact and the approximate searches alike
    tuned = {label: dict(index.meta["params"]) for label, index in indexes.items()}
    settings = [("flat", None, None)]
    for label in list(builds)[1:]:
        effort = "ef_search" if label == "hnsw" else "nprobe"
        value = tuned[label][effort]
        settings += [(label, effort, v) for v in sorted({max(1, value // 2), value, 2 * value})]
    best, found = {}, {}
    for round_ in range(args.rounds):
        for label, effort, value in settings:
            index = indexes[label]
            index.meta["params"] = {**tuned[label], **({effort: value} if effort else {})}  # the search effort
            found[label, value], qps = timed_search(index, queries)
            best[label, value] = max(qps, best.get((label, value), 0.0))
        print(f"round {round_ + 1}: exact {best['flat', None]:.0f} queries/s so far", flush=True)
    exact = found["flat", None]
    flat_qps = best["flat", None]
    rows, sweeps = [], []
    for label, effort, value in settings:
        entry = {"kind": label, "qps": best[label, value], "speedup": best[label, value] / flat_qps,
                 "recall_at_10": recall_at(found[label, value], exact)}
        if effort is None or value == tuned[label][effort]:
            rows.append({**entry, "params": tuned[label], "build_s": build_s[label], "size_mb": size_mb[label],
                         "build_recall_at_10": indexes[label].meta["recall_at_10"]})
        if effort is not None:
            sweeps.append({**entry, effort: value})
    for r in rows:
        print(f"{r['kind']}: {r['qps']:.0f} queries/s ({r['speedup']:.1f}x exact), recall@10 {r['recall_at_10']:.4f}")
    return {"n_codes": args.n_codes, "dim": 32, "n_queries": args.n_queries, "rounds": args.rounds,
            "faiss_threads": _faiss_threads(), "load_average_1min": [load_start, os.getloadavg()[0]],
            "indexes": rows, "sweeps": sweeps}


def _faiss_threads() -> int:
    import faiss

    return faiss.omp_get_max_threads()


def part_galaxies(args, work: Path) -> dict:
    from deepfield.data.galaxies import simulate_galaxies
    from deepfield.tasks.search import build_index, embed_store
    from deepfield.train import TrainSettings, train

    store = cached_store(f"search-galaxies-{args.n_galaxies}-32",
                         lambda p: simulate_galaxies(p, args.n_galaxies, size=32, bands=("r",), seed=5, workers=2,
                                                     progress=True))
    bulge = store.column("bulge_fraction") > 0.5
    magnitude = store.column("magnitude")
    mag_bin = np.floor(magnitude).astype(int)
    resolved = store.column("snr") > 30  # morphology is measurable: roughly the brightest quarter

    def chance_type(queries: np.ndarray) -> float:
        """P(a random galaxy has the type of a query drawn from `queries`)."""
        return float(bulge[queries].mean() * bulge.mean() + (~bulge[queries]).mean() * (~bulge).mean())

    chance = {"same_type": chance_type(np.ones(len(store), bool)), "same_type_snr_gt_30": chance_type(resolved),
              "same_mag_bin": float(sum(np.mean(mag_bin == b) ** 2 for b in np.unique(mag_bin)))}
    position = {int(i): p for p, i in enumerate(store.ids)}
    results = []
    for family, epochs in (("pca", 1), ("conv-ae", args.ae_epochs)):
        t0 = time.perf_counter()
        path = train(family, store, work / family, model_options={"latent_dim": 16},
                     settings=TrainSettings(epochs=epochs, batch_size=64, patience=5, progress=False,
                                            threads=args.threads))
        train_s = time.perf_counter() - t0
        codes = embed_store(path, store, work / f"codes-{family}", progress=False)
        for metric in ("cosine", "l2"):
            index = build_index(codes, metric=metric, progress=False)
            table = index.search(store, k=10, exclude_self=True)
            q = np.array([position[i] for i in table.column("query_id").to_pylist()])
            nb = np.array([position[i] for i in table.column("neighbour_id").to_pylist()])
            same_type = bulge[q] == bulge[nb]
            entry = {"model": family, "metric": metric, "train_s": train_s,
                     "same_type": float(same_type.mean()),
                     "same_type_snr_gt_30": float(same_type[resolved[q]].mean()),
                     "same_mag_bin": float((mag_bin[q] == mag_bin[nb]).mean()),
                     "median_abs_dmag": float(np.median(np.abs(magnitude[q] - magnitude[nb])))}
            results.append(entry)
            print(f"{family} {metric}: same type {entry['same_type']:.3f} (chance {chance['same_type']:.3f}), "
                  f"S/N > 30: {entry['same_type_snr_gt_30']:.3f} (chance {chance['same_type_snr_gt_30']:.3f}), "
                  f"same mag bin {entry['same_mag_bin']:.3f} (chance {chance['same_mag_bin']:.3f})", flush=True)
    return {"n_galaxies": len(store), "size": 32, "latent_dim": 16, "ae_epochs": args.ae_epochs,
            "bulge_dominated_fraction": float(bulge.mean()), "snr_gt_30_fraction": float(resolved.mean()),
            "chance": chance, "results": results}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-codes", type=int, default=1_000_000)
    ap.add_argument("--n-queries", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=2, help="timing rounds; each setting keeps its best")
    ap.add_argument("--n-galaxies", type=int, default=4000)
    ap.add_argument("--ae-epochs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training")
    ap.add_argument("--quick", action="store_true", help="100,000 codes, 1,000 galaxies, 5 AE epochs")
    ap.add_argument("--only", choices=["speed", "galaxies"], help="run one part")
    args = ap.parse_args()
    if args.quick:
        args.n_codes, args.n_queries, args.n_galaxies, args.ae_epochs = 100_000, 1000, 1000, 5
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="deepfield-search-"))
    payload = {"args": vars(args), "load_average_at_start": list(load)}
    try:
        if args.only in (None, "speed"):
            payload["speed"] = part_speed(args)
        if args.only in (None, "galaxies"):
            payload["galaxies"] = part_galaxies(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    payload["load_average_at_end"] = list(os.getloadavg())
    payload["total_seconds"] = time.perf_counter() - t_start
    previous = RESULTS / "search.json"
    if args.only and previous.is_file():  # keep the part this run did not redo
        kept = json.loads(previous.read_text())
        for part in ("speed", "galaxies"):
            if part not in payload and part in kept:
                payload[part] = kept[part]
    lines = []
    if "speed" in payload:
        s = payload["speed"]
        lines.append(f"**Speed and recall**: {s['n_codes']:,} Gaussian-mixture codes of dimension 32, "
                     f"{s['n_queries']:,} held-out queries, {s['faiss_threads']} FAISS threads, queries/s best of "
                     f"{s['rounds']} interleaved rounds (1-min load average {s['load_average_1min'][0]:.1f} at "
                     f"start, {s['load_average_1min'][1]:.1f} at end).\n")
        lines.append(markdown_table(["index", "parameters", "build (s)", "size (MB)", "queries/s", "x exact",
                                     "recall@10"],
                                    [[r["kind"], ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-",
                                      round(r["build_s"], 1), round(r["size_mb"]), round(r["qps"]), round(r["speedup"], 1),
                                      round(r["recall_at_10"], 4)] for r in s["indexes"]]))
        lines.append("\nSearch effort around the tuned value:\n")
        lines.append(markdown_table(["index", "effort", "queries/s", "x exact", "recall@10"],
                                    [[r["kind"], f"{'ef_search' if 'ef_search' in r else 'nprobe'}="
                                      f"{r.get('ef_search', r.get('nprobe'))}", round(r["qps"]), round(r["speedup"], 1),
                                      round(r["recall_at_10"], 4)] for r in s["sweeps"]]))
    if "galaxies" in payload:
        g = payload["galaxies"]
        lines.append(f"\n**What neighbours share**: {g['n_galaxies']:,} simulated 32x32 r-band galaxies "
                     f"({g['bulge_dominated_fraction']:.0%} bulge-dominated, {g['snr_gt_30_fraction']:.0%} with "
                     "S/N > 30), 16-D codes, exact index, the 10 nearest neighbours of every galaxy (itself "
                     "excluded): the fraction of neighbours of the same type and 1-mag magnitude bin.\n")
        c = g["chance"]
        rows = [["random neighbours", "-", round(c["same_type"], 3), round(c["same_type_snr_gt_30"], 3),
                 round(c["same_mag_bin"], 3), "-"]]
        rows += [[r["model"], r["metric"], round(r["same_type"], 3), round(r["same_type_snr_gt_30"], 3),
                  round(r["same_mag_bin"], 3), round(r["median_abs_dmag"], 3)] for r in g["results"]]
        lines.append(markdown_table(["codes", "metric", "same type", "same type (S/N > 30 queries)",
                                     "same mag bin", "median abs dmag"], rows))
    write_results("search", payload, "\n".join(lines))


if __name__ == "__main__":
    main()
