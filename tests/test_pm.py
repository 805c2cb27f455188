"""Particle-mesh physics: cosmology (growth, sigma8, Eisenstein & Hu), Gaussian fields against
their input P(k), CIC mass conservation, FastPM dynamics on large scales, gradients against finite
differences, summary statistics, and refusals of bad input."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import integrate

from deepfield.errors import InputError
from deepfield.physics.cosmology import (Cosmology, Planck18, TabulatedPower, growth_factor,
                                         growth_factor_second, growth_rate, growth_rate_second,
                                         linear_power, load_power_table, transfer_eisenstein_hu)
from deepfield.physics.pm import (cic_paint, cic_read, fourier_wavenumbers, grid_positions, kdk_coefficients, linear_field, lpt,
                                  nbody, paint_density, simulate)
from deepfield.physics.statistics import (coherence, cross_power_spectrum, density_histogram, peak_counts,
                                          power_spectrum, project_slices, transfer_function)

pytestmark = pytest.mark.usefixtures("one_thread")
D = torch.float64


# -- cosmology -------------------------------------------------------------------------------


def test_growth_is_normalised_today_and_linear_in_a_during_matter_domination():
    assert float(growth_factor(Planck18, 1.0)) == pytest.approx(1.0, abs=1e-12)
    a = torch.tensor([1e-3, 2e-3, 5e-3, 1e-2], dtype=D)
    ratio = growth_factor(Planck18, a) / a
    assert float(ratio.max() / ratio.min() - 1) < 2e-4  # D1 ~ a while dark energy is negligible
    assert float(growth_rate(Planck18, 1e-3)) == pytest.approx(1.0, abs=1e-4)
    assert float(growth_rate_second(Planck18, 1e-3)) == pytest.approx(2.0, abs=1e-3)
    d2_over_d1sq = growth_factor_second(Planck18, a) / growth_factor(Planck18, a) ** 2
    np.testing.assert_allclose(d2_over_d1sq, -3 / 7, rtol=1e-3)
    # today: f ~ Omega_m^0.55 (Linder 2005) to ~1%, and dark energy has suppressed growth
    assert float(growth_rate(Planck18, 1.0)) == pytest.approx(Planck18.Omega_m ** 0.55, rel=0.01)
    suppression = (growth_factor(Planck18, 0.5) / 0.5) / (growth_factor(Planck18, 1e-3) / 1e-3)
    assert 0.9 < float(suppression) < 0.99


def test_einstein_de_sitter_growth_is_exact():
    eds = Cosmology(Omega_c=0.95, Omega_b=0.05)
    a = torch.tensor([0.01, 0.1, 0.5, 1.0], dtype=D)
    np.testing.assert_allclose(growth_factor(eds, a), a, rtol=1e-6)
    np.testing.assert_allclose(growth_rate(eds, a), 1.0, rtol=1e-6)
    np.testing.assert_allclose(growth_factor_second(eds, a), -3 / 7 * a ** 2, rtol=1e-6)


def test_sigma8_is_reproduced_by_integrating_the_power_spectrum():
    for cosmo, wiggles in ((Planck18, True), (dataclasses.replace(Planck18, sigma8=0.7, Omega_c=0.3), False)):
        def integrand(log_k):
            k = math.exp(log_k)
            x = 8.0 * k
            w = 3 * (math.sin(x) - x * math.cos(x)) / x ** 3
            return k ** 3 * float(linear_power(cosmo, torch.tensor([k]), wiggles=wiggles)) * w ** 2 / (2 * math.pi ** 2)

        variance, _ = integrate.quad(integrand, math.log(1e-4), math.log(50.0), limit=400)
        assert math.sqrt(variance) == pytest.approx(cosmo.sigma8, rel=2e-4)


def test_eisenstein_hu_transfer_function():
    k = torch.logspace(-2, 0, 400, dtype=D)
    t_full = transfer_eisenstein_hu(Planck18, k)
    t_smooth = transfer_eisenstein_hu(Planck18, k, wiggles=False)
    assert float(transfer_eisenstein_hu(Planck18, torch.tensor([1e-5]))) == pytest.approx(1.0, abs=1e-3)
    assert bool((t_full[1:] < t_full[:-1] + 1e-3).all())  # falls with k, up to the wiggles
    ratio = (t_full / t_smooth) ** 2
    assert float((ratio - 1).abs().max()) < 0.1
    band = (k > 0.03) & (k < 0.3)
    wiggle = (ratio[band] - ratio[band].mean()).sign()
    assert int((wiggle[1:] != wiggle[:-1]).sum()) >= 4  # baryon acoustic oscillations
    # linear P(k) in the range every Planck-like model gives: peak ~2e4 (Mpc/h)^3 near k=0.02 h/Mpc
    p = linear_power(Planck18, k)
    assert 1.5e4 < float(p.max()) < 3e4 and 0.01 < float(k[p.argmax()]) < 0.03
    # growth scales P(k, a) by D1(a)^2
    np.testing.assert_allclose(linear_power(Planck18, k, a=0.5), p * growth_factor(Planck18, 0.5) ** 2, rtol=1e-12)


def test_tabulated_power_reads_a_camb_style_file(tmp_path):
    k = np.logspace(-3, 1, 400)
    p = linear_power(Planck18, torch.tensor(k)).numpy()
    path = tmp_path / "pk.dat"
    np.savetxt(path, np.c_[k, p], header="k [h/Mpc]  P [(Mpc/h)^3]")
    table = load_power_table(path)
    k_mid = torch.tensor(np.sqrt(k[1:] * k[:-1]))
    np.testing.assert_allclose(table(k_mid), linear_power(Planck18, k_mid), rtol=2e-3)
    np.testing.assert_allclose(table(torch.tensor(k)), p, rtol=1e-10)
    assert float(table(torch.tensor([0.0]))) == 0.0


@pytest.mark.parametrize("rows, message", [
    ([[0.1, 1.0], [0.2, 2.0], [0.15, 3.0]], "k does not increase at row 3"),
    ([[0.1, 1.0], [0.2, -2.0]], "row 2 has negative power"),
    ([[0.0, 1.0], [0.2, 2.0]], "row 1 has k=0.0"),
])
def test_bad_power_tables_are_refused_naming_the_row(tmp_path, rows, message):
    path = tmp_path / "bad.txt"
    np.savetxt(path, np.array(rows))
    with pytest.raises(InputError, match=message):
        load_power_table(path)


@pytest.mark.parametrize("kwargs, message", [
    ({"Omega_c": -0.05, "Omega_b": 0.0}, "cannot be negative"),
    ({"Omega_c": 0.0, "Omega_b": 0.0}, "Omega_m = Omega_c \\+ Omega_b = 0.0 must be > 0"),
    ({"sigma8": 0.0}, "sigma8=0.0 must be > 0"),
    ({"h": -0.7}, "h=-0.7 must be > 0"),
    ({"n_s": float("nan")}, "n_s=nan is not finite"),
])
def test_unphysical_cosmologies_are_refused(kwargs, message):
    with pytest.raises(InputError, match=message):
        Cosmology(**kwargs)


# -- fields and mass assignment --------------------------------------------------------------


def test_linear_field_has_its_input_power_within_cosmic_variance():
    box, n = 200.0, 32
    pk = lambda k: linear_power(Planck18, k)  # noqa: E731
    spectra = [power_spectrum(linear_field(n, box, pk, seed), box) for seed in range(4)]
    measured = torch.stack([s.power for s in spectra]).mean(0)
    ps = spectra[0]
    expected = pk(ps.k)
    sigma = torch.sqrt(2 / (4 * ps.n_modes))  # relative standard error of the mean of 4 fields
    pull = (measured / expected - 1) / sigma
    # bins are a fundamental frequency wide: the curvature of P within a bin stays below 3%
    assert float(pull.abs().max()) < 4.5, pull
    high = ps.n_modes > 500
    assert float((measured[high] / expected[high]).mean()) == pytest.approx(1.0, abs=0.03)
    # the same seed gives the same field in float32 and float64
    f32 = linear_field(n, box, pk, 7)
    f64 = linear_field(n, box, pk, 7, dtype=D)
    np.testing.assert_allclose(f32.double(), f64, atol=1e-5 * float(f64.abs().max()))
    assert float(f64.mean()) == pytest.approx(0.0, abs=1e-12)


def test_cic_paint_conserves_mass_and_paint_read_of_a_uniform_grid_is_exact():
    gen = torch.Generator().manual_seed(0)
    positions = torch.rand(5000, 3, generator=gen, dtype=D) * 40 - 12  # wraps around a 16^3 mesh
    weight = torch.rand(5000, generator=gen, dtype=D)
    mesh = cic_paint(torch.zeros(16, 16, 16, dtype=D), positions, weight)
    assert float(mesh.sum()) == pytest.approx(float(weight.sum()), rel=1e-13)
    assert float(mesh.min()) >= 0
    # a uniform lattice, on the cell corners or shifted by any constant, paints 1 everywhere
    q = grid_positions((8, 12, 16), dtype=D)
    for shift in (0.0, 0.5, 0.37):
        uniform = cic_paint(torch.zeros(8, 12, 16, dtype=D), q + shift)
        np.testing.assert_allclose(uniform, 1.0, rtol=0, atol=1e-13)
    # reading at the cell corners returns the mesh; a field linear along an axis is read exactly between them
    field = torch.randn(8, 12, 16, generator=gen, dtype=D)
    np.testing.assert_allclose(cic_read(field, q), field.reshape(-1), rtol=0, atol=1e-14)
    ramp = torch.arange(16, dtype=D).expand(8, 12, 16)
    pos = torch.tensor([[1.0, 2.0, 3.25], [7.5, 11.5, 14.75]], dtype=D)
    np.testing.assert_allclose(cic_read(ramp, pos), [3.25, 14.75], atol=1e-13)
    # Poisson particles have flat shot noise V/N: CIC smoothing hides it at high k, compensation restores it
    # (to within the aliasing that CIC leaves, ~20% at the Nyquist frequency)
    scattered = torch.rand(20000, 3, generator=gen, dtype=D) * 32
    shot = 100.0 ** 3 / 20000
    for compensate, low, high in ((False, 0.2, 0.7), (True, 0.85, 1.3)):
        mesh = cic_paint(torch.zeros(32, 32, 32, dtype=D), scattered, 32 ** 3 / 20000, compensate=compensate)
        high_k = power_spectrum(mesh - 1, 100.0, 8).power[-4:] / shot
        assert low < float(high_k.min()) and float(high_k.max()) < high, (compensate, high_k)


# -- dynamics --------------------------------------------------------------------------------


def test_lpt_displacement_has_the_linear_density():
    """Zel'dovich at a tiny a: -div(D1 Psi) equals D1 delta mode by mode (exact gradient kernel)."""
    n, box = 16, 100.0
    field = linear_field(n, box, lambda k: linear_power(Planck18, k), 3, dtype=D)
    q = grid_positions(n, dtype=D)
    dx, p = lpt(Planck18, field, q, 0.05, order=1, gradient="exact")
    d1 = float(growth_factor(Planck18, 0.05))
    psi_k = torch.fft.fftn(dx.reshape(n, n, n, 3) / d1, dim=(0, 1, 2))
    k = [2 * math.pi * torch.fft.fftfreq(n, dtype=D)] * 3
    kx, ky, kz = torch.meshgrid(*k, indexing="ij")
    nyquist = (kx.abs() == math.pi) | (ky.abs() == math.pi) | (kz.abs() == math.pi)
    div = -(1j * kx * psi_k[..., 0] + 1j * ky * psi_k[..., 1] + 1j * kz * psi_k[..., 2])
    delta_k = torch.fft.fftn(field)
    np.testing.assert_allclose(div[~nyquist], delta_k[~nyquist], atol=1e-10 * float(delta_k.abs().max()))
    # momenta: p = a^3 E dD1/da Psi, i.e. f1 a^2 E times the displacement
    from deepfield.physics.cosmology import hubble_ratio
    factor = float(growth_rate(Planck18, 0.05) * 0.05 ** 2 * hubble_ratio(Planck18, 0.05))
    np.testing.assert_allclose(p, factor * dx, rtol=1e-9)


