"""Does the recipe's latent flow want more galaxies? Fit it on more refined codes than the VAE's
own training split holds, and score the samples on the same held-out galaxies.

The VAE is the cached `dilc_snr20_b0.1_e200` model of benchmarks/morphology.py (size-dilated,
flux-scaled CVAE, trained on its store's snr > 20 training galaxies). The flow is the recipe's
(`deepfield train flow --refine-steps 30 --refine-prior-weight 0`, conditioned on
half_light_radius and redshift), fitted on the maximum-likelihood refined codes of
  - the VAE's own training galaxies matching --where, plus
  - every galaxy matching --where in a second store from the same simulator (another seed).
Both flows are fitted by ``train_prior`` (``extra_stores`` for the second; `deepfield train flow
--extra-store`) on a temporary copy of the model folder, and scored by ``evaluate_morphology`` on
the held-out galaxies of benchmarks/morphology.py.

    python benchmarks/prior_more_codes.py [--where 'snr > 20'] [--extra-n 12000] [--extra-seed 8]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from _common import cached_model, cached_store, markdown_table, write_results
from morphology import galaxy_store

CONDITION = ("half_light_radius", "redshift")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dilc_snr20_b0.1_e200")
    ap.add_argument("--where", default="snr > 20")
    ap.add_argument("--extra-n", type=int, default=12000)
    ap.add_argument("--extra-seed", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import shutil
    import tempfile

    import deepfield
    from deepfield.data.galaxies import simulate_galaxies
    from deepfield.tasks.evaluate import evaluate_morphology
    from deepfield.train.prior import train_prior

    model_folder = cached_model(args.model)  # before simulating anything
    store = galaxy_store(12000, 32)
    extra = cached_store(f"galaxies-{args.extra_n}-32-seed{args.extra_seed}", lambda p: simulate_galaxies(
        p, args.extra_n, size=32, bands=("r",), seed=args.extra_seed, workers=2, progress=False))
    results, rows = {}, []
    for name, extra_stores in (("own codes", ()), ("own + extra store's codes", (extra,))):
        with tempfile.TemporaryDirectory() as tmp:  # a copy: the cached model's own prior stays
            folder = Path(tmp) / "vae"
            shutil.copytree(model_folder, folder)
            train_prior(folder, store, kind="nsf", condition=CONDITION, where=args.where, refine_steps=30,
                        refine_prior_weight=0.0, extra_stores=extra_stores, progress=False)
            model = deepfield.load(folder)
            fit = json.loads((folder / "prior" / "metrics.json").read_text())
            n_codes, history = fit["n_train_codes"], fit["history"]
            result = evaluate_morphology(model, store, split="test", seed=0, progress=False)
        flow = next(v for k, v in result["priors"].items() if k != "N(0, I)")
        gauss = result["priors"]["N(0, I)"]
        by = {r["statistic"]: r for r in flow["rows"]}
        won = sum(f["standardised_w1"] < g["standardised_w1"] for f, g in zip(flow["rows"], gauss["rows"]))
        results[name] = {"n_codes": n_codes, "best_epoch": max(history, key=lambda h: h["val_log_prob"])["epoch"],
                         "rows": flow["rows"], "w1_won": int(won), "spearman": flow["spearman"],
                         "spearman_noiseless": flow["spearman_noiseless"],
                         "spearman_real": result["reference"]["spearman"], "n_held_out": result["n"]}
        rho = {kind: "{:.2f} / {:.2f}".format(*(flow[kind].get(c, np.nan) for c in ("half_light_radius", "magnitude")))
               for kind in ("spearman", "spearman_noiseless")}
        rows.append([name, n_codes, f"{by['e']['difference_sigma']:+.1f}", f"{by['sigma_arcsec']['difference_sigma']:+.1f}",
                     f"{by['e']['standardised_w1']:.3f}", f"{by['sigma_arcsec']['standardised_w1']:.3f}",
                     f"{won}/{len(flow['rows'])}", rho["spearman"], rho["spearman_noiseless"]])
    real = results["own codes"]["spearman_real"]
    write_results("prior_more_codes", {"model": args.model, "where": args.where, "extra_n": args.extra_n,
                                       "extra_seed": args.extra_seed, "results": results},
                  f"Flow of `{args.model}` on refined ML codes of galaxies with {args.where}; {results['own codes']['n_held_out']} "
                  "held-out galaxies; differences of the samples' means in bootstrap sigmas; Spearman ρ of the asked "
                  "half_light_radius / magnitude with the measured size / flux (observed: HSM through the PSF and noise; the "
                  "held-out galaxies' own, the most any model can reach, are "
                  f"{real.get('half_light_radius', np.nan):.2f} / {real.get('magnitude', np.nan):.2f}).\n\n" + markdown_table(
                      ["flow fitted on", "codes", "mean \\|e\\| (σ)", "mean size (σ)", "W1 of e", "W1 of size",
                       "W1 won vs N(0, I)", "ρ size / mag, observed", "ρ size / mag, noiseless"], rows))


if __name__ == "__main__":
    main()
