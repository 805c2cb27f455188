"""Anomaly injection and scoring: each injector changes the image the way it says, labels are exact,
scores rank artefacts above normal objects, the ensemble is a rank average, NaNs are named."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from scipy.signal import fftconvolve
from conftest import cli

import deepfield
from deepfield.data.anomalies import ANOMALY_TYPES, ARTEFACTS, inject_anomalies
from deepfield.data.store import create_store, open_store
from deepfield.errors import InputError
from deepfield.tasks.anomaly import (calibrate_scores, calibrate_table, detection_metrics, ensemble_scores,
                                    score_metadata, score_store, skipped_ids)


@pytest.fixture(scope="module")
def galaxies(tmp_path_factory):
    from deepfield.data.galaxies import simulate_galaxies

    return simulate_galaxies(tmp_path_factory.mktemp("gal") / "clean", 40, size=32, bands=("g", "r"), seed=5,
                             depth=24.0, progress=False)


@pytest.fixture(scope="module")
def injected(galaxies, tmp_path_factory):
    """32 of 40 galaxies with one anomaly each, 4 of every type."""
    return inject_anomalies(galaxies, tmp_path_factory.mktemp("odd") / "odd", fraction=0.8, seed=3, progress=False)


def _cases(clean, odd, kind):
    """(row, x before, x after, truth before, truth after, psf, sigma, params) per object of `kind`."""
    rows = np.flatnonzero(odd.column("anomaly_type") == kind)
    assert rows.size == 4
    for r in rows:
        sigma = 1 / np.sqrt(clean.read("ivar", [r])[0][:, 0, 0])
        yield (r, clean.read("x", [r])[0].astype(np.float64), odd.read("x", [r])[0].astype(np.float64),
               clean.read("truth", [r])[0].astype(np.float64), odd.read("truth", [r])[0].astype(np.float64),
               clean.read("psf", [r])[0].astype(np.float64), sigma, json.loads(odd.column("anomaly_params")[r]))


def _observe(truth, psf):
    return np.stack([fftconvolve(truth[c], psf[c], mode="same") for c in range(truth.shape[0])])


def test_labels_cover_exactly_the_injected_objects_and_the_input_is_untouched(galaxies, injected, tmp_path):
    kinds = injected.column("anomaly_type")
    assert (kinds != "none").sum() == round(0.8 * 40)
    counts = {t: int((kinds == t).sum()) for t in ANOMALY_TYPES}
    assert set(counts.values()) == {4}  # split evenly over the 8 types
    changed = ~np.all(injected.read("x") == galaxies.read("x"), axis=(1, 2, 3))
    assert np.array_equal(changed, kinds != "none")
    assert np.all(injected.column("anomaly_strength")[kinds == "none"] == 0)
    assert np.array_equal(injected.ids, galaxies.ids)
    # the input is untouched, and the same seed gives the same store
    files = sorted(p for p in galaxies.path.rglob("*") if p.is_file())
    before = {p: p.read_bytes() for p in files}
    again = inject_anomalies(galaxies, tmp_path / "again", fraction=0.8, seed=3, progress=False)
    assert sorted(p for p in galaxies.path.rglob("*") if p.is_file()) == files
    assert all(p.read_bytes() == content for p, content in before.items())
    assert again.fingerprint == injected.fingerprint
    other = inject_anomalies(galaxies, tmp_path / "other", fraction=0.1, seed=4, progress=False)
    assert other.fingerprint != injected.fingerprint and (other.column("anomaly_type") != "none").sum() == 4
    assert other.meta["provenance"]["anomalies"]["seed"] == 4


def test_cosmic_rays_are_sharp_bright_and_bypass_the_psf(galaxies, injected):
    for _, x0, x1, t0, t1, psf, sigma, p in _cases(galaxies, injected, "cosmic_ray"):
        diff = x1 - x0
        band = p["band"]
        assert np.all(diff[1 - band] == 0) and np.array_equal(t0, t1)  # one band; not sky light
        hit = np.argwhere(diff[band] != 0)
        assert 1 <= len(hit) <= 8
        assert np.all(diff[band][diff[band] != 0] > 3.9 * sigma[band])  # every pixel >= 4 sigma
        # one pixel wide: the track's minor-axis spread is far below the PSF's (FWHM / 2.355)
        minor = np.sqrt(np.linalg.eigvalsh(np.cov(hit.T.astype(float)) if len(hit) > 1 else np.zeros((2, 2)))[0])
        psf_sigma = np.sqrt((psf[band] * np.add.outer((np.arange(25) - 12.0) ** 2, np.zeros(25))).sum())
        assert minor < 0.5 * psf_sigma
        # sharper than any star: the brightest pixel holds more of the deposit than the PSF's peak
        assert diff[band].max() / diff[band].sum() > psf[band].max()


def test_satellite_trails_cross_the_stamp_with_the_psf_width(galaxies, injected):
    for r, x0, x1, t0, t1, psf, sigma, p in _cases(galaxies, injected, "satellite_trail"):
        band = p["band"]
        diff = x1 - x0
        assert np.all(diff[1 - band] == 0)
        assert np.isclose(diff[band].max() / sigma[band], injected.column("anomaly_strength")[r], rtol=1e-4)
        bright = diff[band] > 0.5 * diff[band].max()
        edge = np.argwhere(bright & np.pad(np.zeros((30, 30), bool), 1, constant_values=True))
        sides = {side for y, x in edge for side, on in (("bottom", y == 0), ("top", y == 31), ("left", x == 0),
                                                        ("right", x == 31)) if on}
        span = np.max(np.hypot(*(edge[:, None] - edge[None]).transpose(2, 0, 1)))
        assert len(sides) >= 2 and span > 16  # it enters on one side and leaves on another
        # width across the trail: half-max area / length ~ the PSF's FWHM (half-max area of the stamp)
        length = np.hypot(*(edge.max(0) - edge.min(0)))
        fwhm = 2 * np.sqrt((psf[band] >= 0.5 * psf[band].max()).sum() / np.pi)
        assert 0.6 * fwhm < bright.sum() / length < 1.5 * fwhm
        # sky light: in truth too, so x - x0 = truth added (*) PSF away from the stamp edges
        added = _observe(t1 - t0, psf)[band]
        assert np.allclose(added[12:-12, 12:-12], diff[band][12:-12, 12:-12], atol=1e-3 * diff[band].max())


def test_bad_columns_are_one_column_hot_or_dead(galaxies, injected):
    for r, x0, x1, t0, t1, psf, sigma, p in _cases(galaxies, injected, "bad_column"):
        band, col = p["band"], p["column"]
        diff = x1 - x0
        changed = np.argwhere(diff != 0)
        assert set(changed[:, 0]) == {band} and set(changed[:, 2]) == {col} and len(changed) == 32
        strength = injected.column("anomaly_strength")[r]
        if p["kind"] == "hot":
            assert strength > 0 and np.allclose(diff[band, :, col], strength * sigma[band], rtol=1e-5)
        else:  # dead: a constant level, no signal and no noise
            assert strength < 0 and np.allclose(x1[band, :, col], strength * sigma[band], rtol=1e-5)
        assert np.array_equal(t0, t1)


def test_saturated_stars_clip_and_bleed_vertically_conserving_charge(galaxies, injected):
    for _, x0, x1, t0, t1, psf, sigma, p in _cases(galaxies, injected, "saturated_star"):
        star = _observe(t1 - t0, psf)  # the star is a point source in truth: its light is the PSF
        for c in range(2):
            level = p["saturation"][c]
            assert x1[c].max() <= level * (1 + 1e-5)
            saturated = np.argwhere(x1[c] >= level * (1 - 1e-5))
            unclipped = np.argwhere(x0[c] + star[c] > level)
            height = np.ptp(saturated[:, 0]) + 1
            width = np.ptp(saturated[:, 1]) + 1
            assert height > width and height > np.ptp(unclipped[:, 0]) + 1  # bleeding runs along the columns
            assert set(saturated[:, 1]) == set(unclipped[:, 1])  # and never sideways
            for j in set(saturated[:, 1]):
                rows = saturated[saturated[:, 1] == j, 0]
                if rows.min() > 0 and rows.max() < 31:  # the trail stayed on the stamp: charge conserved
                    assert np.isclose(x1[c, :, j].sum(), (x0[c] + star[c])[:, j].sum(), rtol=1e-4)


def test_rings_add_flux_at_the_stated_radius(galaxies, injected):
    from deepfield.data.anomalies import _elliptical_radius

    for _, x0, x1, t0, t1, psf, sigma, p in _cases(galaxies, injected, "ring"):
        added = (t1 - t0).sum(0)
        r = _elliptical_radius(added.shape, p["centre_yx"], p["e1"], p["e2"])
        mean_radius = (added * r).sum() / added.sum()
        assert abs(mean_radius - p["radius_pixels"]) < 0.1 * p["radius_pixels"]
        assert added[r < 0.5 * p["radius_pixels"]].sum() < 0.01 * added.sum()
        assert np.allclose(x1 - x0, _observe(t1 - t0, psf), atol=1e-3 * sigma.min())
        peak = (x1 - x0)[p["band"]].max() / sigma[p["band"]]
        assert 2.0 <= peak <= 6.0


def test_tidal_features_are_one_sided_shells(galaxies, injected):
    for _, x0, x1, t0, t1, psf, sigma, p in _cases(galaxies, injected, "tidal_feature"):
        added = (t1 - t0).sum(0)
        yy, xx = np.mgrid[:32, :32]
        cy = (added * yy).sum() / added.sum() - p["centre_yx"][0]
        cx = (added * xx).sum() / added.sum() - p["centre_yx"][1]
        assert np.hypot(cy, cx) > 0.4 * p["radius_pixels"]  # asymmetric: its light sits to one side
        offset = np.degrees(np.angle(np.exp(1j * (np.arctan2(cy, cx) - np.radians(p["angle_deg"])))))
        assert abs(offset) < 15
        assert np.allclose(x1 - x0, _observe(t1 - t0, psf), atol=1e-3 * sigma.min())


def test_blended_neighbours_are_another_galaxy_offset_by_its_size(galaxies, injected):
    for r, x0, x1, t0, t1, psf, sigma, p in _cases(galaxies, injected, "blended_neighbour"):
        other = galaxies.read("truth", [p["neighbour_row"]])[0].astype(np.float64)
        dy, dx = p["shift_yx"]
        shifted = np.roll(other, (dy, dx), axis=(1, 2))
        added = t1 - t0
        inside = added > 1e-6 * added.max()
        ratio = added[inside] / shifted[inside]
        assert np.allclose(ratio, ratio[0], rtol=1e-3)  # the neighbour's own profile and colour, scaled
        # offset: 1-2 x the sum of both half-light radii, at least a PSF FWHM, within 0.35 of the stamp
        hlr = galaxies.column("half_light_radius") / galaxies.pixel_scale
        size = hlr[r] + hlr[p["neighbour_row"]]
        fwhm = np.median([galaxies.column(f"psf_fwhm_{b}")[r] for b in "gr"]) / galaxies.pixel_scale
        assert min(max(size, fwhm), 11.2) - 1e-6 <= p["offset_pixels"] <= min(max(2 * size, fwhm), 11.2) + 1e-6
        # the neighbour's core lands at that offset from the galaxy's centre (whole-pixel shifts)
        yy, xx = np.mgrid[:32, :32]
        w = t0.sum(0)
        centre = np.array([(w * yy).sum() / w.sum(), (w * xx).sum() / w.sum()])
        core = np.unravel_index(np.argmax(added.sum(0)), (32, 32))
        assert abs(np.hypot(*(core - centre)) - p["offset_pixels"]) < 1.0
        assert np.allclose(x1 - x0, _observe(added, psf), atol=1e-3 * sigma.min())


def test_extreme_colours_scale_one_band_by_the_factor(galaxies, injected):
    for r, x0, x1, t0, t1, psf, sigma, p in _cases(galaxies, injected, "extreme_colour"):
        band, f = p["band"], p["factor"]
        assert 3 <= f <= 10 and np.isclose(injected.column("anomaly_strength")[r], f)
        ratio_before = t0[band].sum() / t0[1 - band].sum()
        ratio_after = t1[band].sum() / t1[1 - band].sum()
        assert np.isclose(ratio_after / ratio_before, f, rtol=1e-4)
        assert np.array_equal(x1[1 - band], x0[1 - band])
        # the noiseless galaxy is scaled, the noise is not: x - x0 = (f - 1) truth (*) PSF
        assert np.allclose(x1[band] - x0[band], (f - 1) * _observe(t0, psf)[band], atol=1e-3 * sigma[band])
        name = f"flux_{galaxies.bands[band]}"
        assert np.isclose(injected.column(name)[r], f * galaxies.column(name)[r], rtol=1e-5)


def test_bad_injection_requests_fail_clearly(blob_store, tmp_path):
    with pytest.raises(InputError, match="one band"):
        inject_anomalies(blob_store, tmp_path / "a", types=("extreme_colour",), progress=False)
    with pytest.raises(InputError, match="unknown anomaly type"):
        inject_anomalies(blob_store, tmp_path / "b", types="cosmic_rays", progress=False)
    with pytest.raises(InputError, match="rounds to no anomalies"):
        inject_anomalies(blob_store, tmp_path / "c", fraction=0.001, progress=False)
    with pytest.raises(InputError, match="never modified"):
        inject_anomalies(blob_store, blob_store.path, overwrite=True, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


@pytest.fixture(scope="module")
def blob_models(blob_store, tmp_path_factory):
    from deepfield.train import TrainSettings, train

    root = tmp_path_factory.mktemp("models")
    odd = inject_anomalies(blob_store, root / "odd", fraction=0.25, types=ARTEFACTS, seed=1, progress=False)
    pca = train("pca", blob_store, root / "pca", model_options={"latent_dim": 8},
                settings=TrainSettings(progress=False))
    return odd, pca


def test_reconstruction_scores_rank_artefacts_above_normal_objects(blob_models):
    odd, pca = blob_models
    for norm in ("l2", "l1"):
        table = score_store(odd, "reconstruction", pca, norm=norm, progress=False)
        assert table.column("id").to_pylist() == odd.ids.tolist()
        metrics = detection_metrics(table, k=20)
        print(norm, {k: round(v["auroc"], 3) for k, v in metrics.items()})
        assert metrics["artefacts"]["auroc"] > 0.9
        assert all(metrics[t]["auroc"] > 0.8 for t in ARTEFACTS)
    # higher = more anomalous, rank 1 the highest
    score, rank = table.column("score").to_numpy(), table.column("rank").to_numpy()
    assert rank[np.argmax(score)] == 1 and sorted(rank) == list(range(1, len(rank) + 1))


def test_rank_average_ensemble_on_a_hand_built_example():
    a = pa.table({"id": [1, 2, 3, 4], "score": [0.1, 0.4, 0.3, 9.0]})
    b = pa.table({"id": [4, 3, 2, 1, 7], "score": [-5.0, 2.0, 2.0, 1.0, 0.0]})  # a tie; id 7 only here
    e = ensemble_scores({"a": a, "b": b})
    assert e.column("id").to_pylist() == [1, 2, 3, 4]
    # ranks / n: a -> 1/4, 3/4, 2/4, 4/4; b (ids 1..4: 1, 2, 2, -5) -> 2/4, 3.5/4, 3.5/4, 1/4
    expected = np.array([(1 + 2) / 8, (3 + 3.5) / 8, (2 + 3.5) / 8, (4 + 1) / 8])
    assert np.allclose(e.column("score").to_numpy(), expected)
    assert e.column("rank").to_pylist() == [4, 1, 2, 3]
    with pytest.raises(InputError, match="two or more"):
        ensemble_scores([a])


def test_calibration_ranks_a_faint_outlier_above_bright_normal_objects(blob_models):
    rng = np.random.default_rng(0)
    magnitude = rng.uniform(18, 25, 2000)
    # normal objects: a misfit growing 10x per 2.5 mag brighter, 10% scatter; plus 10 outliers at
    # 3x the misfit of their magnitude, all of them faint
    score = 10 ** (-0.4 * (magnitude - 25)) * rng.lognormal(0, 0.1, 2000)
    outliers = np.flatnonzero(magnitude > 24)[:10]
    score[outliers] *= 3
    z = calibrate_scores(score, magnitude)
    assert np.all(np.isin(np.argsort(-z)[:10], outliers))  # calibrated: the outliers first
    assert not np.isin(np.argsort(-score)[:10], outliers).any()  # raw: bright normal galaxies first
    normal = np.setdiff1d(np.arange(2000), outliers)
    assert abs(np.median(z[normal])) < 0.1 and 0.8 < np.std(z[normal]) < 1.25  # a z-score of the normal ones
    odd, pca = blob_models
    table = score_store(odd, "reconstruction", pca, calibrate="magnitude", progress=False)
    raw = score_store(odd, "reconstruction", pca, progress=False).column("score").to_numpy()
    assert np.array_equal(table.column("raw_score").to_numpy(), raw)
    assert np.allclose(table.column("score").to_numpy(), calibrate_scores(raw, odd.column("magnitude")))
    assert np.array_equal(calibrate_table(score_store(odd, "reconstruction", pca, progress=False), odd,
                                          "magnitude").column("score").to_numpy(), table.column("score").to_numpy())
    with pytest.raises(InputError, match="no catalog column 'mag'"):
        score_store(odd, "reconstruction", pca, calibrate="mag", progress=False)
    with pytest.raises(InputError, match="already calibrated"):
        calibrate_table(table, odd, "magnitude")


def test_nan_objects_are_named_and_skipped_only_when_asked(blob_store, blob_models, tmp_path):
    _, pca = blob_models
    x = blob_store.read("x", np.arange(20)).copy()
    x[[3, 11], 0, 4, 5] = np.nan
    with create_store(tmp_path / "nan", (1, 16, 16), bands=("r",), pixel_scale=0.2, allow_nonfinite=True) as w:
        w.append(x=x, catalog={"id": np.arange(100, 120)})
    store = open_store(tmp_path / "nan")
    with pytest.raises(InputError, match=r"2 object\(s\).*ids: 103, 111.*skip_nan"):
        score_store(store, "reconstruction", pca, progress=False)
    table = score_store(store, "reconstruction", pca, skip_nan=True, progress=False)
    assert table.num_rows == 18 and not {103, 111} & set(table.column("id").to_pylist())
    assert skipped_ids(table) == [103, 111] and np.isfinite(table.column("score").to_numpy()).all()


def test_vae_elbo_and_latent_density_scores(blob_store):
    from deepfield.models import VAE, GaussianMixturePrior, LatentPriorConfig, VAEConfig
    from deepfield.data.batches import iterate_batches

    torch.manual_seed(0)
    vae = VAE(VAEConfig(input_shape=(1, 16, 16), latent_dim=3, channels=(8, 16)))
    vae.fit_normalisation(blob_store.read("x"))  # untrained: the scores' bookkeeping is tested here
    vae.eval()
    with pytest.raises(InputError, match="train flow"):
        score_store(blob_store, "density", vae, progress=False)
    idx = np.arange(40)
    a = score_store(blob_store, "elbo", vae, indices=idx, progress=False, seed=1)
    b = score_store(blob_store, "elbo", vae, indices=idx, progress=False, seed=1)
    assert np.array_equal(a.column("score").to_numpy(), b.column("score").to_numpy())  # seeded
    assert np.allclose(a.column("score").to_numpy(), a.column("nll").to_numpy() + a.column("kl").to_numpy())
    batch = next(iterate_batches(blob_store, idx, vae, idx.size))
    with torch.no_grad():
        codes = vae.encode_batch(batch)
        prior = GaussianMixturePrior(LatentPriorConfig(input_shape=(3,), kind="gmm", components=2))
        prior.fit_normalisation(codes.numpy())
        prior.fit_codes(prior.normalise(codes).numpy())
        vae.prior = prior
        expected = -prior.log_prob(codes).double().numpy()
    d = score_store(blob_store, "density", vae, indices=idx, progress=False, code="mean")
    assert np.allclose(d.column("score").to_numpy(), expected, rtol=1e-5)
    with pytest.raises(InputError, match="pixelcnn"):
        score_store(blob_store, "pixelcnn", vae, progress=False)
    with pytest.raises(InputError, match="gan"):
        score_store(blob_store, "gan", vae, progress=False)


def test_cli_inject_score_and_gallery(capsys, blob_store, blob_models, tmp_path):
    _, pca = blob_models
    code, out = cli(capsys, "inject", blob_store.path, "--out", tmp_path / "odd", "--fraction", 0.1, "--types",
                    "cosmic_ray,bad_column", "--seed", 2, "--no-progress")
    assert code == 0 and "cosmic_ray 12" in out and "bad_column 12" in out
    code, out = cli(capsys, "anomalies", tmp_path / "odd", "--model", pca, "--out", tmp_path / "s.parquet",
                    "--gallery", tmp_path / "gallery", "--top", 6, "--show", 5, "--no-progress")
    assert code == 0 and "AUROC" in out and "cosmic_ray" in out
    table = pq.read_table(tmp_path / "s.parquet")
    assert table.num_rows == 240 and {"id", "score", "rank", "anomaly_type"} <= set(table.column_names)
    odd = open_store(tmp_path / "odd")
    assert np.allclose(table.column("score").to_numpy(),
                       score_store(odd, "reconstruction", deepfield.load(pca), progress=False).column("score").to_numpy())
    page = (tmp_path / "gallery" / "index.html").read_text()
    assert "gallery_01.png" in page and (tmp_path / "gallery" / "gallery_01.png").stat().st_size > 5000
    assert "AUROC" in page
    code, out = cli(capsys, "anomalies", tmp_path / "odd", "--method", "ensemble", "--models",
                    f"{pca},{pca}:reconstruction", "--calibrate", "magnitude", "--out", tmp_path / "e.parquet",
                    "--no-progress")
    assert code == 0 and pq.read_table(tmp_path / "e.parquet").num_rows == 240
    # bad input: exit code 2 with the fix
    code, out = cli(capsys, "anomalies", tmp_path / "odd", "--method", "ensemble", "--models", pca, "--out",
                    tmp_path / "f.parquet")
    assert code == 2 and "two or more models" in out
    code, out = cli(capsys, "anomalies", tmp_path / "odd", "--model", pca, "--out", tmp_path / "s.parquet")
    assert code == 2 and "--overwrite" in out
    code, out = cli(capsys, "inject", blob_store.path, "--out", tmp_path / "x", "--types", "extreme_colour")
    assert code == 2 and "one band" in out


@pytest.fixture(scope="module")
def holes(galaxies, tmp_path_factory):
    """10 of 40 galaxies with a region whose signal is gone (zeroed in one band, or subtracted in all)."""
    return inject_anomalies(galaxies, tmp_path_factory.mktemp("holes") / "holes", fraction=0.25,
                            types="missing_signal", seed=2, progress=False)


def test_missing_signal_removes_the_light_of_a_box_over_the_galaxy(galaxies, holes):
    rows = np.flatnonzero(holes.column("anomaly_type") == "missing_signal")
    assert rows.size == 10
    kinds = set()
    for r in rows:
        x0, x1 = galaxies.read("x", [r])[0].astype(np.float64), holes.read("x", [r])[0].astype(np.float64)
        truth, psf = galaxies.read("truth", [r])[0].astype(np.float64), galaxies.read("psf", [r])[0].astype(np.float64)
        sigma = 1 / np.sqrt(galaxies.read("ivar", [r])[0][:, 0, 0])
        p = json.loads(holes.column("anomaly_params")[r])
        y0, y1, x0_, x1_ = p["box_yx"]
        inside = np.zeros(x0.shape[1:], bool)
        inside[y0:y1, x0_:x1_] = True
        assert 0.2 * 32 <= y1 - y0 <= 0.5 * 32 and 0.2 * 32 <= x1_ - x0_ <= 0.5 * 32
        yy, xx = np.mgrid[:32, :32]
        light = truth.sum(0)
        cy, cx = (light * yy).sum() / light.sum(), (light * xx).sum() / light.sum()
        assert y0 <= cy <= y1 and x0_ <= cx <= x1_  # over the galaxy's core
        changed = np.argwhere(x1 != x0)
        assert inside[changed[:, 1], changed[:, 2]].all()  # nothing outside the box moves
        assert np.array_equal(holes.read("truth", [r])[0], galaxies.read("truth", [r])[0])  # not sky light
        observed = _observe(truth, psf)
        if p["kind"] == "zero":  # a dead region: one band, no signal and no noise
            assert len(p["bands"]) == 1 and np.all(x1[p["bands"][0]][inside] == 0)
        else:  # the galaxy's light subtracted in every band; the noise (x - observed) stays as it was
            assert p["bands"] == [0, 1]
            assert np.allclose(x1[:, inside], (x0 - observed)[:, inside], atol=1e-4 * sigma.min())
        removed = np.sqrt(sum(((np.clip(observed[c][inside], 0, None) / sigma[c]) ** 2).sum() for c in p["bands"]))
        assert np.isclose(holes.column("anomaly_strength")[r], removed, rtol=1e-3)
        kinds.add(p["kind"])
    assert kinds == {"zero", "noise"}
    # not among the default types: a seed injects what it did before the type existed
    assert "missing_signal" not in ANOMALY_TYPES


def test_local_score_flags_a_region_without_noise_that_a_mean_chi2_misses(holes, tmp_path):
    from sklearn.metrics import roc_auc_score

    from deepfield.data.galaxies import simulate_galaxies
    from deepfield.train import TrainSettings, train

    # PCA fitted on other galaxies of the same survey, so the scored galaxies' noise is not in its components
    other = simulate_galaxies(tmp_path / "other", 300, size=32, bands=("g", "r"), seed=6, depth=24.0, progress=False)
    pca = deepfield.load(train("pca", other, tmp_path / "pca", model_options={"latent_dim": 8},
                               settings=TrainSettings(progress=False)))
    local = score_store(holes, "local", pca, progress=False)
    l2 = score_store(holes, "reconstruction", pca, progress=False)
    parts = {k: local.column(k).to_numpy() for k in ("excess", "quiet", "missing")}
    assert np.allclose(local.column("score").to_numpy(), np.maximum.reduce(list(parts.values())))
    labels = np.asarray(holes.column("anomaly_type"), dtype=object)
    params = [json.loads(p) if p else {} for p in holes.column("anomaly_params")]
    zero = np.array([p.get("kind") == "zero" for p in params])
    faint = zero & (holes.column("anomaly_strength") < 30)  # where the model draws little light in the dead region
    normal = labels == "none"
    # a dead region's 4x4 windows hold almost no residual power: P(chi^2_16 < it) is 1e-10 or less, where a normal
    # galaxy's quietest window of ~1,700 sits near 1 / 1,700
    assert faint.sum() >= 4 and parts["quiet"][faint].min() > 2 * parts["quiet"][normal].max()
    assert 2 < np.median(parts["quiet"][normal]) < 5
    # the stamp's mean chi^2 barely moves when a few dozen of its 2,048 pixels lose their noise (and falls, if it
    # moves): it cannot tell the dead regions from normal galaxies, and the local score can
    y, sel = zero[zero | normal], zero | normal
    assert roc_auc_score(y, l2.column("score").to_numpy()[sel]) < 0.65
    assert roc_auc_score(y, local.column("score").to_numpy()[sel]) > 0.9
    with pytest.raises(InputError, match="window"):
        score_store(holes, "local", pca, window=64, progress=False)


def test_weighted_ensembles_and_weights_fitted_on_a_validation_store():
    from deepfield.tasks.anomaly import fit_ensemble

    rng = np.random.default_rng(0)
    n, labels = 2000, np.array(["none"] * 1900 + ["cosmic_ray"] * 50 + ["ring"] * 50, dtype=object)

    def member(shift_rays, shift_rings, seed):
        r = np.random.default_rng(seed)
        score = r.normal(0, 1, n)
        score[labels == "cosmic_ray"] += shift_rays
        score[labels == "ring"] += shift_rings
        return pa.table({"id": np.arange(n), "score": score, "anomaly_type": labels})

    def members(seed):  # 'rays' finds cosmic rays, 'rings' finds rings, 'noise' finds nothing
        return {"rays": member(4.0, 0.0, seed), "rings": member(0.0, 4.0, seed + 1), "noise": member(0, 0, seed + 2)}

    weights = fit_ensemble(members(10), metric="aupr")
    assert weights["noise"] == 0 and weights["rays"] > 0 and weights["rings"] > 0
    assert np.isclose(sum(weights.values()), 1)
    test = members(20)
    fitted = detection_metrics(ensemble_scores(test, weights=weights, combine="zscore"))["all"]["aupr"]
    equal = detection_metrics(ensemble_scores(test, combine="rank"))["all"]["aupr"]
    single = max(detection_metrics(t)["all"]["aupr"] for t in test.values())
    assert fitted > single and fitted > equal
    # the z-score rule: robust z of each member, weighted mean
    e = ensemble_scores(test, weights={"rays": 3, "rings": 1}, combine="zscore")
    z = {k: (t.column("score").to_numpy() - np.median(t.column("score").to_numpy())) for k, t in test.items()}
    z = {k: v / (1.4826 * np.median(np.abs(v))) for k, v in z.items()}
    assert np.allclose(e.column("score").to_numpy(), 0.75 * z["rays"] + 0.25 * z["rings"])
    assert score_metadata(e)["members"] == ["rays", "rings"] and score_metadata(e)["weights"] == {"rays": 0.75,
                                                                                                  "rings": 0.25}
    with pytest.raises(InputError, match="not among the members"):
        ensemble_scores(test, weights={"ray": 1})
    with pytest.raises(InputError, match="zscore"):
        ensemble_scores(test, combine="mean")



def test_posterior_density_score_is_the_kl_from_posterior_to_prior(blob_store):
    from torch.distributions import MultivariateNormal, Normal, kl_divergence

    from deepfield.data.batches import iterate_batches
    from deepfield.models import VAE, GaussianMixturePrior, LatentPriorConfig, VAEConfig

    torch.manual_seed(0)
    vae = VAE(VAEConfig(input_shape=(1, 16, 16), latent_dim=3, channels=(8, 16)))
    vae.fit_normalisation(blob_store.read("x"))
    vae.eval()
    idx = np.arange(40)
    batch = next(iterate_batches(blob_store, idx, vae, idx.size))
    with torch.no_grad():
        mean, log_var, _ = vae.posterior_batch(batch)
        # a one-component mixture is a Gaussian, whose KL from a diagonal Gaussian is exact
        prior = GaussianMixturePrior(LatentPriorConfig(input_shape=(3,), kind="gmm", components=1))
        # fitted to draws moved and widened, so each posterior costs a few nats under it
        draws = (2 * (mean + (0.5 * log_var).exp() * torch.randn(mean.shape)) + 1).numpy()
        prior.fit_normalisation(draws)
        prior.fit_codes(prior.normalise(torch.from_numpy(draws)).numpy())
        vae.prior = prior
        mixture = prior._mixture().component_distribution
        loc = prior.data_offset + prior.data_scale * mixture.loc[0]
        tril = prior.data_scale[:, None] * mixture.scale_tril[0]
        q = MultivariateNormal(mean, scale_tril=torch.diag_embed((0.5 * log_var).exp()))
        exact = kl_divergence(q, MultivariateNormal(loc, scale_tril=tril)).double().numpy()
    table = score_store(blob_store, "density", vae, indices=idx, samples=4000, seed=3, progress=False)
    kl = table.column("score").to_numpy()
    assert np.allclose(kl, table.column("cross_entropy").to_numpy() - table.column("entropy").to_numpy())
    entropy = Normal(mean, (0.5 * log_var).exp()).entropy().sum(1).double().numpy()
    assert np.allclose(table.column("entropy").to_numpy(), entropy, rtol=1e-5)
    assert exact.min() > 1 and np.allclose(kl, exact, atol=0.05, rtol=0.02)
    again = score_store(blob_store, "density", vae, indices=idx, samples=8, seed=3, progress=False)
    assert np.array_equal(again.column("score").to_numpy(),
                          score_store(blob_store, "density", vae, indices=idx, samples=8, seed=3,
                                      progress=False).column("score").to_numpy())  # seeded
    with pytest.raises(InputError, match="posterior"):
        score_store(blob_store, "density", vae, indices=idx, code="median", progress=False)


def test_cli_ensemble_weights_fitted_on_another_injected_store(capsys, blob_store, blob_models, tmp_path):
    from deepfield.train import TrainSettings, train

    odd, pca = blob_models
    small = train("pca", blob_store, tmp_path / "pca2", model_options={"latent_dim": 1},
                  settings=TrainSettings(progress=False))
    validation = inject_anomalies(blob_store, tmp_path / "val", fraction=0.25, types=ARTEFACTS, seed=7, progress=False)
    code, out = cli(capsys, "anomalies", odd.path, "--method", "ensemble", "--models", f"{pca},{small}",
                    "--combine", "zscore", "--fit-on", validation.path, "--out", tmp_path / "e.parquet",
                    "--no-progress")
    assert code == 0 and "weights fitted on" in out
    meta = score_metadata(pq.read_table(tmp_path / "e.parquet"))
    assert meta["combine"] == "zscore" and np.isclose(sum(meta["weights"].values()), 1)
    # the weights are those fit_ensemble gives on the validation store's scores
    from deepfield.tasks.anomaly import fit_ensemble

    tables = {f"{p.name}:reconstruction": score_store(validation, "reconstruction", deepfield.load(p), progress=False)
              for p in (pca, small)}
    expected = {k: v for k, v in fit_ensemble(tables, combine="zscore").items() if v > 0}
    assert meta["weights"] == pytest.approx(expected)
    code, out = cli(capsys, "anomalies", odd.path, "--method", "ensemble", "--models", f"{pca},{small}",
                    "--fit-on", odd.path, "--out", tmp_path / "f.parquet")
    assert code == 2 and "the store being scored" in out
    code, out = cli(capsys, "anomalies", odd.path, "--model", pca, "--fit-on", validation.path,
                    "--out", tmp_path / "g.parquet")
    assert code == 2 and "--method ensemble" in out
