"""Observations vs simulations by likelihood: can a PixelCNN trained on survey A tell survey B apart?

Survey A (the "observations") is simulated with the default settings (depth r = 25.3, Moffat
PSF). A PixelCNN is trained on it, and a background PixelCNN on the same images with 20% of
the pixel values randomised (Ren et al. 2019). Both score A's held-out split and surveys B that
differ from A in one known way:

- control: A's settings, another seed (no difference: KS, W1 ~ 0 and AUROC ~ 0.5 expected);
- depth 24.8: 0.5 mag shallower (1.58x the sky noise, and no galaxies fainter than 24.8);
- Kolmogorov PSF: same FWHM distribution as A's Moffat, different wings;
- larger galaxies: the size-magnitude relation shifted up (selected, see below);
- bulge-dominated: only galaxies with bulge fraction > 0.5 (A: a 70/30 disk/bulge mix).

The simulator has no knob for the size-magnitude relation or the bulge fraction, so those two
surveys are selections from a larger simulation with A's settings: the third of galaxies that
lie highest above the relation log10(r_half) = log10(0.6") - 0.1 (m - 22), or those with bulge
fraction > 0.5. The measured shift is reported.

Two samples: 'all' (every galaxy, to r = 25.3: most are faint and noise-dominated) and
'bright' (every survey cut at r < 23, where shapes are resolved); each has its own pair of
models. For each B: mean bits/dim, KS statistic and W1 (bits/dim) between A-held-out and B, and
AUROC of telling B from A by bits/dim (higher = B) and by the likelihood ratio (lower = B).
AUROC < 0.5 means B is *more* probable than A under the model.

    python benchmarks/likelihood.py                 # ~15 minutes on 2 busy cores (1 thread)
    python benchmarks/likelihood.py --quick         # ~3 minutes, smaller sets
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _common import CACHE, cached_store, markdown_table, write_results

SIZE_RELATION = (0.6, 22.0, -0.1)  # r_half = 0.6" at r = 22, -0.1 dex per magnitude (deepfield.data.galaxies)


def size_residual(store) -> np.ndarray:
    """log10(r_half / arcsec) above the simulator's mean size-magnitude relation, in dex."""
    r0, m0, slope = SIZE_RELATION
    return np.log10(store.column("half_light_radius")) - (np.log10(r0) + slope * (store.column("magnitude") - m0))


def simulations(args) -> dict:
    """The simulated surveys (cached in benchmarks/.cache): A and the Bs before any cut."""
    from deepfield.data.galaxies import simulate_galaxies

    tag = f"{args.size}px"

    def sim(name, count, **kw):
        return cached_store(f"likelihood-{name}-{count}-{tag}", lambda p: simulate_galaxies(
            p, count, size=args.size, bands=("r",), progress=False, workers=1, **kw))

    return {"A": sim("A", args.n_pool_a, seed=1), "control": sim("control", args.n_b, seed=2),
            "depth": sim("depth", args.n_b, seed=3, depth=24.8),
            "kolmogorov": sim("kolmogorov", args.n_b, seed=5, psf="kolmogorov"),
            "pool": sim("pool", 2 * args.n_b, seed=4)}


def subset(store, rows, name):
    """Rows of `store` as a (cached) store of their own."""
    from deepfield.data.store import copy_store, is_store, open_store

    path = CACHE / f"{store.path.name}-{name}"
    if not is_store(path):
        copy_store(store, path, rows)
    return open_store(path)


def surveys(sims: dict, sample: str, bright: float, n_a: int):
    """Survey A and the surveys B of one sample: 'all' (A: the first n_a galaxies) or 'bright'
    (every survey cut at magnitude < bright)."""
    def cut(store):
        return store.select(where=f"magnitude < {bright}") if sample == "bright" else np.arange(len(store))

    a_rows = cut(sims["A"]) if sample == "bright" else np.arange(min(n_a, len(sims["A"])))
    a = subset(sims["A"], a_rows, f"{sample}-{a_rows.size}")
    pool_rows = cut(sims["pool"])
    resid = size_residual(sims["pool"])[pool_rows]
    large = pool_rows[resid > np.quantile(resid, 2 / 3)]
    bulgy = pool_rows[sims["pool"].column("bulge_fraction")[pool_rows] > 0.5]
    b = {
        "control (A's settings, new seed)": (sims["control"], "none"),
        "depth 24.8 (A: 25.3)": (sims["depth"], "1.58x sky noise, no galaxies fainter than 24.8"),
        "Kolmogorov PSF (A: Moffat)": (sims["kolmogorov"], "PSF wings"),
    }
    b = {label: (subset(st, cut(st), sample) if sample == "bright" else st, what) for label, (st, what) in b.items()}
    b["larger at fixed magnitude"] = (subset(sims["pool"], large, f"{sample}-large"),
                                      "top third above the size-magnitude relation")
    b["bulge-dominated only"] = (subset(sims["pool"], bulgy, f"{sample}-bulgy"), "bulge fraction > 0.5")
    return a, b


