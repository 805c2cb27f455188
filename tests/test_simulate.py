"""Simulators: physics a person would check on the stamps, spectra and catalogs, determinism
(worker count, resume after a crash) and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from deepfield.data import store as store_module
from deepfield.data.galaxies import (ZEROPOINT, _colour_table, _TEMPLATES, _Z_GRID,
                                     galaxy_parameters, redraw_noise, simulate_galaxies)
from deepfield.data.spectra import EMISSION_LINES, simulate_spectra
from deepfield.data.store import open_store
from deepfield.errors import InputError, StoreError


@pytest.fixture(scope="module")
def r_store(tmp_path_factory):
    """64 single-band (r) galaxies on 48x48 stamps."""
    path = tmp_path_factory.mktemp("sim") / "r"
    return simulate_galaxies(path, 64, size=48, seed=11, progress=False)


@pytest.fixture(scope="module")
def gri_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "gri"
    return simulate_galaxies(path, 16, size=32, bands="g,r,i", seed=3, progress=False,
                             psf="kolmogorov")


@pytest.fixture(scope="module")
def sample():
    """Catalog parameters only (no images) of a large sample, for population statistics."""
    return galaxy_parameters(4000, bands=("g", "r"), seed=7)


@pytest.fixture(scope="module")
def spectra_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "spec"
    return simulate_spectra(path, 300, seed=4, z_range=(0.05, 0.6), snr=(30.0, 60.0),
                            progress=False)


# -- galaxy images --------------------------------------------------------------------


def test_store_layout_catalog_and_units(r_store, gri_store):
    assert r_store.kind == "image" and r_store.sample_shape == (1, 48, 48)
    assert r_store.bands == ("r",) and r_store.pixel_scale == 0.2
    assert r_store.read("psf").shape == (64, 1, 25, 25)
    for name in ("x", "truth", "ivar"):
        assert r_store.read(name).shape == (64, 1, 48, 48)
    units = gri_store.units
    assert units["magnitude"] == "mag" and units["half_light_radius"] == "arcsec"
    assert units["flux_g"] == "counts" and units["noise_sigma_i"] == "counts/pixel"
    assert units["psf_fwhm"] == "arcsec"
    for column in ("id", "redshift", "bulge_fraction", "sersic_n", "e1", "e2", "snr", "snr_g",
                   "sed_type", "psf_fwhm_r"):
        assert column in gri_store.columns
    prov = gri_store.meta["provenance"]
    assert prov["parameters"]["bands"] == ["g", "r", "i"] and prov["seed"] == 3
    assert prov["galsim_version"]
    # the reference band is r: the catalog magnitude is the r flux at zeropoint 30
    mag = ZEROPOINT - 2.5 * np.log10(gri_store.column("flux_r"))
    np.testing.assert_allclose(mag, gri_store.column("magnitude"), atol=1e-9)


def test_truth_flux_matches_catalog_flux(r_store):
    truth = r_store.read("truth")[:, 0].sum(axis=(1, 2))
    flux = r_store.column("flux_r")
    ratio = truth / flux
    # never more than the catalog flux; compact disk-dominated galaxies lie wholly on the stamp
    assert ratio.max() < 1.001
    compact = (r_store.column("half_light_radius") < 0.4) & (r_store.column("bulge_fraction") < 0.5)
    assert compact.sum() >= 10
    np.testing.assert_allclose(ratio[compact], 1.0, atol=0.01)


def test_multiband_truth_flux_matches_each_band(gri_store):
    truth = gri_store.read("truth").sum(axis=(2, 3))
    for c, band in enumerate("gri"):
        flux = gri_store.column(f"flux_{band}")
        small = gri_store.column("half_light_radius") < 0.4
        np.testing.assert_allclose(truth[small, c] / flux[small], 1.0, atol=0.03)


def test_observed_minus_truth_flux_is_noise(r_store):
    x = r_store.read("x")[:, 0]
    truth = r_store.read("truth")[:, 0]
    sigma = r_store.column("noise_sigma")
    pull = (x.sum(axis=(1, 2)) - truth.sum(axis=(1, 2))) / (sigma * 48)  # sum of 48^2 pixels
    # PSF convolution moves a little flux off the stamp (mean slightly negative)
    assert abs(pull.mean()) < 0.5
    assert 0.7 < pull.std() < 1.4


def test_noise_in_empty_corners_matches_catalog_sigma(r_store):
    x = r_store.read("x")[:, 0]
    sigma = r_store.column("noise_sigma")
    corners = np.concatenate([x[:, :8, :8].reshape(64, -1), x[:, -8:, -8:].reshape(64, -1)], axis=1)
    ratio = corners.std(axis=1) / sigma
    assert abs(np.median(ratio) - 1.0) < 0.05
    ivar = r_store.read("ivar")[:, 0]
    np.testing.assert_allclose(ivar[:, 0, 0], 1 / sigma**2, rtol=1e-6)
    assert np.all(ivar == ivar[:, :1, :1])  # constant over each stamp


def test_observed_is_truth_convolved_with_psf(r_store):
    """x = truth (*) psf + noise: chi^2 per pixel ~ 1 even for the brightest galaxies."""
    from scipy.signal import fftconvolve

    x, truth = r_store.read("x")[:, 0], r_store.read("truth")[:, 0]
    psf, ivar = r_store.read("psf")[:, 0], r_store.read("ivar")[:, 0]
    chi2 = np.array([((x[i] - fftconvolve(truth[i], psf[i], mode="same")) ** 2 * ivar[i]).mean()
                     for i in range(len(x))])
    assert np.all(chi2 < 1.15), chi2.max()
    assert abs(np.median(chi2) - 1.0) < 0.05
    assert r_store.column("snr").max() > 100  # the check covers bright objects too


def test_psf_stamps_unit_sum_and_fwhm(r_store, gri_store):
    for store in (r_store, gri_store):
        psf = store.read("psf")
        np.testing.assert_allclose(psf.sum(axis=(2, 3)), 1.0, atol=1e-5)
        for c, band in enumerate(store.bands):
            fwhm = store.column(f"psf_fwhm_{band}")
            assert np.all((fwhm > 0.5) & (fwhm < 1.15))
            # FWHM from the half-maximum crossings along the four axis directions
            stamp = psf[:, c].astype(np.float64)
            peak = stamp[:, 12, 12]
            half_widths = []
            for profile in (stamp[:, 12, 12:], stamp[:, 12, 12::-1], stamp[:, 12:, 12], stamp[:, 12::-1, 12]):
                k = np.argmax(profile < peak[:, None] / 2, axis=1)  # first sample below half max
                lo = profile[np.arange(len(k)), k - 1]
                hi = profile[np.arange(len(k)), k]
                half_widths.append(k - 1 + (lo - peak / 2) / (lo - hi))
            measured = 2 * np.mean(half_widths, axis=0) * store.pixel_scale
            np.testing.assert_allclose(measured / fwhm, 1.0, atol=0.1)


def test_psf_stamp_is_the_catalog_psf(gri_store):
    """The stored PSF is GalSim's Kolmogorov with the catalog FWHM and shear, sampled."""
    import galsim

    psf = gri_store.read("psf")
    for i in range(3):
        for c, band in enumerate("gri"):
            ref = galsim.Kolmogorov(fwhm=gri_store.column(f"psf_fwhm_{band}")[i]).shear(
                g1=gri_store.column("psf_g1")[i], g2=gri_store.column("psf_g2")[i])
            image = ref.drawImage(nx=25, ny=25, scale=0.2, method="no_pixel", use_true_center=False)
            np.testing.assert_allclose(psf[i, c], image.array / image.array.sum(), atol=1e-6)


