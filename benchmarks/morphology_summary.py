"""One table over every morphology run in benchmarks/results (morphology*.json): how each VAE
variant trades ellipticity against size, read from the runs' own results (nothing retrained).

Columns: the variant (family, KL weight, which conditions the decoder reads, flux scaling, training
and prior selections), the differences of the samples' mean |e| and mean size from the held-out
galaxies in bootstrap sigmas (targets: within 1), how many of the 8 standardised W1 the flow beats
N(0, I) on, Spearman rho of asked vs measured size and magnitude on noiseless samples (target 0.9),
and the mean noiseless |e| (through each galaxy's PSF) of flow samples in three magnitude bins, with
the held-out truth in the header: where the roundness is. Every bin near 0.03 means the posterior
collapsed (all samples alike); the runs' own tables also give decoded posterior draws.

    python benchmarks/morphology_summary.py
"""

from __future__ import annotations

import json

from _common import RESULTS, markdown_table, write_results


def variant(run: dict) -> str:
    """A short description of how the run's model was set up."""
    parts = [run.get("family", "vae"), f"beta {run.get('beta', 1):g}"]
    if run.get("family") == "cvae":
        names = run.get("condition", [])
        decoder = run.get("decoder_condition")
        if decoder is not None:  # indices into the condition columns
            seen = [names[i] for i in decoder]
        else:
            seen = [c for c in names if c not in (run.get("flux_condition"), run.get("size_condition"))]
        parts.append(f"encoder: {', '.join(names)}; decoder: {', '.join(seen) or 'code only'}")
    if run.get("flux_condition"):
        parts.append(f"flux from {run['flux_condition']}")
    if run.get("size_condition"):
        parts.append(f"size from {run['size_condition']}")
    if run.get("epochs", 25) != 25:
        parts.append(f"{run['epochs']} epochs")
    if run.get("train_where"):
        parts.append(f"trained on {run['train_where']}")
    if run.get("prior_where"):
        parts.append(f"prior on {run['prior_where']}")
    if run.get("refine_steps"):
        weight = run.get("refine_prior_weight")
        how = "maximum likelihood" if weight == 0 else (f"prior weight {weight:g}" if weight is not None else "beta-MAP")
        parts.append(f"prior on codes refined in {run['refine_steps']} steps ({how})")
    if run.get("flow_seed"):
        parts.append(f"flow seed {run['flow_seed']}")
    if run.get("flow_transforms", 6) != 6 or run.get("flow_hidden", "128,128") != "128,128":
        parts.append(f"flow of {run['flow_transforms']} transforms x ({run['flow_hidden']})")
    prior = run.get("prior_condition")
    if prior is not None and list(prior) != ["half_light_radius", "magnitude", "redshift"]:
        parts.append(f"prior given {', '.join(prior)}")
    return "; ".join(parts)


def row(name: str, run: dict) -> list[str]:
    flow = next(v for k, v in run["priors"].items() if k != "N(0, I)")
    gauss = run["priors"]["N(0, I)"]
    by = {r["statistic"]: r for r in flow["rows"]}
    wins = sum(f["standardised_w1"] < g["standardised_w1"] for f, g in zip(flow["rows"], gauss["rows"]))
    samples = {r["magnitude"]: r["flow samples"] for r in run.get("roundness_by_magnitude", [])}
    rho = flow["spearman_noiseless"]
    return [f"`{name}`", variant(run), f"{by['e']['difference_sigma']:+.1f}", f"{by['sigma_arcsec']['difference_sigma']:+.1f}",
            f"{wins}/{len(flow['rows'])}", f"{rho.get('half_light_radius', float('nan')):.2f}",
            f"{rho.get('magnitude', float('nan')):.2f}",
            *[f"{samples.get(b, float('nan')):.3f}" for b in ("17-21.5", "21.5-23.5", "23.5-26")]]


def main():
    runs = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("morphology*.json"))
            if p.stem != "morphology_summary"}
    rows = [row(name, run) for name, run in runs.items()]
    table = markdown_table(["results file", "variant", "mean \\|e\\| (σ)", "mean size (σ)", "W1 won", "size ρ",
                            "magnitude ρ", "samples' \\|e\\|, r < 21.5 (truth 0.180)", "r 21.5-23.5 (0.140)",
                            "r > 23.5 (0.110)"], rows)
    write_results("morphology_summary", {"runs": sorted(runs)}, table)


if __name__ == "__main__":
    main()
