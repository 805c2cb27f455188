"""Metrics: HSM moments and non-parametric morphology against GalSim profiles of known shape,
size and flux, the statistics used to compare real and model samples, and a run on
simulated galaxies."""

from __future__ import annotations

import time

import galsim
import numpy as np
import pytest
from scipy import optimize, special

from deepfield.errors import InputError
from deepfield.metrics import (asymmetry, bootstrap_mean, compare_samples, concentration,
                               format_table, gini, hsm_moments, m20, morphology, robust_sigma,
                               spearman,
                               standardised_w1, wasserstein1)

SCALE = 0.2  # arcsec/pixel


def draw(profile, size=48, offset=(0.0, 0.0), method="auto"):
    return profile.drawImage(nx=size, ny=size, scale=SCALE, offset=offset, method=method).array.astype(np.float64)


def sersic_petrosian_concentration(n):
    """Petrosian radius (eta = 0.2) / half-light radius and C = 5 log10(r80 / r20) with the
    total taken within 1.5 Petrosian radii, for a continuous Sersic profile."""
    b = special.gammaincinv(2 * n, 0.5)

    def enclosed(x):  # fraction of the light within x half-light radii
        return special.gammainc(2 * n, b * x ** (1 / n))

    total_over_peak = 2 * np.pi * n * special.gamma(2 * n) / b ** (2 * n)
    ratio = lambda x: np.exp(-b * x ** (1 / n)) * np.pi * x**2 / (enclosed(x) * total_over_peak) - 0.2  # noqa: E731
    r_petro = optimize.brentq(ratio, 0.1, 10)
    total = enclosed(1.5 * r_petro)
    r20, r80 = (optimize.brentq(lambda x: enclosed(x) - f * total, 1e-6, 10) for f in (0.2, 0.8))
    return r_petro, 5 * np.log10(r80 / r20)


@pytest.fixture(scope="module")
def disk_and_bulge():
    """Noiseless, PSF-free exponential and de Vaucouleurs profiles with a half-light radius of
    6 pixels, centred on a pixel corner of a 48x48 stamp."""
    hlr = 6 * SCALE
    exp = draw(galsim.Exponential(half_light_radius=hlr, flux=1000.0))
    dev = draw(galsim.DeVaucouleurs(half_light_radius=hlr, flux=1000.0))
    return np.stack([exp, dev]), morphology(np.stack([exp, dev]), pixel_scale=SCALE)


# ----------------------------------------------------------------------------- HSM


def test_hsm_round_gaussian_size_flux_and_centroid():
    sigma_pixels, flux = 4.0, 2500.0
    image = draw(galsim.Gaussian(sigma=sigma_pixels * SCALE, flux=flux), method="no_pixel")
    m = hsm_moments(image[None], pixel_scale=SCALE)
    assert m["hsm_ok"][0]
    assert m["sigma"][0] == pytest.approx(sigma_pixels, rel=0.01)
    assert m["sigma_arcsec"][0] == pytest.approx(sigma_pixels * SCALE, rel=0.01)
    assert m["e"][0] < 1e-3
    assert m["flux"][0] == pytest.approx(flux, rel=0.02)
    assert m["rho4"][0] == pytest.approx(2.0, abs=0.01)  # a Gaussian's radial fourth moment
    # a 48-pixel stamp drawn by GalSim is centred on the corner between pixels 23 and 24
    assert m["centroid_x"][0] == pytest.approx(23.5, abs=1e-3)
    assert m["centroid_y"][0] == pytest.approx(23.5, abs=1e-3)


def test_hsm_sheared_gaussian_recovers_the_shear():
    image = draw(galsim.Gaussian(sigma=0.6).shear(g1=0.3), method="no_pixel")
    m = hsm_moments(image)  # one (H, W) stamp is a batch of one
    assert m["e1"][0] == pytest.approx(0.3, abs=0.005)
    assert abs(m["e2"][0]) < 0.005
    assert m["e"][0] == pytest.approx(0.3, abs=0.005)
    assert "sigma_arcsec" not in m  # no pixel scale, no arcsec


