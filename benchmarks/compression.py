"""Held-out reconstruction error of PCA vs dense AE vs conv AE at several latent sizes.

Data sets: iris (d = 2 only, the seed's 3-cluster plot), digits (8x8), simulated spectra,
and simulated 64x64 galaxies (>= 5,000). Errors are mean squared errors on the held-out
split (the same id-hash split for every model), in units of the per-band pixel variance of
the training set ('normalised MSE': 1 = predicting zero flux everywhere). For simulated
stores the error is also measured against the noiseless observation (the truth, through each
galaxy's PSF): how much of the signal a code keeps, free of the noise no compressor should keep.
Galaxies also get a VAE (observation-model likelihood: PSF and per-pixel noise), scored by its
posterior-mean reconstruction through the PSF. Targets (issue 18): conv AE and VAE at or below
PCA against the noiseless observation at every d, conv AE <= 0.7x PCA at d = 16.

    python benchmarks/compression.py                  # the numbers of docs/benchmarks.md (~40 min on 2 cores)
    python benchmarks/compression.py --quick          # a few minutes, smaller sets
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, cached_store, markdown_table, write_results


FAMILIES = ("pca", "ae", "conv-ae", "vae")


def held_out_errors(model, store, rows) -> tuple[float, float | None]:
    """Normalised MSE of reconstructions of the held-out data against the data and (simulated
    stores) against the noiseless observation."""
    from deepfield.tasks.evaluate import reconstruction_errors

    data = float(reconstruction_errors(model, store, rows)[0].mean())
    if not store.has("truth"):
        return data, None
    return data, float(reconstruction_errors(model, store, rows, against="noiseless")[0].mean())


def datasets(args):
    from deepfield.data.galaxies import simulate_galaxies
    from deepfield.data.importers import import_data
    from deepfield.data.spectra import simulate_spectra

    n_gal = args.n_galaxies
    return {
        "iris": (cached_store("iris", lambda p: import_data("sklearn:iris", p)), [2]),
        "digits": (cached_store("digits", lambda p: import_data("sklearn:digits", p)), args.latents),
        "spectra": (cached_store(f"spectra-{args.n_spectra}",
                                 lambda p: simulate_spectra(p, args.n_spectra, seed=1, progress=False)), args.latents),
        "galaxies": (cached_store(f"galaxies-{n_gal}-64",
                                  lambda p: simulate_galaxies(p, n_gal, size=64, bands=("r",), seed=2, workers=2,
                                                              progress=True)), args.latents),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-galaxies", type=int, default=5000)
    ap.add_argument("--n-spectra", type=int, default=5000)
    ap.add_argument("--latents", type=int, nargs="+", default=[2, 8, 16, 32],
                    help="latent sizes (iris always uses 2)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--galaxy-epochs", type=int, default=12)
    ap.add_argument("--min-steps", type=int, default=3000,
                    help="small sets train for at least this many optimiser steps (iris has 2 per epoch)")
    ap.add_argument("--quick", action="store_true", help="1,000 galaxies, latents 2 and 16, few epochs")
    ap.add_argument("--only", nargs="+", help="data sets to run (iris digits spectra galaxies)")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES),
                    help="model families to train (where the data suit them)")
    args = ap.parse_args()
    if args.quick:
        args.n_galaxies, args.n_spectra, args.latents, args.epochs, args.galaxy_epochs = 1000, 2000, [2, 16], 10, 5
    from deepfield.models import load_model
    from deepfield.train import TrainSettings, train

    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(tempfile.mkdtemp(prefix="deepfield-compression-"))
    results = []
    try:
        for name, (store, latents) in datasets(args).items():
            if args.only and name not in args.only:
                continue
            families = ["pca", "ae"] + (["conv-ae"] if store.kind == "image" and store.sample_shape[1] >= 8 else [])
            families += ["vae"] if store.has("psf") and store.has("ivar") else []
            families = [f for f in families if f in args.families]
            test = store.split()["test"]
            for d in latents:
                entry = {"dataset": name, "n": len(store), "n_test": int(test.size), "latent_dim": d}
                for family in families:
                    options = {"latent_dim": d}
                    epochs = args.galaxy_epochs if name == "galaxies" else max(
                        args.epochs, int(np.ceil(args.min_steps / np.ceil(store.split()["train"].size / 64))))
                    if family == "conv-ae" and store.sample_shape[1] <= 8:
                        options["channels"] = (32, 64)
                    t0 = time.perf_counter()
                    path = train(family, store, work / f"{name}-{family}-{d}", model_options=options,
                                 settings=TrainSettings(epochs=epochs, batch_size=64, lr=1e-3, patience=5,
                                                        progress=False))
                    seconds = time.perf_counter() - t0
                    metrics = json.loads((path / "metrics.json").read_text())
                    model = load_model(path)
                    entry[f"{family}_mse"], truth_mse = held_out_errors(model, store, test)
                    entry[f"{family}_seconds"] = seconds
                    entry[f"{family}_epochs_run"] = metrics.get("epochs_run")
                    if truth_mse is not None:
                        entry[f"{family}_mse_truth"] = truth_mse
                    print(f"{name:9s} d={d:<3d} {family:8s} test MSE {entry[f'{family}_mse']:.4g}"
                          + (f", vs noiseless {truth_mse:.4g}" if truth_mse is not None else "") + f" ({seconds:.0f} s)",
                          flush=True)
                if store.has("truth"):
                    # the noise floor: error of the noisy input itself against the noiseless observation
                    from deepfield.tasks.evaluate import noiseless_observation

                    x = torch.from_numpy(store.read("x", test))
                    clean = noiseless_observation(store, test)
                    entry["noise_mse"] = float(((model.normalise(x) - model.normalise(clean)) ** 2).mean())
                if "conv-ae_mse" in entry:
                    entry["conv_ae_over_pca"] = entry["conv-ae_mse"] / entry["pca_mse"]
                if "conv-ae_mse_truth" in entry:
                    entry["conv_ae_over_pca_truth"] = entry["conv-ae_mse_truth"] / entry["pca_mse_truth"]
                results.append(entry)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    previous = RESULTS / "compression.json"
    if (args.only or set(args.families) != set(FAMILIES)) and previous.is_file():
        # a partial run: keep what it did not redo (other data sets, other families' columns)
        merged = {(r["dataset"], r["latent_dim"]): r for r in json.loads(previous.read_text())["results"]}
        for r in results:
            key = (r["dataset"], r["latent_dim"])
            merged[key] = {**merged.get(key, {}), **r}
        results = list(merged.values())
    order = {"iris": 0, "digits": 1, "spectra": 2, "galaxies": 3}
    results.sort(key=lambda r: (order.get(r["dataset"], 9), r["latent_dim"]))
    def ratio(r, key):
        return round(r[key], 3) if key in r else "-"

    rows = [[r["dataset"], r["latent_dim"], r["pca_mse"], r["ae_mse"], r.get("conv-ae_mse", "-"), ratio(r, "conv_ae_over_pca")]
            for r in results]
    table = markdown_table(["data", "d", "PCA", "dense AE", "conv AE", "conv AE / PCA"], rows)
    simulated = [r for r in results if "pca_mse_truth" in r]
    truth_rows = [[r["dataset"], r["latent_dim"], r["pca_mse_truth"], r.get("ae_mse_truth", "-"),
                   r.get("conv-ae_mse_truth", "-"), r.get("vae_mse_truth", "-"), ratio(r, "conv_ae_over_pca_truth"),
                   round(r["vae_mse_truth"] / r["pca_mse_truth"], 3) if "vae_mse_truth" in r else "-", r["noise_mse"]]
                  for r in simulated]
    table += ("\n\nAgainst the noiseless observation (simulated stores; the VAE's posterior mean through each "
              "galaxy's PSF):\n\n" + markdown_table(
                  ["data", "d", "PCA", "dense AE", "conv AE", "VAE", "conv AE / PCA", "VAE / PCA", "noisy input"],
                  truth_rows))
    galaxies = {r["latent_dim"]: r for r in results if r["dataset"] == "galaxies"}
    checks = {}
    for d, r in sorted(galaxies.items()):
        for family in ("conv-ae", "vae"):
            if f"{family}_mse_truth" in r and "pca_mse_truth" in r:
                checks[f"{family} <= PCA vs noiseless, d={d}"] = r[f"{family}_mse_truth"] <= r["pca_mse_truth"]
    if "conv_ae_over_pca_truth" in galaxies.get(16, {}):
        checks["conv-ae <= 0.7 PCA vs noiseless, d=16"] = galaxies[16]["conv_ae_over_pca_truth"] <= 0.7
    if checks:
        table += "\n\n" + markdown_table(["target", "met"], [[k, "yes" if v else "**no**"] for k, v in checks.items()])
    write_results("compression", {"args": vars(args), "results": results, "targets": checks}, table)


if __name__ == "__main__":
    main()
