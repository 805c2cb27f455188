"""Flat w0-wa CDM background, linear growth and the linear matter power spectrum, in torch.

Units, stated once for the module:

- wavenumbers ``k`` in h/Mpc, power spectra ``P(k)`` in (Mpc/h)^3, lengths in Mpc/h;
- ``a`` is the scale factor (1 today); ``E(a) = H(a) / H0`` is dimensionless;
- growth factors are normalised to ``D1(a=1) = 1``; the second-order factor ``D2`` follows the
  2LPT sign convention (``D2 ~ -3/7 D1^2`` in matter domination) and is given in units of
  ``D1(1)^2``; ``f1 = dln D1 / dln a`` and ``f2 = dln D2 / dln a`` are their log-derivatives.

Everything is differentiable with respect to the cosmological parameters: a :class:`Cosmology`
may hold 0-d torch tensors (``requires_grad=True``) in place of floats, and the growth ODE is
integrated with a fixed-step Runge-Kutta scheme made of torch operations (the approach FastPM and
JaxPM take, with an ODE rather than fitting formulae). Radiation and massive neutrinos are left out;
the universe is flat (``Omega_de = 1 - Omega_m``).

Example:
    >>> from deepfield.physics.cosmology import Planck18, growth_factor, linear_power
    >>> round(float(growth_factor(Planck18, 1.0)), 6)
    1.0
    >>> p = linear_power(Planck18, torch.tensor([0.1]))  # (Mpc/h)^3 at k = 0.1 h/Mpc
    >>> 5000 < float(p) < 8000
    True

References:
    Eisenstein & Hu 1998, ApJ 496, 605, "Baryonic features in the matter transfer function",
    https://arxiv.org/abs/astro-ph/9709112 ;
    Feng et al. 2016, MNRAS 463, 2273, "FastPM", https://arxiv.org/abs/1603.00476 .
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from deepfield.errors import InputError

__all__ = [
    "Cosmology",
    "Planck18",
    "hubble_ratio",
    "growth_table",
    "GrowthTable",
    "growth_factor",
    "growth_rate",
    "growth_factor_second",
    "growth_rate_second",
    "transfer_eisenstein_hu",
    "linear_power",
    "sigma_r",
    "TabulatedPower",
    "load_power_table",
]

Number = float | torch.Tensor

#: CMB temperature today (K), the value Eisenstein & Hu's fits take through Theta = T/2.7.
T_CMB = 2.7255
#: the growth ODE starts here, deep in matter domination (radiation is left out of E(a)).
_A_START = 1e-4
_ODE_STEPS = 256


def _value(x: Number) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


@dataclass(frozen=True)
class Cosmology:
    """Parameters of a flat w0-wa CDM universe.

    Arguments:
        Omega_c: cold dark matter density today, in units of the critical density.
        Omega_b: baryon density today, in units of the critical density.
        h: Hubble constant H0 / (100 km/s/Mpc).
        n_s: spectral index of the primordial power spectrum.
        sigma8: rms linear density contrast in spheres of 8 Mpc/h today.
        w0, wa: dark-energy equation of state ``w(a) = w0 + wa (1 - a)``.

    Any field may be a 0-d torch tensor (to differentiate with respect to it); the checks below
    read its value. ``dataclasses.replace(cosmo, sigma8=0.9)`` gives a modified copy.

    Raises:
        InputError: Omega_m <= 0, Omega_c < 0, Omega_b < 0, sigma8 <= 0, h <= 0, n_s or w not finite.
    """

    Omega_c: Number = 0.2607
    Omega_b: Number = 0.0490
    h: Number = 0.6766
    n_s: Number = 0.9665
    sigma8: Number = 0.8102
    w0: Number = -1.0
    wa: Number = 0.0

    def __post_init__(self) -> None:
        values = {f.name: _value(getattr(self, f.name)) for f in dataclasses.fields(self)}
        for name, v in values.items():
            if not math.isfinite(v):
                raise InputError(f"Cosmology {name}={v} is not finite: pass a finite number")
        if values["Omega_c"] < 0 or values["Omega_b"] < 0:
            raise InputError(f"Cosmology Omega_c={values['Omega_c']}, Omega_b={values['Omega_b']}: densities "
                             "cannot be negative; pass values >= 0 (Planck 2018: Omega_c=0.2607, Omega_b=0.049)")
        omega_m = values["Omega_c"] + values["Omega_b"]
        if omega_m <= 0:
            raise InputError(f"Cosmology Omega_m = Omega_c + Omega_b = {omega_m} must be > 0: a universe without "
                             "matter has no structure to simulate; pass e.g. Omega_c=0.26, Omega_b=0.049")
        if omega_m > 1:
            raise InputError(f"Cosmology Omega_m = {omega_m} > 1 needs negative dark energy in this flat "
                             "model; pass Omega_c + Omega_b <= 1")
        if values["sigma8"] <= 0:
            raise InputError(f"Cosmology sigma8={values['sigma8']} must be > 0 (it sets the amplitude of "
                             "the fluctuations); pass e.g. sigma8=0.81")
        if values["h"] <= 0:
            raise InputError(f"Cosmology h={values['h']} must be > 0 (H0 / 100 km/s/Mpc); pass e.g. h=0.6766")

    @property
    def Omega_m(self) -> Number:
        """Total matter density today, Omega_c + Omega_b."""
        return self.Omega_c + self.Omega_b

    @property
    def Omega_de(self) -> Number:
        """Dark-energy density today, 1 - Omega_m (flat universe)."""
        return 1 - self.Omega_m

    @property
    def omega_m(self) -> Number:
        """Physical matter density Omega_m h^2."""
        return self.Omega_m * self.h ** 2

    @property
    def omega_b(self) -> Number:
        """Physical baryon density Omega_b h^2."""
        return self.Omega_b * self.h ** 2

    def as_dict(self) -> dict[str, float]:
        """The parameters as plain floats (for catalogs and JSON)."""
        return {f.name: _value(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def _cache_key(self) -> tuple | None:
        """The parameters as floats when none is a tensor (results can then be cached)."""
        vals = [getattr(self, f.name) for f in dataclasses.fields(self)]
        if any(isinstance(v, torch.Tensor) for v in vals):
            return None
        return tuple(float(v) for v in vals)


#: Planck 2018 (TT,TE,EE+lowE+lensing+BAO, Table 2 last column of arXiv:1807.06209), as astropy's Planck18.
Planck18 = Cosmology()


def _as_tensor(x, dtype=torch.float64) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x if x.dtype.is_floating_point and x.dtype == dtype else x.to(dtype)
    return torch.as_tensor(x, dtype=dtype)


def _dark_energy_density_ratio(cosmo: Cosmology, a: torch.Tensor) -> torch.Tensor:
    """rho_de(a) / rho_de(1) for w(a) = w0 + wa (1 - a) (Linder 2003)."""
    w0, wa = _as_tensor(cosmo.w0), _as_tensor(cosmo.wa)
    return a ** (-3 * (1 + w0 + wa)) * torch.exp(-3 * wa * (1 - a))


def hubble_ratio(cosmo: Cosmology, a) -> torch.Tensor:
    """E(a) = H(a) / H0 of the flat w0-wa CDM background (no radiation); float64, shape of `a`."""
    a = _as_tensor(a)
    om = _as_tensor(cosmo.Omega_m)
    return torch.sqrt(om * a ** -3 + (1 - om) * _dark_energy_density_ratio(cosmo, a))


class GrowthTable(NamedTuple):
    """The growth ODE's solution on a grid in ln a (float64 tensors of shape (S,)).

    ``D1, D2`` the growth factors (normalised, see the module docstring), ``F1, F2`` the
    "momenta" ``a^3 E(a) dD/da`` that FastPM's kick and drift factors use, and their derivatives
    with respect to ln a (``dD1, dF1, dD2, dF2``) for cubic Hermite interpolation.
    """

    log_a: torch.Tensor
    D1: torch.Tensor
    F1: torch.Tensor
    D2: torch.Tensor
    F2: torch.Tensor
    dD1: torch.Tensor
    dF1: torch.Tensor
    dD2: torch.Tensor
    dF2: torch.Tensor

    def __call__(self, a) -> dict[str, torch.Tensor]:
        """D1, F1, D2, F2 at scale factors `a` (any shape), by cubic Hermite interpolation in ln a."""
        a = _as_tensor(a)
        _check_scale_factor(a)
        x = torch.log(a)
        grid = self.log_a
        idx = torch.searchsorted(grid.detach(), x.detach().reshape(-1)).clamp(1, len(grid) - 1).reshape(x.shape)
        x0, x1 = grid[idx - 1], grid[idx]
        step = x1 - x0
        t = (x - x0) / step
        h00 = (1 + 2 * t) * (1 - t) ** 2
        h10 = t * (1 - t) ** 2
        h01 = t ** 2 * (3 - 2 * t)
        h11 = t ** 2 * (t - 1)
        out = {}
        for name in ("D1", "F1", "D2", "F2"):
            y, dy = getattr(self, name), getattr(self, "d" + name)
            out[name] = (h00 * y[idx - 1] + h10 * step * dy[idx - 1] + h01 * y[idx] + h11 * step * dy[idx])
        return out


def _check_scale_factor(a: torch.Tensor) -> None:
    lo, hi = float(a.detach().min()), float(a.detach().max())
    if not (lo >= _A_START and hi <= 1.0 + 1e-12):
        raise InputError(f"scale factor a in [{lo}, {hi}] is outside [{_A_START}, 1]: growth is tabulated from "
                         f"a={_A_START} (z~10^4) to today; pass 1e-4 <= a <= 1")


def _growth_rhs(cosmo: Cosmology, log_a: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """d/dln a of (D1, F1, D2, F2) with F = a^3 E dD/da.

    From d/da (a^3 E dD1/da) = 3/2 Omega_m D1 / (a^2 E) and the same for D2 with source D2 - D1^2.
    """
    a = torch.exp(log_a)
    e = hubble_ratio(cosmo, a)
    om = _as_tensor(cosmo.Omega_m)
    d1, f1, d2, f2 = state.unbind()
    source = 1.5 * om / (a * e)  # a * 3/2 Omega_m / (a^2 E): the d/dln a of F per unit D
    return torch.stack([f1 / (a ** 2 * e), source * d1, f2 / (a ** 2 * e), source * (d2 - d1 ** 2)])


def _solve_growth(cosmo: Cosmology) -> GrowthTable:
    log_a = torch.linspace(math.log(_A_START), 0.0, _ODE_STEPS + 1, dtype=torch.float64)
    a0 = _A_START
    e0 = hubble_ratio(cosmo, torch.tensor(a0, dtype=torch.float64))
    # growing modes of matter domination: D1 = a, D2 = -3/7 a^2
    state = torch.stack([torch.tensor(a0, dtype=torch.float64), a0 ** 3 * e0 * 1.0,
                         torch.tensor(-3 / 7 * a0 ** 2, dtype=torch.float64), a0 ** 3 * e0 * (-6 / 7 * a0)])
    states, derivs = [state], [_growth_rhs(cosmo, log_a[0], state)]
    for i in range(_ODE_STEPS):
        x, h = log_a[i], log_a[i + 1] - log_a[i]
        k1 = derivs[-1]
        k2 = _growth_rhs(cosmo, x + h / 2, state + h / 2 * k1)
        k3 = _growth_rhs(cosmo, x + h / 2, state + h / 2 * k2)
        k4 = _growth_rhs(cosmo, x + h, state + h * k3)
        state = state + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        states.append(state)
        derivs.append(_growth_rhs(cosmo, log_a[i + 1], state))
    s, d = torch.stack(states, 1), torch.stack(derivs, 1)
    n1 = s[0, -1]
    scale = torch.stack([n1, n1, n1 ** 2, n1 ** 2])[:, None]
    s, d = s / scale, d / scale
    return GrowthTable(log_a, s[0], s[1], s[2], s[3], d[0], d[1], d[2], d[3])


@lru_cache(maxsize=64)
def _cached_growth(key: tuple) -> GrowthTable:
    return _solve_growth(Cosmology(*key))


def growth_table(cosmo: Cosmology) -> GrowthTable:
    """Solve the first- and second-order growth ODEs once (cached for float-valued cosmologies).

    Integrated by RK4 with 256 steps in ln a from a=1e-4, starting on the matter-dominated growing
    modes; the tabulated solution is accurate to ~1e-8 relative. Differentiable when the
    cosmology holds tensors.
    """
    key = cosmo._cache_key()
    return _cached_growth(key) if key is not None else _solve_growth(cosmo)


def growth_factor(cosmo: Cosmology, a) -> torch.Tensor:
    """Linear growth factor D1(a), normalised to D1(1) = 1; float64, shape of `a` (1e-4 <= a <= 1)."""
    return growth_table(cosmo)(a)["D1"]


def growth_rate(cosmo: Cosmology, a) -> torch.Tensor:
    """Linear growth rate f1 = dln D1 / dln a; float64, shape of `a`."""
    a = _as_tensor(a)
    g = growth_table(cosmo)(a)
    return g["F1"] / (a ** 2 * hubble_ratio(cosmo, a) * g["D1"])


def growth_factor_second(cosmo: Cosmology, a) -> torch.Tensor:
    """Second-order growth factor D2(a) in units of D1(1)^2 (negative: ~ -3/7 D1^2); float64."""
    return growth_table(cosmo)(a)["D2"]


def growth_rate_second(cosmo: Cosmology, a) -> torch.Tensor:
    """Second-order growth rate f2 = dln D2 / dln a (~ 2 f1 in matter domination); float64."""
    a = _as_tensor(a)
    g = growth_table(cosmo)(a)
    return g["F2"] / (a ** 2 * hubble_ratio(cosmo, a) * g["D2"])


def transfer_eisenstein_hu(cosmo: Cosmology, k, *, wiggles: bool = True) -> torch.Tensor:
    """Eisenstein & Hu (1998) matter transfer function T(k), 1 on large scales.

    Arguments:
        cosmo: the cosmology (Omega_m, Omega_b, h; T_CMB = 2.7255 K).
        k: wavenumbers in h/Mpc, any shape.
        wiggles: True for the full fit with baryon acoustic oscillations (their eqs. 11-24, the
            default, as jax_cosmo and FlowPM use); False for the smooth "no-wiggle" shape
            (their eqs. 26-31).

    Returns:
        T(k), float64, the shape of `k`.
    """
    k = _as_tensor(k)
    h = _as_tensor(cosmo.h)
    om, ob = _as_tensor(cosmo.Omega_m), _as_tensor(cosmo.Omega_b)
    w_m, w_b = om * h ** 2, ob * h ** 2
    fb = ob / om
    fc = 1 - fb
    theta = T_CMB / 2.7
    if not wiggles:
        alpha_gamma = 1 - 0.328 * torch.log(431 * w_m) * fb + 0.38 * torch.log(22.3 * w_m) * fb ** 2
        s = 44.5 * torch.log(9.83 / w_m) / torch.sqrt(1 + 10 * w_b ** 0.75)  # sound horizon, Mpc
        k_mpc = k * h
        gamma_eff = om * h * (alpha_gamma + (1 - alpha_gamma) / (1 + (0.43 * k_mpc * s) ** 4))
        q = k * theta ** 2 / gamma_eff
        l0 = torch.log(2 * math.e + 1.8 * q)
        c0 = 14.2 + 731 / (1 + 62.5 * q)
        return l0 / (l0 + c0 * q ** 2)

    k = k * h  # the fits are in Mpc^-1
    z_eq = 2.50e4 * w_m * theta ** -4
    k_eq = 7.46e-2 * w_m * theta ** -2
    b1 = 0.313 * w_m ** -0.419 * (1 + 0.607 * w_m ** 0.674)
    b2 = 0.238 * w_m ** 0.223
    z_d = 1291 * w_m ** 0.251 / (1 + 0.659 * w_m ** 0.828) * (1 + b1 * w_b ** b2)
    r_d = 31.5 * w_b * theta ** -4 * (z_d / 1e3) ** -1
    r_eq = 31.5 * w_b * theta ** -4 * (z_eq / 1e3) ** -1
    s = (2 / (3 * k_eq) * torch.sqrt(6 / r_eq)
         * torch.log((torch.sqrt(1 + r_d) + torch.sqrt(r_d + r_eq)) / (1 + torch.sqrt(r_eq))))
    k_silk = 1.6 * w_b ** 0.52 * w_m ** 0.73 * (1 + (10.4 * w_m) ** -0.95)
    q = k / (13.41 * k_eq)

    a1 = (46.9 * w_m) ** 0.670 * (1 + (32.1 * w_m) ** -0.532)
    a2 = (12.0 * w_m) ** 0.424 * (1 + (45.0 * w_m) ** -0.582)
    alpha_c = a1 ** (-fb) * a2 ** (-fb ** 3)
    bb1 = 0.944 / (1 + (458 * w_m) ** -0.708)
    bb2 = (0.395 * w_m) ** -0.0266
    beta_c = 1 / (1 + bb1 * (fc ** bb2 - 1))

    def t0_tilde(alpha, beta):
        log_term = torch.log(math.e + 1.8 * beta * q)
        c = 14.2 / alpha + 386 / (1 + 69.9 * q ** 1.08)
        return log_term / (log_term + c * q ** 2)

    f = 1 / (1 + (k * s / 5.4) ** 4)
    t_c = f * t0_tilde(1.0, beta_c) + (1 - f) * t0_tilde(alpha_c, beta_c)

    y = (1 + z_eq) / (1 + z_d)
    sq = torch.sqrt(1 + y)
    g_y = y * (-6 * sq + (2 + 3 * y) * torch.log((sq + 1) / (sq - 1)))
    alpha_b = 2.07 * k_eq * s * (1 + r_d) ** -0.75 * g_y
    beta_node = 8.41 * w_m ** 0.435
    beta_b = 0.5 + fb + (3 - 2 * fb) * torch.sqrt((17.2 * w_m) ** 2 + 1)
    ks = k * s
    s_tilde = s / (1 + (beta_node / ks) ** 3) ** (1 / 3)
    x = k * s_tilde
    j0 = torch.where(x.abs() > 1e-8, torch.sin(x) / torch.where(x.abs() > 1e-8, x, torch.ones_like(x)),
                     torch.ones_like(x))
    t_b = (t0_tilde(1.0, 1.0) / (1 + (ks / 5.2) ** 2)
           + alpha_b / (1 + (beta_b / ks) ** 3) * torch.exp(-(k / k_silk) ** 1.4)) * j0
    return fb * t_b + fc * t_c


def _top_hat(x: torch.Tensor) -> torch.Tensor:
    """Fourier transform of a unit-volume sphere, 3 (sin x - x cos x) / x^3 (series below x=1e-3)."""
    small = x < 1e-3
    xs = torch.where(small, torch.ones_like(x), x)
    exact = 3 * (torch.sin(xs) - xs * torch.cos(xs)) / xs ** 3
    return torch.where(small, 1 - x ** 2 / 10, exact)


_K_INTEGRAL = torch.logspace(-5, 2.5, 2049, dtype=torch.float64)  # h/Mpc, for sigma(R) integrals


def sigma_r(pk: Callable[[torch.Tensor], torch.Tensor], radius: float = 8.0) -> torch.Tensor:
    """rms of the field with power `pk` smoothed by a top hat of `radius` Mpc/h.

    ``sigma^2 = int dk k^2 P(k) W(kR)^2 / (2 pi^2)``, by Simpson's rule in ln k over
    1e-5 < k < 10^2.5 h/Mpc (2049 points).
    """
    k = _K_INTEGRAL
    integrand = k ** 3 * pk(k) * _top_hat(k * radius) ** 2 / (2 * math.pi ** 2)
    dlnk = math.log(k[1] / k[0])
    w = torch.ones_like(k)
    w[1:-1:2], w[2:-1:2] = 4, 2
    return torch.sqrt((integrand * w).sum() * dlnk / 3)


def _unnormalised_power(cosmo: Cosmology, k: torch.Tensor, wiggles: bool) -> torch.Tensor:
    k_safe = torch.where(k > 0, k, torch.ones_like(k))
    p = k_safe ** _as_tensor(cosmo.n_s) * transfer_eisenstein_hu(cosmo, k_safe, wiggles=wiggles) ** 2
    return torch.where(k > 0, p, torch.zeros_like(p))


def _solve_normalisation(cosmo: Cosmology, wiggles: bool) -> torch.Tensor:
    sigma = sigma_r(lambda kk: _unnormalised_power(cosmo, kk, wiggles), 8.0)
    return (_as_tensor(cosmo.sigma8) / sigma) ** 2


@lru_cache(maxsize=64)
def _cached_normalisation(key: tuple, wiggles: bool) -> torch.Tensor:
    return _solve_normalisation(Cosmology(*key), wiggles)


def _power_normalisation(cosmo: Cosmology, wiggles: bool) -> torch.Tensor:
    """A in P = A k^n_s T^2, from sigma8 (cached for float-valued cosmologies)."""
    key = cosmo._cache_key()
    return _cached_normalisation(key, wiggles) if key is not None else _solve_normalisation(cosmo, wiggles)


def linear_power(cosmo: Cosmology, k, a=1.0, *, wiggles: bool = True) -> torch.Tensor:
    """Linear matter power spectrum P(k, a) in (Mpc/h)^3, normalised to the cosmology's sigma8.

    ``P(k, a) = A k^n_s T(k)^2 D1(a)^2`` with the Eisenstein & Hu (1998) transfer function (BAO
    wiggles included unless ``wiggles=False``), ``A`` set so that the top-hat rms in 8 Mpc/h
    spheres today equals ``cosmo.sigma8``.

    Arguments:
        cosmo: the cosmology.
        k: wavenumbers in h/Mpc (> 0), any shape; tensor or array.
        a: scale factor, float or tensor broadcastable against `k` (1e-4 <= a <= 1).

    Returns:
        float64 tensor of the broadcast shape of `k` and `a`; differentiable w.r.t. the parameters.
    """
    k = _as_tensor(k)
    if bool((k.detach() < 0).any()):
        raise InputError(f"linear_power got negative wavenumbers (min {float(k.min())}): pass k >= 0 in h/Mpc")

    p = _power_normalisation(cosmo, wiggles) * _unnormalised_power(cosmo, k, wiggles)
    if not (isinstance(a, (int, float)) and a == 1):
        p = p * growth_factor(cosmo, a) ** 2
    return p


class TabulatedPower:
    """A power spectrum P(k) tabulated at increasing k, interpolated linearly in log-log.

    Outside the table it continues the first and last segments as power laws (a CAMB/CLASS table
    up to k ~ 10 h/Mpc covers the meshes deepfield simulates; say so if you extrapolate far).
    ``k = 0`` gives 0 (the mean mode carries no power). Callable: ``pk(k)`` with k in h/Mpc.

    Arguments:
        k: (M,) wavenumbers in h/Mpc, strictly increasing, > 0.
        power: (M,) power in (Mpc/h)^3, >= 0.
        source: where the table came from (named in errors).
    """

    def __init__(self, k, power, source: str = "table") -> None:
        k = np.asarray(k, dtype=np.float64).reshape(-1)
        power = np.asarray(power, dtype=np.float64).reshape(-1)
        if k.shape != power.shape or len(k) < 2:
            raise InputError(f"{source}: need at least two (k, P) rows with as many k as P values, got "
                             f"{len(k)} k and {len(power)} P")
        bad = np.flatnonzero(~np.isfinite(k) | ~np.isfinite(power))
        if len(bad):
            raise InputError(f"{source}: row {bad[0] + 1} has a non-finite value (k={k[bad[0]]}, P={power[bad[0]]}); "
                             "remove it")
        if k[0] <= 0:
            raise InputError(f"{source}: row 1 has k={k[0]} <= 0; wavenumbers must be positive (h/Mpc)")
        steps = np.flatnonzero(np.diff(k) <= 0)
        if len(steps):
            i = steps[0] + 1
            raise InputError(f"{source}: k does not increase at row {i + 1} (k={k[i]} after k={k[i - 1]}); "
                             "sort the table by k and drop duplicate rows")
        neg = np.flatnonzero(power < 0)
        if len(neg):
            raise InputError(f"{source}: row {neg[0] + 1} has negative power P={power[neg[0]]} at k={k[neg[0]]}; "
                             "a power spectrum is >= 0: check the file's columns (k first, then P)")
        self.source = source
        self.k = torch.as_tensor(k)
        self.power = torch.as_tensor(power)
        # log of zero power is -inf; clamp to the smallest positive value so interpolation stays finite
        floor = power[power > 0].min() * 1e-30 if (power > 0).any() else 1e-300
        self._log_k = torch.log(self.k)
        self._log_p = torch.log(torch.as_tensor(np.maximum(power, floor)))

    def __call__(self, k) -> torch.Tensor:
        k = _as_tensor(k)
        safe = torch.where(k > 0, k, torch.ones_like(k))
        x = torch.log(safe)
        lk, lp = self._log_k, self._log_p
        idx = torch.searchsorted(lk, x.detach().reshape(-1)).clamp(1, len(lk) - 1).reshape(x.shape)
        slope = (lp[idx] - lp[idx - 1]) / (lk[idx] - lk[idx - 1])
        p = torch.exp(lp[idx - 1] + slope * (x - lk[idx - 1]))
        return torch.where(k > 0, p, torch.zeros_like(p))

    def __repr__(self) -> str:
        return f"TabulatedPower({self.source!r}, {len(self.k)} rows, k=[{float(self.k[0]):.3g}, {float(self.k[-1]):.3g}] h/Mpc)"


def load_power_table(path: str | Path, *, k_column: int = 0, power_column: int = 1) -> TabulatedPower:
    """Read a CAMB/CLASS-style text table of P(k): whitespace-separated columns, ``#`` comments.

    Arguments:
        path: the text file; k in h/Mpc and P in (Mpc/h)^3 (CAMB's ``matterpower`` and CLASS's
            ``pk.dat`` files are in these units).
        k_column, power_column: which columns hold k and P (0-based).

    Returns:
        A :class:`TabulatedPower`, callable on k.

    Raises:
        InputError: missing file, unreadable numbers, non-increasing k or negative power (naming the row).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"power-spectrum table {path} does not exist: pass a CAMB/CLASS text file (k, P columns)")
    try:
        table = np.loadtxt(path, comments="#", ndmin=2)
    except ValueError as err:
        raise InputError(f"power-spectrum table {path} is not a table of numbers ({err}); pass whitespace-"
                         "separated columns with '#' comments") from None
    need = max(k_column, power_column) + 1
    if table.shape[1] < need:
        raise InputError(f"power-spectrum table {path} has {table.shape[1]} column(s); k_column={k_column}, "
                         f"power_column={power_column} need {need}")
    return TabulatedPower(table[:, k_column], table[:, power_column], source=str(path))
