"""The particle-mesh simulation of :mod:`deepfield.physics.pm` split across processes by slabs.

Every process of a ``torch.distributed`` group (gloo on CPU, NCCL on GPU) owns a slab of the mesh
along axis 0, ``rows = n0 / world_size`` planes starting at ``rank * rows``, and the particles whose
(periodically wrapped) position falls in it. Units and conventions are those of
:mod:`deepfield.physics.pm` (positions in cells of the global particle grid, box in Mpc/h).

- 3-D FFTs are distributed: a real-to-complex FFT over axes 1 and 2 on the slab, an all-to-all
  transpose so that each process holds all of axis 0 for a block of axis 1, then the FFT over axis
  0 (and back for the inverse). Fourier arrays are thus ``(n0, n1 / world_size, n2 // 2 + 1)``,
  "transposed" slabs. (torch's DTensor fftn would gather the whole mesh on every process.)
- CIC painting writes one plane past the slab (a halo) and sends it to the next process; reading
  receives the next process's first plane.
- After each drift, particles that left the slab are sent to their new owner (all-to-all with
  uneven splits).

Every communication is an autograd function whose backward is the transposed communication, so
gradients flow across processes. The mesh's axes 0 and 1 must be divisible by the world size.

Example (each of ``world_size`` processes, after ``torch.distributed.init_process_group``)::

    field = linear_field(64, 256.0, pk, seed=0)          # or build only your slab
    rows = 64 // dist.get_world_size()
    slab = field[dist.get_rank() * rows:(dist.get_rank() + 1) * rows]
    sim = simulate_distributed(Planck18, 64, slab, n_steps=10)
    # sim.density: this process's (rows, 64, 64) slab of 1 + delta
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist

from deepfield.errors import InputError
from deepfield.physics.cosmology import Cosmology, growth_table
from deepfield.physics.pm import (GRADIENTS, cic_stencil, gradient_kernels, inverse_laplacian,
                                  checked_mesh_shape, paint_stencil, read_stencil, kdk_coefficients)

__all__ = ["SlabLayout", "slab_rfftn", "slab_irfftn", "simulate_distributed", "DistributedSimulation"]


class SlabLayout(NamedTuple):
    """This process's share: ``rank``, ``world`` (processes), ``shape`` the global mesh,
    ``rows`` planes per slab along axis 0, ``start`` the first global plane, ``group``."""

    rank: int
    world: int
    shape: tuple[int, int, int]
    rows: int
    start: int
    group: object

    @staticmethod
    def of(mesh_shape, group=None) -> "SlabLayout":
        shape = checked_mesh_shape(mesh_shape)
        if not dist.is_available() or not dist.is_initialized():
            raise InputError("torch.distributed is not initialised: call torch.distributed.init_process_group "
                             "(backend 'gloo' on CPU, 'nccl' on GPU) in every process first")
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        if shape[0] % world or shape[1] % world:
            raise InputError(f"mesh {shape} cannot be split into {world} slabs: axes 0 and 1 ({shape[0]}, "
                             f"{shape[1]} cells) must be divisible by the process count; pick a mesh that is a "
                             f"multiple of {world} or run on a divisor of {math.gcd(shape[0], shape[1])} processes")
        rows = shape[0] // world
        return SlabLayout(rank, world, shape, rows, rank * rows, group)

    def scaled(self, factor: int) -> "SlabLayout":
        shape = tuple(factor * n for n in self.shape)
        return SlabLayout(self.rank, self.world, shape, self.rows * factor, self.start * factor, self.group)


# ----------------------------------------------------------------------------- communication

class _AllToAll(torch.autograd.Function):
    """all_to_all_single along dim 0 with given splits; backward sends the gradients back."""

    @staticmethod
    def forward(ctx, x, send_splits, recv_splits, group):
        ctx.splits, ctx.group = (send_splits, recv_splits), group
        real = torch.view_as_real(x) if x.is_complex() else x
        out = real.new_empty((sum(recv_splits), *real.shape[1:]))
        dist.all_to_all_single(out, real.contiguous(), output_split_sizes=list(recv_splits),
                               input_split_sizes=list(send_splits), group=group)
        return torch.view_as_complex(out) if x.is_complex() else out

    @staticmethod
    def backward(ctx, grad):
        send, recv = ctx.splits
        return _AllToAll.apply(grad.contiguous(), recv, send, ctx.group), None, None, None


class _Shift(torch.autograd.Function):
    """Send `x` to rank + step and receive the same-shaped tensor from rank - step (periodic)."""

    @staticmethod
    def forward(ctx, x, step, layout):
        ctx.step, ctx.layout = step, layout
        if layout.world == 1:
            return x.clone()
        x = x.contiguous()
        out = torch.empty_like(x)
        dst = (layout.rank + step) % layout.world
        src = (layout.rank - step) % layout.world
        ops = [dist.P2POp(dist.isend, x, dst, layout.group), dist.P2POp(dist.irecv, out, src, layout.group)]
        for request in dist.batch_isend_irecv(ops):
            request.wait()
        return out

    @staticmethod
    def backward(ctx, grad):
        return _Shift.apply(grad, -ctx.step, ctx.layout), None, None


def _equal_all_to_all(x: torch.Tensor, layout: SlabLayout) -> torch.Tensor:
    splits = [x.shape[0] // layout.world] * layout.world
    return _AllToAll.apply(x, splits, splits, layout.group)


def slab_rfftn(slab: torch.Tensor, layout: SlabLayout) -> torch.Tensor:
    """Distributed ``rfftn`` of (rows, n1, n2) real slabs -> (n0, n1 / world, n2 // 2 + 1) complex.

    This process gets every k0, the block ``rank * n1 / world ...`` of k1, and every k2.
    """
    n0, n1, _ = layout.shape
    y = torch.fft.rfftn(slab, dim=(1, 2))  # (rows, n1, n2c)
    block = n1 // layout.world
    send = y.reshape(layout.rows, layout.world, block, -1).transpose(0, 1).reshape(layout.world * layout.rows,
                                                                                   block, -1)
    z = _equal_all_to_all(send, layout)  # rank-major rows: the global axis 0 in order
    return torch.fft.fft(z, dim=0)


def slab_irfftn(modes: torch.Tensor, layout: SlabLayout) -> torch.Tensor:
    """Inverse of :func:`slab_rfftn`: (n0, n1 / world, n2c) complex -> (rows, n1, n2) real slab."""
    n0, n1, n2 = layout.shape
    block = n1 // layout.world
    z = torch.fft.ifft(modes, dim=0)
    back = _equal_all_to_all(z.contiguous(), layout)  # (world * rows, block, n2c): source-rank-major
    y = back.reshape(layout.world, layout.rows, block, -1).transpose(0, 1).reshape(layout.rows, n1, -1)
    return torch.fft.irfftn(y, s=(n1, n2), dim=(1, 2))


def _local_wavenumbers(layout: SlabLayout) -> list[torch.Tensor]:
    """Radians per cell on this process's block of the transposed Fourier layout."""
    n0, n1, n2 = layout.shape
    block = n1 // layout.world
    k0 = 2 * math.pi * torch.fft.fftfreq(n0, dtype=torch.float64)
    k1 = 2 * math.pi * torch.fft.fftfreq(n1, dtype=torch.float64)[layout.rank * block:(layout.rank + 1) * block]
    k2 = 2 * math.pi * torch.fft.rfftfreq(n2, dtype=torch.float64)
    return [k0[:, None, None], k1[None, :, None], k2[None, None, :]]


# ----------------------------------------------------------------------------- particles and halos

def _wrapped_plane(x0: torch.Tensor, n0: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Axis-0 coordinate wrapped into [0, n0) (exactly: an integer is subtracted) and its cell."""
    w = x0 - n0 * torch.floor(x0.detach() / n0)
    w = torch.where(w < 0, w + n0, w)
    w = torch.where(w >= n0, w - n0, w)
    cell = torch.floor(w.detach()).to(torch.long).clamp(0, n0 - 1)
    return w, cell


def _exchange(particles: torch.Tensor, layout: SlabLayout) -> torch.Tensor:
    """Send each row of (M, C) particles (column 0 the axis-0 position) to the process owning it."""
    _, cell = _wrapped_plane(particles[:, 0].detach(), layout.shape[0])
    owner = cell // layout.rows
    order = torch.argsort(owner, stable=True)
    send_counts = torch.bincount(owner, minlength=layout.world)
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts, group=layout.group)
    return _AllToAll.apply(particles[order], send_counts.tolist(), recv_counts.tolist(), layout.group)


def _local_positions(positions: torch.Tensor, layout: SlabLayout) -> torch.Tensor:
    """Positions with axis 0 relative to this slab's first plane, in [0, rows)."""
    w, _ = _wrapped_plane(positions[:, 0], layout.shape[0])
    return torch.cat([(w - layout.start)[:, None], positions[:, 1:]], 1)


def _paint_slab(local: torch.Tensor, layout: SlabLayout, weight: float) -> torch.Tensor:
    """CIC-paint particles (local coordinates) onto this slab, the halo plane sent to the next slab."""
    shape = (layout.rows + 1, layout.shape[1], layout.shape[2])
    flat, w = cic_stencil(local, shape)
    mesh = paint_stencil(torch.zeros(shape, dtype=local.dtype, device=local.device), flat,
                          [wc * weight for wc in w])
    incoming = _Shift.apply(mesh[layout.rows], 1, layout)  # my halo is the next slab's first plane
    return torch.cat([(mesh[0] + incoming)[None], mesh[1:layout.rows]], 0)


def _read_slab(meshes: list[torch.Tensor], local: torch.Tensor, layout: SlabLayout) -> torch.Tensor:
    """Read (rows, n1, n2) slabs at particles, the next slab's first plane received as a halo."""
    extended = [torch.cat([m, _Shift.apply(m[:1], -1, layout)], 0) for m in meshes]
    flat, w = cic_stencil(local, extended[0].shape)
    return read_stencil(extended, flat, w)


def _forces_from_modes(modes: torch.Tensor, local: torch.Tensor, layout: SlabLayout, gradient: str) -> torch.Tensor:
    kvec = _local_wavenumbers(layout)
    real = modes.real.dtype
    potential = modes * inverse_laplacian(kvec).to(real)
    components = [slab_irfftn(-1j * g.to(real) * potential, layout) for g in gradient_kernels(kvec, gradient)]
    return _read_slab(components, local, layout)


def _particle_forces(positions: torch.Tensor, layout: SlabLayout, force_resolution: int,
                     gradient: str) -> torch.Tensor:
    fine = layout.scaled(force_resolution)
    local = _local_positions(positions * force_resolution if force_resolution != 1 else positions, fine)
    n_total = torch.tensor([positions.shape[0]], dtype=torch.long)
    dist.all_reduce(n_total, group=layout.group)
    mass = math.prod(fine.shape) / int(n_total)
    delta = _paint_slab(local, fine, mass) - 1
    return _forces_from_modes(slab_rfftn(delta, fine), local, fine, gradient) / force_resolution


# ----------------------------------------------------------------------------- LPT and stepping

def _lpt_slab(cosmo: Cosmology, field: torch.Tensor, a: float, order: int, layout: SlabLayout,
              gradient: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n0, n1, n2 = layout.shape
    axes = [torch.arange(layout.start, layout.start + layout.rows, dtype=field.dtype),
            torch.arange(n1, dtype=field.dtype), torch.arange(n2, dtype=field.dtype)]
    q = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    local = _local_positions(q, layout)
    table = growth_table(cosmo)(torch.tensor(a, dtype=torch.float64))
    modes = slab_rfftn(field, layout)
    psi1 = _forces_from_modes(modes, local, layout, gradient)
    dx = table["D1"].to(field.dtype) * psi1
    p = table["F1"].to(field.dtype) * psi1
    if order == 2:
        kvec = _local_wavenumbers(layout)
        real = modes.real.dtype
        phi = modes * inverse_laplacian(kvec).to(real)
        grads = [g.to(real) for g in gradient_kernels(kvec, gradient)]

        def hessian(i, j):
            return slab_irfftn(-(grads[i] * grads[j]) * phi, layout)

        diag = [hessian(i, i) for i in range(3)]
        delta2 = diag[0] * diag[1] + diag[0] * diag[2] + diag[1] * diag[2]
        for i, j in ((0, 1), (0, 2), (1, 2)):
            delta2 = delta2 - hessian(i, j) ** 2
        psi2 = -_forces_from_modes(slab_rfftn(delta2, layout), local, layout, gradient)
        dx = dx + table["D2"].to(field.dtype) * psi2
        p = p + table["F2"].to(field.dtype) * psi2
    return q, dx, p


class DistributedSimulation(NamedTuple):
    """This process's share: ``positions``, ``momenta`` (M, 3) of the particles it owns at the
    end (global cell coordinates, unwrapped), ``density`` its (rows, n1, n2) slab of 1 + delta."""

    positions: torch.Tensor
    momenta: torch.Tensor
    density: torch.Tensor


def simulate_distributed(cosmo: Cosmology, mesh_shape, initial_slab: torch.Tensor, *, a_start: float = 0.1,
                         a_end: float = 1.0, n_steps: int = 10, lpt_order: int = 2, force_resolution: int = 1,
                         gradient: str = "fd4", group=None) -> DistributedSimulation:
    """:func:`deepfield.physics.pm.simulate` on slabs: call it in every process of the group.

    Arguments:
        cosmo: the cosmology.
        mesh_shape: the global particle grid (axes 0 and 1 divisible by the process count).
        initial_slab: (n0 / world, n1, n2) this process's planes of the linear field today.
        a_start, a_end, n_steps, lpt_order, force_resolution, gradient: as in ``simulate``.
        group: the process group (default: the world).

    Returns:
        A :class:`DistributedSimulation`; differentiable with respect to `initial_slab` and the
        cosmology, gradients crossing processes.
    """
    layout = SlabLayout.of(mesh_shape, group)
    expected = (layout.rows, *layout.shape[1:])
    if tuple(initial_slab.shape) != expected:
        raise InputError(f"initial_slab has shape {tuple(initial_slab.shape)}; process {layout.rank} of "
                         f"{layout.world} owns planes {layout.start}..{layout.start + layout.rows - 1}: pass "
                         f"shape {expected}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise InputError(f"n_steps={n_steps!r}: pass a positive integer number of KDK steps (e.g. 10)")
    if isinstance(force_resolution, bool) or not isinstance(force_resolution, int) or force_resolution < 1:
        raise InputError(f"force_resolution={force_resolution!r}: pass an integer B >= 1")
    if gradient not in GRADIENTS:
        raise InputError(f"gradient={gradient!r}: choose one of {GRADIENTS}")
    q, dx, p = _lpt_slab(cosmo, initial_slab, a_start, lpt_order, layout, gradient)
    a_steps = torch.linspace(a_start, a_end, n_steps + 1, dtype=torch.float64)
    coeff = {k: v.to(initial_slab.dtype) for k, v in kdk_coefficients(cosmo, a_steps).items()}
    state = _exchange(torch.cat([q + dx, p], 1), layout)
    x, p = state[:, :3], state[:, 3:]
    f = _particle_forces(x, layout, force_resolution, gradient)
    for i in range(n_steps):
        p = p + f * coeff["kick1"][i]
        x = x + p * coeff["drift"][i]
        state = _exchange(torch.cat([x, p], 1), layout)
        x, p = state[:, :3], state[:, 3:]
        f = _particle_forces(x, layout, force_resolution, gradient)
        p = p + f * coeff["kick2"][i]
    # one particle per cell of the particle grid: unit mass gives 1 + delta
    density = _paint_slab(_local_positions(x, layout), layout, 1.0)
    return DistributedSimulation(x, p, density)
