"""`deepfield simulate galaxies|spectra`: simulate survey data into a store.

Thin: parse options, call :func:`deepfield.data.galaxies.simulate_galaxies` or
:func:`deepfield.data.spectra.simulate_spectra`, print where the store is and a summary.
"""

from __future__ import annotations

from pathlib import Path

import typer

from deepfield.cli._app import console, simulate_app

__all__ = ["galaxies", "spectra"]


@simulate_app.command()
def galaxies(
    out: Path = typer.Argument(..., help="Store directory to create."),
    n: int = typer.Option(..., "--n", help="Number of galaxies."),
    size: int = typer.Option(64, "--size", help="Stamp side in pixels (>= 8)."),
    bands: str = typer.Option("r", "--bands", help="Comma-separated LSST bands, e.g. g,r,i."),
    seed: int = typer.Option(0, "--seed", help="Sample seed."),
    workers: int = typer.Option(1, "--workers", help="Processes drawing stamps."),
    pixel_scale: float = typer.Option(0.2, "--pixel-scale", help="Arcsec per pixel."),
    depth: float = typer.Option(25.3, "--depth", help="Faint magnitude limit (reference band)."),
    psf: str = typer.Option("moffat", "--psf", help="PSF profile: moffat or kolmogorov."),
    correlated_noise: bool = typer.Option(False, "--correlated-noise",
                                          help="COSMOS-correlated instead of white noise."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store at OUT."),
    resume: bool = typer.Option(False, "--resume", help="Finish an interrupted write at OUT."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Simulate bulge + disk galaxy stamps with GalSim (x, truth, psf, ivar and a catalog)."""
    import time

    from deepfield.data.galaxies import simulate_galaxies

    start = time.perf_counter()
    store = simulate_galaxies(out, n, size=size, bands=bands, pixel_scale=pixel_scale, seed=seed,
                              workers=workers, depth=depth, psf=psf,
                              correlated_noise=correlated_noise, overwrite=overwrite,
                              resume=resume, progress=progress)
    elapsed = time.perf_counter() - start
    snr = store.column("snr")
    typer.echo(str(store.path))
    console.print(
        f"{len(store)} galaxies, {len(store.bands)} band(s) {','.join(store.bands)}, "
        f"{size}x{size} px at {pixel_scale}\"/px, median S/N {float(_median(snr)):.1f}, "
        f"in {elapsed:.1f} s; fingerprint {store.fingerprint[:12]}", highlight=False)


@simulate_app.command()
def spectra(
    out: Path = typer.Argument(..., help="Store directory to create."),
    n: int = typer.Option(..., "--n", help="Number of spectra."),
    seed: int = typer.Option(0, "--seed", help="Sample seed."),
    z_min: float = typer.Option(0.0, "--z-min", help="Lowest redshift."),
    z_max: float = typer.Option(1.0, "--z-max", help="Highest redshift."),
    snr: float = typer.Option(20.0, "--snr", help="S/N per pixel at the median flux."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store at OUT."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Simulate galaxy spectra: CWW template mixtures with emission lines, redshifted, noisy."""
    import time

    from deepfield.data.spectra import simulate_spectra

    start = time.perf_counter()
    store = simulate_spectra(out, n, seed=seed, z_range=(z_min, z_max), snr=snr,
                             overwrite=overwrite, progress=progress)
    elapsed = time.perf_counter() - start
    wl = store.wavelength
    typer.echo(str(store.path))
    console.print(
        f"{len(store)} spectra, {wl.size} pixels {wl[0]:.0f}-{wl[-1]:.0f} A, z {z_min}-{z_max}, "
        f"S/N {snr:g}, in {elapsed:.1f} s; fingerprint {store.fingerprint[:12]}", highlight=False)


def _median(values):
    import numpy as np

    return np.median(values)
