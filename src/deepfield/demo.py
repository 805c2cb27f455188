"""The main job, end to end: simulate a small survey, train PCA, autoencoders and a flow-VAE,
draw conditional samples, report.

``deepfield demo`` runs it with the embedded defaults; ``--quick`` is the CI-sized version.
Everything is written under one folder (default ./deepfield-demo)::

    survey/            the simulated store (GalSim bulge+disk galaxies, PSF, noise, truth)
    models/pca/        PCA baseline
    models/ae/         dense autoencoder
    models/conv-ae/    convolutional autoencoder (non-negative flux decoder)
    models/vae/        VAE whose likelihood applies each galaxy's PSF and noise, with a latent
                       flow prior (prior/) conditional on half_light_radius, magnitude, redshift
    samples/           conditional samples (noiseless and observed) as a store
    report/index.html      the report: loss curves, reconstructions, latent space, PCA vs AE
    report-vae/index.html  the flow-VAE: samples beside held-out galaxies, conditional sweeps,
                           morphology histograms (flow vs N(0, I) prior)
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
    vae_epochs: int
    flow_epochs: int
    morphology: int  # held-out galaxies in the VAE report's morphology comparison


PLANS = {
    # a few minutes on a 2-core CPU
    "full": DemoPlan(n_galaxies=3000, size=64, latent_dim=16, epochs=12, channels=(16, 32, 64, 128),
                     hidden=(512, 128), workers=2, vae_epochs=12, flow_epochs=60,
                     morphology=600),
    # CI: well under a minute
    "quick": DemoPlan(n_galaxies=320, size=32, latent_dim=8, epochs=2, channels=(16, 32, 32),
                      hidden=(128,), workers=2, vae_epochs=2, flow_epochs=5, morphology=40),
}


def run_demo(out="deepfield-demo", quick: bool = False, seed: int = 0, progress: bool = True, log=print) -> Path:
    """Run the demo into folder `out` (replacing an earlier demo there); returns the report's path."""
    from deepfield.data.galaxies import simulate_galaxies
    from deepfield.report import make_report
    from deepfield.tasks.sample import sample_store
    from deepfield.train import TrainSettings, train
    from deepfield.train.prior import train_prior

    plan = PLANS["quick" if quick else "full"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log(f"1/6 simulating {plan.n_galaxies} galaxies ({plan.size}x{plan.size} pixels, r band) with GalSim")
    store = simulate_galaxies(out / "survey", plan.n_galaxies, size=plan.size, bands=("r",), seed=seed,
                              workers=plan.workers, overwrite=True, progress=progress)
    settings = TrainSettings(epochs=plan.epochs, batch_size=64, lr=1e-3, seed=seed, patience=4, progress=progress)
    models = {}
    steps = [("pca", {"latent_dim": plan.latent_dim}),
             ("ae", {"latent_dim": plan.latent_dim, "hidden": plan.hidden}),
             ("conv-ae", {"latent_dim": plan.latent_dim, "channels": plan.channels})]
    for family, options in steps:
        log(f"{'2/6' if family == 'pca' else '3/6'} training {family} (latent dimension {plan.latent_dim})")
        models[family] = train(family, store, out / "models" / family, model_options=options,
                               settings=settings, overwrite=True)
    condition = ("half_light_radius", "magnitude", "redshift")
    log(f"4/6 training the VAE (PSF + per-pixel noise likelihood) and its latent flow prior on {', '.join(condition)}")
    vae = train("vae", store, out / "models" / "vae", overwrite=True,
                model_options={"likelihood": "pixel", "latent_dim": plan.latent_dim, "channels": plan.channels},
                settings=TrainSettings(epochs=plan.vae_epochs, batch_size=64, lr=1e-3, seed=seed, patience=0,
                                       progress=progress))
    train_prior(vae, store, kind="nsf", condition=condition, epochs=plan.flow_epochs, seed=seed, progress=progress)
    ask = {"half_light_radius": 0.6, "magnitude": 22.0, "redshift": 0.5}
    log("5/6 drawing 64 conditional samples (" + ", ".join(f"{k}={v:g}" for k, v in ask.items()) +
        "), noiseless and observed through a 0.7\" Moffat PSF with noise")
    import deepfield

    sample_store(deepfield.load(vae), out / "samples", 64, condition=ask, seed=seed, psf_fwhm=0.7,
                 noise_sigma=float(store.column("noise_sigma").mean()), overwrite=True, progress=progress)
    log("6/6 writing the reports")
    report = make_report(models["conv-ae"], store, out / "report",
                         compare=[models["pca"], models["ae"]], color_by="magnitude", samples=None)
    vae_report = make_report(vae, store, out / "report-vae", color_by="magnitude", samples=plan.morphology)
    log(f"flow-VAE report: {vae_report}")
    log(f"done in {time.perf_counter() - t0:.0f} s")
    return report
