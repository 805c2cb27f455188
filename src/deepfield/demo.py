"""The main job, end to end: simulate a small survey, train PCA and autoencoders, report.

``deepfield demo`` runs it with the embedded defaults; ``--quick`` is the CI-sized version.
Everything is written under one folder (default ./deepfield-demo)::

    survey/            the simulated store (GalSim bulge+disk galaxies, PSF, noise, truth)
    models/pca/        PCA baseline
    models/ae/         dense autoencoder
    models/conv-ae/    convolutional autoencoder (non-negative flux decoder)
    report/index.html  the report: loss curves, reconstructions, latent space, PCA vs AE
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DemoPlan", "PLANS", "run_demo"]


@dataclass(frozen=True)
class DemoPlan:
    n_galaxies: int
    size: int
    latent_dim: int
    epochs: int
    channels: tuple[int, ...]
    hidden: tuple[int, ...]
    workers: int


PLANS = {
    # a few minutes on a 2-core CPU
    "full": DemoPlan(n_galaxies=3000, size=64, latent_dim=16, epochs=12, channels=(16, 32, 64, 128),
                     hidden=(512, 128), workers=2),
    # CI: well under a minute
    "quick": DemoPlan(n_galaxies=320, size=32, latent_dim=8, epochs=2, channels=(16, 32, 32),
                      hidden=(128,), workers=2),
}


def run_demo(out="deepfield-demo", quick: bool = False, seed: int = 0, progress: bool = True, log=print) -> Path:
    """Run the demo into folder `out` (replacing an earlier demo there); returns the report's path."""
    from deepfield.data.galaxies import simulate_galaxies
    from deepfield.report import make_report
    from deepfield.train import TrainSettings, train

    plan = PLANS["quick" if quick else "full"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log(f"1/4 simulating {plan.n_galaxies} galaxies ({plan.size}x{plan.size} pixels, r band) with GalSim")
    store = simulate_galaxies(out / "survey", plan.n_galaxies, size=plan.size, bands=("r",), seed=seed,
                              workers=plan.workers, overwrite=True, progress=progress)
    settings = TrainSettings(epochs=plan.epochs, batch_size=64, lr=1e-3, seed=seed, patience=4, progress=progress)
    models = {}
    steps = [("pca", {"latent_dim": plan.latent_dim}),
             ("ae", {"latent_dim": plan.latent_dim, "hidden": plan.hidden}),
             ("conv-ae", {"latent_dim": plan.latent_dim, "channels": plan.channels})]
    for family, options in steps:
        log(f"{'2/4' if family == 'pca' else '3/4'} training {family} (latent dimension {plan.latent_dim})")
        models[family] = train(family, store, out / "models" / family, model_options=options,
                               settings=settings, overwrite=True)
    log("4/4 writing the report")
    report = make_report(models["conv-ae"], store, out / "report",
                         compare=[models["pca"], models["ae"]], color_by="magnitude")
    log(f"done in {time.perf_counter() - t0:.0f} s")
    return report
