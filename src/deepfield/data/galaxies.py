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

Example:
    >>> import tempfile, os
    >>> from deepfield.data.galaxies import simulate_galaxies
    >>> path = os.path.join(tempfile.mkdtemp(), "gal")
    >>> store = simulate_galaxies(path, 4, size=32, bands=("g", "r"), seed=1, progress=False)
    >>> store.sample_shape, store.units["half_light_radius"]
    ((2, 32, 32), 'arcsec')
"""

from __future__ import annotations

import functools
import math
import os
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from deepfield._names import comma_list
from deepfield.errors import InputError

__all__ = [
    "BANDS",
    "ZEROPOINT",
    "GalaxyParameters",
    "catalog_units",
    "galaxy_parameters",
    "simulate_galaxies",
]

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
_MOFFAT_BETA = 3.0
_MOFFAT_TRUNC = 5.0  # Moffat truncated at 5 FWHM (0.14% of the flux lies beyond)
_PSF_STAMP = 25
_TEMPLATES = ("E", "Sbc", "Scd", "Im")  # CWW templates: bulges are E, disks one of the others
_Z_GRID = np.round(np.arange(0.0, 4.0 + 1e-9, 0.01), 2)
_Z_MAX = 3.5
_BLOCK = 4096  # catalog parameters are drawn in blocks of this many objects, seeded by (seed, block)


# --------------------------------------------------------------------------------------
# catalog parameters


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


def galaxy_parameters(n: int, *, bands: Sequence[str] = ("r",), depth: float = 25.3,
                      pixel_scale: float = 0.2, seed: int = 0, start: int = 0) -> GalaxyParameters:
    """Draw the parameters of galaxies ``start ... start + n - 1`` of the sample `seed`.

    Object i's parameters depend only on (seed, i) and the survey settings, so a larger
    sample extends a smaller one and any slice can be drawn on its own.

    Arguments:
        n: number of objects.
        bands: LSST band names, e.g. ("g", "r", "i").
        depth: faint magnitude limit in the reference band (r, or the first band); the noise is
            set so that a point source this faint has S/N 10 in median conditions.
        pixel_scale: arcsec per pixel (sets the noise per pixel).
        seed: sample seed (non-negative integer).
        start: index of the first object.
    """
    bands = _check_bands(bands)
    if n < 0 or start < 0:
        raise InputError(f"n={n} and start={start} must be non-negative")
    first, last = start // _BLOCK, (start + n - 1) // _BLOCK if n else start // _BLOCK
    parts = [_draw_block(int(seed), b, bands, float(depth), float(pixel_scale))
             for b in range(first, last + 1)]
    lo = start - first * _BLOCK
    if len(parts) == 1:
        return parts[0][lo:lo + n]
    values = {}
    for f in fields(GalaxyParameters):
        v = getattr(parts[0], f.name)
        values[f.name] = (np.concatenate([getattr(p, f.name) for p in parts])[lo:lo + n]
                          if isinstance(v, np.ndarray) else v)
    return GalaxyParameters(**values)


# --------------------------------------------------------------------------------------
# rendering (one renderer per worker process)


class _StampRenderer:
    """Draws x, truth, psf and ivar stamps for batches of objects; holds GalSim profiles,
    k-space buffers and enclosed-flux tables that are reused from object to object."""

    _LOG_U = np.linspace(np.log(1e-7), np.log(1e4), 8192)  # log(r / r_e) for enclosed flux
    _MID, _MID_SUB = 12, 2  # central 25x25 pixels: 2x2 sub-samples
    _CORE, _CORE_SUB = 4, 4  # central 9x9 pixels: 4x4 sub-samples
    _RAYS = 128  # rays over a half circle for the central 5x5 pixels
    _RAY_HALF = 2

    def __init__(self, size: int, pixel_scale: float, n_bands: int, psf: str,
                 correlated_noise: bool):
        import galsim

        self.galsim = galsim
        self.size, self.scale, self.n_bands = size, pixel_scale, n_bands
        self.gsparams = galsim.GSParams()
        self._sersic: dict[float, Any] = {}
        self._tables: dict[float, np.ndarray] = {}
        self._exp = galsim.Exponential(half_light_radius=1.0, gsparams=self.gsparams)
        if psf == "moffat":
            self._psf = galsim.Moffat(beta=_MOFFAT_BETA, fwhm=1.0, trunc=_MOFFAT_TRUNC,
                                      gsparams=self.gsparams)
        else:
            self._psf = galsim.Kolmogorov(fwhm=1.0, gsparams=self.gsparams)
        self._pix = galsim.Pixel(pixel_scale, gsparams=self.gsparams)
        c = size // 2
        self.centre = c
        bounds = galsim.BoundsI(-c, size - c - 1, -c, size - c - 1)
        self._obs = galsim.ImageD(bounds, scale=pixel_scale)
        self._truth = galsim.ImageD(bounds, scale=pixel_scale)
        h = _PSF_STAMP // 2
        self._psf_image = galsim.ImageD(galsim.BoundsI(-h, h, -h, h), scale=pixel_scale)
        self._blocks = []
        for half, sub in ((self._MID, self._MID_SUB), (self._CORE, self._CORE_SUB)):
            half = min(half, c, size - 1 - c)
            nf = (2 * half + 1) * sub
            lo = -(nf // 2)
            image = galsim.ImageD(galsim.BoundsI(lo, lo + nf - 1, lo, lo + nf - 1),
                                  scale=pixel_scale / sub)
            # shift that puts the fine pixel centres at the sub-pixel midpoints
            shift = ((0.5 - lo) / sub - (half + 0.5)) * pixel_scale
            self._blocks.append((half, sub, image, shift))
        theta = (np.arange(self._RAYS) + 0.5) * (np.pi / self._RAYS)
        self._ray_dirs = np.stack([np.cos(theta), np.sin(theta)], axis=1)
        self._ray_lines = np.arange(-self._RAY_HALF - 0.5, self._RAY_HALF + 1.0, 1.0)
        self._kbuf: dict[tuple[int, int], dict[str, Any]] = {}
        self._noise_filter = None
        if correlated_noise:
            self._noise_filter = self._cosmos_noise_filter()

    # -- cached pieces
    def _sersic_profile(self, n: float):
        if n not in self._sersic:
            self._sersic[n] = self.galsim.Sersic(n, half_light_radius=1.0, gsparams=self.gsparams)
        return self._sersic[n]

    def _enclosed_table(self, n: float) -> np.ndarray:
        """Fraction of a Sersic-n profile's flux within radius exp(_LOG_U) half-light radii."""
        if n not in self._tables:
            from scipy.special import gammainc, gammaincinv

            b = gammaincinv(2 * n, 0.5)
            self._tables[n] = gammainc(2 * n, b * np.exp(self._LOG_U / n))
        return self._tables[n]

    def _kspace(self, N: int, Nk: int) -> dict[str, Any]:
        key = (N, Nk)
        if key not in self._kbuf:
            galsim = self.galsim
            dk = 2 * np.pi / (N * self.scale)
            bounds = galsim.BoundsI(0, Nk // 2, -Nk // 2, Nk // 2)
            buf = {name: galsim.ImageCD(bounds, scale=dk) for name in ("bulge", "disk", "psf", "total")}
            self._pix._drawKImage(buf["total"])
            buf["pixel"] = buf["total"].array.copy()
            if len(self._kbuf) > 16:
                self._kbuf.clear()
            self._kbuf[key] = buf
        return self._kbuf[key]

    def _cosmos_noise_filter(self) -> np.ndarray:
        """sqrt of the power spectrum of GalSim's COSMOS noise correlation function, rescaled to
        unit variance on this pixel scale, for filtering white noise (periodic on the stamp)."""
        galsim = self.galsim
        cn = galsim.getCOSMOSNoise(
            file_name=os.path.join(galsim.meta_data.share_dir, "acs_I_unrot_sci_20_cf.fits"),
            cosmos_scale=self.scale, variance=1.0)
        cf = galsim.ImageD(self.size, self.size, scale=self.scale)
        cn.drawImage(cf)
        c = self.size // 2
        lagged = np.roll(cf.array, (-c, -c), axis=(0, 1))  # zero lag at [0, 0]
        # filtering unit white noise by sqrt(P) gives variance mean(P) over the full spectrum
        full = np.clip(np.fft.fft2(lagged).real, 0.0, None)
        power = np.clip(np.fft.rfft2(lagged).real, 0.0, None) / full.mean()
        return np.sqrt(power)

    # -- pieces of one object
    def _rays(self, jac: np.ndarray, radii: Sequence[float], tables: Sequence[np.ndarray],
              weights: Sequence[float]) -> np.ndarray:
        """Exact pixel integrals over the central 5x5 pixels of an elliptical profile that is
        circular in u (x = jac @ u, pixels): enclosed-flux differences between the crossings of
        rays with pixel edges, averaged over ray angle (point symmetry: half a circle)."""
        d = self._ray_dirs @ jac.T
        dx, dy = d[:, :1], d[:, 1:]
        with np.errstate(divide="ignore"):
            ix, iy = 1.0 / dx, 1.0 / dy
        K = self._RAY_HALF
        t_exit = (K + 0.5) * np.minimum(np.abs(ix), np.abs(iy))
        t = np.concatenate([np.zeros_like(dx), self._ray_lines * ix, self._ray_lines * iy, t_exit], 1)
        np.copyto(t, t_exit, where=~((t > 0) & (t < t_exit)))
        t[:, 0] = 0.0
        t.sort(axis=1)
        with np.errstate(divide="ignore"):
            log_t = np.log(t)
        enclosed = np.zeros_like(t)
        for radius, table, weight in zip(radii, tables, weights):
            enclosed += weight * np.interp(log_t - math.log(radius), self._LOG_U, table, left=0.0)
        mass = enclosed[:, 1:] - enclosed[:, :-1]
        mid = 0.5 * (t[:, 1:] + t[:, :-1])
        px = np.clip(np.rint(mid * dx), -K, K).astype(np.intp) + K
        py = np.clip(np.rint(mid * dy), -K, K).astype(np.intp) + K
        w = 2 * K + 1
        block = np.bincount((py * w + px).ravel(), weights=mass.ravel(), minlength=w * w)
        block = block.reshape(w, w) / self._RAYS
        return 0.5 * (block + block[::-1, ::-1])

    def _truth_image(self, profile, jac, radii, tables, weights) -> np.ndarray:
        """Pixel-integrated image of `profile` (a GalSim profile centred on the centre pixel)."""
        c = self.centre
        profile._drawReal(self._truth)
        out = self._truth.array.copy()
        for half, sub, image, shift in self._blocks:
            profile.shift(-shift, -shift)._drawReal(image)
            w = 2 * half + 1
            out[c - half:c + half + 1, c - half:c + half + 1] = image.array.reshape(w, sub, w, sub).sum((1, 3))
        k = self._RAY_HALF
        out[c - k:c + k + 1, c - k:c + k + 1] = self._rays(jac, radii, tables, weights)
        return out

    def render(self, p: GalaxyParameters) -> dict[str, np.ndarray]:
        """Stamps for the objects in `p`: x, truth, psf (float32) and snr (N, C). The inverse
        variance is 1 / p.noise_sigma**2, constant over each stamp."""
        galsim = self.galsim
        n, C, S = len(p), self.n_bands, self.size
        out = {
            "x": np.empty((n, C, S, S), np.float32),
            "truth": np.empty((n, C, S, S), np.float32),
            "psf": np.empty((n, C, _PSF_STAMP, _PSF_STAMP), np.float32),
            "snr": np.empty((n, C)),
        }
        for i in range(n):
            shear = galsim.Shear(g1=float(p.e1[i]), g2=float(p.e2[i])).getMatrix()
            sersic_n = float(p.sersic_n[i])
            fb, fd = p.bulge_flux[i], p.disk_flux[i]
            rb, rd = float(p.bulge_half_light_radius[i]), float(p.disk_half_light_radius[i])
            comps = []  # (name, unit-flux profile, radius, table, per-band flux)
            if fb.max() > 0:
                comps.append(("bulge", galsim.Transformation(self._sersic_profile(sersic_n), jac=rb * shear,
                                                   flux_ratio=1 / rb**2),
                              rb, self._enclosed_table(sersic_n), fb))
            if fd.max() > 0:
                comps.append(("disk", galsim.Transformation(self._exp, jac=rd * shear, flux_ratio=1 / rd**2),
                              rd, self._enclosed_table(1.0), fd))
            psf_shear = galsim.Shear(g1=float(p.psf_g1[i]), g2=float(p.psf_g2[i])).getMatrix()
            # a Transformation keeps surface brightness: flux_ratio = 1 / det(jac) keeps unit flux
            psfs = [galsim.Transformation(self._psf, jac=float(p.psf_fwhm[i, c]) * psf_shear,
                                          flux_ratio=1 / float(p.psf_fwhm[i, c]) ** 2)
                    for c in range(C)]
            # FFT size and k range exactly as GalSim's drawImage picks them for galaxy (*) PSF
            # (*) pixel: a Sum has the smallest stepk and largest maxk of its parts, a
            # Convolution 1/stepk^2 = sum of 1/stepk_i^2 and the smallest maxk
            gal_stepk = min(cm[1].stepk for cm in comps)
            gal_maxk = max(cm[1].maxk for cm in comps)
            psf_stepk = min(q.stepk for q in psfs)
            stepk = (gal_stepk**-2 + psf_stepk**-2 + self._pix.stepk**-2) ** -0.5
            maxk = min(gal_maxk, max(q.maxk for q in psfs), self._pix.maxk)
            good = 2 * ((math.ceil(2 * np.pi / (self.scale * stepk) * (1 - 1e-12)) + 1) // 2)
            N = galsim.Image.good_fft_size(max(good, S))
            dk = 2 * np.pi / (N * self.scale)
            Nk = N if N * dk / 2 > maxk else 2 * int(np.ceil(maxk / dk))
            kbuf = self._kspace(N, Nk)
            for name, prof, _, _, _ in comps:
                prof._drawKImage(kbuf[name])
            total = kbuf["total"]
            for c in range(C):
                psfs[c]._drawKImage(kbuf["psf"])
                k = total.array
                k[...] = 0.0
                for name, _, _, _, flux in comps:
                    k += float(flux[c]) * kbuf[name].array
                k *= kbuf["psf"].array
                k *= kbuf["pixel"]
                psfs[c].drawFFT_finish(self._obs, total, N, False)
                out["x"][i, c] = self._obs.array
                psfs[c]._drawReal(self._psf_image)
                stamp = self._psf_image.array
                out["psf"][i, c] = stamp / stamp.sum()
            # truth: one pixel integration of the sum in one band, of each component otherwise
            jac = shear / self.scale
            if C == 1:
                scaled = [prof * float(flux[0]) for _, prof, _, _, flux in comps]
                profile = scaled[0] if len(scaled) == 1 else galsim.Sum(scaled)
                out["truth"][i, 0] = self._truth_image(
                    profile, jac, [cm[2] for cm in comps], [cm[3] for cm in comps],
                    [float(cm[4][0]) for cm in comps])
            else:
                unit = [self._truth_image(prof, jac, [radius], [table], [1.0])
                        for _, prof, radius, table, _ in comps]
                for c in range(C):
                    out["truth"][i, c] = sum(float(cm[4][c]) * img for cm, img in zip(comps, unit))
            # noise
            sigma = p.noise_sigma[i]
            clean = out["x"][i].astype(np.float64)
            out["snr"][i] = np.sqrt((clean**2).sum(axis=(1, 2))) / sigma
            white = np.random.default_rng(int(p.noise_seed[i])).standard_normal((C, S, S))
            if self._noise_filter is not None:
                white = np.fft.irfft2(np.fft.rfft2(white) * self._noise_filter, s=(S, S))
            out["x"][i] = clean + sigma[:, None, None] * white
        return out


class _BatchMaker:
    """Draws the parameters of objects lo ... hi - 1 and renders them: catalog columns (with the
    measured S/N) and stamps. One per worker process, so the parent needs no GalSim."""

    def __init__(self, survey: dict, render: dict):
        self.survey = survey
        self.renderer = _StampRenderer(**render)

    def __call__(self, lo: int, hi: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        params = galaxy_parameters(hi - lo, start=lo, **self.survey)
        arrays = self.renderer.render(params)
        catalog = params.catalog()  # carries noise_sigma_<band>: the parent makes ivar from it
        snr = arrays.pop("snr")
        catalog["snr"] = snr[:, params.reference_index]
        for c, band in enumerate(params.bands):
            catalog[f"snr_{band}"] = snr[:, c]
        return catalog, arrays


_WORKER: _BatchMaker | None = None


def _init_worker(survey: dict, render: dict) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    global _WORKER
    _WORKER = _BatchMaker(survey, render)


def _make_in_worker(lo: int, hi: int):
    assert _WORKER is not None
    return _WORKER(lo, hi)


@contextmanager
def _single_threaded_children():
    """Spawned workers inherit OMP_NUM_THREADS=1 (GalSim's OpenMP must not oversubscribe)."""
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old


def _made_batches(batches, survey: dict, render: dict, workers: int) -> Iterator:
    """Yield (catalog, arrays) for each (lo, hi) batch, in order. With workers > 1 a spawn pool
    makes up to 2 batches per worker ahead of the writer."""
    if workers == 1:
        maker = _BatchMaker(survey, render)
        for lo, hi in batches:
            yield maker(lo, hi)
        return
    import multiprocessing as mp

    # spawn, never fork: GalSim's bundled OpenMP runtime deadlocks in forked children
    ctx = mp.get_context("spawn")
    with _single_threaded_children():
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(survey, render))
    try:
        todo = iter(batches)
        pending: deque = deque()

        def submit() -> None:
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.apply_async(_make_in_worker, nxt))

        for _ in range(2 * workers):
            submit()
        while pending:
            made = pending.popleft().get()
            submit()
            yield made
        pool.close()
    finally:
        pool.terminate()
        pool.join()


# --------------------------------------------------------------------------------------
# public entry point


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


def _progress_bar(enabled: bool, total: int, completed: int, label: str):
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(),
                        console=Console(stderr=True), disable=not enabled, transient=False)
    task = progress.add_task(label, total=total, completed=completed)
    return progress, task


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
    if not pixel_scale > 0:
        raise InputError(f"pixel_scale={pixel_scale}: give a positive scale in arcsec/pixel")
    if not _BRIGHT_MAG + 0.5 <= depth <= 32.0:
        raise InputError(f"depth={depth}: the faint limit must lie between "
                         f"{_BRIGHT_MAG + 0.5} and 32 mag (the sample starts at {_BRIGHT_MAG})")
    psf = str(psf).lower()
    if psf not in ("moffat", "kolmogorov"):
        raise InputError(f"psf={psf!r}: choose 'moffat' or 'kolmogorov'")
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
    survey = {"bands": bands, "depth": float(depth), "pixel_scale": float(pixel_scale), "seed": seed}
    render = {"size": size, "pixel_scale": float(pixel_scale), "n_bands": C, "psf": psf,
              "correlated_noise": bool(correlated_noise)}
    bar, task = _progress_bar(progress, n, start, "galaxies")
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
