"""Simulated galaxy surveys: GalSim bulge + disk galaxies, per-object PSFs and noise, into a store.

Units, stated once:

- angles (pixel scale, half-light radii, PSF FWHM) in arcsec; wavelengths in nm;
- images in counts at an AB zeropoint of 30: a source of AB magnitude ``m`` has a total flux of
  ``10**(-0.4 * (m - 30))`` counts. Images are sky-subtracted;
- ``noise_sigma`` in counts per pixel; ``ivar`` in counts**-2 per pixel.

What the store holds (N objects, C bands, H = W = ``size``; galaxies centred on pixel
``(size // 2, size // 2)``, rows are y):

- ``x`` (N, C, H, W): the galaxy convolved with the PSF and integrated over pixels, plus noise;
- ``truth`` (N, C, H, W): the noiseless, PSF-free galaxy *integrated over each pixel* (GalSim's
  ``method='auto'`` convention, not ``'no_pixel'``: point samples of a Sersic n >= 2 cusp are not
  a usable image, the centre pixel alone can hold many times the total flux). Its sum over the
  stamp is the catalog flux less what falls off the stamp;
- ``psf`` (N, C, 25, 25): the PSF sampled at pixel centres (``method='no_pixel'``), unit sum, so
  that ``x ~= truth (*) psf + noise`` (discrete convolution);
- ``ivar`` (N, C, H, W): ``1 / noise_sigma**2``, constant over a stamp.

Catalog columns (unit): ``id``; ``magnitude`` (mag, AB, reference band r or else the first
band); ``flux_<band>`` (counts); ``half_light_radius``, ``bulge_half_light_radius``,
``disk_half_light_radius`` (arcsec); ``bulge_fraction`` (of the reference-band flux);
``sersic_n`` (bulge); ``e1``, ``e2`` (intrinsic shear-type ellipticity); ``redshift``;
``sed_type`` (CWW template of the disk; bulges are E); ``psf_fwhm`` and ``psf_fwhm_<band>``
(arcsec); ``psf_g1``, ``psf_g2``; ``noise_sigma`` and ``noise_sigma_<band>`` (counts/pixel);
``snr`` and ``snr_<band>`` (optimal S/N, sqrt(sum(noiseless x^2)) / noise_sigma). Unsuffixed
band quantities are those of the reference band.

The observed image is drawn through GalSim's k-space machinery with the FFT size, k range and
folding GalSim's ``drawFFT`` picks for a stamp centred on the object (it matches ``drawImage``
to ~1e-4 of the peak); the bulge and disk k-images are drawn once and combined per band. The truth image uses GalSim's real-space profiles, integrated
over pixels by midpoint sub-sampling (2x2 in the central 25x25 pixels, 4x4 in the central 9x9,
one sample per pixel further out where the profile is smooth) and, for the 5x5 pixels around
the cusp, by exact enclosed-flux integrals along rays; it matches a GalSim real-space pixel
convolution to <~1% of the peak and the flux to ~0.1%.

Noise twins: :func:`redraw_noise` (``deepfield simulate galaxies OUT --like STORE --noise-seed K``)
writes the same galaxies, PSFs, truth and catalog under an independent noise draw of the same
``noise_sigma``, for measuring what codes, denoisers or scores do with the noise alone.

Example:
    >>> import tempfile, os
    >>> from deepfield.data.galaxies import simulate_galaxies
    >>> path = os.path.join(tempfile.mkdtemp(), "gal")
    >>> store = simulate_galaxies(path, 4, size=32, bands=("g", "r"), seed=1, progress=False)
    >>> store.sample_shape, store.units["half_light_radius"]
    ((2, 32, 32), 'arcsec')
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from deepfield.data.galaxies.parameters import (_BRIGHT_MAG, BANDS, ZEROPOINT, GalaxyParameters,
                                               _check_bands, _check_noise_seed, _reference_band,
                                               catalog_units, galaxy_parameters)
# re-exported from where they lived before the split (tests and benchmarks import them here)
from deepfield.data.galaxies.parameters import (_TEMPLATES, _Z_GRID, SKY_MAGNITUDE,  # noqa: F401
                                               _colour_table)
from deepfield.data.galaxies.pool import _made_batches
from deepfield.data.galaxies.rendering import _PSF_STAMP
from deepfield.data.galaxies.twins import redraw_noise
from deepfield.errors import InputError
from deepfield.progress import progress_task

__all__ = [
    "BANDS",
    "ZEROPOINT",
    "GalaxyParameters",
    "catalog_units",
    "galaxy_parameters",
    "redraw_noise",
    "simulate_galaxies",
]


def simulate_galaxies(
    out: str | os.PathLike,
    n: int,
    *,
    size: int = 64,
    bands: Sequence[str] | str = ("r",),
    pixel_scale: float = 0.2,
    seed: int = 0,
    workers: int = 1,
    depth: float = 25.3,
    psf: str = "moffat",
    correlated_noise: bool = False,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    batch: int = 256,
    morphology: str = "parametric",
    cosmos: str | os.PathLike | None = None,
    cosmos_dir: str | os.PathLike | None = None,
    shear: tuple[float, float] | None = None,
    noise_seed: int | None = None,
):
    """Simulate `n` bulge + disk galaxy stamps with GalSim and write them to a store at `out`.

    Galaxies: magnitudes follow number counts dN/dm ~ 10^(0.33 m) from 18 to `depth` (AB,
    reference band r, or the first band); half-light radius 0.6" at m = 22 shrinking by 0.1 dex
    per magnitude with 0.15 dex scatter; bulge fraction from a disk-dominated (70%) and a bulge-
    dominated (30%) Beta distribution; de Vaucouleurs-like Sersic bulges (n in 1.5-5 on a 0.5
    grid) with half-light radius 0.2-0.6 of the exponential disk's; intrinsic ellipticity with
    Gaussian components of width 0.25, |e| < 0.9, random orientation; redshift from
    p(z) ~ z^2 exp(-z / z0(m)); colours from the CWW E template (bulge) and Sbc/Scd/Im (disk),
    redshifted, through the LSST bandpasses. PSF: Moffat (beta 3, truncated at 5 FWHM) or
    Kolmogorov, FWHM 0.6-1.0" in the reference band scaling as wavelength^-0.2, |g| < 0.05.
    Noise: Gaussian, background-limited, from the LSST dark sky (+-0.15 mag per object), scaled
    so a point source at `depth` has S/N 10 in 0.8" seeing; with `correlated_noise`, white noise
    filtered by GalSim's COSMOS correlation function (rescaled to this pixel scale and the same
    variance). Module docstring: units and what each array holds.

    Every object is seeded by (seed, index), so the store is bit-identical for any `workers`
    and `batch`, and an interrupted write finished with ``resume=True`` equals an
    uninterrupted one. Workers are spawned (never forked: GalSim's OpenMP deadlocks in forked
    children), so a script calling this with ``workers > 1`` needs the usual
    ``if __name__ == "__main__":`` guard.

    Arguments:
        out: store directory to create.
        n: number of galaxies.
        size: stamp side in pixels (>= 8).
        bands: LSST band names, e.g. ("g", "r", "i") or "g,r,i".
        pixel_scale: arcsec per pixel.
        seed: sample seed (non-negative).
        workers: processes drawing stamps (spawned; 1 draws in this process).
        depth: faint magnitude limit in the reference band.
        psf: "moffat" or "kolmogorov".
        correlated_noise: COSMOS-correlated instead of white noise.
        overwrite: replace an existing store at `out`.
        resume: finish an interrupted write of the same simulation at `out`.
        progress: show a progress bar (stderr).
        batch: objects per batch handed to a worker and appended to the store.
        morphology: "parametric" (bulge + disk, above) or "cosmos": real HST galaxies from the
            RealGalaxyCatalog `cosmos`, drawn through each object's PSF, pixel scale and noise
            with random rotations (GalSim's RealGalaxy and noise whitening; see
            :mod:`deepfield.data.galaxies.real` for what such a store holds: no ``truth``).
        cosmos: the RealGalaxyCatalog FITS file (``morphology="cosmos"`` only).
        cosmos_dir: folder of its image files (default: the catalog's folder).
        shear: a constant reduced shear (g1, g2) applied to every real galaxy (``"cosmos"``).
        noise_seed: None draws each object's noise from the seed drawn with its catalog row;
            an integer draws it from (seed, noise_seed, index) instead (parametric only): the
            same galaxies, PSFs and noise levels under independent noise. :func:`redraw_noise`
            makes such a noise twin of an existing store without drawing the galaxies again.

    Returns:
        The committed :class:`~deepfield.data.store.Store`.

    References:
        Coleman, Wu & Weedman (1980), ApJS 43, 393 (CWW templates).
        LSST Science Book (2009), arXiv:0912.0201, eq. 3.8 (p(z) of a magnitude-limited sample).
        Ivezic et al. (2019), ApJ 873, 111, arXiv:0805.2366 (LSST sky brightness, bandpasses).
        Rowe et al. (2015), GalSim, arXiv:1407.7676.
    """
    bands = _check_bands(bands)
    n, size, workers, batch, seed = int(n), int(size), int(workers), int(batch), int(seed)
    if n < 1:
        raise InputError(f"n={n}: simulate at least one galaxy (--n 1 or more)")
    if size < 8:
        raise InputError(f"size={size} pixels is too small for a galaxy stamp; use --size 8 or more")
    if workers < 1:
        raise InputError(f"workers={workers}: use --workers 1 or more")
    if batch < 1:
        raise InputError(f"batch={batch}: use a batch of 1 or more objects")
    if seed < 0:
        raise InputError(f"seed={seed}: use a non-negative integer seed")
    noise_seed = _check_noise_seed(noise_seed)
    if not pixel_scale > 0:
        raise InputError(f"pixel_scale={pixel_scale}: give a positive scale in arcsec/pixel")
    if not _BRIGHT_MAG + 0.5 <= depth <= 32.0:
        raise InputError(f"depth={depth}: the faint limit must lie between "
                         f"{_BRIGHT_MAG + 0.5} and 32 mag (the sample starts at {_BRIGHT_MAG})")
    psf = str(psf).lower()
    if psf not in ("moffat", "kolmogorov"):
        raise InputError(f"psf={psf!r}: choose 'moffat' or 'kolmogorov'")
    morphology = str(morphology).lower()
    if morphology not in ("parametric", "cosmos"):
        raise InputError(f"morphology={morphology!r}: choose 'parametric' (bulge + disk) or 'cosmos' "
                         "(real galaxies from a RealGalaxyCatalog, --cosmos CATALOG)")
    from importlib.metadata import version

    from deepfield.data.store import create_store

    galsim_version = version("galsim")  # without importing it: workers do the drawing
    C = len(bands)
    ref = _reference_band(bands)
    parameters = {"n": n, "size": size, "bands": list(bands), "pixel_scale": float(pixel_scale),
                  "seed": seed, "depth": float(depth), "psf": psf,
                  "correlated_noise": bool(correlated_noise)}
    provenance = {"simulator": "deepfield.data.galaxies.simulate_galaxies",
                  "parameters": parameters, "seed": seed, "galsim_version": galsim_version,
                  "numpy_version": np.__version__}
    survey = {"bands": bands, "depth": float(depth), "pixel_scale": float(pixel_scale), "seed": seed}
    if noise_seed is not None:  # only then: stores simulated before noise seeds existed keep their provenance
        parameters["noise_seed"] = survey["noise_seed"] = noise_seed
    render = {"size": size, "pixel_scale": float(pixel_scale), "n_bands": C, "psf": psf,
              "correlated_noise": bool(correlated_noise)}
    if morphology == "cosmos":
        if noise_seed is not None:
            raise InputError("noise_seed applies to parametric galaxies; a real galaxy's noise includes its "
                             "whitened HST noise, which cannot be drawn again on its own")
        return _simulate_real(out, n, bands, size, pixel_scale, seed, workers, psf, correlated_noise,
                              overwrite, resume, progress, batch, cosmos, cosmos_dir, shear, survey,
                              render, provenance)
    if cosmos is not None or shear is not None:
        raise InputError("cosmos= and shear= apply to morphology='cosmos' (--morphology cosmos)")
    conventions = {
        "flux_unit": "counts", "zeropoint_ab": ZEROPOINT, "reference_band": ref,
        "centre_pixel": [size // 2, size // 2],
        "x": "galaxy (*) PSF (*) pixel + noise",
        "truth": "galaxy (*) pixel, noiseless (GalSim method='auto' convention)",
        "psf": "PSF sampled at pixel centres (method='no_pixel'), unit sum; x ~= truth (*) psf",
        "ivar": "1 / noise_sigma**2 per pixel",
        "noise": "COSMOS-correlated Gaussian" if correlated_noise else "white Gaussian",
    }
    writer = create_store(
        out, (C, size, size), kind="image", bands=bands, pixel_scale=float(pixel_scale),
        arrays={"psf": (C, _PSF_STAMP, _PSF_STAMP), "ivar": (C, size, size),
                "truth": (C, size, size)},
        units=catalog_units(bands), provenance=provenance, extra_meta=conventions,
        overwrite=overwrite, resume=resume)
    start = writer.n_written
    batches = [(lo, min(lo + batch, n)) for lo in range(start, n, batch)]
    bar, task = progress_task(progress, n, "galaxies", completed=start)
    with writer, bar:
        for catalog, arrays in _made_batches(batches, survey, render,
                                             min(workers, max(len(batches), 1))):
            # ivar is constant over a stamp: built here rather than shipped from the workers
            sigma = np.stack([catalog[f"noise_sigma_{b}"] for b in bands], axis=1)
            ivar = np.broadcast_to((1.0 / sigma**2).astype(np.float32)[:, :, None, None],
                                   arrays["x"].shape)
            writer.append(x=arrays["x"], catalog=catalog, psf=arrays["psf"], ivar=ivar,
                          truth=arrays["truth"])
            bar.advance(task, len(catalog["id"]))
    return writer.store


def _simulate_real(out, n, bands, size, pixel_scale, seed, workers, psf, correlated_noise, overwrite,
                   resume, progress, batch, cosmos, cosmos_dir, shear, survey, render, provenance):
    """simulate_galaxies(morphology="cosmos"): real galaxies through the survey (see .real)."""
    from pathlib import Path

    from deepfield.data.galaxies.pool import ordered_batches
    from deepfield.data.galaxies.real import RealGalaxyMaker, real_catalog_units
    from deepfield.data.importers._common import file_record
    from deepfield.data.importers.cosmos import CatalogBand, check_catalog_band
    from deepfield.data.store import create_store

    if cosmos is None:
        raise InputError("morphology='cosmos' draws real galaxies from a GalSim RealGalaxyCatalog: "
                         "pass cosmos=CATALOG (--cosmos CATALOG, e.g. real_galaxy_catalog_25.2.fits)")
    if correlated_noise:
        raise InputError("correlated_noise applies to parametric galaxies; real galaxies get white "
                         "noise after GalSim's noise whitening")
    if shear is not None:
        shear = tuple(float(g) for g in shear)
        if len(shear) != 2 or not np.hypot(*shear) < 1:
            raise InputError(f"shear={shear}: give a reduced shear (g1, g2) with |g| < 1")
    path = Path(cosmos)
    if not path.is_file():
        raise InputError(f"no such RealGalaxyCatalog: {path}; check the path (--cosmos)")
    cosmos_dir = None if cosmos_dir is None else str(Path(cosmos_dir))
    band = CatalogBand(path, cosmos_dir)  # the same named errors as `deepfield import cosmos`
    check_catalog_band(band)
    provenance["parameters"].update(morphology="cosmos", cosmos=str(path.resolve()),
                                    cosmos_dir=None if cosmos_dir is None else str(Path(cosmos_dir).resolve()),
                                    shear=None if shear is None else list(shear))
    provenance["cosmos_file"] = file_record(path)
    C = len(bands)
    conventions = {
        "flux_unit": "counts", "zeropoint_ab": ZEROPOINT, "reference_band": _reference_band(bands),
        "centre_pixel": [size // 2, size // 2],
        "morphology": f"real HST galaxies ({band.band}) from {path.name}, deconvolved by their HST PSF, "
                      "randomly rotated; the same AB magnitude in every band (no colours)",
        "x": "real galaxy (*) PSF (*) pixel + whitened HST noise + Gaussian noise",
        "psf": "PSF sampled at pixel centres (method='no_pixel'), unit sum",
        "ivar": "1 / noise_sigma**2 per pixel (the larger of the survey noise and the whitened HST noise)",
        "noise": "white Gaussian after GalSim's noise whitening",
    }
    render = dict(render, shear=shear)
    writer = create_store(
        out, (C, size, size), kind="image", bands=bands, pixel_scale=float(pixel_scale),
        arrays={"psf": (C, _PSF_STAMP, _PSF_STAMP), "ivar": (C, size, size)},
        units=real_catalog_units(bands), provenance=provenance, extra_meta=conventions,
        overwrite=overwrite, resume=resume)
    start = writer.n_written
    batches = [(lo, min(lo + batch, n)) for lo in range(start, n, batch)]
    spec = {"catalog": str(path), "dir": cosmos_dir}
    bar, task = progress_task(progress, n, "galaxies", completed=start)
    with writer, bar:
        for catalog, arrays in ordered_batches(RealGalaxyMaker, (survey, render, spec), batches,
                                               min(workers, max(len(batches), 1))):
            sigma = np.stack([catalog[f"noise_sigma_{b}"] for b in bands], axis=1)
            ivar = np.broadcast_to((1.0 / sigma**2).astype(np.float32)[:, :, None, None],
                                   arrays["x"].shape)
            writer.append(x=arrays["x"], catalog=catalog, psf=arrays["psf"], ivar=ivar)
            bar.advance(task, len(catalog["id"]))
    return writer.store
