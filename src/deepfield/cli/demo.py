"""`deepfield demo`: the main job end to end on the embedded default survey."""

from __future__ import annotations

from pathlib import Path

import typer

from deepfield.cli._app import app, console


@app.command()
def demo(
    out: Path = typer.Option(Path("deepfield-demo"), "--out", "-o", help="Folder for the survey, models and report."),
    quick: bool = typer.Option(False, "--quick", help="CI-sized run (under a minute)."),
    seed: int = typer.Option(0, "--seed"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Simulate a small galaxy survey; train PCA, autoencoders and a flow-VAE; draw conditional samples; write
    the reports."""
    from deepfield.demo import run_demo

    report = run_demo(out, quick=quick, seed=seed, progress=progress, log=console.print)
    console.print(f"[bold green]report:[/] {report.resolve()}")