def test_correlated_noise_has_cosmos_correlations(tmp_path):
    store = simulate_galaxies(tmp_path / "cn", 24, size=32, seed=2, correlated_noise=True,
                              depth=23.0, progress=False)
    x = store.read("x")[:, 0].astype(np.float64)
    sigma = store.column("noise_sigma")
    corner = x[:, :10, :10] / sigma[:, None, None]
    assert abs(corner.std() - 1.0) < 0.1
    neighbour = np.mean(corner[:, :, 1:] * corner[:, :, :-1]) / np.mean(corner**2)
    assert neighbour > 0.3  # COSMOS noise: ~0.5 correlation between adjacent pixels
    np.testing.assert_allclose(store.read("ivar")[:, 0, 0, 0], 1 / sigma**2, rtol=1e-6)


# -- galaxy population ---------------------------------------------------------------------


def test_number_counts_rise_with_magnitude(sample):
    m = sample.magnitude
    assert m.min() >= 18.0 and m.max() <= 25.3
    counts, edges = np.histogram(m, bins=np.arange(18.0, 25.31, 0.5))
    assert np.all(np.diff(counts[4:]) > 0)  # more faint than bright, bin after bin
    slope = np.polyfit(0.5 * (edges[1:] + edges[:-1]), np.log10(counts), 1)[0]
    assert 0.28 < slope < 0.38  # dN/dm ~ 10^(0.33 m)


