"""Physics that ties the models to what a telescope records: PSF convolution, noise, likelihoods.

Units and conventions, stated once for the package:

- images are (N, C, H, W) in the store's flux units (counts per pixel for simulated stores), the
  objects on the first axis, bands on the second, rows are y;
- PSF stamps are (N, C, h, w) one per object and band, (C, h, w) one per band, or (h, w) shared,
  with odd h and w, the PSF centre on the middle pixel ``(h // 2, w // 2)``, sampled at pixel
  centres at the data's (native) pixel scale, and of unit sum;
- ``ivar`` is 1 / variance per pixel (flux units^-2, 0 = no information); ``mask`` is True for
  bad pixels;
- Fourier quantities use ``torch.fft`` with ``norm="ortho"`` (unitary) in the unshifted fft2
  layout (zero frequency at [0, 0]); a noise power spectrum ``noise_ps`` (C, H, W) is the
  expected ``|fft2(noise, norm="ortho")|**2`` per mode, so white noise of variance sigma^2 has
  ``noise_ps == sigma**2``;
- negative log-likelihoods are per object, (N,), in nats, normalising constants included;
- PSF FWHM and pixel scale in arcsec.

Everything is pure torch, batched and differentiable (the GalSim stamp helpers excepted).
"""

from deepfield.physics.likelihood import (ObservationModel, estimate_noise_ps, fourier_nll,
                                          noise_power_spectrum_from_ivar, pixel_nll,
                                          white_noise_ps)
from deepfield.physics.psf import (as_psf, convolve_psf, gaussian_psf, moffat_psf, oversample_psf,
                                   psf_band_limit_mask)
from deepfield.physics.resample import dilate, resample_images
from deepfield.physics import cosmology, pm, statistics  # noqa: F401,E402  (particle mesh; see each module)

__all__ = [
    "ObservationModel",
    "convolve_psf",
    "oversample_psf",
    "psf_band_limit_mask",
    "as_psf",
    "moffat_psf",
    "gaussian_psf",
    "pixel_nll",
    "fourier_nll",
    "white_noise_ps",
    "noise_power_spectrum_from_ivar",
    "estimate_noise_ps",
    "dilate",
    "resample_images",
]
