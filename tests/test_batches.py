"""The data layer's batches: which arrays a model reads from a store, and that a likelihood
uses what the store records (its noise power spectrum, its bad-pixel mask) when it has it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepfield.data.batches import iterate_batches, make_loader, model_arrays
from deepfield.data.store import create_store, open_store
from deepfield.models import VAE, VAEConfig
from deepfield.physics import fourier_nll, noise_power_spectrum_from_ivar, psf_band_limit_mask

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, SIGMA = 16, 0.5
TINY = dict(latent_dim=2, channels=(4, 8), blocks=1)


def _psf(size: int = 7, sigma: float = 1.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    psf = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    return (psf / psf.sum()).astype(np.float32)


def _coloured_noise_ps() -> np.ndarray:
    """A noise power spectrum (1, H, W) that white noise of ivar 1/SIGMA^2 does not have:
    SIGMA^2 at zero frequency, rising to 4 SIGMA^2 at the highest |k| (correlated noise)."""
    k = np.fft.fftfreq(SIZE)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    return (SIGMA**2 * (1 + 3 * k2 / k2.max()))[None].astype(np.float32)


def _store(path, *, noise_ps: bool = False, mask: np.ndarray | None = None, ivar: np.ndarray | None = None):
    """8 noisy Gaussian blobs with a per-object PSF and ivar (and optionally noise_ps, mask)."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    sky = 60 * np.exp(-(xx**2 + yy**2) / (2 * 2.0**2)) / (2 * np.pi * 2.0**2)
    x = (sky[None, None] + rng.normal(0, SIGMA, (8, 1, SIZE, SIZE))).astype(np.float32)
    arrays = {"psf": np.repeat(_psf()[None, None], 8, 0),
              "ivar": np.full(x.shape, 1 / SIGMA**2, np.float32) if ivar is None else ivar}
    if noise_ps:
        arrays["noise_ps"] = np.repeat(_coloured_noise_ps()[None], 8, 0)
    if mask is not None:
        arrays["mask"] = mask
    with create_store(path, (1, SIZE, SIZE), bands=("r",), pixel_scale=0.2,
                      arrays={k: v.shape[1:] for k, v in arrays.items()}) as w:
        w.append(x=x, **arrays)
    return open_store(path)


def _vae(likelihood: str, store) -> VAE:
    torch.manual_seed(0)
    model = VAE(VAEConfig(input_shape=(1, SIZE, SIZE), likelihood=likelihood, **TINY))
    model.fit_normalisation(store.read("x"))
    return model.eval()


def test_model_arrays_are_the_required_then_the_optional_ones_the_store_has(tmp_path):
    plain = _store(tmp_path / "plain")
    recorded = _store(tmp_path / "recorded", noise_ps=True, mask=np.zeros((8, 1, SIZE, SIZE), bool))
    fourier, pixel, gaussian = _vae("fourier", plain), _vae("pixel", plain), _vae("gaussian", plain)
    assert model_arrays(fourier) == ("x", "psf", "ivar")  # no store: the required ones only
    assert model_arrays(fourier, plain) == ("x", "psf", "ivar")
    assert model_arrays(fourier, recorded) == ("x", "psf", "ivar", "noise_ps")
    assert model_arrays(pixel, recorded) == ("x", "psf", "ivar", "mask")
    assert model_arrays(gaussian, recorded) == ("x",)
    # the training loader carries them too
    batch = next(iter(make_loader(recorded, np.arange(8), batch_size=4, shuffle=False, model=fourier)))
    assert set(batch) == {"x", "psf", "ivar", "noise_ps", "id", "index"}
    assert torch.allclose(batch["noise_ps"][0], torch.from_numpy(_coloured_noise_ps()))


@torch.no_grad()
def test_fourier_likelihood_uses_the_stored_noise_power_spectrum(tmp_path):
    plain = _store(tmp_path / "plain")
    recorded = _store(tmp_path / "recorded", noise_ps=True)
    model = _vae("fourier", recorded)
    rows = np.arange(8)
    from_store = next(iterate_batches(recorded, rows, model, 8))
    from_ivar = next(iterate_batches(plain, rows, model, 8))
    assert "noise_ps" in from_store and "noise_ps" not in from_ivar
    assert torch.equal(from_store["x"], from_ivar["x"])  # the same pixels: only the noise model differs
    nll_stored = model.elbo_terms(from_store, sample=False).nll
    nll_ivar = model.elbo_terms(from_ivar, sample=False).nll

    # the same numbers from the physics layer's Fourier likelihood, given each spectrum
    predicted = model.reconstruct_batch(from_store)
    band_mask = psf_band_limit_mask(from_store["psf"], (SIZE, SIZE), 1e-3)
    stored_ps = torch.from_numpy(_coloured_noise_ps())
    white_ps = noise_power_spectrum_from_ivar(from_ivar["ivar"])
    assert torch.allclose(white_ps, torch.full_like(white_ps, SIGMA**2))
    expected_stored = fourier_nll(predicted, from_store["x"], stored_ps, band_mask)
    expected_ivar = fourier_nll(predicted, from_store["x"], white_ps, band_mask)
    assert torch.allclose(nll_stored, expected_stored, rtol=1e-5)
    assert torch.allclose(nll_ivar, expected_ivar, rtol=1e-5)
    # up to 4x the white variance at high |k|: several nats per object apart (the normalisation
    # rises, the chi^2 of the high-|k| residuals falls)
    assert float((nll_stored - nll_ivar).abs().min()) > 5.0
    # and so does the bound training maximises (the same posterior draw: the encoder sees the same pixels)
    torch.manual_seed(1)
    elbo_stored = model.elbo(from_store)
    torch.manual_seed(1)
    elbo_ivar = model.elbo(from_ivar)
    assert float((elbo_stored - elbo_ivar).abs().min()) > 5.0


@torch.no_grad()
def test_pixel_likelihood_leaves_out_the_stored_mask(tmp_path):
    flagged = np.zeros((8, 1, SIZE, SIZE), bool)
    flagged[:, 0, 2:5, 3:9] = True  # 18 bad pixels per object
    masked = _store(tmp_path / "masked", mask=flagged)
    ivar = np.full(flagged.shape, 1 / SIGMA**2, np.float32)
    ivar[flagged] = 0.0
    zero_ivar = _store(tmp_path / "zero_ivar", ivar=ivar)
    plain = _store(tmp_path / "plain")
    model = _vae("pixel", plain)
    rows = np.arange(8)
    nll = {name: model.elbo_terms(next(iterate_batches(s, rows, model, 8)), sample=False).nll
           for name, s in (("masked", masked), ("zero_ivar", zero_ivar), ("plain", plain))}
    # a flagged pixel carries no measurement, exactly as one with ivar 0
    assert torch.allclose(nll["masked"], nll["zero_ivar"], rtol=1e-6)
    # 18 fewer pixels: each took at least its normalisation 0.5 log(2 pi sigma^2) = -0.23 nats
    # and its chi^2 share, so the NLL changes
    assert not torch.allclose(nll["masked"], nll["plain"], rtol=1e-3)