def test_size_magnitude_anticorrelation(sample):
    from scipy.stats import spearmanr

    rho = spearmanr(sample.magnitude, sample.half_light_radius).statistic
    assert rho < -0.3
    assert 0.2 < np.median(sample.half_light_radius) < 0.6  # arcsec


def test_shapes_and_redshifts_are_physical(sample):
    e = np.hypot(sample.e1, sample.e2)
    assert e.max() < 0.9 and 0.15 < np.std(sample.e1) < 0.3
    assert np.all((sample.sersic_n >= 1.5) & (sample.sersic_n <= 5.0))
    assert np.all((sample.bulge_fraction >= 0) & (sample.bulge_fraction <= 1))
    # fainter galaxies lie further away
    bright, faint = sample.magnitude < 21, sample.magnitude > 24.5
    assert np.median(sample.redshift[faint]) > np.median(sample.redshift[bright]) + 0.3
    assert np.all(np.hypot(sample.psf_g1, sample.psf_g2) < 0.05)


def test_bulge_dominated_galaxies_are_redder(sample):
    g_r = -2.5 * np.log10((sample.bulge_flux[:, 0] + sample.disk_flux[:, 0])
                          / (sample.bulge_flux[:, 1] + sample.disk_flux[:, 1]))
    z_bin = (sample.redshift > 0.3) & (sample.redshift < 0.6)
    red = g_r[z_bin & (sample.bulge_fraction > 0.7)]
    blue = g_r[z_bin & (sample.bulge_fraction < 0.2)]
    assert len(red) > 20 and len(blue) > 20
    assert np.median(red) > np.median(blue) + 0.2


def test_colours_come_from_galsim_seds_and_bandpasses():
    import galsim

    mags, _ = _colour_table(("g", "r"))
    share = galsim.meta_data.share_dir
    sed = galsim.SED(os.path.join(share, "SEDs", "CWW_E_ext.sed"), wave_type="Ang", flux_type="flambda")
    bands = [galsim.Bandpass(os.path.join(share, "bandpasses", f"LSST_{b}.dat"), wave_type="nm")
             .withZeropoint("AB") for b in "gr"]
    z = 0.437
    direct = [sed.atRedshift(z).calculateMagnitude(bp) for bp in bands]
    table = [np.interp(z, _Z_GRID, mags[_TEMPLATES.index("E"), c]) for c in range(2)]
    assert abs((direct[0] - direct[1]) - (table[0] - table[1])) < 0.02


def test_parameters_depend_only_on_seed_and_index():
    whole = galaxy_parameters(5000, seed=9)
    part = galaxy_parameters(10, seed=9, start=4090)  # spans two blocks
    np.testing.assert_array_equal(part.magnitude, whole.magnitude[4090:4100])
    np.testing.assert_array_equal(part.noise_seed, whole.noise_seed[4090:4100])
    assert not np.array_equal(galaxy_parameters(10, seed=10).magnitude, whole.magnitude[:10])


