"""Held-out reconstruction error of PCA vs dense AE vs conv AE at several latent sizes.

Data sets: iris (d = 2 only, the seed's 3-cluster plot), digits (8x8), simulated spectra,
and simulated 64x64 galaxies (>= 5,000). Errors are mean squared errors on the held-out
split (the same id-hash split for every model), in units of the per-band pixel variance of
the training set ('normalised MSE': 1 = predicting zero flux everywhere). For galaxies the
error is also measured against the noiseless truth, which shows how much of the residual is
noise that no compressor should keep.

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


def clean_observation(store, idx) -> torch.Tensor:
    """The noiseless image as observed: the simulator's PSF-free truth convolved with each PSF."""
    from deepfield.physics import ObservationModel

    truth = torch.from_numpy(store.read("truth", idx))
    if not store.has("psf"):  # spectra: the truth is already the noiseless observation
        return truth
    return ObservationModel("pixel").predict(truth, torch.from_numpy(store.read("psf", idx)))


@torch.no_grad()
def mse_against_truth(model, store, rows) -> float:
    """Normalised MSE of reconstructions of the noisy `x` against the noiseless observation."""
    total, count = 0.0, 0
    for start in range(0, rows.size, 256):
        idx = rows[start:start + 256]
        x = torch.from_numpy(store.read("x", idx))
        ref = clean_observation(store, idx)
        err = (model.normalise(model.reconstruct(x)) - model.normalise(ref)) ** 2
        total += float(err.sum())
        count += err.numel()
    return total / count


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
                    entry[f"{family}_mse"] = metrics["test_mse"]
                    entry[f"{family}_seconds"] = seconds
                    entry[f"{family}_epochs_run"] = metrics.get("epochs_run")
                    if store.has("truth"):
                        entry[f"{family}_mse_truth"] = mse_against_truth(load_model(path), store, test)
                    print(f"{name:9s} d={d:<3d} {family:8s} test MSE {metrics['test_mse']:.4g} ({seconds:.0f} s)",
                          flush=True)
                if store.has("truth"):
                    # the noise floor: error of the noisy input itself against the noiseless observation
                    model = load_model(path)
                    x = torch.from_numpy(store.read("x", test))
                    t = clean_observation(store, test)
                    entry["noise_mse"] = float(((model.normalise(x) - model.normalise(t)) ** 2).mean())
                if "conv-ae_mse" in entry:
                    entry["conv_ae_over_pca"] = entry["conv-ae_mse"] / entry["pca_mse"]
                results.append(entry)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    previous = RESULTS / "compression.json"
    if args.only and previous.is_file():  # keep the rows this run did not redo
        redone = {(r["dataset"], r["latent_dim"]) for r in results}
        kept = [r for r in json.loads(previous.read_text())["results"] if (r["dataset"], r["latent_dim"]) not in redone]
        results = kept + results
    order = {"iris": 0, "digits": 1, "spectra": 2, "galaxies": 3}
    results.sort(key=lambda r: (order.get(r["dataset"], 9), r["latent_dim"]))
    rows = [[r["dataset"], r["latent_dim"], r["pca_mse"], r["ae_mse"], r.get("conv-ae_mse", "-"),
             round(r["conv_ae_over_pca"], 3) if "conv_ae_over_pca" in r else "-",
             r.get("pca_mse_truth", "-"), r.get("conv-ae_mse_truth", "-"), r.get("noise_mse", "-")]
            for r in results]
    table = markdown_table(["data", "d", "PCA", "dense AE", "conv AE", "conv AE / PCA",
                            "PCA vs truth", "conv AE vs truth", "noise floor"], rows)
    gal16 = [r for r in results if r["dataset"] == "galaxies" and r["latent_dim"] == 16]
    target = {"conv_ae_over_pca_at_d16_galaxies": gal16[0].get("conv_ae_over_pca") if gal16 else None,
              "target": 0.7}
    write_results("compression", {"args": vars(args), "results": results, "target": target}, table)


if __name__ == "__main__":
    main()
