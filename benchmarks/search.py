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

Part 2, what codes carry (issue 18, target 2): PCA, a conv autoencoder and a VAE (posterior-mean
codes), all 16-D, trained on 4,000 simulated 32x32 r-band galaxies (GalSim, sample seed 5); the
raw pixels, and PCA's and the conv AE's codes as (direction, log length) (a fixed transform that
takes the flux out of the direction of these flux-linear codes), are more sets of "codes".
Everything is measured on 2,000 held-out galaxies of another sample seed (6) and on their noise
twin (the same galaxies, PSFs and noise levels under a fresh noise draw,
deepfield.data.galaxies.redraw_noise):
- linear probes: the 5-fold cross-validated R^2 of a ridge regression (deepfield.metrics.linear_probe)
  from the codes to log10 half-light radius, e1, e2, bulge fraction and magnitude, for all
  galaxies and for S/N > 30;
- what neighbours share: for every held-out galaxy (itself excluded) the fraction of its 10
  nearest neighbours with the same type (bulge-dominated: bulge_fraction > 0.5, else disk) and
  the same 1-mag magnitude bin, against the fraction expected for random neighbours;
- the same galaxy under a fresh noise draw: each twin's code queries the held-out codes; top-1
  and top-10 recall of its own galaxy, by magnitude bin;