def test_noise_seed_changes_only_the_noise_seeds():
    from dataclasses import fields

    whole = galaxy_parameters(5000, seed=9)
    twin = galaxy_parameters(5000, seed=9, noise_seed=0)
    for f in fields(whole):
        if f.name != "noise_seed":
            np.testing.assert_array_equal(getattr(twin, f.name), getattr(whole, f.name))
    assert len(np.intersect1d(twin.noise_seed, whole.noise_seed)) < 3  # 5000 draws of 2^31: ~0 collisions
    part = galaxy_parameters(10, seed=9, start=4090, noise_seed=0)  # spans two blocks
    np.testing.assert_array_equal(part.noise_seed, twin.noise_seed[4090:4100])
    assert not np.array_equal(galaxy_parameters(10, seed=9, noise_seed=1).noise_seed, twin.noise_seed[:10])


# -- determinism -----------------------------------------------------------------------------


def test_bit_identical_for_any_worker_count(tmp_path):
    one = simulate_galaxies(tmp_path / "w1", 24, size=32, seed=5, workers=1, batch=8, progress=False)
    two = simulate_galaxies(tmp_path / "w2", 24, size=32, seed=5, workers=2, batch=8, progress=False)
    other_batch = simulate_galaxies(tmp_path / "b5", 24, size=32, seed=5, batch=5, progress=False)
    assert one.fingerprint == two.fingerprint == other_batch.fingerprint
    np.testing.assert_array_equal(one.read("x"), two.read("x"))


def test_resume_after_a_crash_gives_the_same_store(tmp_path, monkeypatch):
    reference = simulate_galaxies(tmp_path / "ref", 24, size=32, seed=6, batch=8, progress=False)
    out = tmp_path / "crash"
    real_append = store_module.StoreWriter.append
    calls = {"n": 0}

    def crashing_append(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash while writing the second batch")
        return real_append(self, *args, **kwargs)

    monkeypatch.setattr(store_module.StoreWriter, "append", crashing_append)
    with pytest.raises(RuntimeError, match="simulated crash"):
        simulate_galaxies(out, 24, size=32, seed=6, batch=8, progress=False)
    monkeypatch.undo()
    assert not out.exists()  # nothing that opens as a store
    with pytest.raises(StoreError, match="--resume"):
        open_store(out)
    resumed = simulate_galaxies(out, 24, size=32, seed=6, batch=8, resume=True, progress=False)
    assert len(resumed) == 24
    assert resumed.fingerprint == reference.fingerprint


def test_resume_with_other_settings_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "crash"
    monkeypatch.setattr(store_module.StoreWriter, "append",
                        lambda self, *a, **k: (_ for _ in ()).throw(RuntimeError("crash")))
    with pytest.raises(RuntimeError):
        simulate_galaxies(out, 16, size=16, seed=1, batch=8, progress=False)
    monkeypatch.undo()
    with pytest.raises(StoreError, match="original options"):
        simulate_galaxies(out, 16, size=16, seed=2, batch=8, resume=True, progress=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 0}, "at least one"),
    ({"size": 4}, "--size 8"),
    ({"bands": ("r", "q")}, "unknown band"),
    ({"workers": 0}, "--workers 1"),
    ({"psf": "airy"}, "moffat"),
    ({"depth": 17.0}, "faint limit"),
])
def test_bad_input_names_the_problem(tmp_path, kwargs, message):
    args = {"n": 2, "size": 16, "progress": False, **kwargs}
    with pytest.raises(InputError, match=message):
        simulate_galaxies(tmp_path / "bad", **args)


def test_existing_store_needs_overwrite(tmp_path, r_store):
    with pytest.raises(StoreError, match="overwrite"):
        simulate_galaxies(r_store.path, 2, size=16, progress=False)


# -- noise twins ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def r_twin(r_store, tmp_path_factory):
    return redraw_noise(r_store, tmp_path_factory.mktemp("twin") / "r7", noise_seed=7, progress=False)


