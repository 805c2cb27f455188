"""Catalog parameters of the simulated galaxy sample: magnitudes, redshifts, sizes, bulge + disk
mixtures, colours through the LSST bandpasses, PSF and noise per object (units: see the package
docstring). Object i depends only on (seed, i)."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np

from deepfield._names import comma_list
from deepfield.errors import InputError

__all__ = ["BANDS", "ZEROPOINT", "SKY_MAGNITUDE", "GalaxyParameters", "catalog_units", "galaxy_parameters"]

#: Bands with a bundled GalSim bandpass (LSST total throughput at airmass 1.2).
BANDS = ("u", "g", "r", "i", "z", "y")
#: AB magnitude of one count.
ZEROPOINT = 30.0
#: Dark-sky brightness, AB mag/arcsec^2 (LSST; Ivezic et al. 2019, Table 2).
SKY_MAGNITUDE = {"u": 22.99, "g": 22.26, "r": 21.20, "i": 20.48, "z": 19.60, "y": 18.61}

_BRIGHT_MAG = 18.0  # bright limit of the sample (reference band)
_COUNT_SLOPE = 0.33  # dN/dm ~ 10**(0.33 m)
_DEPTH_SNR = 10.0  # a point source at `depth` has this optimal S/N in median conditions
_MEDIAN_SEEING = 0.8  # arcsec FWHM, for the depth -> noise calibration
_SERSIC_STEP = 0.5  # bulge indices are drawn on this grid (GalSim caches one table per index)
_SERSIC_RANGE = (1.5, 5.0)
_TEMPLATES = ("E", "Sbc", "Scd", "Im")  # CWW templates: bulges are E, disks one of the others
_Z_GRID = np.round(np.arange(0.0, 4.0 + 1e-9, 0.01), 2)
_Z_MAX = 3.5
_BLOCK = 4096  # catalog parameters are drawn in blocks of this many objects, seeded by (seed, block)
_NOISE_TAG = 0x6E6F6973  # "nois": marks the stream of re-drawn noise seeds (see _noise_seeds)


@dataclass(frozen=True)
class GalaxyParameters:
    """Per-object parameters of a simulated galaxy sample.

    Arrays have length N; the per-band ones have shape (N, C) in the order of ``bands``.
    Fluxes are in counts (zeropoint 30), radii and FWHM in arcsec; ``e1``, ``e2`` are the
    intrinsic shear-type ellipticity ``(1 - q) / (1 + q)`` (q the axis ratio) of both bulge
    and disk; ``half_light_radius`` is that of the bulge + disk light in the reference band,
    along the geometric mean of the axes; ``sed_type`` is the CWW template of the disk (bulges
    are E); ``noise_seed`` seeds the object's noise.
    """

    bands: tuple[str, ...]
    reference_band: str
    id: np.ndarray
    magnitude: np.ndarray
    redshift: np.ndarray
    half_light_radius: np.ndarray
    bulge_half_light_radius: np.ndarray
    disk_half_light_radius: np.ndarray
    bulge_fraction: np.ndarray
    sersic_n: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    sed_type: np.ndarray
    bulge_flux: np.ndarray  # (N, C)
    disk_flux: np.ndarray  # (N, C)
    psf_fwhm: np.ndarray  # (N, C)
    psf_g1: np.ndarray
    psf_g2: np.ndarray
    noise_sigma: np.ndarray  # (N, C)
    noise_seed: np.ndarray

    def __len__(self) -> int:
        return len(self.id)

    def __getitem__(self, index) -> "GalaxyParameters":
        """Rows `index` (a slice or integer indices) as a new GalaxyParameters."""
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            values[f.name] = v[index] if isinstance(v, np.ndarray) else v
        return GalaxyParameters(**values)

    @property
    def reference_index(self) -> int:
        return self.bands.index(self.reference_band)

    def catalog(self) -> dict[str, np.ndarray]:
        """Catalog columns (without the measured `snr`), one array of length N per column."""
        r = self.reference_index
        cols: dict[str, np.ndarray] = {
            "id": self.id,
            "magnitude": self.magnitude,
            "redshift": self.redshift,
            "half_light_radius": self.half_light_radius,
            "bulge_half_light_radius": self.bulge_half_light_radius,
            "disk_half_light_radius": self.disk_half_light_radius,
            "bulge_fraction": self.bulge_fraction,
            "sersic_n": self.sersic_n,
            "e1": self.e1,
            "e2": self.e2,
            "sed_type": self.sed_type,
            "psf_fwhm": self.psf_fwhm[:, r],
            "psf_g1": self.psf_g1,
            "psf_g2": self.psf_g2,
            "noise_sigma": self.noise_sigma[:, r],
        }
        for c, band in enumerate(self.bands):
            cols[f"flux_{band}"] = self.bulge_flux[:, c] + self.disk_flux[:, c]
            cols[f"psf_fwhm_{band}"] = self.psf_fwhm[:, c]
            cols[f"noise_sigma_{band}"] = self.noise_sigma[:, c]
        return cols


def catalog_units(bands: Sequence[str]) -> dict[str, str]:
    """Units of the catalog columns written by :func:`simulate_galaxies`."""
    units = {
        "magnitude": "mag",
        "half_light_radius": "arcsec",
        "bulge_half_light_radius": "arcsec",
        "disk_half_light_radius": "arcsec",
        "psf_fwhm": "arcsec",
        "noise_sigma": "counts/pixel",
    }
    for band in bands:
        units[f"flux_{band}"] = "counts"
        units[f"psf_fwhm_{band}"] = "arcsec"
        units[f"noise_sigma_{band}"] = "counts/pixel"
    return units


def _reference_band(bands: Sequence[str]) -> str:
    return "r" if "r" in bands else bands[0]


def _template_path(name: str) -> str:
    import galsim

    return os.path.join(galsim.meta_data.share_dir, "SEDs", f"CWW_{name}_ext.sed")


@functools.lru_cache(maxsize=8)
def _colour_table(bands: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """AB magnitudes (T, C, Z) of the CWW templates (arbitrary normalisation) on `_Z_GRID`, and
    the bands' effective wavelengths (C,) in nm. Built once per process with GalSim."""
    import galsim

    share = galsim.meta_data.share_dir
    seds = [galsim.SED(_template_path(t), wave_type="Ang", flux_type="flambda") for t in _TEMPLATES]
    mags = np.empty((len(_TEMPLATES), len(bands), _Z_GRID.size))
    lam_eff = np.empty(len(bands))
    for c, band in enumerate(bands):
        bp = galsim.Bandpass(os.path.join(share, "bandpasses", f"LSST_{band}.dat"),
                             wave_type="nm").withZeropoint("AB")
        lam_eff[c] = bp.effective_wavelength
        for t, sed in enumerate(seds):
            mags[t, c] = [sed.atRedshift(float(z)).calculateMagnitude(bp) for z in _Z_GRID]
    return mags, lam_eff


