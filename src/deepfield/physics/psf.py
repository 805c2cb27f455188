"""PSF convolution of a model sky, the PSF band limit, and PSF stamps drawn with GalSim.

Conventions (see :mod:`deepfield.physics`): images are (N, C, H, W) in the store's flux units
(counts per pixel); a PSF stamp is (N, C, h, w), (C, h, w) or (h, w) with odd h and w, the PSF
centre on the middle pixel ``(h // 2, w // 2)``, sampled at pixel centres (GalSim's
``method='no_pixel'``) and normally of unit sum.

The convolution is a *linear* (not circular) one done with real FFTs: image and PSF are zero
padded to at least ``H + h - 1`` by ``W + w - 1`` (rounded up to a 2, 3, 5, 7-smooth length),
multiplied in Fourier space and the central ``H x W`` block cropped back. It equals
``scipy.signal.fftconvolve(image, psf, mode="same")`` and never wraps light from one edge of a
stamp to the other.

Oversampled model skies (``oversample=o``): the model is drawn on an ``o`` times finer grid, each
fine pixel holding the flux that falls on it. The native PSF samples are brought to the fine
grid by band-limited (Fourier, sinc) interpolation -- exact for a PSF with no power beyond the
native Nyquist frequency; for a Moffat (beta 3) sampled at 0.2" pixels the interpolated stamp
is within ~5e-5 of the peak at FWHM 1.0", 5e-4 at 0.7", 2e-3 at 0.6" and 6e-3 at 0.5" (2.5
pixels: undersampled PSFs are where the stored stamp itself is the limit) -- then cropped
to the same angular extent (``o * (h - 1) + 1`` fine samples, still odd and centred, since all
fine pixel centres are separated by multiples of ``1 / o`` native pixels) and renormalised to the
stamp's sum. After the fine-grid convolution, ``o x o`` blocks are summed: that is the native
pixel response (a top hat integrating the light over each pixel), so the result is what GalSim's
``drawImage(method='auto')`` draws at the native scale: to ~1e-3 of the peak for o = 2 and an
exponential disk, where rebinning the model to native pixels first and convolving there (the
o = 1 path on pixel-integrated skies) errs several times more, and ~1e-2 for a compact Sersic
(tests/test_physics.py). Whatever the path, a stamp only holds the PSF light that falls on it:
a 25 x 25 stamp at 0.2" misses 0.4 % of a Moffat (beta 3) of FWHM 0.8" and 1.1 % at 1.0", which
the unit-sum normalisation moves into the core.

References:
    Bernstein & Gruen (2014), "Resampling images in Fourier domain", PASP 126, 287.
    arXiv:1401.2636
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from deepfield.errors import InputError

__all__ = [
    "convolve_psf",
    "oversample_psf",
    "psf_band_limit_mask",
    "moffat_psf",
    "gaussian_psf",
    "as_psf",
]


def _good_fft_size(n: int) -> int:
    """Smallest 2, 3, 5, 7-smooth integer >= n (fast for pocketfft and cuFFT)."""
    while True:
        m = n
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def as_psf(psf, image_shape: Sequence[int], *, dtype=None, device=None, name: str = "PSF") -> torch.Tensor:
    """Check a PSF against (N, C, H, W) images and return it as a (N or 1, C or 1, h, w) tensor.

    Arguments:
        psf: (N, C, h, w) one per object and band, (C, h, w) one per band, or (h, w) for all;
            a tensor or a NumPy array. h and w odd, the centre on the middle pixel.
        image_shape: the images' shape (N, C, H, W).
        dtype, device: of the returned tensor (default: keep).
        name: how the error messages call the PSF.

    Raises:
        InputError: with the fix, for a wrong number of bands or objects, an even-sized stamp,
            NaN/inf values or a stamp that sums to zero or less.
    """
    psf = torch.as_tensor(psf, dtype=dtype, device=device)
    n, c = int(image_shape[0]), int(image_shape[1])
    shape = tuple(psf.shape)
    forms = (f"({c}, h, w) one per band, ({n}, {c}, h, w) one per object"
             + (", or (h, w)" if c == 1 else ", or (h, w) shared by all bands"))
    if psf.ndim == 2:
        psf = psf[None, None]
    elif psf.ndim == 3:
        if shape[0] != c:
            raise InputError(f"{name} has shape {shape}, read as (C, h, w): {shape[0]} band(s), but "
                             f"the image has {c}; give {forms}")
        psf = psf[None]
    elif psf.ndim == 4:
        if shape[1] != c:
            raise InputError(f"{name} has shape {shape}: {shape[1]} band(s), but the image has {c}; "
                             f"give {forms}")
        if shape[0] not in (1, n):
            raise InputError(f"{name} has shape {shape}: {shape[0]} objects, but there are {n} "
                             f"images; give {forms}")
    else:
        raise InputError(f"{name} has shape {shape}; give {forms}")
    h, w = psf.shape[-2:]
    if h % 2 == 0 or w % 2 == 0:
        raise InputError(f"{name} stamp is {h} x {w}: PSF stamps must have odd sides with the PSF "
                         "centre on the middle pixel; crop one row/column from the side away from "
                         "the centre, or redraw the stamp with an odd size")
    if not psf.is_floating_point():
        psf = psf.to(torch.get_default_dtype())
    if psf.numel():
        sums = psf.sum(dim=(-2, -1))
        if not bool(torch.isfinite(psf).all()):
            raise InputError(f"{name} has NaN or inf values; give a finite PSF (re-import the "
                             "PSF, or draw one with deepfield.physics.moffat_psf)")
        if bool((sums <= 0).any()):
            raise InputError(f"{name} has stamps summing to {float(sums.min()):.3g} <= 0; a PSF "
                             "stamp holds the fraction of light at each offset and sums to ~1")
    return psf


def oversample_psf(psf: torch.Tensor, factor: int) -> torch.Tensor:
    """Band-limited (Fourier) interpolation of PSF stamps onto a `factor` times finer grid.

    Arguments:
        psf: (..., h, w) stamps, odd h and w, centred, sampled at native pixel centres.
        factor: the oversampling factor o >= 1.

    Returns:
        (..., o (h - 1) + 1, o (w - 1) + 1) stamps at offsets that are multiples of 1/o native
        pixels, centred on the middle sample, with the same sum as `psf` (unit sum in, unit sum
        out). Differentiable.
    """
    if factor == 1:
        return psf
    h, w = psf.shape[-2:]
    dims = (-2, -1)
    spectrum = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(psf, dim=dims)), dim=dims)
    hf, wf = factor * h, factor * w
    top, left = hf // 2 - h // 2, wf // 2 - w // 2
    # odd h, w: no Nyquist bin to split, so zero padding keeps the spectrum Hermitian
    padded = torch.nn.functional.pad(spectrum, (left, wf - w - left, top, hf - h - top))
    fine = torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(padded, dim=dims)).real, dim=dims)
    cy, cx = hf // 2, wf // 2
    ry, rx = factor * (h // 2), factor * (w // 2)
    fine = fine[..., cy - ry: cy + ry + 1, cx - rx: cx + rx + 1]
    return fine * (psf.sum(dim=dims, keepdim=True) / fine.sum(dim=dims, keepdim=True))


def _linear_convolve(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Zero-padded FFT convolution, cropped to the image ("same"); odd, centred kernel."""
    H, W = image.shape[-2:]
    kh, kw = kernel.shape[-2:]
    size = (_good_fft_size(H + kh - 1), _good_fft_size(W + kw - 1))
    product = torch.fft.rfft2(image, s=size) * torch.fft.rfft2(kernel, s=size)
    full = torch.fft.irfft2(product, s=size)
    cy, cx = kh // 2, kw // 2
    return full[..., cy: cy + H, cx: cx + W]