def test_noise_twin_keeps_the_galaxies_bit_for_bit(r_store, r_twin):
    np.testing.assert_array_equal(r_twin.ids, r_store.ids)
    assert r_twin.catalog.equals(r_store.catalog)  # snr included: it is the noiseless S/N
    for name in ("truth", "psf", "ivar"):
        np.testing.assert_array_equal(r_twin.read(name), r_store.read(name))
    assert r_twin.units == r_store.units and r_twin.pixel_scale == r_store.pixel_scale
    twin_of = r_twin.meta["provenance"]["noise_twin_of"]
    assert twin_of["fingerprint"] == r_store.fingerprint and twin_of["noise_seed"] is None
    assert r_twin.fingerprint != r_store.fingerprint


def test_noise_twin_has_fresh_noise_of_the_same_sigma(r_store, r_twin):
    from scipy.signal import fftconvolve

    x, y = r_store.read("x")[:, 0].astype(np.float64), r_twin.read("x")[:, 0].astype(np.float64)
    sigma = r_store.column("noise_sigma")[:, None, None]
    assert not np.any(np.all(x == y, axis=(1, 2)))  # every stamp's noise was drawn again
    # the difference of two independent draws has variance 2 sigma^2 (64 stamps of 48^2 pixels)
    assert abs((y - x).std(axis=(1, 2)) / (np.sqrt(2) * sigma[:, 0, 0]) - 1).max() < 0.05
    assert abs(((y - x) / sigma).std() / np.sqrt(2) - 1) < 0.01
    clean = np.stack([fftconvolve(t[0], p[0], mode="same") for t, p in zip(r_store.read("truth"),
                                                                            r_store.read("psf"))])
    faint = r_store.column("snr") < 30  # where truth (*) psf is exact to well below the noise
    noise_x, noise_y = (x - clean)[faint] / sigma[faint], (y - clean)[faint] / sigma[faint]
    assert abs(noise_y.std() - 1) < 0.02 and abs(noise_x.std() - 1) < 0.02
    assert abs(np.corrcoef(noise_x.ravel(), noise_y.ravel())[0, 1]) < 0.02  # ~1e5 pixels: sigma 0.003


def test_noise_twin_is_what_the_simulator_draws_with_that_noise_seed(gri_store, tmp_path):
    twin = redraw_noise(gri_store, tmp_path / "twin", noise_seed=3, progress=False)
    direct = simulate_galaxies(tmp_path / "direct", 16, size=32, bands="g,r,i", seed=3, progress=False,
                               psf="kolmogorov", noise_seed=3)
    # the twin takes the old noise off float32 pixels: equal to float32 rounding
    x, y = twin.read("x"), direct.read("x")
    assert np.abs(x - y).max() <= 2 * np.spacing(np.abs(y).max())
    np.testing.assert_array_equal(twin.read("truth"), direct.read("truth"))
    # and a twin of the twin, back to the catalog's own seeds, is the original store
    back = redraw_noise(twin, tmp_path / "back", noise_seed=0, progress=False)
    zero = simulate_galaxies(tmp_path / "zero", 16, size=32, bands="g,r,i", seed=3, progress=False,
                             psf="kolmogorov", noise_seed=0)
    assert np.abs(back.read("x") - zero.read("x")).max() <= 4 * np.spacing(np.abs(y).max())


def test_noise_twin_of_a_subset_follows_the_ids(r_store, r_twin, tmp_path):
    from deepfield.data.store import copy_store

    rows = np.array([3, 17, 40, 41])
    part = copy_store(r_store, tmp_path / "part", rows)
    twin = redraw_noise(part, tmp_path / "part7", noise_seed=7, progress=False)
    np.testing.assert_allclose(twin.read("x"), r_twin.read("x", rows), rtol=0, atol=1e-3)


