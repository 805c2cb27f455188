"""Galaxy morphology of image stamps: HSM adaptive moments and non-parametric Gini, M20,
concentration and asymmetry.

Units and conventions, stated once:

- images are ``(N, H, W)`` or ``(N, 1, H, W)`` arrays of one band, in counts (any linear unit:
  every statistic here is either a flux in that unit or dimensionless); one galaxy per stamp;
- positions are 0-indexed array pixel coordinates, ``x`` the column and ``y`` the row, the
  centre of pixel ``[j, i]`` at ``(x, y) = (i, j)``; sizes and radii are in pixels, with an
  ``*_arcsec`` twin where a ``pixel_scale`` (arcsec/pixel) is given;
- ``noise_sigma`` is the standard deviation of white background noise, counts per pixel (a
  scalar or one value per stamp);
- a measurement that fails is NaN, never an exception; :func:`morphology` counts them.

How the non-parametric statistics are measured (after statmorph, Rodriguez-Gomez et al. 2019,
with the deviations marked *):

1. *Detection segment*: the image smoothed by a Gaussian of 1 pixel, above
   ``max(2 sigma_smooth, 1e-3 peak)`` where ``sigma_smooth = 0.282 noise_sigma`` is the noise of
   the smoothed image (noise_sigma from the argument, else a MAD estimate from the 2-pixel
   border of the stamp); the 8-connected region holding the stamp centre (or the smoothed peak
   if the centre is not detected). *statmorph takes this segmap from the user.
2. *Centroid*: first moments of the positive flux in the detection segment.
3. *Curves of growth*: each pixel spreads its flux evenly over the range of distances it
   spans, pixels within 6 pixels of the centre split into 4x4 sub-pixels first, so apertures
   cut the pixels they cross (*statmorph uses exact aperture overlaps; the two agree to a few
   0.1 % of the Petrosian radius). Aperture means divide by the full geometric area, parts off
   the stamp counting as zero flux (statmorph's convention).
4. *Petrosian radius* (eta = 0.2): the first radius where the mean surface brightness in an
   annulus of width 1 pixel falls below 0.2 of the mean within; circular about the centroid
   (for the asymmetry aperture) and about the asymmetry centre (for the concentration);
   elliptical about the asymmetry centre, with the elongation and orientation of the
   second moments of the detection segment (for the Gini segment). 2.16 (exponential) and
   1.82 (de Vaucouleurs) half-light radii.
5. *Asymmetry* (Conselice 2000; Lotz et al. 2004, eq. 10):
   ``A = (sum |I - I_180| - B) / sum |I|`` inside a circle of 1.5 circular Petrosian radii about
   the rotation centre, pixels whose rotated partner is off the stamp left out on both sides,
   ``I_180`` interpolated bilinearly. The background term ``B`` is, when ``noise_sigma`` is
   given, its expectation for white noise: ``sqrt(2/pi) noise_sigma sqrt(1 + sum w^2)`` per
   pixel, ``w`` the bilinear weights (``2 sigma / sqrt(pi)`` at a half-integer centre, where the
   rotation is an exact flip); without ``noise_sigma``, no correction. *statmorph measures B
   on a sky box with an exact flip, which over-corrects wherever interpolation smooths the
   noise. *The rotation centre minimises A of the image smoothed by a Gaussian of 1 pixel
   (with the matching correction for smoothed noise): a half-pixel grid search within +-1
   pixel of the centroid refined by Nelder-Mead. Minimising A of the noisy image itself, as
   statmorph does, picks the centre where the noise happens to look symmetric and biases A low
   (by -0.04 at S/N 30 for a symmetric galaxy); on the smoothed image the bias is < 0.01 at
   S/N >= 30 (-0.02 at S/N 15), and a noiseless symmetric galaxy has A < 0.01 at any sub-pixel
   position (0 when centred on a pixel centre or corner).
6. *Concentration* (Conselice 2003; Lotz et al. 2004): ``C = 5 log10(r80 / r20)``, radii of
   circles about the asymmetry centre holding 20 % and 80 % of the flux within 1.5 circular
   Petrosian radii. For this total the continuous profiles give C = 2.74 (exponential) and
   4.29 (de Vaucouleurs); the often quoted 2.8 and 5.3 take the total to infinity.
7. *Gini segment* (Lotz et al. 2004): the image smoothed by a Gaussian of 0.2 elliptical
   Petrosian radii, above its mean surface brightness on the elliptical Petrosian annulus; the
   8-connected region holding the asymmetry centre (none: the measurement fails;
   *statmorph keeps all regions and raises a flag).
8. *Gini* (Lotz et al. 2004, eq. 6) of ``|I|`` over the segment; *M20* (eq. 7-8) about the
   first-moment centre of the segment, the brightest pixels holding 20 % of its flux.

References:
    Bernstein & Jarvis (2002), AJ 123, 583, arXiv:astro-ph/0107431 (adaptive moments).
    Hirata & Seljak (2003), MNRAS 343, 459, arXiv:astro-ph/0301054 (HSM).
    Conselice, Bershady & Jangren (2000), ApJ 529, 886, arXiv:astro-ph/9907399 (asymmetry).
    Conselice (2003), ApJS 147, 1, arXiv:astro-ph/0303065 (CAS).
    Lotz, Primack & Madau (2004), AJ 128, 163, arXiv:astro-ph/0311352 (Gini, M20).
    Rodriguez-Gomez et al. (2019), MNRAS 483, 4140, arXiv:1809.08239 (statmorph).

Example:
    >>> import galsim
    >>> image = galsim.Exponential(half_light_radius=1.0).drawImage(nx=64, ny=64, scale=0.2).array
    >>> m = morphology(image[None], pixel_scale=0.2)
    >>> bool(m["hsm_ok"][0]), round(float(m["concentration"][0]), 1), m["n_failed"]["gini"]
    (True, 2.7, 0)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
from scipy import ndimage, optimize

from deepfield.errors import InputError

__all__ = [
    "hsm_moments",
    "gini",
    "m20",
    "concentration",
    "asymmetry",
    "gini_segmap",
    "petrosian_radius",
    "morphology",
    "MORPHOLOGY_STATISTICS",
]

ETA = 0.2  # Petrosian ratio defining the Petrosian radius
ANNULUS_WIDTH = 1.0  # pixels
PETRO_EXTENT = 1.5  # asymmetry and concentration apertures, in circular Petrosian radii
GINI_SMOOTHING = 0.2  # Gini segment smoothing, in elliptical Petrosian radii
SUBPIXELS = 4  # per side, for the curves of growth
_SUBPIXEL_RADIUS = 6.0  # pixels: sub-pixel sums within, whole pixels beyond
_DR = 0.05  # radial bin of the curves of growth, pixels
_ANNULUS_BINS = int(round(0.5 * ANNULUS_WIDTH / _DR))
_CENTRE_SMOOTHING = 1.0  # pixels: Gaussian smoothing of the image the asymmetry centre is found on
_MAX_SHIFT = 2.0  # largest distance of the asymmetry centre from the centroid, pixels (per axis)

#: The statistics :func:`morphology` returns, with a one-line meaning (units).
MORPHOLOGY_STATISTICS = {
    "flux": "HSM moments_amp: flux of the best-fit elliptical Gaussian (image units)",
    "sigma": "HSM moments_sigma, det(M)^(1/4) of the adaptive moments (pixels)",
    "sigma_arcsec": "HSM moments_sigma (arcsec; with pixel_scale)",
    "e1": "HSM observed_shape g1, shear-type ellipticity (a-b)/(a+b) along x",
    "e2": "HSM observed_shape g2",
    "e": "HSM |g|",
    "rho4": "HSM radial fourth moment (2 for a Gaussian)",
    "centroid_x": "HSM centroid x (pixels, 0-indexed column)",
    "centroid_y": "HSM centroid y (pixels, 0-indexed row)",
    "gini": "Gini coefficient of |I| over the Gini segment (0 uniform, 1 one pixel)",
    "m20": "log10 second moment of the brightest 20% of the flux over the total",
    "concentration": "5 log10(r80 / r20)",
    "asymmetry": "rotational (180 deg) asymmetry, background-corrected with noise_sigma",
    "r20": "radius holding 20% of the flux within 1.5 Petrosian radii (pixels)",
    "r80": "radius holding 80% of the flux within 1.5 Petrosian radii (pixels)",
    "petrosian_radius": "circular Petrosian radius (eta = 0.2) about the asymmetry centre (pixels)",
    "petrosian_radius_arcsec": "circular Petrosian radius (arcsec; with pixel_scale)",
}


class _Failed(Exception):
    """A measurement that cannot be made on this stamp (becomes NaN)."""


# ----------------------------------------------------------------------------- input checks


def _as_batch(images, name: str = "images") -> np.ndarray:
    """(N, H, W) float64 from (N, H, W), (N, 1, H, W) or one (H, W) stamp."""
    a = np.asarray(images)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 4:
        if a.shape[1] != 1:
            raise InputError(f"{name} have shape {a.shape}: {a.shape[1]} bands, but morphology is "
                             f"measured in one band; pass one, e.g. {name}[:, {a.shape[1] // 2}]")
        a = a[:, 0]
    elif a.ndim != 3:
        raise InputError(f"{name} have shape {a.shape}: expected (N, H, W), (N, 1, H, W) or (H, W)")
    if a.shape[1] < 4 or a.shape[2] < 4:
        raise InputError(f"{name} have shape {a.shape}: stamps must be at least 4x4 pixels")
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise InputError(f"{name} have dtype {a.dtype}: pass real pixel values")
    return np.asarray(a, dtype=np.float64)


def _noise_per_stamp(noise_sigma, n: int) -> np.ndarray | None:
    if noise_sigma is None:
        return None
    s = np.asarray(noise_sigma, dtype=np.float64)
    if s.ndim == 0:
        s = np.full(n, float(s))
    s = s.reshape(-1)
    if s.shape != (n,):
        raise InputError(f"noise_sigma has {s.size} values for {n} stamps: pass one value or one per stamp")
    if np.any(~np.isfinite(s)) or np.any(s < 0):
        raise InputError("noise_sigma must be finite and >= 0 (counts/pixel); "
                         f"got min {np.nanmin(s) if np.isfinite(s).any() else s[0]}")
    return s


def _segmaps(segmap, shape) -> np.ndarray | None:
    if segmap is None:
        return None
    s = np.asarray(segmap)
    if s.ndim == 2:
        s = np.broadcast_to(s, shape)
    elif s.ndim == 4 and s.shape[1] == 1:
        s = s[:, 0]
    if s.shape != shape:
        raise InputError(f"segmap has shape {np.shape(segmap)} for images of shape {shape}: "
                         "pass one (H, W) mask or one per stamp")
    return s.astype(bool)


# ----------------------------------------------------------------------------- HSM


def hsm_moments(images, pixel_scale: float | None = None,
                guess_sigma: float | None = None) -> dict[str, np.ndarray]:
    """GalSim HSM adaptive moments of each stamp.

    Arguments:
        images: (N, H, W) or (N, 1, H, W) stamps of one band (counts), or one (H, W) stamp.
        pixel_scale: arcsec per pixel; adds ``sigma_arcsec``.
        guess_sigma: first guess of the Gaussian sigma, pixels (GalSim's default, 5, if None).

    Returns:
        Arrays of length N: ``flux`` (moments_amp, image units), ``sigma`` (moments_sigma,
        pixels), ``sigma_arcsec`` (with `pixel_scale`), ``e1``, ``e2`` (observed_shape g1, g2:
        shear-type ellipticity (a - b) / (a + b), the convention of the simulator's catalog
        e1, e2), ``e`` (|g|), ``rho4``, ``centroid_x``, ``centroid_y`` (0-indexed pixels) and
        ``hsm_ok`` (bool). A stamp where HSM fails (status != 0, e.g. a blank stamp) or with
        non-finite pixels has NaN everywhere and ``hsm_ok`` False.

    References:
        Hirata & Seljak (2003), arXiv:astro-ph/0301054; Mandelbaum et al. (2005),
        arXiv:astro-ph/0501201; GalSim ``galsim.hsm.FindAdaptiveMom``.

    Example:
        >>> import galsim
        >>> im = galsim.Gaussian(sigma=0.8).drawImage(nx=48, ny=48, scale=0.2, method="no_pixel")
        >>> round(float(hsm_moments(im.array, pixel_scale=0.2)["sigma_arcsec"][0]), 3)
        0.8
    """
    import galsim

    a = _as_batch(images)
    n = len(a)
    keys = ("flux", "sigma", "e1", "e2", "e", "rho4", "centroid_x", "centroid_y")
    out = {k: np.full(n, np.nan) for k in keys}
    ok = np.zeros(n, dtype=bool)
    kwargs = {} if guess_sigma is None else {"guess_sig": float(guess_sigma)}
    finite = np.isfinite(a).all(axis=(1, 2))
    for i in range(n):
        if not finite[i]:
            continue
        image = galsim.Image(a[i], scale=pixel_scale, copy=False)
        try:
            res = galsim.hsm.FindAdaptiveMom(image, strict=False, **kwargs)
        except (galsim.GalSimError, RuntimeError, ValueError):
            continue
        if res.moments_status != 0 or not res.moments_sigma > 0:
            continue
        shape = res.observed_shape
        out["flux"][i] = res.moments_amp
        out["sigma"][i] = res.moments_sigma
        out["e1"][i], out["e2"][i], out["e"][i] = shape.g1, shape.g2, shape.g
        out["rho4"][i] = res.moments_rho4
        # GalSim images from arrays start at (1, 1); report 0-indexed array coordinates
        out["centroid_x"][i] = res.moments_centroid.x - image.xmin
        out["centroid_y"][i] = res.moments_centroid.y - image.ymin
        ok[i] = True
    if pixel_scale is not None:
        out["sigma_arcsec"] = out["sigma"] * float(pixel_scale)
    out["hsm_ok"] = ok
    return out


# ----------------------------------------------------------------------------- one stamp


@functools.lru_cache(maxsize=16)
def _grids(h: int, w: int):
    """Pixel coordinates x, y of an (h, w) stamp and the (x, y) offsets of the sub-pixels."""
    y, x = np.mgrid[:h, :w].astype(np.float64)
    sub = (np.arange(SUBPIXELS) + 0.5) / SUBPIXELS - 0.5
    oy, ox = np.meshgrid(sub, sub, indexing="ij")
    return x, y, (ox.ravel(), oy.ravel())


class _Stamp:
    """The morphology of one stamp; each quantity is computed once, when first needed."""

    def __init__(self, image: np.ndarray, noise_sigma: float | None):
        if not np.isfinite(image).all():
            raise _Failed("non-finite pixels")
        self.image = image
        self.noise_sigma = noise_sigma
        self.h, self.w = image.shape

    # --- detection and centroid

    @functools.cached_property
    def _noise(self) -> float:
        if self.noise_sigma is not None:
            return float(self.noise_sigma)
        border = np.concatenate([self.image[:2].ravel(), self.image[-2:].ravel(),
                                 self.image[2:-2, :2].ravel(), self.image[2:-2, -2:].ravel()])
        return float(1.4826 * np.median(np.abs(border - np.median(border))))

    @functools.cached_property
    def detection(self) -> np.ndarray:
        smooth = ndimage.gaussian_filter(self.image, 1.0)
        peak = smooth.max()
        if not peak > 0:
            raise _Failed("no positive flux")
        # Gaussian smoothing with sigma 1 pixel divides white noise by 2 sqrt(pi)
        threshold = max(2 * self._noise / (2 * math.sqrt(math.pi)), 1e-3 * peak)
        labels, count = ndimage.label(smooth > threshold, structure=np.ones((3, 3)))
        if count == 0:
            raise _Failed("nothing detected")
        label = labels[self.h // 2, self.w // 2]
        if label == 0:
            label = labels.flat[np.argmax(smooth)]
        return labels == label

    @functools.cached_property
    def centroid(self) -> tuple[float, float]:
        x, y, _ = _grids(self.h, self.w)
        weight = np.where(self.detection, np.clip(self.image, 0, None), 0.0)
        total = weight.sum()
        if not total > 0:
            raise _Failed("no positive flux in the detection segment")
        return float((weight * x).sum() / total), float((weight * y).sum() / total)

    # --- curves of growth and Petrosian radii

    def growth(self, image: np.ndarray, centre, elongation: float = 1.0, theta: float = 0.0):
        """Flux within distance k * _DR of `centre`, k = 0, 1, ...; the distance is the semi-major
        axis of the ellipse through a point (circles for elongation 1).

        Each pixel (split into SUBPIXELS x SUBPIXELS within _SUBPIXEL_RADIUS of the centre, where
        the aperture's curvature across a pixel matters) spreads its flux evenly over the
        distances it spans, its side times |grad d|_1, so the curve is piecewise linear and
        smooth in the centre: an aperture cuts the pixels it crosses, as in exact photometry."""
        x, y, offsets = _grids(self.h, self.w)
        dx, dy = x - centre[0], y - centre[1]
        inner = dx * dx + dy * dy < _SUBPIXEL_RADIUS**2
        n_sub = SUBPIXELS**2
        dx = np.concatenate([dx[~inner], (dx[inner][:, None] + offsets[0]).ravel()])
        dy = np.concatenate([dy[~inner], (dy[inner][:, None] + offsets[1]).ravel()])
        flux = np.concatenate([image[~inner], np.repeat(image[inner] / n_sub, n_sub)])
        side = np.concatenate([np.ones(int((~inner).sum())), np.full(int(inner.sum()) * n_sub, 1 / SUBPIXELS)])
        if elongation == 1.0:
            d = np.sqrt(dx * dx + dy * dy)
            gx, gy = dx, dy
        else:
            c, s = math.cos(theta), math.sin(theta)
            u = dx * c + dy * s
            v = (dy * c - dx * s) * elongation
            d = np.sqrt(u * u + v * v)
            # grad d = (u grad u + v grad v) / d, grad u = (c, s), grad v = elongation (-s, c)
            gx = u * c - v * elongation * s
            gy = u * s + v * elongation * c
        with np.errstate(divide="ignore", invalid="ignore"):
            extent = np.where(d > 0, side * (np.abs(gx) + np.abs(gy)) / d, side)
        lo = np.maximum(d - 0.5 * extent, 0.0) / _DR
        hi = (d + 0.5 * extent) / _DR
        density = flux / (hi - lo)
        # F(k) = sum density * (ramp(k - lo) - ramp(k - hi)); the second difference of
        # ramp(k - a) puts ceil(a) - a at ceil(a) and 1 - (ceil(a) - a) at ceil(a) + 1.
        index, weight = [], []
        for edge, sign in ((lo, 1.0), (hi, -1.0)):
            k = np.ceil(edge)
            frac = k - edge
            index += [k, k + 1]
            weight += [sign * density * frac, sign * density * (1 - frac)]
        index = np.concatenate(index).astype(np.int64)
        second = np.bincount(index, weights=np.concatenate(weight),
                             minlength=int(index.max()) + 2 + 4 * _ANNULUS_BINS)
        return np.cumsum(np.cumsum(second))

    @staticmethod
    def _petrosian(cumulative: np.ndarray) -> float:
        """Petrosian radius (pixels) from a curve of growth at radii k * _DR."""
        k = np.arange(int(round(ANNULUS_WIDTH / _DR)), len(cumulative) - _ANNULUS_BINS)
        r = k * _DR
        annulus = cumulative[k + _ANNULUS_BINS] - cumulative[k - _ANNULUS_BINS]
        inside = cumulative[k]
        # mean in the annulus over mean within: (dF / 2 pi r w) / (F / pi r^2); abs as statmorph
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(inside != 0, np.abs(annulus) * r / (2 * ANNULUS_WIDTH * np.abs(inside)), 1.0)
        below = np.flatnonzero(ratio < ETA)
        if len(below) == 0:
            raise _Failed("no Petrosian radius")
        j = below[0]
        if j == 0:
            return float(r[0])
        f0, f1 = ratio[j - 1] - ETA, ratio[j] - ETA
        return float(r[j - 1] + (r[j] - r[j - 1]) * f0 / (f0 - f1))

    @staticmethod
    def _at(cumulative: np.ndarray, radius: float) -> float:
        return float(np.interp(radius / _DR, np.arange(len(cumulative)), cumulative))

    @functools.cached_property
    def petrosian_centroid(self) -> float:
        return self._petrosian(self.growth(self.image, self.centroid))

    @functools.cached_property
    def _growth_asymmetry_centre(self) -> np.ndarray:
        return self.growth(self.image, self.asymmetry_centre)

    @functools.cached_property
    def petrosian_radius(self) -> float:
        return self._petrosian(self._growth_asymmetry_centre)

    # --- asymmetry

    def _box(self, image: np.ndarray, noise: float, rho: float):
        """The part of `image` any trial aperture can reach (the aperture radius plus the
        largest centre excursion _MAX_SHIFT about the centroid), its absolute value, its
        180-degree flip zero-padded by p, its pixel grids, corner, the aperture radius and:
        `noise` is the image's noise sigma per pixel (0: no correction) and `rho` the
        correlation coefficient of its noise between neighbouring pixels."""
        radius = PETRO_EXTENT * self.petrosian_centroid
        half = int(math.ceil(radius + 0.5 + _MAX_SHIFT)) + 1
        xc, yc = self.centroid
        x0, y0 = max(0, int(xc) - half), max(0, int(yc) - half)
        x1, y1 = min(self.w, int(xc) + half + 2), min(self.h, int(yc) + half + 2)
        box = image[y0:y1, x0:x1]
        # The image rotated by 180 degrees about (xc, yc) at pixel (x, y) is I(2 xc - x, 2 yc - y):
        # the flipped box shifted by an integer plus a bilinear blend with the same weights
        # everywhere; zero padding, and masks for pixels whose partner is off the stamp.
        p = max(box.shape) + 2
        padded = np.pad(box[::-1, ::-1], p)
        y, x = np.mgrid[:box.shape[0], :box.shape[1]].astype(np.float64)
        return box, np.abs(box), padded, p, x, y, (x0, y0), radius, noise, rho

    @functools.cached_property
    def _box_image(self):
        return self._box(self.image, self.noise_sigma or 0.0, 0.0)

    @functools.cached_property
    def _box_smoothed(self):
        # white noise smoothed by a Gaussian of s pixels: sigma / (2 sqrt(pi) s), and a
        # correlation exp(-1 / (4 s^2)) between neighbouring pixels
        s = _CENTRE_SMOOTHING
        smooth = ndimage.gaussian_filter(self.image, s)
        noise = (self.noise_sigma or 0.0) / (2 * math.sqrt(math.pi) * s)
        return self._box(smooth, noise, math.exp(-1 / (4 * s * s)))

    def _asymmetry_at(self, centre, smoothed: bool = False) -> float:
        """A about `centre` (stamp pixels) of the image or its smoothed version; inf off the
        search region."""
        box, abs_box, padded, p, x, y, (x0, y0), radius, noise, rho = (
            self._box_smoothed if smoothed else self._box_image)
        cx, cy = self.centroid
        xc, yc = float(centre[0]), float(centre[1])
        if not (abs(xc - cx) <= _MAX_SHIFT and abs(yc - cy) <= _MAX_SHIFT
                and 0 <= xc <= self.w - 1 and 0 <= yc <= self.h - 1):
            return np.inf
        xc, yc = xc - x0, yc - y0
        h, w = box.shape
        ix, iy = math.floor(2 * xc), math.floor(2 * yc)
        fx, fy = 2 * xc - ix, 2 * yc - iy
        ox, oy = w - 1 - ix, h - 1 - iy  # box[iy - y, ix - x] = flipped[y + oy, x + ox]

        def view(dy, dx):  # box[iy + dy - y, ix + dx - x]
            ys, xs = p + oy - dy, p + ox - dx
            return padded[ys:ys + h, xs:xs + w]

        rot = (1 - fy) * (1 - fx) * view(0, 0)
        if fx > 0:
            rot += (1 - fy) * fx * view(0, 1)
        if fy > 0:
            rot += fy * (1 - fx) * view(1, 0)
            if fx > 0:
                rot += fy * fx * view(1, 1)
        # a soft aperture edge (linear over one pixel) keeps A continuous as the centre moves
        aperture = np.clip(radius + 0.5 - np.sqrt((x - xc) ** 2 + (y - yc) ** 2), 0.0, 1.0)
        reach = radius + 0.5
        if xc - reach < 1 or yc - reach < 1 or xc + reach > w - 2 or yc + reach > h - 2:
            # pixels whose partner (and its interpolation neighbour) is off the stamp
            u = ix - np.arange(w)
            v = iy - np.arange(h)
            valid_x = (u >= 0) & (u + (fx > 0) <= w - 1)
            valid_y = (v >= 0) & (v + (fy > 0) <= h - 1)
            aperture *= valid_y[:, None] & valid_x[None, :]
        total = float((aperture * abs_box).sum())
        if not total > 0:
            return np.inf
        difference = float((aperture * np.abs(box - rot)).sum())
        if noise > 0:
            # E|n - n_180| = sqrt(2 / pi) sqrt(var), var = noise^2 (1 + var of the bilinear blend
            # sum_ij w_i w_j rho_ij, separable in x and y)
            blend_x = (1 - fx) ** 2 + fx**2 + 2 * fx * (1 - fx) * rho
            blend_y = (1 - fy) ** 2 + fy**2 + 2 * fy * (1 - fy) * rho
            difference -= aperture.sum() * math.sqrt(2 / math.pi) * noise * math.sqrt(1 + blend_x * blend_y)
        return difference / total

    @functools.cached_property
    def asymmetry_centre(self) -> tuple[float, float]:
        """The centre minimising the asymmetry of the smoothed image: a half-pixel grid search
        (exact flips) within 1 pixel of the centroid, refined by Nelder-Mead."""
        x0, y0 = self.centroid
        x0, y0 = round(2 * x0) / 2, round(2 * y0) / 2
        best, best_a = None, np.inf
        for dy in (-1.0, -0.5, 0.0, 0.5, 1.0):
            for dx in (-1.0, -0.5, 0.0, 0.5, 1.0):
                a = self._asymmetry_at((x0 + dx, y0 + dy), smoothed=True)
                if a < best_a:
                    best, best_a = (x0 + dx, y0 + dy), a
        if best is None:
            raise _Failed("no flux in the asymmetry aperture")
        start = np.array(best)
        simplex = np.array([start, start + [0.25, 0.0], start + [0.0, 0.25]])
        res = optimize.minimize(self._asymmetry_at, start, args=(True,), method="Nelder-Mead",
                                options={"initial_simplex": simplex, "xatol": 0.05, "fatol": 1e-3})
        if res.fun < best_a:
            best = (float(res.x[0]), float(res.x[1]))
        return best

    @functools.cached_property
    def asymmetry(self) -> float:
        a = self._asymmetry_at(self.asymmetry_centre)
        if not np.isfinite(a):
            raise _Failed("no flux in the asymmetry aperture")
        return a

    # --- concentration

    @functools.cached_property
    def _r20_r80(self) -> tuple[float, float]:
        cumulative = self._growth_asymmetry_centre
        total = self._at(cumulative, PETRO_EXTENT * self.petrosian_radius)
        if not total > 0:
            raise _Failed("no flux within 1.5 Petrosian radii")
        radii = []
        for fraction in (0.2, 0.8):
            k = int(np.argmax(cumulative >= fraction * total))
            f0, f1 = cumulative[k - 1], cumulative[k]
            radii.append((k - 1 + (fraction * total - f0) / (f1 - f0)) * _DR if k > 0 else 0.0)
        r20, r80 = radii
        if not (r20 > 0 and r80 > r20):
            raise _Failed("r20 or r80 undefined")
        return r20, r80

    @property
    def concentration(self) -> float:
        r20, r80 = self._r20_r80
        return 5 * math.log10(r80 / r20)

    # --- Gini segment, Gini, M20

    @functools.cached_property
    def _shape(self) -> tuple[float, float]:
        """Elongation a/b and orientation (radians from x towards y) of the detection segment's
        second moments about the asymmetry centre."""
        x, y, _ = _grids(self.h, self.w)
        weight = np.where(self.detection, np.clip(self.image, 0, None), 0.0)
        total = weight.sum()
        xc, yc = self.asymmetry_centre
        dx, dy = x - xc, y - yc
        cxx = (weight * dx * dx).sum() / total
        cyy = (weight * dy * dy).sum() / total
        cxy = (weight * dx * dy).sum() / total
        half_trace, det_part = 0.5 * (cxx + cyy), math.hypot(0.5 * (cxx - cyy), cxy)
        # a segment of one pixel still has the 1/12 pixel^2 variance of a uniform pixel
        major, minor = max(half_trace + det_part, 1 / 12), max(half_trace - det_part, 1 / 12)
        return math.sqrt(major / minor), 0.5 * math.atan2(2 * cxy, cxx - cyy)

    @functools.cached_property
    def gini_segmap(self) -> np.ndarray:
        elongation, theta = self._shape
        centre = self.asymmetry_centre
        r_petro = self._petrosian(self.growth(self.image, centre, elongation, theta))
        smooth = ndimage.gaussian_filter(self.image, GINI_SMOOTHING * r_petro)
        cumulative = self.growth(smooth, centre, elongation, theta)
        r_in, r_out = r_petro - 0.5 * ANNULUS_WIDTH, r_petro + 0.5 * ANNULUS_WIDTH
        area = math.pi * (r_out**2 - max(r_in, 0.0) ** 2) / elongation
        threshold = (self._at(cumulative, r_out) - self._at(cumulative, max(r_in, 0.0))) / area
        labels, count = ndimage.label(smooth >= threshold, structure=np.ones((3, 3)))
        label = labels[min(int(round(centre[1])), self.h - 1), min(int(round(centre[0])), self.w - 1)]
        if count == 0 or label == 0:
            raise _Failed("asymmetry centre not in the Gini segment")
        return labels == label


def _gini_of(image: np.ndarray, segmap: np.ndarray) -> float:
    values = np.sort(np.abs(image[segmap]))
    n = len(values)
    total = values.sum()
    if n < 2 or not total > 0:
        raise _Failed("fewer than two pixels or no flux in the segment")
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * values).sum() / ((n - 1) * total))


def _m20_of(image: np.ndarray, segmap: np.ndarray) -> float:
    h, w = image.shape
    x, y, _ = _grids(h, w)
    flux = np.where(segmap, image, 0.0)
    total = flux.sum()
    if not total > 0:
        raise _Failed("no flux in the segment")
    xc, yc = (flux * x).sum() / total, (flux * y).sum() / total
    r2 = (x - xc) ** 2 + (y - yc) ** 2
    second_total = (flux * r2).sum()
    # the brightest pixels whose flux first reaches 20% of the total (statmorph's cut)
    values = np.sort(flux.ravel())
    fraction = np.cumsum(values) / total
    brightest = values[fraction >= 0.8]
    if len(brightest) == 0:
        raise _Failed("too few pixels")
    second_20 = (np.where(flux >= brightest[0], flux, 0.0) * r2).sum()
    if not (second_20 > 0 and second_total > 0):
        raise _Failed("zero second moment")
    return float(np.log10(second_20 / second_total))


# ----------------------------------------------------------------------------- batch API


def _each(images, noise_sigma, measure: Callable[[_Stamp, int], float]) -> np.ndarray:
    a = _as_batch(images)
    sigma = _noise_per_stamp(noise_sigma, len(a))
    out = np.full(len(a), np.nan)
    for i in range(len(a)):
        try:
            out[i] = measure(_Stamp(a[i], None if sigma is None else sigma[i]), i)
        except _Failed:
            pass
    return out


def gini(images, segmap=None, noise_sigma=None) -> np.ndarray:
    """Gini coefficient of the absolute pixel values in each stamp's segment (Lotz et al. 2004,
    eq. 6): 0 when all pixels are equal, 1 when one pixel holds all the flux.

    Arguments:
        images: (N, H, W) or (N, 1, H, W) stamps of one band, or one (H, W) stamp.
        segmap: bool (N, H, W) or one (H, W) mask of the pixels to use; None builds the
            statmorph Gini segment (module docstring, step 7).
        noise_sigma: white-noise sigma, counts/pixel (scalar or (N,)); only steers the default
            segment's detection.

    Returns:
        (N,) Gini; NaN where a segment has < 2 pixels or no flux.

    Example:
        >>> float(gini(np.ones((1, 8, 8)), np.ones((8, 8), bool))[0])
        0.0
    """
    a = _as_batch(images)
    seg = _segmaps(segmap, a.shape)
    return _each(a, noise_sigma, lambda s, i: _gini_of(s.image, s.gini_segmap if seg is None else seg[i]))


def m20(images, segmap=None, noise_sigma=None) -> np.ndarray:
    """M20 (Lotz et al. 2004, eq. 7-8): log10 of the second moment of the brightest pixels that
    hold 20 % of the segment's flux over the segment's total, both about the segment's
    first-moment centre. About -2.5 for bulges, -1.5 for disks, > -1 for mergers.

    Arguments and returns as :func:`gini`.
    """
    a = _as_batch(images)
    seg = _segmaps(segmap, a.shape)
    return _each(a, noise_sigma, lambda s, i: _m20_of(s.image, s.gini_segmap if seg is None else seg[i]))


def gini_segmap(images, noise_sigma=None) -> np.ndarray:
    """The statmorph Gini segment of each stamp (module docstring, step 7): (N, H, W) bool,
    all False where it cannot be built."""
    a = _as_batch(images)
    sigma = _noise_per_stamp(noise_sigma, len(a))
    out = np.zeros(a.shape, dtype=bool)
    for i in range(len(a)):
        try:
            out[i] = _Stamp(a[i], None if sigma is None else sigma[i]).gini_segmap
        except _Failed:
            pass
    return out


def concentration(images, noise_sigma=None) -> np.ndarray:
    """Concentration C = 5 log10(r80 / r20) (Conselice 2003), r20 and r80 the radii of circles
    about the asymmetry centre holding 20 % and 80 % of the flux within 1.5 circular Petrosian
    radii: 2.74 for an exponential disk, 4.29 for a de Vaucouleurs profile (continuous, noiseless;
    pixelisation lowers the latter to 4.2 at a half-light radius of 6 pixels).

    Arguments:
        images: (N, H, W) or (N, 1, H, W) stamps of one band, or one (H, W) stamp.
        noise_sigma: white-noise sigma, counts/pixel (scalar or (N,)); steers the detection and
            the asymmetry centre.

    Returns:
        (N,) concentration; NaN where it cannot be measured.
    """
    return _each(images, noise_sigma, lambda s, i: s.concentration)


def asymmetry(images, noise_sigma=None) -> np.ndarray:
    """Rotational asymmetry A (Conselice 2000; Lotz et al. 2004 eq. 10) about the centre that
    minimises it, inside 1.5 circular Petrosian radii; 0 for a symmetric galaxy.

    Arguments:
        images: (N, H, W) or (N, 1, H, W) stamps of one band, or one (H, W) stamp.
        noise_sigma: white-noise sigma, counts/pixel (scalar or (N,)). Given, the expected
            asymmetry of the noise is subtracted (module docstring, step 5), so a symmetric
            galaxy in noise scatters about 0; None: no correction (noise adds asymmetry).

    Returns:
        (N,) asymmetry; NaN where it cannot be measured.
    """
    return _each(images, noise_sigma, lambda s, i: s.asymmetry)


def petrosian_radius(images, noise_sigma=None) -> np.ndarray:
    """Circular Petrosian radius (eta = 0.2, annulus 1 pixel wide) about the asymmetry centre,
    pixels; NaN where it cannot be measured."""
    return _each(images, noise_sigma, lambda s, i: s.petrosian_radius)


def morphology(images, noise_sigma=None, pixel_scale: float | None = None,
               guess_sigma: float | None = None) -> dict:
    """HSM moments plus Gini, M20, concentration and asymmetry of each stamp.

    Arguments:
        images: (N, H, W) or (N, 1, H, W) stamps of one band (counts), or one (H, W) stamp.
        noise_sigma: white-noise sigma, counts/pixel (scalar or (N,)), e.g. the simulator's
            catalog ``noise_sigma``; enables the asymmetry's background correction.
        pixel_scale: arcsec per pixel; adds ``sigma_arcsec`` and ``petrosian_radius_arcsec``.
        guess_sigma: first guess of the HSM sigma, pixels.

    Returns:
        A dict of (N,) arrays, the keys of :data:`MORPHOLOGY_STATISTICS` (arcsec ones with
        `pixel_scale`), ``hsm_ok`` (bool), plus ``n_failed``: {statistic: number of NaN}.
        Failures are NaN, never exceptions.

    Example:
        >>> import galsim
        >>> image = galsim.DeVaucouleurs(half_light_radius=1.0).drawImage(nx=64, ny=64, scale=0.2).array
        >>> m = morphology(image[None])
        >>> bool(m["gini"][0] > 0.5), bool(m["m20"][0] < -2), m["n_failed"]["asymmetry"]
        (True, True, 0)
    """
    a = _as_batch(images)
    n = len(a)
    sigma = _noise_per_stamp(noise_sigma, n)
    out = hsm_moments(a, pixel_scale=pixel_scale, guess_sigma=guess_sigma)
    names = ("gini", "m20", "concentration", "asymmetry", "r20", "r80", "petrosian_radius")
    for name in names:
        out[name] = np.full(n, np.nan)
    for i in range(n):
        try:
            stamp = _Stamp(a[i], None if sigma is None else sigma[i])
        except _Failed:
            continue
        measures = {
            "asymmetry": lambda: stamp.asymmetry,
            "petrosian_radius": lambda: stamp.petrosian_radius,
            "r20": lambda: stamp._r20_r80[0],
            "r80": lambda: stamp._r20_r80[1],
            "concentration": lambda: stamp.concentration,
            "gini": lambda: _gini_of(stamp.image, stamp.gini_segmap),
            "m20": lambda: _m20_of(stamp.image, stamp.gini_segmap),
        }
        for name, measure in measures.items():
            try:
                out[name][i] = measure()
            except _Failed:
                pass
    if pixel_scale is not None:
        out["petrosian_radius_arcsec"] = out["petrosian_radius"] * float(pixel_scale)
    out["n_failed"] = {k: int(np.isnan(v).sum()) for k, v in out.items()
                       if isinstance(v, np.ndarray) and v.dtype.kind == "f"}
    return out


def half_light_radius(images, pixel_scale: float | None = None, centre=None) -> np.ndarray:
    """Circular half-light radius of noiseless stamps (e.g. truth, or a model's PSF-free samples).

    The radius within which half the stamp's flux falls, about `centre` ((N, 2) as (y, x)
    pixels; default each stamp's flux-weighted centroid), from the curve of growth with
    pixels counted at their centres. Pixels in the stamp only, so a galaxy much larger than
    the stamp reads small. Units: pixels, or arcsec with `pixel_scale` (arcsec/pixel); NaN
    where the total flux is not positive.

    Example:
        >>> import galsim
        >>> image = galsim.Exponential(half_light_radius=1.0).drawImage(nx=64, ny=64, scale=0.2).array
        >>> round(float(half_light_radius(image[None], pixel_scale=0.2)[0]), 1)
        1.0
    """
    a = _as_batch(images).astype(np.float64)
    n, h, w = a.shape
    yy, xx = np.mgrid[:h, :w]
    flux = a.sum(axis=(1, 2))
    if centre is None:
        with np.errstate(invalid="ignore", divide="ignore"):
            centre = np.stack([(a * yy).sum(axis=(1, 2)) / flux, (a * xx).sum(axis=(1, 2)) / flux], 1)
    centre = np.asarray(centre, dtype=np.float64).reshape(n, 2)
    out = np.full(n, np.nan)
    for i in range(n):
        if not (flux[i] > 0 and np.isfinite(centre[i]).all()):
            continue
        r = np.hypot(yy - centre[i, 0], xx - centre[i, 1]).ravel()
        order = np.argsort(r, kind="stable")
        cumulative = np.cumsum(a[i].ravel()[order])
        k = int(np.searchsorted(cumulative, 0.5 * flux[i]))
        # interpolate between the radii that bracket half the flux
        if k == 0:
            out[i] = r[order][0]
        else:
            r0, r1 = r[order][k - 1], r[order][k]
            c0, c1 = cumulative[k - 1], cumulative[k]
            out[i] = r0 + (0.5 * flux[i] - c0) / (c1 - c0) * (r1 - r0) if c1 > c0 else r1
    return out * float(pixel_scale) if pixel_scale is not None else out
