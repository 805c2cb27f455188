"""Physics: PSF convolution (flux, moments, scipy, no wrap-around, oversampling against GalSim),
likelihoods (normalisation, the pixel/Fourier identity, correlated noise, band limit, gradients)
and the observation model on the simulator's own stamps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import second_moment
from deepfield.errors import InputError
from deepfield.physics import (ObservationModel, convolve_psf, estimate_noise_ps, fourier_nll,
                               gaussian_psf, moffat_psf, noise_power_spectrum_from_ivar,
                               oversample_psf, pixel_nll, psf_band_limit_mask, white_noise_ps)

D = torch.float64


def gaussian_image(size, sigma, centre=None, shape=None):
    """Point-sampled circular Gaussian of unit sum (sigma in pixels), float64."""
    h, w = shape or (size, size)
    cy, cx = centre if centre is not None else (h // 2, w // 2)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=D), torch.arange(w, dtype=D), indexing="ij")
    g = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return g / g.sum()


# -- PSF convolution -------------------------------------------------------------------------


def test_flux_is_conserved():
    sky = 1000.0 * gaussian_image(48, 2.5)[None, None].float().repeat(3, 2, 1, 1)
    psf = moffat_psf(0.7)  # unit sum, FWHM 3.5 pixels
    out = convolve_psf(sky, psf)
    assert out.shape == sky.shape
    np.testing.assert_allclose(out.sum(dim=(2, 3)), sky.sum(dim=(2, 3)), rtol=1e-5)
    # output sum = input sum x PSF sum, also on the oversampled path
    out = convolve_psf(sky, 0.8 * psf)
    np.testing.assert_allclose(out.sum(dim=(2, 3)), 0.8 * sky.sum(dim=(2, 3)), rtol=1e-5)
    fine = 1000.0 * gaussian_image(96, 5.0)[None, None].float()
    out = convolve_psf(fine, psf, oversample=2)
    assert out.shape == (1, 1, 48, 48)
    assert float(out.sum()) == pytest.approx(1000.0, rel=1e-5)


def test_delta_psf_is_the_identity():
    sky = torch.rand(2, 3, 20, 17, generator=torch.Generator().manual_seed(0), dtype=D)
    delta = torch.zeros(3, 25, 25, dtype=D)
    delta[:, 12, 12] = 1.0
    torch.testing.assert_close(convolve_psf(sky, delta), sky, atol=1e-12, rtol=0)


def test_gaussian_widths_add_in_quadrature():
    a, b = 2.0, 1.5  # pixels
    sky = gaussian_image(64, a)[None, None]
    out = convolve_psf(sky, gaussian_image(25, b))[0, 0]
    var_y, var_x = second_moment(out)
    expected = a**2 + b**2
    assert var_y == pytest.approx(expected, rel=1e-6) and var_x == pytest.approx(expected, rel=1e-6)
    assert math.sqrt(var_x) == pytest.approx(2.5, rel=1e-6)


def test_matches_scipy_fftconvolve_same():
    from scipy.signal import fftconvolve

    gen = torch.Generator().manual_seed(1)
    sky = torch.rand(3, 2, 20, 23, generator=gen, dtype=D)  # non-square
    psf = torch.rand(3, 2, 7, 5, generator=gen, dtype=D)  # one per object and band, non-square
    out = convolve_psf(sky, psf)
    for i in range(3):
        for c in range(2):
            ref = fftconvolve(sky[i, c].numpy(), psf[i, c].numpy(), mode="same")
            np.testing.assert_allclose(out[i, c].numpy(), ref, atol=1e-12)
    # a shared (h, w) PSF broadcasts over objects and bands
    shared = convolve_psf(sky, psf[0, 0])
    np.testing.assert_allclose(shared[2, 1].numpy(),
                               fftconvolve(sky[2, 1].numpy(), psf[0, 0].numpy(), mode="same"), atol=1e-12)


def test_a_source_at_the_edge_does_not_wrap_around():
    sky = torch.zeros(1, 1, 32, 32, dtype=D)
    sky[0, 0, 0, 5] = 1.0  # on the top edge
    out = convolve_psf(sky, gaussian_image(25, 3.0))[0, 0]
    assert float(out[:13].sum()) > 0.4  # light stays near the top (half falls off the stamp)
    assert float(out[20:].abs().max()) < 1e-15  # none reaches the bottom edge
    corner = torch.zeros(1, 1, 32, 32, dtype=D)
    corner[0, 0, 31, 31] = 1.0
    out = convolve_psf(corner, gaussian_image(25, 3.0))[0, 0]
    assert float(out[:18, :].abs().max()) < 1e-15 and float(out[:, :18].abs().max()) < 1e-15


def test_oversampled_psf_is_centred_band_limited_interpolation():
    psf = gaussian_image(25, 2.0)  # FWHM 4.7 pixels: transfer exp(-pi^2 sigma^2 / 2) = 3e-9 at Nyquist
    fine = oversample_psf(psf, 2)
    assert fine.shape == (49, 49) and int(fine.argmax()) == 24 * 49 + 24
    assert float(fine.sum()) == pytest.approx(1.0, abs=1e-12)
    # every other fine sample sits on a native pixel centre and keeps its value (x 1/4 area);
    # the in-between ones are the Gaussian at half-pixel offsets (sigma 2 px = 4 fine px)
    torch.testing.assert_close(fine[::2, ::2] * 4, psf, atol=1e-8 * float(psf.max()), rtol=0)
    torch.testing.assert_close(fine, gaussian_image(49, 4.0), atol=1e-8 * float(fine.max()), rtol=0)
    var_y, var_x = second_moment(fine)
    assert var_y == pytest.approx(4.0**2, rel=1e-6) and var_x == pytest.approx(4.0**2, rel=1e-6)
    # an undersampled PSF (sigma 1 px: 7e-3 of its power at Nyquist) interpolates only to ~1e-3
    narrow = oversample_psf(gaussian_image(25, 1.0), 2)
    error = float((narrow - gaussian_image(49, 2.0)).abs().max() / narrow.max())
    assert 1e-4 < error < 5e-3


def _galsim_case(gal, psf_profile, psf_stamp, oversample, scale=0.2, size=32):
    """(our convolution of the GalSim-drawn fine sky, GalSim's native drawing of gal (*) psf)."""
    import galsim

    o = oversample
    # stamps of the same extent, centred on native pixel (size // 2, size // 2)
    fine = gal.drawImage(nx=o * size, ny=o * size, scale=scale / o, offset=(0.5 * o, 0.5 * o))
    ref = galsim.Convolve(gal, psf_profile).drawImage(nx=size, ny=size, scale=scale, offset=(0.5, 0.5))
    sky = torch.as_tensor(fine.array, dtype=D)[None, None]
    return convolve_psf(sky, psf_stamp, oversample=o)[0, 0].numpy(), ref.array.astype(np.float64)


@pytest.mark.parametrize("psf_name", ["gaussian", "moffat"])
def test_oversample_2_matches_galsim_native_drawing(psf_name):
    import galsim

    if psf_name == "gaussian":
        profile, stamp = galsim.Gaussian(fwhm=0.7), gaussian_psf(0.7, dtype=D)
    else:  # truncated inside the 25 x 25 stamp, so the stamp holds the whole PSF
        profile = galsim.Moffat(beta=3.0, fwhm=0.7, trunc=2.4)
        stamp = moffat_psf(0.7, trunc_fwhm=2.4 / 0.7, dtype=D)
    gal = galsim.Exponential(half_light_radius=0.4, flux=500.0).shear(g1=0.2, g2=-0.1).shift(0.05, -0.03)
    ours, ref = _galsim_case(gal, profile, stamp, 2)
    peak = ref.max()
    assert np.abs(ours - ref).max() < 1e-3 * peak
    assert ours.sum() == pytest.approx(ref.sum(), rel=1e-3)
    # the native-grid shortcut (pixel-integrated sky (*) PSF samples) is several times worse
    native, _ = _galsim_case(gal, profile, stamp, 1)
    assert np.abs(native - ref).max() > 3 * np.abs(ours - ref).max()


def test_oversampling_converges_for_a_cuspy_galaxy():
    import galsim

    gal = galsim.Sersic(n=2.5, half_light_radius=0.3, flux=500.0)
    profile, stamp = galsim.Gaussian(fwhm=0.7), gaussian_psf(0.7, dtype=D)
    errors = []
    for o in (1, 2, 4):
        ours, ref = _galsim_case(gal, profile, stamp, o)
        errors.append(np.abs(ours - ref).max() / ref.max())
    assert errors[0] > 3 * errors[1] > 9 * errors[2]
    assert errors[2] < 1e-3


def test_band_limit_mask():
    psf = gaussian_image(25, 2.0)  # transfer exp(-k^2 sigma^2 / 2)
    mask = psf_band_limit_mask(psf, (32, 32), threshold=1e-3)
    assert mask.shape == (32, 32) and mask.dtype == torch.bool
    k = 2 * math.pi * torch.fft.fftfreq(32, dtype=D)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    expected = torch.exp(-k2 * 2.0**2 / 2) < 1e-3
    assert torch.equal(mask, expected)
    assert not mask[0, 0] and mask[16, 16]
    # symmetric under k -> -k, so Hermitian pairs are flagged together
    mirror = torch.roll(torch.flip(mask, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))
    assert torch.equal(mask, mirror)
    # a stamp larger than the image works (per-object, per-band stamps)
    big = psf_band_limit_mask(gaussian_image(25, 2.0)[None, None].repeat(2, 3, 1, 1), (16, 16))
    assert big.shape == (2, 3, 16, 16)


# -- likelihoods --------------------------------------------------------------------------------


def test_white_noise_fourier_equals_pixel_likelihood():
    gen = torch.Generator().manual_seed(2)
    for shape in ((15, 16), (16, 16), (9, 11)):  # odd and even sides: Nyquist rows and columns
        model = torch.rand(4, 3, *shape, generator=gen, dtype=D)
        sigma = torch.tensor([0.5, 1.0, 2.5], dtype=D)
        data = model + sigma[:, None, None] * torch.randn(model.shape, generator=gen, dtype=D)
        pix = pixel_nll(model, data, (1 / sigma**2)[:, None, None])
        fou = fourier_nll(model, data, white_noise_ps(sigma, shape))
        assert pix.shape == (4,)
        torch.testing.assert_close(fou, pix, rtol=1e-12, atol=0)
    ps = noise_power_spectrum_from_ivar(torch.full((2, 3, 8, 8), 4.0, dtype=D))
    torch.testing.assert_close(ps, torch.full_like(ps, 0.25))


def test_pixel_nll_is_the_gaussian_entropy_on_average():
    gen = torch.Generator().manual_seed(3)
    n, size, sigma = 400, 16, 0.7
    model = 10 * torch.rand(n, 1, size, size, generator=gen, dtype=D)
    data = model + sigma * torch.randn(model.shape, generator=gen, dtype=D)
    nll = pixel_nll(model, data, torch.full_like(data, 1 / sigma**2))
    n_pix = size * size
    expected = 0.5 * n_pix * (1 + math.log(2 * math.pi * sigma**2))
    # per object the NLL scatters by sqrt(n_pix / 2); the mean of 400 by that / 20
    assert abs(float(nll.mean()) - expected) < 4 * math.sqrt(n_pix / 2) / math.sqrt(n)
    assert float(nll.std()) == pytest.approx(math.sqrt(n_pix / 2), rel=0.15)
    # excluded pixels (ivar 0 or masked) leave the chi^2 and the constant; NaN there is fine
    ivar = torch.full_like(data, 1 / sigma**2)
    ivar[:, :, :4] = 0.0
    mask = torch.zeros_like(data, dtype=torch.bool)
    mask[:, :, :, :4] = True
    data[:, :, :4, :4] = float("nan")
    nll = pixel_nll(model, data, ivar, mask)
    used = (size - 4) * (size - 4)
    expected = 0.5 * used * (1 + math.log(2 * math.pi * sigma**2))
    assert abs(float(nll.mean()) - expected) < 4 * math.sqrt(used / 2) / math.sqrt(n)


def _correlated_noise_ps(size, sigma=1.0):
    """A red spectrum: white noise smoothed by ~1.5 pixels plus a white floor, mean sigma^2."""
    k = 2 * math.pi * torch.fft.fftfreq(size, dtype=D)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    ps = torch.exp(-k2 * 1.5**2) + 0.05
    return ps * sigma**2 / ps.mean()


def test_fourier_likelihood_of_correlated_noise():
    size, n = 16, 200
    ps = _correlated_noise_ps(size)[None]  # (C=1, H, W)
    gen = torch.Generator().manual_seed(4)
    obs = ObservationModel()
    template = gaussian_image(size, 2.0)[None, None].repeat(n, 1, 1, 1) * 200
    delta = torch.zeros(1, 1, 1, dtype=D)
    delta[..., 0, 0] = 1.0
    amplitude = 1.0
    data = obs.observe(amplitude * template, delta, noise_ps=ps, generator=gen)
    noise = data - template
    # the noise has the requested spectrum, and the Fourier chi^2 per mode is 1
    measured = estimate_noise_ps(noise)
    assert float((measured / ps).mean()) == pytest.approx(1.0, abs=0.03)
    assert float((measured / ps).std()) == pytest.approx(1 / math.sqrt(n), rel=0.3)  # periodogram scatter
    assert float(noise.var()) == pytest.approx(1.0, rel=0.05)  # mean of ps: the pixel variance
    chi2 = fourier_nll(template, data, ps) - fourier_nll(data, data, ps)  # = chi^2 / 2
    assert float(2 * chi2.mean() / size**2) == pytest.approx(1.0, abs=0.025)  # 4 sigma
    # E[-log p] is the entropy 0.5 sum_k (1 + log 2 pi P_k); the white pixel likelihood with the
    # right per-pixel variance ignores the correlations and overestimates it by their KL term
    entropy = 0.5 * float((1 + torch.log(2 * math.pi * ps)).sum())
    fou = fourier_nll(template, data, ps)
    pix = pixel_nll(template, data, torch.ones_like(data))
    scatter = math.sqrt(size**2 / 2) / math.sqrt(n)
    assert abs(float(fou.mean()) - entropy) < 4 * scatter
    assert float(pix.mean()) - entropy > 20 * scatter

    # fitting the template's amplitude: NLL(A) is quadratic, so three values give the estimate
    # and its error 1 / sqrt(curvature). The Fourier errors are right (pulls of unit scatter);
    # the white pixel likelihood underestimates them (the template lives at low k, where the
    # red noise has more than its average power)
    def pulls(nll):
        f0, f1, fm = (nll(a * template) for a in (0.0, 1.0, -1.0))
        curvature = f1 + fm - 2 * f0
        estimate = -(f1 - fm) / 2 / curvature
        return (estimate - amplitude) * curvature.sqrt()

    fourier_pulls = pulls(lambda m: fourier_nll(m, data, ps))
    pixel_pulls = pulls(lambda m: pixel_nll(m, data, torch.ones_like(data)))
    assert float(fourier_pulls.std()) == pytest.approx(1.0, abs=0.2)
    assert abs(float(fourier_pulls.mean())) < 0.3
    assert float(pixel_pulls.std()) > 1.8  # ~2.8: error bars too small by that factor


def test_band_masked_modes_do_not_change_the_nll():
    gen = torch.Generator().manual_seed(5)
    size = 24
    psf = gaussian_image(25, 2.0)
    band = psf_band_limit_mask(psf, (size, size))
    assert 0.2 < float(band.double().mean()) < 0.9
    model = convolve_psf(50 * gaussian_image(size, 2.5)[None, None].repeat(3, 2, 1, 1), psf)
    data = model + torch.randn(model.shape, generator=gen, dtype=D)
    # a real perturbation that lives only in the masked modes
    spectrum = torch.fft.fft2(torch.randn(model.shape, generator=gen, dtype=D))
    perturbation = torch.fft.ifft2(spectrum * band)
    assert float(perturbation.imag.abs().max()) < 1e-12
    perturbed = model + 10 * perturbation.real
    ps = white_noise_ps(torch.ones(2, dtype=D), (size, size))
    torch.testing.assert_close(fourier_nll(perturbed, data, ps, band), fourier_nll(model, data, ps, band),
                               rtol=1e-12, atol=1e-9)
    assert float((fourier_nll(perturbed, data, ps) - fourier_nll(model, data, ps)).min()) > 100
    # masked modes leave the constant too: with no residual, NLL = 0.5 sum over kept modes
    kept = int((~band).sum())
    torch.testing.assert_close(fourier_nll(data, data, ps, band),
                               torch.full((3,), 2 * 0.5 * kept * math.log(2 * math.pi), dtype=D))


def test_gradients_flow():
    gen = torch.Generator().manual_seed(6)
    sky = torch.rand(2, 1, 6, 6, generator=gen, dtype=D, requires_grad=True)
    psf = torch.rand(2, 1, 3, 3, generator=gen, dtype=D, requires_grad=True)
    fine = torch.rand(1, 1, 8, 8, generator=gen, dtype=D, requires_grad=True)
    data = torch.rand(2, 1, 6, 6, generator=gen, dtype=D)
    ivar = 1 + torch.rand(2, 1, 6, 6, generator=gen, dtype=D)
    ps = 0.5 + torch.rand(1, 6, 6, generator=gen, dtype=D)
    ps = 0.5 * (ps + torch.roll(torch.flip(ps, (-2, -1)), (1, 1), (-2, -1)))  # symmetric
    assert torch.autograd.gradcheck(lambda s, p: convolve_psf(s, p), (sky, psf), fast_mode=True)
    assert torch.autograd.gradcheck(lambda s, p: convolve_psf(s, p, oversample=2), (fine, psf[:1]), fast_mode=True)
    assert torch.autograd.gradcheck(lambda s, p: pixel_nll(convolve_psf(s, p), data, ivar), (sky, psf), fast_mode=True)
    assert torch.autograd.gradcheck(lambda s: fourier_nll(convolve_psf(s, psf.detach()), data, ps), (sky,), fast_mode=True)
    obs = ObservationModel("fourier", band_limit_threshold=0.05)
    loss = obs.nll(sky, {"x": data, "psf": psf.detach(), "noise_ps": ps}).sum()
    loss.backward()
    assert sky.grad is not None and bool(torch.isfinite(sky.grad).all())


# -- the observation model on simulated galaxies -------------------------------------------------


@pytest.fixture(scope="module")
def galaxies(tmp_path_factory):
    from deepfield.data.galaxies import simulate_galaxies

    store = simulate_galaxies(tmp_path_factory.mktemp("phys") / "gal", 6, size=32, bands=("g", "r"),
                              seed=3, workers=1, progress=False)
    return store, {name: torch.as_tensor(store.read(name)) for name in ("x", "truth", "psf", "ivar")}


def test_simulated_galaxies_have_chi2_one_per_pixel(galaxies):
    store, arrays = galaxies
    obs = ObservationModel("pixel")
    chi2, n = obs.chi2(arrays["truth"], arrays)
    per_pixel = chi2 / n
    assert float(n[0]) == 2 * 32 * 32
    assert float(per_pixel.mean()) == pytest.approx(1.0, abs=0.05)
    assert float((per_pixel - 1).abs().max()) < 0.2
    nll = obs.nll(arrays["truth"], arrays)
    const = 0.5 * (math.log(2 * math.pi) * n - torch.log(arrays["ivar"]).flatten(1).sum(1))
    torch.testing.assert_close(nll, 0.5 * chi2 + const, rtol=1e-5, atol=1e-3)
    # the same through the Fourier likelihood with the (white) spectrum of the ivar
    batch = dict(arrays, noise_ps=noise_power_spectrum_from_ivar(arrays["ivar"]))
    chi2, n = ObservationModel("fourier").chi2(arrays["truth"], batch)
    assert float((chi2 / n).mean()) == pytest.approx(1.0, abs=0.05)
    assert float(n.max()) < 2 * 32 * 32  # modes beyond the PSF band limit are left out
    # an observed sample of the truth is as far from the data as the data from the truth
    sample = obs.observe(arrays["truth"], arrays["psf"], ivar=arrays["ivar"],
                         generator=torch.Generator().manual_seed(0))
    chi2, n = obs.chi2(arrays["truth"], dict(arrays, x=sample))
    assert float((chi2 / n).mean()) == pytest.approx(1.0, abs=0.05)


def test_moffat_psf_reproduces_the_simulator_psf(galaxies):
    store, arrays = galaxies
    for i in range(3):
        for c, band in enumerate(store.bands):
            stamp = moffat_psf(store.column(f"psf_fwhm_{band}")[i], g1=store.column("psf_g1")[i],
                               g2=store.column("psf_g2")[i], pixel_scale=store.pixel_scale)
            torch.testing.assert_close(stamp, arrays["psf"][i, c], atol=1e-6, rtol=0)


def test_observe_is_seeded():
    sky = 100 * gaussian_image(16, 2.0)[None, None].float().repeat(2, 1, 1, 1)
    psf = gaussian_psf(0.7, size=9)
    obs = ObservationModel()
    a = obs.observe(sky, psf, 0.5, generator=torch.Generator().manual_seed(7))
    b = obs.observe(sky, psf, 0.5, generator=torch.Generator().manual_seed(7))
    c = obs.observe(sky, psf, 0.5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    noise = a - obs.predict(sky, psf)
    assert float(noise.std()) == pytest.approx(0.5, rel=0.15)
    per_band = obs.observe(sky, psf, torch.tensor([0.1]), generator=torch.Generator().manual_seed(7))
    assert float((per_band - obs.predict(sky, psf)).std()) == pytest.approx(0.1, rel=0.15)


# -- bad input ------------------------------------------------------------------------------------


def test_bad_input_messages():
    x = torch.zeros(2, 3, 16, 16)
    sky = torch.zeros(2, 3, 16, 16)
    psf = gaussian_psf(0.7, size=9)
    ivar = torch.ones_like(x)
    obs = ObservationModel()
    with pytest.raises(InputError, match="has no 'psf' array: simulate or import the store with PSF stamps"):
        obs.nll(sky, {"x": x, "ivar": ivar})
    with pytest.raises(InputError, match="odd sides"):
        obs.nll(sky, {"x": x, "psf": torch.ones(3, 8, 8) / 64, "ivar": ivar})
    with pytest.raises(InputError, match="2 band.*the image has 3"):
        obs.nll(sky, {"x": x, "psf": torch.ones(2, 9, 9) / 81, "ivar": ivar})
    with pytest.raises(InputError, match="5 objects, but there are 2"):
        convolve_psf(sky, torch.ones(5, 3, 9, 9) / 81)
    with pytest.raises(InputError, match="no 'ivar'"):
        obs.nll(sky, {"x": x, "psf": psf})
    with pytest.raises(InputError, match="no 'noise_ps'.*estimate_noise_ps"):
        ObservationModel("fourier").nll(sky, {"x": x, "psf": psf})
    with pytest.raises(InputError, match="masked pixels.*likelihood='pixel'"):
        ObservationModel("fourier").nll(sky, {"x": x, "psf": psf, "noise_ps": torch.ones(3, 16, 16),
                                              "mask": torch.ones_like(x, dtype=torch.bool)})
    with pytest.raises(InputError, match=r"oversample=2 the decoder must emit \(2, 3, 32, 32\)"):
        ObservationModel(oversample=2).nll(sky, {"x": x, "psf": psf, "ivar": ivar})
    with pytest.raises(InputError, match="negative values.*set bad pixels' ivar to 0"):
        pixel_nll(x, x, -ivar)
    with pytest.raises(InputError, match="model has shape"):
        pixel_nll(x[:, :2], x, ivar)
    with pytest.raises(InputError, match="ivar has shape"):
        pixel_nll(x, x, torch.ones(4, 16, 16))
    nan = x.clone()
    nan[0, 0, 3, 3] = float("nan")
    with pytest.raises(InputError, match="1 NaN/inf pixels.*set their ivar to 0 or flag them True in 'mask'"):
        pixel_nll(x, nan, ivar)
    with pytest.raises(InputError, match="NaN/inf.*in-paint"):
        fourier_nll(x, nan, torch.ones(3, 16, 16))
    with pytest.raises(InputError, match="modes <= 0.*band_mask"):
        fourier_nll(x, x, torch.zeros(3, 16, 16))
    with pytest.raises(InputError, match="likelihood='gauss'"):
        ObservationModel("gauss")
    with pytest.raises(InputError, match="exactly one of"):
        obs.observe(sky, psf)
    with pytest.raises(InputError, match="odd side"):
        moffat_psf(0.7, size=24)
    with pytest.raises(InputError, match="FWHM in arcsec"):
        gaussian_psf(-1.0)


# -- dilation --------------------------------------------------------------------------------


def test_dilation_keeps_flux_and_identity():
    from deepfield.physics import dilate

    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((3, 2, 20, 20)))
    torch.testing.assert_close(dilate(image, 1.0), image)
    # shrinking shares each pixel's light among the pixels it overlaps: flux exact at any factor
    shrunk = dilate(image, torch.tensor([0.9, 0.5, 0.137]))
    torch.testing.assert_close(shrunk.sum((2, 3)), image.sum((2, 3)))
    assert float(shrunk.min()) >= 0
    # growing keeps the light that stays on the stamp: a compact source keeps all of it
    source = gaussian_image(32, 1.0).expand(3, 1, 32, 32)
    grown = dilate(source, torch.tensor([1.3, 1.77, 3.0]))
    torch.testing.assert_close(grown.sum((2, 3)), source.sum((2, 3)), rtol=1e-5, atol=0)
    # (grown 3x, the Gaussian reaches the stamp edge at 5 sigma: 1.3e-6 of its light falls beyond)
    # ... and a large one loses what leaves the stamp, as a real stamp of a large galaxy does
    wide = dilate(gaussian_image(32, 5.0)[None, None], 3.0)
    assert 0.3 < float(wide.sum()) < 0.9
    # an object on deepfield's stamp centre, pixel (n // 2, n // 2), stays there; another point can be kept
    yy, xx = torch.meshgrid(torch.arange(32, dtype=D), torch.arange(32, dtype=D), indexing="ij")
    for centre, kept in ((None, 16.0), (15.5, 15.5), (9.0, 9.0)):
        source = gaussian_image(32, 1.0, centre=(kept, kept))[None, None]
        for factor in (0.4, 1.6):
            out = dilate(source, factor, centre)[0, 0]
            assert abs(float((out * yy).sum() / out.sum()) - kept) < 1e-6  # (light past the edge: 4e-8)
            assert abs(float((out * xx).sum() / out.sum()) - kept) < 1e-6


@pytest.mark.parametrize("hlr,scale,size_tol,e_tol", [(0.6, 0.5, 0.07, 0.03), (0.8, 0.4, 0.03, 0.015),
                                                       (1.2, 0.25, 0.02, 0.015), (0.6, 1.7, 0.07, 0.03),
                                                       (0.4, 2.5, 0.12, 0.04)])
def test_dilated_galaxy_matches_galsim_drawn_at_the_new_size(hlr, scale, size_tol, e_tol):
    # an elliptical exponential (|e| 0.31) dilated by `scale` against GalSim's own drawing at
    # scale * hlr. Resampling pixel-integrated light blurs: shrinking to 0.3" (1.5 pixels) by 6% in
    # adaptive-moment size and 0.028 in |e| (half the shrunk pixels straddle two output pixels),
    # less at other factors; growing (linear interpolation of a pixel-integrated cusp) by up to 11%
    # and 0.039 at 2.5x. A decoder trained through the dilation can draw sharper profiles to make
    # up for it; the benchmark store shrinks 90% of its galaxies.
    galsim = pytest.importorskip("galsim")
    from deepfield.physics import dilate

    def draw(r):  # centred on pixel (16, 16), as the simulator draws
        profile = galsim.Exponential(half_light_radius=r).shear(e1=0.3, e2=0.1)
        return profile.drawImage(nx=32, ny=32, scale=0.2, offset=(0.5, 0.5)).array

    template = draw(hlr)
    out = dilate(torch.from_numpy(template)[None, None], scale)[0, 0].numpy()
    truth = draw(hlr * scale)
    got = galsim.hsm.FindAdaptiveMom(galsim.Image(out))
    want = galsim.hsm.FindAdaptiveMom(galsim.Image(truth))
    assert abs(got.moments_sigma / want.moments_sigma - 1) < size_tol
    assert abs(got.observed_shape.e - want.observed_shape.e) < e_tol
    # shrinking keeps the template's light (a 1.2" template already misses 5% off the stamp); growing
    # loses what the larger galaxy puts off the stamp, as GalSim's drawing does
    assert abs(out.sum() - (template.sum() if scale < 1 else truth.sum())) < 0.01 * truth.sum()


def test_dilation_bad_input():
    from deepfield.physics import dilate

    with pytest.raises(InputError, match="objects \\[1\\] have \\[0.0\\].*radius of 0 or NaN"):
        dilate(torch.ones(2, 1, 8, 8), torch.tensor([1.0, 0.0]))
    with pytest.raises(InputError, match="finite and > 0"):
        dilate(torch.ones(1, 1, 8, 8), float("nan"))
    with pytest.raises(InputError, match="3 scale factors for 2 images"):
        dilate(torch.ones(2, 1, 8, 8), torch.ones(3))
    with pytest.raises(InputError, match="square images"):
        dilate(torch.ones(2, 1, 8, 6), 1.0)
