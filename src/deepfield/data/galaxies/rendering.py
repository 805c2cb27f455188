"""Drawing the stamps of simulated galaxies with GalSim: x (galaxy (*) PSF (*) pixel + noise),
truth and PSF, one renderer per worker process (conventions: see the package docstring)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from deepfield.data.galaxies.parameters import GalaxyParameters

_MOFFAT_BETA = 3.0
_MOFFAT_TRUNC = 5.0  # Moffat truncated at 5 FWHM (0.14% of the flux lies beyond)
_PSF_STAMP = 25


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
        return cosmos_noise_filter(self.size, self.scale)

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
            out["x"][i] = clean + sigma[:, None, None] * unit_noise(int(p.noise_seed[i]), (C, S, S),
                                                                    self._noise_filter)
        return out


def cosmos_noise_filter(size: int, pixel_scale: float) -> np.ndarray:
    """sqrt of the power spectrum (size, size // 2 + 1) of GalSim's COSMOS noise correlation
    function, rescaled to unit variance at `pixel_scale` (arcsec/pixel), for filtering white
    noise (periodic on the stamp)."""
    import galsim

    cn = galsim.getCOSMOSNoise(
        file_name=os.path.join(galsim.meta_data.share_dir, "acs_I_unrot_sci_20_cf.fits"),
        cosmos_scale=pixel_scale, variance=1.0)
    cf = galsim.ImageD(size, size, scale=pixel_scale)
    cn.drawImage(cf)
    c = size // 2
    lagged = np.roll(cf.array, (-c, -c), axis=(0, 1))  # zero lag at [0, 0]
    # filtering unit white noise by sqrt(P) gives variance mean(P) over the full spectrum
    full = np.clip(np.fft.fft2(lagged).real, 0.0, None)
    power = np.clip(np.fft.rfft2(lagged).real, 0.0, None) / full.mean()
    return np.sqrt(power)


def unit_noise(noise_seed: int, shape: tuple[int, int, int], noise_filter: np.ndarray | None) -> np.ndarray:
    """One object's unit-variance noise field (C, H, W), float64, from its `noise_seed`: white, or
    filtered by `noise_filter` (:func:`cosmos_noise_filter`) into COSMOS-correlated noise. The
    simulator adds ``noise_sigma`` times this to the noiseless stamp; the noise-twin writer takes it
    off again to draw a twin (``deepfield.data.galaxies.redraw_noise``)."""
    white = np.random.default_rng(int(noise_seed)).standard_normal(shape)
    if noise_filter is not None:
        white = np.fft.irfft2(np.fft.rfft2(white) * noise_filter, s=shape[-2:])
    return white
