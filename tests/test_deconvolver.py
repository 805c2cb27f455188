"""The supervised deconvolver: flux equivariance, learning the truth from simulated pairs, its
tasks (denoise, translation to another survey's PSF) and the refusals."""

import numpy as np
import pytest
import torch

from deepfield.errors import InputError
from deepfield.models.deconvolver import Deconvolver, DeconvolverConfig, psf_channels

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def galaxies(tmp_path_factory):
    from deepfield.data.galaxies import simulate_galaxies

    return simulate_galaxies(tmp_path_factory.mktemp("deconv") / "g", 480, size=32, seed=21, workers=1,
                             progress=False)


@pytest.fixture(scope="module")
def trained(galaxies, tmp_path_factory):
    from deepfield.train import TrainSettings, train

    out = tmp_path_factory.mktemp("deconv-model") / "m"
    train("deconvolver", galaxies, out, model_options={"channels": (16, 32), "res_blocks": 1},
          settings=TrainSettings(epochs=16, batch_size=32, lr=2e-3, patience=0, progress=False, threads=1))
    import deepfield

    model = deepfield.load(out)
    model.folder = out
    return model


def test_psf_channels_centre_pad_and_crop():
    psf = torch.zeros(1, 1, 5, 5)
    psf[0, 0, 2, 2], psf[0, 0, 2, 3] = 0.5, 0.25
    big = psf_channels(psf, (8, 8))
    assert big.shape == (1, 1, 8, 8) and big[0, 0, 3, 3] == 1.0 and big[0, 0, 3, 4] == 0.5
    small = psf_channels(torch.nn.functional.pad(psf, (4, 4, 4, 4)), (5, 5))  # 13x13 cropped about the centre
    assert torch.equal(small, psf / 0.5)


