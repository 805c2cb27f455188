"""The cosmic-web validation (issue 17): 2-D P(k), cross P(k), peak counts and density
histograms on fields whose answer is known; the GAN's density-slice working spaces; and
`deepfield evaluate cosmicweb` on a tiny slices store with a tiny GAN."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import deepfield
from conftest import cli
from deepfield.data.nbody import simulate_nbody
from deepfield.errors import ConfigError, InputError
from deepfield.models.gan import DCGAN, DCGANConfig, WorkingStretch
from deepfield.physics.statistics import (cross_power_spectrum, density_histogram, local_maxima, peak_counts,
                                          power_spectrum)
from deepfield.tasks.cosmicweb import evaluate_cosmicweb, slice_geometry
from deepfield.train import TrainSettings, train
from deepfield.train.gan import train_gan

pytestmark = pytest.mark.usefixtures("one_thread")

BOX = 200.0  # Mpc/h


def power_law(k: torch.Tensor) -> torch.Tensor:
    """A 2-D power spectrum in (Mpc/h)^2 for k in h/Mpc: 300 (k / 0.1)^-1."""
    return 300.0 * (k / 0.1) ** -1.0


def gaussian_slices(n: int, size: int, seed: int) -> torch.Tensor:
    """(n, size, size) Gaussian fields with P(k) = power_law on a BOX-wide periodic square:
    white noise times sqrt(P(k) N_pix / V) in Fourier space, so <|delta_k|^2> V / N_pix^2 = P(k)."""
    g = torch.Generator().manual_seed(seed)
    white = torch.randn(n, size, size, generator=g, dtype=torch.float64)
    kx = 2 * math.pi * torch.fft.fftfreq(size, d=BOX / size, dtype=torch.float64)
    ky = 2 * math.pi * torch.fft.rfftfreq(size, d=BOX / size, dtype=torch.float64)
    k = torch.sqrt(kx[:, None] ** 2 + ky[None, :] ** 2)
    amplitude = torch.sqrt(power_law(k.clamp_min(1e-6)) * size * size / BOX ** 2)
    amplitude[0, 0] = 0.0
    return torch.fft.irfft2(torch.fft.rfft2(white) * amplitude, s=(size, size))


def test_2d_power_spectrum_of_gaussian_slices_is_the_input_within_errors():
    slices = gaussian_slices(24, 64, seed=1)
    pk = power_spectrum(slices, (BOX, BOX))
    assert pk.power.shape == (24, len(pk.k))
    mean = pk.power.mean(0)
    # the binned power is the mean of P over the bin's modes: compare there (P varies within a bin)
    kx = 2 * math.pi * torch.fft.fftfreq(64, d=BOX / 64, dtype=torch.float64)
    k_modes = torch.sqrt(kx[:, None] ** 2 + kx[None, :] ** 2).reshape(-1)
    expected = torch.stack([power_law(k_modes[(k_modes >= lo) & (k_modes < hi)]).mean()
                            for lo, hi in zip(pk.edges[:-1], pk.edges[1:])])
    relative_se = torch.sqrt(2.0 / pk.n_modes) / math.sqrt(24)
    pull = (mean / expected - 1) / relative_se
    assert float(pull.abs().max()) < 4.5
    assert abs(float(pull.mean())) < 1.0  # no overall bias: the normalisation V / N^2 is right


def test_cross_power_with_itself_is_the_power_and_with_an_independent_field_is_zero():
    a = gaussian_slices(16, 32, seed=2)
    b = gaussian_slices(16, 32, seed=3)
    auto = power_spectrum(a, (BOX, BOX))
    torch.testing.assert_close(cross_power_spectrum(a, a, (BOX, BOX)).power, auto.power)
    cross = cross_power_spectrum(a, b, (BOX, BOX)).power.mean(0)
    # Re(a_k b_k*) of independent Gaussian modes: mean 0, standard deviation P / sqrt(n_modes) per bin
    scale = auto.power.mean(0) / torch.sqrt(auto.n_modes * 16)
    assert float((cross / scale).abs().max()) < 4.5
    assert float((cross / auto.power.mean(0)).abs().max()) < 0.2


def test_peak_counts_find_planted_peaks_across_the_periodic_edge():
    y, x = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    field = torch.zeros(2, 48, 48, dtype=torch.float64)
    for (cy, cx), height in (((10, 10), 1.0), ((30, 12), 2.0), ((20, 35), 3.0), ((0, 47), 5.0)):
        dy = torch.remainder(y - cy + 24, 48) - 24  # periodic distance: the last bump straddles two edges
        dx = torch.remainder(x - cx + 24, 48) - 24
        field[0] += height * torch.exp(-(dx ** 2 + dy ** 2) / (2 * 2.0 ** 2))
    field[1] = field[0].roll(shifts=(5, -7), dims=(0, 1)) * 2  # the same peaks, moved and twice as high
    edges = [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 7.0, 12.0]
    per_field = peak_counts(field, edges, per_field=True)
    np.testing.assert_array_equal(per_field.numpy(), [[1, 1, 1, 0, 1, 0, 0], [0, 1, 0, 1, 0, 1, 1]])
    torch.testing.assert_close(peak_counts(field, edges), per_field.mean(0))
    peaks = local_maxima(field)
    assert int(peaks.sum()) == 8 and bool(peaks[0, 0, 47]) and bool(peaks[1, 5, 40])


def test_per_field_density_histograms_average_to_the_pooled_one():
    fields = torch.exp(gaussian_slices(6, 32, seed=4) / 20)
    edges = torch.linspace(-0.5, 0.5, 21)
    per_field = density_histogram(fields, edges, spatial_dims=2)
    assert per_field.shape == (6, 20)
    torch.testing.assert_close(per_field.mean(0), density_histogram(fields, edges))
    widths = edges[1:] - edges[:-1]
    inside = ((torch.log10(fields) >= -0.5) & (torch.log10(fields) < 0.5)).double().mean((1, 2))
    torch.testing.assert_close((per_field * widths.double()).sum(1), inside)


@pytest.mark.parametrize("kind", ["log", "rodriguez"])
def test_density_stretches_round_trip_and_bound_the_training_slices(kind):
    rng = np.random.default_rng(0)
    x = rng.lognormal(0.0, 0.8, size=(40, 1, 8, 8)).astype(np.float32)
    x[0, 0, 0, 0] = 0.0  # an empty cell
    stretch = WorkingStretch((1, 1, 1), kind, softening=0.5)
    xn = torch.from_numpy(x)
    stretch.fit(iter([xn]))
    u = stretch(xn)
    assert float(u.min()) >= -1 and float(u.max()) < 1
    torch.testing.assert_close(stretch.inverse(u), xn, rtol=1e-4, atol=1e-5)
    if kind == "log":
        with pytest.raises(InputError, match="non-negative"):
            WorkingStretch((1, 1, 1), kind, softening=0.5).fit(iter([xn - 2]))
    if kind == "log":  # centred: the emptiest and densest cells sit at -1/1.05 and +1/1.05
        assert math.isclose(float(u.min()), -1 / 1.05, rel_tol=1e-4) and math.isclose(float(u.max()), 1 / 1.05,
                                                                                         rel_tol=1e-4)
    else:  # s(x) = 2x / (x + a) - 1: the empty cell at -1, a cell at x = a at 0
        assert float(u.min()) == -1.0
        assert float(stretch(torch.full((1, 1, 1, 1), 0.5))) == pytest.approx(0.0, abs=1e-7)


def test_circular_padding_makes_the_networks_periodic():
    torch.manual_seed(0)
    gan = DCGAN(DCGANConfig(input_shape=(1, 16, 16), latent_dim=4, channels=(4, 8), padding="circular")).eval()
    u = torch.randn(2, 1, 16, 16)
    f = gan.critic.body[0]  # the stem: a periodic 3x3 convolution commutes with periodic shifts
    torch.testing.assert_close(f(u.roll(3, -1)), f(u).roll(3, -1))
    zeros = DCGAN(DCGANConfig(input_shape=(1, 16, 16), latent_dim=4, channels=(4, 8))).eval().critic.body[0]
    zeros.load_state_dict(f.state_dict())
    assert not torch.allclose(zeros(u.roll(3, -1)), zeros(u).roll(3, -1))
    with pytest.raises(ConfigError, match="padding 'reflect'"):
        DCGAN(DCGANConfig(input_shape=(1, 16, 16), padding="reflect"))


def test_noise_injection_starts_as_the_identity_and_adds_seeded_small_scale_power():
    config = DCGANConfig(input_shape=(1, 16, 16), latent_dim=8, channels=(8, 16), padding="circular")
    torch.manual_seed(0)
    plain = DCGAN(config).eval()
    torch.manual_seed(0)  # the same networks: the noise weights draw nothing and start at 0
    noisy = DCGAN(DCGANConfig(**{**config.__dict__, "noise_injection": True})).eval()
    seed = torch.Generator().manual_seed
    assert torch.equal(plain.sample(4, generator=seed(1)), noisy.sample(4, generator=seed(1)))
    with torch.no_grad():
        for m in noisy.generator.body:
            if hasattr(m, "source"):
                m.weight.fill_(1.0)
    a, b = noisy.sample(4, generator=seed(1)), noisy.sample(4, generator=seed(1))
    assert torch.equal(a, b) and not torch.equal(a, noisy.sample(4, generator=seed(2)))
    # the noise raises the power of the finest scales (the outer half of the k range) over the plain generator
    def high_k_power(x):
        power = torch.fft.fft2(x - x.mean(dim=(-2, -1), keepdim=True)).abs() ** 2
        k = torch.fft.fftfreq(16).abs()
        return float(power[..., (k[:, None] > 0.25) | (k[None, :] > 0.25)].mean())
    assert high_k_power(a) > 1.5 * high_k_power(plain.sample(4, generator=seed(1)))


def test_spectral_critic_reads_the_ring_averaged_power_of_its_input():
    gan = DCGAN(DCGANConfig(input_shape=(1, 16, 16), latent_dim=4, channels=(4, 8), spectral_critic=True))
    x = torch.arange(16.0)
    wave = torch.cos(2 * math.pi * 3 * x / 16)[None, :].expand(16, 16)  # one mode, |k| = 3 cells^-1
    rings = gan.critic_spectrum.ring_power(wave[None, None])[0, 0]
    assert rings.shape == (8,) and int(rings.argmax()) == 2  # ring 3 (rings start at |k| = 1)
    assert float(rings.sum() - rings[2]) < 1e-8
    # Parseval: modes (0, +-3) share sum u^2 = 128, so the stored (0, +3) holds 64, averaged over ring 3's modes
    ring3 = int((gan.critic_spectrum.ring == 3).sum())
    assert float(rings[2]) == pytest.approx(64.0 / ring3, rel=1e-5)
    u = torch.randn(3, 1, 16, 16)
    assert gan.critic_features(u).shape == (3, gan.critic.features + 64)
    assert "critic_spectrum.ring" not in gan.state_dict()  # derived from the shape, not saved


@pytest.fixture(scope="module")
def slices_and_gan(tmp_path_factory):
    root = tmp_path_factory.mktemp("cosmicweb")
    store = simulate_nbody(root / "slices", 6, mesh=16, box_size=128.0, n_steps=2, seed=3, slice_thickness=32.0)
    settings = TrainSettings(epochs=1, batch_size=8, seed=0, split_fractions=(0.5, 0.1, 0.4), progress=False)
    train_gan("dcgan", store, root / "gan", settings=settings,
              model_options={"latent_dim": 8, "channels": (8, 16), "stretch": "log", "padding": "circular",
                             "encoder_epochs": 0})
    return store, root / "gan", root


def test_evaluate_cosmicweb_compares_held_out_slices_with_as_many_samples(slices_and_gan):
    store, folder, _ = slices_and_gan
    assert slice_geometry(store) == {"box_size": 128.0, "slice_thickness": 32.0, "pixels": 16}
    model = deepfield.load(folder)
    result = evaluate_cosmicweb(model, store, seed=1)
    test_rows = np.sort(store.split((0.5, 0.1, 0.4), seed=0)["test"])
    assert result["n_slices"] == test_rows.size >= 4
    names = [r["statistic"] for r in result["rows"]]
    assert names.count("density histogram") == 24 and names.count("peak counts") == 14
    n_k = names.count("P(k)")
    assert n_k == names.count("cross P(k) sim-GAN") == names.count("cross P(k) GAN-GAN") == 7  # k_f .. Nyquist
    for r in result["rows"]:
        assert all(math.isfinite(r[k]) for k in ("x", "sim", "sim_se", "gan", "gan_se", "z"))
        assert r["within_2se"] == (abs(r["z"]) <= 2)
        # no ratio for the cross spectra (consistent with zero) or where N-body has no counts
        assert (r["ratio"] is None) == (r["statistic"].startswith("cross") or r["sim"] == 0)
    pk = [r for r in result["rows"] if r["statistic"] == "P(k)"]
    # the first bin (0.5 to 1.5 k_f) holds the 4 modes at k_f and the 4 at sqrt(2) k_f
    assert pk[0]["x"] == pytest.approx((1 + math.sqrt(2)) / 2 * 2 * math.pi / 128.0, rel=1e-6)
    # the N-body side is the store's own slices: their mean P(k) recomputed here
    sim = torch.from_numpy(store.read("x", test_rows)[:, 0]).double()
    np.testing.assert_allclose([r["sim"] for r in pk], power_spectrum(sim - 1, (128.0, 128.0)).power.mean(0).numpy(),
                               rtol=1e-6)
    hist = [r for r in result["rows"] if r["statistic"] == "density histogram"]
    width = hist[1]["x"] - hist[0]["x"]
    assert 0.95 < sum(r["sim"] for r in hist) * width <= 1.0  # the 0.1-99.9 percentile range holds ~all pixels
    assert result["summary"]["P(k)"]["bins"] == 7
    # the same seed draws the same samples
    again = evaluate_cosmicweb(model, store, seed=1)
    assert [r["gan"] for r in again["rows"]] == [r["gan"] for r in result["rows"]]


def test_evaluate_cosmicweb_refuses_3d_stores_and_models_that_cannot_sample(slices_and_gan, tmp_path):
    store, folder, root = slices_and_gan
    fields = simulate_nbody(tmp_path / "fields", 1, mesh=16, box_size=128.0, n_steps=2, seed=3)
    with pytest.raises(InputError, match="not 2-D density slices.*--slices"):
        evaluate_cosmicweb(deepfield.load(folder), fields)
    train("pca", store, tmp_path / "pca", model_options={"latent_dim": 2},
          settings=TrainSettings(epochs=1, progress=False))
    with pytest.raises(InputError, match="cannot sample"):
        evaluate_cosmicweb(deepfield.load(tmp_path / "pca"), store)


def test_cli_evaluate_cosmicweb_writes_table_figure_and_page(slices_and_gan, capsys, tmp_path):
    store, folder, _ = slices_and_gan
    out = tmp_path / "eval"
    code, text = cli(capsys, "evaluate", "cosmicweb", folder, "--store", store.path, "--out", out)
    assert code == 0, text
    assert "peak counts" in text and "within 2 SE" in text and "P(k)" in text
    result = json.loads((out / "cosmicweb.json").read_text())
    assert result["n_slices"] >= 4 and len(result["rows"]) > 50
    for name in ("cosmicweb.png", "examples.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "cosmicweb.png" in (out / "index.html").read_text()
    code, text = cli(capsys, "evaluate", "cosmicweb", folder, "--store", store.path, "--split", "all", "--n", "2",
                     "--out", tmp_path / "few")
    assert code != 0 and "at least 4" in text


def test_a_cosmology_conditioned_gan_is_sampled_at_the_held_out_slices_cosmology(tmp_path):
    store = simulate_nbody(tmp_path / "varied", 6, mesh=16, box_size=128.0, n_steps=2, seed=5, slice_thickness=32.0,
                           vary={"sigma8": (0.6, 1.0)})
    settings = TrainSettings(epochs=1, batch_size=8, seed=0, split_fractions=(0.5, 0.1, 0.4), progress=False)
    train_gan("cgan", store, tmp_path / "cgan", settings=settings,
              model_options={"latent_dim": 8, "channels": (8, 16), "stretch": "log", "padding": "circular",
                             "encoder_epochs": 0, "condition": ("sigma8",)})
    model = deepfield.load(tmp_path / "cgan")
    result = evaluate_cosmicweb(model, store, seed=0)
    assert result["n_slices"] >= 4 and all(math.isfinite(r["gan"]) for r in result["rows"])
    # the samples are those drawn at the held-out rows' own sigma8, with the seed's generator
    rows = np.sort(store.split((0.5, 0.1, 0.4), seed=0)["test"])
    sigma8 = torch.from_numpy(store.column("sigma8")[rows].astype(np.float32))
    assert len(set(sigma8.tolist())) > 1  # several cosmologies among the held-out slices
    with torch.no_grad():
        samples = model.sample(rows.size, condition={"sigma8": sigma8}, generator=torch.Generator().manual_seed(0))
    expected = power_spectrum(samples[:, 0].double() - 1, (128.0, 128.0)).power.mean(0).numpy()
    np.testing.assert_allclose([r["gan"] for r in result["rows"] if r["statistic"] == "P(k)"], expected, rtol=1e-6)
