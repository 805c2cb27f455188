"""PixelCNN: no blind spot, a normalised likelihood, sampling that follows it, training, save/load."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from deepfield.errors import ConfigError, InputError
from deepfield.models import load_model, save_model
from deepfield.models.pixelcnn import PixelCNN, PixelCNNConfig, discretized_logistic_mixture_log_prob


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(bands=1, size=6, layers=3, kernel_size=5, bits=3, mixtures=2, **kw) -> PixelCNN:
    torch.manual_seed(0)
    cfg = PixelCNNConfig(input_shape=(bands, size, size), channels=8, layers=layers, kernel_size=kernel_size,
                         mixtures=mixtures, bits=bits, noise_sigma=(1.0,) * bands, low=(-3.0,) * bands,
                         high=(3.0,) * bands, **kw)
    return PixelCNN(cfg).double()


def _all_levels(bands: int, size: int, levels: int) -> torch.Tensor:
    grid = itertools.product(range(levels), repeat=bands * size * size)
    return torch.tensor(list(grid), dtype=torch.float64).reshape(-1, bands, size, size)


@pytest.mark.parametrize("bands", [1, 3])
def test_output_depends_exactly_on_earlier_pixels(bands):
    """d output(i, j) / d input is non-zero on every pixel before (i, j) in raster order (all bands)
    and zero on (i, j) itself and after: no blind spot, no leak, full receptive field."""
    size = 6  # layers * (kernel_size // 2) = 6 >= size - 1: the receptive field must cover all
    model = _model(bands, size)
    for i, j in itertools.product(range(size), range(size)):
        u = torch.randn(1, bands, size, size, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(model.network(u)[0, :, i, j].sum(), u)
        nonzero = grad[0].abs() > 0  # (bands, size, size)
        before = torch.zeros(size * size, dtype=torch.bool)
        before[: i * size + j] = True
        expected = before.reshape(size, size).expand(bands, -1, -1)
        assert torch.equal(nonzero, expected), f"pixel ({i}, {j}): dependence {nonzero.int().tolist()}"


def test_bands_at_a_pixel_depend_only_on_earlier_bands():
    """The logistic means of band c at (i, j) depend on bands c' < c of that pixel, not on c' >= c."""
    from deepfield.models.pixelcnn import _mixture_parameters

    model = _model(3, 4)
    u = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    _, means, _ = _mixture_parameters(model.network(u), u, 3, model.config.mixtures)
    for band in range(3):
        (grad,) = torch.autograd.grad(means[0, :, band, 2, 1].sum(), u, retain_graph=True)
        at_pixel = (grad[0, :, 2, 1].abs() > 0).tolist()
        assert at_pixel == [b < band for b in range(3)], (band, at_pixel)


@pytest.mark.parametrize("bands,bits", [(1, 1), (1, 4), (2, 3), (3, 2)])
def test_discretized_logistic_mixture_sums_to_one(bands, bits):
    levels = 2**bits
    k = 3
    gen = torch.Generator().manual_seed(bits)
    n_params = k * (1 + 2 * bands + bands * (bands - 1) // 2)
    params = 2 * torch.randn(1, n_params, 1, 1, generator=gen, dtype=torch.float64)
    q = _all_levels(bands, 1, levels)  # every joint value of the bands at one pixel
    u = 2 * q / (levels - 1) - 1
    p = discretized_logistic_mixture_log_prob(u, params.expand(len(q), -1, -1, -1), levels, k).exp()
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)


def test_model_is_normalised_over_all_images():
    """Sum of P over all 4**8 images of 2 bands x 2 x 2 pixels at 2 bits is 1: the autoregressive
    factorisation is exact (a network that saw the pixel it predicts would not sum to 1)."""
    model = _model(2, 2, layers=1, kernel_size=3, bits=2)
    q = _all_levels(2, 2, 4)
    x = model.dequantise(q)
    assert torch.equal(model.quantise(x), q)
    with torch.no_grad():
        total = float(model.log_prob(x).exp().sum())
    assert total == pytest.approx(1.0, abs=1e-10)


def test_single_logistic_matches_scipy_and_bits_per_dim():
    """A head that predicts one logistic (mean 0, scale 0.5 in [-1, 1] units) everywhere: log P is
    the sum of scipy logistic bin masses, and bits/dim = -log P / (C H W ln 2)."""
    model = _model(1, 3, bits=3, mixtures=1)
    last = model.head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 0.0, math.log(0.5)], dtype=torch.float64))
    q = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 3], dtype=torch.float64).reshape(1, 1, 3, 3)
    centres = 2 * q.flatten().numpy() / 7 - 1
    lo = np.where(q.flatten().numpy() == 0, -np.inf, centres - 1 / 7)
    hi = np.where(q.flatten().numpy() == 7, np.inf, centres + 1 / 7)
    expected = np.log(stats.logistic.cdf(hi, scale=0.5) - stats.logistic.cdf(lo, scale=0.5)).sum()
    x = model.dequantise(q)
    with torch.no_grad():
        assert float(model.log_prob(x)) == pytest.approx(expected, rel=1e-10)
        assert float(model.bits_per_dim(x)) == pytest.approx(-expected / (9 * math.log(2)), rel=1e-10)


def test_ancestral_samples_follow_the_likelihood():
    """Sampling frequencies of the 2**8 images of 2 x 2 pixels at 2 bits match exp(log_prob)."""
    model = _model(1, 2, layers=1, kernel_size=3, bits=2).float()
    q = _all_levels(1, 2, 4).float()
    with torch.no_grad():
        p = model.log_prob(model.dequantise(q)).double().exp().numpy()
    samples = model.sample(20000, generator=torch.Generator().manual_seed(3))
    codes = model.quantise(samples).reshape(-1, 4).long().numpy() @ (4 ** np.arange(3, -1, -1))
    counts = np.bincount(codes, minlength=256)
    keep = p * 20000 >= 5
    chi2 = (((counts - 20000 * p) ** 2) / (20000 * p))[keep].sum()
    assert stats.chi2.sf(chi2, keep.sum() - 1) > 1e-3
    assert 0.5 * np.abs(counts / 20000 - p).sum() < 0.05  # total variation distance


def test_sampling_is_seeded():
    model = _model(2, 5).float()
    a = model.sample(3, generator=torch.Generator().manual_seed(1))
    b = model.sample(3, generator=torch.Generator().manual_seed(1))
    c = model.sample(3, generator=torch.Generator().manual_seed(2))
    assert a.shape == (3, 2, 5, 5) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(model.dequantise(model.quantise(a)), a)  # samples are bin centres, store units


def test_stretch_is_asinh_in_noise_units_and_recorded():
    model = PixelCNN(PixelCNNConfig(input_shape=(1, 8, 8), bits=8, softening=2.0))
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3.0, (200, 1, 8, 8))
    x[:, :, 3:5, 3:5] += 300.0  # a bright source in the centre, sky at the border
    model.fit_normalisation(x)
    cfg = model.config
    assert cfg.noise_sigma[0] == pytest.approx(3.0, rel=0.05)
    y = np.arcsinh(x / (2.0 * cfg.noise_sigma[0]))
    span = y.max() - y.min()
    assert cfg.low[0] == pytest.approx(y.min() - 0.05 * span) and cfg.high[0] == pytest.approx(y.max() + 0.05 * span)
    q = model.quantise(torch.tensor(x, dtype=torch.float32))
    expected = np.clip(np.round((y - cfg.low[0]) / (cfg.high[0] - cfg.low[0]) * 255), 0, 255)
    assert np.abs(q.numpy() - expected).max() <= 1  # float32 vs float64 rounding at bin edges


def test_trained_model_beats_baselines_and_round_trips(blob_store, tmp_path):
    from deepfield.train import TrainSettings, train

    path = train("pixelcnn", blob_store, tmp_path / "pcnn",
                 model_options={"channels": 12, "layers": 3, "mixtures": 3, "bits": 6},
                 settings=TrainSettings(epochs=15, batch_size=32, lr=5e-3, patience=0, progress=False, threads=1))
    model = load_model(path)
    x = torch.from_numpy(blob_store.read("x", blob_store.split(seed=0)["train"]))
    with torch.no_grad():
        bpd = model.bits_per_dim(x).numpy()
    q = model.quantise(x).long().numpy().ravel()
    hist = np.bincount(q, minlength=model.levels) / q.size
    independent = -np.log2(hist[q]).mean()  # i.i.d. pixels: the training data's own level histogram
    assert bpd.mean() < independent - 0.3 and independent < 6 - 0.5  # i.i.d. pixels beat uniform (6 bits)
    assert model.config.noise_sigma[0] == pytest.approx(0.3, rel=0.1)  # the blobs' sky noise
    again = path.parent / "again"
    save_model(model, again)
    with torch.no_grad():
        assert torch.equal(load_model(again).log_prob(x[:8]), model.log_prob(x[:8]))
    gen = [torch.Generator().manual_seed(5) for _ in range(2)]
    assert torch.equal(load_model(again).sample(2, generator=gen[0]), model.sample(2, generator=gen[1]))


def test_background_model_perturbs_training_only():
    model = _model(1, 4, perturb_rate=0.5)
    x = model.dequantise(torch.randint(0, 8, (4, 1, 4, 4)).double())
    torch.manual_seed(0)
    a = model.loss({"x": x})["loss"]
    b = model.loss({"x": x})["loss"]
    assert not torch.equal(a, b)  # fresh perturbations each step
    model.eval()
    assert torch.equal(model.loss({"x": x})["loss"], -model.log_prob(x).mean() / (16 * math.log(2)))
    assert torch.equal(model.log_prob(x), model.log_prob(x))  # scoring never perturbs


def test_conditional_model_uses_and_range_checks_its_columns():
    model = _model(1, 4, condition=("magnitude",))
    model.fit_conditions(np.array([[20.0], [24.0]]))
    x = model.dequantise(torch.randint(0, 8, (2, 1, 4, 4)).double())
    with torch.no_grad():
        a = model.log_prob({"x": x, "magnitude": torch.tensor([21.0, 21.0])})
        b = model.log_prob({"x": x, "magnitude": torch.tensor([23.0, 23.0])})
    assert not torch.allclose(a, b)
    with pytest.warns(UserWarning, match="magnitude outside the training range"):
        model.sample(1, condition={"magnitude": 27.0}, generator=torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match="conditioned on"):
        model.log_prob(x)


def test_bad_input_is_refused():
    model = _model(1, 4)
    with pytest.raises(InputError, match="1 band"):
        model.log_prob(torch.zeros(2, 2, 4, 4, dtype=torch.float64))
    x = torch.zeros(3, 1, 4, 4, dtype=torch.float64)
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match=r"ids \[11\]"):
        model.log_prob({"x": x, "id": torch.tensor([10, 11, 12])})
    with pytest.raises(ConfigError, match="perturb_rate"):
        PixelCNN(PixelCNNConfig(input_shape=(1, 4, 4), perturb_rate=1.5))
    with pytest.raises(ConfigError, match="2 value"):
        PixelCNN(PixelCNNConfig(input_shape=(1, 4, 4), noise_sigma=(1.0, 2.0)))
    with pytest.raises(ConfigError, match="stretch is not set"):
        PixelCNN(PixelCNNConfig(input_shape=(1, 4, 4))).log_prob(torch.zeros(1, 1, 4, 4))
