"""`deepfield compare`: score observations and a simulation under a likelihood model."""

from __future__ import annotations

from pathlib import Path

import typer

from deepfield.cli._app import app, console


@app.command()
def compare(
    model_dir: Path = typer.Argument(..., help="Model folder with a likelihood: pixelcnn (exact), vae (ELBO bound)."),
    reference: Path = typer.Option(..., "--reference", "-r", help="The observations: the model's training store."),
    store: Path = typer.Option(..., "--store", "-s", help="The simulation (or any store) to score against them."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: scores.parquet, histograms (PNG), summary."),
    background: Path = typer.Option(None, "--background", "-b",
                                    help="Background model for the likelihood ratio (Ren et al. 2019), e.g. "
                                         "`deepfield train pixelcnn --perturb-rate 0.2` on the same store."),
    reference_split: str = typer.Option("auto", "--reference-split",
                                        help="auto (the model's held-out split if trained on --reference, else all), "
                                             "test or all."),
    batch_size: int = typer.Option(256, "--batch-size"),
    skip_nonfinite: bool = typer.Option(False, "--skip-nonfinite", help="Skip (and list) objects with NaN/inf pixels."),
    seed: int = typer.Option(0, "--seed", help="Seed of the ELBO's posterior samples (VAEs)."),
    overwrite: bool = typer.Option(False, "--overwrite"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Per-object log p(x) (bits/dim) of observations and simulation, likelihood ratio, KS, W1, plots."""
    import warnings

    from deepfield.tasks.compare import compare_stores

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = compare_stores(model_dir, reference, store, out, background=background,
                                 reference_split=reference_split, batch_size=batch_size,
                                 skip_nonfinite=skip_nonfinite, seed=seed, overwrite=overwrite, progress=progress)
    for w in caught:
        if issubclass(w.category, UserWarning):
            console.print(f"[yellow]warning:[/] {w.message}")
    console.print(f"scores: {summary['score']}")
    console.print(f"reference: {summary['reference_rows']}; simulation: {summary['n_simulation']} objects")
    for name, entry in summary["statistics"].items():
        console.print(f"{name}: reference mean {entry['reference']['mean']:.4g}, simulation mean "
                      f"{entry['simulation']['mean']:.4g} {entry['unit']}; KS {entry['ks_statistic']:.3f} "
                      f"(p {entry['ks_pvalue']:.2g}), W1 {entry['w1']:.4g} {entry['unit']}, AUROC {entry['auroc']:.3f}")
    console.print(f"[green]comparison written to[/] {out}")