def test_kdk_is_exact_in_the_linear_regime():
    """A tiny, smooth field evolved by 3 big KDK steps (a = 0.1 -> 1) lands on Zel'dovich growth.

    FastPM's growth-corrected factors make this exact whatever the step size; what remains is
    the PM force's own error. Particles start at cell centres, where CIC painting is linear in
    the displacement (at the corners it has a kink), and the field keeps k < Nyquist / 4.
    """
    n, box = 16, 400.0
    field = 1e-4 * linear_field(n, box, lambda k: linear_power(Planck18, k), 5, dtype=D)
    k = torch.sqrt(sum(kk ** 2 for kk in fourier_wavenumbers((n, n, n))))
    field = torch.fft.irfftn(torch.fft.rfftn(field) * (k < math.pi / 4), s=(n, n, n))
    q = grid_positions(n, dtype=D) + 0.5
    dx0, p0 = lpt(Planck18, field, q, 0.1, order=1)
    x, p = nbody(Planck18, q + dx0, p0, torch.tensor([0.1, 0.4, 0.7, 1.0]), n, compensate=True)
    dx1, p1 = lpt(Planck18, field, q, 1.0, order=1)
    assert float((x - q - dx1).abs().max()) < 0.03 * float(dx1.abs().max())
    assert float(((x - q) * dx1).sum() / (dx1 * dx1).sum()) == pytest.approx(1.0, abs=0.02)
    assert float((p * p1).sum() / (p1 * p1).sum()) == pytest.approx(1.0, abs=0.02)


