"""Every model family through one contract, plus the numbers each family must get right."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import deepfield
from deepfield.errors import ConfigError, InputError, ModelFolderError
from deepfield.models import (AUTOENCODING, FAMILIES, PCA, AutoencoderConfig, ConvAutoencoder, ConvAutoencoderConfig,
                              DenseAutoencoder, PCAConfig, save_model)
from deepfield.train import TrainSettings, build_model, train

TINY = {
    "pca": {"latent_dim": 4},
    "ae": {"latent_dim": 4, "hidden": (32,)},
    "conv-ae": {"latent_dim": 4, "channels": (8, 16)},
    "vae": {"latent_dim": 4, "channels": (8, 16)},
    "cvae": {"latent_dim": 4, "channels": (8, 16)},
}


#: families without latent codes, and the test file holding their own save/load contract
OTHER_CONTRACTS = {"pixelcnn": "test_pixelcnn.py", "dcgan": "test_gan.py", "wgan-gp": "test_gan.py",
                   "cgan": "test_gan.py", "cyclegan": "test_gan.py"}


def test_every_family_is_under_a_contract():
    from pathlib import Path

    assert set(TINY) == set(AUTOENCODING), "add the new autoencoding family to TINY"
    assert set(FAMILIES) == set(TINY) | set(OTHER_CONTRACTS), "put the new family under a contract"
    for family, test_file in OTHER_CONTRACTS.items():
        assert "save" in (Path(__file__).parent / test_file).read_text(), family


@pytest.mark.parametrize("family", sorted(AUTOENCODING))
def test_family_contract_fit_encode_decode_save_load(family, blob_store, tmp_path):
    """fit -> encode -> decode -> save -> load gives identical outputs (the sklearn check-suite idea)."""
    out = train(family, blob_store, tmp_path / family, model_options=TINY[family],
                settings=TrainSettings(epochs=2, batch_size=32, progress=False))
    x = torch.from_numpy(blob_store.read("x", np.arange(8)))
    model = deepfield.load(out)
    # conditional families take their catalog columns alongside the pixels
    cond = ({"condition": np.stack([blob_store.column(c)[:8] for c in model.data_columns], 1)}
            if model.data_columns else {})
    z = model.encode(x, **cond)
    assert z.shape == (8, 4) and torch.isfinite(z).all()
    recon = model.decode(z, **cond)
    assert recon.shape == x.shape
    again = deepfield.load(out)
    assert torch.equal(again.encode(x, **cond), z) and torch.equal(again.decode(z, **cond), recon)
    record = json.loads((out / "config.json").read_text())
    assert record["store"]["fingerprint"] == blob_store.fingerprint
    assert record["class"] == type(model).__name__ and record["family"] == family
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["test_mse"] < 1.5  # normalised units: 1 = predicting zero flux everywhere
    assert (out / "README.md").read_text().startswith("# ")
    with pytest.raises(InputError, match="trained on 1 band"):
        model.encode(torch.zeros(2, 3, 16, 16))


def test_pca_matches_exact_linear_algebra():
    rng = np.random.default_rng(1)
    basis = rng.normal(size=(3, 20))
    x = (rng.normal(size=(500, 3)) * [5, 2, 1]) @ basis + rng.normal(0, 1e-3, (500, 20))
    x = x.astype("f4")
    for method in ("exact", "randomized", "incremental"):
        pca = PCA(PCAConfig(input_shape=(20,), latent_dim=3, method=method, normalisation="feature"))
        if method == "incremental":
            pca.fit_normalisation(x)
            pca.fit_batches([x[i:i + 64] for i in range(0, 500, 64)])
        else:
            pca.fit(x)
        # rank-3 data: three components explain everything, reconstruction is exact to the noise
        assert float(pca.explained_variance_ratio.sum()) == pytest.approx(1.0, abs=1e-4)
        err = (pca.reconstruct(torch.from_numpy(x)) - torch.from_numpy(x)).abs().max()
        assert float(err) < 0.02
        comps = pca.components.numpy()
        np.testing.assert_allclose(comps @ comps.T, np.eye(3), atol=1e-4)


def test_incremental_pca_uses_every_sample_even_tiny_batches():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(103, 6)).astype("f4") * np.arange(1, 7, dtype="f4")
    # all 6 components kept: incremental PCA is then exact (with fewer it truncates per batch)
    full = PCA(PCAConfig(input_shape=(6,), latent_dim=6, normalisation="feature")).fit(x)
    inc = PCA(PCAConfig(input_shape=(6,), latent_dim=6, method="incremental", normalisation="feature"))
    inc.set_normalisation(full.data_offset, full.data_scale)
    inc.fit_batches([x[:50], x[50:52], x[52:100], x[100:]], normalisation_fitted=True)  # 2- and 3-row batches
    np.testing.assert_allclose(inc.mean.numpy(), full.mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(inc.explained_variance.numpy(), full.explained_variance.numpy(), rtol=1e-3)


def test_positive_decoder_never_predicts_negative_flux():
    ae = ConvAutoencoder(ConvAutoencoderConfig(input_shape=(1, 16, 16), latent_dim=3, channels=(8, 16), positive=True))
    out = ae.decode(torch.randn(64, 3) * 10)
    assert float(out.min()) >= 0.0
    dense = DenseAutoencoder(AutoencoderConfig(input_shape=(4,), latent_dim=2, hidden=(8,)))
    assert float(dense.decode(torch.randn(64, 2) * 10).min()) < 0  # no constraint unless asked


def test_denoising_autoencoder_reconstructs_truth_better_than_the_noisy_input(blob_store, tmp_path):
    """A denoising AE's output is closer to the noiseless truth than the observation itself."""
    out = train("conv-ae", blob_store, tmp_path / "dae",
                model_options={"latent_dim": 8, "channels": (16, 32), "denoise_sigma": 0.5},
                settings=TrainSettings(epochs=25, batch_size=32, lr=2e-3, patience=0, progress=False))
    model = deepfield.load(out)
    idx = np.arange(len(blob_store))
    x = torch.from_numpy(blob_store.read("x", idx))
    truth = blob_store.read("truth", idx)
    with torch.no_grad():
        recon = model.reconstruct(x).numpy()
    mse_model = float(((recon - truth) ** 2).mean())
    mse_input = float(((x.numpy() - truth) ** 2).mean())  # = noise variance 0.09
    assert mse_input == pytest.approx(0.09, rel=0.05)
    assert mse_model < 0.5 * mse_input
    # flux conservation: the total flux of reconstructions follows the catalog flux (the
    # faintest, S/N ~ 10 blobs scatter most, hence the median)
    rel = recon.sum(axis=(1, 2, 3)) / blob_store.column("flux_r") - 1
    assert float(np.median(np.abs(rel))) < 0.08


