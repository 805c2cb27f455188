"""Labelled anomalies injected into a copy of an image store, to test and benchmark detectors.

:func:`inject_anomalies` copies a store and, in a seeded random ``fraction`` of its objects,
adds one anomaly each, split evenly over the chosen types. The copy's catalog gains

- ``anomaly_type``: the type below, or ``"none"`` for untouched objects;
- ``anomaly_strength``: the anomaly's amplitude (units per type below; 0 for "none");
- ``anomaly_params``: JSON with where and how it was drawn (band, pixels, radius, ...).

Artefacts (detector and foreground effects; amplitudes in units of the object's noise sigma
per pixel in the affected band):

- ``cosmic_ray``: a track of 1-6 pixels, one pixel wide, in one band, *not* convolved with the
  PSF (it hits the detector). Strength: the brightest pixel, 10-50 sigma (others 40-100% of it).
- ``satellite_trail``: a straight line across the whole stamp in one band, with the PSF as its
  cross-section. Strength: the peak along the trail, 3-15 sigma.
- ``bad_column``: one full-height column in one band, hot (``+A`` sigma added, noise kept) or
  dead (set to the constant ``-A`` sigma: no signal, no noise). Strength: ``+-A``, A in 3-10.
- ``saturated_star``: a point source (the PSF) at 0.25-0.45 stamp sides from the galaxy, its
  unclipped peak 3-30x the saturation level, clipped there with the excess charge bleeding
  up and down its columns (conserved until it runs off the stamp). The saturation level is
  100 sigma, or 1.2x the galaxy's brightest pixel if that is higher. Strength: the unclipped
  peak in sigma (best band).

Astrophysical oddities (sky light: added to ``truth`` too, so ``x ~= truth (*) psf + noise``
still holds):

- ``blended_neighbour``: another object's noiseless ``truth`` (or, in stores without truth, an
  exponential disk), offset by 1-2x the sum of both half-light radii (at least one PSF FWHM),
  convolved with this object's PSF. Strength: its observed peak, 5-20 sigma (best band).
- ``ring``: an elliptical Gaussian ring (the galaxy's ellipticity, width 10% of its radius) at
  1.5-3 half-light radii (at least 1.5 PSF FWHM, at most 0.4 stamp sides), with the galaxy's
  colours. Strength: observed peak, 2-6 sigma.
- ``tidal_feature``: a one-sided shell: an arc of 60-150 degrees (FWHM) at 1.5-3 half-light
  radii with a sharp outer edge and an exponential inner profile. Strength: observed peak,
  2-6 sigma.
- ``extreme_colour`` (two or more bands): one band of the galaxy brightened by a factor 3-10
  (the noiseless galaxy ``truth (*) psf`` scaled, so the noise stays that of ``ivar``; in
  stores without truth the band is scaled, noise and ``ivar`` with it). ``flux_<band>``,
  ``snr_<band>`` and, for the reference band, ``magnitude``/``snr`` follow. Strength: the
  factor.

A deficit (too little structure where structure belongs; asked for by name, ``types=``, since
the default types predate it):

- ``missing_signal``: a rectangle of 0.25-0.45 stamp sides per axis over the galaxy's core
  (its centre within 0.3 sides of the galaxy's) loses its light: in one band set to zero (a
  dead readout region: no signal and no noise), or in every band with the galaxy's observed
  light ``truth (*) psf`` subtracted (over-subtracted sky, a deblender's over-reach: the
  noise stays; in stores without truth the region's pixels are replaced by a fresh noise
  draw). ``truth`` is untouched (a detector or pipeline effect). Strength: the S/N of the
  light removed, ``sqrt(sum (signal / sigma)^2)`` over the region's pixels and bands.

Noise is never redrawn: each object keeps its noise realisation, so ``ivar`` still describes
it (the added light is noiseless, as for background-limited data), except where stated. The
noise sigma comes from ``ivar``, else the catalog's ``noise_sigma[_<band>]``, else the robust
scatter of the stamp's border. The PSF is the store's ``psf`` (unit sum), else a circular
Gaussian of the catalog's ``psf_fwhm`` or, lacking that, 2.5 pixels FWHM. Half-light radii
come from the catalog (arcsec), else are measured on ``truth`` (or ``x``). Artefacts are
*unflagged*: ``ivar`` and ``mask`` are left as they were, as for artefacts a pipeline missed.

Images are (N, C, H, W); rows are y, so "vertical" bleeding runs along axis H.

Example:
    >>> import tempfile, os
    >>> from deepfield.data.galaxies import simulate_galaxies
    >>> from deepfield.data.anomalies import inject_anomalies
    >>> d = tempfile.mkdtemp()
    >>> clean = simulate_galaxies(os.path.join(d, "clean"), 40, size=32, bands=("g", "r"), seed=1,
    ...                           progress=False)
    >>> odd = inject_anomalies(clean, os.path.join(d, "odd"), fraction=0.2, seed=0, progress=False)
    >>> int((odd.column("anomaly_type") != "none").sum())
    8
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from deepfield._names import comma_list
from deepfield.data.store import Store, create_store, open_store
from deepfield.errors import InputError
from deepfield.progress import progress_task

__all__ = ["ARTEFACTS", "ODDITIES", "DEFICITS", "ANOMALY_TYPES", "inject_anomalies"]

#: detector and foreground artefacts
ARTEFACTS = ("cosmic_ray", "satellite_trail", "bad_column", "saturated_star")
#: astrophysical oddities
ODDITIES = ("blended_neighbour", "ring", "tidal_feature", "extreme_colour")
#: anomalies of too little structure, injected only when asked for (``types=``), so a seed
#: gives the same store as before they existed
DEFICITS = ("missing_signal",)
#: the default types
ANOMALY_TYPES = ARTEFACTS + ODDITIES

_FALLBACK_PSF_FWHM = 2.5  # pixels, for stores with neither a PSF array nor a psf_fwhm column
_SATURATION_SIGMA = 100.0  # saturation level in noise sigma (or 1.2x the galaxy's peak)
_BATCH = 1024


# --------------------------------------------------------------------------------------
# per-object context


@dataclass
class _Object:
    """One object being edited: arrays float64 (C, H, W), modified in place."""

    row: int
    x: np.ndarray
    truth: np.ndarray | None
    ivar: np.ndarray | None
    psf: np.ndarray  # (C, h, w), unit sum
    sigma: np.ndarray  # (C,) noise per pixel
    centre: tuple[float, float]  # (y, x) pixels
    hlr: float  # half-light radius, pixels
    fwhm: float  # PSF FWHM, pixels
    ellipticity: tuple[float, float]
    flux: np.ndarray  # (C,) galaxy flux per band (for colours of added light)
    rng: np.random.Generator

    @property
    def shape(self) -> tuple[int, int]:
        return self.x.shape[-2:]

    def best_band(self) -> int:
        """The band where the galaxy has the highest flux / noise."""
        return int(np.argmax(np.maximum(self.flux, 0) / self.sigma))


def _convolve(image: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """Zero-padded 'same' convolution of (H, W) with an odd, centred kernel (flux-conserving)."""
    from scipy.signal import fftconvolve

    return fftconvolve(image, psf, mode="same")


def _convolve_padded(image: np.ndarray, psf: np.ndarray, pad: int) -> np.ndarray:
    """Convolve an image drawn on a canvas padded by `pad` pixels, then crop the padding, so
    light from beyond the stamp edge (a trail, a star's wings) enters as it should."""
    out = _convolve(image, psf)
    return out[pad:out.shape[0] - pad, pad:out.shape[1] - pad]


def _gaussian_psf(fwhm: float) -> np.ndarray:
    half = max(2, int(math.ceil(2 * fwhm)))
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    s = fwhm / (2 * math.sqrt(2 * math.log(2)))
    k = np.exp(-(xx**2 + yy**2) / (2 * s**2))
    return k / k.sum()


def _psf_fwhm_pixels(psf: np.ndarray) -> float:
    """FWHM from the area of the pixels above half maximum (a circle's diameter)."""
    area = float((psf >= 0.5 * psf.max()).sum())
    return 2 * math.sqrt(area / math.pi)


def _centroid(image: np.ndarray) -> tuple[float, float] | None:
    w = np.clip(image, 0, None)
    total = w.sum()
    if not total > 0:
        return None
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    return float((w * yy).sum() / total), float((w * xx).sum() / total)


def _half_light_radius(image: np.ndarray, centre: tuple[float, float]) -> float:
    """Radius (pixels) enclosing half the positive flux of `image` around `centre`."""
    w = np.clip(image, 0, None).ravel()
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    r = np.hypot(yy - centre[0], xx - centre[1]).ravel()
    order = np.argsort(r)
    cum = np.cumsum(w[order])
    if not cum[-1] > 0:
        return 2.0
    return float(max(r[order][np.searchsorted(cum, 0.5 * cum[-1])], 0.5))


def _border_sigma(image: np.ndarray, width: int = 3) -> float:
    """Robust noise from the stamp's border pixels (1.4826 x median absolute deviation)."""
    border = np.concatenate([image[:width].ravel(), image[-width:].ravel(), image[:, :width].ravel(),
                             image[:, -width:].ravel()])
    mad = float(np.median(np.abs(border - np.median(border))))
    return 1.4826 * mad if mad > 0 else float(np.std(image)) or 1.0


def _elliptical_radius(shape, centre, e1: float, e2: float) -> np.ndarray:
    """Radius along the geometric mean of the axes of an ellipse of shear-type ellipticity
    (e1, e2): the ellipse r = R has semi-axes R / sqrt(q) and R sqrt(q), q the axis ratio."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    return _elliptical_radius_at(yy - centre[0], xx - centre[1], e1, e2)


def _elliptical_radius_at(dy, dx, e1: float, e2: float) -> np.ndarray:
    g = min(math.hypot(e1, e2), 0.95)
    q = (1 - g) / (1 + g)
    beta = 0.5 * math.atan2(e2, e1)
    u = dx * math.cos(beta) + dy * math.sin(beta)
    v = -dx * math.sin(beta) + dy * math.cos(beta)
    return np.sqrt(u**2 * q + v**2 / q)


def _subsampled(shape, centre, profile: Callable[[np.ndarray, np.ndarray], np.ndarray], sub: int = 4) -> np.ndarray:
    """Pixel-integrated image of `profile(dy, dx)` by sub x sub midpoint sampling."""
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    out = np.zeros(shape)
    for oy in offsets:
        for ox in offsets:
            out += profile(yy + oy - centre[0], xx + ox - centre[1])
    return out / sub**2


def _shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shift (C, H, W) by whole pixels, filling with zeros."""
    out = np.zeros_like(image)
    H, W = image.shape[-2:]
    ys, yd = (slice(0, H - dy), slice(dy, H)) if dy >= 0 else (slice(-dy, H), slice(0, H + dy))
    xs, xd = (slice(0, W - dx), slice(dx, W)) if dx >= 0 else (slice(-dx, W), slice(0, W + dx))
    out[..., yd, xd] = image[..., ys, xs]
    return out


def _add_sky(obj: _Object, unit: np.ndarray, amplitude: float) -> tuple[float, int]:
    """Add PSF-free light `unit` (C, H, W) to truth and, convolved with each band's PSF, to x,
    scaled so that its observed peak in the best band is `amplitude` sigma."""
    observed = np.stack([_convolve(unit[c], obj.psf[c]) for c in range(unit.shape[0])])
    snr_peak = observed.reshape(len(observed), -1).max(axis=1) / obj.sigma
    band = int(np.argmax(snr_peak))
    scale = amplitude / snr_peak[band]
    obj.x += scale * observed
    if obj.truth is not None:
        obj.truth += scale * unit
    return amplitude, band


def _colours(obj: _Object) -> np.ndarray:
    """Per-band weights (C,) of added galaxy light: the galaxy's own flux ratios."""
    f = np.clip(obj.flux, 0, None)
    return f / f.max() if f.max() > 0 else np.ones_like(f)


def _feature_radius(obj: _Object, rng: np.random.Generator) -> float:
    h, w = obj.shape
    r = rng.uniform(1.5, 3.0) * obj.hlr
    return float(min(max(r, 1.5 * obj.fwhm), 0.4 * min(h, w)))


# --------------------------------------------------------------------------------------
# the injectors: each edits `obj` in place and returns (strength, params)


def _cosmic_ray(obj: _Object, rng, neighbour) -> tuple[float, dict]:
    C = obj.x.shape[0]
    h, w = obj.shape
    band = int(rng.integers(C))
    amp = rng.uniform(10.0, 50.0)
    length = rng.uniform(0.0, 5.0)
    theta = rng.uniform(0, np.pi)
    y0, x0 = rng.uniform(0, h - 1), rng.uniform(0, w - 1)
    t = np.linspace(0.0, length, max(2, int(length / 0.2) + 1))
    ys = np.clip(np.rint(y0 + t * np.sin(theta)), 0, h - 1).astype(int)
    xs = np.clip(np.rint(x0 + t * np.cos(theta)), 0, w - 1).astype(int)
    pixels = np.unique(np.stack([ys, xs], 1), axis=0)
    deposit = amp * obj.sigma[band] * rng.uniform(0.4, 1.0, len(pixels))
    deposit[rng.integers(len(pixels))] = amp * obj.sigma[band]
    obj.x[band, pixels[:, 0], pixels[:, 1]] += deposit
    return amp, {"band": band, "pixels": pixels.tolist()}


def _satellite_trail(obj: _Object, rng, neighbour) -> tuple[float, dict]:
    C = obj.x.shape[0]
    h, w = obj.shape
    band = int(rng.integers(C))
    amp = rng.uniform(3.0, 15.0)
    psf = obj.psf[band]
    pad = psf.shape[0] // 2 + 1
    theta = rng.uniform(0, np.pi)
    y0 = obj.centre[0] + rng.uniform(-0.25, 0.25) * h
    x0 = obj.centre[1] + rng.uniform(-0.25, 0.25) * w
    yy, xx = np.mgrid[-pad: h + pad, -pad: w + pad].astype(np.float64)
    # a line of unit flux per unit length: a triangle of half-width one pixel across it
    distance = np.abs((xx - x0) * np.sin(theta) - (yy - y0) * np.cos(theta))
    line = np.clip(1.0 - distance, 0, None)
    observed = _convolve_padded(line, psf, pad)
    scale = amp * obj.sigma[band] / observed.max()
    obj.x[band] += scale * observed
    if obj.truth is not None:
        obj.truth[band] += scale * line[pad:pad + h, pad:pad + w]
    return amp, {"band": band, "point_yx": [y0, x0], "angle_deg": math.degrees(theta),
                 "flux_per_pixel_length": scale}


def _bad_column(obj: _Object, rng, neighbour) -> tuple[float, dict]:
    C = obj.x.shape[0]
    band = int(rng.integers(C))
    column = int(rng.integers(obj.shape[1]))
    amp = rng.uniform(3.0, 10.0)
    hot = bool(rng.uniform() < 0.5)
    if hot:
        obj.x[band, :, column] += amp * obj.sigma[band]
    else:
        obj.x[band, :, column] = -amp * obj.sigma[band]
    return (amp if hot else -amp), {"band": band, "column": column, "kind": "hot" if hot else "dead"}


def _missing_signal(obj: _Object, rng, neighbour) -> tuple[float, dict]:
    C = obj.x.shape[0]
    h, w = obj.shape
    # a rectangle over the galaxy's core: where its light is, so the loss is of signal, not of sky
    sides = rng.uniform(0.25, 0.45, 2) * np.array([h, w])
    centre = np.array(obj.centre) + rng.uniform(-0.3, 0.3, 2) * sides
    y0, x0 = np.clip(np.rint(centre - sides / 2), 0, [h - 1, w - 1]).astype(int)
    y1, x1 = np.clip(np.rint(centre + sides / 2), [y0 + 1, x0 + 1], [h, w]).astype(int)
    zero = bool(rng.uniform() < 0.5)
    if zero:  # a dead readout region in one exposure: one band, no signal and no noise
        bands = [int(rng.integers(C))]
    else:  # light subtracted away (over-subtracted sky, a deblender's over-reach): every band, noise kept
        bands = list(range(C))
    removed = 0.0
    for c in bands:
        region = (c, slice(y0, y1), slice(x0, x1))
        if obj.truth is not None:
            signal = _convolve(obj.truth[c], obj.psf[c])[y0:y1, x0:x1]
        else:  # without truth the light is what lies above the noise: replaced by a fresh noise draw
            signal = None
        if zero:
            light = obj.x[region] if signal is None else signal
            obj.x[region] = 0.0
        elif signal is not None:
            light = signal
            obj.x[region] -= signal  # the object's own noise realisation stays
        else:
            light = obj.x[region].copy()
            obj.x[region] = rng.normal(0.0, obj.sigma[c], light.shape)
        removed += float(np.sum((np.clip(light, 0, None) / obj.sigma[c]) ** 2))
    return math.sqrt(removed), {"kind": "zero" if zero else "noise", "bands": bands,
                                "box_yx": [int(y0), int(y1), int(x0), int(x1)]}


def _bleed(image: np.ndarray, level: float) -> list[int]:
    """Clip `image` (H, W) at `level`; each column's excess charge fills the pixels above and
    below its saturated run up to `level`, half each way, until it runs off the stamp."""
    columns = []
    for j in np.flatnonzero((image > level).any(axis=0)):
        col = image[:, j]
        over = col > level
        excess = float((col[over] - level).sum())
        col[over] = level
        rows = np.flatnonzero(over)
        for start, step in ((rows.max() + 1, 1), (rows.min() - 1, -1)):
            charge, p = 0.5 * excess, start
            while charge > 0 and 0 <= p < len(col):
                add = min(max(level - col[p], 0.0), charge)
                col[p] += add
                charge -= add
                p += step
        columns.append(int(j))
    return columns


def _saturated_star(obj: _Object, rng, neighbour) -> tuple[float, dict]:
    C = obj.x.shape[0]
    h, w = obj.shape
    distance = rng.uniform(0.25, 0.45) * min(h, w)
    phi = rng.uniform(0, 2 * np.pi)
    sy = int(np.clip(np.rint(obj.centre[0] + distance * np.sin(phi)), 0, h - 1))
    sx = int(np.clip(np.rint(obj.centre[1] + distance * np.cos(phi)), 0, w - 1))
    over = math.exp(rng.uniform(math.log(3.0), math.log(30.0)))  # unclipped peak / saturation
    levels, peaks, bleeds = [], [], []
    for c in range(C):
        psf = obj.psf[c]
        pad = psf.shape[0] // 2 + 1
        level = max(_SATURATION_SIGMA * obj.sigma[c], 1.2 * float(obj.x[c].max()))
        flux = over * level / psf.max()
        canvas = np.zeros((h + 2 * pad, w + 2 * pad))
        canvas[sy + pad, sx + pad] = flux
        obj.x[c] += _convolve_padded(canvas, psf, pad)
        if obj.truth is not None:
            obj.truth[c, sy, sx] += flux  # a point source: all its light in one PSF-free pixel
        bleeds.append(_bleed(obj.x[c], level))
        levels.append(level)
        peaks.append(over * level / obj.sigma[c])
    return float(max(peaks)), {"position_yx": [sy, sx], "saturation": levels,
                               "peak_over_saturation": over, "bleed_columns": bleeds}


def _exponential_disk(shape, centre, hlr: float, e1: float, e2: float) -> np.ndarray:
    scale = hlr / 1.678  # half-light radius of an exponential profile = 1.678 scale lengths
    return _subsampled(shape, centre, lambda dy, dx: np.exp(-_elliptical_radius_at(dy, dx, e1, e2) / scale))


def _blended_neighbour(obj: _Object, rng, neighbour) -> tuple[float, dict]:
    C = obj.x.shape[0]
    h, w = obj.shape
    amp = rng.uniform(5.0, 20.0)
    row, truth, hlr_j, centre_j = neighbour(obj.row, rng)
    if truth is None:  # no truth in the store: an exponential disk of similar size
        hlr_j = obj.hlr * rng.uniform(0.7, 1.4)
        e = rng.uniform(-0.4, 0.4, 2)
        centre_j = ((h - 1) / 2, (w - 1) / 2)
        truth = np.repeat(_exponential_disk((h, w), centre_j, hlr_j, *e)[None], C, 0) * _colours(obj)[:, None, None]
    distance = rng.uniform(1.0, 2.0) * (obj.hlr + hlr_j)
    distance = float(min(max(distance, obj.fwhm), 0.35 * min(h, w)))
    phi = rng.uniform(0, 2 * np.pi)
    dy = int(np.rint(obj.centre[0] + distance * np.sin(phi) - centre_j[0]))
    dx = int(np.rint(obj.centre[1] + distance * np.cos(phi) - centre_j[1]))
    amp, band = _add_sky(obj, _shift(truth, dy, dx), amp)
    return amp, {"neighbour_row": row, "offset_pixels": distance, "angle_deg": math.degrees(phi),
                 "shift_yx": [dy, dx], "band": band}


def _ring(obj: _Object, rng, neighbour) -> tuple[float, dict]:
    amp = rng.uniform(2.0, 6.0)
    radius = _feature_radius(obj, rng)
    width = max(0.1 * radius, 0.5)
    e1, e2 = obj.ellipticity

    def profile(dy, dx):
        return np.exp(-0.5 * ((_elliptical_radius_at(dy, dx, e1, e2) - radius) / width) ** 2)

    ring = _subsampled(obj.shape, obj.centre, profile)
    amp, band = _add_sky(obj, ring[None] * _colours(obj)[:, None, None], amp)
    return amp, {"radius_pixels": radius, "width_pixels": width, "centre_yx": list(obj.centre),
                 "e1": e1, "e2": e2, "band": band}


def _tidal_feature(obj: _Object, rng, neighbour) -> tuple[float, dict]:
    amp = rng.uniform(2.0, 6.0)
    radius = _feature_radius(obj, rng)
    angle = rng.uniform(0, 2 * np.pi)
    opening = math.radians(rng.uniform(60.0, 150.0))  # FWHM of the arc
    inner = 0.25 * radius

    def profile(dy, dx):
        r = np.hypot(dy, dx)
        dphi = np.angle(np.exp(1j * (np.arctan2(dy, dx) - angle)))
        radial = np.where(r <= radius, np.exp(-(radius - r) / inner), np.exp(-0.5 * ((r - radius) / 0.5) ** 2))
        return radial * np.exp(-0.5 * (dphi / (opening / 2.3548)) ** 2)

    shell = _subsampled(obj.shape, obj.centre, profile)
    amp, band = _add_sky(obj, shell[None] * _colours(obj)[:, None, None], amp)
    return amp, {"radius_pixels": radius, "angle_deg": math.degrees(angle),
                 "opening_deg": math.degrees(opening), "centre_yx": list(obj.centre), "band": band}


def _extreme_colour(obj: _Object, rng, neighbour) -> tuple[float, dict]:
    band = int(rng.integers(obj.x.shape[0]))
    factor = math.exp(rng.uniform(math.log(3.0), math.log(10.0)))
    if obj.truth is not None:
        obj.x[band] += (factor - 1) * _convolve(obj.truth[band], obj.psf[band])
        obj.truth[band] *= factor
    else:
        obj.x[band] *= factor
        if obj.ivar is not None:
            obj.ivar[band] /= factor**2
    return factor, {"band": band, "factor": factor}


_INJECTORS = {
    "cosmic_ray": _cosmic_ray,
    "satellite_trail": _satellite_trail,
    "bad_column": _bad_column,
    "saturated_star": _saturated_star,
    "blended_neighbour": _blended_neighbour,
    "ring": _ring,
    "tidal_feature": _tidal_feature,
    "extreme_colour": _extreme_colour,
    "missing_signal": _missing_signal,
}


# --------------------------------------------------------------------------------------
# reading what each object needs


class _Context:
    """What the injectors read about a store's objects: PSFs, noise, sizes, centres."""

    def __init__(self, store: Store):
        self.store = store
        self.C, self.H, self.W = store.sample_shape
        bands = store.bands or tuple(f"ch{c}" for c in range(self.C))
        self.bands = bands
        self.scale = store.pixel_scale
        cols = set(store.columns)

        def band_column(stem: str):
            names = [f"{stem}_{b}" for b in bands]
            if all(n in cols for n in names):
                return np.stack([store.column(n).astype(np.float64) for n in names], 1)
            if stem in cols and self.C == 1:
                return store.column(stem).astype(np.float64)[:, None]
            return None

        self.noise_sigma = band_column("noise_sigma")
        self.flux = band_column("flux")
        fwhm = band_column("psf_fwhm")
        self.psf_fwhm = fwhm / self.scale if fwhm is not None and self.scale else None
        self.hlr = (store.column("half_light_radius").astype(np.float64) / self.scale
                    if "half_light_radius" in cols and self.scale else None)
        self.e = ((store.column("e1").astype(np.float64), store.column("e2").astype(np.float64))
                  if {"e1", "e2"} <= cols else None)
        self.has_truth = store.has("truth")
        self.centre_pixel = (store.meta.get("extra") or {}).get("centre_pixel")

    def psf(self, rows: np.ndarray) -> np.ndarray | None:
        if not self.store.has("psf"):
            return None
        psf = np.asarray(self.store.read("psf", rows), dtype=np.float64)
        if psf.ndim == 3:  # one (h, w) stamp for all bands
            psf = np.repeat(psf[:, None], self.C, axis=1)
        return psf / psf.sum(axis=(-2, -1), keepdims=True)

    def make(self, row: int, x, truth, ivar, psf, rng) -> _Object:
        x = np.asarray(x, dtype=np.float64).copy()
        truth = None if truth is None else np.asarray(truth, dtype=np.float64).copy()
        ivar = None if ivar is None else np.asarray(ivar, dtype=np.float64).copy()
        if ivar is not None and (ivar > 0).any():
            sigma = np.array([1 / math.sqrt(float(np.median(ivar[c][ivar[c] > 0]))) if (ivar[c] > 0).any()
                              else _border_sigma(x[c]) for c in range(self.C)])
        elif self.noise_sigma is not None:
            sigma = self.noise_sigma[row].copy()
        else:
            sigma = np.array([_border_sigma(x[c]) for c in range(self.C)])
        if psf is None:
            fwhm = self.psf_fwhm[row] if self.psf_fwhm is not None else np.full(self.C, _FALLBACK_PSF_FWHM)
            psf = np.stack([_gaussian_psf(float(f)) for f in fwhm])
            fwhm_ref = float(np.median(fwhm))
        else:
            fwhm_ref = (float(np.median(self.psf_fwhm[row])) if self.psf_fwhm is not None
                        else float(np.median([_psf_fwhm_pixels(p) for p in psf])))
        light = (truth if truth is not None else x).sum(axis=0)
        centre = _centroid(truth.sum(axis=0)) if truth is not None else None
        if centre is None:
            centre = (tuple(float(v) for v in self.centre_pixel) if self.centre_pixel
                      else ((self.H - 1) / 2, (self.W - 1) / 2))
        hlr = float(self.hlr[row]) if self.hlr is not None else _half_light_radius(light, centre)
        if self.flux is not None:
            flux = self.flux[row].copy()
        else:
            flux = (truth if truth is not None else np.clip(x, 0, None)).sum(axis=(1, 2))
        e = (float(self.e[0][row]), float(self.e[1][row])) if self.e is not None else (0.0, 0.0)
        return _Object(row=row, x=x, truth=truth, ivar=ivar, psf=psf, sigma=sigma, centre=centre, hlr=hlr,
                       fwhm=fwhm_ref, ellipticity=e, flux=flux, rng=rng)

    def neighbour(self, row: int, rng) -> tuple[int, np.ndarray | None, float, tuple[float, float]]:
        """Another object's noiseless truth, its half-light radius (pixels) and centre."""
        n = len(self.store)
        other = int(rng.integers(n - 1)) if n > 1 else row
        other += int(n > 1 and other >= row)
        if not self.has_truth:
            return other, None, 0.0, (0.0, 0.0)
        truth = np.asarray(self.store.read("truth", [other])[0], dtype=np.float64)
        centre = _centroid(truth.sum(axis=0)) or ((self.H - 1) / 2, (self.W - 1) / 2)
        hlr = float(self.hlr[other]) if self.hlr is not None else _half_light_radius(truth.sum(axis=0), centre)
        return other, truth, hlr, centre


# --------------------------------------------------------------------------------------
# public entry point


def _check_types(types, n_bands: int) -> tuple[str, ...]:
    if types is None:
        return tuple(t for t in ANOMALY_TYPES if n_bands > 1 or t != "extreme_colour")
    types = comma_list(types)
    if not types:
        raise InputError(f"no anomaly types given; choose from {', '.join(ANOMALY_TYPES + DEFICITS)}")
    unknown = [t for t in types if t not in _INJECTORS]
    if unknown:
        raise InputError(f"unknown anomaly type(s) {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(ANOMALY_TYPES + DEFICITS)}")
    if len(set(types)) != len(types):
        raise InputError(f"anomaly types {types} repeat a type; give each once")
    if "extreme_colour" in types and n_bands < 2:
        raise InputError("extreme_colour scales one band against the others, but the store has one band: "
                         "leave it out of --types or inject into a multi-band store")
    return types


def _assign(n: int, fraction: float, types: Sequence[str], seed: int) -> dict[int, str]:
    """Row -> anomaly type for round(fraction * n) seeded rows, split evenly over `types`."""
    total = int(round(fraction * n))
    if fraction > 0 and total == 0:
        raise InputError(f"fraction {fraction} of {n} objects rounds to no anomalies; raise --fraction "
                         f"to at least {1 / n:.2g}")
    counts = [total // len(types) + (k < total % len(types)) for k in range(len(types))]
    rows = np.random.default_rng([seed, 0]).permutation(n)[:total]
    labels = np.repeat(np.asarray(types, dtype=object), counts)
    return {int(r): str(t) for r, t in zip(rows, labels)}


def _adjust_catalog(table: pa.Table, updates: dict[str, dict[int, float]]) -> pa.Table:
    """Multiply catalog cells: {column: {position in table: factor}}; 'magnitude' factors are
    flux factors (the magnitude changes by -2.5 log10 of it)."""
    for name, cells in updates.items():
        if not cells or name not in table.column_names:
            continue
        values = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64).copy()
        for pos, factor in cells.items():
            values[pos] = values[pos] - 2.5 * math.log10(factor) if name == "magnitude" else values[pos] * factor
        field = table.schema.field(name)
        table = table.set_column(table.column_names.index(name), field,
                                 pa.array(values.astype(field.type.to_pandas_dtype())))
    return table


def inject_anomalies(store: Store | str | os.PathLike, out: str | os.PathLike, fraction: float = 0.02,
                     types: Sequence[str] | str | None = None, seed: int = 0, overwrite: bool = False,
                     progress: bool = True) -> Store:
    """Copy the image store `store` to `out` with labelled anomalies in a `fraction` of its objects.

    Arguments:
        store: an image store (path or :class:`~deepfield.data.store.Store`); never modified.
        out: the new store (written atomically).
        fraction: share of objects given an anomaly, split as evenly as possible over `types`
            (``round(fraction * N)`` objects in all).
        types: anomaly types (module docstring), a sequence or comma-separated; default all
            that apply (``extreme_colour`` needs two or more bands).
        seed: chooses the objects and draws every anomaly; the same seed gives the same store.
        overwrite: replace an existing store at `out`.
        progress: show a progress bar (stderr).

    Returns:
        The new :class:`~deepfield.data.store.Store`, with catalog columns ``anomaly_type``,
        ``anomaly_strength`` and ``anomaly_params``.
    """
    store = store if isinstance(store, Store) else open_store(store)
    if store.kind != "image" or len(store.sample_shape) != 3:
        raise InputError(f"store {store.path} holds {store.kind} data of shape {store.sample_shape}; "
                         "anomalies are injected into (N, C, H, W) image stores")
    if os.path.abspath(out) == os.path.abspath(store.path):
        raise InputError(f"out {out} is the input store itself; the input is never modified: choose a new path")
    if "anomaly_type" in store.columns:
        raise InputError(f"store {store.path} already has an anomaly_type column (it was injected "
                         "before); inject into the clean store instead")
    if not 0 <= fraction <= 1:
        raise InputError(f"fraction {fraction}: give a share of objects between 0 and 1, e.g. 0.02")
    seed = int(seed)
    if seed < 0:
        raise InputError(f"seed={seed}: use a non-negative integer seed")
    types = _check_types(types, store.sample_shape[0])
    n = len(store)
    if n == 0:
        raise InputError(f"store {store.path} is empty")
    chosen = _assign(n, fraction, types, seed)
    ctx = _Context(store)
    reference = (store.meta.get("extra") or {}).get("reference_band") or ("r" if "r" in ctx.bands else ctx.bands[0])
    per_row = {name: store.array_shape(name) for name in store.array_names if name != "x"}
    shared = {name: store.read_shared(name) for name in store.shared_arrays}
    counts = {t: sum(1 for v in chosen.values() if v == t) for t in types}
    prov = dict(store.meta.get("provenance", {}))
    prov.update({"copied_from": str(store.path), "source_fingerprint": store.fingerprint,
                 "anomalies": {"injector": "deepfield.data.anomalies.inject_anomalies", "fraction": fraction,
                               "types": list(types), "seed": seed, "counts": counts}})
    bar, task = progress_task(progress, n, "injecting anomalies", time_remaining=False)
    with create_store(out, sample_shape=store.sample_shape, kind="image", bands=store.bands,
                      pixel_scale=store.pixel_scale, arrays=per_row, shared=shared, units=store.units,
                      provenance=prov, extra_meta=store.meta.get("extra"), overwrite=overwrite) as writer, bar:
        for start in range(0, n, _BATCH):
            rows = np.arange(start, min(start + _BATCH, n))
            batch = {name: np.array(store.read(name, rows)) for name in store.array_names}
            psf = ctx.psf(rows)
            kinds = np.full(rows.size, "none", dtype=object)
            strength = np.zeros(rows.size)
            params = np.full(rows.size, "", dtype=object)
            updates: dict[str, dict[int, float]] = {}
            for pos, row in enumerate(rows):
                kind = chosen.get(int(row))
                if kind is None:
                    continue
                rng = np.random.default_rng([seed, int(row), (ANOMALY_TYPES + DEFICITS).index(kind) + 1])
                obj = ctx.make(int(row), batch["x"][pos], batch["truth"][pos] if "truth" in batch else None,
                               batch["ivar"][pos] if "ivar" in batch else None,
                               None if psf is None else psf[pos], rng)
                strength[pos], detail = _INJECTORS[kind](obj, rng, ctx.neighbour)
                batch["x"][pos] = obj.x
                if obj.truth is not None:
                    batch["truth"][pos] = obj.truth
                if obj.ivar is not None:
                    batch["ivar"][pos] = obj.ivar
                if kind == "extreme_colour":
                    band, factor = ctx.bands[detail["band"]], detail["factor"]
                    for name in (f"flux_{band}", f"snr_{band}") + (("snr", "magnitude") if band == reference else ()):
                        updates.setdefault(name, {})[pos] = factor
                kinds[pos], params[pos] = kind, json.dumps(detail)
            catalog = _adjust_catalog(store.catalog.take(pa.array(rows)), updates)
            catalog = (catalog.append_column("anomaly_type", pa.array(kinds.tolist(), pa.string()))
                       .append_column("anomaly_strength", pa.array(strength))
                       .append_column("anomaly_params", pa.array(params.tolist(), pa.string())))
            writer.append(catalog=catalog, **batch)
            bar.advance(task, rows.size)
    return writer.store
