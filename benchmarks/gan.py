"""GANs on this CPU: training speed, sample quality against a VAE, and CycleGAN survey translation.

1. Throughput: DCGAN and WGAN-GP iterations/s at 32x32 and 64x64 (default channels, batch 64).
   One iteration is one discriminator step plus its share of a generator step (every step for
   DCGAN, every 5th for WGAN-GP), the loop deepfield.train.gan runs, without Lightning.
2. Sample quality: simulated 32x32 r-band galaxies (seeded); a DCGAN and a VAE (pixel
   likelihood: PSF + noise; sampled from N(0, I) and from a 10-component GMM fitted on its
   codes) trained on the same split. As many samples as held-out galaxies
   (GAN samples are as observed; VAE samples are observed through each held-out galaxy's own
   PSF and noise) are compared with the held-out galaxies: the Frechet distance on the codes
   of a conv autoencoder trained on the training split (deepfield's domain encoder), and the
   standardised W1 (W1 / robust sigma of the held-out values) of HSM size, |g|, magnitude,
   Gini and M20. Training galaxies compared the same way give the floor (finite samples).
3. CycleGAN: the same galaxies seen by a ground survey (the simulator: Moffat PSF of
   0.6-1.0" FWHM, LSST-like noise) and a space-like one (their PSF-free truth through a 0.3"
   Gaussian PSF with 5x lower noise; sharper makes HSM fail on the cuspy bulges of most
   undersampled galaxies), trained unpaired on the training split. On held-out
   pairs: MSE, total-flux and HSM-size errors against the noiseless space image, for the
   CycleGAN, the paired translator (a deconvolver trained on the ground survey's training
   galaxies and their truth, its estimate drawn through the space PSF), Wiener (regularisation
   weight tuned on validation pairs) and Richardson-Lucy (30 iterations) deconvolution of the
   ground PSF followed by the space PSF, and the untranslated ground image.

    python benchmarks/gan.py            # the numbers of docs/benchmarks.md (~15 min on 2 cores)
    python benchmarks/gan.py --quick    # a few minutes: smaller sets, fewer epochs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import cached_store, markdown_table, write_results

MORPH = ("sigma_arcsec", "e", "magnitude", "gini", "m20")
SMALL = (16, 32, 64)  # channels of every model trained here (32x32 stamps on a 2-core CPU)


def throughput(size: int, family: str, seconds: float, batch: int = 64) -> dict:
    from deepfield.models.gan import DCGAN, WGANGP, DCGANConfig, WGANGPConfig

    cls, cfg = (DCGAN, DCGANConfig) if family == "dcgan" else (WGANGP, WGANGPConfig)
    torch.manual_seed(0)
    model = cls(cfg(input_shape=(1, size, size)))
    batch_ = {"x": torch.randn(batch, 1, size, size)}
    c = model.config
    opt_d = torch.optim.Adam(model.discriminator_parameters(), c.lr_d, betas=c.betas)
    opt_g = torch.optim.Adam(model.generator_parameters(), c.lr_g, betas=c.betas)

    def step(i):
        d = model.discriminator_loss(batch_)
        opt_d.zero_grad(set_to_none=True)
        d["loss"].backward()
        opt_d.step()
        if (i + 1) % c.n_critic == 0:
            g = model.generator_loss(batch_)
            opt_g.zero_grad(set_to_none=True)
            g["loss"].backward()
            opt_g.step()

    step(c.n_critic - 1)  # warm-up (one full D + G iteration)
    t0, n = time.perf_counter(), 0
    while n < c.n_critic or time.perf_counter() - t0 < seconds:
        step(n)
        n += 1
    dt = time.perf_counter() - t0
    params = sum(p.numel() for p in model.generator_parameters() + model.discriminator_parameters())
    return {"family": family, "size": size, "iterations": n, "iterations_per_s": n / dt,
            "real_images_per_s": n * batch / dt, "parameters_g_d": params}


def ground_store(n: int, seed: int):
    from deepfield.data.galaxies import simulate_galaxies

    return cached_store(f"gan-ground-{n}-32-s{seed}",
                        lambda p: simulate_galaxies(p, n, size=32, bands=("r",), seed=seed, workers=2, progress=True))


def space_store(ground, fwhm: float = 0.3, noise_factor: float = 0.2, seed: int = 1):
    """The ground store's galaxies (their PSF-free truth) through a sharp Gaussian PSF with lower noise."""
    from deepfield.data.store import create_store
    from deepfield.physics import ObservationModel, gaussian_psf

    def make(path):
        psf = gaussian_psf(fwhm, size=25, pixel_scale=ground.pixel_scale)[None]
        sigma = ground.column("noise_sigma") * noise_factor
        catalog = {c: ground.column(c) for c in ground.columns}
        catalog.update(noise_sigma=sigma, psf_fwhm=np.full(len(ground), fwhm))
        gen = torch.Generator().manual_seed(seed)
        shape = ground.sample_shape
        with create_store(path, shape, bands=ground.bands, pixel_scale=ground.pixel_scale,
                          arrays={"psf": (1, 25, 25), "ivar": shape, "truth": shape}, units=ground.units,
                          provenance={"made_by": "benchmarks/gan.py space_store", "psf_fwhm_arcsec": fwhm,
                                      "noise_factor": noise_factor, "seed": seed,
                                      "source_fingerprint": ground.fingerprint}) as w:
            for start in range(0, len(ground), 512):
                rows = np.arange(start, min(start + 512, len(ground)))
                truth = torch.from_numpy(ground.read("truth", rows))
                s = torch.from_numpy(sigma[rows].astype(np.float32)).view(-1, 1)
                x = ObservationModel("pixel").observe(truth, psf, noise_sigma=s, generator=gen)
                w.append(x=x.numpy(), truth=truth.numpy(), psf=psf.expand(len(rows), 1, 25, 25).numpy(),
                         ivar=np.broadcast_to((1 / s**2).numpy()[:, :, None, None], x.shape).astype(np.float32),
                         catalog={k: v[rows] for k, v in catalog.items()})
    return cached_store(f"gan-space-{len(ground)}-{fwhm}-{noise_factor}-from-{ground.fingerprint[:8]}", make)