def test_2lpt_and_kdk_keep_the_linear_power_on_large_scales():
    box, n = 512.0, 32
    sim = simulate(Planck18, n, box, seed=1, n_steps=10, force_resolution=2)
    assert float(sim.density.mean()) == pytest.approx(1.0, abs=1e-5)
    # paint on a finer mesh so that the CIC window does not hide the dynamics
    fine = paint_density(sim.positions * 2, 2 * n)
    edges = torch.tensor([0.006, 0.018, 0.03, 0.043, 0.055])  # k < 0.055 h/Mpc: linear at z=0
    ratio = power_spectrum(fine - 1, box, edges).power / power_spectrum(sim.initial_field, box, edges).power
    np.testing.assert_allclose(ratio, 1.0, atol=0.05)
    r = coherence(sim.density, sim.initial_field, box, edges)
    assert float(r.power.min()) > 0.97


def test_force_resolution_and_checkpointing_agree():
    kwargs = dict(n_steps=3, dtype=D, force_resolution=2)
    field = linear_field(8, 64.0, lambda k: linear_power(Planck18, k), 0, dtype=D).requires_grad_(True)
    plain = simulate(Planck18, 8, 64.0, initial_field=field, **kwargs)
    (grad_plain,) = torch.autograd.grad((plain.density ** 2).sum(), field)
    ckpt = simulate(Planck18, 8, 64.0, initial_field=field, checkpoint=True, **kwargs)
    (grad_ckpt,) = torch.autograd.grad((ckpt.density ** 2).sum(), field)
    np.testing.assert_allclose(ckpt.density.detach(), plain.density.detach(), rtol=1e-12)
    np.testing.assert_allclose(grad_ckpt, grad_plain, rtol=1e-10)


