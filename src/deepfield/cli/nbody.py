"""`deepfield simulate nbody`: particle-mesh N-body density fields or slices into a store.

Thin: parse options, call :func:`deepfield.data.nbody.simulate_nbody`, print where the store is.
"""

from __future__ import annotations

from pathlib import Path

import typer

from deepfield.cli._app import console, simulate_app

__all__ = ["nbody"]


@simulate_app.command()
def nbody(
    out: Path = typer.Argument(..., help="Store directory to create."),
    n_sims: int = typer.Option(..., "--n-sims", help="Number of simulations."),
    mesh: int = typer.Option(64, "--mesh", help="Particles and cells per side."),
    box: float = typer.Option(256.0, "--box", help="Box side in Mpc/h."),
    steps: int = typer.Option(10, "--steps", help="FastPM kick-drift-kick steps from a=0.1 to a=1."),
    seed: int = typer.Option(0, "--seed", help="Base seed (simulation i uses SeedSequence([seed, i]))."),
    slices: float = typer.Option(None, "--slices",
                                 help="Project onto slabs this thick (Mpc/h, whole cells) and store 2-D slices."),
    vary: str = typer.Option("", "--vary", help="Cosmology drawn per simulation, e.g. 'sigma8=0.7:0.9,Omega_c=0.2:0.3'."),
    force_resolution: int = typer.Option(1, "--force-resolution", help="Force mesh B times finer than the particles."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store at OUT."),
    resume: bool = typer.Option(False, "--resume", help="Finish an interrupted write at OUT."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Run particle-mesh simulations (2LPT + FastPM) and store their final density fields."""
    import time

    from deepfield.data.nbody import parse_vary, simulate_nbody

    start = time.perf_counter()
    store = simulate_nbody(out, n_sims, mesh=mesh, box_size=box, n_steps=steps, seed=seed, slice_thickness=slices,
                           vary=parse_vary(vary), force_resolution=force_resolution, overwrite=overwrite,
                           resume=resume, progress=progress)
    typer.echo(str(store.path))
    what = "3-D fields" if slices is None else f"slices {slices:g} Mpc/h thick"
    console.print(f"{n_sims} simulations ({mesh}^3 in {box:g} Mpc/h, {steps} steps): {len(store)} {what}, "
                  f"in {time.perf_counter() - start:.1f} s; fingerprint {store.fingerprint[:12]}", highlight=False)