def run_sample(args, sims, sample: str) -> tuple[dict, list, str]:
    import json

    from deepfield.tasks.compare import compare_stores
    from deepfield.train import TrainSettings, train

    a, bs = surveys(sims, sample, args.bright, args.n_a)
    settings = TrainSettings(epochs=args.epochs, batch_size=32, lr=3e-3, patience=0, progress=False,
                             threads=args.threads, split_fractions=(0.7, 0.1, 0.2))
    options = {"channels": args.channels, "layers": args.layers, "kernel_size": 5, "mixtures": 5, "bits": 8}
    work = CACHE / f"likelihood-models-{sample}-{len(a)}-{args.size}px-{args.epochs}"
    models, train_info = {}, {}
    for name, extra in (("model", {}), ("background", {"perturb_rate": args.perturb_rate})):
        t = time.perf_counter()
        models[name] = train("pixelcnn", a, work / name, model_options={**options, **extra}, settings=settings,
                             overwrite=True)
        metrics = json.loads((models[name] / "metrics.json").read_text())
        train_info[name] = {"seconds": round(time.perf_counter() - t, 1),
                            "train_images_per_s": metrics["train_images_per_s"],
                            "best_val_bits_per_dim": metrics["best_val_loss"]}
    rows, results = [], {}
    resid_a = size_residual(a)
    n_ref = 0
    for label, (store, difference) in bs.items():
        summary = compare_stores(models["model"], a, store, work / f"compare-{store.path.name}",
                                 background=models["background"], overwrite=True, progress=False)
        n_ref = summary["n_reference"]
        bpd, ratio = summary["statistics"]["bits_per_dim"], summary["statistics"]["log_ratio_bits_per_dim"]
        known = {"size_offset_dex": float(np.median(size_residual(store)) - np.median(resid_a)),
                 "mean_bulge_fraction": float(store.column("bulge_fraction").mean()),
                 "median_noise_sigma": float(np.median(store.column("noise_sigma"))),
                 "median_magnitude": float(np.median(store.column("magnitude")))}
        results[label] = {"difference": difference, "n": summary["n_simulation"], "catalog": known,
                          "bits_per_dim": bpd, "log_ratio_bits_per_dim": ratio}
        rows.append([sample, label, summary["n_simulation"], bpd["reference"]["mean"], bpd["simulation"]["mean"],
                     bpd["ks_statistic"], bpd["w1"], bpd["auroc"],
                     ratio["ks_statistic"], ratio["w1"], ratio["auroc"],
                     round(known["size_offset_dex"], 3), round(known["mean_bulge_fraction"], 2),
                     round(known["median_noise_sigma"], 2)])
    cut = f"magnitude < {args.bright}" if sample == "bright" else "every galaxy (to r = 25.3)"
    words = (f"- {sample}: A = {len(a)} galaxies, {cut} ({n_ref} held out and scored; median r "
             f"{np.median(a.column('magnitude')):.1f}, median S/N {np.median(a.column('snr')):.0f}, mean B/T "
             f"{a.column('bulge_fraction').mean():.2f}); validation bits/dim: model "
             f"{train_info['model']['best_val_bits_per_dim']:.3f}, background "
             f"{train_info['background']['best_val_bits_per_dim']:.3f}; "
             f"training {train_info['model']['seconds']:.0f} s "
             f"+ {train_info['background']['seconds']:.0f} s at {train_info['model']['train_images_per_s']:.0f} "
             "images/s.")
    return {"n_a": len(a), "n_reference": n_ref, "training": train_info, "surveys": results}, rows, words


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-a", type=int, default=3000, help="survey A objects of the 'all' sample (70%% train, "
                                                               "20%% held out)")
    parser.add_argument("--n-pool-a", type=int, default=12000, help="survey A simulation; the 'bright' sample is "
                                                                    "its galaxies brighter than --bright")
    parser.add_argument("--n-b", type=int, default=3000, help="objects per simulated survey B")
    parser.add_argument("--bright", type=float, default=23.0, help="magnitude cut of the 'bright' sample")
    parser.add_argument("--size", type=int, default=16, help="stamp side in pixels (0.2 arcsec pixels)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--perturb-rate", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these small "
                                                               "convolutions on shared cores)")
    parser.add_argument("--quick", action="store_true", help="smaller sets, 4 epochs")
    args = parser.parse_args()
    if args.quick:
        args.n_a, args.n_pool_a, args.n_b, args.epochs = 800, 3000, 800, 4
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    sims = simulations(args)
    t_sim = time.perf_counter() - t0
    payload, rows, words = {"settings": vars(args)}, [], []
    for sample in ("all", "bright"):
        payload[sample], r, w = run_sample(args, sims, sample)
        rows += r
        words.append(w)
    total = time.perf_counter() - t0
    payload["seconds"] = {"total": total, "simulation": t_sim}
    header = ["sample", "survey B", "N", "bits/dim A", "bits/dim B", "KS", "W1 [bit/dim]", "AUROC log p", "KS ratio",
              "W1 ratio [bit/dim]", "AUROC ratio", "size offset [dex]", "mean B/T", "noise sigma"]
    table = "\n".join([
        f"PixelCNN ({args.layers} gated layers x {args.channels} channels, 5 logistics, 8 bits, asinh stretch with "
        f"softening 1 noise sigma) trained for {args.epochs} epochs on survey A ({args.size}x{args.size} r-band "
        f"stamps); background: the same with perturb_rate {args.perturb_rate} (Ren et al. 2019).", "",
        *words, "",
        markdown_table(header, rows), "",
        "KS and W1 between A's held-out galaxies and survey B (same magnitude cut); AUROC: P(a B galaxy has higher "
        "bits/dim, or a lower likelihood ratio, than an A galaxy): 0.5 = indistinguishable, < 0.5 = B more probable "
        "than A. Size offset: median log10(r_half) above the simulator's size-magnitude relation, B minus A. "
        f"Total {total / 60:.1f} min on {args.threads} thread (simulation {t_sim:.0f} s, cached after the first run)."])
    write_results("likelihood", payload, table)


if __name__ == "__main__":
    main()