each search exact, with cosine, l2, l2 after scaling every code coordinate to unit variance, and l2
in units of the codes' noise (the Mahalanobis distance whose covariance comes from the training
galaxies and their own noise twin: the best linear metric for finding a galaxy again).
Targets: the deep codes' R^2 above PCA's (and, to be fair, above PCA's direction and log length) on
each quantity; same-type purity for S/N > 30 queries >= PCA's + 0.10; twin recall above PCA's and
the raw pixels'.

    python benchmarks/search.py                         # the numbers of docs/benchmarks.md
    python benchmarks/search.py --only galaxies         # part 2 alone (part 1's results are kept)
    python benchmarks/search.py --quick                 # 100,000 codes; 1,000 + 600 galaxies, 5 epochs
    python benchmarks/search.py --only galaxies --ae-set channels=32,64 --vae-epochs 0   # another AE, no VAE

Stores are cached in benchmarks/.cache (DEEPFIELD_BENCH_CACHE); models are trained afresh each run.
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


#: what the linear probes predict: (label, catalog column, transform)
PROBES = (("log10 r_half", "half_light_radius", np.log10), ("e1", "e1", None), ("e2", "e2", None),
          ("bulge fraction", "bulge_fraction", None), ("magnitude", "magnitude", None))
#: magnitude bins of the twin-recall table (r, AB); 22.5-23.5 is issue 18's reference bin
MAG_EDGES = (18.0, 20.5, 21.5, 22.5, 23.5, 24.5, 25.3)
#: the magnitude bin (index into MAG_EDGES' bins: 22.5-23.5) in which the codes' noise share is measured
NOISE_BIN = 3
#: the searches compared: FAISS metric, and what is done to the codes first: nothing; each coordinate
#: scaled to unit variance over the searched codes ('standardise'); or the codes whitened by the
#: covariance of their noise, measured on the *training* galaxies and their noise twin ('whiten':
#: the Mahalanobis distance in units of the noise, the best a linear metric can do for finding a
#: galaxy again; codes of at most 64 dimensions)
METRICS = (("cosine", "cosine", None), ("l2", "l2", None), ("l2, standardised", "l2", "standardise"),
           ("l2, noise-whitened", "l2", "whiten"))
MAX_WHITENED_DIM = 64


def galaxy_stores(args):
    """The training store and its noise twin, the held-out store (another sample seed) and its noise
    twin (cached)."""
    from deepfield.data.galaxies import redraw_noise, simulate_galaxies

    def simulate(n, seed):
        return lambda p: simulate_galaxies(p, n, size=32, bands=("r",), seed=seed, workers=2, progress=True)

    training = cached_store(f"search-galaxies-{args.n_galaxies}-32", simulate(args.n_galaxies, 5))
    heldout = cached_store(f"search-heldout-{args.n_heldout}-32", simulate(args.n_heldout, 6))
    twin = cached_store(f"search-heldout-{args.n_heldout}-32-noise1",
                        lambda p: redraw_noise(heldout, p, noise_seed=1, progress=False))
    training_twin = cached_store(f"search-galaxies-{args.n_galaxies}-32-noise1",
                                 lambda p: redraw_noise(training, p, noise_seed=1, progress=False))
    return training, training_twin, heldout, twin


def code_sets(args, work: Path, training, training_twin, heldout, twin) -> dict:
    """{name: (held-out codes (N, d), twin codes (N, d), train seconds, noise whitening (d, d) or None)}
    for the raw pixels, PCA, PCA's codes as direction and log length, the conv AE and the VAE
    (posterior means), every model trained on `training` only; the whitening W (codes @ W) comes
    from the training galaxies' noise twins."""
    from deepfield.tasks.search import embed_store
    from deepfield.train import TrainSettings, train

    sets = {"raw pixels": (heldout.read("x").reshape(len(heldout), -1), twin.read("x").reshape(len(twin), -1), 0.0,
                           None)}
    families = [("pca", "pca", 1, {}), ("conv-ae", "conv-ae", args.ae_epochs, parse_set(args.ae_set))]
    if args.vae_epochs > 0:
        families.append(("vae (posterior mean)", "vae", args.vae_epochs, parse_set(args.vae_set)))
    for name, family, epochs, options in families:
        t0 = time.perf_counter()
        folder = train(family, training, work / family, model_options={"latent_dim": args.latent_dim, **options},
                       settings=TrainSettings(epochs=epochs, batch_size=64, patience=5, progress=False,
                                              threads=args.threads))
        seconds = time.perf_counter() - t0
        codes = [np.asarray(embed_store(folder, store, work / f"codes-{family}-{tag}", progress=False).read("x"),
                            dtype=np.float64)
                 for tag, store in (("heldout", heldout), ("twin", twin), ("training", training),
                                    ("training-twin", training_twin))]
        sets[name] = (codes[0], codes[1], seconds, noise_whitening(codes[2], codes[3]))
        print(f"{name}: trained in {seconds:.0f} s", flush=True)
        if family in ("pca", "conv-ae"):  # the flux-linear codes
            polar = [direction_and_log_length(c) for c in codes]
            sets[f"{name} (direction, log length)"] = (polar[0], polar[1], seconds,
                                                       noise_whitening(polar[2], polar[3]))
    return sets


def direction_and_log_length(codes: np.ndarray) -> np.ndarray:
    """(N, d + 1): each code's direction (unit vector) and the log of its length (`deepfield embed
    --form polar`). PCA's and the conv AE's codes are proportional to the flux, so their length
    carries it and a linear probe of a flux-free quantity (size, ellipticity) has to undo that
    scaling, which it cannot; this fixed transform separates the two for both, so neither gets
    an advantage the other lacks."""
    from deepfield.tasks.search import code_form

    return code_form(torch.from_numpy(np.asarray(codes, dtype=np.float64)), "polar").numpy()


def parse_set(items: list[str]) -> dict:
    """key=value model options, values read as YAML scalars ('a,b' as a list)."""
    import yaml

    def value(text: str):
        return [yaml.safe_load(v) for v in text.split(",")] if "," in text else yaml.safe_load(text)

    return {k.strip(): value(v) for k, _, v in (item.partition("=") for item in items)}


def noise_whitening(codes: np.ndarray, twin_codes: np.ndarray) -> np.ndarray | None:
    """W (d, d) such that one noise draw's displacement of ``codes @ W`` has unit covariance
    (Cholesky factor of the inverse noise covariance); None for codes longer than MAX_WHITENED_DIM."""
    if codes.shape[1] > MAX_WHITENED_DIM:
        return None
    noise = np.cov((twin_codes - codes).T) / 2  # the difference of two draws holds the noise twice
    noise += 1e-9 * np.trace(noise) / len(noise) * np.eye(len(noise))
    return np.linalg.cholesky(np.linalg.inv(noise))


def neighbours(database: np.ndarray, queries: np.ndarray | None, metric: str, transform,
               k: int) -> np.ndarray:
    """Positions (Q, k) of the exact k nearest database codes of each query (None: every database
    code, itself excluded); `transform` is None, 'standardise' or a whitening matrix (d, d)."""
    from deepfield.tasks.search import build_index

    if isinstance(transform, str):  # scales fitted on the searched codes, applied to the queries alike
        mean, scale = database.mean(axis=0), database.std(axis=0) + 1e-12
        database = (database - mean) / scale
        queries = None if queries is None else (queries - mean) / scale
    elif transform is not None:
        database = database @ transform
        queries = None if queries is None else queries @ transform
    index = build_index(database.astype(np.float32), metric=metric, kind="flat", progress=False)
    if queries is None:
        table = index.search(list(range(len(database))), k=k, exclude_self=True)
        return np.asarray(table.column("neighbour_id")).reshape(len(database), k)
    table = index.search_codes(queries.astype(np.float32), k=k)
    return np.asarray(table.column("neighbour_id")).reshape(len(queries), k)


def code_geometry(codes: np.ndarray, twin_codes: np.ndarray, magnitude: np.ndarray, rows: np.ndarray) -> dict:
    """Why l2, cosine and standardised l2 differ on these codes, and why a galaxy's twin lands far
    from it: how much of the variance the largest coordinate and the first direction hold, how
    closely that coordinate and the code length follow magnitude, and the noise share of the
    codes' variance among the galaxies `rows` (one magnitude bin, so that a few bright galaxies do
    not set the variance): half the variance of (twin code - code) over the variance of the
    codes, summed over coordinates (as l2 weighs them) and averaged over coordinates (as l2 on
    standardised codes weighs them)."""
    centred = codes - codes.mean(axis=0)
    variances = centred.var(axis=0)
    largest = int(np.argmax(variances))
    singular = np.linalg.svd(centred, compute_uv=False) ** 2
    noise = (twin_codes[rows] - codes[rows]).var(axis=0) / 2  # one draw's share: the difference holds two
    spread = codes[rows].var(axis=0)
    kept = spread > 0
    return {"largest_coordinate": largest,
            "largest_coordinate_variance_fraction": float(variances[largest] / variances.sum()),
            "spearman_largest_coordinate_vs_magnitude": float(_spearman(codes[:, largest], magnitude)),
            "first_direction_variance_fraction": float(singular[0] / singular.sum()),
            "spearman_norm_vs_magnitude": float(_spearman(np.linalg.norm(codes, axis=1), magnitude)),
            "noise_fraction_l2": float(noise.sum() / spread.sum()),
            "noise_fraction_standardised": float(np.mean(noise[kept] / spread[kept])),
            "directions_above_noise": _directions_above_noise(codes[rows], twin_codes[rows])}


def _directions_above_noise(codes: np.ndarray, twin_codes: np.ndarray) -> int | None:
    """How many code directions separate galaxies by more than the noise moves one: generalised
    eigenvalues of (covariance of the codes, covariance of one noise draw's displacement) above 2,
    where galaxies spread at least as much as noise adds. Independent of any linear rescaling of the
    codes, so it says what the best linear metric could do. None for codes too long to estimate."""
    from scipy.linalg import eigh

    if codes.shape[1] > len(codes) // 4:
        return None
    noise = np.cov((twin_codes - codes).T) / 2
    noise += 1e-9 * np.trace(noise) / len(noise) * np.eye(len(noise))
    return int(np.sum(eigh(np.cov(codes.T), noise, eigvals_only=True) > 2.0))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return spearmanr(a, b).statistic


def part_galaxies(args, work: Path) -> dict:
    from deepfield.metrics import linear_probe

    t_start = time.perf_counter()
    training, training_twin, heldout, twin = galaxy_stores(args)
    bulge = heldout.column("bulge_fraction") > 0.5
    magnitude = heldout.column("magnitude")
    mag_bin = np.floor(magnitude).astype(int)
    resolved = heldout.column("snr") > 30  # morphology is measurable: roughly the brightest quarter

    def chance_type(queries: np.ndarray) -> float:
        """P(a random galaxy has the type of a query drawn from `queries`)."""
        return float(bulge[queries].mean() * bulge.mean() + (~bulge[queries]).mean() * (~bulge).mean())

    chance = {"same_type": chance_type(np.ones(len(heldout), bool)), "same_type_snr_gt_30": chance_type(resolved),
              "same_mag_bin": float(sum(np.mean(mag_bin == b) ** 2 for b in np.unique(mag_bin)))}
    sets = code_sets(args, work, training, training_twin, heldout, twin)
    which_bin = np.digitize(magnitude, MAG_EDGES[1:-1])
    probes, purity, recall, geometry = [], [], [], {}
    for name, (codes, twin_codes, train_s, whitening) in sets.items():
        geometry[name] = {"dim": int(codes.shape[1]), "train_s": train_s,
                          **code_geometry(codes, twin_codes, magnitude, which_bin == NOISE_BIN)}
        for subset, rows in (("all", np.ones(len(heldout), bool)), ("S/N > 30", resolved)):
            entry = {"codes": name, "subset": subset, "n": int(rows.sum())}
            for label, column, transform in PROBES:
                y = heldout.column(column)[rows]
                entry[label] = linear_probe(codes[rows], transform(y) if transform else y, folds=5, seed=0).r2
            probes.append(entry)
        print(f"{name} probes R^2: " + ", ".join(f"{label} {probes[-2][label]:.3f}" for label, *_ in PROBES),
              flush=True)
        for label, metric, how in METRICS:
            if how == "whiten" and whitening is None:
                continue
            transform = whitening if how == "whiten" else how
            nb = neighbours(codes, None, metric, transform, 10)
            same_type = bulge[:, None] == bulge[nb]
            purity.append({"codes": name, "metric": label, "same_type": float(same_type.mean()),
                           "same_type_snr_gt_30": float(same_type[resolved].mean()),
                           "same_mag_bin": float((mag_bin[:, None] == mag_bin[nb]).mean()),
                           "median_abs_dmag": float(np.median(np.abs(magnitude[:, None] - magnitude[nb])))})
            # the same galaxy under a fresh noise draw: its twin's code queries the held-out codes
            found = neighbours(codes, twin_codes, metric, transform, 10) == np.arange(len(heldout))[:, None]
            entry = {"codes": name, "metric": label, "top1": float(found[:, 0].mean()),
                     "top10": float(found.any(axis=1).mean()), "bins": []}
            for b in range(len(MAG_EDGES) - 1):
                rows = which_bin == b
                entry["bins"].append({"mag": [MAG_EDGES[b], MAG_EDGES[b + 1]], "n": int(rows.sum()),
                                      "top1": float(found[rows, 0].mean()) if rows.any() else None,
                                      "top10": float(found[rows].any(axis=1).mean()) if rows.any() else None})
            recall.append(entry)
            print(f"{name} {label}: same type {purity[-1]['same_type']:.3f} (S/N > 30: "
                  f"{purity[-1]['same_type_snr_gt_30']:.3f}), twin recall top-1 {entry['top1']:.3f}, "
                  f"top-10 {entry['top10']:.3f}", flush=True)
    return {"n_training": len(training), "n_heldout": len(heldout), "size": 32, "latent_dim": args.latent_dim,
            "ae_epochs": args.ae_epochs, "vae_epochs": args.vae_epochs, "ae_set": args.ae_set,
            "vae_set": args.vae_set, "stores": {"training": training.fingerprint, "training_twin": training_twin.fingerprint,
                                                 "heldout": heldout.fingerprint,
                                                 "twin": twin.fingerprint},
            "bulge_dominated_fraction": float(bulge.mean()), "snr_gt_30_fraction": float(resolved.mean()),
            "chance": chance, "geometry": geometry, "probes": probes, "purity": purity, "recall": recall,
            "seconds": time.perf_counter() - t_start}


def galaxy_tables(g: dict) -> list[str]:
    """The markdown of part 2."""
    lines = [f"\n**What codes carry**: {g['n_training']:,} simulated 32x32 r-band galaxies (sample seed 5) train "
             f"PCA, the conv AE ({g['ae_epochs']} epochs) and the VAE ({g['vae_epochs']} epochs), all with "
             f"{g['latent_dim']}-D codes; every number is measured on {g['n_heldout']:,} held-out galaxies of "
             f"another sample seed ({g['bulge_dominated_fraction']:.0%} bulge-dominated, "
             f"{g['snr_gt_30_fraction']:.0%} with S/N > 30). Cross-validated (5-fold) R^2 of a ridge regression "
             "from the codes (standardised) to each catalog quantity:\n"]
    labels = [label for label, *_ in PROBES]
    lines.append(markdown_table(["codes", "galaxies", "n", *[f"R^2 {label}" for label in labels]],
                                [[r["codes"], r["subset"], r["n"], *[round(r[label], 3) for label in labels]]
                                 for r in g["probes"]]))
    lines.append("\nThe 10 nearest neighbours of every held-out galaxy (itself excluded, exact search): the fraction "
                 "of the same type (bulge-dominated: bulge_fraction > 0.5) and 1-mag magnitude bin. 'l2, "
                 "standardised' scales each code coordinate to unit variance first; 'l2, noise-whitened' "
                 "measures distances in units of the codes' noise, whose covariance comes from the training "
                 "galaxies and their noise twin (codes of at most 64 dimensions).\n")
    c = g["chance"]
    rows = [["random neighbours", "-", round(c["same_type"], 3), round(c["same_type_snr_gt_30"], 3),
             round(c["same_mag_bin"], 3), "-"]]
    rows += [[r["codes"], r["metric"], round(r["same_type"], 3), round(r["same_type_snr_gt_30"], 3),
              round(r["same_mag_bin"], 3), round(r["median_abs_dmag"], 3)] for r in g["purity"]]
    lines.append(markdown_table(["codes", "metric", "same type", "same type (S/N > 30 queries)", "same mag bin",
                                 "median abs dmag"], rows))
    bins = g["recall"][0]["bins"]
    lines.append(f"\nThe same galaxy under a fresh noise draw (`deepfield simulate galaxies TWIN --like HELDOUT "
                 f"--noise-seed 1`): each twin's code queries the {g['n_heldout']:,} held-out codes; the fraction "
                 "whose own galaxy is the nearest (top-1) and among the 10 nearest (top-10), by r magnitude "
                 "(galaxies per bin: " + ", ".join(f"{b['mag'][0]:g}-{b['mag'][1]:g}: {b['n']}" for b in bins)
                 + ").\n")
    header = ["codes", "metric", "top-1", "top-10", *[f"top-1 / top-10, r {b['mag'][0]:g}-{b['mag'][1]:g}"
                                                       for b in bins]]

    def pair(b):
        return "-" if b["top1"] is None else f"{b['top1']:.2f} / {b['top10']:.2f}"

    lines.append(markdown_table(header, [[r["codes"], r["metric"], round(r["top1"], 3), round(r["top10"], 3),
                                          *[pair(b) for b in r["bins"]]] for r in g["recall"]]))
    lines.append("\nThe codes' geometry: the share of the codes' variance in their largest coordinate and its "
                 "Spearman correlation with magnitude, the share in their first principal direction, the "
                 "correlation of the code length with magnitude (the brightness that cosine drops when codes "
                 "scale with flux), and, among the galaxies of 22.5 < r < 23.5, the noise share of the code "
                 "variance: half the variance of (twin code - code) over the codes' variance, summed over "
                 "coordinates as l2 weighs them, and averaged over coordinates as standardised l2 weighs them; "
                 "and the number of code directions in which those galaxies spread more than twice as much as one "
                 "noise draw moves them (generalised eigenvalues above 2: what the best linear metric could use).\n")
    lines.append(markdown_table(["codes", "dim", "train (s)", "largest coordinate", "rho(it, mag)",
                                 "first direction", "rho(|z|, mag)", "noise share, r 22.5-23.5 (l2)",
                                 "noise share, r 22.5-23.5 (standardised)", "directions above noise, r 22.5-23.5"],
                                [[name, e["dim"], round(e["train_s"]),
                                  f"{e['largest_coordinate_variance_fraction']:.3f} (z{e['largest_coordinate']})",
                                  round(e["spearman_largest_coordinate_vs_magnitude"], 3),
                                  round(e["first_direction_variance_fraction"], 3),
                                  round(e["spearman_norm_vs_magnitude"], 3), round(e["noise_fraction_l2"], 3),
                                  round(e["noise_fraction_standardised"], 3),
                                  "-" if e["directions_above_noise"] is None else e["directions_above_noise"]]
                                 for name, e in g["geometry"].items()]))
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-codes", type=int, default=1_000_000)
    ap.add_argument("--n-queries", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=2, help="timing rounds; each setting keeps its best")
    ap.add_argument("--n-galaxies", type=int, default=4000, help="training galaxies (part 2)")
    ap.add_argument("--n-heldout", type=int, default=2000, help="held-out galaxies and their noise twins (part 2)")
    ap.add_argument("--latent-dim", type=int, default=16)
    ap.add_argument("--ae-epochs", type=int, default=8)
    ap.add_argument("--vae-epochs", type=int, default=8, help="0: leave the VAE out")
    ap.add_argument("--ae-set", action="append", default=[], help="conv AE option key=value (repeatable)")
    ap.add_argument("--vae-set", action="append", default=[], help="VAE option key=value (repeatable)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training")
    ap.add_argument("--quick", action="store_true", help="100,000 codes; 1,000 + 600 galaxies, 5 epochs per model")
    ap.add_argument("--only", choices=["speed", "galaxies"], help="run one part")
    args = ap.parse_args()
    if args.quick:
        args.n_codes, args.n_queries, args.n_galaxies, args.n_heldout = 100_000, 1000, 1000, 600
        args.ae_epochs = min(args.ae_epochs, 5)
        args.vae_epochs = min(args.vae_epochs, 5)
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
    if "galaxies" in payload and "probes" in payload["galaxies"]:
        lines += galaxy_tables(payload["galaxies"])
    write_results("search", payload, "\n".join(lines))


if __name__ == "__main__":
    main()
