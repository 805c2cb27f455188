"""The model report: figures that are real images, a page that references them all, numbers
that agree with metrics.json, and errors that name what is wrong."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from deepfield.data.store import create_store
from deepfield.errors import DeepfieldError, InputError, ModelFolderError
from deepfield.report import make_report
from deepfield.train import TrainSettings, train

SETTINGS = TrainSettings(epochs=2, progress=False, batch_size=64)


def _blobs(path: Path, n: int = 160, seed: int = 0) -> Path:
    """Gaussian galaxies on 16x16 pixels of 0.2 arcsec with sky noise; magnitude and size known."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :16] - 7.5
    magnitude = rng.uniform(19, 24, n)
    half_light_radius = rng.uniform(0.3, 1.2, n)  # arcsec
    sigma = half_light_radius / 0.2 / 1.1774  # pixels
    flux = 10 ** (-0.4 * (magnitude - 27))
    image = flux[:, None, None] / (2 * np.pi * sigma[:, None, None] ** 2) * np.exp(
        -(xx**2 + yy**2) / (2 * sigma[:, None, None] ** 2))
    x = (image + rng.normal(0, 5, image.shape))[:, None].astype("f4")
    with create_store(path, (1, 16, 16), bands=("r",), pixel_scale=0.2,
                      units={"magnitude": "mag", "half_light_radius": "arcsec"}) as w:
        w.append(x=x, catalog={"magnitude": magnitude, "half_light_radius": half_light_radius})
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One image store, PCA / dense / conv autoencoders on it, and a PCA on another store."""
    root = tmp_path_factory.mktemp("report")
    store = _blobs(root / "blobs")
    models = {
        "pca": train("pca", store, root / "pca", model_options={"latent_dim": 4}, settings=SETTINGS),
        "ae": train("ae", store, root / "ae", model_options={"latent_dim": 4, "hidden": (32,)}, settings=SETTINGS),
        "conv-ae": train("conv-ae", store, root / "conv-ae",
                         model_options={"latent_dim": 4, "channels": (8, 16)}, settings=SETTINGS),
    }
    other = _blobs(root / "other-blobs", n=60, seed=1)
    models["other-pca"] = train("pca", other, root / "other-pca", model_options={"latent_dim": 2}, settings=SETTINGS)
    return {"root": root, "store": store, "other_store": other, **models}


def _check_pages_and_images(index: Path) -> str:
    """Every PNG in the folder is referenced, every reference exists, and none is blank."""
    import matplotlib.image as mpimg

    assert index.name == "index.html" and index.is_file()
    page = index.read_text()
    referenced = set(re.findall(r'<img src="([^"]+)"', page))
    written = {p.name for p in index.parent.glob("*.png")}
    assert written and referenced == written
    for name in written:
        image = mpimg.imread(index.parent / name)
        assert image.ndim == 3 and image.shape[2] in (3, 4)
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert float(image[..., :3].std()) > 0.02, f"{name} is blank"
    assert not list(index.parent.parent.glob(f".{index.parent.name}.tmp-*"))
    return page


def _table(page: str, table_id: str) -> list[list[str]]:
    body = re.search(rf'<table id="{table_id}">(.*?)</table>', page, re.S).group(1)
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body) if "<td" in row]


def test_report_compares_models_and_matches_metrics(runs):
    out = runs["root"] / "report-cmp"
    index = make_report(runs["conv-ae"], runs["store"], out, compare=[runs["pca"], runs["ae"]], n_examples=5)
    assert index == out / "index.html"
    page = _check_pages_and_images(index)
    for name in ("loss_curves.png", "reconstructions.png", "latent.png", "comparison_mse.png",
                 "comparison_reconstructions.png", "mse_vs_column.png"):
        assert (out / name).is_file(), name
    assert "MSE in units of the per-band pixel variance" in page
    assert "magnitude [mag]" in page  # the latent space is coloured by magnitude by default
    rows = {r[0]: r for r in _table(page, "comparison")}
    assert set(rows) == {"conv-ae", "pca", "ae"}
    for name in rows:
        recorded = json.loads((runs[name] / "metrics.json").read_text())["test_mse"]
        assert rows[name][4] == f"{recorded:.4g}"
        # the report re-evaluates on the same held-out objects: the same number
        assert float(rows[name][5]) == pytest.approx(recorded, rel=1e-3)
    summary = json.loads((out / "report.json").read_text())
    assert summary["n_objects"] == json.loads((runs["pca"] / "config.json").read_text())["store"]["n_test"]


def test_pca_report_shows_explained_variance_and_replaces_old_report(runs):
    index = make_report(runs["pca"], runs["store"], n_examples=3, color_by="half_light_radius")
    assert index == runs["pca"] / "report" / "index.html"
    page = _check_pages_and_images(index)
    assert (index.parent / "explained_variance.png").is_file()
    assert not (index.parent / "loss_curves.png").exists()
    assert "half_light_radius [arcsec]" in page
    (index.parent / "stale.png").write_bytes(b"old")
    make_report(runs["pca"], runs["store"], n_examples=1)
    assert not (index.parent / "stale.png").exists()  # the folder was replaced, not merged


def test_unknown_color_by_lists_columns(runs):
    with pytest.raises(InputError) as err:
        make_report(runs["pca"], runs["store"], runs["root"] / "r-bad", color_by="colour")
    for column in ("magnitude", "half_light_radius", "id"):
        assert column in str(err.value)
    assert not (runs["root"] / "r-bad").exists()


def test_compare_with_model_from_another_store_is_refused(runs):
    fingerprints = [json.loads((runs[k] / "config.json").read_text())["store"]["fingerprint"]
                    for k in ("conv-ae", "other-pca")]
    with pytest.raises(InputError) as err:
        make_report(runs["conv-ae"], runs["store"], runs["root"] / "r-x", compare=[runs["other-pca"]])
    assert all(fp in str(err.value) for fp in fingerprints)


def test_report_on_another_store_of_the_same_shape_is_noted(runs):
    index = make_report(runs["pca"], runs["other_store"], runs["root"] / "r-other", n_examples=2)
    page = _check_pages_and_images(index)
    assert "is not the one the model was trained" in page


def test_missing_model_folder_and_non_report_output(runs, tmp_path):
    with pytest.raises(ModelFolderError):
        make_report(tmp_path / "nothing", runs["store"])
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a deepfield report"):
        make_report(runs["pca"], runs["store"], keep)
    assert (keep / "notes.txt").read_text() == "mine"


def test_spectrum_report(tmp_path):
    rng = np.random.default_rng(2)
    n, length = 150, 64
    wavelength = np.linspace(4000.0, 7000.0, length)  # Angstrom
    redshift = rng.uniform(0.0, 0.3, n)
    line = 6563.0 * (1 + redshift[:, None]) / 1.3  # an emission line that moves with z
    flux = (1 + 0.2 * rng.normal(size=(n, 1)) + 3 * np.exp(-0.5 * ((wavelength - line) / 40.0) ** 2)
            + rng.normal(0, 0.1, (n, length)))
    with create_store(tmp_path / "spec", (length,), wavelength=wavelength, units={"redshift": ""}) as w:
        w.append(x=flux.astype("f4"), catalog={"redshift": redshift})
    model = train("pca", tmp_path / "spec", tmp_path / "pca", model_options={"latent_dim": 3}, settings=SETTINGS)
    small = train("pca", tmp_path / "spec", tmp_path / "pca-1", model_options={"latent_dim": 1}, settings=SETTINGS)
    index = make_report(model, tmp_path / "spec", compare=[small], n_examples=3)
    page = _check_pages_and_images(index)
    assert (index.parent / "reconstructions.png").is_file()
    assert "redshift" in page and "spectra" in page


def test_table_report_iris_like(tmp_path):
    rng = np.random.default_rng(3)
    target = np.repeat([0, 1, 2], 50)
    centres = np.array([[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.0]])
    x = (centres[target] + 0.3 * rng.normal(size=(150, 4))).astype("f4")
    with create_store(tmp_path / "iris", (4,), kind="table", extra_meta={
            "feature_names": ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"],
            "target_names": ["setosa", "versicolor", "virginica"]}) as w:
        w.append(x=x, catalog={"target": target})
    model = train("ae", tmp_path / "iris", tmp_path / "ae",
                  model_options={"latent_dim": 2, "hidden": (8,)}, settings=SETTINGS)
    index = make_report(model, tmp_path / "iris", n_examples=4, split="all")
    page = _check_pages_and_images(index)
    assert not (index.parent / "reconstructions.png").exists()
    assert "Tabular data" in page and "per-feature variance" in page
    assert "petal length (cm)" in page
    assert len(_table(page, "examples")) == 4


def _cli(args: list[str]) -> int:
    """Exit code of `deepfield ARGS` (run_app returns normally on success, exits otherwise)."""
    from deepfield.cli._app import run_app

    try:
        run_app(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def test_cli_report(runs, capsys):
    out = runs["root"] / "r-cli"
    code = _cli(["report", str(runs["ae"]), "--store", str(runs["store"]), "--out", str(out),
                 "--compare", str(runs["pca"]), "--color-by", "magnitude", "--n-examples", "3", "--no-progress"])
    assert code == 0
    assert capsys.readouterr().out.strip() == str(out / "index.html")
    assert (out / "comparison_mse.png").is_file()
    for bad in (["--color-by", "nope"], ["--compare", str(runs["other-pca"])], ["--split", "sometimes"]):
        assert _cli(["report", str(runs["ae"]), "--store", str(runs["store"]), "--out", str(out), *bad,
                     "--no-progress"]) == 2
    assert _cli(["report", str(runs["root"] / "missing"), "--store", str(runs["store"])]) == 2
    assert (out / "comparison_mse.png").is_file()  # failed runs leave the good report alone


def test_errors_are_deepfield_errors(runs):
    with pytest.raises(DeepfieldError):
        make_report(runs["pca"], runs["store"], runs["root"] / "r-n", n_examples=-1)


# -- banners: the page says when a model is unusable


def test_banner_for_an_autoencoder_that_learned_nothing(runs):
    # lr 1e-7 for one epoch: the decoder's output is its initialisation, worse than the mean image
    bad = train("ae", runs["store"], runs["root"] / "untrained-ae", model_options={"latent_dim": 4, "hidden": (32,)},
                settings=TrainSettings(epochs=1, lr=1e-7, progress=False, batch_size=64))
    index = make_report(runs["pca"], runs["store"], runs["root"] / "report-banner", compare=[bad])
    summary = json.loads((index.parent / "report.json").read_text())
    assert len(summary["warnings"]) == 1, summary["warnings"]
    assert summary["warnings"][0].startswith("untrained-ae's reconstructions explain nothing")
    pca, ae = summary["models"]["pca"]["mse"], summary["models"]["untrained-ae"]["mse"]
    baseline = summary["mean_image_mse"]["untrained-ae"]
    assert pca < baseline <= ae  # PCA beats the mean image, the untrained autoencoder does not
    page = index.read_text()
    assert page.count('<p class="banner">') == 1 and page.index('class="banner"') < page.index("<h2")


def test_no_banner_for_models_that_learned(runs):
    summary = json.loads((make_report(runs["pca"], runs["store"], runs["root"] / "report-good").parent
                          / "report.json").read_text())
    assert summary["warnings"] == []
    assert 'class="banner"' not in (runs["root"] / "report-good" / "index.html").read_text()


def test_collapse_and_prior_checks_on_recorded_numbers(tmp_path):
    from deepfield.report.checks import collapse_warning, prior_warning

    # validation rows as the quick demo's VAEs recorded them (nats per object): before this
    # change its 2-epoch VAE kept an epoch with 0.22 nats; the 6-epoch one keeps 5.06
    collapsed = {"history": [{"epoch": 0, "val_loss": 3.63, "val_kl": 0.52},
                             {"epoch": 1, "val_loss": 3.41, "val_kl": 0.22}]}
    learned = {"history": [{"epoch": 0, "val_loss": 3.63, "val_kl": 0.52},
                           {"epoch": 4, "val_loss": 3.37, "val_kl": 5.06}]}
    assert "kept epoch (2) carries 0.22 nats per object" in collapse_warning("vae", collapsed)
    assert collapse_warning("vae", learned) is None
    assert collapse_warning("ae", {"history": [{"epoch": 0, "val_loss": 0.3}]}) is None  # no KL: not a VAE
    # held-out code log-densities: the 'train flow' of issue 14 (-33.1 vs -22.1) and the quick demo's
    for name, flow, normal, bad in (("issue", -33.1, -22.1, True), ("quick", -10.65, -15.07, False)):
        (tmp_path / name / "prior").mkdir(parents=True)
        (tmp_path / name / "prior" / "metrics.json").write_text(json.dumps(
            {"val_log_prob": flow, "val_log_prob_standard_normal": normal}))
        text = prior_warning(name, tmp_path / name)
        assert (text is not None) == bad
        if bad:
            assert "log p = -33.10 nats per object under it against -22.10" in text
    assert prior_warning("none", tmp_path / "no-prior") is None


def test_divergence_check_on_recorded_numbers():
    from deepfield.report.checks import divergence_warning

    # validation MSEs of the full demo's conv AE: at lr 2e-3 over 12 epochs it diverged after epoch 1,
    # at lr 2e-3 over 8 epochs (a bump at epoch 4) it converged
    diverged = [0.464, 0.559, 0.781, 1.145, 1.108, 1.08, 1.058, 1.045, 1.036, 1.031, 1.028, 1.028]
    converged = [0.464, 0.538, 0.385, 1.074, 0.235, 0.228, 0.207, 0.204, 0.198, 0.196]
    text = divergence_warning("conv-ae", {"history": [{"epoch": k, "val_loss": v} for k, v in enumerate(diverged)]})
    assert text.startswith("conv-ae's training went unstable: the validation loss rose from 0.464 (epoch 1")
    assert "to 1.028 by the last epoch (12)" in text
    assert divergence_warning("conv-ae", {"history": [{"epoch": k, "val_loss": v}
                                                      for k, v in enumerate(converged)]}) is None
    assert divergence_warning("pca", {}) is None


def test_histogram_range_counts_samples_outside():
    from deepfield.report.checks import histogram_warning, outside_range

    rng = np.random.default_rng(0)
    held_out = {"sigma_arcsec": rng.normal(0.6, 0.1, 400), "e": rng.uniform(0, 0.6, 400)}
    faithful = {"sigma_arcsec": rng.normal(0.6, 0.1, 400), "e": rng.uniform(0, 0.6, 400)}
    # sizes 3 arcsec: 24 sigma out, past twice the held-out range, so the plot cannot show them
    broken = {"sigma_arcsec": rng.normal(3.0, 0.1, 400), "e": rng.uniform(0, 0.6, 400)}
    good = outside_range({"held-out": held_out, "flow": faithful})
    assert good["flow"]["sigma_arcsec"][0] <= 12 and good["held-out"]["sigma_arcsec"][0] <= 8  # ~1-2%
    assert histogram_warning(good) is None
    bad = outside_range({"held-out": held_out, "flow": broken})
    outside, n, lo, hi = bad["flow"]["sigma_arcsec"]
    assert (outside, n) == (400, 400) and hi < 3.0
    assert "flow: 400 of 400 in sigma_arcsec" in histogram_warning(bad)
    # a modest shift widens the range to show the samples instead of dropping them
    shifted = {"sigma_arcsec": rng.normal(0.9, 0.1, 400), "e": rng.uniform(0, 0.6, 400)}
    wide = outside_range({"held-out": held_out, "flow": shifted})
    assert wide["flow"]["sigma_arcsec"][0] <= 12 and histogram_warning(wide) is None
