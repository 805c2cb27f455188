"""`deepfield compare`: a store that differs from the observations in a known way (1.5x the sky
noise, i.e. a shallower survey) stands out; the other half of the observations does not."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import blob_images

from deepfield.cli._app import run_app
from deepfield.data.store import create_store
from deepfield.errors import InputError
from deepfield.tasks.compare import (auroc, compare_stores, likelihood_kind, likelihood_ratio_store,
                                     log_likelihood_store)


pytestmark = pytest.mark.usefixtures("one_thread")


def _write(path, x, bands=("r",), first_id=0):
    with create_store(path, x.shape[1:], bands=bands, pixel_scale=0.2, allow_nonfinite=True) as w:
        w.append(x=x, catalog={"id": np.arange(first_id, first_id + len(x))})
    return w.store


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Observations in two halves (same survey), a noisier survey, a PixelCNN and its background."""
    from deepfield.train import TrainSettings, train

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("compare")
    x, *_ = blob_images(400, 16, seed=1, sigma_noise=0.3)
    noisy, *_ = blob_images(200, 16, seed=2, sigma_noise=0.45)
    stores = {"obs": _write(d / "obs", x[:200]), "obs2": _write(d / "obs2", x[200:], first_id=200),
              "noisy": _write(d / "noisy", noisy)}
    settings = TrainSettings(epochs=15, batch_size=16, lr=5e-3, patience=0, progress=False, threads=1,
                             split_fractions=(0.5, 0.1, 0.4))
    options = {"channels": 8, "layers": 2, "mixtures": 2, "bits": 5}
    model = train("pixelcnn", stores["obs"], d / "pcnn", model_options=options, settings=settings)
    background = train("pixelcnn", stores["obs"], d / "bg", model_options={**options, "perturb_rate": 0.2},
                       settings=settings)
    return d, stores, model, background


def test_differing_survey_stands_out_and_same_survey_does_not(setup):
    d, stores, model, background = setup
    same = compare_stores(model, stores["obs"], stores["obs2"], d / "same", background=background, progress=False)
    other = compare_stores(model, stores["obs"], stores["noisy"], d / "other", background=background, progress=False)
    for name in ("bits_per_dim", "log_ratio_bits_per_dim"):
        s, o = same["statistics"][name], other["statistics"][name]
        assert o["ks_statistic"] > s["ks_statistic"] and o["w1"] > s["w1"], name
    bpd = other["statistics"]["bits_per_dim"]
    assert bpd["simulation"]["mean"] > bpd["reference"]["mean"]  # extra noise is less probable
    assert bpd["auroc"] > 0.95 and bpd["ks_pvalue"] < 1e-6
    assert same["statistics"]["bits_per_dim"]["ks_pvalue"] > 1e-3
    assert same["reference_rows"].startswith("the model's held-out test split")
    assert same["n_reference"] == pytest.approx(80, abs=25) and same["n_simulation"] == 200