def test_hsm_failures_are_nan_and_flagged():
    good = draw(galsim.Gaussian(sigma=0.6, flux=100.0))
    bad = np.full_like(good, np.nan)
    m = hsm_moments(np.stack([good, np.zeros_like(good), bad])[:, None])  # (N, 1, H, W)
    assert m["hsm_ok"].tolist() == [True, False, False]
    assert np.isnan(m["sigma"][1:]).all() and np.isnan(m["e1"][1:]).all()


# ----------------------------------------------------------------------------- Gini, M20, C, A


def test_gini_limits():
    segment = np.ones((16, 16), bool)
    uniform = np.full((1, 16, 16), 3.0)
    one_pixel = np.zeros((1, 16, 16))
    one_pixel[0, 5, 9] = 100.0
    assert gini(uniform, segment)[0] == pytest.approx(0.0, abs=1e-12)
    assert gini(one_pixel, segment)[0] == pytest.approx(1.0, abs=1e-12)


def test_de_vaucouleurs_is_more_concentrated_than_a_disk(disk_and_bulge):
    _, m = disk_and_bulge
    (gini_exp, gini_dev), (m20_exp, m20_dev) = m["gini"], m["m20"]
    assert gini_dev > gini_exp + 0.05
    assert m20_dev < m20_exp - 0.3
    # Lotz et al. (2004): bulges G ~ 0.6, M20 ~ -2.4; disks G ~ 0.5, M20 ~ -1.8
    assert 0.44 < gini_exp < 0.54 and 0.55 < gini_dev < 0.65
    assert -2.0 < m20_exp < -1.6 and -2.6 < m20_dev < -2.1


def test_concentration_and_petrosian_radius_match_the_continuous_profiles(disk_and_bulge):
    images, m = disk_and_bulge
    petro_exp, c_exp = sersic_petrosian_concentration(1)  # 2.16 r_e, 2.74
    petro_dev, c_dev = sersic_petrosian_concentration(4)  # 1.82 r_e, 4.29
    assert m["petrosian_radius"] == pytest.approx([6 * petro_exp, 6 * petro_dev], rel=0.03)
    assert m["concentration"][0] == pytest.approx(c_exp, abs=0.05)
    # the pixelised cusp pushes r20 out: 4.18 at r_e = 6 pixels, 4.27 at 16 pixels
    assert m["concentration"][1] == pytest.approx(c_dev, abs=0.15)
    assert concentration(images) == pytest.approx(m["concentration"])
    assert m["n_failed"]["concentration"] == 0


def test_asymmetry_of_symmetric_and_clumpy_galaxies():
    psf = galsim.Moffat(beta=3, fwhm=0.8)
    disk = galsim.Exponential(half_light_radius=1.2, flux=2000.0).shear(g1=0.2, g2=0.1)
    centred = draw(galsim.Convolve(disk, psf))
    off_grid = draw(galsim.Convolve(disk, psf), offset=(0.3, -0.2))
    clump = galsim.Gaussian(sigma=0.15, flux=200.0).shift(0.6, 0.3)
    clumpy = draw(galsim.Convolve(disk + clump, psf))
    a = asymmetry(np.stack([centred, off_grid, clumpy]))
    assert abs(a[0]) < 1e-6  # an exact flip about a pixel corner
    assert abs(a[1]) < 0.01  # bilinear interpolation at a sub-pixel centre
    assert a[2] > 0.08  # a clump with 10% of the flux