def convolve_psf(image: torch.Tensor, psf, oversample: int = 1) -> torch.Tensor:
    """Convolve model skies with each object's PSF and integrate over the native pixels.

    Arguments:
        image: (N, C, H, W) noiseless, PSF-free sky, flux per pixel; with `oversample` o > 1,
            (N, C, o H, o W) on an o times finer grid (flux per fine pixel).
        psf: (N, C, h, w), (C, h, w) or (h, w) stamps at the native pixel scale (odd h, w,
            centred, sampled at pixel centres), broadcast over objects and bands.
        oversample: o, the fine grid's pixels per native pixel along each axis.

    Returns:
        (N, C, H, W) at the native scale. Flux is conserved: the sum over the output is the sum
        over the input times the PSF's sum, up to the light the PSF spreads off the stamp.

    Example:
        >>> import torch
        >>> sky = torch.zeros(1, 1, 9, 9); sky[0, 0, 4, 4] = 10.0
        >>> psf = torch.tensor([[0.0, 0.1, 0.0], [0.1, 0.6, 0.1], [0.0, 0.1, 0.0]])
        >>> out = convolve_psf(sky, psf)
        >>> round(float(out.sum()), 5), round(float(out[0, 0, 4, 4]), 5)
        (10.0, 6.0)
    """
    if not isinstance(image, torch.Tensor):
        image = torch.as_tensor(image)
    if image.ndim != 4:
        raise InputError(f"image has shape {tuple(image.shape)}; convolve_psf takes (N, C, H, W) "
                         "images (add the missing axes, e.g. image[None] for one object)")
    if not image.is_floating_point():
        image = image.to(torch.get_default_dtype())
    o = int(oversample)
    if o != oversample or o < 1:
        raise InputError(f"oversample={oversample!r}; give a whole number >= 1")
    fine_h, fine_w = image.shape[-2:]
    if fine_h % o or fine_w % o:
        raise InputError(f"image is {fine_h} x {fine_w} fine pixels, not a whole number of "
                         f"{o} x {o} blocks; with oversample={o} the model sky must be "
                         f"(N, C, {o}H, {o}W)")
    psf = as_psf(psf, image.shape, dtype=image.dtype, device=image.device)
    return convolve_checked(image, psf, o)