def test_outputs_are_complete_and_consistent(setup):
    d, stores, model, background = setup
    summary = compare_stores(model, stores["obs"], stores["noisy"], d / "files", background=background,
                             progress=False)
    out = d / "files"
    table = pq.read_table(out / "scores.parquet")
    assert table.schema.field("bits_per_dim").metadata[b"unit"] == b"bit"
    assert table.schema.field("log_p").metadata[b"unit"] == b"nat"
    t = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    assert set(t["dataset"]) == {"reference", "simulation"} and len(t["id"]) == summary["n_reference"] + 200
    np.testing.assert_allclose(t["bits_per_dim"], -t["log_p"] / (256 * math.log(2)))
    np.testing.assert_allclose(t["log_ratio"], t["log_p"] - t["log_p_background"])
    assert ((t["bits_per_dim"] >= 0) & (t["bits_per_dim"] <= 5)).all()  # 5-bit quantisation: 0 ... 5 bits
    sim = t["dataset"] == "simulation"
    ids, ratio = likelihood_ratio_store(model, background, stores["noisy"], progress=False)
    np.testing.assert_array_equal(ids, t["id"][sim])
    np.testing.assert_allclose(ratio, t["log_ratio"][sim], rtol=1e-6)
    for png in ("bits_per_dim.png", "log_ratio.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "summary.json").read_text())
    assert saved["statistics"]["bits_per_dim"]["ks_statistic"] == summary["statistics"]["bits_per_dim"]["ks_statistic"]
    assert "exact log-probability" in saved["score"] and saved["likelihood"] == "log_prob"
    md = (out / "summary.md").read_text()
    assert "| bits_per_dim | bit |" in md and "| log_ratio_bits_per_dim | bit |" in md
    with pytest.raises(Exception, match="already exists"):
        compare_stores(model, stores["obs"], stores["noisy"], out, progress=False)


def test_vae_elbo_is_scored_and_called_a_bound(setup):
    from deepfield.train import TrainSettings, train

    d, stores, _, _ = setup
    vae = train("vae", stores["obs"], d / "vae", model_options={"latent_dim": 4, "channels": (8, 16)},
                settings=TrainSettings(epochs=15, batch_size=16, lr=3e-3, patience=0, progress=False, threads=1,
                                       split_fractions=(0.5, 0.1, 0.4)))
    import deepfield

    assert likelihood_kind(deepfield.load(vae)) == "elbo"
    ids, a = log_likelihood_store(vae, stores["noisy"], progress=False, seed=3)
    _, b = log_likelihood_store(vae, stores["noisy"], progress=False, seed=3)
    np.testing.assert_array_equal(a, b)  # seeded posterior samples
    same = compare_stores(vae, stores["obs"], stores["obs2"], d / "vae_same", progress=False)
    other = compare_stores(vae, stores["obs"], stores["noisy"], d / "vae_other", progress=False)
    assert "lower bound" in other["score"] and "elbo" in pq.read_table(d / "vae_other" / "scores.parquet").column_names
    assert other["statistics"]["bits_per_dim"]["ks_statistic"] > same["statistics"]["bits_per_dim"]["ks_statistic"]


def test_auroc_matches_its_definition():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 300), rng.normal(1, 1, 200)
    pairs = (b[None, :] > a[:, None]).mean()
    assert auroc(a, b) == pytest.approx(pairs)
    assert auroc(a, b) == pytest.approx(0.5 + 0.5 * math.erf(1 / 2), abs=0.05)  # Phi(1 / sqrt(2))


def test_mismatched_stores_and_models_are_refused(setup):
    d, stores, model, background = setup
    small, *_ = blob_images(10, 12, seed=3)
    with pytest.raises(InputError, match=r"expected \(1, 16, 16\), got \(1, 12, 12\)"):
        compare_stores(model, stores["obs"], _write(d / "small", small), d / "x1", progress=False)
    x, *_ = blob_images(10, 16, seed=3)
    with pytest.raises(InputError, match=r"expected \('r',\), got \('g',\)"):
        compare_stores(model, stores["obs"], _write(d / "gband", x, bands=("g",)), d / "x2", progress=False)
    from deepfield.train import TrainSettings, train

    other_bits = train("pixelcnn", stores["obs"], d / "bg4", model_options={"channels": 4, "layers": 1, "bits": 4},
                       settings=TrainSettings(epochs=1, progress=False, threads=1, split_fractions=(0.5, 0.1, 0.4)))
    with pytest.raises(InputError, match="quantise images differently"):
        compare_stores(model, stores["obs"], stores["noisy"], d / "x3", background=other_bits, progress=False)
    assert not (d / "x1").exists() and not (d / "x2").exists() and not (d / "x3").exists()


def test_nan_objects_are_named_or_skipped(setup, capsys):
    d, stores, model, _ = setup
    x, *_ = blob_images(20, 16, seed=4)
    x[[3, 7], 0, 5, 5] = np.nan
    bad = _write(d / "nan", x, first_id=100)
    with pytest.raises(InputError, match=r"ids \[103, 107\]"):
        log_likelihood_store(model, bad, progress=False)
    with pytest.warns(UserWarning, match=r"skipped 2 object\(s\).*ids \[103, 107\]"):
        ids, values = log_likelihood_store(model, bad, progress=False, skip_nonfinite=True)
    assert ids.tolist() == [i for i in range(100, 120) if i not in (103, 107)] and np.isfinite(values).all()
    with pytest.raises(SystemExit) as info:
        run_app(["compare", str(model), "--reference", str(stores["obs"].path), "--store", str(bad.path), "--out",
                 str(d / "cli_nan"), "--no-progress"])
    assert info.value.code == 2 and "ids [103, 107]" in capsys.readouterr().err.replace("\n", "")


def test_cli_compare_writes_the_folder(setup, capsys):
    d, stores, model, background = setup
    with pytest.raises(SystemExit) as info:
        run_app(["compare", str(model), "--reference", str(stores["obs"].path), "--store", str(stores["noisy"].path),
                 "--background", str(background), "--out", str(d / "cli"), "--no-progress"])
    text = capsys.readouterr().err
    assert info.value.code == 0, text
    assert "AUROC" in text and (d / "cli" / "summary.md").is_file() and (d / "cli" / "log_ratio.png").is_file()