def test_estimate_scales_with_flux_and_keeps_the_stamp_flux():
    torch.manual_seed(0)
    plain = Deconvolver(DeconvolverConfig(input_shape=(2, 16, 16), channels=(8, 16), res_blocks=1,
                                          conserve_flux=False)).eval()
    x, psf = torch.randn(3, 2, 16, 16) + 2.0, torch.rand(2, 7, 7)
    ivar = torch.full((3, 2, 16, 16), 4.0)
    ivar[0, 0, :3] = 0  # bad pixels
    assert not plain.deconvolve(x, psf, ivar).any()  # zero-initialised output layer
    m = Deconvolver(DeconvolverConfig(input_shape=(2, 16, 16), channels=(8, 16), res_blocks=1)).eval()
    torch.nn.init.normal_(m.net.out.weight, std=0.1)
    a = 7.5
    with torch.no_grad():
        one, scaled = m.deconvolve(x, psf, ivar), m.deconvolve(a * x, psf, ivar / a**2)
    torch.testing.assert_close(scaled, a * one, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(one, x, atol=1e-3)
    # conserve_flux: through the PSF, the estimate holds the stamp's flux on its valid pixels
    from deepfield.physics import convolve_psf

    valid = (ivar > 0).float()
    torch.testing.assert_close((convolve_psf(one, psf) * valid).sum((-2, -1)), (x * valid).sum((-2, -1)),
                               rtol=1e-4, atol=1e-3)
    with pytest.raises(InputError, match="NaN"):
        m.deconvolve(torch.full_like(x, float("nan")), psf, ivar)
    with pytest.raises(InputError, match="3 band"):  # a PSF per band, for 2 bands
        m.deconvolve(x, torch.rand(3, 7, 7), ivar)


def test_learns_the_psf_free_truth_better_than_the_observation(galaxies, trained):
    """Held-out galaxies: the squared error against the PSF-free truth, in noise variances,
    drops well below the observation's, the total flux is kept to a few per cent and the
    half-light radius of bright galaxies is far closer to the truth's than the observed one."""
    test = galaxies.split()["test"]
    x, truth = galaxies.read("x", test), galaxies.read("truth", test)
    psf, ivar = galaxies.read("psf", test), galaxies.read("ivar", test)
    with torch.no_grad():
        est = trained.deconvolve(torch.from_numpy(x), torch.from_numpy(psf), torch.from_numpy(ivar)).numpy()
    err_obs = ((x - truth) ** 2 * ivar).mean()
    err_est = ((est - truth) ** 2 * ivar).mean()
    assert err_est < 0.8 * err_obs, (err_est, err_obs)
    bright = galaxies.column("snr")[test] > 20
    flux = est[bright].sum((1, 2, 3)) / truth[bright].sum((1, 2, 3)) - 1
    assert abs(np.median(flux)) < 0.05, np.median(flux)

    from deepfield.metrics import half_light_radius

    centre = np.full((int(bright.sum()), 2), 15.5)
    r_true = half_light_radius(truth[bright, 0], centre=centre)

    def size_error(images):
        return np.median(half_light_radius(images[bright, 0], centre=centre) / r_true - 1)

    assert abs(size_error(est)) < 0.5 * size_error(x), (size_error(est), size_error(x))


def test_denoise_and_translate_with_a_deconvolver(galaxies, trained, tmp_path):
    from deepfield.data.store import create_store
    from deepfield.physics import gaussian_psf
    from deepfield.tasks import denoise_store
    from deepfield.tasks.translate import evaluate_translation

    test = galaxies.split()["test"]
    out = denoise_store(trained, galaxies, tmp_path / "d", indices=test, progress=False)
    assert out.ids.tolist() == galaxies.ids[test].tolist()
    with torch.no_grad():
        direct = trained.deconvolve(torch.from_numpy(galaxies.read("x", test)),
                                    torch.from_numpy(galaxies.read("psf", test)),
                                    torch.from_numpy(galaxies.read("ivar", test))).numpy()
    np.testing.assert_allclose(out.read("x"), direct, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="refine"):
        denoise_store(trained, galaxies, tmp_path / "d2", indices=test, refine_steps=5, progress=False)

    # the same galaxies as a sharper survey sees them: its PSF, the same truth
    sharp = gaussian_psf(0.3, size=15, pixel_scale=galaxies.pixel_scale).numpy()
    with create_store(tmp_path / "space", galaxies.sample_shape, bands=galaxies.bands,
                      pixel_scale=galaxies.pixel_scale, arrays={"truth": galaxies.sample_shape},
                      shared={"psf": sharp[None]}) as w:
        truth = galaxies.read("truth")
        w.append(x=truth, truth=truth, catalog={"id": galaxies.ids})
    result = evaluate_translation(trained, galaxies, w.store, indices=test, progress=False)
    m = result["methods"]
    assert set(m) == {"deconvolver", "wiener", "richardson_lucy", "source"}
    assert m["deconvolver"]["mse"] < m["source"]["mse"]
    with pytest.raises(InputError, match="one way"):
        evaluate_translation(trained, galaxies, w.store, direction="b2a", progress=False)

    from deepfield.physics import convolve_psf
    from deepfield.tasks.translate import translate_store

    drawn = translate_store(trained, galaxies, tmp_path / "t", indices=test, target_psf=sharp, progress=False)
    expected = convolve_psf(torch.from_numpy(direct), torch.from_numpy(sharp)).numpy()
    np.testing.assert_allclose(drawn.read("x"), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="target_psf"):
        translate_store(trained, galaxies, tmp_path / "t2", indices=test, progress=False)


def test_refuses_a_store_without_truth(blob_store, tmp_path):
    from deepfield.train import TrainSettings, train

    with pytest.raises(InputError, match="truth"):
        train("deconvolver", blob_store, tmp_path / "m", settings=TrainSettings(epochs=1, progress=False))


def test_cli_denoise_and_translate(galaxies, trained, tmp_path, capsys):
    from conftest import cli

    from deepfield.data.store import open_store

    code, out = cli(capsys, "denoise", str(trained.folder), "--store", str(galaxies.path), "--out",
                    str(tmp_path / "sky"), "--split", "test", "--no-progress")
    assert code == 0 and "denoised" in out
    code, out = cli(capsys, "translate", str(trained.folder), "--store", str(galaxies.path), "--out",
                    str(tmp_path / "sharp"), "--split", "test", "--psf-fwhm", "0.3", "--no-progress")
    assert code == 0 and "translated" in out
    from deepfield.physics import convolve_psf, gaussian_psf

    sky, sharp = open_store(tmp_path / "sky").read("x"), open_store(tmp_path / "sharp").read("x")
    # the same estimate, drawn through a 0.3" Gaussian
    kernel = gaussian_psf(0.3, size=25, pixel_scale=galaxies.pixel_scale)
    np.testing.assert_allclose(sharp, convolve_psf(torch.from_numpy(sky), kernel).numpy(), rtol=1e-4, atol=1e-4)
    code, out = cli(capsys, "translate", str(trained.folder), "--store", str(galaxies.path), "--out",
                    str(tmp_path / "none"), "--no-progress")
    assert code != 0 and "psf-fwhm" in out
