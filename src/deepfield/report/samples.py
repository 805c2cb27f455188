"""The report's section on generative models: samples beside held-out galaxies, conditional
sweeps, and morphology histograms (held-out galaxies vs samples observed the same way).

Samples are observed through the PSF and noise of the held-out galaxy they stand beside, so a
reader compares like with like; the noiseless, PSF-free samples are shown too (what the model
itself draws).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepfield.data.store import Store
from deepfield.models.protocol import has
from deepfield.report import html as H
from deepfield.report import plots

__all__ = ["is_generative", "sample_section"]

#: conditions swept in the conditional-sweep figures, in this order, when the model has them
SWEEP = ("half_light_radius", "magnitude", "redshift")


def is_generative(model, store: Store) -> bool:
    """A VAE-like model that can sample, on an image store with PSF and noise to observe through."""
    return (has(model, "sample") and has(model, "elbo") and store.kind == "image"
            and store.has("psf") and store.has("ivar"))


def sample_section(page, model, store: Store, rows: np.ndarray, examples: np.ndarray, tmp: Path, add_figure,
                   *, seed: int = 0, n_morphology: int = 1000, summary: dict | None = None) -> None:
    """Append the 'Samples' section: grids, sweeps, histograms and the morphology table."""
    from deepfield.tasks.evaluate import condition_names, conditional_sweep, evaluate_morphology, samples_beside

    body = page.section("Samples")
    names = condition_names(model)
    examples = examples[:8]
    if examples.size:
        panels = samples_beside(model, store, examples, seed=seed)
        cols = [f"id {int(store.ids[r])}" for r in examples]
        which = (f" with each held-out galaxy's {', '.join(names)}" if names else "")
        add_figure(body, "samples.png",
                   f"Top row: {examples.size} held-out galaxies. Below: model samples{which}, observed through that "
                   "galaxy's own PSF and noise, for each prior; bottom: the first prior's samples as the model draws "
                   "them (noiseless and PSF-free). Row labels name the latent prior (flow: the fitted latent "
                   "prior). One asinh stretch per column.")
        plots.plot_sample_grid(panels, tmp / "samples.png", pixel_scale=store.pixel_scale, column_labels=cols,
                               stretch="column")
    for c in (c for c in SWEEP if c in names):
        panels, base = conditional_sweep(model, store, rows, c, n_columns=6, seed=seed + 1)
        others = ", ".join(f"{k} = {base[k]:.3g}" for k in names if k != c)
        add_figure(body, f"sweep_{c}.png",
                   f"Conditional sweep: {c} from the 5th to the 95th percentile of the held-out galaxies (rows), "
                   f"{others or 'no other condition'}; each column keeps its random draw, so only the condition "
                   "changes down a column. Noiseless, PSF-free samples; one stretch for the whole figure.")
        plots.plot_sample_grid(panels, tmp / f"sweep_{c}.png", pixel_scale=store.pixel_scale, stretch="figure")
    if n_morphology and rows.size >= 20:
        result = evaluate_morphology(model, store, split="all", n=None, seed=seed, measurements=True,
                                     rows=rows[:n_morphology])
        from deepfield.report.checks import histogram_warning, outside_range

        outside = outside_range(result["measurements"])
        plots.plot_morphology_histograms(result["measurements"], tmp / "morphology_histograms.png")
        add_figure(body, "morphology_histograms.png",
                   f"Morphology of {result['n']} held-out galaxies (grey) and of model samples with their conditions, "
                   "observed through their PSFs and noise (lines): GalSim HSM moments and non-parametric statistics, "
                   "on the held-out galaxies' 1st-99th percentile range widened (up to twice its width) towards the "
                   "samples'; legends count the values outside it.")
        warning = histogram_warning(outside)
        if warning:
            page.banner(warning)
        table_rows = []
        for prior, r in result["priors"].items():
            for row in r["rows"]:
                table_rows.append((prior, row["statistic"], row["real_mean"], row["real_sigma"], row["model_mean"],
                                   row["difference_sigma"], row["standardised_w1"]))
        body.append(H.table(["prior", "statistic", "held-out mean", "± (bootstrap)", "sample mean",
                             "difference (σ)", "standardised W1"], table_rows, id="morphology",
                            numeric=[False, False, True, True, True, True, True]))
        floor = {r["statistic"]: r["standardised_w1"] for r in result["reference"]["rows"]}
        body.append(H.note("Standardised W1 between two random halves of the same held-out galaxies (the floor a "
                           "perfect model reaches with this many objects): "
                           + ", ".join(f"{k} {v:.3f}" for k, v in floor.items()) + "."))
        rho = {p: r["spearman"] for p, r in result["priors"].items() if r["spearman"]}
        if rho:
            body.append(H.note("Spearman correlation between asked and measured size / magnitude: "
                               + "; ".join(f"{p}: " + ", ".join(f"{k} {v:.3f}" for k, v in s.items())
                                           for p, s in rho.items())
                               + "; on the held-out galaxies themselves: "
                               + ", ".join(f"{k} {v:.3f}" for k, v in result["reference"]["spearman"].items()) + "."))
        if summary is not None:
            summary["morphology"] = {"n": result["n"], "priors": result["priors"], "reference": result["reference"],
                                     "outside_plotted_range": {name: {k: v[0] for k, v in stats.items()}
                                                               for name, stats in outside.items()}}
