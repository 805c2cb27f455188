"""Simulated galaxy spectra: mixtures of the CWW templates with emission lines, into a store.

Units, stated once: wavelengths in Angstrom (air), equivalent widths in Angstrom in the rest
frame, velocity dispersions in km/s. Spectra are flux densities f_lambda, each normalised to a
unit median over the observed grid (so they carry shape, not brightness).

What the store holds (N spectra, L wavelengths):

- ``x`` (N, L): the noisy spectrum;
- ``truth`` (N, L): the noiseless spectrum;
- ``ivar`` (N, L): 1 / variance per pixel. The noise is Gaussian with variance proportional to
  the source plus a sky as bright as the median source, ``sigma**2 = (truth + 1) / (2 snr**2)``,
  so ``snr`` is the S/N per pixel at the median flux;
- ``meta['wavelength']``: the observed wavelength grid (pixel centres, Angstrom).

Catalog columns (unit): ``id``; ``redshift``; ``weight_<template>`` for E, Sbc, Scd, Im
(positive, summing to 1); ``ew_<line>`` (Angstrom, rest frame) for oii_3727, hbeta, oiii_4959,
oiii_5007, halpha, nii_6584; ``velocity_dispersion`` (km/s); ``snr``.

Each spectrum is a Dirichlet mixture of the four CWW templates in the rest frame (each template
normalised to unit mean f_lambda over 4500-5500 A), plus Gaussian emission lines (H-alpha,
H-beta, [OIII] 5007/4959, [OII] 3727, [NII] 6584) whose strength grows with the weight of the
later-type templates, broadened by the galaxy's velocity dispersion and an R = 2000
spectrograph, redshifted, integrated over the observed pixels, and normalised.

Example:
    >>> import tempfile, os
    >>> from deepfield.data.spectra import simulate_spectra
    >>> path = os.path.join(tempfile.mkdtemp(), "spec")
    >>> store = simulate_spectra(path, 8, seed=1, progress=False)
    >>> store.kind, store.sample_shape, float(store.wavelength[0])
    ('spectrum', (2000,), 3600.0)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np

from deepfield.errors import InputError
from deepfield.progress import progress_task

__all__ = ["EMISSION_LINES", "TEMPLATES", "catalog_units", "default_wavelength", "simulate_spectra"]

#: Rest-frame air wavelengths (Angstrom) of the emission lines, by catalog name.
EMISSION_LINES = {
    "oii_3727": 3727.09,
    "hbeta": 4861.33,
    "oiii_4959": 4958.91,
    "oiii_5007": 5006.84,
    "halpha": 6562.80,
    "nii_6584": 6583.45,
}
#: CWW templates mixed into each spectrum, from early to late type.
TEMPLATES = ("E", "Sbc", "Scd", "Im")

_C_KMS = 299792.458
_RESOLUTION = 2000.0  # spectrograph resolving power lambda / FWHM
_BLOCK = 1024  # spectra are drawn in blocks of this many, seeded by (seed, block)
_TEMPLATE_RANGE = (91.0, 22050.0)  # rest wavelengths the CWW (extended) templates cover


def default_wavelength() -> np.ndarray:
    """The default observed grid: 2000 points log-spaced from 3600 to 9000 Angstrom
    (137 km/s per pixel)."""
    return np.geomspace(3600.0, 9000.0, 2000)


@functools.lru_cache(maxsize=1)
def _templates() -> tuple[np.ndarray, ...]:
    """(wavelength, flux) tables of the CWW templates, each normalised to unit mean f_lambda
    over rest 4500-5500 Angstrom."""
    import galsim.meta_data

    out = []
    for name in TEMPLATES:
        table = np.loadtxt(os.path.join(galsim.meta_data.share_dir, "SEDs", f"CWW_{name}_ext.sed"))
        wave, flux = table[:, 0], table[:, 1]
        window = np.linspace(4500.0, 5500.0, 201)
        out.append((wave, flux / np.interp(window, wave, flux).mean()))
    return tuple(out)


def _pixel_edges(wavelength: np.ndarray) -> np.ndarray:
    mid = 0.5 * (wavelength[1:] + wavelength[:-1])
    return np.concatenate([[2 * wavelength[0] - mid[0]], mid, [2 * wavelength[-1] - mid[-1]]])


def _check_wavelength(wavelength) -> np.ndarray:
    if wavelength is None:
        return default_wavelength()
    wavelength = np.asarray(wavelength, dtype=np.float64)
    if wavelength.ndim != 1 or wavelength.size < 16:
        raise InputError(f"wavelength grid has shape {wavelength.shape}; give a 1-D grid of at "
                         "least 16 wavelengths in Angstrom")
    if not np.all(np.isfinite(wavelength)) or np.any(wavelength <= 0) or np.any(np.diff(wavelength) <= 0):
        raise InputError("wavelength grid must be positive, finite and strictly increasing (Angstrom)")
    return wavelength


def _draw_block(seed: int, block: int, wavelength: np.ndarray, z_range: tuple[float, float],
                snr_range: tuple[float, float]) -> dict[str, np.ndarray]:
    """Spectra block*_BLOCK ... (block+1)*_BLOCK - 1 and their catalog, from RNG (seed, block)."""
    from scipy.special import erf

    rng = np.random.default_rng([seed, block])
    n, L = _BLOCK, wavelength.size
    redshift = rng.uniform(z_range[0], z_range[1], n)
    weights = rng.dirichlet(np.full(len(TEMPLATES), 0.6), n)  # (n, T), positive, sum to 1
    lateness = weights @ np.linspace(0.0, 1.0, len(TEMPLATES))  # 0: pure E, 1: pure Im
    # emission lines: H-alpha equivalent width grows with lateness; the rest by line ratios
    ew_halpha = lateness * np.exp(rng.normal(np.log(40.0), 0.5, n))
    balmer_decrement = rng.uniform(2.86, 5.0, n)  # H-alpha / H-beta, case B (2.86) plus dust
    ratios = {
        "halpha": np.ones(n),
        "hbeta": 1.0 / balmer_decrement,
        "nii_6584": rng.uniform(0.1, 0.5, n),
        "oiii_5007": 10 ** rng.uniform(-0.5, 0.7, n) / balmer_decrement,
        "oii_3727": rng.uniform(1.0, 3.0, n) / balmer_decrement,
    }
    ratios["oiii_4959"] = ratios["oiii_5007"] / 2.98
    velocity_dispersion = rng.uniform(50.0, 200.0, n)
    snr = np.exp(rng.uniform(np.log(snr_range[0]), np.log(snr_range[1]), n))

    # continuum: the template mixture at the rest wavelengths of the observed pixels
    one_plus_z = 1.0 + redshift
    rest = wavelength[None, :] / one_plus_z[:, None]
    continuum = np.zeros((n, L))
    templates = _templates()
    for t, (wave, flux) in enumerate(templates):
        continuum += weights[:, t:t + 1] * np.interp(rest, wave, flux)
    continuum /= one_plus_z[:, None]  # f_lambda per observed Angstrom

    def rest_continuum(line_wave: float) -> np.ndarray:
        return sum(weights[:, t] * np.interp(line_wave, wave, flux)
                   for t, (wave, flux) in enumerate(templates))

    # line fluxes (in rest-frame continuum units x Angstrom) and rest equivalent widths
    line_flux = {"halpha": ew_halpha * rest_continuum(EMISSION_LINES["halpha"])}
    for name in EMISSION_LINES:
        if name != "halpha":
            line_flux[name] = ratios[name] * line_flux["halpha"]
    ew = {name: line_flux[name] / rest_continuum(EMISSION_LINES[name]) for name in EMISSION_LINES}

    # lines in the observed frame, integrated over each pixel: erf differences at pixel edges
    edges = _pixel_edges(wavelength)
    width = np.diff(edges)
    sigma_v = np.sqrt(velocity_dispersion**2 + (_C_KMS / (2.3548 * _RESOLUTION)) ** 2)
    spectrum = continuum
    rows = np.arange(n)[:, None]
    for name, rest_wave in EMISSION_LINES.items():
        centre = rest_wave * one_plus_z
        sigma = centre * sigma_v / _C_KMS
        lo = np.searchsorted(edges, centre - 6 * sigma) - 1
        hi = np.searchsorted(edges, centre + 6 * sigma)
        span = int(np.max(hi - lo)) + 1
        idx = np.clip(lo[:, None] + np.arange(span)[None, :], 0, L)  # edge indices
        cdf = 0.5 * erf((edges[idx] - centre[:, None]) / (np.sqrt(2) * sigma[:, None]))
        mass = line_flux[name][:, None] * np.diff(cdf, axis=1)  # flux in pixel idx[:, :-1]
        pix = np.clip(idx[:, :-1], 0, L - 1)
        np.add.at(spectrum, (np.broadcast_to(rows, pix.shape), pix), mass / width[pix])
    truth = spectrum / np.median(spectrum, axis=1, keepdims=True)
    variance = (np.clip(truth, 0.0, None) + 1.0) / (2.0 * snr[:, None] ** 2)
    x = truth + np.sqrt(variance) * rng.standard_normal((n, L))
    catalog: dict[str, np.ndarray] = {"id": np.arange(block * n, (block + 1) * n, dtype=np.int64),
                                      "redshift": redshift}
    for t, name in enumerate(TEMPLATES):
        catalog[f"weight_{name}"] = weights[:, t]
    for name in EMISSION_LINES:
        catalog[f"ew_{name}"] = ew[name]
    catalog["velocity_dispersion"] = velocity_dispersion
    catalog["snr"] = snr
    return {"x": x, "truth": truth, "ivar": 1.0 / variance, "catalog": catalog}


def catalog_units() -> dict[str, str]:
    """Units of the catalog columns written by :func:`simulate_spectra`."""
    units = {f"ew_{name}": "Angstrom" for name in EMISSION_LINES}
    units["velocity_dispersion"] = "km/s"
    return units


def _range(value, name: str, lo_limit: float) -> tuple[float, float]:
    pair = (value, value) if np.isscalar(value) else tuple(value)
    if len(pair) != 2:
        raise InputError(f"{name}={value!r}: give one number or a (low, high) pair")
    lo, hi = float(pair[0]), float(pair[1])
    if not (np.isfinite(lo) and np.isfinite(hi) and lo_limit <= lo <= hi):
        raise InputError(f"{name}={value!r}: need {lo_limit} <= low <= high")
    return lo, hi


def simulate_spectra(
    out: str | os.PathLike,
    n: int,
    *,
    seed: int = 0,
    wavelength: Sequence[float] | np.ndarray | None = None,
    z_range: tuple[float, float] = (0.0, 1.0),
    snr: float | tuple[float, float] = 20.0,
    overwrite: bool = False,
    progress: bool = True,
):
    """Simulate `n` galaxy spectra and write them to a store at `out` (kind "spectrum").

    Arguments:
        out: store directory to create.
        n: number of spectra.
        seed: sample seed (non-negative); spectrum i depends only on (seed, i) and the settings.
        wavelength: observed wavelength grid in Angstrom (pixel centres), default
            :func:`default_wavelength` (3600-9000 A, 2000 log-spaced points).
        z_range: redshifts are uniform in this range.
        snr: S/N per pixel at the median flux: one value, or a (low, high) range drawn
            log-uniformly per spectrum.
        overwrite: replace an existing store at `out`.
        progress: show a progress bar (stderr).

    Returns:
        The committed :class:`~deepfield.data.store.Store`.

    References:
        Coleman, Wu & Weedman (1980), ApJS 43, 393 (CWW templates).
        Osterbrock & Ferland (2006), Astrophysics of Gaseous Nebulae (case B H-alpha/H-beta 2.86).
    """
    n, seed = int(n), int(seed)
    if n < 1:
        raise InputError(f"n={n}: simulate at least one spectrum (--n 1 or more)")
    if seed < 0:
        raise InputError(f"seed={seed}: use a non-negative integer seed")
    wavelength = _check_wavelength(wavelength)
    z_lo, z_hi = _range(z_range, "z_range", 0.0)
    snr_lo, snr_hi = _range(snr, "snr", 1e-6)
    if snr_lo <= 0:
        raise InputError(f"snr={snr!r}: the S/N must be positive")
    if wavelength[0] / (1 + z_hi) < _TEMPLATE_RANGE[0] or wavelength[-1] / (1 + z_lo) > _TEMPLATE_RANGE[1]:
        raise InputError(
            f"the grid {wavelength[0]:.0f}-{wavelength[-1]:.0f} A at redshifts {z_lo}-{z_hi} needs "
            f"rest wavelengths outside the templates' {_TEMPLATE_RANGE[0]:.0f}-"
            f"{_TEMPLATE_RANGE[1]:.0f} A; narrow the grid or the redshift range")
    from deepfield.data.store import create_store

    L = wavelength.size
    parameters = {"n": n, "seed": seed, "z_range": [z_lo, z_hi], "snr": [snr_lo, snr_hi],
                  "wavelength": [float(wavelength[0]), float(wavelength[-1]), L]}
    provenance = {"simulator": "deepfield.data.spectra.simulate_spectra", "parameters": parameters,
                  "seed": seed, "numpy_version": np.__version__}
    conventions = {
        "wavelength_unit": "Angstrom (air), pixel centres", "flux": "f_lambda / median",
        "noise": "Gaussian, variance (truth + 1) / (2 snr^2)", "resolution": _RESOLUTION,
        "emission_lines": EMISSION_LINES,
    }
    writer = create_store(out, (L,), kind="spectrum", wavelength=wavelength,
                          arrays={"ivar": (L,), "truth": (L,)}, units=catalog_units(),
                          provenance=provenance, extra_meta=conventions, overwrite=overwrite)
    bar, task = progress_task(progress, n, "spectra")
    with writer, bar:
        for block in range(0, (n + _BLOCK - 1) // _BLOCK):
            part = _draw_block(seed, block, wavelength, (z_lo, z_hi), (snr_lo, snr_hi))
            keep = min(_BLOCK, n - block * _BLOCK)
            catalog = {k: v[:keep] for k, v in part["catalog"].items()}
            writer.append(x=part["x"][:keep], catalog=catalog, ivar=part["ivar"][:keep],
                          truth=part["truth"][:keep])
            bar.advance(task, keep)
    return writer.store