def test_background_corrected_asymmetry_of_a_symmetric_galaxy_in_noise():
    image = draw(galsim.Convolve(galsim.Exponential(half_light_radius=1.2, flux=2000.0).shear(g1=0.2),
                                 galsim.Moffat(beta=3, fwhm=0.8)), offset=(0.3, -0.2))
    sigma = np.sqrt((image**2).sum()) / 50  # S/N 50
    noisy = image + np.random.default_rng(3).normal(0, sigma, (12, *image.shape))
    corrected = asymmetry(noisy, noise_sigma=sigma)
    raw = asymmetry(noisy)
    assert abs(corrected.mean()) < 0.015
    assert corrected.std() < 0.04
    assert raw.mean() > 0.3  # the noise's own asymmetry, removed above


def test_blank_and_non_finite_stamps_fail_softly():
    galaxy = draw(galsim.Exponential(half_light_radius=1.0, flux=500.0))
    images = np.stack([galaxy, np.zeros_like(galaxy), np.full_like(galaxy, np.nan)])
    m = morphology(images, noise_sigma=0.1, pixel_scale=SCALE)
    for name in ("sigma", "gini", "m20", "concentration", "asymmetry", "petrosian_radius"):
        assert np.isfinite(m[name][0]), name
        assert np.isnan(m[name][1:]).all(), name
        assert m["n_failed"][name] == 2
    assert m20(images)[1:].tolist() == [pytest.approx(np.nan, nan_ok=True)] * 2


def test_input_shapes_are_checked():
    with pytest.raises(InputError, match="one band"):
        morphology(np.zeros((2, 3, 16, 16)))
    with pytest.raises(InputError, match="noise_sigma"):
        asymmetry(np.zeros((2, 16, 16)), noise_sigma=[1.0, 2.0, 3.0])


# ----------------------------------------------------------------------------- statistics


def test_bootstrap_sigma_is_the_standard_error():
    n = 400
    x = np.random.default_rng(0).normal(size=n)
    mean, sigma = bootstrap_mean(np.concatenate([x, [np.nan, np.inf]]), n_boot=2000)
    assert mean == pytest.approx(x.mean())
    assert sigma == pytest.approx(1 / np.sqrt(n), rel=0.10)
    assert np.isnan(bootstrap_mean([np.nan])[0])


def test_wasserstein_shift_and_scale_invariance():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=500), rng.gamma(2.0, size=700)
    assert wasserstein1(a, a + 0.37) == pytest.approx(0.37)
    assert standardised_w1(1e3 * a, 1e3 * b) == pytest.approx(standardised_w1(a, b))
    assert standardised_w1(a - 5, b - 5) == pytest.approx(standardised_w1(a, b))
    # a shift of one real-sample sigma reads 1: the scale is the IQR sigma of the real sample
    assert robust_sigma(a) == pytest.approx(1.0, rel=0.15)
    assert standardised_w1(a, a + robust_sigma(a)) == pytest.approx(1.0)


def test_spearman_ignores_nan_pairs():
    x = np.arange(20.0)
    y = x**3
    x[3], y[7] = np.nan, np.inf
    res = spearman(x, y)
    assert res.rho == pytest.approx(1.0) and res.n == 18


def test_compare_samples_rows_and_table():
    rng = np.random.default_rng(2)
    n = 1000
    real = {"gini": rng.normal(0.5, 0.1, n), "hsm_ok": np.ones(n, bool), "n_failed": {"gini": 0}}
    model = {"gini": np.concatenate([rng.normal(0.55, 0.1, n - 10), np.full(10, np.nan)]),
             "hsm_ok": np.ones(n, bool)}
    rows = compare_samples(real, model)
    assert [r["statistic"] for r in rows] == ["gini"]  # flags and summaries are not statistics
    r = rows[0]
    assert (r["n_model"], r["failed_model"]) == (n - 10, 10)
    assert r["real_sigma"] == pytest.approx(0.1 / np.sqrt(n), rel=0.15)
    assert r["difference_sigma"] == pytest.approx(0.05 / (0.1 * np.sqrt(2 / n)), rel=0.3)
    assert r["w1"] == pytest.approx(0.05, abs=0.015)
    assert r["standardised_w1"] == pytest.approx(0.5, abs=0.15)
    table = format_table(rows).splitlines()
    assert len(table) == 3 and table[2].startswith("| gini | 1000 (0) | 990 (10) |")