def test_noise_twin_of_correlated_noise_keeps_the_correlation(tmp_path):
    store = simulate_galaxies(tmp_path / "cn", 12, size=32, seed=2, correlated_noise=True, depth=23.0,
                              progress=False)
    twin = redraw_noise(store, tmp_path / "cn5", noise_seed=5, progress=False)
    sigma = store.column("noise_sigma")[:, None, None]
    corner = twin.read("x")[:, 0, :10, :10].astype(np.float64) / sigma
    assert abs(corner.std() - 1.0) < 0.1
    assert np.mean(corner[:, :, 1:] * corner[:, :, :-1]) / np.mean(corner**2) > 0.3
    before = store.read("x")[:, 0, :10, :10] / sigma
    assert abs(np.corrcoef(before.ravel(), corner.ravel())[0, 1]) < 0.1


def test_noise_twin_bad_arguments_name_the_fix(r_store, r_twin, spectra_store, tmp_path):
    with pytest.raises(InputError, match="non-negative integer"):
        redraw_noise(r_store, tmp_path / "t", noise_seed=-1, progress=False)
    with pytest.raises(InputError, match="choose another --noise-seed"):
        redraw_noise(r_twin, tmp_path / "t", noise_seed=7, progress=False)
    with pytest.raises(InputError, match="deepfield simulate galaxies"):
        redraw_noise(spectra_store, tmp_path / "t", noise_seed=1, progress=False)
    with pytest.raises(InputError, match="another path"):
        redraw_noise(r_store, r_store.path, noise_seed=1, overwrite=True, progress=False)
    with pytest.raises(StoreError, match="overwrite"):
        redraw_noise(r_store, r_twin.path, noise_seed=8, progress=False)
    assert not (tmp_path / "t").exists()


def test_cli_noise_twin_and_its_bad_input(r_store, r_twin, tmp_path, capsys):
    from deepfield.cli._app import run_app

    with pytest.raises(SystemExit) as exit_info:
        run_app(["simulate", "galaxies", str(tmp_path / "t7"), "--like", str(r_store.path), "--noise-seed", "7",
                 "--no-progress"])
    assert exit_info.value.code == 0
    assert str(tmp_path / "t7") in capsys.readouterr().out
    np.testing.assert_array_equal(open_store(tmp_path / "t7").read("x"), r_twin.read("x"))
    for argv, message in ([["--like", str(r_store.path)], "--noise-seed 7"],
                          [["--like", str(r_store.path), "--noise-seed", "2", "--size", "16"], "drop them"],
                          [[], "--n 1000"]):
        with pytest.raises(SystemExit) as exit_info:
            run_app(["simulate", "galaxies", str(tmp_path / "bad"), *argv, "--no-progress"])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


# -- spectra -------------------------------------------------------------------------------------


def test_spectra_store_and_catalog(spectra_store):
    s = spectra_store
    assert s.kind == "spectrum" and s.sample_shape == (2000,)
    wl = s.wavelength
    assert wl[0] == pytest.approx(3600.0) and wl[-1] == pytest.approx(9000.0)
    assert s.units["ew_halpha"] == "Angstrom" and s.units["velocity_dispersion"] == "km/s"
    weights = np.stack([s.column(f"weight_{t}") for t in ("E", "Sbc", "Scd", "Im")], axis=1)
    assert np.all(weights > 0)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-9)
    # later types have stronger lines
    late = weights[:, 2] + weights[:, 3]
    assert np.corrcoef(late, s.column("ew_halpha"))[0, 1] > 0.3
    truth = s.read("truth")
    np.testing.assert_allclose(np.median(truth, axis=1), 1.0, rtol=1e-6)


def test_spectra_ivar_matches_the_noise(spectra_store):
    x, truth, ivar = (spectra_store.read(a) for a in ("x", "truth", "ivar"))
    pull = (x - truth) * np.sqrt(ivar)
    assert abs(pull.mean()) < 0.01 and abs(pull.std() - 1.0) < 0.01
    # per-pixel S/N at the median flux is the catalog snr
    snr = spectra_store.column("snr")
    at_median = 1.0 / np.sqrt(1.0 / np.median(ivar, axis=1))
    np.testing.assert_allclose(at_median, snr, rtol=0.25)


def _continuum_subtracted(spectra):
    from scipy.ndimage import median_filter

    return spectra - median_filter(spectra, size=(1, 41), mode="nearest")


