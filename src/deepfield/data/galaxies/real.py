"""Real morphologies through any telescope: HST galaxies from a GalSim RealGalaxyCatalog drawn
as the target survey would see them (the GREAT3 approach).

Each simulated object i takes a real galaxy (drawn at random with replacement, seeded by
(seed, i)), as ``galsim.RealGalaxy``: the HST stamp interpolated and deconvolved by its own
HST PSF. It is rotated by a random angle, optionally sheared, scaled to the total flux of its
catalog magnitude (``MAG``, AB) at the survey's zeropoint (30: ``10**(-0.4 * (MAG - 30))``
counts; the same AB magnitude in every survey band, since the catalog holds one band: colours
are not modelled), convolved with the object's survey PSF (from :func:`galaxy_parameters`:
Moffat or Kolmogorov, FWHM and shape per object and band) and drawn on the survey's pixels.
The HST noise that comes along is correlated by that convolution; GalSim's noise whitening
adds the noise that makes it white, then Gaussian noise tops it up to the survey's noise
``noise_sigma`` (when the whitened HST noise alone exceeds it, the stamp keeps the whitened
level, recorded in ``noise_sigma_<band>``).

Arrays: ``x`` (N, C, H, W) counts; ``psf`` (N, C, 25, 25) sampled at pixel centres
(``method='no_pixel'``), unit sum; ``ivar`` (N, C, H, W) ``1 / noise_sigma**2``. There is no
``truth``: a deconvolved HST stamp carries its own (amplified) noise, so no noiseless image of a
real galaxy exists. Catalog: ``id``; ``cosmos_ident`` (the source's IDENT) and
``cosmos_index`` (its catalog row); ``magnitude`` (mag, AB); ``rotation`` (deg);
``flux_<band>`` (counts); ``psf_fwhm``, ``psf_fwhm_<band>`` (arcsec), ``psf_g1``, ``psf_g2``;
``noise_sigma``, ``noise_sigma_<band>`` (counts/pixel, the final noise);
``whitened_sigma_<band>`` (counts/pixel, the whitened HST noise); ``snr``, ``snr_<band>``.

References:
    Mandelbaum et al. (2015), MNRAS 450, 2963, arXiv:1412.1825 (GREAT3: real galaxies through
    other PSFs).
    Rowe et al. (2015), GalSim, arXiv:1407.7676 (RealGalaxy, noise whitening).
"""

from __future__ import annotations

import numpy as np

from deepfield.data.galaxies.parameters import ZEROPOINT, galaxy_parameters
from deepfield.data.galaxies.rendering import _MOFFAT_BETA, _MOFFAT_TRUNC, _PSF_STAMP

__all__ = ["RealGalaxyMaker", "real_catalog_units"]


def real_catalog_units(bands) -> dict[str, str]:
    """Units of the catalog columns of a ``morphology="cosmos"`` store."""
    units = {"magnitude": "mag", "rotation": "deg", "psf_fwhm": "arcsec", "noise_sigma": "counts/pixel"}
    for band in bands:
        units.update({f"flux_{band}": "counts", f"psf_fwhm_{band}": "arcsec",
                      f"noise_sigma_{band}": "counts/pixel", f"whitened_sigma_{band}": "counts/pixel"})
    return units


