"""What refining codes object by object (VAE.refine_codes) does to decoded galaxies.

For training galaxies of a cached benchmarks/morphology.py model, in two S/N ranges: the mean
HSM size (sigma, arcsec) and |e| of the noiseless decoded sky through each galaxy's PSF, for
  - the simulator's truth;
  - the encoder's posterior mean;
  - codes refined from it in --steps steps with the model's beta as prior weight (beta-MAP),
    and with no prior (maximum likelihood, ML);
  - ML codes fitted to the noiseless observation (truth through the PSF) instead of the data:
    what the decoder can express when noise does not pull the fit;
and the mean -log p(x | z) above the truth's (nats per galaxy; the truth's own is the noise).

    python benchmarks/refine_codes.py [--model dilc_snr20_b0.1_e200] [--n 400] [--steps 30]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from _common import cached_model, markdown_table, write_results
from morphology import galaxy_store


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dilc_snr20_b0.1_e200", help="a model folder in benchmarks/.cache/models")
    ap.add_argument("--n", type=int, default=400, help="training galaxies per S/N range")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import deepfield
    from deepfield.metrics.morphology import hsm_moments
    from deepfield.data.batches import iterate_batches
    from deepfield.data.splits import record_splits

    model = deepfield.load(cached_model(args.model))
    store = galaxy_store(12000, 32)
    train_rows = record_splits(store, model.record["store"])["train"]
    snr = store.column("snr")
    rng = np.random.default_rng(0)
    results, rows = {}, []
    for lo, hi in ((20, 40), (40, np.inf)):
        pool = train_rows[(snr[train_rows] > lo) & (snr[train_rows] <= hi)]
        sel = np.sort(rng.choice(pool, min(args.n, pool.size), replace=False))
        batch = next(iterate_batches(store, sel, model, sel.size))
        truth = torch.from_numpy(store.read("truth", sel)).float()
        with torch.no_grad():
            clean = dict(batch, x=model.observation.predict(truth, batch["psf"]))
            mean, _, c = model.posterior_batch(batch)
            nll_truth = model.observation.nll(truth, batch)
        codes = {"encoder mean": mean,
                 "refined, beta-MAP": model.refine_codes(batch, args.steps, mean=mean),
                 "refined, ML": model.refine_codes(batch, args.steps, mean=mean, prior_weight=0.0),
                 "refined, ML on the noiseless observation": model.refine_codes(clean, args.steps, prior_weight=0.0)}
        skies = {"truth": truth}
        nll = {"truth": 0.0}
        with torch.no_grad():
            for name, z in codes.items():
                skies[name] = model._sky(model._decode_raw(z, c), c)
                nll[name] = float((model.observation.nll(skies[name], batch) - nll_truth).mean())
        key = f"snr {lo}-{hi:g}"
        results[key] = {"n": int(sel.size)}
        for name, sky in skies.items():
            with torch.no_grad():
                m = hsm_moments(model.observation.predict(sky, batch["psf"]).numpy()[:, 0],
                                pixel_scale=store.pixel_scale)
            size, e = float(np.nanmean(m["sigma_arcsec"])), float(np.nanmean(m["e"]))
            results[key][name] = {"sigma_arcsec": size, "e": e, "nll_above_truth": nll[name]}
            ref = results[key]["truth"]["sigma_arcsec"]
            rows.append([key, sel.size, name, f"{size:.4f} ({size / ref - 1:+.1%})", f"{e:.3f}", f"{nll[name]:.1f}"])
    write_results("refine_codes", {"model": args.model, "steps": args.steps, "results": results},
                  f"Training galaxies of `{args.model}`, decoded noiseless through their PSFs; codes refined in "
                  f"{args.steps} steps.\n\n" + markdown_table(
                      ["galaxies", "n", "codes", "HSM sigma, arcsec (vs truth)", "mean \\|e\\|",
                       "-log p(x \\| z) above the truth's (nats)"], rows))


if __name__ == "__main__":
    main()
