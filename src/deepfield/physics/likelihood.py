"""Noise models and likelihoods: per-pixel inverse variance or a stationary noise power spectrum.

Every likelihood returns the negative log-likelihood **per object**, shape (N,), summed over
pixels (or Fourier modes) *with* its normalising constants, so values are true ``-log p(data |
model)`` in nats and comparable between models, noise models and objects.

Conventions (see :mod:`deepfield.physics`): images (N, C, H, W) in the store's flux units;
``ivar`` = 1 / variance per pixel (flux units^-2), 0 for pixels without information; ``mask``
True for *bad* pixels (the store's convention); a noise power spectrum ``noise_ps`` (C, H, W)
or (N, C, H, W) is the expected ``|torch.fft.fft2(noise, norm="ortho")|**2`` per mode, in the
unshifted ``fft2`` layout (zero frequency at [0, 0]). The ortho FFT is unitary, so white noise
of variance sigma^2 has ``noise_ps == sigma**2`` at every mode and the same numbers as ``ivar``.

Fourier likelihood and the real-FFT symmetry: we use the *full* ``fft2`` layout, where every
one of the H x W modes counts as one real degree of freedom:
``-log p = (1/2) sum_k [ |r~_k|^2 / P_k + log(2 pi P_k) ]``. Why: for a real residual r the
modes k and -k are complex conjugates, one complex number (two real degrees of freedom) between
them, and the self-conjugate modes (zero frequency and, for even sides, the Nyquist row and
column) are real. Scored as a complex Gaussian, a pair's mode contributes
``|r~_k|^2 / P_k + log(pi P_k)``; summed over the full layout that counts each pair twice,
hence the factor 1/2, and the constant becomes ``log(2 pi P)`` once the Jacobian of the unitary
change of basis (sqrt 2 per real coordinate: (sqrt 2 Re r~_k, sqrt 2 Im r~_k) are orthonormal
coordinates of variance P_k each) is included; a self-conjugate mode is a real Gaussian of
variance P_k and gets the same term. So no mode needs a special case (an ``rfft2`` layout
does: its edge columns hold self-conjugate modes and pairs that appear once), ``noise_ps`` has
the image's (H, W) layout, and for white noise the result equals the pixel likelihood exactly
(Parseval). The spectrum of real noise is symmetric, P_k = P_-k, as this requires;
:func:`estimate_noise_ps` returns one that is.

The diagonal Fourier model is exact for noise that is stationary and periodic on the stamp
(e.g. white noise filtered in Fourier space); for noise cut out of a larger correlated field,
the spectrum measured on stamps of the same size (:func:`estimate_noise_ps`) is the diagonal of
the true covariance in the Fourier basis, the best diagonal approximation.

References:
    Seljak (1998), "Cosmography and power spectrum estimation", ApJ 503, 492. arXiv:astro-ph/9710269
    (diagonal Gaussian likelihood of Fourier modes).
"""

from __future__ import annotations

import math

import torch

from deepfield.errors import InputError
from deepfield.physics.psf import as_psf, convolve_checked, convolve_psf, psf_band_limit_mask

__all__ = [
    "pixel_nll",
    "fourier_nll",
    "white_noise_ps",
    "noise_power_spectrum_from_ivar",
    "estimate_noise_ps",
    "ObservationModel",
]

_LOG_2PI = math.log(2 * math.pi)


def _as_float(x, name: str, like: torch.Tensor | None = None) -> torch.Tensor:
    if x is None:
        return None
    t = torch.as_tensor(x, device=None if like is None else like.device)
    if not t.is_floating_point():
        t = t.to(like.dtype if like is not None else torch.get_default_dtype())
    return t


def _broadcast_to(t: torch.Tensor, shape: torch.Size, name: str, fix: str) -> torch.Tensor:
    # by hand: torch.broadcast_shapes imports torch.fx and sympy on first use (~1 s)
    if t.ndim <= len(shape) and all(a in (1, b) for a, b in zip(reversed(t.shape), reversed(shape))):
        return t.expand(shape)
    raise InputError(f"{name} has shape {tuple(t.shape)}, which does not fit the data's "
                     f"{tuple(shape)}; {fix}")