class RealGalaxyMaker:
    """Draws objects lo ... hi - 1 of a real-morphology sample: (catalog, arrays). One per worker
    process (the pool in :mod:`deepfield.data.galaxies.pool`)."""

    def __init__(self, survey: dict, render: dict, cosmos: dict):
        import galsim

        self.galsim = galsim
        self.survey = survey
        self.size, self.scale = render["size"], render["pixel_scale"]
        self.psf_kind = render["psf"]
        self.shear = render.get("shear")
        self.seed = survey["seed"]
        self.catalog = galsim.RealGalaxyCatalog(cosmos["catalog"], dir=cosmos["dir"])
        self.n_real = len(self.catalog)
        self.mag = np.asarray(self.catalog.mag, dtype=np.float64)
        self.ident = np.asarray([int(s) for s in self.catalog.ident], dtype=np.int64)

    def choices(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Catalog rows, rotation angles (deg) and noise seeds of objects lo ... hi - 1; object i
        depends on (seed, i) only."""
        rows, angles, seeds = [], [], []
        for i in range(lo, hi):
            rng = np.random.default_rng([self.seed, i, 1])  # stream 1: apart from the parameters
            rows.append(int(rng.integers(self.n_real)))
            angles.append(float(rng.uniform(0.0, 360.0)))
            seeds.append(int(rng.integers(1, 2**31 - 1)))
        return np.asarray(rows), np.asarray(angles), np.asarray(seeds)

    def _psf(self, fwhm: float, g1: float, g2: float):
        galsim = self.galsim
        if self.psf_kind == "moffat":
            psf = galsim.Moffat(beta=_MOFFAT_BETA, fwhm=fwhm, trunc=_MOFFAT_TRUNC * fwhm)
        else:
            psf = galsim.Kolmogorov(fwhm=fwhm)
        return psf.shear(g1=g1, g2=g2)

    def __call__(self, lo: int, hi: int):
        galsim = self.galsim
        params = galaxy_parameters(hi - lo, start=lo, **self.survey)
        rows, angles, seeds = self.choices(lo, hi)
        n, C, S = hi - lo, len(params.bands), self.size
        x = np.empty((n, C, S, S), np.float32)
        psf_stamps = np.empty((n, C, _PSF_STAMP, _PSF_STAMP), np.float32)
        sigma = np.empty((n, C))
        whitened = np.empty((n, C))
        snr = np.empty((n, C))
        flux = 10 ** (-0.4 * (self.mag[rows] - ZEROPOINT))
        for k in range(n):
            galaxy = galsim.RealGalaxy(self.catalog, index=int(rows[k]), flux=float(flux[k]))
            galaxy = galaxy.rotate(float(angles[k]) * galsim.degrees)
            if self.shear is not None:
                galaxy = galaxy.shear(g1=self.shear[0], g2=self.shear[1])
            rng = galsim.BaseDeviate(int(seeds[k]))
            for c in range(C):
                psf = self._psf(float(params.psf_fwhm[k, c]), float(params.psf_g1[k]), float(params.psf_g2[k]))
                observed = galsim.Convolve(galaxy, psf)
                image = observed.drawImage(nx=S, ny=S, scale=self.scale)
                clean = image.array.astype(np.float64)
                target = float(params.noise_sigma[k, c])
                # the HST noise, correlated by the convolution, made white; then topped up
                variance = image.whitenNoise(observed.noise.copy(rng=rng)) if observed.noise is not None else 0.0
                whitened[k, c] = np.sqrt(max(variance, 0.0))
                extra = target**2 - variance
                if extra > 0:
                    image.addNoise(galsim.GaussianNoise(rng, sigma=float(np.sqrt(extra))))
                sigma[k, c] = max(target, whitened[k, c])
                x[k, c] = image.array
                snr[k, c] = np.sqrt((clean**2).sum()) / sigma[k, c]
                stamp = psf.drawImage(nx=_PSF_STAMP, ny=_PSF_STAMP, scale=self.scale, method="no_pixel").array
                psf_stamps[k, c] = stamp / stamp.sum()
        r = params.reference_index
        catalog = {"id": params.id, "cosmos_ident": self.ident[rows], "cosmos_index": rows,
                   "magnitude": self.mag[rows], "rotation": angles,
                   "psf_fwhm": params.psf_fwhm[:, r], "psf_g1": params.psf_g1, "psf_g2": params.psf_g2,
                   "noise_sigma": sigma[:, r], "snr": snr[:, r]}
        for c, band in enumerate(params.bands):
            catalog[f"flux_{band}"] = flux
            catalog[f"psf_fwhm_{band}"] = params.psf_fwhm[:, c]
            catalog[f"noise_sigma_{band}"] = sigma[:, c]
            catalog[f"whitened_sigma_{band}"] = whitened[:, c]
            catalog[f"snr_{band}"] = snr[:, c]
        return catalog, {"x": x, "psf": psf_stamps}
