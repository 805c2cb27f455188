"""Anomaly detection: AUROC, AUPR and precision@100 per anomaly type and per score.

A clean simulated survey (GalSim bulge + disk galaxies, g, r, i, 32x32) trains PCA, a
convolutional autoencoder, a VAE (PSF + ivar likelihood) and a latent flow prior on it. A
second, independent survey gets ~2% injected anomalies of every type
(deepfield.data.anomalies: four artefacts, four astrophysical oddities and missing_signal, a
region of the galaxy whose light is gone) and is scored by every available score, raw and
calibrated against magnitude (each score's robust z-score among galaxies of similar
magnitude: tasks.anomaly.calibrate_scores). 'local chi2' is the two-sided windowed residual
test (tasks.anomaly, method 'local'): it flags too much residual power, too little (a region
without noise) and data below the model (light gone).

Ensembles: the rank average of one score per model, fixed in advance as before (PCA and
conv-AE reconstruction L2, VAE -ELBO, VAE latent density, plus PixelCNN -log p, likelihood
ratio and GAN scores when included), of the raw and of the calibrated scores; and ensembles
whose weights are fitted on a third survey with its own injections (--n-val galaxies,
--val-fraction anomalies, another injection seed): greedy forward selection of calibrated
scores on that survey's AUPR (tasks.anomaly.fit_ensemble, robust z-score average), once over
every calibrated score and once over the deep models' only (all but PCA). The test survey's
labels never choose anything.

Each anomaly type is scored against the normal objects only (other anomalies left out);
'artefacts' and 'oddities' pool their four types. precision@100 counts anomalies among the
100 highest scores of positives + normals; with ~12 objects per type its best possible value
is ~0.12 per type (0.5 for a pooled group of ~50). Targets: AUROC >= 0.95 on artefacts and
>= 0.85 on oddities, for the best single score and for the ensemble.

    python benchmarks/anomaly.py --pixelcnn --gan   # the numbers of docs/benchmarks.md, all scores
    python benchmarks/anomaly.py                    # PCA, conv-AE, VAE and flow only (~12 CPU-min)
    python benchmarks/anomaly.py --quick            # a smaller, faster run

--pixelcnn trains a PixelCNN and a Ren et al. background PixelCNN (perturb_rate 0.2; 16
channels, 4 layers) and --gan a WGAN-GP with its encoder, each for --extra-epochs (3): on CPU
they cost more than the other models together.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from _common import cached_store, markdown_table, write_results

GROUPS = ("artefacts", "oddities", "all")
DEEP = ("conv-AE", "VAE", "PixelCNN", "likelihood ratio", "GAN")  # the scores of deep models
FITTED = "ensemble fitted on validation (calibrated scores)"
FITTED_DEEP = "deep ensemble fitted on validation (deep models' calibrated scores)"


def available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=3000, help="clean training survey")
    ap.add_argument("--n-test", type=int, default=5000, help="survey that gets the anomalies")
    ap.add_argument("--n-val", type=int, default=2500, help="validation survey, with its own injections, on which "
                                                            "the fitted ensembles' weights are chosen")
    ap.add_argument("--val-fraction", type=float, default=0.04, help="anomalies in the validation survey")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--bands", default="g,r,i")
    ap.add_argument("--fraction", type=float, default=0.02)
    ap.add_argument("--latent-dim", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--channels", default="16,32,64", help="conv-AE and VAE channels per resolution")
    ap.add_argument("--flow-epochs", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pixelcnn", action="store_true", help="train PixelCNNs (main + background) for the pixelcnn "
                                                            "and ratio scores, if deepfield.tasks.compare exists")
    ap.add_argument("--gan", action="store_true", help="train a WGAN-GP for the gan score, if it exists")
    ap.add_argument("--extra-epochs", type=int, default=3, help="epochs of the PixelCNNs and the GAN (slow on CPU)")
    ap.add_argument("--quick", action="store_true", help="1,500 + 2,500 galaxies, 5 epochs")
    args = ap.parse_args()
    if args.quick:
        args.n_train, args.n_test, args.n_val, args.epochs, args.flow_epochs = 1500, 2500, 1500, 5, 40
    torch.set_num_threads(args.threads)
    from deepfield.data.anomalies import ANOMALY_TYPES, ARTEFACTS, DEFICITS, ODDITIES, inject_anomalies
    from deepfield.data.galaxies import simulate_galaxies
    from deepfield.models import load_model
    from deepfield.tasks.anomaly import calibrate_table, detection_metrics, ensemble_scores, fit_ensemble, score_store
    from deepfield.train import TrainSettings, train
    from deepfield.train.prior import train_prior

    bands = tuple(args.bands.split(","))
    tag = f"{args.size}-{''.join(bands)}"
    t_start, cpu_start = time.perf_counter(), time.process_time()
    clean = cached_store(f"anomaly-train-{args.n_train}-{tag}", lambda p: simulate_galaxies(
        p, args.n_train, size=args.size, bands=bands, seed=11, workers=2, progress=False))
    survey = cached_store(f"anomaly-test-{args.n_test}-{tag}", lambda p: simulate_galaxies(
        p, args.n_test, size=args.size, bands=bands, seed=12, workers=2, progress=False))
    val_survey = cached_store(f"anomaly-val-{args.n_val}-{tag}", lambda p: simulate_galaxies(
        p, args.n_val, size=args.size, bands=bands, seed=13, workers=2, progress=False))
    types = ANOMALY_TYPES + DEFICITS
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="deepfield-anomaly-"))
    timings = {"simulate_s": t0 - t_start}
    try:
        test = inject_anomalies(survey, work / "injected", fraction=args.fraction, types=types, seed=0, progress=False)
        val = inject_anomalies(val_survey, work / "val-injected", fraction=args.val_fraction, types=types, seed=1,
                               progress=False)
        timings["inject_s"] = time.perf_counter() - t0
        counts = {t: int((test.column("anomaly_type") == t).sum()) for t in types}
        val_counts = {t: int((val.column("anomaly_type") == t).sum()) for t in types}
        print(f"{len(test)} objects, anomalies: {counts}; validation {len(val)}: {val_counts}", flush=True)

        settings = TrainSettings(epochs=args.epochs, batch_size=64, lr=1e-3, patience=4, threads=args.threads,
                                 progress=False)
        models = {}
        channels = {"channels": tuple(int(c) for c in args.channels.split(","))}
        for name, family, options in (("pca", "pca", {"method": "randomized"}), ("conv-ae", "conv-ae", channels),
                                      ("vae", "vae", channels)):
            t0 = time.perf_counter()
            models[name] = train(family, clean, work / name, settings=settings,
                                 model_options={"latent_dim": args.latent_dim, **options})
            timings[f"train_{name}_s"] = time.perf_counter() - t0
            print(f"trained {name} in {timings[f'train_{name}_s']:.0f} s", flush=True)
        t0 = time.perf_counter()
        train_prior(models["vae"], clean, kind="nsf", epochs=args.flow_epochs, progress=False)
        timings["train_flow_s"] = time.perf_counter() - t0
        notes = []
        extra_settings = TrainSettings(epochs=args.extra_epochs, batch_size=64, lr=1e-3, patience=0,
                                       threads=args.threads, progress=False)
        if args.pixelcnn:
            if available("deepfield.models.pixelcnn") and available("deepfield.tasks.compare"):
                for name, rate in (("pixelcnn", 0.0), ("pixelcnn-background", 0.2)):
                    t0 = time.perf_counter()
                    models[name] = train("pixelcnn", clean, work / name, settings=extra_settings,
                                         model_options={"perturb_rate": rate, "channels": 16, "layers": 4})
                    timings[f"train_{name}_s"] = time.perf_counter() - t0
            else:
                notes.append("--pixelcnn: deepfield.tasks.compare is not installed; pixelcnn/ratio scores skipped")
        if args.gan:
            if available("deepfield.train.gan") and available("deepfield.tasks.gan_score"):
                from deepfield.train.gan import train_gan

                t0 = time.perf_counter()
                models["gan"] = train_gan("wgan-gp", clean, work / "gan", settings=extra_settings,
                                          model_options={"latent_dim": 32, **channels, "encoder_epochs": 2})
                timings["train_gan_s"] = time.perf_counter() - t0
            else:
                notes.append("--gan: deepfield.tasks.gan_score is not installed; gan score skipped")
        for note in notes:
            print(note)

        loaded = {name: load_model(path) for name, path in models.items()}
        scores, val_scores = {}, {}
        plan = [("PCA reconstruction L2", "pca", "reconstruction", {"norm": "l2"}),
                ("PCA reconstruction L1", "pca", "reconstruction", {"norm": "l1"}),
                ("PCA local chi2", "pca", "local", {}),
                ("conv-AE reconstruction L2", "conv-ae", "reconstruction", {"norm": "l2"}),
                ("conv-AE reconstruction L1", "conv-ae", "reconstruction", {"norm": "l1"}),
                ("conv-AE local chi2", "conv-ae", "local", {}),
                ("VAE reconstruction L2", "vae", "reconstruction", {"norm": "l2"}),
                ("VAE local chi2", "vae", "local", {}),
                ("VAE -ELBO", "vae", "elbo", {}),
                ("VAE latent flow -log p(mean code)", "vae", "density", {"code": "mean"}),
                ("VAE latent flow KL(q, p)", "vae", "density", {"code": "posterior"})]
        if "pixelcnn" in loaded:
            plan += [("PixelCNN -log p(x)", "pixelcnn", "pixelcnn", {}),
                     ("likelihood ratio", "pixelcnn", "ratio", {"background": loaded["pixelcnn-background"]})]
        if "gan" in loaded:
            plan.append(("GAN score", "gan", "gan", {}))
        for label, name, method, options in plan:
            t0 = time.perf_counter()
            scores[label] = score_store(test, method, loaded[name], progress=False, **options)
            timings[f"score {label} s"] = time.perf_counter() - t0
            val_scores[label] = score_store(val, method, loaded[name], progress=False, **options)
        for label, _, _, _ in plan:
            scores[f"{label}, calibrated"] = calibrate_table(scores[label], test, "magnitude")
            val_scores[f"{label}, calibrated"] = calibrate_table(val_scores[label], val, "magnitude")
        members = ["PCA reconstruction L2", "conv-AE reconstruction L2", "VAE -ELBO",
                   "VAE latent flow -log p(mean code)"]
        members += [m for m in ("PixelCNN -log p(x)", "likelihood ratio", "GAN score") if m in scores]
        singles = list(scores)
        scores["ensemble (rank average)"] = ensemble_scores({m: scores[m] for m in members})
        scores["ensemble of calibrated scores"] = ensemble_scores({m: scores[f"{m}, calibrated"] for m in members})
        # weights chosen on the validation survey's own injections, then applied unchanged to the test survey
        calibrated = [label for label in singles if label.endswith(", calibrated")]
        deep = [label for label in calibrated if label.startswith(DEEP)]
        fitted = {}
        for label, candidates in ((FITTED, calibrated), (FITTED_DEEP, deep)):
            weights = fit_ensemble({c: val_scores[c] for c in candidates}, metric="aupr", combine="zscore")
            fitted[label] = {c: round(w, 3) for c, w in weights.items() if w > 0}
            kept = {c: scores[c] for c in candidates}
            if len(fitted[label]) == 1:  # one member chosen: the ensemble is that score
                scores[label] = kept[next(iter(fitted[label]))]
            else:
                scores[label] = ensemble_scores(kept, weights=weights, combine="zscore")
        metrics = {label: detection_metrics(table, k=100) for label, table in scores.items()}
        val_metrics = {label: detection_metrics(val_scores[label], k=100)["all"] for label in calibrated}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    timings["total_s"] = time.perf_counter() - t_start
    timings["cpu_s"] = time.process_time() - cpu_start  # this process's CPU time (all its threads)
    timings["load_average_1min_at_end"] = os.getloadavg()[0]

    singles = [label for label in metrics if "ensemble" not in label]
    best = {g: max(singles, key=lambda s: metrics[s][g]["auroc"]) for g in GROUPS}
    ens, ens_cal = "ensemble (rank average)", "ensemble of calibrated scores"
    targets = {
        "artefacts_auroc_best_single": metrics[best["artefacts"]]["artefacts"]["auroc"],
        "artefacts_auroc_ensemble": metrics[ens]["artefacts"]["auroc"],
        "artefacts_auroc_ensemble_calibrated": metrics[ens_cal]["artefacts"]["auroc"],
        "oddities_auroc_best_single": metrics[best["oddities"]]["oddities"]["auroc"],
        "oddities_auroc_ensemble": metrics[ens]["oddities"]["auroc"],
        "oddities_auroc_ensemble_calibrated": metrics[ens_cal]["oddities"]["auroc"],
        "artefacts_target": 0.95, "oddities_target": 0.85,
    }
    types = [t for t in types if counts.get(t)]
    columns = types + list(GROUPS)
    header = ["score"] + [f"{t} (n={counts[t]})" for t in types] + ["artefacts", "oddities", "all"]
    auroc_rows = [[label] + [round(metrics[label][t]["auroc"], 3) for t in columns] for label in metrics]
    aupr_rows = [[label] + [round(metrics[label][t]["aupr"], 3) for t in columns] for label in metrics]
    p_rows = [[label] + [round(metrics[label][t]["precision_at_k"], 3) for t in columns] for label in metrics]
    ceiling = ["best possible"] + [round(metrics[ens][t]["precision_ceiling"], 3) for t in columns]

    # issue 18, target 4: a deep score at or above PCA's calibrated L2 in AUROC and AUPR on every type
    baseline = "PCA reconstruction L2, calibrated"
    deep_scores = [label for label in metrics if label.startswith(DEEP) or label == FITTED_DEEP]
    per_type, met, met_ensemble = [], {}, {}
    for t in types:
        b = metrics[baseline][t]
        both = [d for d in deep_scores if metrics[d][t]["auroc"] >= b["auroc"] and metrics[d][t]["aupr"] >= b["aupr"]]
        pick = max(both or deep_scores, key=lambda d: (metrics[d][t]["aupr"], metrics[d][t]["auroc"]))
        met[t] = bool(both)
        e = metrics[FITTED_DEEP][t]
        met_ensemble[t] = bool(e["auroc"] >= b["auroc"] and e["aupr"] >= b["aupr"])
        per_type.append([t, f"{b['auroc']:.3f} / {b['aupr']:.3f}", pick,
                         f"{metrics[pick][t]['auroc']:.3f} / {metrics[pick][t]['aupr']:.3f}", "yes" if both else "no",
                         f"{e['auroc']:.3f} / {e['aupr']:.3f}",
                         "yes" if met_ensemble[t] else "no"])
    # the fitted ensembles against their members and every candidate, on the test survey
    ensemble_rows = []
    for label, candidates in ((FITTED, [c for c in singles if c.endswith(", calibrated")]),
                              (FITTED_DEEP, [c for c in singles if c.endswith(", calibrated")
                                             and c.startswith(DEEP)])):
        top = max(candidates, key=lambda c: metrics[c]["all"]["aupr"])
        chosen = max(fitted[label], key=lambda c: metrics[c]["all"]["aupr"])
        ensemble_rows.append([label, ", ".join(f"{c.removesuffix(', calibrated')} {w:g}"
                                               for c, w in fitted[label].items()),
                              f"{metrics[label]['all']['auroc']:.3f} / {metrics[label]['all']['aupr']:.3f}",
                              f"{metrics[chosen]['all']['auroc']:.3f} / {metrics[chosen]['all']['aupr']:.3f}",
                              f"{top.removesuffix(', calibrated')} {metrics[top]['all']['auroc']:.3f} / "
                              f"{metrics[top]['all']['aupr']:.3f}"])
    fitted_all = metrics[FITTED]["all"]
    best_member = max((metrics[c]["all"] for c in fitted[FITTED]), key=lambda m: m["aupr"])
    verdict = (f"Issue 18 target 4: a deep score at or above PCA's calibrated L2 in both AUROC and AUPR on "
               f"{sum(met.values())} of {len(types)} types (short on: "
               f"{', '.join(t for t in types if not met[t]) or 'none'}; the deep ensemble fitted on validation "
               f"alone on {sum(met_ensemble.values())}); "
               f"the ensemble fitted on validation scores {fitted_all['auroc']:.3f} / {fitted_all['aupr']:.3f} "
               f"(AUROC / AUPR, all anomalies) against {best_member['auroc']:.3f} / {best_member['aupr']:.3f} for its "
               f"best member. Earlier targets (AUROC): artefacts >= 0.95: best single ({best['artefacts']}) "
               f"{targets['artefacts_auroc_best_single']:.3f}, rank-average ensemble "
               f"{targets['artefacts_auroc_ensemble']:.3f} (of calibrated scores "
               f"{targets['artefacts_auroc_ensemble_calibrated']:.3f}), fitted ensemble "
               f"{metrics[FITTED]['artefacts']['auroc']:.3f}; oddities >= 0.85: best single ({best['oddities']}) "
               f"{targets['oddities_auroc_best_single']:.3f}, rank-average ensemble "
               f"{targets['oddities_auroc_ensemble']:.3f} (of calibrated scores "
               f"{targets['oddities_auroc_ensemble_calibrated']:.3f}), fitted ensemble "
               f"{metrics[FITTED]['oddities']['auroc']:.3f}.")
    extras = [name for name, on in (("PixelCNN", "pixelcnn" in models), ("GAN", "gan" in models)) if on]
    table = "\n\n".join([
        f"Anomaly detection on {len(test)} simulated galaxies ({args.size}x{args.size}, {','.join(bands)}), "
        f"{sum(counts.values())} injected anomalies ({args.fraction:.0%}, {len(types)} types); models trained on "
        f"{args.n_train} clean galaxies; fitted ensembles' weights chosen on {len(val)} other galaxies with "
        f"{sum(val_counts.values())} anomalies of their own. Scores of PCA, conv-AE, VAE and its latent flow"
        f"{', ' + ', '.join(extras) if extras else ' (no PixelCNN or GAN: run with --pixelcnn --gan for them)'}. "
        f"Rank-average ensemble = {', '.join(members)}. Run time {timings['total_s'] / 60:.1f} min "
        f"on {args.threads} thread{'s' if args.threads > 1 else ''} ({timings['cpu_s'] / 60:.1f} CPU-min; "
        f"1-min load average at the end "
        f"{timings['load_average_1min_at_end']:.1f} on {os.cpu_count()} cores).",
        "Deep scores against PCA's calibrated L2, per type (AUROC / AUPR). The deep score shown is the best of "
        f"{len(deep_scores)} chosen per type on the test labels (one that meets both when one does, else the best "
        "AUPR), so it flatters the deep models; the deep ensemble, fitted on the validation survey, is one score "
        "for every type\n\n"
        + markdown_table(["type", "PCA L2, calibrated", "best deep score", "its AUROC / AUPR", "both >= PCA",
                          "deep ensemble", "both >= PCA"], per_type),
        "Ensembles fitted on the validation survey, on the test survey (all anomalies, AUROC / AUPR)\n\n"
        + markdown_table(["ensemble", "weights", "ensemble", "its best member", "best candidate"], ensemble_rows),
        "AUROC\n\n" + markdown_table(header, auroc_rows),
        "AUPR (average precision)\n\n" + markdown_table(header, aupr_rows),
        "precision@100\n\n" + markdown_table(header, p_rows + [ceiling]),
        *notes, verdict])
    write_results("anomaly", {"args": vars(args), "counts": counts, "validation_counts": val_counts,
                              "ensemble_members": members, "fitted_ensembles": fitted,
                              "validation_metrics_all": val_metrics, "metrics": metrics, "best_single": best,
                              "targets": targets, "deep_meets_pca_per_type": met,
                              "deep_ensemble_meets_pca_per_type": met_ensemble, "timings": timings,
                              "notes": notes}, table)


if __name__ == "__main__":
    main()
