"""Denoising + deconvolution: deepfield's deconvolver and VAE posterior mean vs Richardson-Lucy and Wiener.

On held-out simulated galaxies the target is the simulator's `truth` (noiseless, PSF-free). The
methods, side by side on the same galaxies:
  - deepfield deconvolver: `deepfield train deconvolver` on the same store's training split
    (observation -> truth pairs; reads each galaxy's PSF and noise), then `deepfield denoise`;
  - deepfield VAE: `deepfield denoise` (the flow-VAE of benchmarks/morphology.py: decoder of the
    posterior mean; knows each galaxy's PSF and noise through its likelihood), and the same
    with each code refined object by object (`--refine-steps 30`, VAE.refine_codes);
  - Richardson-Lucy (scikit-image) with each galaxy's own PSF. RL needs positive data, so it
    runs on x + B (B = 5 noise sigma), and B is subtracted afterwards;
  - Wiener (scikit-image `restoration.wiener`) with each galaxy's own PSF;
  - the noisy observation itself (no deconvolution), for scale.
RL's iteration count and Wiener's balance are tuned on validation galaxies (best MSE) before the
test galaxies are scored, so the baselines get their best setting.

Metrics against truth: MSE in units of the noise variance (mean over pixels of
(estimate - truth)^2 x ivar), relative flux error (stamp sum), the relative error of the
half-light radius (curve of growth about the truth's centroid), as medians and 16-84% ranges,
and the sky pedestal (mean of (estimate - truth) / sigma over the stamp's 3-pixel border,
median over galaxies); also for bright galaxies only (snr > 20).

    python benchmarks/denoise.py [--n 2000]    # reuses the cached models (trains them the first time)
    python benchmarks/denoise.py --methods deconvolver   # rerun the deconvolver and the baselines;
                                                         # the VAE rows are kept from the last run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from _common import CACHE, markdown_table, write_results
from morphology import SPLIT, galaxy_store, trained_vae

RL_ITERATIONS = (5, 10, 20, 40)
DECONVOLVER_EPOCHS = 8
WIENER_BALANCE = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def centroids(images: np.ndarray) -> np.ndarray:
    h, w = images.shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    flux = images.sum(axis=(1, 2))
    return np.stack([(images * yy).sum(axis=(1, 2)) / flux, (images * xx).sum(axis=(1, 2)) / flux], 1)


def richardson_lucy(x: np.ndarray, psf: np.ndarray, sigma: np.ndarray, iterations: int) -> np.ndarray:
    from skimage.restoration import richardson_lucy as rl

    out = np.empty_like(x)
    for i in range(len(x)):
        b = 5 * sigma[i]
        out[i] = rl(x[i] + b, psf[i], num_iter=iterations, clip=False) - b
    return out


def wiener(x: np.ndarray, psf: np.ndarray, sigma: np.ndarray, balance: float) -> np.ndarray:
    from skimage.restoration import wiener as wf

    out = np.empty_like(x)
    for i in range(len(x)):
        s = float(x[i].std()) or 1.0
        out[i] = wf(x[i] / s, psf[i], balance=balance, clip=False) * s
    return out


def vae_denoise(model, store, rows: np.ndarray, refine_steps: int = 0) -> np.ndarray:
    import tempfile

    from deepfield.tasks import denoise_store

    with tempfile.TemporaryDirectory() as tmp:
        out = denoise_store(model, store, Path(tmp) / "denoised", indices=rows, refine_steps=refine_steps,
                            progress=False)
        return out.read("x")[:, 0]


def trained_deconvolver(store, epochs: int, threads: int, retrain: bool = False) -> Path:
    """The cached deconvolver trained on `store`'s training split (the VAE's split)."""
    from deepfield.train import TrainSettings, train

    out = CACHE / "models" / f"deconvolver-{Path(store.path).name}-e{epochs}"
    if (out / "config.json").exists() and not retrain:
        return out
    t0 = time.perf_counter()
    train("deconvolver", store, out, settings=TrainSettings(epochs=epochs, batch_size=64, lr=1e-3, seed=0, patience=0,
                                                           split_fractions=SPLIT, threads=threads, progress=True),
          overwrite=True)
    (out / "benchmark_timing.json").write_text(json.dumps({"seconds": time.perf_counter() - t0,
                                                           "threads": threads}) + "\n")
    return out


def half_light_radius(images: np.ndarray, centres: np.ndarray) -> np.ndarray:
    from deepfield.metrics import half_light_radius as hlr

    return hlr(images, centre=centres)  # pixels, about the truth's centroid


def scores(estimate: np.ndarray, truth: np.ndarray, ivar: np.ndarray, r_truth: np.ndarray, centre: np.ndarray) -> dict:
    mse = ((estimate - truth) ** 2 * ivar).mean(axis=(1, 2))
    flux = estimate.sum(axis=(1, 2)) / truth.sum(axis=(1, 2)) - 1
    size = half_light_radius(estimate, centre) / r_truth - 1
    border = np.ones(truth.shape[1:], bool)
    border[3:-3, 3:-3] = False
    pedestal = ((estimate - truth) * np.sqrt(ivar))[:, border].mean(axis=1)
    return {"mse": mse, "flux": flux, "size": size, "pedestal": pedestal}


def summary(s: dict, keep: np.ndarray) -> dict:
    def q(v):
        v = v[keep & np.isfinite(v)]
        return [float(x) for x in np.percentile(v, (16, 50, 84))]

    return {"mse_mean": float(np.mean(s["mse"][keep])), "flux_error": q(s["flux"]), "size_error": q(s["size"]),
            "pedestal_sigma_median": float(np.median(s["pedestal"][keep])),
            "abs_size_error_median": float(np.nanmedian(np.abs(s["size"][keep]))),
            "abs_flux_error_median": float(np.nanmedian(np.abs(s["flux"][keep])))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="held-out galaxies scored")
    ap.add_argument("--n-tune", type=int, default=200, help="validation galaxies used to tune RL and Wiener")
    ap.add_argument("--store-n", type=int, default=12000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--deconvolver-epochs", type=int, default=DECONVOLVER_EPOCHS)
    ap.add_argument("--methods", nargs="+", choices=("deconvolver", "vae"), default=("deconvolver", "vae"),
                    help="deepfield models to run (the baselines always run); rows of a model not run are kept "
                         "from the last result")
    ap.add_argument("--refine-steps", type=int, default=30,
                    help="steps of the refined-code row (deepfield denoise --refine-steps)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import deepfield
    from deepfield.tasks.apply import resolve_indices

    store = galaxy_store(args.store_n, args.size)
    models = {}
    timings = {}
    if "deconvolver" in args.methods:
        path = trained_deconvolver(store, args.deconvolver_epochs, args.threads)
        models["deconvolver"] = deepfield.load(path)
        timings["deconvolver_train"] = json.loads((path / "benchmark_timing.json").read_text())
    if "vae" in args.methods:
        models["vae"] = deepfield.load(trained_vae(store, args.epochs))
    record = next(iter(models.values())).record  # every model here trains on the same split (SPLIT, seed 0)
    test = resolve_indices(store, None, "test", record)[: args.n]
    val = resolve_indices(store, None, "val", record)[: args.n_tune]

    def load(rows):
        x, truth = store.read("x", rows)[:, 0], store.read("truth", rows)[:, 0]
        psf, ivar = store.read("psf", rows)[:, 0], store.read("ivar", rows)[:, 0]
        sigma = 1 / np.sqrt(ivar.mean(axis=(1, 2)))
        centre = centroids(truth)
        return x, truth, psf, ivar, sigma, centre, half_light_radius(truth, centre)

    # tune the baselines on validation galaxies
    xv, tv, pv, iv, sv, cv, _ = load(val)
    rl_mse = {k: float(((richardson_lucy(xv, pv, sv, k) - tv) ** 2 * iv).mean()) for k in RL_ITERATIONS}
    w_mse = {b: float(((wiener(xv, pv, sv, b) - tv) ** 2 * iv).mean()) for b in WIENER_BALANCE}
    best_k, best_b = min(rl_mse, key=rl_mse.get), min(w_mse, key=w_mse.get)

    x, truth, psf, ivar, sigma, centre, r_truth = load(test)
    methods = {}
    if "deconvolver" in models:
        t0 = time.perf_counter()
        methods[f"deepfield deconvolver ({args.deconvolver_epochs} epochs)"] = vae_denoise(models["deconvolver"], store,
                                                                                          test)
        timings["deconvolver_apply_s"] = time.perf_counter() - t0
    if "vae" in models:
        methods["deepfield flow-VAE (posterior mean)"] = vae_denoise(models["vae"], store, test)
        methods[f"deepfield, codes refined ({args.refine_steps} steps)"] = vae_denoise(models["vae"], store, test,
                                                                                       args.refine_steps)
    t0 = time.perf_counter()
    wiener_estimate = wiener(x, psf, sigma, best_b)
    timings["wiener_apply_s"] = time.perf_counter() - t0
    methods.update({
        f"Richardson-Lucy ({best_k} iterations)": richardson_lucy(x, psf, sigma, best_k),
        f"Wiener (balance {best_b:g})": wiener_estimate,
        "noisy observation (no deconvolution)": x,
    })
    snr = store.column("snr")[test]
    keep_all, keep_bright = np.isfinite(r_truth), np.isfinite(r_truth) & (snr > 20)
    results = {}
    for name, est in methods.items():
        s = scores(est, truth, ivar, r_truth, centre)
        results[name] = {"all": summary(s, keep_all), "snr>20": summary(s, keep_bright)}
    carried = {}
    previous = Path(__file__).resolve().parent / "results" / "denoise.json"
    if previous.is_file():  # the rows of the models not run this time, from the last run on the same galaxies
        old = json.loads(previous.read_text())
        if (old.get("n"), old.get("size"), old.get("store_n", args.store_n)) == (int(test.size), args.size, args.store_n):
            keep = [k for k in old["results"] if k.startswith("deepfield") and k not in results
                    and ("vae" not in args.methods and ("VAE" in k or "refined" in k)
                         or "deconvolver" not in args.methods and "deconvolver" in k)]
            for k in keep:
                results[k] = old["results"][k]
                carried[k] = old.get("carried_from", {}).get(k) or old["machine"]["date"]
    wiener_name = f"Wiener (balance {best_b:g})"
    order = sorted(results, key=lambda k: (not k.startswith("deepfield"), list(results).index(k)))
    rows = []
    for name in order:
        for subset in ("all", "snr>20"):
            r = results[name][subset]
            ped = r.get("pedestal_sigma_median")
            rows.append([name + (f" (run {carried[name]})" if name in carried else ""), subset,
                         round(r["mse_mean"], 3), round(r["mse_mean"] / results[wiener_name][subset]["mse_mean"], 3),
                         f"{r['flux_error'][1]:+.3f} [{r['flux_error'][0]:+.2f}, {r['flux_error'][2]:+.2f}]",
                         f"{r['size_error'][1]:+.3f} [{r['size_error'][0]:+.2f}, {r['size_error'][2]:+.2f}]",
                         "—" if ped is None else f"{ped:+.3f}"])
    table = markdown_table(["method", "galaxies", "MSE vs truth / noise variance", "MSE / Wiener's",
                            "flux error: median [16%, 84%]", "half-light radius error: median [16%, 84%]",
                            "sky pedestal (sigma)"], rows)
    write_results("denoise", {"n": int(test.size), "n_bright": int(keep_bright.sum()), "size": args.size,
                              "store_n": args.store_n, "methods_run": list(args.methods), "carried_from": carried,
                              "timings": timings,
                              "tuning": {"richardson_lucy_mse": rl_mse, "wiener_mse": {str(k): v for k, v in w_mse.items()}},
                              "results": {k: results[k] for k in order}},
                  f"{test.size} held-out galaxies ({keep_bright.sum()} with snr > 20), {args.size}x{args.size}; "
                  "errors are relative to the simulator's noiseless PSF-free truth. A row marked (run DATE) "
                  "was kept from that run on the same galaxies.\n\n" + table)


if __name__ == "__main__":
    main()