# ----------------------------------------------------------------------------- simulated galaxies


def test_morphology_of_simulated_galaxies(tmp_path):
    from deepfield.data.galaxies import simulate_galaxies

    store = simulate_galaxies(tmp_path / "g", 50, size=48, seed=0, workers=1, progress=False)
    x = store.read("x")
    start = time.process_time()
    m = morphology(x, noise_sigma=store.column("noise_sigma"), pixel_scale=store.pixel_scale)
    per_stamp = (time.process_time() - start) / len(x)
    start = time.process_time()
    hsm_moments(x, pixel_scale=store.pixel_scale)
    per_stamp_hsm = (time.process_time() - start) / len(x)
    print(f"\nmorphology: {per_stamp * 1e3:.2f} ms/stamp CPU (HSM alone {per_stamp_hsm * 1e3:.2f} ms); "
          f"failures {m['n_failed']}")
    assert max(m["n_failed"].values()) <= 5
    magnitude = store.column("magnitude")
    bright = magnitude <= np.median(magnitude)
    assert spearman(m["sigma_arcsec"][bright], store.column("half_light_radius")[bright]).rho > 0.6
    assert np.nanmax(np.abs(m["asymmetry"])) < 0.5


# -- linear probes -------------------------------------------------------------------------------


def test_linear_probe_recovers_the_explained_variance():
    from deepfield.metrics import linear_probe

    rng = np.random.default_rng(3)
    codes = rng.normal(size=(3000, 8)) * np.geomspace(0.01, 100, 8)  # scales that must not matter
    signal = codes[:, 0] / 0.01 - 0.5 * codes[:, 7] / 100  # variance 1.25, carried by the extreme scales
    target = 4.0 + signal + rng.normal(0, np.sqrt(1.25 / 3), 3000)  # R^2 = 1.25 / (1.25 + 1.25/3) = 0.75
    result = linear_probe(codes, target, folds=5, seed=0)
    assert abs(result.r2 - 0.75) < 0.02
    assert result.fold_r2.shape == (5,) and result.n == 3000
    assert np.all(np.abs(result.fold_r2 - 0.75) < 0.05)
    again = linear_probe(codes, target, folds=5, seed=0)
    assert again.r2 == result.r2  # seeded folds
    assert linear_probe(codes, target, folds=5, seed=1).r2 != result.r2


def test_linear_probe_finds_nothing_in_unrelated_or_nonlinear_targets():
    from deepfield.metrics import linear_probe

    rng = np.random.default_rng(4)
    codes = rng.normal(size=(2000, 6))
    assert abs(linear_probe(codes, rng.normal(size=2000)).r2) < 0.01  # noise: R^2 ~ -d/N
    # |z| depends on the codes, but not linearly: a linear probe sees (almost) none of it
    assert abs(linear_probe(codes, np.abs(codes[:, 0])).r2) < 0.01
    assert linear_probe(codes, codes[:, 2] * 3 - 1).r2 > 0.999  # exactly linear


def test_linear_probe_bad_input_names_the_fix():
    from deepfield.errors import InputError
    from deepfield.metrics import linear_probe

    codes = np.zeros((10, 2))
    with pytest.raises(InputError, match="one value per code"):
        linear_probe(codes, np.arange(9.0))
    with pytest.raises(InputError, match="leave them out"):
        linear_probe(np.random.default_rng(0).normal(size=(10, 2)), np.r_[np.arange(9.0), np.nan])
    with pytest.raises(InputError, match="2 <= folds <= 5"):
        linear_probe(codes, np.arange(10.0), folds=6)