def morphology_of(images: np.ndarray, sigma: np.ndarray, pixel_scale: float) -> dict:
    from deepfield.metrics import morphology

    stats = morphology(images[:, 0], noise_sigma=sigma, pixel_scale=pixel_scale)
    flux = stats["flux"]
    with np.errstate(invalid="ignore", divide="ignore"):
        stats["magnitude"] = np.where(flux > 0, 30.0 - 2.5 * np.log10(flux), np.nan)
    return {k: stats[k] for k in MORPH}


def quality(store, work: Path, args) -> dict:
    from deepfield.metrics import compare_samples, encoder_frechet_distance
    from deepfield.models import load_model
    from deepfield.physics import ObservationModel
    from deepfield.train import TrainSettings, train
    from deepfield.train.gan import train_gan
    from deepfield.train.prior import train_prior

    settings = dict(batch_size=64, progress=False, threads=args.threads)
    timings = {}
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)  # deepfield.train.fit builds its network before seeding: fix the initialisation here
    ae = train("conv-ae", store, work / "encoder", model_options={"latent_dim": 16, "channels": SMALL},
               settings=TrainSettings(epochs=args.ae_epochs, patience=3, **settings))
    timings["encoder_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    vae = train("vae", store, work / "vae", model_options={"latent_dim": 16, "channels": SMALL},
                settings=TrainSettings(epochs=args.vae_epochs, lr=2e-3, patience=0, **settings))
    train_prior(vae, store, kind="gmm", components=10, progress=False)  # the aggregate posterior, for the "auto" prior
    timings["vae_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    gan = train_gan("dcgan", store, work / "dcgan", model_options={"latent_dim": 32, "channels": SMALL,
                                                                   "encoder_epochs": 0},
                    settings=TrainSettings(epochs=args.gan_epochs, **settings))
    timings["dcgan_s"] = time.perf_counter() - t0
    print(f"trained encoder, VAE, DCGAN in {timings}", flush=True)

    test = store.split()["test"]
    train_rows = store.split()["train"][: test.size]
    ivar = store.read("ivar", test)
    sigma = np.sqrt(1 / ivar[:, 0].mean((1, 2)))
    sigma_train = np.sqrt(1 / store.read("ivar", train_rows)[:, 0].mean((1, 2)))
    real = store.read("x", test)
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        gan_samples = load_model(gan).sample(test.size, generator=gen).numpy()
        vae_model, psf = load_model(vae), torch.from_numpy(store.read("psf", test))
        observed = {}
        for prior, name in (("gaussian", "VAE, N(0, I) prior (observed)"), ("auto", "VAE, GMM prior (observed)")):
            sky = vae_model.sample(test.size, generator=gen, prior=prior)
            observed[name] = ObservationModel("pixel").observe(sky, psf, ivar=torch.from_numpy(ivar),
                                                               generator=gen).numpy()
    sets = {"real (training split)": (store.read("x", train_rows), sigma_train), "DCGAN": (gan_samples, sigma),
            **{name: (images, sigma) for name, images in observed.items()}}
    encoder = load_model(ae)
    ref = morphology_of(real, sigma, store.pixel_scale)
    rows = {}
    for name, (images, s) in sets.items():
        stats = morphology_of(images, s, store.pixel_scale)
        table = {r["statistic"]: r for r in compare_samples(ref, stats, names=MORPH)}
        rows[name] = {"frechet": encoder_frechet_distance(encoder, real, images),
                      "mean_flux_ratio": float(images.sum((1, 2, 3)).mean() / real.sum((1, 2, 3)).mean()),
                      **{f"w1_{k}": table[k]["standardised_w1"] for k in MORPH},
                      "failed": {k: table[k]["failed_model"] for k in MORPH}}
        print(name, {k: round(v, 3) for k, v in rows[name].items() if isinstance(v, float)}, flush=True)
    metrics = json.loads((gan / "metrics.json").read_text())
    return {"n_test": int(test.size), "n_train": int(store.split()["train"].size), "timings_s": timings,
            "dcgan_iterations_per_s": metrics.get("iterations_per_s"), "rows": rows}


