"""`deepfield demo`: the main job end to end on the embedded default survey."""

from __future__ import annotations

from pathlib import Path

import typer

from deepfield.cli._app import app, console, interrupted


def _print(line: str) -> None:
    # stage lines stand out from the stages' own bars and messages; markup off: paths may hold brackets
    style = "bold cyan" if line.startswith("stage ") else "bold green" if line.endswith("index.html") else None
    console.print(line, style=style, highlight=False, markup=False, soft_wrap=True)


@app.command()
def demo(
    out: Path = typer.Option(Path("deepfield-demo"), "--out", "-o", help="Folder for the survey, models and report."),
    quick: bool = typer.Option(False, "--quick", help="CI-sized run (under a minute)."),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted demo in --out: finished stages are "
                                "kept, an interrupted training run continues from its checkpoint."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Simulate a small galaxy survey; train PCA, autoencoders and a flow-VAE; draw conditional samples; write
    the reports (each as soon as its models are trained)."""
    from deepfield.demo import DemoInterrupted, run_demo

    try:
        report = run_demo(out, quick=quick, seed=seed, progress=progress, resume=resume,
                          log=_print)
    except DemoInterrupted as err:
        interrupted(str(err))
    console.print(f"[bold green]report:[/] {report.resolve()}")