def _truncated_rayleigh(rng: np.random.Generator, sigma: float, cap: float, size: int):
    """Two-component ellipticities with Gaussian components of width `sigma`, |e| < cap."""
    u = rng.uniform(size=size)
    mag = np.sqrt(-2 * sigma**2 * np.log1p(-u * (1 - np.exp(-cap**2 / (2 * sigma**2)))))
    angle = rng.uniform(0, np.pi, size=size)
    return mag * np.cos(2 * angle), mag * np.sin(2 * angle)


def _composite_radius(bulge_fraction, sersic_n, ratio):
    """Half-light radius of bulge (Sersic n, half-light radius `ratio`) + exponential disk (half-
    light radius 1) with bulge light fraction `bulge_fraction`; vectorised bisection."""
    from scipy.special import gammainc, gammaincinv

    b_bulge = gammaincinv(2 * sersic_n, 0.5)
    b_disk = gammaincinv(2.0, 0.5)

    def enclosed(r):
        return (bulge_fraction * gammainc(2 * sersic_n, b_bulge * (r / ratio) ** (1 / sersic_n))
                + (1 - bulge_fraction) * gammainc(2.0, b_disk * r))

    lo = np.full(bulge_fraction.shape, np.log(1e-3))
    hi = np.full(bulge_fraction.shape, np.log(1e2))
    for _ in range(45):
        mid = 0.5 * (lo + hi)
        below = enclosed(np.exp(mid)) < 0.5
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return np.exp(0.5 * (lo + hi))


def _noise_gain(reference_band: str, depth: float, pixel_scale: float) -> float:
    """Electrons per count such that a point source at `depth` has S/N `_DEPTH_SNR` against the
    median sky in median (Gaussian-approximated) seeing, background-limited."""
    sky = 10 ** (-0.4 * (SKY_MAGNITUDE[reference_band] - ZEROPOINT)) * pixel_scale**2
    nea = 4 * np.pi * (_MEDIAN_SEEING / 2.3548 / pixel_scale) ** 2  # noise-equivalent area, pixels
    sigma = 10 ** (-0.4 * (depth - ZEROPOINT)) / (_DEPTH_SNR * np.sqrt(nea))
    return sky / sigma**2


