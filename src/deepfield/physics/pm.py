"""Particle-mesh N-body in torch: Gaussian initial fields, LPT, CIC painting and FastPM stepping.

Units and conventions, stated once for the module:

- particle **positions are in cells of the particle grid** ``mesh_shape`` (one particle per cell
  at the start, Lagrangian position = the cell's corner index); periodic with period
  ``mesh_shape``; displacements and momenta are in the same cells;
- **box sizes in Mpc/h**, wavenumbers in h/Mpc, **P(k) in (Mpc/h)^3**; only :func:`linear_field`
  needs the box (the dynamics, in cells, do not);
- fields are 3-D tensors ``(n0, n1, n2)``; ``linear_field`` returns the linear density contrast
  today (a=1), the density a simulation returns is ``1 + delta`` (mass per cell over the mean);
- momenta are FastPM's ``p = a^3 E(a) dx/da`` (cells, in units where H0 = 1), so that in linear
  theory ``x = q + D1 Psi`` gives ``p = a^3 E dD1/da Psi``; the force ``F = -grad nabla^-2 delta``
  (cells) obeys ``dp/da = 3/2 Omega_m F / (a^2 E)``;
- scale factors ``a`` between 1e-4 and 1.

Everything is pure torch and differentiable end to end (CIC weights carry the gradient with
respect to positions; the growth factors carry it with respect to the cosmology);
``checkpoint=True`` recomputes each step in the backward pass instead of storing it.

References:
    Feng, Chu, Seljak & McDonald 2016, "FastPM: a new scheme for fast simulations of dark matter
    and haloes", MNRAS 463, 2273, https://arxiv.org/abs/1603.00476 ;
    Scoccimarro 1998, MNRAS 299, 1097 (2LPT), https://arxiv.org/abs/astro-ph/9711187 ;
    Modi, Lanusse & Seljak 2021, "FlowPM", https://arxiv.org/abs/2010.11847 .

Example:
    >>> from deepfield.physics.cosmology import Planck18
    >>> sim = simulate(Planck18, (16, 16, 16), 64.0, seed=0, n_steps=3)
    >>> tuple(sim.density.shape), round(float(sim.density.mean()), 4)
    ((16, 16, 16), 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from deepfield.errors import InputError
from deepfield.physics.cosmology import Cosmology, growth_table

__all__ = [
    "linear_field",
    "grid_positions",
    "cic_paint",
    "cic_read",
    "cic_compensate",
    "fourier_wavenumbers",
    "pm_forces",
    "lpt",
    "kdk_coefficients",
    "nbody",
    "paint_density",
    "simulate",
    "Simulation",
]

GRADIENTS = ("fd4", "exact")


# ----------------------------------------------------------------------------- checks

def checked_mesh_shape(mesh_shape, name: str = "mesh_shape") -> tuple[int, int, int]:
    if isinstance(mesh_shape, int):
        mesh_shape = (mesh_shape,) * 3
    shape = tuple(mesh_shape)
    if len(shape) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
        raise InputError(f"{name}={mesh_shape!r}: pass three integers (cells per side), e.g. (64, 64, 64)")
    if min(shape) < 2:
        raise InputError(f"{name}={shape} has a side below 2 cells; pass at least 2 cells per side")
    return shape


def _box_size(box_size) -> tuple[float, float, float]:
    box = (float(box_size),) * 3 if isinstance(box_size, (int, float)) else tuple(float(b) for b in box_size)
    if len(box) != 3 or not all(math.isfinite(b) and b > 0 for b in box):
        raise InputError(f"box_size={box_size!r} must be a positive length in Mpc/h (or three of them), e.g. 256.0")
    return box


def _generator(seed) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed={seed!r}: pass an integer or a torch.Generator")
    return torch.Generator().manual_seed(seed)


def _check_positions(positions: torch.Tensor) -> None:
    if not isinstance(positions, torch.Tensor) or positions.ndim != 2 or positions.shape[1] != 3:
        shape = tuple(positions.shape) if isinstance(positions, torch.Tensor) else type(positions).__name__
        raise InputError(f"positions has shape {shape}: pass an (N, 3) tensor in grid cells")
    if not positions.dtype.is_floating_point:
        raise InputError(f"positions has dtype {positions.dtype}: pass floating-point cell coordinates")


# ----------------------------------------------------------------------------- Fourier grids

def fourier_wavenumbers(mesh_shape, *, dtype=torch.float64, device=None) -> list[torch.Tensor]:
    """Wavenumbers of ``torch.fft.rfftn`` over a 3-D mesh, in radians per cell.

    Returns three tensors broadcastable to the half-complex shape ``(n0, n1, n2 // 2 + 1)``.
    Multiply by ``n / L`` to get h/Mpc for a box of side L Mpc/h.
    """
    n0, n1, n2 = mesh_shape
    k0 = 2 * math.pi * torch.fft.fftfreq(n0, dtype=dtype, device=device)
    k1 = 2 * math.pi * torch.fft.fftfreq(n1, dtype=dtype, device=device)
    k2 = 2 * math.pi * torch.fft.rfftfreq(n2, dtype=dtype, device=device)
    return [k0[:, None, None], k1[None, :, None], k2[None, None, :]]


def gradient_kernels(kvec: list[torch.Tensor], gradient: str) -> list[torch.Tensor]:
    """i times the Fourier symbol of d/dx per axis (radians per cell)."""
    if gradient not in GRADIENTS:
        raise InputError(f"gradient={gradient!r}: choose one of {GRADIENTS}")
    out = []
    for k in kvec:
        if gradient == "fd4":
            # FastPM's 4-point finite difference: smoother force than ik near the Nyquist frequency
            sym = (8 * torch.sin(k) - torch.sin(2 * k)) / 6
        else:
            # the Nyquist mode's derivative has no real counterpart: drop it
            sym = torch.where((k.abs() - math.pi).abs() < 1e-9, torch.zeros_like(k), k)
        out.append(sym)
    return out


def inverse_laplacian(kvec: list[torch.Tensor]) -> torch.Tensor:
    """-1/k^2 (radians per cell), 0 at k = 0 (the mean density exerts no force)."""
    k2 = sum(k ** 2 for k in kvec)
    safe = torch.where(k2 > 0, k2, torch.ones_like(k2))
    return torch.where(k2 > 0, -1 / safe, torch.zeros_like(k2))


def _cic_window(kvec: list[torch.Tensor]) -> torch.Tensor:
    """Fourier transform of the CIC assignment kernel, prod sinc^2(k_i / 2)."""
    w = torch.ones(())
    for k in kvec:
        half = k / 2
        safe = torch.where(half != 0, half, torch.ones_like(half))
        w = w * torch.where(half != 0, torch.sin(safe) / safe, torch.ones_like(half)) ** 2
    return w


# ----------------------------------------------------------------------------- initial conditions

def linear_field(mesh_shape, box_size, pk: Callable[[torch.Tensor], torch.Tensor], seed, *,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A Gaussian random field with power spectrum `pk` on a periodic mesh.

    Arguments:
        mesh_shape: cells per side, (n0, n1, n2) or one int.
        box_size: side(s) of the box in Mpc/h.
        pk: callable mapping k (h/Mpc, float64 tensor) to P(k) in (Mpc/h)^3, e.g.
            ``lambda k: linear_power(cosmo, k)``; it may carry gradients (cosmology).
        seed: int or torch.Generator; the white noise is drawn in float64 whatever `dtype`, so one
            seed gives the same field in float32 and float64.
        dtype: dtype of the returned field.

    Returns:
        (n0, n1, n2) density contrast with ``<|delta_k|^2> = P(k) V / N^2`` for the unnormalised
        DFT (V the box volume, N the number of cells), zero mean.
    """
    shape = checked_mesh_shape(mesh_shape)
    box = _box_size(box_size)
    noise = torch.randn(shape, generator=_generator(seed), dtype=torch.float64)
    kvec = fourier_wavenumbers(shape)
    k_phys = torch.sqrt(sum((k * n / L) ** 2 for k, n, L in zip(kvec, shape, box)))
    cell_volume = math.prod(L / n for L, n in zip(box, shape))
    power = pk(k_phys)
    if not isinstance(power, torch.Tensor):
        power = torch.as_tensor(power, dtype=torch.float64)
    if power.shape != k_phys.shape:
        power = power.expand(k_phys.shape)
    if bool((power.detach() < 0).any()) or not bool(torch.isfinite(power.detach()).all()):
        raise InputError("pk returned negative or non-finite power on the mesh's wavenumbers: pass a P(k) >= 0")
    # the k = 0 mode has no power; keep sqrt away from 0 there so its gradient stays finite
    safe = torch.where(k_phys > 0, power, torch.ones_like(power))
    amplitude = torch.where(k_phys > 0, torch.sqrt(safe / cell_volume), torch.zeros_like(power))
    field = torch.fft.irfftn(torch.fft.rfftn(noise) * amplitude, s=shape)
    return field.to(dtype)


def grid_positions(mesh_shape, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """(N, 3) Lagrangian positions, one particle at each cell corner, C order (axis 0 slowest)."""
    shape = checked_mesh_shape(mesh_shape)
    axes = [torch.arange(n, dtype=dtype, device=device) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


# ----------------------------------------------------------------------------- mass assignment

def cic_stencil(positions: torch.Tensor, shape: Sequence[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Flat mesh indices and CIC weights of each particle's eight cells: two lists of eight (N,).

    Kept as (N,) vectors, axis by axis, and never stacked: broadcast (N, 2, 2, 2) integer
    arithmetic and (N, 8) copies cost several times more on CPU, and this is the PM step's
    bottleneck. Wrapping is done in floating point (exact for cell indices below 2^24).
    """
    if math.prod(shape) >= 2 ** 31:
        raise InputError(f"mesh {tuple(shape)} has 2^31 cells or more: split it across processes "
                         "(deepfield.physics.pm_distributed)")
    xt = positions.t().contiguous()
    base = torch.floor(xt.detach())
    frac = xt - base  # carries the gradient with respect to the positions
    sizes = torch.tensor(shape, dtype=base.dtype, device=base.device)[:, None]
    # int32 indices: int64 arithmetic costs three times more, and index_select/index_add take both
    lower = (base - sizes * torch.floor(base / sizes)).to(torch.int32)
    upper = lower + 1
    upper = torch.where(upper == sizes.to(torch.int32), torch.zeros_like(upper), upper)
    strides = torch.tensor([shape[1] * shape[2], shape[2], 1], dtype=torch.int32, device=base.device)[:, None]
    lower, upper = lower * strides, upper * strides
    index = [(lower[a], upper[a]) for a in range(3)]
    weight = [(1 - frac[a], frac[a]) for a in range(3)]
    pair_index = [[index[0][i] + index[1][j] for j in (0, 1)] for i in (0, 1)]
    pair_weight = [[weight[0][i] * weight[1][j] for j in (0, 1)] for i in (0, 1)]
    corners = [(i, j, k) for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    return ([pair_index[i][j] + index[2][k] for i, j, k in corners],
            [pair_weight[i][j] * weight[2][k] for i, j, k in corners])


def paint_stencil(mesh: torch.Tensor, flat: list[torch.Tensor], w: list[torch.Tensor]) -> torch.Tensor:
    out = mesh.reshape(-1)
    for index, weight in zip(flat, w):
        out = out.index_add(0, index, weight.to(mesh.dtype))
    return out.reshape(mesh.shape)


def read_stencil(mesh: torch.Tensor | Sequence[torch.Tensor], flat: list[torch.Tensor],
                  w: list[torch.Tensor]) -> torch.Tensor:
    """(N,) values of a 3-D mesh, or (N, C) of a list of C meshes or an (n0, n1, n2, C) mesh."""
    if isinstance(mesh, torch.Tensor) and mesh.ndim == 3:
        # index_select on int32 is several times faster than advanced indexing here
        values = mesh.reshape(-1)
        out = values.index_select(0, flat[0]) * w[0].to(mesh.dtype)
        for index, weight in zip(flat[1:], w[1:]):
            out = out + values.index_select(0, index) * weight.to(mesh.dtype)
        return out
    components = mesh.unbind(-1) if isinstance(mesh, torch.Tensor) else mesh
    return torch.stack([read_stencil(c.contiguous(), flat, w) for c in components], -1)


def cic_paint(mesh: torch.Tensor, positions: torch.Tensor, weight: torch.Tensor | float | None = None, *,
              compensate: bool = False) -> torch.Tensor:
    """Add particles to a periodic mesh by cloud-in-cell assignment.

    Arguments:
        mesh: (n0, n1, n2) mesh to paint on (not modified; a new tensor is returned).
        positions: (N, 3) in cells of `mesh`, any real values (wrapped periodically).
        weight: mass of each particle, (N,) or a scalar; 1 if None.
        compensate: divide the painted field by the CIC window in Fourier space (undoes the
            smoothing of the assignment; for measuring P(k) close to the Nyquist frequency).

    Returns:
        (n0, n1, n2) mesh + painted mass; without compensation the total mass is conserved exactly.
    """
    if mesh.ndim != 3:
        raise InputError(f"mesh has shape {tuple(mesh.shape)}: pass a 3-D mesh (n0, n1, n2)")
    _check_positions(positions)
    flat, w = cic_stencil(positions, mesh.shape)
    if weight is not None:
        weight = torch.as_tensor(weight, dtype=w[0].dtype, device=w[0].device)
        w = [wc * weight for wc in w]
    painted = paint_stencil(mesh, flat, w)
    return cic_compensate(painted) if compensate else painted


def cic_read(mesh: torch.Tensor, positions: torch.Tensor, *, compensate: bool = False) -> torch.Tensor:
    """Interpolate a periodic mesh at particle positions (the adjoint of CIC painting).

    Arguments:
        mesh: (n0, n1, n2) values, or (n0, n1, n2, C) to read C components at once.
        positions: (N, 3) in cells of `mesh`.
        compensate: deconvolve the CIC window from the mesh first.

    Returns:
        (N,) or (N, C) interpolated values.
    """
    if mesh.ndim not in (3, 4):
        raise InputError(f"mesh has shape {tuple(mesh.shape)}: pass (n0, n1, n2) or (n0, n1, n2, C)")
    _check_positions(positions)
    if compensate:
        mesh = cic_compensate(mesh) if mesh.ndim == 3 else torch.stack(
            [cic_compensate(m) for m in mesh.unbind(-1)], -1)
    return read_stencil(mesh, *cic_stencil(positions, mesh.shape[:3]))


def cic_compensate(field: torch.Tensor) -> torch.Tensor:
    """Divide a 3-D field by the CIC window ``prod_i sinc^2(k_i / 2)`` in Fourier space."""
    kvec = fourier_wavenumbers(field.shape, dtype=torch.float64, device=field.device)
    window = _cic_window(kvec).to(field.dtype)
    return torch.fft.irfftn(torch.fft.rfftn(field) / window, s=field.shape)


# ----------------------------------------------------------------------------- forces

def _forces_from_delta_k(delta_k: torch.Tensor, shape, positions: torch.Tensor, *, gradient: str,
                         compensate: bool, stencil=None) -> torch.Tensor:
    """Read -grad nabla^-2 delta (in cells of `shape`) at positions (cells of `shape`)."""
    kvec = fourier_wavenumbers(shape, dtype=torch.float64, device=delta_k.device)
    real = delta_k.real.dtype
    kernel = inverse_laplacian(kvec)
    if compensate:
        # painting and reading each smooth by the CIC window: undo both
        kernel = kernel / _cic_window(kvec) ** 2
    potential_k = delta_k * kernel.to(real)
    components = [torch.fft.irfftn(-1j * g.to(real) * potential_k, s=shape)
                  for g in gradient_kernels(kvec, gradient)]
    stencil = stencil if stencil is not None else cic_stencil(positions, shape)
    return read_stencil(components, *stencil)


def pm_forces(positions: torch.Tensor, mesh_shape, *, delta: torch.Tensor | None = None,
              gradient: str = "fd4", compensate: bool = False) -> torch.Tensor:
    """Particle-mesh force ``F = -grad nabla^-2 delta`` at the particles, in cells of `mesh_shape`.

    Arguments:
        positions: (N, 3) in cells of `mesh_shape`.
        mesh_shape: the force mesh.
        delta: (n0, n1, n2) density contrast to take the force of; None paints the particles
            (each of mass mesh_cells / N, so that the mean density is 1).
        gradient: ``"fd4"`` (FastPM's and JaxPM's 4-point finite difference) or ``"exact"`` (ik).
        compensate: deconvolve the CIC window of painting and reading.

    Returns:
        (N, 3) forces; in linear theory ``F = D1 Psi``, the Zel'dovich displacement.
    """
    shape = checked_mesh_shape(mesh_shape)
    _check_positions(positions)
    stencil = cic_stencil(positions, shape)
    if delta is None:
        mass = math.prod(shape) / positions.shape[0]
        density = paint_stencil(torch.zeros(shape, dtype=positions.dtype, device=positions.device),
                                 stencil[0], [w * mass for w in stencil[1]])
        delta = density - 1
    elif tuple(delta.shape) != shape:
        raise InputError(f"delta has shape {tuple(delta.shape)} but mesh_shape is {shape}: pass one or the other")
    return _forces_from_delta_k(torch.fft.rfftn(delta), shape, positions, gradient=gradient, compensate=compensate,
                                stencil=stencil)


# ----------------------------------------------------------------------------- LPT

def _second_order_source(delta_k: torch.Tensor, shape, gradient: str) -> torch.Tensor:
    """delta2 = sum_{i<j} (phi_ii phi_jj - phi_ij^2) with nabla^2 phi = delta (Scoccimarro 1998)."""
    kvec = fourier_wavenumbers(shape, dtype=torch.float64, device=delta_k.device)
    real = delta_k.real.dtype
    phi_k = delta_k * inverse_laplacian(kvec).to(real)
    grads = [g.to(real) for g in gradient_kernels(kvec, gradient)]

    def hessian(i, j):
        return torch.fft.irfftn(-(grads[i] * grads[j]) * phi_k, s=shape)

    diag = [hessian(i, i) for i in range(3)]
    delta2 = diag[0] * diag[1] + diag[0] * diag[2] + diag[1] * diag[2]
    for i, j in ((0, 1), (0, 2), (1, 2)):
        delta2 = delta2 - hessian(i, j) ** 2
    return delta2


def lpt(cosmo: Cosmology, field: torch.Tensor, positions: torch.Tensor, a, order: int = 2, *,
        gradient: str = "fd4") -> tuple[torch.Tensor, torch.Tensor]:
    """Lagrangian perturbation theory displacements and momenta at scale factor `a`.

    ``x = q + D1 Psi1 + D2 Psi2`` with ``Psi1 = -grad nabla^-2 delta`` (Zel'dovich) and, for
    order 2, ``Psi2 = grad nabla^-2 delta2`` and D2 < 0 (Scoccimarro 1998);
    ``p = a^2 E (f1 D1 Psi1 + f2 D2 Psi2)``.

    Arguments:
        cosmo: the cosmology (growth factors).
        field: (n0, n1, n2) linear density contrast today (from :func:`linear_field`).
        positions: (N, 3) Lagrangian positions in cells of the field's mesh (usually
            :func:`grid_positions`).
        a: scale factor of the initial conditions.
        order: 1 (Zel'dovich) or 2 (2LPT).
        gradient: the gradient kernel, ``"fd4"`` or ``"exact"``.

    Returns:
        (displacement, momentum), each (N, 3) in cells, the dtype of `field`.
    """
    if order not in (1, 2):
        raise InputError(f"order={order!r}: LPT order must be 1 (Zel'dovich) or 2 (2LPT)")
    if field.ndim != 3:
        raise InputError(f"field has shape {tuple(field.shape)}: pass a 3-D linear density field")
    _check_positions(positions)
    shape = tuple(field.shape)
    a_t = torch.as_tensor(a, dtype=torch.float64)
    table = growth_table(cosmo)(a_t)
    d1, d2 = table["D1"], table["D2"]
    delta_k = torch.fft.rfftn(field)
    psi1 = _forces_from_delta_k(delta_k, shape, positions, gradient=gradient, compensate=False)
    displacement = d1.to(field.dtype) * psi1
    # a^2 E f1 D1 = a^3 E dD1/da = F1, the growth table's "momentum"
    momentum = table["F1"].to(field.dtype) * psi1
    if order == 2:
        delta2_k = torch.fft.rfftn(_second_order_source(delta_k, shape, gradient))
        psi2 = -_forces_from_delta_k(delta2_k, shape, positions, gradient=gradient, compensate=False)
        displacement = displacement + d2.to(field.dtype) * psi2
        momentum = momentum + table["F2"].to(field.dtype) * psi2
    return displacement, momentum


# ----------------------------------------------------------------------------- time stepping

def kdk_coefficients(cosmo: Cosmology, a_steps) -> dict[str, torch.Tensor]:
    """FastPM's growth-corrected kick and drift coefficients for kick-drift-kick steps.

    Each step ``a_i -> a_{i+1}`` kicks with the force at ``a_i`` to the half step
    ``a_h = (a_i + a_{i+1}) / 2``, drifts with the momentum at ``a_h``, and kicks with the force at
    ``a_{i+1}``. With ``G(a) = a^3 E dD1/da`` (FastPM's G_f) the factors are

        kick  ``dp = F(a_c) [G(a_end) - G(a_start)] / D1(a_c)``,
        drift ``dx = p(a_h) [D1(a_end) - D1(a_start)] / G(a_h)``,

    exact for any step size in the linear regime (Feng et al. 2016, eqs. 18-21; ``dG/da =
    3/2 Omega_m D1 / (a^2 E)`` turns their ``gf`` into ``D1``).

    Arguments:
        a_steps: (S + 1,) increasing scale factors, the first the initial conditions'.

    Returns:
        float64 tensors (S,): ``kick1``, ``drift``, ``kick2``.
    """
    a = torch.as_tensor(a_steps, dtype=torch.float64)
    if a.ndim != 1 or len(a) < 2:
        raise InputError(f"a_steps has shape {tuple(a.shape)}: pass at least two increasing scale factors")
    if not bool((a[1:] > a[:-1]).all()):
        raise InputError(f"a_steps={a.tolist()} must increase strictly; pass e.g. torch.linspace(0.1, 1, 11)")
    a_half = (a[1:] + a[:-1]) / 2
    table = growth_table(cosmo)
    ends, half = table(a), table(a_half)
    d, g = ends["D1"], ends["F1"]
    return {"kick1": (half["F1"] - g[:-1]) / d[:-1],
            "drift": (d[1:] - d[:-1]) / half["F1"],
            "kick2": (g[1:] - half["F1"]) / d[1:]}


def _particle_forces(positions: torch.Tensor, particle_shape, force_resolution: int, gradient: str,
                     compensate: bool) -> torch.Tensor:
    """The PM force at the particles, on a mesh `force_resolution` times finer, in particle-grid cells."""
    fine = tuple(force_resolution * n for n in particle_shape)
    fine_positions = positions * force_resolution if force_resolution != 1 else positions
    return pm_forces(fine_positions, fine, gradient=gradient, compensate=compensate) / force_resolution


def nbody(cosmo: Cosmology, positions: torch.Tensor, momenta: torch.Tensor, a_steps, mesh_shape, *,
          force_resolution: int = 1, gradient: str = "fd4", compensate: bool = False,
          checkpoint: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Evolve particles with FastPM kick-drift-kick steps from ``a_steps[0]`` to ``a_steps[-1]``.

    Arguments:
        cosmo: the cosmology.
        positions, momenta: (N, 3) at ``a_steps[0]``, in cells of the particle grid `mesh_shape`.
        a_steps: (S + 1,) increasing scale factors (S steps; one force computation per step).
        mesh_shape: the particle grid (cells per side); N is usually its number of cells.
        force_resolution: B >= 1, the force mesh has B times more cells per side than the particle
            grid (FastPM's B; B = 2 resolves forces below the mean particle separation).
        gradient, compensate: see :func:`pm_forces`.
        checkpoint: recompute each step during backward (torch.utils.checkpoint), storing only
            the positions and momenta between steps.

    Returns:
        (positions, momenta) at ``a_steps[-1]``, (N, 3) each.
    """
    shape = checked_mesh_shape(mesh_shape)
    if isinstance(force_resolution, bool) or not isinstance(force_resolution, int) or force_resolution < 1:
        raise InputError(f"force_resolution={force_resolution!r}: pass an integer B >= 1 (force mesh B times "
                         "finer than the particle grid)")
    _check_positions(positions)
    if momenta.shape != positions.shape:
        raise InputError(f"momenta has shape {tuple(momenta.shape)} but positions {tuple(positions.shape)}: "
                         "pass one momentum per particle")
    coeff = {k: v.to(positions.dtype) for k, v in kdk_coefficients(cosmo, a_steps).items()}

    def force(x):
        # the kick coefficients hold 3/2 Omega_m / (a^2 E) already (see kdk_coefficients)
        return _particle_forces(x, shape, force_resolution, gradient, compensate)

    def step(x, p, f, kick1, drift, kick2):
        p = p + f * kick1
        x = x + p * drift
        f = force(x)
        p = p + f * kick2
        return x, p, f

    f = force(positions)
    x, p = positions, momenta
    for i in range(len(coeff["drift"])):
        args = (x, p, f, coeff["kick1"][i], coeff["drift"][i], coeff["kick2"][i])
        if checkpoint and torch.is_grad_enabled():
            x, p, f = _checkpoint(step, *args, use_reentrant=False)
        else:
            x, p, f = step(*args)
    return x, p


def paint_density(positions: torch.Tensor, mesh_shape, *, compensate: bool = False) -> torch.Tensor:
    """``1 + delta`` on `mesh_shape` from (N, 3) positions in cells of `mesh_shape` (mean exactly 1)."""
    shape = checked_mesh_shape(mesh_shape)
    mass = math.prod(shape) / positions.shape[0]
    zeros = torch.zeros(shape, dtype=positions.dtype, device=positions.device)
    return cic_paint(zeros, positions, mass, compensate=compensate)


class Simulation(NamedTuple):
    """What :func:`simulate` returns.

    ``initial_field`` (n0, n1, n2) linear density contrast today; ``positions``, ``momenta``
    (N, 3) at ``a_end`` in particle-grid cells; ``density`` (n0, n1, n2) the final ``1 + delta``
    painted (CIC) on the particle grid; ``a_steps`` (S + 1,) the scale factors stepped through.
    """

    initial_field: torch.Tensor
    positions: torch.Tensor
    momenta: torch.Tensor
    density: torch.Tensor
    a_steps: torch.Tensor


def simulate(cosmo: Cosmology, mesh_shape, box_size, seed=None, *, initial_field: torch.Tensor | None = None,
             pk: Callable | None = None, a_start: float = 0.1, a_end: float = 1.0, n_steps: int = 10,
             lpt_order: int = 2, force_resolution: int = 1, gradient: str = "fd4",
             compensate: bool = False, checkpoint: bool = False, dtype: torch.dtype = torch.float32) -> Simulation:
    """One call from a cosmology to a final density field: linear field, LPT, FastPM KDK steps.

    Arguments:
        cosmo: the cosmology (growth, and the linear P(k) unless `pk` is given).
        mesh_shape: particle grid and output mesh, cells per side (int or 3 ints).
        box_size: side of the periodic box in Mpc/h.
        seed: int or torch.Generator for the initial field (ignored when `initial_field` is given).
        initial_field: (n0, n1, n2) linear density today to start from instead of drawing one
            (to differentiate with respect to it, or to share it with another code).
        pk: P(k) callable (h/Mpc -> (Mpc/h)^3); default ``linear_power(cosmo, k)`` (Eisenstein & Hu).
        a_start, a_end: scale factors of the initial conditions and of the output.
        n_steps: KDK steps, equally spaced in a (each costs one force computation).
        lpt_order: 1 or 2, the initial conditions' LPT order.
        force_resolution: B >= 1, see :func:`nbody`.
        gradient: ``"fd4"`` or ``"exact"``, see :func:`pm_forces`.
        compensate: deconvolve the CIC window from the forces (with B = 1 the windows of painting
            and reading otherwise cost ~10% of the power at a tenth of the Nyquist frequency).
        checkpoint: gradient checkpointing of the steps.
        dtype: float32 or float64.

    Returns:
        A :class:`Simulation`.
    """
    from deepfield.physics.cosmology import linear_power

    shape = checked_mesh_shape(mesh_shape)
    box = _box_size(box_size)
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise InputError(f"n_steps={n_steps!r}: pass a positive integer number of KDK steps (e.g. 10)")
    if not (0 < a_start < a_end <= 1):
        raise InputError(f"a_start={a_start}, a_end={a_end}: need 0 < a_start < a_end <= 1 (e.g. 0.1 and 1.0)")
    if initial_field is None:
        if seed is None:
            raise InputError("simulate needs a seed (int or torch.Generator) or an initial_field")
        pk = pk if pk is not None else (lambda k: linear_power(cosmo, k))
        initial_field = linear_field(shape, box, pk, seed, dtype=dtype)
    elif tuple(initial_field.shape) != shape:
        raise InputError(f"initial_field has shape {tuple(initial_field.shape)} but mesh_shape is {shape}")
    q = grid_positions(shape, dtype=initial_field.dtype, device=initial_field.device)
    dx, p = lpt(cosmo, initial_field, q, a_start, order=lpt_order, gradient=gradient)
    a_steps = torch.linspace(a_start, a_end, n_steps + 1, dtype=torch.float64)
    x, p = nbody(cosmo, q + dx, p, a_steps, shape, force_resolution=force_resolution, gradient=gradient,
                 compensate=compensate, checkpoint=checkpoint)
    return Simulation(initial_field, x, p, paint_density(x, shape), a_steps)