def _check_model_data(model, data):
    model = _as_float(model, "model")
    data = _as_float(data, "data", like=model)
    if model.shape != data.shape:
        raise InputError(f"model has shape {tuple(model.shape)} but the data {tuple(data.shape)}: "
                         "convolve the sky with the PSF at the data's pixel scale first "
                         "(deepfield.physics.convolve_psf, oversample=o for an o-times finer sky)")
    if model.ndim < 2:
        raise InputError(f"data has shape {tuple(data.shape)}; give a batch, (N, ...) with the "
                         "objects on the first axis (e.g. data[None] for one object)")
    dtype = torch.promote_types(model.dtype, data.dtype)
    return model.to(dtype), data.to(dtype)


def _pixel_terms(model, data, ivar, mask=None):
    """(chi^2, sum over used pixels of log(2 pi / ivar), number of used pixels), each (N,)."""
    model, data = _check_model_data(model, data)
    ivar = _as_float(ivar, "ivar", like=data).to(data.dtype)
    ivar = _broadcast_to(ivar, data.shape, "ivar", "give one inverse variance per pixel, "
                         "(N, C, H, W), or one per band, (C, 1, 1)")
    if not bool(torch.isfinite(ivar).all()):
        raise InputError("ivar has NaN or inf values; set the inverse variance of pixels without "
                         "a measurement to 0 (they are then left out)")
    if bool((ivar < 0).any()):
        raise InputError(f"ivar has negative values (min {float(ivar.min()):.3g}); inverse "
                         "variances are >= 0: set bad pixels' ivar to 0 or flag them in 'mask'")
    used = ivar > 0
    if mask is not None:
        mask = torch.as_tensor(mask, device=data.device)
        mask = _broadcast_to(mask, data.shape, "mask", "give one flag per pixel, (N, C, H, W), "
                             "True for bad pixels")
        used = used & ~(mask.bool())
    bad = used & ~torch.isfinite(data)
    if bool(bad.any()):
        raise InputError(f"data has {int(bad.sum())} NaN/inf pixels that are used (ivar > 0 and "
                         "not masked); set their ivar to 0 or flag them True in 'mask', or "
                         "re-import with --nan-policy zero")
    residual = torch.where(used, data - model, torch.zeros((), dtype=data.dtype, device=data.device))
    safe_ivar = torch.where(used, ivar, torch.ones((), dtype=ivar.dtype, device=ivar.device))
    chi2 = (residual.square() * safe_ivar).flatten(1).sum(1)
    log_det = torch.where(used, _LOG_2PI - torch.log(safe_ivar), 0.0).flatten(1).sum(1)
    return chi2, log_det, used.flatten(1).sum(1)


def pixel_nll(model, data, ivar, mask=None) -> torch.Tensor:
    """Negative log-likelihood of independent Gaussian pixels, per object.

    ``-log p = sum over used pixels of [ (data - model)^2 ivar + log(2 pi / ivar) ] / 2``, where
    used pixels have ``ivar > 0`` and are not flagged in `mask`; the others are left out of the
    chi^2 *and* the constant (NaN data there is allowed).

    Arguments:
        model: (N, ...) noiseless model of the data, e.g. (N, C, H, W) or (N, L) spectra.
        data: the same shape: observed values.
        ivar: inverse variance per pixel (flux units^-2), broadcastable to the data, >= 0.
        mask: optional, broadcastable to the data: True (nonzero) for bad pixels.

    Returns:
        (N,) negative log-likelihood in nats. Differentiable in `model`.

    Example:
        >>> import math, torch
        >>> nll = pixel_nll(torch.zeros(1, 4), torch.zeros(1, 4), torch.ones(1, 4))
        >>> round(float(nll), 6) == round(2 * math.log(2 * math.pi), 6)
        True
    """
    chi2, log_det, _ = _pixel_terms(model, data, ivar, mask)
    return 0.5 * (chi2 + log_det)