@functools.lru_cache(maxsize=4)
def _draw_block(seed: int, block: int, bands: tuple[str, ...], depth: float,
                pixel_scale: float) -> GalaxyParameters:
    """Parameters of objects block*_BLOCK ... (block+1)*_BLOCK - 1, from RNG (seed, block) only."""
    rng = np.random.default_rng([seed, block])
    n = _BLOCK
    ref = _reference_band(bands)
    r = bands.index(ref)
    # magnitudes: dN/dm ~ 10**(a m) between the bright limit and the depth (inverse CDF)
    a = _COUNT_SLOPE
    lo, hi = 10 ** (a * _BRIGHT_MAG), 10 ** (a * depth)
    magnitude = np.log10(lo + rng.uniform(size=n) * (hi - lo)) / a
    # redshift: p(z) ~ z^2 exp(-z/z0), z0 = 0.0417 m - 0.744 (LSST Science Book eq. 3.8)
    z0 = np.maximum(0.0417 * magnitude - 0.744, 0.03)
    redshift = np.clip(rng.gamma(3.0, z0), 0.005, _Z_MAX)
    # size-magnitude: median 0.6" at m = 22, 0.1 dex per mag, 0.15 dex log-normal scatter
    log_r = np.log10(0.6) - 0.1 * (magnitude - 22.0) + rng.normal(0.0, 0.15, n)
    half_light_radius = np.clip(10**log_r, 0.1, 3.0)
    # bulge fraction: 70% disk-dominated Beta(1.2, 4), 30% bulge-dominated Beta(4, 1.5)
    bulgy = rng.uniform(size=n) < 0.3
    bulge_fraction = np.where(bulgy, rng.beta(4.0, 1.5, n), rng.beta(1.2, 4.0, n))
    # bulge Sersic index: higher for bulgier galaxies, on a 0.5 grid
    n_raw = rng.normal(2.0 + 2.0 * bulge_fraction, 0.6)
    sersic_n = np.clip(np.round(n_raw / _SERSIC_STEP) * _SERSIC_STEP, *_SERSIC_RANGE)
    ratio = rng.uniform(0.2, 0.6, n)  # bulge / disk half-light radius
    scale = half_light_radius / _composite_radius(bulge_fraction, sersic_n, ratio)
    disk_hlr, bulge_hlr = scale, scale * ratio
    e1, e2 = _truncated_rayleigh(rng, 0.25, 0.9, n)
    # disk template: bulgier galaxies have earlier-type disks
    u = rng.uniform(size=n)
    cum = np.where(bulgy[:, None], [0.7, 0.95, 1.0], [0.35, 0.75, 1.0])
    disk_template = 1 + (u[:, None] > cum).sum(axis=1)  # 1..3 -> Sbc, Scd, Im
    sed_type = np.asarray(_TEMPLATES)[disk_template]
    # fluxes per band through the CWW templates and LSST bandpasses, normalised in the ref band
    mags, lam_eff = _colour_table(bands)
    colour = np.empty((len(_TEMPLATES), len(bands), n))
    for t in range(len(_TEMPLATES)):
        for c in range(len(bands)):
            colour[t, c] = np.interp(redshift, _Z_GRID, mags[t, c] - mags[t, r])
    flux = 10 ** (-0.4 * (magnitude - ZEROPOINT))
    bulge_colour = colour[0].T  # (n, C)
    disk_colour = colour[disk_template, :, np.arange(n)]  # (n, C)
    bulge_flux = (bulge_fraction * flux)[:, None] * 10 ** (-0.4 * bulge_colour)
    disk_flux = ((1 - bulge_fraction) * flux)[:, None] * 10 ** (-0.4 * disk_colour)
    # PSF: FWHM 0.6-1.0" in the reference band, scaling as lambda^-0.2 (Kolmogorov seeing)
    fwhm_ref = 0.6 + 0.4 * rng.beta(2.0, 2.0, n)
    psf_fwhm = fwhm_ref[:, None] * (lam_eff / lam_eff[r])[None, :] ** -0.2
    psf_g1, psf_g2 = _truncated_rayleigh(rng, 0.02, 0.05, n)
    # noise: background-limited; the sky varies by ~0.15 mag from object to object
    sky_offset = np.clip(rng.normal(0.0, 0.15, n), -0.45, 0.45)
    gain = _noise_gain(ref, depth, pixel_scale)
    sky = np.array([10 ** (-0.4 * (SKY_MAGNITUDE[b] - ZEROPOINT)) for b in bands]) * pixel_scale**2
    noise_sigma = np.sqrt(sky[None, :] * 10 ** (-0.4 * sky_offset)[:, None] / gain)
    noise_seed = rng.integers(1, 2**31 - 1, n)
    return GalaxyParameters(
        bands=bands, reference_band=ref, id=np.arange(block * n, (block + 1) * n, dtype=np.int64),
        magnitude=magnitude, redshift=redshift, half_light_radius=half_light_radius,
        bulge_half_light_radius=bulge_hlr, disk_half_light_radius=disk_hlr,
        bulge_fraction=bulge_fraction, sersic_n=sersic_n, e1=e1, e2=e2, sed_type=sed_type,
        bulge_flux=bulge_flux, disk_flux=disk_flux, psf_fwhm=psf_fwhm, psf_g1=psf_g1,
        psf_g2=psf_g2, noise_sigma=noise_sigma, noise_seed=noise_seed)