def test_emission_line_at_the_redshifted_wavelength(spectra_store):
    wl = spectra_store.wavelength
    z = spectra_store.column("redshift")
    ew = spectra_store.column("ew_halpha")
    lines = _continuum_subtracted(spectra_store.read("truth"))
    strong = np.flatnonzero((ew > 30) & ((1 + z) * EMISSION_LINES["halpha"] < wl[-1] - 50))
    assert len(strong) >= 10
    for i in strong:
        expected = EMISSION_LINES["halpha"] * (1 + z[i])
        window = np.abs(wl - expected) < 30  # +- 30 A around the expected line
        peak = wl[window][np.argmax(lines[i, window])]
        assert abs(peak - expected) < 1.5 * expected * 4.6e-4  # within ~1.5 pixels


def test_redshift_recovered_from_the_lines(spectra_store):
    """Cross-correlate continuum-subtracted noisy spectra with the line list over a z grid."""
    wl = spectra_store.wavelength
    z_true = spectra_store.column("redshift")
    strong = np.flatnonzero(spectra_store.column("ew_halpha") > 25)[:40]
    lines = _continuum_subtracted(spectra_store.read("x", strong))
    z_grid = np.arange(0.0, 0.7, 2e-4)
    score = np.zeros((len(strong), z_grid.size))
    for rest in EMISSION_LINES.values():
        score += np.stack([np.interp(rest * (1 + z_grid), wl, row, left=0, right=0) for row in lines])
    z_est = z_grid[np.argmax(score, axis=1)]
    assert np.mean(np.abs(z_est - z_true[strong]) < 1e-3) > 0.9


def test_spectra_bad_input(tmp_path):
    with pytest.raises(InputError, match="at least one"):
        simulate_spectra(tmp_path / "s", 0, progress=False)
    with pytest.raises(InputError, match="strictly increasing"):
        simulate_spectra(tmp_path / "s", 2, wavelength=[5000.0] * 20, progress=False)
    with pytest.raises(InputError, match="templates"):
        simulate_spectra(tmp_path / "s", 2, z_range=(0.0, 200.0), progress=False)


# -- CLI -----------------------------------------------------------------------------------------


def test_cli_simulate_galaxies_and_spectra(tmp_path, capsys):
    from deepfield.cli._app import run_app

    with pytest.raises(SystemExit) as exit_info:  # run_app always exits, 0 on success
        run_app(["simulate", "galaxies", str(tmp_path / "g"), "--n", "3", "--size", "16",
                 "--bands", "g,r", "--seed", "4", "--no-progress"])
    assert exit_info.value.code == 0
    assert str(tmp_path / "g") in capsys.readouterr().out
    store = open_store(tmp_path / "g")
    assert len(store) == 3 and store.bands == ("g", "r")
    with pytest.raises(SystemExit) as exit_info:
        run_app(["simulate", "spectra", str(tmp_path / "s"), "--n", "5", "--seed", "1",
                 "--no-progress"])
    assert exit_info.value.code == 0
    assert len(open_store(tmp_path / "s")) == 5


@pytest.mark.parametrize("argv", [
    ["--n", "0"],
    ["--n", "2", "--size", "4"],
    ["--n", "2", "--bands", "r,w"],
    ["--n", "2", "--workers", "0"],
])
def test_cli_bad_input_exits_2(tmp_path, argv):
    from deepfield.cli._app import run_app

    with pytest.raises(SystemExit) as exit_info:
        run_app(["simulate", "galaxies", str(tmp_path / "bad"), *argv, "--no-progress"])
    assert exit_info.value.code == 2


