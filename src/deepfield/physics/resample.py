"""Dilation of model skies about the stamp centre, conserving flux.

A galaxy of half-light radius ``s * r`` is, to first order, the same light profile as one of
radius ``r`` drawn ``s`` times larger: ``I_s(x) = I(x / s) / s**2`` keeps the total flux. A
decoder that draws every galaxy at one reference radius, dilated afterwards by each object's
catalog radius, cannot tell small galaxies from large ones, and the size it is asked for is
applied exactly (see ``VAEConfig.size_condition``).

The resampling is separable and linear: along each axis, input sample ``x`` (position ``p`` from
the stamp centre, in pixels) moves to ``s * p`` and its light is shared among the output pixels
by a triangle of half-width ``max(s, 1)``, with weights normalised to sum to one over the
infinite output grid. Shrinking (``s < 1``) is then cloud-in-cell deposition, exact in flux
and free of the aliasing that point sampling a shrunk profile gives; growing (``s > 1``) is
linear interpolation of the input at ``y / s``. The light of input samples that land outside
the stamp is lost, as it is for a large galaxy on a real stamp; everything that stays is kept
to rounding (tests/test_physics.py).
"""

from __future__ import annotations

import math

import torch

from deepfield.errors import InputError

__all__ = ["dilate", "dilation_matrix"]


def dilation_matrix(scale: torch.Tensor, n: int) -> torch.Tensor:
    """(N, n, n) matrices M with ``M[i, y, x]`` the share of input sample x that object i's
    dilation by ``scale[i]`` puts in output pixel y (one axis; the stamp centre is fixed)."""
    s = scale.reshape(-1, 1).to(torch.float64)
    centre = (n - 1) / 2.0
    p = torch.arange(n, dtype=torch.float64, device=s.device) - centre  # (n,) positions from the centre
    target = s * p  # (N, n) where each input sample moves to
    width = s.clamp_min(1.0)  # (N, 1)
    # normalise each input sample's weights over the infinite output grid (integer offsets about it)
    reach = int(math.ceil(float(width.max()))) + 1
    k = torch.arange(-reach, reach + 1, dtype=torch.float64, device=s.device)
    d = target + centre  # in output pixel indices
    j = torch.floor(d).unsqueeze(-1) + k  # (N, n, 2 reach + 1)
    total = (1 - ((j - d.unsqueeze(-1)).abs() / width.unsqueeze(-1))).clamp_min(0).sum(-1)  # (N, n)
    y = p.view(1, n, 1)
    weights = (1 - (y - target.unsqueeze(1)).abs() / width.unsqueeze(-1)).clamp_min(0)  # (N, n_out, n_in)
    return weights / total.unsqueeze(1)


def dilate(images: torch.Tensor, scale) -> torch.Tensor:
    """Dilate square images about their centre by a factor per object, conserving flux.

    Arguments:
        images: (N, C, n, n) skies (flux per pixel); the centre is that of the array, between the
            middle pixels for even n, as GalSim draws a centred profile.
        scale: (N,) or a scalar, > 0: the size of each object's output relative to its input.

    Returns:
        (N, C, n, n) images whose light profile is the input's, ``scale`` times larger, with the
        same total flux except for light dilated off the stamp. Differentiable in `images`.
    """
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise InputError(f"dilate needs (N, C, n, n) square images, got shape {tuple(images.shape)}")
    s = torch.as_tensor(scale, dtype=torch.float64, device=images.device).reshape(-1)
    if s.numel() == 1:
        s = s.expand(images.shape[0])
    if s.numel() != images.shape[0]:
        raise InputError(f"{s.numel()} scale factors for {images.shape[0]} images: give one per object")
    if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
        bad = torch.nonzero(~torch.isfinite(s) | (s <= 0)).flatten()[:5].tolist()
        raise InputError(f"dilation factors must be finite and > 0; objects {bad} have "
                         f"{[float(s[i]) for i in bad]}: check the size column (a radius of 0 or NaN?)")
    m = dilation_matrix(s, images.shape[-1]).to(images.dtype).unsqueeze(1)  # (N, 1, n, n)
    return m @ images @ m.transpose(-1, -2)
