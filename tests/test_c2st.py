"""Classifier two-sample test: a null control at 0.5, power against a different distribution,
the CLI's JSON, and named refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import blob_images, cli

import deepfield
from deepfield.errors import InputError
from deepfield.tasks import resolve_indices
from deepfield.tasks.c2st import c2st_auc, classifier_two_sample_test, objects_needed
from deepfield.train import TrainSettings, train

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"max_epochs": 40, "patience": 10, "n_bootstrap": 300}


@pytest.fixture(scope="module")
def galaxies(tmp_path_factory):
    from deepfield.data.galaxies import simulate_galaxies

    return simulate_galaxies(tmp_path_factory.mktemp("gal") / "g", 320, size=32, seed=11, workers=1,
                             depth=23.0, progress=False)


@pytest.fixture(scope="module")
def vae(galaxies, tmp_path_factory):
    """A briefly trained VAE holding out half the store, so the C2ST has galaxies enough."""
    return train("vae", galaxies, tmp_path_factory.mktemp("vae") / "vae",
                 model_options={"latent_dim": 4, "channels": (8, 16, 16)},
                 settings=TrainSettings(epochs=2, batch_size=32, lr=2e-3, patience=0, progress=False,
                                        split_fractions=(0.4, 0.1, 0.5)))


def _in(value: float, interval) -> bool:
    return interval[0] <= value <= interval[1]


def test_c2st_auc_sits_at_one_half_for_one_distribution_and_near_one_for_another():
    """Two draws of the same blobs: AUC 0.5 inside its 95% interval. Blobs against noise of the
    same sigma (the galaxies taken out): AUC near 1, so the classifier has power."""
    first, _, _, _ = blob_images(160, seed=1)
    second, _, _, _ = blob_images(160, seed=2)
    null = c2st_auc(first, second, seed=0, **FAST)
    print("null", null["auc"], null["interval_95"], null["epochs"])
    assert _in(0.5, null["interval_95"]) and _in(null["auc"], null["interval_95"])
    assert null["interval_68"][0] >= null["interval_95"][0] and null["interval_68"][1] <= null["interval_95"][1]
    assert null["n_first"] == [80, 40, 40] and null["n_second"] == [80, 40, 40]
    assert 1 <= null["best_epoch"] <= null["epochs"] <= FAST["max_epochs"]
    noise = np.random.default_rng(3).normal(0, 0.3, first.shape).astype(np.float32)
    power = c2st_auc(first, noise, seed=0, **FAST)
    print("power", power["auc"], power["interval_95"], power["epochs"])
    assert power["auc"] > 0.9 and power["interval_95"][0] > 0.8 and power["p_value"] < 1e-6
    # seeded: the same numbers again
    assert c2st_auc(first, noise, seed=0, **FAST)["auc"] == power["auc"]


def test_controls_on_held_out_galaxies_and_samples_observed_alike(vae, galaxies):
    model = deepfield.load(vae)
    result = classifier_two_sample_test(model, galaxies, n=120, seed=0, snr_threshold=None, **FAST)
    assert result["n_held_out"] == 120 and result["prior"] == "N(0, I)"
    entry = result["subsets"]["all"]
    assert set(entry["tests"]) == {"model", "held-out vs held-out", "empty sky"}
    for test, r in entry["tests"].items():
        print(test, r["auc"], r["interval_95"], r["epochs"], r["best_epoch"])
        assert 0 <= r["auc"] <= 1 and _in(r["auc"], r["interval_95"])
    null, power = entry["tests"]["held-out vs held-out"], entry["tests"]["empty sky"]
    # two halves of the same galaxies: nothing to find
    assert _in(0.5, null["interval_95"]) and sum(null["n_first"]) + sum(null["n_second"]) == 120
    # galaxies against pure noise observed through the same PSFs and noise: told apart
    assert power["auc"] > 0.9
    assert entry["controls"] == {"null at 0.5": True, "power": True}
    assert sum(entry["tests"]["model"]["n_second"]) == entry["n_samples"]["model"] == 120


def test_cli_writes_the_json_and_subsets_by_snr(vae, galaxies, tmp_path, capsys):
    out = tmp_path / "c2st.json"
    code, text = cli(capsys, "evaluate", "c2st", vae, "--store", galaxies.path, "--out", out, "--max-epochs", 3,
                     "--snr-threshold", 1000, "--no-progress")
    assert code == 0, text
    assert "C2ST" in text and "empty sky" in text and "skipped" in text
    result = json.loads(out.read_text())
    held_out = result["n_held_out"]
    assert held_out == result["subsets"]["all"]["n_held_out"] >= objects_needed() * 2
    assert result["subsets"]["all"]["tests"]["model"]["epochs"] <= 3
    bright = result["subsets"]["snr > 1000"]
    rows = resolve_indices(galaxies, None, "test", deepfield.load(vae).record)
    assert rows.size == held_out and bright["n_held_out"] == int((galaxies.column("snr")[rows] > 1000).sum())
    assert "needs at least 80" in bright["skipped"]
    assert not list(tmp_path.glob(".*"))  # no temporary file left beside the JSON


def test_refusals_name_the_problem(vae, galaxies, tmp_path):
    from deepfield.data.store import create_store

    model = deepfield.load(vae)
    with pytest.raises(InputError, match=r"only 50 held-out galaxies.*needs at least 80"):
        classifier_two_sample_test(model, galaxies, n=50)
    pca = deepfield.load(train("pca", galaxies, tmp_path / "pca", model_options={"latent_dim": 2}))
    with pytest.raises(InputError, match="the C2ST needs a generative model.*PCA, which cannot sample"):
        classifier_two_sample_test(pca, galaxies)
    rows = np.arange(100)
    with create_store(tmp_path / "no_psf", (1, 32, 32), bands=("r",), pixel_scale=0.2,
                      arrays={"ivar": (1, 32, 32)}) as w:
        w.append(x=galaxies.read("x", rows), ivar=galaxies.read("ivar", rows), catalog={})
    with pytest.raises(InputError, match=r"has no 'psf'.*--psf and --ivar"):
        classifier_two_sample_test(model, w.store, split=None)
    with pytest.raises(InputError, match="prior 'flow'"):
        classifier_two_sample_test(model, galaxies, prior="flow")
    with pytest.raises(InputError, match="prior 'fitted'.*no fitted latent prior"):
        classifier_two_sample_test(model, galaxies, prior="fitted")
    with pytest.raises(InputError, match="max_epochs=0: give a whole number >= 1"):
        classifier_two_sample_test(model, galaxies, max_epochs=0)
    broken, _, _, _ = blob_images(40)
    broken[3, 0, 5, 5] = np.nan
    with pytest.raises(InputError, match="second set has 1 NaN or infinite pixels"):
        c2st_auc(blob_images(40)[0], broken)
    few, _, _, _ = blob_images(30)
    with pytest.raises(InputError, match="30 images: the classifier needs at least 40 per set"):
        c2st_auc(few, few)


def test_a_fitted_prior_is_scored_beside_n01(vae, galaxies, tmp_path):
    """With a latent flow the model's samples go through it, and N(0, I) codes are scored too
    ('fitted': a one-epoch flow may score held-out codes below N(0, I), which 'auto' passes over)."""
    import shutil

    from deepfield.train.prior import train_prior

    folder = shutil.copytree(vae, tmp_path / "vae")
    train_prior(folder, kind="nsf", epochs=1, progress=False)
    result = classifier_two_sample_test(deepfield.load(folder), galaxies, n=80, snr_threshold=None, prior="fitted",
                                        max_epochs=2, patience=1, n_bootstrap=50)
    assert result["prior"] == "flow"
    tests = result["subsets"]["all"]["tests"]
    assert set(tests) == {"model", "N(0, I) prior", "held-out vs held-out", "empty sky"}
    assert tests["N(0, I) prior"]["n_second"] == [40, 20, 20]