def test_cli_existing_store_exits_2_in_a_subprocess(r_store):
    result = subprocess.run([sys.executable, "-c", "from deepfield.cli import main; main()",
                             "simulate", "spectra", str(r_store.path), "--n", "2"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "overwrite" in result.stderr


# --------------------------------------------------------------------------------------
# real morphologies (--morphology cosmos): the 5 real AEGIS galaxies through a ground-based survey

from pathlib import Path  # noqa: E402

from conftest import cli  # noqa: E402

AEGIS_F814W = Path(__file__).parent / "data" / "galsim-real" / "AEGIS_F814w_catalog.fits"


@pytest.fixture(scope="module")
def real_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("real") / "r"
    return simulate_galaxies(path, 10, size=48, seed=4, morphology="cosmos", cosmos=AEGIS_F814W,
                             progress=False)


def test_cosmos_morphology_keeps_each_sources_ident_and_magnitude(real_store):
    from astropy.io import fits

    table = fits.getdata(AEGIS_F814W, 1)
    rows = real_store.column("cosmos_index")
    assert real_store.column("cosmos_ident").tolist() == table["IDENT"][rows].tolist()
    assert np.allclose(real_store.column("magnitude"), table["MAG"][rows])
    assert len(set(rows.tolist())) > 2  # a random draw over the catalog, not one galaxy
    rotation = real_store.column("rotation")
    assert ((rotation >= 0) & (rotation < 360)).all() and np.ptp(rotation) > 90
    assert "truth" not in real_store.array_names and real_store.units["rotation"] == "deg"


def test_cosmos_morphology_flux_noise_and_psf_are_the_surveys(real_store):
    x = real_store.read("x").astype(np.float64)[:, 0]
    sigma = real_store.column("noise_sigma_r")
    # the total flux is the catalog magnitude's at zeropoint 30, up to the stamp's noise
    flux = 10 ** (-0.4 * (real_store.column("magnitude") - ZEROPOINT))
    assert np.allclose(real_store.column("flux_r"), flux)
    assert np.all(np.abs(x.sum(axis=(1, 2)) - flux) < 5 * sigma * 48 + 0.03 * flux)
    # noise: white at the recorded level, measured on the stamps' borders (6 pixels wide)
    border = np.ones((48, 48), bool)
    border[6:-6, 6:-6] = False
    residual = x[:, border] / sigma[:, None]
    assert residual.std() == pytest.approx(1.0, abs=0.06)
    rows = x[:, :6, :] / sigma[:, None, None]
    lag1 = np.mean(rows[:, :, 1:] * rows[:, :, :-1]) / np.mean(rows**2)
    assert abs(lag1) < 0.06  # whitened: no correlation left between neighbouring pixels
    assert np.allclose(real_store.read("ivar")[:, 0], (1 / sigma**2)[:, None, None], rtol=1e-6)
    assert (sigma >= real_store.column("whitened_sigma_r")).all()
    assert np.allclose(real_store.read("psf").sum(axis=(2, 3)), 1.0, atol=1e-5)


def test_cosmos_morphology_is_seeded_per_object(real_store, tmp_path):
    again = simulate_galaxies(tmp_path / "b", 10, size=48, seed=4, morphology="cosmos",
                              cosmos=AEGIS_F814W, progress=False, batch=3)
    assert again.fingerprint == real_store.fingerprint


def test_cli_simulate_cosmos_morphology_and_its_bad_input(tmp_path, capsys):
    out = tmp_path / "s"
    code, text = cli(capsys, "simulate", "galaxies", out, "--n", 3, "--size", 32, "--morphology", "cosmos",
                     "--cosmos", AEGIS_F814W, "--shear", "0.05,-0.02", "--no-progress")
    assert code == 0 and "3 galaxies" in text
    assert open_store(out).meta["provenance"]["parameters"]["shear"] == [0.05, -0.02]
    code, text = cli(capsys, "simulate", "galaxies", tmp_path / "t", "--n", 3, "--morphology", "cosmos",
                     "--no-progress")
    assert code == 2 and "--cosmos CATALOG" in text.replace("\n", "")
    missing = AEGIS_F814W.parent / "real_galaxy_catalog_23.5_example.fits"
    code, text = cli(capsys, "simulate", "galaxies", tmp_path / "u", "--n", 3, "--morphology", "cosmos",
                     "--cosmos", missing, "--no-progress")
    text = text.replace("\n", "")
    assert code == 2 and "real_galaxy_images.fits" in text and "row 0 (IDENT 100027)" in text
    assert not (tmp_path / "u").exists()
