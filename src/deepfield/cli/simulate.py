"""`deepfield simulate galaxies|spectra`: simulate survey data into a store.

Thin: parse options, call :func:`deepfield.data.galaxies.simulate_galaxies` (or, with --like,
:func:`deepfield.data.galaxies.redraw_noise`) or :func:`deepfield.data.spectra.simulate_spectra`,
print where the store is and a summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from deepfield.cli._app import console, simulate_app

__all__ = ["galaxies", "spectra"]


@simulate_app.command()
def galaxies(
    out: Path = typer.Argument(..., help="Store directory to create."),
    n: Optional[int] = typer.Option(None, "--n", help="Number of galaxies (not with --like)."),
    size: int = typer.Option(64, "--size", help="Stamp side in pixels (>= 8)."),
    bands: str = typer.Option("r", "--bands", help="Comma-separated LSST bands, e.g. g,r,i."),
    seed: int = typer.Option(0, "--seed", help="Sample seed."),
    workers: int = typer.Option(1, "--workers", help="Processes drawing stamps."),
    pixel_scale: float = typer.Option(0.2, "--pixel-scale", help="Arcsec per pixel."),
    depth: float = typer.Option(25.3, "--depth", help="Faint magnitude limit (reference band)."),
    psf: str = typer.Option("moffat", "--psf", help="PSF profile: moffat or kolmogorov."),
    correlated_noise: bool = typer.Option(False, "--correlated-noise",
                                          help="COSMOS-correlated instead of white noise."),
    morphology: str = typer.Option("parametric", "--morphology", help="parametric (bulge + disk) or "
                                   "cosmos (real HST galaxies from --cosmos)."),
    cosmos: Optional[Path] = typer.Option(None, "--cosmos", help="GalSim RealGalaxyCatalog of the real "
                                          "galaxies (--morphology cosmos)."),
    cosmos_dir: Optional[Path] = typer.Option(None, "--cosmos-dir", help="Folder of its image files "
                                              "(default: the catalog's folder)."),
    shear: Optional[str] = typer.Option(None, "--shear", help="Constant reduced shear g1,g2 applied to "
                                        "real galaxies."),
    noise_seed: Optional[int] = typer.Option(None, "--noise-seed", help="Draw each object's noise from this "
                                             "seed instead of its catalog row's: with --like STORE, a noise twin of "
                                             "STORE (the same galaxies under independent noise)."),
    like: Optional[Path] = typer.Option(None, "--like", help="A simulated store whose galaxies, PSFs, truth and "
                                        "catalog OUT copies, with the noise drawn again from --noise-seed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store at OUT."),
    resume: bool = typer.Option(False, "--resume", help="Finish an interrupted write at OUT."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Simulate galaxy stamps with GalSim: bulge + disk (x, truth, psf, ivar, catalog), or real
    COSMOS morphologies seen through the survey (--morphology cosmos). With --like STORE
    --noise-seed K: a noise twin of STORE."""
    import time

    from deepfield._names import comma_list
    from deepfield.data.galaxies import redraw_noise, simulate_galaxies
    from deepfield.errors import InputError

    if like is not None:
        # the twin's galaxies are STORE's: any option that would draw other galaxies contradicts --like
        given = [flag for flag, value, default in (
            ("--n", n, None), ("--size", size, 64), ("--bands", bands, "r"), ("--seed", seed, 0),
            ("--pixel-scale", pixel_scale, 0.2), ("--depth", depth, 25.3), ("--psf", psf, "moffat"),
            ("--correlated-noise", correlated_noise, False), ("--morphology", morphology, "parametric"),
            ("--cosmos", cosmos, None), ("--cosmos-dir", cosmos_dir, None), ("--shear", shear, None),
            ("--resume", resume, False)) if value != default]
        if given:
            raise InputError(f"--like {like} copies that store's galaxies, so {', '.join(given)} cannot apply: "
                             "drop them (only --noise-seed, --overwrite and --progress go with --like)")
        if noise_seed is None:
            raise InputError(f"--like {like} makes a noise twin: pass its noise seed, e.g. --noise-seed 7")
        start = time.perf_counter()
        store = redraw_noise(like, out, noise_seed=noise_seed, overwrite=overwrite, progress=progress)
        typer.echo(str(store.path))
        console.print(f"{len(store)} galaxies of {like} under noise seed {noise_seed}, in "
                      f"{time.perf_counter() - start:.1f} s; fingerprint {store.fingerprint[:12]}", highlight=False)
        return
    if n is None:
        raise InputError("pass the number of galaxies, e.g. --n 1000 (or --like STORE --noise-seed K for a "
                         "noise twin of STORE)")

    sheared = None
    if shear is not None:
        try:
            sheared = tuple(float(g) for g in comma_list(shear))
        except ValueError:
            sheared = ()
        if len(sheared) != 2:
            raise InputError(f"--shear {shear!r}: give two numbers g1,g2, e.g. --shear 0.02,-0.01")
    start = time.perf_counter()
    store = simulate_galaxies(out, n, size=size, bands=bands, pixel_scale=pixel_scale, seed=seed,
                              workers=workers, depth=depth, psf=psf,
                              correlated_noise=correlated_noise, overwrite=overwrite,
                              resume=resume, progress=progress, morphology=morphology,
                              cosmos=cosmos, cosmos_dir=cosmos_dir, shear=sheared, noise_seed=noise_seed)
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
