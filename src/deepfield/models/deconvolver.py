"""Deconvolver: a network trained on simulated pairs to return the PSF-free, noiseless sky.

Where the truth is known (simulations: every store `deepfield simulate galaxies` writes holds
each object's PSF-free ``truth``), the estimate that minimises the mean squared error is the
conditional mean of the truth given the observation, and a network trained on pairs with that
loss learns it directly: no prior to choose, no latent bottleneck, no regularisation weight to
tune as Wiener or Richardson-Lucy need. It reads each object's image, its noise (``ivar``) and
its PSF, so one model serves a survey whose seeing and depth vary object by object.

The network is a small U-Net (stride-2 convolutions down, nearest-neighbour upsampling and
3x3 convolutions up: no transposed convolutions, no checkerboard) whose output is the estimate
itself, not a correction to the observation: a correction would have to cancel every noise
pixel of a faint stamp, and what it leaves behind sums to a pedestal that swamps a faint
galaxy's light. It works on each object scaled by its own amplitude s (the RMS of its valid
pixels), so the estimate scales exactly with the flux (x -> a x, ivar -> ivar / a^2 gives a
times the estimate) and faint and bright galaxies are one problem to it. Its input channels
per band: x / s, log(1 + s sqrt(ivar)) (the object's signal-to-noise per pixel, 0 on masked
pixels) and the PSF padded to the stamp and scaled to a peak of 1.

The training loss is the mean of (estimate - truth)^2 x ivar over pixels, the squared error in
units of each pixel's noise variance that benchmarks/denoise.py reports, plus the same over
4x4 and 16x16 blocks (``loss_scales``). Training turns and flips every batch at random (the sky
has no preferred orientation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from deepfield.errors import ConfigError, InputError
from deepfield.models.autoencoder import random_dihedral
from deepfield.models.base import Model, register
from deepfield.models.protocol import Deconvolving, LossOutput, Reconstructing, Trainable
from deepfield.nn import ResidualBlock

__all__ = ["DeconvolverConfig", "Deconvolver", "psf_channels"]


@dataclass(frozen=True)
class DeconvolverConfig:
    """Arguments:
    input_shape: (C, H, W) images; H and W divisible by 2^(len(channels) - 1).
    channels: widths of the U-Net's levels, finest first; each further level halves the stamp.
    res_blocks: residual blocks at the coarsest level.
    augment: turn and flip each training batch at random (one of the 8 symmetries of the
        square per object).
    conserve_flux: give each estimate, band by band, the flux the stamp holds: the estimate
        through the PSF sums, over the valid pixels (ivar > 0), to the observed sum there, the
        difference spread along the estimate's own profile. The stamp sum is an unbiased
        flux, so faint galaxies keep theirs; without it the network returns the conditional
        mean, whose flux is pulled low for faint galaxies (the faint ones are the many), at
        a slightly lower squared error.
    loss_scales: besides every pixel's error, the loss weighs the mean error over k x k blocks
        (in units of that mean's noise) for each k here that divides the stamp: a faint
        pedestal costs little per pixel but much over a block, and it is what inflates a
        faint galaxy's half-light radius. The conditional mean minimises every such term at
        once, so they change what training attends to, not what it aims at.
    profile_power: the flux the stamp holds beyond the estimate's is spread along the
        estimate's positive part raised to this power (relative to its peak), over a point
        source of the stamp's RMS at the centre: 1 follows the estimate's own profile, wings
        and all; 2 keeps the correction to the galaxy's bright core.
    normalisation: 'channel' (kept for the model folder; the network scales each object by its
        own amplitude).
    """

    input_shape: tuple[int, ...]
    channels: tuple[int, ...] = (32, 64, 128)
    res_blocks: int = 2
    augment: bool = True
    conserve_flux: bool = True
    loss_scales: tuple[int, ...] = (1, 4, 16)
    profile_power: float = 2.0
    normalisation: str = "channel"


def psf_channels(psf: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """PSF stamps (N, C, h, w) centred on an (H, W) stamp (zero-padded or cropped about the
    centre) and scaled to a peak of 1: the PSF as the network sees it."""
    h, w = psf.shape[-2:]
    H, W = shape
    if h > H:
        top = (h - H) // 2
        psf = psf[..., top:top + H, :]
    if w > W:
        left = (w - W) // 2
        psf = psf[..., :, left:left + W]
    h, w = psf.shape[-2:]
    top, left = (H - h) // 2, (W - w) // 2
    psf = F.pad(psf, (left, W - w - left, top, H - h - top))
    peak = psf.amax(dim=(-2, -1), keepdim=True)
    return psf / torch.where(peak > 0, peak, torch.ones_like(peak))


class _UNet(nn.Module):
    def __init__(self, c_in: int, c_out: int, widths: tuple[int, ...], res_blocks: int):
        super().__init__()
        self.inc = nn.Sequential(nn.Conv2d(c_in, widths[0], 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(widths[0], widths[0], 3, padding=1), nn.SiLU())
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 4, stride=2, padding=1), nn.SiLU(), nn.Conv2d(b, b, 3, padding=1), nn.SiLU())
            for a, b in zip(widths[:-1], widths[1:]))
        self.bottom = nn.Sequential(*(ResidualBlock(widths[-1]) for _ in range(res_blocks)))
        self.up = nn.ModuleList(
            nn.Conv2d(b, a, 3, padding=1) for a, b in zip(widths[:-1], widths[1:]))
        self.merge = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Conv2d(2 * a, a, 3, padding=1), nn.SiLU()) for a in widths[:-1])
        self.out = nn.Conv2d(widths[0], c_out, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(u)]
        for stage in self.down:
            skips.append(stage(skips[-1]))
        h = self.bottom(skips.pop())
        for up, merge in zip(reversed(self.up), reversed(self.merge)):
            h = up(F.interpolate(h, scale_factor=2, mode="nearest"))
            h = merge(torch.cat([h, skips.pop()], dim=1))
        return self.out(h)


@register
class Deconvolver(Model, Reconstructing, Trainable, Deconvolving):
    """Supervised deconvolution and denoising: a U-Net trained on simulated (observation, truth)
    pairs returns each object's PSF-free noiseless sky (the conditional mean, in store units),
    reading its image, noise and PSF. ``deconvolve(x, psf, ivar)``; ``reconstruct_batch`` gives
    the denoised observation (the estimate through the object's PSF).

    Example:
        >>> m = Deconvolver(DeconvolverConfig(input_shape=(1, 16, 16), channels=(8, 16)))
        >>> x, psf, ivar = torch.rand(2, 1, 16, 16), torch.ones(2, 1, 5, 5) / 25, torch.ones(2, 1, 16, 16)
        >>> sky = m.deconvolve(x, psf, ivar)  # untrained: the stamp's flux as a point source
        >>> torch.allclose(sky.sum((-2, -1)), x.sum((-2, -1)), rtol=0.02)
        True
    """

    family = "deconvolver"
    config_class = DeconvolverConfig
    check_options = {"channels": (8, 16), "res_blocks": 1}
    #: a few bright galaxies per batch carry most of the squared error in noise units; clipping
    #: keeps their gradients from throwing the others off
    default_gradient_clip = 1.0

    def __init__(self, config: DeconvolverConfig):
        shape = tuple(config.input_shape)
        if len(shape) != 3:
            raise ConfigError(f"the deconvolver takes images (C, H, W), got input shape {shape}")
        levels = len(config.channels)
        if levels < 1 or min(config.channels) < 1 or config.res_blocks < 0:
            raise ConfigError(f"channels {config.channels}: give at least one positive width; res_blocks >= 0")
        factor = 2 ** (levels - 1)
        if shape[1] % factor or shape[2] % factor:
            raise ConfigError(f"{shape[1]}x{shape[2]} stamps with {levels} levels: H and W must be divisible by "
                              f"{factor}; use fewer channels entries (e.g. --set channels=32,64)")
        super().__init__(config)
        c = shape[0]
        self.net = _UNet(3 * c, c, tuple(config.channels), config.res_blocks)

    @property
    def latent_dim(self) -> int:
        raise AttributeError("a deconvolver maps images to images; it has no latent codes")

    @property
    def data_arrays(self) -> tuple[str, ...]:
        return ("psf", "ivar")

    @property
    def optional_data_arrays(self) -> tuple[str, ...]:
        return ("truth",)

    def check_store(self, store, family: str) -> None:
        if not store.has("truth"):
            raise InputError(f"store {store.path} has no 'truth' (the noiseless PSF-free sky of each object), which "
                             f"a deconvolver learns from; it has {list(store.array_names)}. Train on a simulated "
                             "store (deepfield simulate galaxies), or use a VAE, which needs no truth")
        super().check_store(store, family)

    def _checked(self, x, psf, ivar):
        """x checked, ivar broadcast to it, the PSF as (N, C, h, w) stamps (checked by as_psf),
        and the valid-pixel mask."""
        from deepfield.physics import as_psf

        x = self.check_input(x)
        ivar = torch.as_tensor(ivar, dtype=x.dtype, device=x.device).expand_as(x)
        if not torch.isfinite(x).all() or not torch.isfinite(ivar).all():
            raise InputError("images or ivar hold NaN/inf: set ivar = 0 on bad pixels (and any finite value in x)")
        psf = as_psf(psf, x.shape, dtype=x.dtype, device=x.device)
        psf = psf.expand(x.shape[0], x.shape[1], *psf.shape[-2:])
        return x, psf, ivar, (ivar > 0).to(x.dtype)

    def deconvolve(self, x: torch.Tensor, psf, ivar) -> torch.Tensor:
        """The PSF-free noiseless sky (N, C, H, W) in store units of images `x` (N, C, H, W)
        observed through `psf` ((N, C, h, w), (C, h, w) or (h, w) stamps) with inverse variance
        `ivar` (broadcastable to x; 0 on bad pixels)."""
        x, psf, ivar, valid = self._checked(x, psf, ivar)
        x = x * valid
        n_valid = valid.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1.0)
        s = ((x ** 2).sum(dim=(1, 2, 3), keepdim=True) / n_valid).sqrt()
        s = torch.where(s > 0, s, torch.ones_like(s))
        point = psf_channels(psf, tuple(x.shape[-2:]))
        snr = torch.log1p(s * ivar.clamp_min(0).sqrt())
        estimate = s * self.net(torch.cat([x / s, snr, point], dim=1))
        if not self.config.conserve_flux:
            return estimate
        from deepfield.physics import convolve_psf

        excess = ((convolve_psf(estimate, psf) - x) * valid).sum(dim=(-2, -1))
        # the estimate's positive part, on a floor of a point source of the stamp's RMS at the centre (so a
        # faint, noisy estimate never has a vanishing profile to put the difference on)
        point = point / point.sum(dim=(-2, -1), keepdim=True)
        pos = estimate.clamp_min(0)
        if self.config.profile_power != 1:
            peak = pos.amax(dim=(-2, -1), keepdim=True)
            pos = pos * (pos / torch.where(peak > 0, peak, torch.ones_like(peak))) ** (self.config.profile_power - 1)
        profile = pos + s * point
        per_unit = (convolve_psf(profile, psf) * valid).sum(dim=(-2, -1))
        return estimate - (excess / per_unit.clamp_min(torch.finfo(x.dtype).tiny))[..., None, None] * profile

    def deconvolve_batch(self, batch: dict) -> torch.Tensor:
        return self.deconvolve(batch["x"], batch["psf"], batch["ivar"])

    def reconstruct_batch(self, batch: dict) -> torch.Tensor:
        """The denoised observation: the estimated sky through each object's PSF."""
        from deepfield.physics import convolve_psf

        return convolve_psf(self.deconvolve_batch(batch), batch["psf"])

    def loss(self, batch: dict) -> LossOutput:
        if "truth" not in batch:
            raise InputError("the deconvolver's training batches need 'truth' (the noiseless PSF-free sky): "
                             "train on a simulated store")
        x, psf, ivar, valid = self._checked(batch["x"], batch["psf"], batch["ivar"])
        truth = batch["truth"]
        if self.training and self.config.augment:
            x, ivar, truth, psf, valid = random_dihedral(x, ivar, truth, psf, valid)
        estimate = self.deconvolve(x, psf, ivar)
        diff = estimate - truth
        mse = (diff ** 2 * ivar).mean()
        loss, parts = mse, {"mse_noise_units": mse.detach()}
        w = (ivar * valid).sum(dim=(-2, -1), keepdim=True) / valid.sum(dim=(-2, -1), keepdim=True).clamp_min(1)
        for k in self.config.loss_scales:
            if k == 1 or diff.shape[-1] % k or diff.shape[-2] % k:
                continue
            block = F.avg_pool2d(diff * valid, k)
            term = (block ** 2 * k ** 2 * w).mean()
            loss = loss + term
            parts[f"mse_{k}x{k}_blocks"] = term.detach()
        return LossOutput(loss, parts)