def _fourier_terms(model, data, noise_ps, band_mask=None):
    """(chi^2 over modes, sum of log(2 pi P), number of modes kept), each (N,)."""
    model, data = _check_model_data(model, data)
    if data.ndim < 3:
        raise InputError(f"data has shape {tuple(data.shape)}; the Fourier likelihood needs images "
                         "(N, C, H, W)")
    noise_ps = _as_float(noise_ps, "noise_ps", like=data).to(data.dtype)
    noise_ps = _broadcast_to(noise_ps, data.shape, "noise_ps",
                             "give one power spectrum per band, (C, H, W), in the fft2 layout")
    keep = torch.ones((), dtype=torch.bool, device=data.device).expand(data.shape)
    if band_mask is not None:
        band_mask = torch.as_tensor(band_mask, device=data.device)
        band_mask = _broadcast_to(band_mask, data.shape, "band_mask",
                                  "give one flag per Fourier mode, (C, H, W) or (N, C, H, W)")
        band_mask = band_mask.bool()
        # leave each mode out together with its Hermitian partner -k (index -i mod H)
        mirror = torch.roll(torch.flip(band_mask, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
        keep = ~(band_mask | mirror)
    if not bool(torch.isfinite(noise_ps).all()):
        raise InputError("noise_ps has NaN or inf values; give a finite noise power spectrum "
                         "(deepfield.physics.estimate_noise_ps on blank sky stamps)")
    if bool((keep & (noise_ps <= 0)).any()):
        raise InputError(f"noise_ps has modes <= 0 (min {float(noise_ps.min()):.3g}) that are not "
                         "band-masked; a noise power is > 0: floor the spectrum or flag those "
                         "modes True in band_mask")
    if not bool(torch.isfinite(data).all()):
        raise InputError("data has NaN/inf pixels; the Fourier likelihood needs every pixel: "
                         "in-paint them, or use the pixel likelihood with those pixels masked")
    residual = torch.fft.fft2(data - model, norm="ortho")
    power = residual.real.square() + residual.imag.square()  # |r~|^2, smooth at 0 unlike abs()
    ps = torch.where(keep, noise_ps, torch.ones((), dtype=noise_ps.dtype, device=noise_ps.device))
    zero = torch.zeros((), dtype=data.dtype, device=data.device)
    chi2 = torch.where(keep, power / ps, zero).flatten(1).sum(1)
    log_det = torch.where(keep, _LOG_2PI + torch.log(ps), zero).flatten(1).sum(1)
    return chi2, log_det, keep.flatten(1).sum(1)


def fourier_nll(model, data, noise_ps, band_mask=None) -> torch.Tensor:
    """Negative log-likelihood under stationary Gaussian noise, diagonal in Fourier space.

    ``-log p = (1/2) sum over the full fft2 layout of [ |r~_k|^2 / P_k + log(2 pi P_k) ]`` with
    ``r~ = fft2(data - model, norm="ortho")``: each of the H x W modes is one real degree of
    freedom (the module docstring says why this handles the Hermitian pairs exactly). For white
    noise it equals :func:`pixel_nll` with ``ivar = 1 / sigma^2``. Modes flagged in `band_mask`
    (with their partners -k) are left out of both the chi^2 and the constant.

    Arguments:
        model: (N, C, H, W) noiseless model (already PSF-convolved).
        data: (N, C, H, W) observed images.
        noise_ps: (C, H, W) or (N, C, H, W) noise power per mode, ``E|fft2(noise, norm="ortho")|^2``,
            unshifted layout, > 0 wherever not band-masked.
        band_mask: optional bool, broadcastable to the data: True for modes beyond the PSF band
            limit (:func:`~deepfield.physics.psf_band_limit_mask`).

    Returns:
        (N,) negative log-likelihood in nats. Differentiable in `model`.

    Example:
        >>> import torch
        >>> model, data = torch.zeros(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
        >>> a = fourier_nll(model, data, white_noise_ps(1.0, (8, 8)))
        >>> b = pixel_nll(model, data, torch.ones(8, 8))
        >>> bool(torch.allclose(a, b, rtol=1e-5))
        True
    """
    chi2, log_det, _ = _fourier_terms(model, data, noise_ps, band_mask)
    return 0.5 * (chi2 + log_det)


def white_noise_ps(sigma, shape) -> torch.Tensor:
    """Power spectrum of white noise of standard deviation `sigma`: sigma^2 at every mode.

    Arguments:
        sigma: float or tensor (...) in flux units per pixel, e.g. (C,) one per band.
        shape: the image's (H, W).

    Returns:
        (..., H, W) tensor, the ortho-normalised fft2 layout of :func:`fourier_nll`.
    """
    sigma = _as_float(sigma, "sigma")
    if not bool(torch.isfinite(sigma).all()) or bool((sigma <= 0).any()):
        raise InputError(f"noise sigma must be finite and > 0 (got min {float(sigma.min()):.3g})")
    H, W = int(shape[-2]), int(shape[-1])
    return sigma.square()[..., None, None].expand(*sigma.shape, H, W).clone()


def noise_power_spectrum_from_ivar(ivar) -> torch.Tensor:
    """White-noise power spectrum matching an ivar map: the mean variance of each stamp.

    Arguments:
        ivar: (..., H, W) inverse variance per pixel; pixels with ivar == 0 are left out.

    Returns:
        (..., H, W): ``mean(1 / ivar)`` over each stamp's used pixels, at every mode. For an ivar
        that varies over the stamp this is the stationary approximation (the average variance).
    """
    ivar = _as_float(ivar, "ivar")
    if ivar.ndim < 2:
        raise InputError(f"ivar has shape {tuple(ivar.shape)}; give (..., H, W) maps")
    if not bool(torch.isfinite(ivar).all()) or bool((ivar < 0).any()):
        raise InputError("ivar must be finite and >= 0 (0 for pixels without information)")
    used = ivar > 0
    count = used.sum(dim=(-2, -1), keepdim=True)
    if bool((count == 0).any()):
        raise InputError("a stamp has ivar == 0 everywhere: its noise level is unknown; drop "
                         "it or give its ivar")
    variance = torch.where(used, 1.0 / torch.where(used, ivar, 1.0), 0.0).sum(dim=(-2, -1), keepdim=True)
    return (variance / count).expand(ivar.shape).clone()


def estimate_noise_ps(noise_images) -> torch.Tensor:
    """Noise power spectrum measured on blank (source-free, sky-subtracted) stamps.

    ``mean over stamps of |fft2(stamp, norm="ortho")|^2``, the layout :func:`fourier_nll` takes.
    Each complex mode's periodogram scatters by 100 % per stamp, so the spectrum's relative
    precision per mode is ~1/sqrt(M) for M stamps: use a few hundred. The stamps must have the
    size of the images to be scored; the estimate is then the diagonal of the noise covariance
    in the Fourier basis, also for noise cut out of a larger correlated field. The stamp mean is
    not subtracted (it is part of the noise: the zero-frequency mode).

    Arguments:
        noise_images: (M, C, H, W) or (M, H, W) noise-only stamps, in flux units.

    Returns:
        (C, H, W) or (H, W), symmetric under k -> -k.
    """
    noise = _as_float(noise_images, "noise_images")
    if noise.ndim not in (3, 4) or noise.shape[0] < 1:
        raise InputError(f"noise_images has shape {tuple(noise.shape)}; give (M, C, H, W) or "
                         "(M, H, W) blank sky stamps, M >= 1")
    if not bool(torch.isfinite(noise).all()):
        raise InputError("noise_images has NaN/inf pixels; use clean blank stamps")
    spectrum = torch.fft.fft2(noise, norm="ortho")
    return (spectrum.real.square() + spectrum.imag.square()).mean(dim=0)


def _per_band(value: torch.Tensor) -> torch.Tensor:
    """(C,) or (N, C) values get the trailing (H, W) axes of an image; others broadcast as is."""
    return value[..., None, None] if value.ndim in (1, 2) else value


class ObservationModel(torch.nn.Module):
    """What a survey does to a model sky: PSF convolution, pixel response and noise.

    The decoder emits the noiseless, PSF-free sky; :meth:`nll` convolves it with each object's
    PSF (and integrates an oversampled sky over the native pixels) and scores the observed
    image under that object's noise, so the morphology model is independent of the observing
    conditions.

    Arguments:
        likelihood: ``"pixel"`` (independent pixels with inverse variance ``batch["ivar"]``,
            optional ``batch["mask"]``) or ``"fourier"`` (stationary noise with power spectrum
            ``batch["noise_ps"]``, diagonal in Fourier space).
        oversample: the sky is on an `oversample` times finer grid than the data.
        band_limit_threshold: Fourier likelihood only: modes where the PSF's transfer is below
            this fraction of its peak are left out (no information about the sky there); 0 or
            None keeps every mode.

    Example:
        >>> import torch
        >>> obs = ObservationModel("pixel")
        >>> sky = torch.zeros(2, 1, 16, 16); sky[:, :, 8, 8] = 100.0
        >>> psf = torch.ones(5, 5) / 25  # a 5 x 5 box PSF
        >>> x = obs.observe(sky, psf, noise_sigma=1.0, generator=torch.Generator().manual_seed(0))
        >>> obs.nll(sky, {"x": x, "psf": psf, "ivar": torch.ones_like(x)}).shape
        torch.Size([2])
    """

    def __init__(self, likelihood: str = "pixel", oversample: int = 1,
                 band_limit_threshold: float | None = 1e-3):
        super().__init__()
        if likelihood not in ("pixel", "fourier"):
            raise InputError(f"likelihood={likelihood!r}; choose 'pixel' (per-pixel inverse "
                             "variance) or 'fourier' (noise power spectrum)")
        if int(oversample) != oversample or oversample < 1:
            raise InputError(f"oversample={oversample!r}; give a whole number >= 1")
        if band_limit_threshold is not None and not 0 <= band_limit_threshold < 1:
            raise InputError(f"band_limit_threshold={band_limit_threshold!r}; give a fraction of "
                             "the PSF's peak transfer in [0, 1), e.g. 1e-3, or 0 to keep all modes")
        self.likelihood = likelihood
        self.oversample = int(oversample)
        self.band_limit_threshold = band_limit_threshold or 0.0

    def extra_repr(self) -> str:
        return (f"likelihood={self.likelihood!r}, oversample={self.oversample}, "
                f"band_limit_threshold={self.band_limit_threshold}")

    def predict(self, sky: torch.Tensor, psf) -> torch.Tensor:
        """The noiseless observed image: `sky` (N, C, oH, oW) convolved with `psf` -> (N, C, H, W)."""
        return convolve_psf(sky, psf, self.oversample)

    def _inputs(self, sky, batch):
        if "x" not in batch:
            raise InputError("batch has no 'x' array: the observed images (N, C, H, W) to score")
        if "psf" not in batch or batch["psf"] is None:
            raise InputError("batch has no 'psf' array: simulate or import the store with PSF stamps (deepfield "
                             "import ... --psf), or add stamps drawn from a FWHM with deepfield.physics.moffat_psf")
        x = torch.as_tensor(batch["x"])
        if x.ndim != 4:
            raise InputError(f"batch 'x' has shape {tuple(x.shape)}; the observation model takes "
                             "images (N, C, H, W)")
        o = self.oversample
        want = (x.shape[0], x.shape[1], o * x.shape[2], o * x.shape[3])
        if tuple(sky.shape) != want:
            raise InputError(f"sky has shape {tuple(sky.shape)} but the data 'x' is "
                             f"{tuple(x.shape)}: with oversample={o} the decoder must emit "
                             f"{want}")
        psf = as_psf(batch["psf"], x.shape, dtype=sky.dtype, device=sky.device, name="batch 'psf'")
        return x.to(device=sky.device), psf

    def _terms(self, sky, batch):
        x, psf = self._inputs(sky, batch)
        model = convolve_checked(sky, psf, self.oversample)
        if self.likelihood == "pixel":
            if batch.get("ivar") is None:
                raise InputError("batch has no 'ivar' array: import the store with its inverse "
                                 "variance (--ivar), or use the Fourier likelihood with a noise "
                                 "power spectrum ('noise_ps')")
            return _pixel_terms(model, x, batch["ivar"], batch.get("mask"))
        if batch.get("noise_ps") is None:
            raise InputError("batch has no 'noise_ps' array: estimate one from blank sky stamps "
                             "(deepfield.physics.estimate_noise_ps) or from 'ivar' "
                             "(noise_power_spectrum_from_ivar), or use likelihood='pixel'")
        if batch.get("mask") is not None and bool(torch.as_tensor(batch["mask"]).bool().any()):
            raise InputError("batch has masked pixels, which the Fourier likelihood cannot leave "
                             "out (every mode mixes all pixels): use likelihood='pixel', or "
                             "in-paint the masked pixels and drop 'mask'")
        band_mask = None
        if self.band_limit_threshold > 0:
            band_mask = psf_band_limit_mask(psf, x.shape[-2:], self.band_limit_threshold)
        return _fourier_terms(model, x, batch["noise_ps"], band_mask)

    def nll(self, sky: torch.Tensor, batch) -> torch.Tensor:
        """Negative log-likelihood per object, (N,), in nats, normalising constants included.

        Arguments:
            sky: (N, C, oH, oW) non-negative, noiseless, PSF-free model image.
            batch: mapping with ``"x"`` (N, C, H, W), ``"psf"`` ((N, C, h, w), (C, h, w) or (h, w)),
                and ``"ivar"`` (+ optional ``"mask"``, True = bad) for the pixel likelihood or
                ``"noise_ps"`` ((C, H, W) or (N, C, H, W)) for the Fourier one.
        """
        chi2, log_det, _ = self._terms(sky, batch)
        return 0.5 * (chi2 + log_det)

    forward = nll

    def chi2(self, sky: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Goodness of fit: (chi^2, number of pixels or real Fourier degrees of freedom), each (N,).

        chi^2 / n ~ 1 +- sqrt(2 / n) when the sky and the noise model are right.
        """
        chi2, _, count = self._terms(sky, batch)
        return chi2, count.to(chi2.dtype)

    def observe(self, sky: torch.Tensor, psf, noise_sigma=None, *, ivar=None, noise_ps=None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """The sky as a survey records it: PSF-convolved, pixel-integrated, plus Gaussian noise.

        Give exactly one noise description:

        - `noise_sigma`: standard deviation per pixel (flux units): a float, (C,) per band,
          (N, C) per object and band, or a map broadcastable to (N, C, H, W);
        - `ivar`: inverse variance map broadcastable to (N, C, H, W) (pixels with ivar == 0
          carry no measurement and are returned noiseless);
        - `noise_ps`: power spectrum (C, H, W) or (N, C, H, W) in the :func:`fourier_nll`
          layout: correlated noise, periodic on the stamp.

        Arguments:
            sky: (N, C, oH, oW) noiseless, PSF-free model sky.
            psf: (N, C, h, w), (C, h, w) or (h, w) PSF stamps at the native pixel scale.
            generator: seeds the noise (same generator state, same image).

        Returns:
            (N, C, H, W) observed images. Differentiable in `sky` (the noise is additive).
        """
        given = [v is not None for v in (noise_sigma, ivar, noise_ps)]
        if sum(given) != 1:
            raise InputError("observe needs exactly one of noise_sigma, ivar or noise_ps")
        clean = self.predict(sky, psf)
        like = dict(dtype=clean.dtype, device=clean.device)
        white = torch.randn(clean.shape, generator=generator, **like)
        if noise_ps is not None:
            ps = _broadcast_to(_as_float(noise_ps, "noise_ps", like=clean).to(**like), clean.shape,
                               "noise_ps", "give (C, H, W) or (N, C, H, W)")
            if not bool(torch.isfinite(ps).all()) or bool((ps < 0).any()):
                raise InputError("noise_ps must be finite and >= 0")
            noise = torch.fft.ifft2(ps.sqrt() * torch.fft.fft2(white, norm="ortho"), norm="ortho").real
            return clean + noise
        if ivar is not None:
            iv = _broadcast_to(_as_float(ivar, "ivar", like=clean).to(**like), clean.shape, "ivar",
                               "give (N, C, H, W) or (C, 1, 1)")
            if not bool(torch.isfinite(iv).all()) or bool((iv < 0).any()):
                raise InputError("ivar must be finite and >= 0 (0 for pixels without information)")
            sigma = torch.where(iv > 0, 1.0 / torch.where(iv > 0, iv, 1.0).sqrt(), 0.0)
        else:
            sigma = _per_band(_as_float(noise_sigma, "noise_sigma", like=clean).to(**like))
            sigma = _broadcast_to(sigma, clean.shape, "noise_sigma",
                                  "give a float, (C,) per band, (N, C) or a (N, C, H, W) map")
            if not bool(torch.isfinite(sigma).all()) or bool((sigma < 0).any()):
                raise InputError("noise_sigma must be finite and >= 0")
        return clean + sigma * white