def _loss_weights(n):
    return torch.randn(n, n, n, generator=torch.Generator().manual_seed(11), dtype=D)


def test_gradient_with_respect_to_the_initial_field_matches_finite_differences():
    n, box = 8, 64.0
    weights = _loss_weights(n)
    field = linear_field(n, box, lambda k: linear_power(Planck18, k), 2, dtype=D)
    direction = torch.randn(n, n, n, generator=torch.Generator().manual_seed(4), dtype=D)

    def loss(f):
        return (simulate(Planck18, n, box, initial_field=f, n_steps=3, dtype=D).density * weights).sum()

    f = field.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(f), f)
    eps = 1e-6
    with torch.no_grad():
        numeric = (loss(field + eps * direction) - loss(field - eps * direction)) / (2 * eps)
    assert float((grad * direction).sum()) == pytest.approx(float(numeric), rel=1e-5)


def test_gradient_with_respect_to_omega_m_and_sigma8_matches_finite_differences():
    n, box = 8, 64.0
    weights = _loss_weights(n)

    def loss(omega_c, sigma8):
        cosmo = Cosmology(Omega_c=omega_c, sigma8=sigma8)
        return (simulate(cosmo, n, box, seed=9, n_steps=2, dtype=D).density * weights).sum()

    oc = torch.tensor(0.26, dtype=D, requires_grad=True)
    s8 = torch.tensor(0.81, dtype=D, requires_grad=True)
    g_oc, g_s8 = torch.autograd.grad(loss(oc, s8), (oc, s8))
    eps = 1e-5
    num_oc = (loss(0.26 + eps, 0.81) - loss(0.26 - eps, 0.81)) / (2 * eps)
    num_s8 = (loss(0.26, 0.81 + eps) - loss(0.26, 0.81 - eps)) / (2 * eps)
    assert float(g_oc) == pytest.approx(float(num_oc), rel=1e-4)  # d/dOmega_m at fixed Omega_b
    assert float(g_s8) == pytest.approx(float(num_s8), rel=1e-4)
    assert abs(float(g_oc)) > 0 and abs(float(g_s8)) > 0


