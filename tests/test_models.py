"""Every registered family through one contract (deepfield.testing.check_model), a family added by a
test through the CLI, and the numbers each family must get right."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

import deepfield
from deepfield.errors import ConfigError, InputError, ModelFolderError
from deepfield.models import (FAMILIES, PCA, AutoencoderConfig, ConvAutoencoder, ConvAutoencoderConfig,
                              DenseAutoencoder, PCAConfig, save_model)
from deepfield.models.base import MODEL_REGISTRY, Model, register
from deepfield.models.protocol import Encoding, Generative, LossOutput, Trainable, capabilities, signature_problems
from deepfield.testing import check_model, tiny_store
from deepfield.train import TrainSettings, build_model, train
from conftest import cli

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_registered_family_keeps_the_protocol(family, tmp_path):
    """fit -> save -> load -> encode / sample / log_prob / loss, bad input refused: the check suite."""
    done = check_model(family, tmp_path)
    caps = capabilities(FAMILIES[family])
    assert {"signatures", "fit", "folder"} | (caps - {"loss"} if FAMILIES[family].trainer == "closed-form" else caps) \
        <= set(done) | {"adversarial"}
    if "encode" in caps and FAMILIES[family].trainer in ("gradient", "closed-form"):
        metrics = json.loads((tmp_path / f"model-{family}" / "metrics.json").read_text())
        assert 0 < metrics["test_mse"] < 1.5  # normalised units: 1 = predicting zero flux everywhere


def test_a_broken_family_is_refused_at_registration():
    class Forgetful(Model, Encoding):  # encode without the keyword-only condition
        family = "forgetful"
        config_class = AutoencoderConfig

        def encode(self, x, condition=None):
            return x

        def decode(self, z, *, condition=None):
            return z

    assert signature_problems(Forgetful) and "must be" in signature_problems(Forgetful)[0]
    with pytest.raises(TypeError, match="does not follow deepfield.models.protocol"):
        register(Forgetful)
    assert "forgetful" not in FAMILIES
    with pytest.raises(TypeError, match="abstract"):
        type("Half", (Model, Encoding), {"family": "half", "config_class": AutoencoderConfig,
                                          "encode": lambda self, x, *, condition=None: x})(AutoencoderConfig((4,)))


@dataclass(frozen=True)
class ToyConfig:
    """Arguments:
    input_shape: (C, H, W) of the store's images.
    latent_dim: code length.
    normalisation: 'channel' (per-band pixel standard deviation).
    """

    input_shape: tuple[int, ...]
    latent_dim: int = 2
    normalisation: str = "channel"


class ToyLinear(Model, Encoding, Generative, Trainable):
    """A linear autoencoder with a Gaussian latent: the smallest family the protocol admits."""

    family = "toy-linear"
    config_class = ToyConfig
    check_options = {"latent_dim": 3}

    def __init__(self, config: ToyConfig):
        super().__init__(config)
        d = int(np.prod(config.input_shape))
        self.encoder, self.decoder = nn.Linear(d, config.latent_dim), nn.Linear(config.latent_dim, d)

    def encode(self, x, *, condition=None):
        self.check_no_condition(condition)
        x = self.check_input(x)
        return self.encoder(self.normalise(x).flatten(1))

    def decode(self, z, *, condition=None):
        self.check_no_condition(condition)
        z = self.check_codes(z)
        return self.denormalise(self.decoder(z).reshape(z.shape[0], *self.input_shape))

    def sample(self, n, *, condition=None, generator=None):
        return self.decode(torch.randn(n, self.latent_dim, generator=generator), condition=condition)

    def loss(self, batch):
        x = self.check_input(batch["x"])
        mse = ((self.normalise(self.reconstruct(x)) - self.normalise(x)) ** 2).mean()
        return LossOutput(mse, {"mse": mse})


@pytest.fixture
def toy_family():
    register(ToyLinear)
    yield "toy-linear"
    FAMILIES.pop("toy-linear", None)
    MODEL_REGISTRY.pop("ToyLinear", None)


def test_a_family_added_in_a_test_trains_saves_loads_encodes_and_samples_through_the_cli(toy_family, tmp_path,
                                                                                         capsys):
    import pyarrow.parquet as pq

    store = tiny_store(tmp_path / "store")
    code, out = cli(capsys, "train", toy_family, "--help-config")
    assert code == 0 and "latent_dim" in out and "code length" in out and "encode" in out
    code, out = cli(capsys, "train", toy_family, "--store", store.path, "--out", tmp_path / "toy", "--set",
                    "latent_dim=3", "--epochs", 3, "--set", "batch_size=16", "--no-progress")
    assert code == 0 and "model written to" in out, out
    record = json.loads((tmp_path / "toy" / "config.json").read_text())
    assert record["class"] == "ToyLinear" and record["config"]["latent_dim"] == 3
    model = deepfield.load(tmp_path / "toy")
    code, out = cli(capsys, "encode", tmp_path / "toy", "--store", store.path, "--out", tmp_path / "codes.parquet",
                    "--no-progress")
    assert code == 0, out
    codes = pq.read_table(tmp_path / "codes.parquet")
    z = model.encode(torch.from_numpy(store.read("x"))).detach().numpy()
    np.testing.assert_allclose(codes.column("z2").to_numpy(), z[:, 2], rtol=1e-5, atol=1e-5)
    code, out = cli(capsys, "sample", tmp_path / "toy", "--n", 5, "--out", tmp_path / "samples", "--seed", 3,
                    "--no-progress")
    assert code == 0, out
    samples = deepfield.data.store.open_store(tmp_path / "samples")
    again = model.sample(5, generator=torch.Generator().manual_seed(3)).detach().numpy()
    np.testing.assert_allclose(samples.read("x"), again, rtol=1e-5, atol=1e-4)
    code, out = cli(capsys, "train", toy_family, "--store", store.path, "--out", tmp_path / "bad", "--set",
                    "latent_dims=3")
    assert code == 2 and "unknown key" in out and "latent_dim" in out
    code, out = cli(capsys, "train", toy_family, "--store", store.path, "--out", tmp_path / "bad", "--set",
                    "latent_dim=three")
    assert code == 2 and "latent_dim = 'three' is not a whole number" in out
    assert check_model(toy_family, tmp_path / "check")["sample"]


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


def test_conv_autoencoder_starts_as_the_linear_compressor_and_is_proportional_to_flux():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:16, :16] - 7.5
    widths = rng.uniform(1.5, 4, (300, 1, 1, 1))
    x = (rng.lognormal(0, 1.5, (300, 1, 1, 1)) * np.exp(-(xx**2 + yy**2) / (2 * widths**2))
         + rng.normal(0, 0.05, (300, 1, 16, 16))).astype("f4")
    x[:, :, :5, :] *= 1.5  # the images' orientation matters: their rotations add information
    ae = ConvAutoencoder(ConvAutoencoderConfig(input_shape=(1, 16, 16), latent_dim=4, channels=(8, 16),
                                               symmetry="none"))
    ae.fit_normalisation(x)
    # untrained, the model is the rank-4 truncated SVD of the normalised images (PCA through the origin)
    flat = (x / ae.data_scale.numpy()).reshape(300, -1).astype("f8")
    vt = np.linalg.svd(flat, full_matrices=False)[2][:4]
    linear = (flat @ vt.T @ vt).reshape(x.shape) * ae.data_scale.numpy()
    with torch.no_grad():
        recon = ae.reconstruct(torch.from_numpy(x)).numpy()
    assert np.abs(recon - linear).max() < 1e-4 * np.abs(x).max()
    # symmetry='dihedral': the SVD of the images with their 8 rotations and reflections
    turned = np.concatenate([np.rot90(f, k, axes=(2, 3)) for k in range(4) for f in (x, x[..., ::-1])])
    dihedral = ConvAutoencoder(ConvAutoencoderConfig(input_shape=(1, 16, 16), latent_dim=4, channels=(8, 16),
                                                     linear_basis="symmetric"))
    dihedral.fit_normalisation(x)
    # left to choose ('auto'), it keeps the plain basis: these images do have an orientation, which
    # a held-back fifth of them shows
    auto = ConvAutoencoder(ConvAutoencoderConfig(input_shape=(1, 16, 16), latent_dim=4, channels=(8, 16)))
    auto.fit_normalisation(x)
    assert not bool(auto.linear_basis_symmetric) and bool(dihedral.linear_basis_symmetric)
    np.testing.assert_allclose(auto.linear_basis.numpy().T @ auto.linear_basis.numpy(), vt.T @ vt, atol=1e-4)
    vt8 = np.linalg.svd((turned / ae.data_scale.numpy()).reshape(2400, -1).astype("f8"), full_matrices=False)[2][:4]
    basis = dihedral.linear_basis.numpy().astype("f8")  # rotations pair up equal singular values: compare subspaces
    np.testing.assert_allclose(basis.T @ basis, vt8.T @ vt8, atol=1e-4)
    # with the networks' corrections switched on, codes and images still scale with flux (a galaxy
    # twice as bright is encoded and drawn twice as bright)
    with torch.no_grad():
        for layer in (ae.encoder.head, ae.decoder.output_conv):
            layer.weight.normal_(0, 0.1)
        z = ae.encode(torch.from_numpy(x[:20]))
        torch.testing.assert_close(ae.encode(torch.from_numpy(3 * x[:20])), 3 * z, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ae.decode(2.5 * z), 2.5 * ae.decode(z), rtol=1e-4, atol=1e-5)
        assert float((ae.decode(z) - torch.from_numpy(linear[:20])).abs().max()) > 1e-3  # the corrections act
    with pytest.raises(ConfigError, match="set one of them false"):
        ConvAutoencoder(ConvAutoencoderConfig(input_shape=(1, 16, 16), latent_dim=4, split_amplitude=True))
    with pytest.raises(ConfigError, match="needs symmetry 'dihedral'"):
        ConvAutoencoder(ConvAutoencoderConfig(input_shape=(1, 16, 16), latent_dim=4, symmetry="none",
                                              linear_basis="symmetric"))


def test_auto_basis_is_the_symmetric_one_for_galaxies_at_any_angle():
    """Elongated galaxies at random angles, fewer images than pixels: the held-back images
    prefer the basis fitted on the eightfold set."""
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:16, :16] - 7.5
    n = 100
    theta, q, w = (rng.uniform(a, b, (n, 1, 1, 1)) for a, b in ((0, np.pi), (0.3, 1), (1.5, 3)))
    u, v = xx * np.cos(theta) + yy * np.sin(theta), -xx * np.sin(theta) + yy * np.cos(theta)
    x = (rng.lognormal(0, 1, (n, 1, 1, 1)) * np.exp(-(u**2 + (v / q) ** 2) / (2 * w**2))
         + rng.normal(0, 0.2, (n, 1, 16, 16))).astype("f4")
    for d in (4, 8):
        ae = ConvAutoencoder(ConvAutoencoderConfig(input_shape=(1, 16, 16), latent_dim=d, channels=(8, 16)))
        ae.fit_normalisation(x)
        assert bool(ae.linear_basis_symmetric), d


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


def test_help_config_reads_every_field_doc_of_the_family_configs():
    """--help-config's meanings come from each config's Arguments block, 'a, b: ...' lines included."""
    from deepfield.models.base import config_docs

    for family, cls in FAMILIES.items():
        docs = config_docs(cls.config_class)
        undocumented = [k for k, (_, _, doc) in docs.items() if not doc]
        assert not undocumented, f"{family}: {cls.config_class.__name__} documents no {undocumented}"