def convolve_checked(image: torch.Tensor, psf: torch.Tensor, oversample: int) -> torch.Tensor:
    """convolve_psf on inputs already checked: psf (N or 1, C, h, w) from :func:`as_psf`."""
    out = _linear_convolve(image, oversample_psf(psf, oversample))
    if oversample > 1:
        n, c, h, w = out.shape
        o = oversample
        out = out.reshape(n, c, h // o, o, w // o, o).sum(dim=(3, 5))
    return out


def psf_band_limit_mask(psf, shape: Sequence[int], threshold: float = 1e-3) -> torch.Tensor:
    """Fourier modes of an (H, W) image that the PSF suppresses below `threshold` of its peak.

    The PSF's transfer function is evaluated at the frequencies of ``torch.fft.fft2`` on an
    H x W grid (unshifted layout: zero frequency at [0, 0]) as the discrete-time Fourier
    transform of the stamp, so a stamp larger than the image works too. Modes where
    ``|PSF~| / max|PSF~| < threshold`` carry (almost) no information about the sky: any model
    convolved with this PSF is nearly zero there, and data there is noise.

    Arguments:
        psf: (..., h, w) stamps, odd h, w, centred.
        shape: the image's (H, W).
        threshold: relative transfer below which a mode is flagged.

    Returns:
        bool tensor (..., H, W), True where the mode lies beyond the band limit. It is symmetric
        under k -> -k (the transfer function of a real PSF is), so Hermitian pairs are flagged
        together.
    """
    psf = torch.as_tensor(psf)
    if not psf.is_floating_point():
        psf = psf.to(torch.get_default_dtype())
    h, w = psf.shape[-2:]
    H, W = int(shape[-2]), int(shape[-1])
    if h % 2 == 0 or w % 2 == 0:
        raise InputError(f"PSF stamp is {h} x {w}: PSF stamps must have odd sides with the PSF "
                         "centre on the middle pixel")
    cdtype = torch.complex128 if psf.dtype == torch.float64 else torch.complex64

    def dtft(n_out: int, n_in: int) -> torch.Tensor:
        k = torch.arange(n_out, device=psf.device, dtype=psf.dtype)[:, None]
        m = torch.arange(n_in, device=psf.device, dtype=psf.dtype)[None, :] - n_in // 2
        phase = -2 * math.pi * torch.remainder(k * m, n_out) / n_out  # exact integers first
        return torch.polar(torch.ones_like(phase), phase).to(cdtype)

    transfer = (dtft(H, h) @ psf.to(cdtype) @ dtft(W, w).T).abs()
    peak = transfer.amax(dim=(-2, -1), keepdim=True)
    return transfer < threshold * peak


# --------------------------------------------------------------------------------------
# PSF stamps for users who only know a FWHM


def _check_stamp_args(fwhm: float, size: int, pixel_scale: float, g1: float, g2: float) -> None:
    if not (np.isfinite(fwhm) and fwhm > 0):
        raise InputError(f"fwhm={fwhm!r}: give the PSF FWHM in arcsec, > 0 (e.g. 0.7)")
    if int(size) != size or size < 3 or size % 2 == 0:
        raise InputError(f"size={size!r}: PSF stamps need an odd side of at least 3 pixels "
                         "(e.g. 25) so that the PSF centre is the middle pixel")
    if not (np.isfinite(pixel_scale) and pixel_scale > 0):
        raise InputError(f"pixel_scale={pixel_scale!r}: give the pixel scale in arcsec/pixel, > 0")
    if not np.hypot(g1, g2) < 1:
        raise InputError(f"shear (g1, g2) = ({g1}, {g2}) has |g| >= 1; a PSF shear is small, "
                         "|g| < 1 (typically < 0.05)")


def _draw_stamp(profile, size: int, pixel_scale: float, g1: float, g2: float, dtype) -> torch.Tensor:
    if g1 or g2:
        profile = profile.shear(g1=g1, g2=g2)
    # point samples at pixel centres ('no_pixel'), centre on the middle pixel: the store's
    # convention (x ~= truth (*) psf, where truth is already integrated over pixels)
    image = profile.drawImage(nx=int(size), ny=int(size), scale=pixel_scale, method="no_pixel",
                              use_true_center=False)
    stamp = image.array.astype(np.float64)
    return torch.as_tensor(stamp / stamp.sum(), dtype=dtype)


def moffat_psf(fwhm: float, beta: float = 3.0, size: int = 25, pixel_scale: float = 0.2,
               g1: float = 0.0, g2: float = 0.0, *, trunc_fwhm: float = 5.0,
               dtype=torch.float32) -> torch.Tensor:
    """A Moffat PSF stamp drawn with GalSim: (size, size), unit sum, centred.

    The same PSF the galaxy simulator stores (Moffat truncated at `trunc_fwhm` FWHM, sheared,
    sampled at pixel centres), so ``moffat_psf(store.column("psf_fwhm")[i], g1=..., g2=...)``
    reproduces a simulated store's ``psf[i]``.

    Arguments:
        fwhm: full width at half maximum, arcsec.
        beta: Moffat index (> 1.1); 3 is typical of ground-based seeing, 4.765 of pure
            Kolmogorov turbulence.
        size: stamp side in pixels, odd.
        pixel_scale: arcsec per pixel.
        g1, g2: reduced shear of the PSF (ellipticity), |g| < 1.
        trunc_fwhm: truncation radius in FWHM (0: none).
        dtype: of the returned tensor.

    References:
        Moffat (1969), A&A 3, 455.

    Example:
        >>> stamp = moffat_psf(0.7)
        >>> tuple(stamp.shape), round(float(stamp.sum()), 6), int(stamp.argmax())
        ((25, 25), 1.0, 312)
    """
    import galsim

    _check_stamp_args(fwhm, size, pixel_scale, g1, g2)
    if not beta > 1.1:
        raise InputError(f"beta={beta!r}: a Moffat PSF needs beta > 1.1 (typically 2.5-4.8)")
    profile = galsim.Moffat(beta=float(beta), fwhm=float(fwhm), trunc=float(trunc_fwhm * fwhm))
    return _draw_stamp(profile, size, pixel_scale, g1, g2, dtype)


def gaussian_psf(fwhm: float, size: int = 25, pixel_scale: float = 0.2, g1: float = 0.0,
                 g2: float = 0.0, *, dtype=torch.float32) -> torch.Tensor:
    """A Gaussian PSF stamp drawn with GalSim: (size, size), unit sum, centred.

    Arguments:
        fwhm: full width at half maximum, arcsec (sigma = fwhm / 2.3548).
        size: stamp side in pixels, odd.
        pixel_scale: arcsec per pixel.
        g1, g2: reduced shear of the PSF, |g| < 1.
        dtype: of the returned tensor.

    Example:
        >>> stamp = gaussian_psf(0.7, size=15)
        >>> tuple(stamp.shape), round(float(stamp.sum()), 6)
        ((15, 15), 1.0)
    """
    import galsim

    _check_stamp_args(fwhm, size, pixel_scale, g1, g2)
    return _draw_stamp(galsim.Gaussian(fwhm=float(fwhm)), size, pixel_scale, g1, g2, dtype)
