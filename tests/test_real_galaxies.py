"""The Lanusse et al. pipeline on real HST galaxies: import a RealGalaxyCatalog, learn at HST
resolution with the Fourier likelihood and each galaxy's recorded noise power spectrum, sample.

Five AEGIS galaxies (tests/data/galsim-real) measure nothing about fidelity; they show that the
pipeline runs end to end on real data and that the model fits them to the noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import deepfield
from deepfield.data.batches import iterate_batches, model_arrays
from deepfield.data.importers import import_cosmos
from deepfield.train import TrainSettings, train

pytestmark = pytest.mark.usefixtures("one_thread")
REAL = Path(__file__).parent / "data" / "galsim-real"


def _chi2_per_pixel(x: torch.Tensor, prediction: torch.Tensor, noise_ps: torch.Tensor) -> np.ndarray:
    """Residual power over the recorded noise power spectrum, per Fourier mode, averaged per galaxy."""
    residual = torch.fft.fft2(x - prediction, norm="ortho")
    return (residual.abs() ** 2 / noise_ps).flatten(1).mean(1).double().numpy()


def test_a_vae_learns_real_hst_galaxies_to_their_own_noise_and_samples(tmp_path):
    store = import_cosmos(REAL / "AEGIS_F814w_catalog.fits", tmp_path / "aegis", dir=REAL, size=48, progress=False)
    out = train("vae", store, tmp_path / "vae",
                model_options={"likelihood": "fourier", "latent_dim": 8, "channels": (8, 16, 32), "beta": 0.1},
                settings=TrainSettings(epochs=120, batch_size=5, lr=3e-3, patience=0, split_fractions=(1.0, 0.0, 0.0),
                                       progress=False, threads=1))
    model = deepfield.load(out)
    assert "noise_ps" in model_arrays(model, store)  # the correlated HST noise, not a white one from ivar
    batch = next(iterate_batches(store, np.arange(len(store)), model, len(store)))
    with torch.no_grad():
        chi2 = _chi2_per_pixel(batch["x"], model.reconstruct_batch(batch), batch["noise_ps"])
        empty = _chi2_per_pixel(batch["x"], torch.zeros_like(batch["x"]), batch["noise_ps"])
    # the galaxies are fitted to their own noise: chi^2 per pixel near 1 for each, where an empty
    # sky leaves the galaxy's own light in the residual
    assert np.all((chi2 > 0.7) & (chi2 < 2.0)), chi2
    assert np.all(empty > chi2) and (empty / chi2).max() > 5, (empty, chi2)  # bright ones: 10-12 -> ~1.5
    samples = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (4, 1, 48, 48) and bool(torch.isfinite(samples).all())
    assert float(samples.min()) >= 0  # the decoder draws non-negative, PSF-free sky
