"""Summary statistics of cosmological density fields: power spectra, coherence, histograms, peaks.

Units and conventions, stated once for the module:

- fields are real tensors whose last ``d`` axes (d = 2 or 3) are periodic space; leading axes are a
  batch (e.g. (S, H, W) projected slices); ``box_size`` is the side in Mpc/h (one number for a
  cube or square, or one per spatial axis; with one number the field's dimensionality is its
  ``ndim``, with a tuple it is the tuple's length);
- wavenumbers ``k`` in h/Mpc; power spectra in (Mpc/h)^3 for 3-D fields and (Mpc/h)^2 for 2-D
  slices, for the field as given (pass the density contrast delta, or 1 + delta: only k = 0
  differs, and it is never binned);
- ``P(k) = <|delta_k|^2> V / N^2`` for the unnormalised DFT, averaged over the modes in each bin,
  the bin's k the mean |k| of its modes.

These are the statistics cosmologists compare simulations and emulators with (Rodriguez et al.
2018, https://arxiv.org/abs/1801.09070); :mod:`deepfield.metrics.stats` compares samples of them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from deepfield.errors import InputError

__all__ = [
    "PowerSpectrum",
    "power_spectrum",
    "cross_power_spectrum",
    "transfer_function",
    "coherence",
    "project_slices",
    "density_histogram",
    "peak_counts",
    "local_maxima",
]


class PowerSpectrum(NamedTuple):
    """Binned power: ``k`` (B,) mean |k| per bin (h/Mpc), ``power`` (..., B), ``n_modes`` (B,)
    Fourier modes per bin on the full grid (k and -k both counted, so a Gaussian field's P has a
    relative standard error sqrt(2 / n_modes)), ``edges`` (B + 1,)."""

    k: torch.Tensor
    power: torch.Tensor
    n_modes: torch.Tensor
    edges: torch.Tensor


def _geometry(field: torch.Tensor, box_size, name: str = "field") -> tuple[int, tuple[float, ...]]:
    if not isinstance(field, torch.Tensor) or not field.dtype.is_floating_point:
        raise InputError(f"{name} must be a real floating-point tensor, got "
                         f"{getattr(field, 'dtype', type(field).__name__)}")
    if isinstance(box_size, (int, float)):
        dims = field.ndim
        if dims not in (2, 3):
            raise InputError(f"{name} has shape {tuple(field.shape)}: with one box_size the field must be 2-D or "
                             "3-D; for a batch of fields pass box_size as a tuple, e.g. (L, L) for (S, H, W) slices")
        box = (float(box_size),) * dims
    else:
        box = tuple(float(b) for b in box_size)
        dims = len(box)
        if dims not in (2, 3) or field.ndim < dims:
            raise InputError(f"box_size={box_size!r} for a field of shape {tuple(field.shape)}: give 2 or 3 sides, "
                             "one per spatial axis (the last axes)")
    if not all(math.isfinite(b) and b > 0 for b in box):
        raise InputError(f"box_size={box_size!r} must be positive lengths in Mpc/h")
    return dims, box


def _mode_grid(shape, box, device):
    """|k| (h/Mpc) on the rfftn grid and the weight of each stored mode (1 or 2 for its mirror)."""
    axes = []
    for i, (n, side) in enumerate(zip(shape, box)):
        freq = torch.fft.rfftfreq(n, device=device, dtype=torch.float64) if i == len(shape) - 1 else \
            torch.fft.fftfreq(n, device=device, dtype=torch.float64)
        view = [1] * len(shape)
        view[i] = -1
        axes.append((2 * math.pi * freq * n / side).reshape(view))
    k = torch.sqrt(sum(a ** 2 for a in axes))
    n_last = shape[-1]
    weight_last = torch.full((n_last // 2 + 1,), 2.0, dtype=torch.float64, device=device)
    weight_last[0] = 1.0
    if n_last % 2 == 0:
        weight_last[-1] = 1.0
    return k, weight_last.expand(k.shape)


def _default_edges(shape, box) -> torch.Tensor:
    """Bins one fundamental frequency wide, centred on multiples of it, up to the smallest Nyquist."""
    k_f = 2 * math.pi / max(box)
    k_nyq = min(math.pi * n / side for n, side in zip(shape, box))
    n_bins = max(1, int(k_nyq / k_f - 0.5))
    return k_f * (torch.arange(n_bins + 1, dtype=torch.float64) + 0.5)


def _binned(power_modes: torch.Tensor, shape, box, kedges, device) -> PowerSpectrum:
    k, weight = _mode_grid(shape, box, device)
    if kedges is None:
        edges = _default_edges(shape, box).to(device)
    elif isinstance(kedges, int) and not isinstance(kedges, bool):
        if kedges < 1:
            raise InputError(f"kedges={kedges}: pass a positive number of bins or increasing bin edges in h/Mpc")
        k_f = 2 * math.pi / max(box)
        k_nyq = min(math.pi * n / side for n, side in zip(shape, box))
        edges = torch.linspace(k_f / 2, k_nyq, kedges + 1, dtype=torch.float64, device=device)
    else:
        edges = torch.as_tensor(kedges, dtype=torch.float64, device=device).reshape(-1)
        if len(edges) < 2 or not bool((edges[1:] > edges[:-1]).all()):
            raise InputError(f"kedges={edges.tolist()}: pass at least two strictly increasing bin edges in h/Mpc")
    n_bins = len(edges) - 1
    index = torch.bucketize(k.reshape(-1), edges, right=True) - 1  # bin i holds edges[i] <= k < edges[i+1]
    inside = (index >= 0) & (index < n_bins) & (k.reshape(-1) > 0)
    index = torch.where(inside, index, torch.full_like(index, n_bins))  # overflow bin, dropped below
    w = torch.where(inside, weight.reshape(-1), torch.zeros_like(weight.reshape(-1)))
    n_modes = torch.zeros(n_bins + 1, dtype=torch.float64, device=device).index_add(0, index, w)[:n_bins]
    k_sum = torch.zeros(n_bins + 1, dtype=torch.float64, device=device).index_add(0, index, w * k.reshape(-1))
    batch = power_modes.shape[:-len(shape)]
    flat = power_modes.reshape(-1, index.numel())
    p_sum = torch.zeros(flat.shape[0], n_bins + 1, dtype=flat.dtype, device=device).index_add(
        1, index, flat * w.to(flat.dtype))[:, :n_bins]
    safe = n_modes.clamp_min(1)
    power = torch.where(n_modes > 0, p_sum / safe.to(flat.dtype), torch.full_like(p_sum, float("nan")))
    k_mean = torch.where(n_modes > 0, k_sum[:n_bins] / safe, (edges[1:] + edges[:-1]) / 2)
    return PowerSpectrum(k_mean, power.reshape(*batch, n_bins), n_modes, edges)


def _spectrum(field_a: torch.Tensor, field_b: torch.Tensor | None, box_size, kedges) -> PowerSpectrum:
    dims, box = _geometry(field_a, box_size, "field")
    if field_b is not None:
        _geometry(field_b, box_size, "other")
        if field_b.shape != field_a.shape:
            raise InputError(f"cross power of fields of shapes {tuple(field_a.shape)} and {tuple(field_b.shape)}: "
                             "pass fields of one shape")
    shape = tuple(field_a.shape[-dims:])
    spatial = tuple(range(-dims, 0))
    volume = math.prod(box)
    norm = volume / math.prod(shape) ** 2
    a_k = torch.fft.rfftn(field_a, dim=spatial)
    if field_b is None:
        modes = (a_k.real ** 2 + a_k.imag ** 2) * norm
    else:
        b_k = torch.fft.rfftn(field_b, dim=spatial)
        modes = (a_k * b_k.conj()).real * norm
    return _binned(modes, shape, box, kedges, field_a.device)


def power_spectrum(field: torch.Tensor, box_size, kedges=None) -> PowerSpectrum:
    """Isotropic power spectrum of a periodic 2-D or 3-D field (or a batch of them).

    Arguments:
        field: (..., n0, n1, n2) or (..., n0, n1), see the module docstring.
        box_size: side(s) in Mpc/h.
        kedges: None (bins one fundamental frequency 2 pi / L wide, centred on its multiples, up
            to the Nyquist frequency), an int (that many linear bins from half the fundamental to
            Nyquist), or increasing edges in h/Mpc.

    Returns:
        A :class:`PowerSpectrum`; bins without modes hold NaN power. Differentiable.
    """
    return _spectrum(field, None, box_size, kedges)


def cross_power_spectrum(field_a: torch.Tensor, field_b: torch.Tensor, box_size, kedges=None) -> PowerSpectrum:
    """Cross power ``Re <a_k b_k*> V / N^2`` of two fields of one shape, binned as :func:`power_spectrum`."""
    return _spectrum(field_a, field_b, box_size, kedges)


def transfer_function(field: torch.Tensor, reference: torch.Tensor, box_size, kedges=None) -> PowerSpectrum:
    """``sqrt(P_field / P_reference)`` per k bin (1 where the field has the reference's power).

    Returns a :class:`PowerSpectrum` whose ``power`` holds the dimensionless transfer function.
    """
    a = power_spectrum(field, box_size, kedges)
    b = power_spectrum(reference, box_size, kedges)
    return a._replace(power=torch.sqrt(a.power / b.power))


def coherence(field: torch.Tensor, reference: torch.Tensor, box_size, kedges=None) -> PowerSpectrum:
    """Cross-correlation coefficient ``r(k) = P_ab / sqrt(P_a P_b)`` per k bin (1: the same phases).

    Returns a :class:`PowerSpectrum` whose ``power`` holds r(k), in [-1, 1].
    """
    cross = cross_power_spectrum(field, reference, box_size, kedges)
    a = power_spectrum(field, box_size, kedges)
    b = power_spectrum(reference, box_size, kedges)
    return cross._replace(power=cross.power / torch.sqrt(a.power * b.power))


def project_slices(density: torch.Tensor, thickness: int, axis: int = 0) -> torch.Tensor:
    """Project a 3-D field onto slabs `thickness` cells thick along `axis` (mean over each slab).

    Arguments:
        density: (n0, n1, n2) field (e.g. 1 + delta).
        thickness: cells per slab; must divide the mesh along `axis`.
        axis: the line-of-sight axis (0, 1 or 2).

    Returns:
        (n_axis // thickness, H, W) slices, the other two axes in their order; the mean of
        ``1 + delta`` stays 1.
    """
    if density.ndim != 3:
        raise InputError(f"density has shape {tuple(density.shape)}: pass a 3-D field")
    if axis not in (0, 1, 2):
        raise InputError(f"axis={axis}: pass 0, 1 or 2")
    n = density.shape[axis]
    if isinstance(thickness, bool) or not isinstance(thickness, int) or thickness < 1 or n % thickness:
        raise InputError(f"thickness={thickness!r} cells must be a positive divisor of the mesh's {n} cells "
                         f"along axis {axis}")
    moved = density.movedim(axis, 0)
    return moved.reshape(n // thickness, thickness, *moved.shape[1:]).mean(1)


def _check_edges(edges) -> torch.Tensor:
    edges = torch.as_tensor(edges, dtype=torch.float64).reshape(-1).cpu()
    if len(edges) < 2 or not bool((edges[1:] > edges[:-1]).all()):
        raise InputError("edges must be at least two strictly increasing values")
    return edges


def density_histogram(fields: torch.Tensor, edges, *, log: bool = True,
                      spatial_dims: int | None = None) -> torch.Tensor:
    """Probability density of the field's values in bins (the one-point PDF of the density).

    Arguments:
        fields: any shape; e.g. (S, H, W) slices of 1 + delta.
        edges: (B + 1,) increasing bin edges (of log10 of the values when `log`).
        log: histogram log10(value); values <= 0 are left out (an empty cell has no log).
        spatial_dims: None pools every value into one histogram; 2 or 3 gives one histogram per
            field of a batch (..., H, W) or (..., n0, n1, n2), for errors over fields.

    Returns:
        (B,) float64 density, or (..., B) with `spatial_dims`: counts / (count * bin width),
        so it integrates to the fraction of values inside the edges.
    """
    edges = _check_edges(edges)
    if spatial_dims is not None:
        if spatial_dims not in (2, 3) or fields.ndim < spatial_dims:
            raise InputError(f"spatial_dims={spatial_dims} for fields of shape {tuple(fields.shape)}: pass 2 or 3, "
                             "no more than the field's dimensions")
        batch = fields.shape[:fields.ndim - spatial_dims]
        flat = fields.detach().reshape(-1, math.prod(fields.shape[-spatial_dims:]))
        rows = [density_histogram(f, edges, log=log) for f in flat]
        out = torch.stack(rows) if rows else torch.zeros(0, len(edges) - 1, dtype=torch.float64)
        return out.reshape(*batch, len(edges) - 1)
    x = fields.detach().reshape(-1).to(torch.float64)
    total = x.numel()
    if log:
        x = torch.log10(x[x > 0])
    counts = torch.histogram(x.cpu(), bins=edges).hist
    return counts / (max(total, 1) * (edges[1:] - edges[:-1]))


def local_maxima(fields: torch.Tensor, *, spatial_dims: int = 2) -> torch.Tensor:
    """Where a field has a local maximum: a pixel (voxel) strictly higher than its 8 (26)
    neighbours, periodic boundaries.

    Arguments:
        fields: (..., H, W) for spatial_dims=2, (..., n0, n1, n2) for 3.

    Returns:
        A bool tensor of the fields' shape, True at the peaks.
    """
    if spatial_dims not in (2, 3) or fields.ndim < spatial_dims:
        raise InputError(f"spatial_dims={spatial_dims} for fields of shape {tuple(fields.shape)}: pass 2 or 3, "
                         "no more than the field's dimensions")
    x = fields.detach()
    dims = tuple(range(-spatial_dims, 0))
    is_peak = torch.ones_like(x, dtype=torch.bool)
    for offset in torch.cartesian_prod(*[torch.tensor([-1, 0, 1])] * spatial_dims):
        if not bool(offset.any()):
            continue
        is_peak &= x > torch.roll(x, shifts=tuple(int(o) for o in offset), dims=dims)
    return is_peak


def peak_counts(fields: torch.Tensor, edges, *, spatial_dims: int = 2, per_field: bool = False) -> torch.Tensor:
    """Histogram of the heights of local maxima (peaks), periodic boundaries.

    A peak is a pixel (voxel) strictly higher than its 8 (26) neighbours, the peak statistic of
    Rodriguez et al. (2018); counting peaks above a threshold is the cumulative sum of this
    histogram from the top.

    Arguments:
        fields: (..., H, W) for spatial_dims=2, (..., n0, n1, n2) for 3; a leading batch is
            averaged (or kept, with `per_field`).
        edges: (B + 1,) increasing bin edges in the field's units (e.g. of delta).
        spatial_dims: 2 or 3.
        per_field: return the counts of each field of the batch.

    Returns:
        (B,) float64 mean number of peaks per field in each bin, or (..., B) counts per field.
    """
    x = fields.detach()
    is_peak = local_maxima(x, spatial_dims=spatial_dims)
    edges = _check_edges(edges)
    if per_field:
        batch = x.shape[:x.ndim - spatial_dims]
        n_bins = len(edges) - 1
        heights = x.reshape(-1, math.prod(x.shape[-spatial_dims:])).to(torch.float64).cpu()
        peaks = is_peak.reshape(heights.shape).cpu()
        # bin i holds edges[i] <= h < edges[i+1], the last bin closed, as torch.histogram
        index = torch.bucketize(heights, edges, right=True) - 1
        index = torch.where(heights == edges[-1], torch.full_like(index, n_bins - 1), index)
        keep = peaks & (index >= 0) & (index < n_bins)
        counts = torch.zeros(heights.shape[0], n_bins + 1, dtype=torch.float64)
        counts.scatter_add_(1, torch.where(keep, index, torch.full_like(index, n_bins)), keep.to(torch.float64))
        return counts[:, :n_bins].reshape(*batch, n_bins)
    heights = x[is_peak].to(torch.float64).cpu()
    n_fields = max(1, math.prod(x.shape[:-spatial_dims]))
    return torch.histogram(heights, bins=edges).hist / n_fields
