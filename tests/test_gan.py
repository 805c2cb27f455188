"""Adversarial models: gradient penalty, the two-player updates, learning, save/load, resume,
divergence, CycleGAN store checks and translation, the GAN anomaly score, Frechet distances."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
from scipy import linalg

import deepfield
from deepfield.data.store import create_store
from deepfield.errors import ConfigError, InputError
from deepfield.metrics import encoder_frechet_distance, frechet_distance
from deepfield.models.gan import DCGAN, WGANGP, DCGANConfig, WGANGPConfig, gradient_penalty
from deepfield.physics.resample import resample_images
from deepfield.train import TrainingDiverged, TrainSettings, train, training_dir
from deepfield.train.gan import check_cycle_stores, train_gan

TINY = {"latent_dim": 8, "channels": (16, 32)}
FAST = dict(batch_size=32, progress=False, threads=1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dcgan(blob_store, tmp_path_factory):
    """A DCGAN (+ encoder) trained on the 16x16 blobs; shared by the tests that read a trained GAN."""
    out = tmp_path_factory.mktemp("gan") / "dcgan"
    return train_gan("dcgan", blob_store, out, model_options={**TINY, "encoder_epochs": 3},
                     settings=TrainSettings(epochs=20, **FAST))


def test_gradient_penalty_matches_analytic_critics():
    torch.manual_seed(0)
    real, fake = torch.randn(6, 1, 4, 4), torch.randn(6, 1, 4, 4) + 1.0
    w = torch.randn(1, 1, 4, 4)
    # a linear critic has gradient w everywhere: penalty = weight (|w| - 1)^2
    gp = gradient_penalty(lambda v: (v * w).flatten(1).sum(1), real, fake, weight=10.0)
    assert float(gp) == pytest.approx(10.0 * (float(w.norm()) - 1) ** 2, rel=1e-5)
    # a quadratic critic 0.5 |x|^2 has gradient x_hat = eps real + (1 - eps) fake
    eps = torch.rand(6)
    gp = gradient_penalty(lambda v: 0.5 * v.flatten(1).pow(2).sum(1), real, fake, weight=3.0, eps=eps)
    x_hat = eps.view(-1, 1, 1, 1) * real + (1 - eps.view(-1, 1, 1, 1)) * fake
    expected = 3.0 * ((x_hat.flatten(1).norm(dim=1) - 1) ** 2).mean()
    assert float(gp.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_wgan_critic_estimates_the_wasserstein_distance_of_two_gaussians():
    """Trained alone on N(0, 1) vs N(d, 1), d = 2, the critic becomes linear with the slope s that
    maximises s d - lambda (s - 1)^2 (the penalty is soft): s = 1 + d / (2 lambda), so its estimate
    of W1 = d is d (1 + d / (2 lambda)) = 2.2 for lambda = 10."""
    torch.manual_seed(0)
    model = WGANGP(WGANGPConfig(input_shape=(1,), latent_dim=1, hidden=(32, 32)))
    opt = torch.optim.Adam(model.discriminator_parameters(), lr=2e-3, betas=(0.5, 0.9))
    for _ in range(400):
        real, fake = torch.randn(256, 1), torch.randn(256, 1) + 2.0
        distance = model.critic_score(real).mean() - model.critic_score(fake).mean()
        loss = -distance + gradient_penalty(model.critic_score, real, fake, 10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    real, fake = torch.randn(20000, 1), torch.randn(20000, 1) + 2.0
    with torch.no_grad():
        estimate = float(model.critic_score(real).mean() - model.critic_score(fake).mean())
    assert estimate == pytest.approx(2.2, rel=0.03)


def test_each_player_step_lowers_its_own_loss_and_leaves_the_other_alone(blob_store):
    from deepfield.train.gan import _frozen

    torch.manual_seed(0)
    model = DCGAN(DCGANConfig(input_shape=(1, 16, 16), **TINY))
    model.fit_normalisation(blob_store.read("x"))
    batch = {"x": torch.from_numpy(blob_store.read("x", np.arange(64)))}
    opt_d = torch.optim.Adam(model.discriminator_parameters(), lr=1e-2, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(model.generator_parameters(), lr=1e-2, betas=(0.5, 0.999))
    model.eval()  # batch norm from running statistics: the same noise gives the same loss

    def loss(player):
        torch.manual_seed(1)
        return getattr(model, f"{player}_loss")(batch)["loss"]

    d_before = float(loss("discriminator").detach())
    for _ in range(3):
        opt_d.zero_grad()
        loss("discriminator").backward()
        opt_d.step()
    d_after = float(loss("discriminator").detach())
    assert d_after < d_before
    critic = [p.detach().clone() for p in model.discriminator_parameters()]
    opt_d.zero_grad(set_to_none=True)
    g_before = float(loss("generator").detach())
    with _frozen(model.discriminator_parameters()):
        for _ in range(3):
            opt_g.zero_grad()
            loss("generator").backward()
            opt_g.step()
    assert float(loss("generator").detach()) < g_before
    assert float(loss("discriminator").detach()) > d_after  # the better G fools the same D more
    assert all(torch.equal(a, b) for a, b in zip(critic, model.discriminator_parameters()))
    assert all(p.grad is None for p in model.discriminator_parameters())
    with pytest.raises(ConfigError, match="two-player"):
        model.loss(batch)
    with pytest.raises(ConfigError, match="batch norm"):
        WGANGP(WGANGPConfig(input_shape=(1, 16, 16), d_batch_norm=True))


def test_dcgan_learns_the_blob_fluxes_and_round_trips(dcgan, blob_store, tmp_path):
    model = deepfield.load(dcgan)
    metrics = json.loads((dcgan / "metrics.json").read_text())
    history = metrics["history"]
    assert len(history) == 23 and "train_d_loss" in history[0] and "train_encoder_loss" in history[-1]
    # the encoder's izi loss falls
    assert history[-1]["train_encoder_residual"] < history[20]["train_encoder_residual"]
    samples = model.sample(400, generator=torch.Generator().manual_seed(0)).numpy()
    real = blob_store.read("x")
    flux_s, flux_r = samples.sum((1, 2, 3)), real.sum((1, 2, 3))
    print("mean flux: samples", flux_s.mean(), "data", flux_r.mean(), "; peak", samples.max((1, 2, 3)).mean(),
          real.max((1, 2, 3)).mean())
    assert flux_s.mean() == pytest.approx(flux_r.mean(), rel=0.2)
    assert samples.max((1, 2, 3)).mean() == pytest.approx(real.max((1, 2, 3)).mean(), rel=0.3)
    # fresh, untrained generators (three initialisations) are far further off
    trained_error = abs(flux_s.mean() / flux_r.mean() - 1)
    for seed in range(3):
        torch.manual_seed(seed)
        fresh = DCGAN(model.config)
        fresh.load_state_dict({k: v for k, v in model.state_dict().items() if k.startswith(("data_", "stretch"))},
                              strict=False)
        flux_fresh = fresh.eval().sample(400, generator=torch.Generator().manual_seed(0)).sum((1, 2, 3)).mean()
        assert abs(flux_fresh / flux_r.mean() - 1) > max(0.2, 4 * trained_error)
    # a sample grid per epoch lands in the model folder
    assert len(list((dcgan / "logs" / "samples").glob("epoch_*.png"))) == 23
    # save / load: identical samples and codes
    from deepfield.models import save_model

    again = deepfield.load(save_model(model, tmp_path / "copy"))
    x = torch.from_numpy(real[:8])
    assert torch.equal(again.sample(5, generator=torch.Generator().manual_seed(3)),
                       model.sample(5, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(again.encode(x), model.encode(x)) and model.encode(x).shape == (8, 8)
    # deepfield sample writes GAN samples like a VAE's
    from deepfield.tasks import sample_store

    store = sample_store(model, tmp_path / "s", 10, seed=1, progress=False)
    assert store.sample_shape == (1, 16, 16) and store.pixel_scale == 0.2 and len(store) == 10


def test_the_seed_fixes_the_trained_weights(blob_store, tmp_path):
    """Two runs with one seed give identical networks, whatever the random state before them."""
    weights = []
    for i in range(2):
        torch.randn(17 * (i + 1))  # other work consumed the global generator differently
        path = train_gan("wgan-gp", blob_store, tmp_path / f"w{i}", model_options={**TINY, "encoder_epochs": 0},
                         settings=TrainSettings(epochs=1, seed=5, **FAST))
        weights.append(deepfield.load(path).state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_gan_score_ranks_injected_streaks_above_normal_galaxies(dcgan, blob_store):
    from deepfield.tasks.gan_score import gan_anomaly_scores, gan_score_store

    model = deepfield.load(dcgan)
    test = blob_store.split()["test"]
    x = blob_store.read("x", test)
    streaked = x.copy()
    streaked[:, 0, 4, :] += 3.0  # a satellite trail across every held-out stamp, 10 sigma of noise per pixel
    normal = gan_anomaly_scores(model, {"x": torch.from_numpy(x)})
    odd = gan_anomaly_scores(model, {"x": torch.from_numpy(streaked)})
    s_normal, s_odd = normal["score"].numpy(), odd["score"].numpy()
    auc = (s_odd[:, None] > s_normal[None, :]).mean()
    print("median scores", np.median(s_normal), np.median(s_odd), "AUC", auc)
    assert auc > 0.9
    assert torch.allclose(normal["score"], 0.7 * normal["residual_score"] + 0.3 * normal["feature_score"])
    assert normal["reconstruction"].shape == x.shape
    np.testing.assert_allclose(normal["residual"].numpy(), x - normal["reconstruction"].numpy(), atol=1e-5)
    # the search improves on the encoder's first guess, and batching changes nothing
    start = gan_anomaly_scores(model, {"x": torch.from_numpy(x)}, steps=0)
    assert float(normal["score"].mean()) < float(start["score"].mean())
    one = gan_anomaly_scores(model, {"x": torch.from_numpy(x[3:4])})
    assert float(one["score"][0]) == pytest.approx(float(s_normal[3]), rel=1e-4)
    table = gan_score_store(model, blob_store, indices=test[:12], batch_size=5, progress=False)
    assert table["id"].tolist() == blob_store.ids[test[:12]].tolist()
    np.testing.assert_allclose(table["score"], s_normal[:12], rtol=1e-4)
    assert table["code"].shape == (12, 8)


def test_divergence_stops_with_the_checkpoint_from_before_and_resume_finishes(blob_store, tmp_path):
    """A conditional GAN whose learning rate explodes in epoch 1 stops with a clear error; the
    checkpoint after epoch 0 is kept and finite, and --resume (new rates) finishes the run."""

    class ExplodeAt(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                for opt in trainer.optimizers:
                    for group in opt.param_groups:
                        group["lr"] = 1e12

    out = tmp_path / "cgan"
    options = {**TINY, "condition": ("magnitude", "half_light_radius"), "n_critic": 1, "encoder_epochs": 1}
    settings = TrainSettings(epochs=3, **FAST)
    with pytest.raises(TrainingDiverged, match="diverged.*before the divergence.*after 1 completed epoch") as info:
        train_gan("cgan", blob_store, out, model_options=options, settings=settings, callbacks=[ExplodeAt()])
    last = training_dir(out) / "checkpoints" / "last.ckpt"
    assert str(last) in str(info.value) and "--resume" in str(info.value) and not out.exists()
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["epoch"] == 0 and all(bool(torch.isfinite(v).all()) for v in ckpt["state_dict"].values()
                                      if v.is_floating_point())
    path = train_gan("cgan", blob_store, out, model_options=options, settings=settings, resume=True)
    metrics = json.loads((path / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [0, 1, 2, 3]
    assert json.loads((path / "config.json").read_text())["training"]["resumed"] is True
    model = deepfield.load(path)
    assert model.config.condition == ("magnitude", "half_light_radius")
    with pytest.raises(InputError, match="conditional"):
        model.sample(2)
    from deepfield.tasks import sample_store

    with pytest.warns(UserWarning, match="magnitude outside the training range"):
        store = sample_store(model, tmp_path / "s", 4, condition={"magnitude": 10.0, "half_light_radius": 0.3},
                             seed=0, progress=False)
    assert len(store) == 4 and np.all(store.column("magnitude") == 10.0)


def _paired_surveys(blob_store, root):
    """The blobs as a 'ground' survey (0.8" PSF, noise 0.3) and a 'space' one (0.25", noise 0.03),
    both on 0.2" pixels with their PSF, plus the space survey on 0.1" pixels (32 x 32)."""
    from deepfield.physics import ObservationModel, gaussian_psf

    truth = torch.from_numpy(blob_store.read("truth"))
    gen = torch.Generator().manual_seed(0)
    stores = {}
    for name, fwhm, sigma in (("ground", 0.8, 0.3), ("space", 0.25, 0.03)):
        psf = gaussian_psf(fwhm, size=15, pixel_scale=0.2)[None].expand(len(truth), 1, 15, 15)
        x = ObservationModel("pixel").observe(truth, psf, noise_sigma=sigma, generator=gen)
        with create_store(root / name, (1, 16, 16), bands=("r",), pixel_scale=0.2,
                          arrays={"psf": (1, 15, 15), "truth": (1, 16, 16)}) as w:
            w.append(x=x.numpy(), psf=psf.numpy(), truth=truth.numpy(), catalog={"id": blob_store.ids})
        stores[name] = w.store
    fine = resample_images(torch.from_numpy(stores["space"].read("x")), 0.2, 0.1, 32)
    with create_store(root / "space_fine", (1, 32, 32), bands=("r",), pixel_scale=0.1) as w:
        w.append(x=fine.numpy(), catalog={"id": blob_store.ids})
    stores["space_fine"] = w.store
    with create_store(root / "two_bands", (2, 16, 16), bands=("g", "r"), pixel_scale=0.2) as w:
        w.append(x=np.repeat(stores["space"].read("x"), 2, axis=1), catalog={"id": blob_store.ids})
    stores["two_bands"] = w.store
    return stores


def test_cyclegan_refuses_mismatched_stores_resamples_on_request_and_translates(blob_store, tmp_path):
    from deepfield.tasks.translate import evaluate_translation, translate_store

    s = _paired_surveys(blob_store, tmp_path)
    with pytest.raises(InputError, match="1 band.*2.*same number of bands"):
        check_cycle_stores(s["ground"], s["two_bands"])
    with pytest.raises(InputError, match=r"0.1 arcsec.*--resample"):
        train_gan("cyclegan", s["ground"], tmp_path / "no", store_b=s["space_fine"])
    with pytest.raises(ConfigError, match="--store-b"):
        train_gan("cyclegan", s["ground"], tmp_path / "no")
    assert check_cycle_stores(s["ground"], s["space_fine"], resample=True) == (0.1, 0.2)
    # resampling 0.1" -> 0.2" conserves flux and gives back the 0.2" images up to interpolation
    back = resample_images(torch.from_numpy(s["space_fine"].read("x")), 0.1, 0.2, 16).numpy()
    space = s["space"].read("x")
    np.testing.assert_allclose(back.sum((1, 2, 3)), space.sum((1, 2, 3)), rtol=0.02, atol=0.5)

    path = train_gan("cyclegan", s["ground"], tmp_path / "cycle", store_b=s["space_fine"], resample=True,
                     model_options={"channels": 8, "res_blocks": 1},
                     settings=TrainSettings(epochs=2, **FAST))
    model = deepfield.load(path)
    record = json.loads((path / "config.json").read_text())["store"]
    assert record["b"]["resampled_to_a"] is True and record["b"]["pixel_scale"] == 0.1
    metrics = json.loads((path / "metrics.json").read_text())
    assert np.isfinite(metrics["cycle_val_l1_a"]) and "train_g_cycle" in metrics["history"][-1]
    test = s["ground"].split()["test"]
    out = translate_store(model, s["ground"], tmp_path / "translated", indices=test, progress=False)
    assert out.ids.tolist() == s["ground"].ids[test].tolist() and out.sample_shape == (1, 16, 16)
    with pytest.raises(InputError, match="--resample"):
        translate_store(model, s["space_fine"], tmp_path / "t2", direction="b2a", progress=False)
    back_to_ground = translate_store(model, s["space_fine"], tmp_path / "t3", direction="b2a", resample=True,
                                     progress=False)
    assert back_to_ground.pixel_scale == 0.2 and back_to_ground.sample_shape == (1, 16, 16)
    result = evaluate_translation(model, s["ground"], s["space"], indices=test, progress=False)
    methods = result["methods"]
    assert set(methods) == {"cyclegan", "wiener", "richardson_lucy", "source"} and result["n"] == test.size
    print({k: round(v["mse"], 4) for k, v in methods.items()})
    # deconvolving the 0.8" PSF and applying the 0.25" one brings the images closer to the space truth
    assert methods["wiener"]["mse"] < methods["source"]["mse"]
    assert methods["richardson_lucy"]["mse"] < methods["source"]["mse"]
    assert methods["source"]["size_bias"] > 0.2  # the ground PSF makes every blob look bigger


def test_frechet_distance_zero_analytic_and_on_encoder_codes(blob_store, tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-10)
    # two Gaussians: |mu_a - mu_b|^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2))
    mean_a, mean_b = np.array([0.0, 1.0, -1.0]), np.array([1.0, 0.5, 0.0])
    c_a = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 0.5]])
    c_b = np.array([[1.0, -0.4, 0.1], [-0.4, 1.5, 0.0], [0.1, 0.0, 0.8]])
    from deepfield.metrics.frechet import frechet_distance_gaussians

    analytic = (np.sum((mean_a - mean_b) ** 2) + np.trace(c_a + c_b)
                - 2 * np.trace(linalg.sqrtm(c_a @ c_b)).real)
    assert frechet_distance_gaussians(mean_a, c_a, mean_b, c_b) == pytest.approx(analytic, rel=1e-9)
    samples_a = rng.multivariate_normal(mean_a, c_a, 200000)
    samples_b = rng.multivariate_normal(mean_b, c_b, 200000)
    assert frechet_distance(samples_a, samples_b) == pytest.approx(analytic, rel=0.02)
    # diagonal covariances: sum (sqrt(s_a) - sqrt(s_b))^2 + |dmu|^2
    assert frechet_distance_gaussians([0, 0], np.diag([4.0, 1.0]), [3, 0], np.diag([1.0, 9.0])) == \
        pytest.approx(9 + 1 + 4)
    # on the codes of the survey's own autoencoder: 0 for one set, larger for a brighter copy than a noisier one
    encoder = train("conv-ae", blob_store, tmp_path / "ae", model_options={"latent_dim": 4, "channels": (8, 16)},
                    settings=TrainSettings(epochs=2, batch_size=32, progress=False, patience=0, threads=1))
    x = blob_store.read("x")
    assert encoder_frechet_distance(encoder, blob_store, x) == pytest.approx(0.0, abs=1e-8)
    noisier = x + np.random.default_rng(1).normal(0, 0.3, x.shape).astype(np.float32)
    assert encoder_frechet_distance(encoder, x, 2 * x) > 3 * encoder_frechet_distance(encoder, x, noisier)
    with pytest.raises(InputError, match="at least 2"):
        frechet_distance(a[:1], a)