def test_sparse_penalty_gives_sparser_codes(blob_store, tmp_path):
    def l1(options, name):
        out = train("ae", blob_store, tmp_path / name, model_options=options,
                    settings=TrainSettings(epochs=8, batch_size=32, patience=0, progress=False))
        m = deepfield.load(out)
        with torch.no_grad():
            z = m.encode(torch.from_numpy(blob_store.read("x")))
        return float(z.abs().mean())

    base = {"latent_dim": 8, "hidden": (64,)}
    assert l1({**base, "sparse_l1": 1.0}, "sparse") < 0.5 * l1(base, "plain")


def test_model_folder_errors_name_the_problem(blob_store, tmp_path):
    model = build_model("pca", blob_store, {"latent_dim": 2})
    model.fit(blob_store.read("x"))
    path = save_model(model, tmp_path / "m")
    with pytest.raises(ModelFolderError, match="already exists"):
        save_model(model, path)
    record = json.loads((path / "config.json").read_text())
    record["format_version"] = 7
    (path / "config.json").write_text(json.dumps(record))
    with pytest.raises(ModelFolderError, match="format version 7"):
        deepfield.load(path)
    record["format_version"] = 1
    (path / "config.json").write_text(json.dumps(record))
    data = (path / "weights.safetensors").read_bytes()
    (path / "weights.safetensors").write_bytes(data[:40])
    with pytest.raises(ModelFolderError, match="corrupt or truncated"):
        deepfield.load(path)
    with pytest.raises(ModelFolderError, match="no config.json"):
        deepfield.load(tmp_path)
    with pytest.raises(ConfigError, match="unknown key"):
        build_model("ae", blob_store, {"latent_dims": 3})
    with pytest.raises(ConfigError, match="square"):
        ConvAutoencoder(ConvAutoencoderConfig(input_shape=(100,)))
