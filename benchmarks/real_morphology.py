"""A VAE trained on simulated (bulge + disk) galaxies against the same VAE fine-tuned on real
morphologies, both reconstructing real galaxies seen by the simulated survey.

Stores (all r band, `--size` pixels at 0.2"/pixel, Moffat PSFs of 0.6-1.0" FWHM, LSST-like noise):

- ``sims``: `--n-sims` parametric galaxies (deepfield's simulator, seed 1);
- ``real-train``: `--n-real` draws of the five real AEGIS HST galaxies shipped in
  tests/data/galsim-real (``simulate galaxies --morphology cosmos``: deconvolved by their HST
  PSF, randomly rotated, drawn through the survey's PSF, pixel and noise; seed 2);
- ``real-test``: `--n-real` // 2 fresh draws of the same five galaxies (other rotations,
  PSFs and noise; seed 3);
- ``sims-test``: the same number of fresh parametric galaxies (seed 4).

Models, one config (the pixel likelihood with each object's PSF and noise):

- ``sims``: trained on ``sims`` for `--epochs` epochs;
- ``fine-tuned``: ``sims`` trained `--tune-epochs` more on ``real-train`` (``--set init=...``);
- ``real only``: trained from scratch on ``real-train`` for `--tune-epochs` epochs (what the
  fine-tuning's head start is worth).

Each is scored by its reconstruction chi^2 per pixel against the objects' own noise,
mean over pixels of (x - PSF * decoded)^2 * ivar, on both test stores (1 is a fit to the noise).
Five source galaxies measure nothing about the fidelity of real-galaxy models: this shows the
pipeline (import, real-morphology survey, fine-tuning) working end to end, and how far a model
of parametric profiles is from real ones.

Usage::

    python benchmarks/real_morphology.py [--n-sims 2000 --n-real 600 --epochs 15 --tune-epochs 8]

Writes benchmarks/results/real_morphology.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_results  # noqa: E402

AEGIS = Path(__file__).resolve().parents[1] / "tests" / "data" / "galsim-real" / "AEGIS_F814w_catalog.fits"
MODEL = {"latent_dim": 16, "channels": (16, 32, 64), "beta": 0.3}


@torch.no_grad()
def chi2_per_pixel(model, store) -> np.ndarray:
    """(N,) mean over pixels of (x - PSF * decoded)^2 * ivar for every object of `store`."""
    from deepfield.data.batches import iterate_batches

    model.eval()
    out = []
    for batch in iterate_batches(store, np.arange(len(store)), model, 128):
        residual = (batch["x"] - model.reconstruct_batch(batch)) ** 2 * batch["ivar"]
        out.append(residual.flatten(1).mean(1).double().numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-sims", type=int, default=2000)
    parser.add_argument("--n-real", type=int, default=600)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--tune-epochs", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)

    import deepfield
    from deepfield.data.galaxies import simulate_galaxies
    from deepfield.train import TrainSettings, train

    work = Path(tempfile.mkdtemp(prefix="deepfield-real-morphology-"))
    common = dict(size=args.size, workers=args.workers, progress=False)
    real = dict(morphology="cosmos", cosmos=AEGIS, **common)
    t0 = time.perf_counter()
    stores = {
        "sims": simulate_galaxies(work / "sims", args.n_sims, seed=1, **common),
        "real-train": simulate_galaxies(work / "real-train", args.n_real, seed=2, **real),
        "real-test": simulate_galaxies(work / "real-test", args.n_real // 2, seed=3, **real),
        "sims-test": simulate_galaxies(work / "sims-test", args.n_real // 2, seed=4, **common),
    }
    print(f"stores in {time.perf_counter() - t0:.0f} s")

    def settings(epochs: int, **extra) -> TrainSettings:
        return TrainSettings(epochs=epochs, batch_size=64, lr=1e-3, patience=0, seed=0, progress=False, **extra)

    seconds = {}
    t0 = time.perf_counter()
    sims = train("vae", stores["sims"], work / "vae-sims", model_options=MODEL, settings=settings(args.epochs))
    seconds["sims"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tuned = train("vae", stores["real-train"], work / "vae-tuned", settings=settings(args.tune_epochs, init=str(sims)))
    seconds["fine-tuned"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scratch = train("vae", stores["real-train"], work / "vae-real", model_options=MODEL,
                    settings=settings(args.tune_epochs))
    seconds["real only"] = time.perf_counter() - t0

    results, rows = {}, []
    for name, path in (("sims", sims), ("fine-tuned", tuned), ("real only", scratch)):
        model = deepfield.load(path)
        entry = {"train_seconds": seconds[name]}
        for test in ("real-test", "sims-test"):
            chi2 = chi2_per_pixel(model, stores[test])
            entry[test] = {"chi2_per_pixel_median": float(np.median(chi2)), "chi2_per_pixel_mean": float(chi2.mean()),
                           "chi2_per_pixel_p90": float(np.percentile(chi2, 90))}
        results[name] = entry
        rows.append([name, entry["real-test"]["chi2_per_pixel_median"], entry["real-test"]["chi2_per_pixel_p90"],
                     entry["sims-test"]["chi2_per_pixel_median"], entry["sims-test"]["chi2_per_pixel_p90"],
                     f"{seconds[name]:.0f}"])
    table = markdown_table(["VAE", "real morphologies: chi2/pix median", "p90", "parametric sims: chi2/pix median",
                            "p90", "train s"], rows)
    write_results("real_morphology", {
        "settings": {**vars(args), "model": {k: list(v) if isinstance(v, tuple) else v for k, v in MODEL.items()},
                     "sources": "5 real AEGIS F814W galaxies (tests/data/galsim-real)"},
        "results": results,
    }, table)


if __name__ == "__main__":
    main()