def test_kdk_coefficients_match_linear_growth():
    a = torch.tensor([0.1, 0.3, 1.0], dtype=D)
    c = kdk_coefficients(Planck18, a)
    d = growth_factor(Planck18, a)
    # a particle in linear theory moves by Delta D1 Psi: drift * p(a_h) where p = G(a_h) Psi
    from deepfield.physics.cosmology import growth_table
    g_half = growth_table(Planck18)((a[1:] + a[:-1]) / 2)["F1"]
    np.testing.assert_allclose(c["drift"] * g_half, d[1:] - d[:-1], rtol=1e-12)


@pytest.mark.parametrize("call, message", [
    (lambda: simulate(Planck18, 8, -10.0, seed=0), "box_size=-10.0 must be a positive length"),
    (lambda: simulate(Planck18, 8, 64.0, seed=0, n_steps=0), "n_steps=0"),
    (lambda: simulate(Planck18, (8, 8), 64.0, seed=0), "mesh_shape=\\(8, 8\\)"),
    (lambda: simulate(Planck18, 8, 64.0, seed=0, force_resolution=0), "force_resolution=0"),
    (lambda: simulate(Planck18, 8, 64.0, seed=0, lpt_order=3), "order=3"),
    (lambda: simulate(Planck18, 8, 64.0), "needs a seed"),
    (lambda: simulate(Planck18, 8, 64.0, seed=0, a_start=0.5, a_end=0.2), "a_start=0.5"),
    (lambda: kdk_coefficients(Planck18, [0.1, 0.5, 0.3]), "must increase strictly"),
    (lambda: linear_field(8, 64.0, lambda k: -k, 0), "negative or non-finite power"),
    (lambda: cic_paint(torch.zeros(4, 4, 4), torch.zeros(3, 2)), "positions has shape \\(3, 2\\)"),
])
def test_bad_simulation_input_is_refused(call, message):
    with pytest.raises(InputError, match=message):
        call()