def _noise_seeds(seed: int, block: int, noise_seed: int) -> np.ndarray:
    """The per-object noise seeds of block `block` under the sample-wide `noise_seed`.

    A stream of its own, apart from the catalog's (seed, block) stream: the tag word keeps the
    entropy four words long, since SeedSequence pads shorter entropy with zeros and
    (seed, block, 0) would otherwise be the catalog's stream itself.
    """
    rng = np.random.default_rng([seed, block, _NOISE_TAG, noise_seed])
    return rng.integers(1, 2**31 - 1, _BLOCK)


def galaxy_parameters(n: int, *, bands: Sequence[str] = ("r",), depth: float = 25.3,
                      pixel_scale: float = 0.2, seed: int = 0, start: int = 0,
                      noise_seed: int | None = None) -> GalaxyParameters:
    """Draw the parameters of galaxies ``start ... start + n - 1`` of the sample `seed`.

    Object i's parameters depend only on (seed, i) and the survey settings, so a larger
    sample extends a smaller one and any slice can be drawn on its own. `noise_seed` changes
    only the per-object ``noise_seed`` column: None keeps the seeds drawn with the catalog, an
    integer draws them from (seed, noise_seed, i) instead, so that the same galaxies, PSFs and
    noise levels get a fresh, independent noise realisation (a noise twin).

    Arguments:
        n: number of objects.
        bands: LSST band names, e.g. ("g", "r", "i").
        depth: faint magnitude limit in the reference band (r, or the first band); the noise is
            set so that a point source this faint has S/N 10 in median conditions.
        pixel_scale: arcsec per pixel (sets the noise per pixel).
        seed: sample seed (non-negative integer).
        start: index of the first object.
        noise_seed: sample-wide noise seed (non-negative integer), or None for the seeds drawn
            with the catalog.
    """
    bands = _check_bands(bands)
    if n < 0 or start < 0:
        raise InputError(f"n={n} and start={start} must be non-negative")
    noise_seed = _check_noise_seed(noise_seed)
    first, last = start // _BLOCK, (start + n - 1) // _BLOCK if n else start // _BLOCK
    parts = [_draw_block(int(seed), b, bands, float(depth), float(pixel_scale))
             for b in range(first, last + 1)]
    if noise_seed is not None:
        parts = [replace(p, noise_seed=_noise_seeds(int(seed), b, noise_seed))
                 for b, p in zip(range(first, last + 1), parts)]
    lo = start - first * _BLOCK
    if len(parts) == 1:
        return parts[0][lo:lo + n]
    values = {}
    for f in fields(GalaxyParameters):
        v = getattr(parts[0], f.name)
        values[f.name] = (np.concatenate([getattr(p, f.name) for p in parts])[lo:lo + n]
                          if isinstance(v, np.ndarray) else v)
    return GalaxyParameters(**values)


def _check_bands(bands) -> tuple[str, ...]:
    bands = comma_list(bands)
    if not bands:
        raise InputError(f"no bands given; pass one or more of {', '.join(BANDS)}, e.g. --bands g,r,i")
    unknown = [b for b in bands if b not in BANDS]
    if unknown:
        raise InputError(f"unknown band(s) {', '.join(map(repr, unknown))}: the simulator has "
                         f"bandpasses for {', '.join(BANDS)} (LSST); pass e.g. --bands g,r,i")
    if len(set(bands)) != len(bands):
        raise InputError(f"bands {bands} repeat a band; give each band once")
    return bands


def _check_noise_seed(noise_seed) -> int | None:
    if noise_seed is None:
        return None
    if isinstance(noise_seed, (bool, float)) or not isinstance(noise_seed, (int, np.integer)) or noise_seed < 0:
        raise InputError(f"noise_seed={noise_seed!r}: give a non-negative integer (--noise-seed 7), or None "
                         "for the noise drawn with the catalog")
    return int(noise_seed)
