"""`deepfield report MODEL_DIR --store S`: an HTML page of figures on a trained model."""

from __future__ import annotations

from pathlib import Path

import typer

from deepfield.cli._app import app


@app.command()
def report(
    model_dir: Path = typer.Argument(..., help="Model folder."),
    store: Path = typer.Option(..., "--store", "-s", help="Store to evaluate on (normally the training store)."),
    out: Path = typer.Option(None, "--out", "-o", help="Report folder (default: MODEL_DIR/report)."),
    compare: list[Path] = typer.Option(None, "--compare", "-c",
                                       help="Another model folder trained on the same store (repeatable)."),
    color_by: str = typer.Option(None, "--color-by",
                                 help="Catalog column for the latent plot (default: the first of "
                                      "magnitude, half_light_radius, target, redshift present)."),
    n_examples: int = typer.Option(8, "--n-examples", help="Objects in the reconstruction grids."),
    split: str = typer.Option("test", "--split", help="Objects to use: test (held out), val, train or all."),
    seed: int = typer.Option(0, "--seed", help="Seed choosing the example objects."),
    samples: int = typer.Option(1000, "--samples",
                                help="VAEs: held-out galaxies compared with samples in the morphology histograms "
                                     "(0: sample grids and sweeps only; -1: no samples section)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
):
    """Write an HTML report (loss curves, reconstructions, latent space, comparison; samples and morphology for
    VAEs); print its path."""
    from deepfield.report import make_report

    index = make_report(model_dir, store, out, compare=tuple(compare or ()), color_by=color_by,
                        n_examples=n_examples, split=split, seed=seed, progress=progress,
                        samples=None if samples < 0 else samples)
    typer.echo(str(index))