def cyclegan(ground, space, work: Path, args) -> dict:
    from deepfield.models import load_model
    from deepfield.tasks.translate import deconvolution_baseline, evaluate_translation
    from deepfield.train import TrainSettings, train
    from deepfield.train.gan import train_gan

    val = ground.split()["val"][:100]
    clean = torch.from_numpy(space.read("truth", val))
    from deepfield.physics import convolve_psf

    clean = convolve_psf(clean, torch.from_numpy(space.read("psf", val))).numpy()
    balances = {}
    for b in (0.002, 0.01, 0.05, 0.2, 1.0):
        pred = deconvolution_baseline(ground.read("x", val), ground.read("psf", val), space.read("psf", val),
                                      balance=b)
        balances[b] = float(((pred - clean) ** 2).mean())
    balance = min(balances, key=balances.get)
    print("Wiener balance on validation pairs:", balances, "->", balance, flush=True)
    t0 = time.perf_counter()
    path = train_gan("cyclegan", ground, work / "cyclegan", store_b=space,
                     model_options={"channels": 16, "res_blocks": 3},
                     settings=TrainSettings(epochs=args.cycle_epochs, batch_size=32, progress=False,
                                            threads=args.threads))
    seconds = time.perf_counter() - t0
    test = ground.split()["test"]
    result = evaluate_translation(load_model(path), ground, space, indices=test, balance=balance, progress=False)
    result.update(train_seconds=seconds, wiener_balance_scan=balances, epochs=args.cycle_epochs)
    # the paired translator: a deconvolver trained on the ground survey's (observation, truth) pairs of the
    # same training split, its estimate drawn through the space PSF
    t0 = time.perf_counter()
    path = train("deconvolver", ground, work / "deconvolver",
                 settings=TrainSettings(epochs=args.deconvolver_epochs, batch_size=64, progress=False,
                                        threads=args.threads))
    paired = evaluate_translation(load_model(path), ground, space, indices=test, baselines=(), progress=False)
    result["methods"] = {"deconvolver (paired)": paired["methods"]["deconvolver"], **result["methods"]}
    result.update(deconvolver_train_seconds=time.perf_counter() - t0, deconvolver_epochs=args.deconvolver_epochs)
    for name, m in result["methods"].items():
        print(name, {k: round(v, 4) for k, v in m.items()}, flush=True)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="simulated galaxies (32x32)")
    ap.add_argument("--gan-epochs", type=int, default=20)
    ap.add_argument("--vae-epochs", type=int, default=12)
    ap.add_argument("--ae-epochs", type=int, default=6)
    ap.add_argument("--cycle-epochs", type=int, default=4)
    ap.add_argument("--deconvolver-epochs", type=int, default=12, help="epochs of the paired translator")
    ap.add_argument("--throughput-seconds", type=float, default=8.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="+", choices=("throughput", "quality", "cyclegan"))
    args = ap.parse_args()
    if args.quick:
        args.n, args.gan_epochs, args.vae_epochs, args.ae_epochs, args.cycle_epochs = 800, 4, 3, 3, 1
        args.deconvolver_epochs = 2
        args.throughput_seconds = 2.0
    torch.set_num_threads(args.threads)
    parts = args.only or ("throughput", "quality", "cyclegan")
    load = os.getloadavg()[0]
    payload = {"args": vars(args), "load_average_before": load}
    work = Path(tempfile.mkdtemp(prefix="deepfield-gan-bench-"))
    t_start = time.perf_counter()
    try:
        if "throughput" in parts:
            payload["throughput"] = [throughput(size, family, args.throughput_seconds)
                                     for size in (32, 64) for family in ("dcgan", "wgan-gp")]
            for r in payload["throughput"]:
                print(r, flush=True)
        if "quality" in parts or "cyclegan" in parts:
            ground = ground_store(args.n, args.seed)
        if "quality" in parts:
            payload["quality"] = quality(ground, work, args)
        if "cyclegan" in parts:
            payload["cyclegan"] = cyclegan(ground, space_store(ground), work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    payload["total_seconds"] = time.perf_counter() - t_start
    previous = Path(__file__).resolve().parent / "results" / "gan.json"
    if args.only and previous.is_file():  # keep the parts this run did not redo
        old = json.loads(previous.read_text())
        payload = {**{k: old[k] for k in ("throughput", "quality", "cyclegan") if k in old}, **payload}
    write_results("gan", payload, tables(payload))


def tables(p: dict) -> str:
    out = []
    if "throughput" in p:
        out.append(f"Training speed (one torch thread, 1-min load average {p['load_average_before']:.1f} before; "
                   "batch 64, default channels (32, 64, 128, 256)):\n")
        out.append(markdown_table(["model", "stamp", "iterations/s", "real images/s", "G + D parameters"],
                                  [[r["family"], f"{r['size']}x{r['size']}", round(r["iterations_per_s"], 3),
                                    round(r["real_images_per_s"], 1), r["parameters_g_d"]] for r in p["throughput"]]))
    if "quality" in p:
        q = p["quality"]
        out.append(f"\nSamples vs {q['n_test']} held-out galaxies (32x32, trained on {q['n_train']}; Frechet distance "
                   "on a conv-AE's 16-D codes; W1 in robust sigmas of the held-out values; lower is better):\n")
        out.append(markdown_table(["set", "Frechet", "flux ratio", "W1 size", "W1 |g|", "W1 mag", "W1 Gini", "W1 M20"],
                                  [[name, round(r["frechet"], 3), round(r["mean_flux_ratio"], 3),
                                    *[round(r[f"w1_{k}"], 3) for k in MORPH]] for name, r in q["rows"].items()]))
    if "cyclegan" in p:
        c = p["cyclegan"]
        out.append(f"\nGround -> space translation of {c['n']} held-out galaxies vs the noiseless space image "
                   f"(CycleGAN {c['epochs']} epochs, unpaired; deconvolver {c.get('deconvolver_epochs')} epochs on the "
                   "ground survey's (observation, truth) training pairs, drawn through the space PSF; Wiener balance "
                   f"{c['baseline_settings']['wiener_balance']} chosen on validation pairs):\n")
        out.append(markdown_table(["method", "MSE", "MSE / mean square", "flux bias", "flux scatter", "size bias",
                                   "size scatter", "HSM failed"],
                                  [[name, round(m["mse"], 4), round(m["normalised_mse"], 4), round(m["flux_bias"], 4),
                                    round(m["flux_scatter"], 4), round(m["size_bias"], 4), round(m["size_scatter"], 4),
                                    round(m["hsm_failed"], 3)] for name, m in c["methods"].items()]))
    return "\n".join(out)


if __name__ == "__main__":
    main()