# -- statistics ------------------------------------------------------------------------------


def test_power_spectrum_of_a_plane_wave_and_of_projected_slices():
    n, box, amplitude = 16, 80.0, 0.3
    x = torch.arange(n, dtype=D) / n
    wave = amplitude * torch.cos(2 * math.pi * 3 * x)[:, None, None].expand(n, n, n)
    ps = power_spectrum(wave, box)
    k_f = 2 * math.pi / box
    hit = int(torch.argmin((ps.k - 3 * k_f).abs()))
    # the wave's variance A^2/2 spread over the bin: P n_modes = V A^2 / 2
    assert float(ps.power[hit] * ps.n_modes[hit]) == pytest.approx(box ** 3 * amplitude ** 2 / 2, rel=1e-10)
    others = torch.cat([ps.power[:hit], ps.power[hit + 1:]])
    assert float(others.abs().max()) < 1e-20
    # 2-D slices, batched: the wave lies across the slices' first axis
    slices = project_slices(1 + wave.permute(2, 0, 1).contiguous(), thickness=4, axis=0)
    assert slices.shape == (4, n, n) and float(slices.mean()) == pytest.approx(1.0)
    ps2 = power_spectrum(slices - 1, (box, box))
    assert ps2.power.shape == (4, len(ps2.k))
    hit2 = int(torch.argmin((ps2.k - 3 * k_f).abs()))
    np.testing.assert_allclose(ps2.power[:, hit2] * ps2.n_modes[hit2], box ** 2 * amplitude ** 2 / 2, rtol=1e-10)
    # chosen bins
    chosen = power_spectrum(wave, box, torch.tensor([0.0, 2.5 * k_f, 3.5 * k_f]))
    assert chosen.power.shape == (2,) and float(chosen.power[0]) == pytest.approx(0.0, abs=1e-20)


def test_cross_power_transfer_and_coherence():
    box = 100.0
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(24, 24, 24, generator=gen, dtype=D)
    b = torch.randn(24, 24, 24, generator=gen, dtype=D)
    np.testing.assert_allclose(cross_power_spectrum(a, a, box).power, power_spectrum(a, box).power, rtol=1e-12)
    np.testing.assert_allclose(transfer_function(3 * a, a, box).power, 3.0, rtol=1e-12)
    np.testing.assert_allclose(coherence(-2 * a, a, box).power, -1.0, rtol=1e-12)
    r = coherence(a, b, box)
    assert float((r.power.abs() * torch.sqrt(r.n_modes / 2)).max()) < 4.5  # independent: r ~ 0 +- 1/sqrt(modes)
    mix = coherence(a + b, a, box)
    many = mix.n_modes > 300
    np.testing.assert_allclose(mix.power[many], 1 / math.sqrt(2), atol=0.06)


def test_density_histogram_and_peak_counts():
    field = torch.zeros(2, 16, 16, dtype=D)
    field[0, 3, 4], field[0, 10, 10], field[1, 0, 0] = 5.0, 2.0, 5.0  # (0, 0): its neighbours wrap around
    counts = peak_counts(field, torch.tensor([1.0, 3.0, 6.0]))
    np.testing.assert_allclose(counts, [0.5, 1.0])  # per field: 1 peak in [1, 3), 2 in [3, 6) over 2 fields
    values = torch.tensor([0.1, 1.0, 1.0, 10.0, -1.0], dtype=D)
    hist = density_histogram(values, torch.tensor([-1.5, -0.5, 0.5, 1.5]))
    widths = 1.0
    np.testing.assert_allclose(hist * widths, [0.2, 0.4, 0.2])  # the negative value has no log10
