"""Adversarial models: DCGAN, WGAN-GP and the conditional GAN (CycleGAN: deepfield.models.cyclegan).

A generator G maps noise z ~ N(0, I) (and, for the conditional GAN, catalog conditions such
as size, magnitude and redshift) to images; a discriminator D (the *critic* of WGAN-GP) tells
them from real ones. Training alternates (deepfield.train.gan): generate, update D on a real
and a generated batch, then update G through the frozen D. The models here hold the maths:
the networks, the losses of each player and the gradient penalty; they know no Lightning.

Working space. Survey stamps span orders of magnitude in brightness, so the networks see each
image in a bounded working space ``u``: store units divided by the per-band pixel standard
deviation of the training set (``data_scale``), asinh-stretched with softening
``stretch_softening`` (in those units), then divided by the largest stretched training value
of the band (``u_scale``), so training images lie in [-1, 1] and the generator ends in tanh
as in DCGAN. Vector data (spectra, tables) use the plain normalisation and a linear output
(``stretch='linear'``). Density fields (``1 + delta`` >= 0, a long tail of halos over empty
voids) train on a log stretch ``u = (log(xn + a) - centre) / half_width`` fitted to [-1, 1]
(``stretch='log'``), or on Rodriguez et al. (2018)'s ``s(x) = 2 xn / (xn + a) - 1``
(``stretch='rodriguez'``, in [-1, 1) by construction), with ``a`` = ``stretch_softening``.
``padding='circular'`` pads every convolution of G and D periodically, for periodic
fields such as slices of a simulation box. ``sample``, ``decode``, ``reconstruct`` and ``translate`` take and
return store units; losses, critic features and anomaly scores are in working units.

Codes. Every noise-to-image GAN carries an encoder E trained after the game (f-AnoGAN's
izi_f: minimise |G(E(x)) - x|^2 + kappa |f(x) - f(G(E(x)))|^2 with G and D frozen, f the
critic's last feature layer), so ``encode`` gives codes and starts the anomaly-score search
(deepfield.tasks.gan_score).

References:
    Goodfellow et al. (2014), Generative Adversarial Nets, arXiv:1406.2661.
    Radford, Metz & Chintala (2016), DCGAN, arXiv:1511.06434.
    Gulrajani et al. (2017), Improved Training of Wasserstein GANs (WGAN-GP), arXiv:1704.00028.
    Mirza & Osindero (2014), Conditional GANs, arXiv:1411.1784; Miyato & Koyama (2018),
    cGANs with Projection Discriminator, arXiv:1802.05637.
    Schlegl et al. (2019), f-AnoGAN, Medical Image Analysis 54, 30 (the izi_f encoder).
    Storey-Fisher et al. (2021), anomaly detection in HSC with a GAN, arXiv:2012.08082.
    Rodriguez et al. (2018), Fast cosmic web simulations with generative adversarial networks,
    arXiv:1801.09070 (the s(x) stretch).
    Jung & Keuper (2021), Spectral distribution aware image generation, AAAI, arXiv:2012.03110
    (the spectral critic).
"""

from __future__ import annotations

from contextlib import contextmanager

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepfield.errors import ConfigError, InputError
from deepfield.models.base import Model, register
from deepfield.models.protocol import Adversarial, Encoding, Generative, LossOutput
from deepfield.nn import MLP, ConditionNormaliser, ConvEncoder, downsample_plan, stage_channels

__all__ = ["GANConfig", "DCGANConfig", "WGANGPConfig", "ConditionalGANConfig", "GAN", "DCGAN", "WGANGP",
           "ConditionalGAN", "gradient_penalty", "LOSSES", "STRETCHES", "PADDINGS"]

LOSSES = ("nonsaturating", "wasserstein")
#: working-space stretches of GANConfig.stretch ('auto': asinh for images, linear for vectors)
STRETCHES = ("auto", "asinh", "linear", "log", "rodriguez")
#: convolution padding of the image networks: zeros (stamps) or circular (periodic fields)
PADDINGS = ("zeros", "circular")


# ----------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class GANConfig:
    """Arguments:
    input_shape: (C, H, W) square images, or (L,) spectra / (D,) features.
    latent_dim: length of the noise vector z ~ N(0, I).
    channels: feature channels per resolution (images), from full size down, as ConvEncoder.
    hidden: hidden widths of G, D and E for vector data (G mirrors them).
    leaky_slope: negative slope of the LeakyReLUs in G and D (0: ReLU).
    g_dropout, d_dropout: dropout probability after the hidden activations of G / D.
    g_batch_norm, d_batch_norm: batch norm in the hidden layers of G / D.
    loss: 'nonsaturating' (DCGAN: D classifies, G maximises log D(G(z))) or 'wasserstein'
        (WGAN-GP: a critic with a gradient penalty).
    gp_weight: weight of the gradient penalty ('wasserstein').
    n_critic: discriminator steps per generator step.
    lr_g, lr_d: Adam learning rates of G and D (the encoder uses lr_g).
    betas: Adam betas.
    label_smoothing: one-sided label smoothing: D's target for real images is 1 - this.
    condition: catalog columns G and D are conditioned on (conditional GAN).
    stretch: 'auto' (asinh for images, linear for vectors), 'asinh', 'linear', 'log'
        (log(xn + a), for non-negative densities) or 'rodriguez' (2 xn / (xn + a) - 1, Rodriguez
        et al. 2018); xn is the data over the pixel standard deviation.
    stretch_softening: a, the softening of the asinh, log and rodriguez stretches, in units of
        the pixel standard deviation.
    padding: 'zeros' or 'circular' (periodic fields: every convolution of G and D wraps around).
    noise_injection: images: after each upsampling convolution G adds per-pixel Gaussian noise
        scaled by a learned weight per channel (StyleGAN's noise inputs): the stochastic
        small-scale detail of a field (the cosmic web's filaments and knots, below the scale the
        code z sets) is drawn at every stage instead of being carved out of upsampled blocks.
    spectral_critic: images: D also reads the log of each band's azimuthally averaged power
        spectrum (one bin per integer |k| in grid units) through a small MLP, beside its
        convolutional features, so the game compares the two-point statistics directly (a
        spectral discriminator, Jung & Keuper 2021).
    encoder_epochs: epochs training the encoder E after the GAN (0: no encoder training).
    encoder_feature_weight: kappa, weight of the critic-feature term of E's loss (izi_f).
    normalisation: 'channel' (images, spectra) or 'feature' (tables).
    """

    input_shape: tuple[int, ...]
    latent_dim: int = 64
    channels: tuple[int, ...] = (32, 64, 128, 256)
    hidden: tuple[int, ...] = (256, 256)
    leaky_slope: float = 0.2
    g_dropout: float = 0.0
    d_dropout: float = 0.0
    g_batch_norm: bool = True
    d_batch_norm: bool = True
    loss: str = "nonsaturating"
    gp_weight: float = 10.0
    n_critic: int = 1
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    label_smoothing: float = 0.0
    condition: tuple[str, ...] = ()
    stretch: str = "auto"
    stretch_softening: float = 1.0
    encoder_epochs: int = 5
    encoder_feature_weight: float = 1.0
    normalisation: str = "channel"
    padding: str = "zeros"
    spectral_critic: bool = False
    noise_injection: bool = False


@dataclass(frozen=True)
class DCGANConfig(GANConfig):
    """DCGAN defaults (Radford et al. 2016): batch norm in G and D, Adam 2e-4, betas (0.5, 0.999)."""


@dataclass(frozen=True)
class WGANGPConfig(GANConfig):
    """WGAN-GP defaults (Gulrajani et al. 2017, the HSC anomaly work's settings): a critic
    without batch norm, gradient penalty 10, 5 critic steps per generator step, Adam 1e-4,
    betas (0.5, 0.9)."""

    d_batch_norm: bool = False
    loss: str = "wasserstein"
    n_critic: int = 5
    lr_g: float = 1e-4
    lr_d: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)


@dataclass(frozen=True)
class ConditionalGANConfig(WGANGPConfig):
    """A conditional GAN; by default played as WGAN-GP (set loss='nonsaturating' and
    d_batch_norm=True, n_critic=1 for the DCGAN game). `condition` names the catalog columns."""


# ----------------------------------------------------------------------------- maths shared by the families


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     weight: float = 10.0, eps: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP penalty: weight * mean over the batch of (|grad critic(x_hat)|_2 - 1)^2.

    ``x_hat = eps * real + (1 - eps) * fake`` with one eps ~ U(0, 1) per object (or the given
    `eps`, shape (N,)); the gradient norm is over all of an object's elements. The graph is
    kept (create_graph) so the penalty trains the critic.
    """
    if real.shape != fake.shape:
        raise InputError(f"gradient penalty needs real and fake batches of one shape, got {tuple(real.shape)} "
                         f"and {tuple(fake.shape)}")
    n = real.shape[0]
    if eps is None:
        eps = torch.rand(n, device=real.device, dtype=real.dtype)
    eps = eps.reshape(n, *([1] * (real.ndim - 1)))
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    score = critic(x_hat)
    (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    norm = grad.reshape(n, -1).norm(dim=1)
    return weight * ((norm - 1) ** 2).mean()


def _act(slope: float) -> nn.Module:
    return nn.LeakyReLU(slope) if slope > 0 else nn.ReLU()


class WorkingStretch(nn.Module):
    """Store units <-> bounded working units.

    With xn = (x - offset) / scale (the normalised data) and a the softening:

    - 'asinh': u = asinh(xn / a) / u_scale, u_scale fitted per band so training data lie in [-1, 1];
    - 'log': u = (log(xn + a) - u_offset) / u_scale, centre and half-width fitted per band so
      training data lie in [-1, 1] (non-negative data, e.g. 1 + delta);
    - 'rodriguez': u = 2 xn / (xn + a) - 1, in [-1, 1) for xn >= 0 without fitting;
    - 'linear': u = xn.

    `kind` is one of those names (True / False: 'asinh' / 'linear', the older signature).
    """

    def __init__(self, shape: tuple[int, ...], kind, softening: float):
        super().__init__()
        self.kind = ("asinh" if kind else "linear") if isinstance(kind, bool) else str(kind)
        if self.kind not in STRETCHES[1:]:
            raise ConfigError(f"stretch {self.kind!r}: choose one of {', '.join(STRETCHES[1:])}")
        self.softening = float(softening)
        self.register_buffer("u_scale", torch.ones(shape))
        if self.kind == "log":  # only here, so folders of the other stretches load unchanged
            self.register_buffer("u_offset", torch.zeros(shape))

    @property
    def asinh(self) -> bool:
        return self.kind == "asinh"

    @property
    def bounded(self) -> bool:
        """Whether training data lie in [-1, 1] (the generator then ends in tanh)."""
        return self.kind != "linear"

    def forward(self, xn: torch.Tensor) -> torch.Tensor:
        if self.kind == "asinh":
            return torch.asinh(xn / self.softening) / self.u_scale
        if self.kind == "log":
            # clamped at -a / 2: a sample or reconstruction a little below zero keeps a finite log
            return (torch.log((xn + self.softening).clamp_min(self.softening / 2)) - self.u_offset) / self.u_scale
        if self.kind == "rodriguez":
            xc = xn.clamp_min(-self.softening / 2)
            return 2 * xc / (xc + self.softening) - 1
        return xn

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        if self.kind == "asinh":
            return torch.sinh(u.clamp(-1.5, 1.5) * self.u_scale) * self.softening
        if self.kind == "log":
            return torch.exp(u.clamp(-1.5, 1.5) * self.u_scale + self.u_offset) - self.softening
        if self.kind == "rodriguez":  # u -> 1 is xn -> infinity: cap at u = 0.999 (xn = 1999 a)
            uc = u.clamp(-3.0, 0.999)
            return self.softening * (1 + uc) / (1 - uc)
        return u

    def fit(self, xn_batches: Iterator[torch.Tensor]) -> None:
        """asinh: u_scale = 1.05 x the largest |asinh(xn / a)| per band; log: centre and 1.05 x the
        half-width of log(xn + a) per band; over normalised training data (N, C, ...)."""
        if self.kind not in ("asinh", "log"):
            return
        low = high = None
        for xn in xn_batches:
            reduce = tuple(i for i in range(xn.ndim) if i != 1)
            if self.kind == "asinh":
                v = torch.asinh(xn.abs() / self.softening)
                lo, hi = torch.zeros_like(v.amax(dim=reduce)), v.amax(dim=reduce)
            else:
                if bool((xn < 0).any()):
                    raise InputError(f"the log stretch needs non-negative data (e.g. 1 + delta); the training data "
                                     f"reach {float(xn.min()):.3g} x the pixel std: use stretch=asinh")
                v = torch.log(xn + self.softening)
                lo, hi = v.amin(dim=reduce), v.amax(dim=reduce)
            low = lo if low is None else torch.minimum(low, lo)
            high = hi if high is None else torch.maximum(high, hi)
        if self.kind == "asinh":
            self.u_scale.copy_((high.clamp_min(1e-3) * 1.05).reshape(self.u_scale.shape))
            return
        self.u_offset.copy_(((high + low) / 2).reshape(self.u_offset.shape))
        self.u_scale.copy_(((high - low).clamp_min(2e-3) / 2 * 1.05).reshape(self.u_scale.shape))


def normalised_chunks(x: np.ndarray, offset: torch.Tensor, scale: torch.Tensor,
                       rows: int = 1024) -> Iterator[torch.Tensor]:
    for start in range(0, len(x), rows):
        yield (torch.as_tensor(np.asarray(x[start:start + rows]), dtype=torch.float32) - offset) / scale


# ----------------------------------------------------------------------------- networks


class _NoiseInjection(nn.Module):
    """x + w_c * n with n ~ N(0, 1) per pixel (shared by the channels) and w a learned weight per
    channel, starting at 0 (the layer starts as the identity). ``source``, when set, is the
    torch.Generator the noise is drawn from (seeded sampling)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.source: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        noise = torch.randn(n, 1, h, w, generator=self.source, device=x.device, dtype=x.dtype)
        return x + self.weight * noise


class _ImageGenerator(nn.Module):
    """z (N, D) -> (N, C, H, W): a linear layer to the coarsest grid, then nearest-neighbour
    upsampling + 3x3 convolutions (no transposed-convolution checkerboards), DCGAN-style
    batch norm and (Leaky)ReLU, a final 3x3 convolution and tanh (bounded working units).
    `padding` 'circular' wraps every convolution around (periodic fields)."""

    def __init__(self, in_features: int, out_channels: int, image_size: int, channels: Sequence[int],
                 slope: float, dropout: float, batch_norm: bool, bounded: bool, padding: str = "zeros",
                 noise_injection: bool = False):
        super().__init__()
        stages, final = downsample_plan(image_size)
        ch = stage_channels(channels, stages)
        self.start = (ch[-1], final)
        self.head = nn.Linear(in_features, ch[-1] * final * final)
        layers: list[nn.Module] = [nn.BatchNorm2d(ch[-1]) if batch_norm else nn.Identity(), _act(slope)]
        for i in reversed(range(stages)):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(ch[i + 1], ch[i], 3, padding=1, padding_mode=padding)]
            if noise_injection:
                layers.append(_NoiseInjection(ch[i]))
            layers += [nn.BatchNorm2d(ch[i]) if batch_norm else nn.Identity(), _act(slope)]
            if dropout > 0:
                layers.append(nn.Dropout2d(dropout))
        layers.append(nn.Conv2d(ch[0], out_channels, 3, padding=1, padding_mode=padding))
        if bounded:
            layers.append(nn.Tanh())
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c, s = self.start
        return self.body(self.head(z).view(z.shape[0], c, s, s))

    @contextmanager
    def noise_source(self, generator: torch.Generator | None):
        """Draw the injected noise from `generator` inside the block (None: torch's global one)."""
        layers = [m for m in self.body if isinstance(m, _NoiseInjection)]
        for m in layers:
            m.source = generator
        try:
            yield
        finally:
            for m in layers:
                m.source = None


class _ImageCritic(nn.Module):
    """(N, C, H, W) -> features (N, F) through a 3x3 stem and stride-2 4x4 convolutions with
    LeakyReLU (batch norm optional, never on the first layer; dropout optional)."""

    def __init__(self, in_channels: int, image_size: int, channels: Sequence[int], slope: float,
                 dropout: float, batch_norm: bool, padding: str = "zeros"):
        super().__init__()
        stages, final = downsample_plan(image_size)
        ch = stage_channels(channels, stages)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch[0], 3, padding=1, padding_mode=padding), _act(slope)]
        for i in range(stages):
            layers += [nn.Conv2d(ch[i], ch[i + 1], 4, stride=2, padding=1, padding_mode=padding),
                       nn.BatchNorm2d(ch[i + 1]) if batch_norm else nn.Identity(), _act(slope)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*layers)
        self.features = ch[-1] * final * final

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.body(u).flatten(1)


class _SpectralFeatures(nn.Module):
    """(N, C, H, H) working-unit images -> (N, F): log of each band's power averaged over rings
    of integer |k| (grid units, 1 .. H/2; the mean is left out), through a two-layer MLP."""

    def __init__(self, channels: int, size: int, out_features: int, slope: float):
        super().__init__()
        ky = torch.fft.fftfreq(size) * size
        kx = torch.fft.rfftfreq(size) * size
        ring = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2).round().long().clamp(max=size // 2)
        count = torch.zeros(size // 2 + 1).index_add(0, ring.reshape(-1), torch.ones(ring.numel()))
        # not persistent: derived from the shape, so model folders hold only the learned weights
        self.register_buffer("ring", ring.reshape(-1), persistent=False)
        self.register_buffer("count", count.clamp_min(1), persistent=False)
        n_rings = size // 2
        self.net = nn.Sequential(nn.Linear(channels * n_rings, 128), _act(slope), nn.Linear(128, out_features),
                                 _act(slope))
        self.out_features = out_features

    def ring_power(self, u: torch.Tensor) -> torch.Tensor:
        """(N, C, H/2) mean |u_k|^2 (orthonormal DFT) over the rings |k| = 1 .. H/2 (grid units)."""
        power = torch.fft.rfft2(u.float(), norm="ortho").abs().square().flatten(2)  # (N, C, modes)
        rings = torch.zeros(*power.shape[:2], len(self.count), device=u.device, dtype=power.dtype)
        return (rings.index_add(2, self.ring, power) / self.count)[..., 1:]

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.net(torch.log(self.ring_power(u) + 1e-4).flatten(1).to(u.dtype))


class _VectorNet(nn.Sequential):
    """Linear layers with optional batch norm, (Leaky)ReLU and dropout after each but the last."""

    def __init__(self, sizes: Sequence[int], slope: float, dropout: float, batch_norm: bool, last_activation: bool):
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2 or last_activation:
                layers += [nn.BatchNorm1d(b) if batch_norm else nn.Identity(), _act(slope)]
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


# ----------------------------------------------------------------------------- noise-to-image GANs


class GAN(Model, Encoding, Generative, Adversarial):
    """Noise-to-image GAN with an encoder: the shared body of DCGAN, WGAN-GP and the conditional GAN.

    ``sample(n, condition, generator)`` draws images in store units; ``encode`` / ``encode_batch``
    give codes from the encoder E; ``decode(z, condition)`` is G in store units;
    ``critic_features(u)`` is f, the critic's last feature layer. The losses of the two
    players are :meth:`discriminator_loss` and :meth:`generator_loss`, and E's is
    :meth:`encoder_loss`; deepfield.train.gan plays the game.
    """

    config_class = GANConfig
    trainer = "adversarial"
    check_options = {"latent_dim": 8, "channels": (8, 16), "encoder_epochs": 1}

    def __init__(self, config: GANConfig):
        self._check_config(config)
        super().__init__(config)
        shape = tuple(config.input_shape)
        self.is_image = len(shape) == 3
        stretch = config.stretch if config.stretch != "auto" else ("asinh" if self.is_image else "linear")
        self.stretch = WorkingStretch(self.data_scale.shape, stretch, config.stretch_softening)
        self.conditions = ConditionNormaliser(config.condition)
        k = len(config.condition)
        bounded = self.stretch.bounded
        if self.is_image:
            c, h, w = shape
            self.generator = _ImageGenerator(config.latent_dim + k, c, h, config.channels, config.leaky_slope,
                                             config.g_dropout, config.g_batch_norm, bounded, config.padding,
                                             config.noise_injection)
            self.critic = _ImageCritic(c, h, config.channels, config.leaky_slope, config.d_dropout,
                                       config.d_batch_norm, config.padding)
            self.encoder = ConvEncoder(c, h, config.latent_dim, config.channels, blocks=1)
            n_features = self.critic.features
            self.critic_spectrum = (_SpectralFeatures(c, h, 64, config.leaky_slope) if config.spectral_critic
                                    else None)
            if self.critic_spectrum is not None:
                n_features += self.critic_spectrum.out_features
        else:
            d = int(np.prod(shape))
            hidden = tuple(config.hidden)
            self.generator = nn.Sequential(
                _VectorNet((config.latent_dim + k, *hidden[::-1], d), config.leaky_slope, config.g_dropout,
                           config.g_batch_norm, last_activation=False),
                nn.Tanh() if bounded else nn.Identity())
            self.critic = _VectorNet((d, *hidden), config.leaky_slope, config.d_dropout, config.d_batch_norm,
                                     last_activation=True)
            self.encoder = MLP((d, *hidden, config.latent_dim))
            n_features = hidden[-1]
            self.critic_spectrum = None
        self.critic_head = nn.Linear(n_features, 1)
        # projection discriminator: <embed(c), f(x)> adds the condition's evidence to the score
        self.critic_projection = MLP((k, 64, n_features)) if k else None

    @staticmethod
    def _check_config(config: GANConfig) -> None:
        shape = tuple(config.input_shape)
        if len(shape) == 3 and shape[1] != shape[2]:
            raise ConfigError(f"GANs need square images, got input shape {shape}")
        if len(shape) not in (1, 3):
            raise ConfigError(f"input shape {shape}: expected (C, H, W) images or (L,) vectors")
        if config.loss not in LOSSES:
            raise ConfigError(f"loss {config.loss!r}: choose one of {', '.join(LOSSES)}")
        if config.stretch not in STRETCHES:
            raise ConfigError(f"stretch {config.stretch!r}: choose one of {', '.join(STRETCHES)}")
        if config.padding not in PADDINGS:
            raise ConfigError(f"padding {config.padding!r}: choose one of {', '.join(PADDINGS)}")
        if config.latent_dim < 1 or config.n_critic < 1 or config.encoder_epochs < 0:
            raise ConfigError("latent_dim >= 1, n_critic >= 1 and encoder_epochs >= 0 are required")
        if not (0 <= config.g_dropout < 1 and 0 <= config.d_dropout < 1 and 0 <= config.label_smoothing < 0.5):
            raise ConfigError("dropout must lie in [0, 1) and label_smoothing in [0, 0.5)")
        if config.leaky_slope < 0 or config.gp_weight < 0 or config.stretch_softening <= 0:
            raise ConfigError("leaky_slope >= 0, gp_weight >= 0 and stretch_softening > 0 are required")
        if config.lr_g <= 0 or config.lr_d <= 0:
            raise ConfigError(f"learning rates must be > 0, got lr_g={config.lr_g}, lr_d={config.lr_d}")
        if config.loss == "wasserstein" and config.d_batch_norm:
            raise ConfigError("a WGAN-GP critic cannot use batch norm (the gradient penalty is per object and "
                              "batch norm couples the objects of a batch): set d_batch_norm to false")

    # -- data the model reads
    @property
    def data_columns(self) -> tuple[str, ...]:
        return tuple(self.config.condition)

    # -- normalisation: store units <-> working units
    def fit_normalisation(self, x: np.ndarray) -> None:
        """Fit the per-band scale and the stretch on training data `x` (N, *input_shape), store units."""
        super().fit_normalisation(x)
        self.stretch.fit(normalised_chunks(x, self.data_offset, self.data_scale))

    def fit_conditions(self, values: np.ndarray) -> None:
        """Fit the normalisation and training range of the condition columns (N, K)."""
        self.conditions.fit(values)

    def to_working(self, x: torch.Tensor) -> torch.Tensor:
        """Store units -> working units (in [-1, 1] for training images)."""
        return self.stretch(self.normalise(self.check_input(x)))

    def from_working(self, u: torch.Tensor) -> torch.Tensor:
        """Working units -> store units."""
        return self.denormalise(self.stretch.inverse(u))

    def condition_tensor(self, batch_or_values, n: int | None = None) -> torch.Tensor | None:
        """Normalised conditions (N, K) from a batch dict or raw values; None if unconditional."""
        if not self.config.condition:
            return None
        if isinstance(batch_or_values, dict):
            batch_or_values = {k: v for k, v in batch_or_values.items() if k in self.config.condition}
        return self.conditions(batch_or_values, n)

    # -- the networks in working units
    def generate(self, z: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """G: codes (N, latent_dim) and normalised conditions (N, K) -> working-unit images."""
        inp = z if condition is None else torch.cat([z, condition], dim=1)
        out = self.generator(inp)
        return out.reshape(z.shape[0], *self.input_shape)

    def critic_features(self, u: torch.Tensor) -> torch.Tensor:
        """f: the critic's last feature layer (N, F) of working-unit images (with the spectral
        features appended when ``spectral_critic``)."""
        if not self.is_image:
            return self.critic(u.reshape(u.shape[0], -1))
        f = self.critic(u)
        if self.critic_spectrum is not None:
            f = torch.cat([f, self.critic_spectrum(u)], dim=1)
        return f

    def critic_score(self, u: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """D's logit (nonsaturating) or the critic's value (wasserstein), (N,)."""
        f = self.critic_features(u)
        score = self.critic_head(f).squeeze(1)
        if self.critic_projection is not None:
            score = score + (self.critic_projection(condition) * f).sum(1) / math.sqrt(f.shape[1])
        return score

    def encode_working(self, u: torch.Tensor) -> torch.Tensor:
        return self.encoder(u if self.is_image else u.reshape(u.shape[0], -1))

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator, device=self.data_scale.device)

    # -- the players' losses (batch["x"] in store units)
    def discriminator_loss(self, batch: dict) -> LossOutput:
        """D's loss on a real batch and a batch generated from fresh noise (G not trained by it)."""
        u = self.to_working(batch["x"])
        c = self.condition_tensor(batch)
        with torch.no_grad():
            fake = self.generate(self.noise(u.shape[0]), c)
        real_score, fake_score = self.critic_score(u, c), self.critic_score(fake, c)
        if self.config.loss == "nonsaturating":
            target = torch.full_like(real_score, 1.0 - self.config.label_smoothing)
            real_loss = F.binary_cross_entropy_with_logits(real_score, target)
            fake_loss = F.binary_cross_entropy_with_logits(fake_score, torch.zeros_like(fake_score))
            return LossOutput(real_loss + fake_loss, {"d_real": torch.sigmoid(real_score).mean(),
                                                      "d_fake": torch.sigmoid(fake_score).mean()})
        distance = real_score.mean() - fake_score.mean()  # the critic's Wasserstein-1 estimate
        gp = gradient_penalty(lambda v: self.critic_score(v, c), u, fake, self.config.gp_weight) \
            if self.config.gp_weight > 0 else torch.zeros((), device=u.device)
        return LossOutput(-distance + gp, {"wasserstein": distance, "gp": gp})

    def generator_loss(self, batch: dict) -> LossOutput:
        """G's loss on a generated batch as large as the real one (conditions from the batch)."""
        n = batch["x"].shape[0]
        c = self.condition_tensor(batch)
        fake_score = self.critic_score(self.generate(self.noise(n), c), c)
        if self.config.loss == "nonsaturating":  # maximise log D(G(z)), not minimise log(1 - D(G(z)))
            return LossOutput(F.binary_cross_entropy_with_logits(fake_score, torch.ones_like(fake_score)))
        return LossOutput(-fake_score.mean())

    def encoder_loss(self, batch: dict) -> LossOutput:
        """izi_f: mean (u - G(E(u)))^2 + kappa mean (f(u) - f(G(E(u))))^2, G and f held fixed by the caller."""
        u = self.to_working(batch["x"])
        c = self.condition_tensor(batch)
        recon = self.generate(self.encode_working(u), c)
        residual = F.mse_loss(recon, u)
        feature = F.mse_loss(self.critic_features(recon), self.critic_features(u).detach())
        return LossOutput(residual + self.config.encoder_feature_weight * feature,
                          {"residual": residual, "feature": feature})

    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.generator.parameters())

    def discriminator_parameters(self) -> list[nn.Parameter]:
        params = list(self.critic.parameters()) + list(self.critic_head.parameters())
        if self.critic_spectrum is not None:
            params += list(self.critic_spectrum.parameters())
        if self.critic_projection is not None:
            params += list(self.critic_projection.parameters())
        return params

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    # -- protocol in store units
    def encode(self, x: torch.Tensor, *, condition=None) -> torch.Tensor:
        """Codes (N, latent_dim) of `x` in store units from the encoder E (conditions unused by E)."""
        return self.encode_working(self.to_working(x))

    def decode(self, z: torch.Tensor, *, condition=None) -> torch.Tensor:
        """G(z, condition) in store units; `condition` as raw catalog values (dict, (N, K) or (K,))."""
        z = self.check_codes(z)
        if self.config.condition:
            c = self.condition_tensor(condition, n=z.shape[0])
        else:
            self.check_no_condition(condition)
            c = None
        return self.from_working(self.generate(z, c))

    def reconstruct(self, x: torch.Tensor, *, condition=None) -> torch.Tensor:
        return self.decode(self.encode(x), condition=condition)

    def reconstruct_batch(self, batch: dict) -> torch.Tensor:
        return self.decode(self.encode_batch(batch), condition=batch if self.config.condition else None)

    @torch.no_grad()
    def sample(self, n: int, *, condition=None, generator: torch.Generator | None = None,
               prior: str = "auto") -> torch.Tensor:
        """`n` images (n, *input_shape) in store units, as the training data look (with their PSF
        and noise: a GAN learns the observed images).

        Arguments:
            condition: conditional GAN: {column: value or (n,) values}, or an array (n, K) / (K,)
                in the order of ``config.condition``.
            generator: torch.Generator; the same seed gives the same images.
            prior: 'auto' or 'gaussian': z ~ N(0, I) either way (the argument keeps the VAE's signature).
        """
        if prior not in ("auto", "gaussian"):
            raise InputError(f"prior {prior!r}: a GAN draws z from N(0, I); use 'auto' or 'gaussian'")
        if n < 1:
            raise InputError(f"n must be >= 1, got {n}")
        z = self.noise(n, generator)
        if not (self.is_image and self.config.noise_injection):
            return self.decode(z, condition=condition)
        # the injected noise from a stream of its own, seeded from `generator`: the same seed, the same images
        source = None
        if generator is not None:
            source = torch.Generator(device=z.device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        with self.generator.noise_source(source):
            return self.decode(z, condition=condition)


@register
class DCGAN(GAN):
    """DCGAN: discriminator and generator of strided/upsampling convolutions with batch norm and
    LeakyReLU, the non-saturating generator loss, optional dropout, separate learning rates and
    one-sided label smoothing; an encoder for codes and anomaly scores.

    Example:
        >>> gan = DCGAN(DCGANConfig(input_shape=(1, 16, 16), latent_dim=8, channels=(8, 16)))
        >>> gan.eval().sample(3, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 1, 16, 16])
    """

    family = "dcgan"
    config_class = DCGANConfig

    def __init__(self, config: DCGANConfig):
        if config.loss != "nonsaturating":
            raise ConfigError("a DCGAN plays the non-saturating game; for the Wasserstein loss train 'wgan-gp'")
        if config.condition:
            raise ConfigError("a DCGAN is unconditional; train 'cgan' for conditions")
        super().__init__(config)


@register
class WGANGP(GAN):
    """WGAN-GP: a critic without batch norm estimating the Wasserstein-1 distance, held 1-Lipschitz
    by a gradient penalty (weight 10), 5 critic steps per generator step, Adam 1e-4, betas
    (0.5, 0.9); an encoder for codes and anomaly scores.

    Example:
        >>> gan = WGANGP(WGANGPConfig(input_shape=(2,), latent_dim=2, hidden=(16,)))
        >>> gan.eval().sample(4, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([4, 2])
    """

    family = "wgan-gp"
    config_class = WGANGPConfig

    def __init__(self, config: WGANGPConfig):
        if config.loss != "wasserstein":
            raise ConfigError("a WGAN-GP plays the Wasserstein game; for the non-saturating loss train 'dcgan'")
        if config.condition:
            raise ConfigError("this WGAN-GP is unconditional; train 'cgan' for conditions")
        super().__init__(config)


@register
class ConditionalGAN(GAN):
    """Conditional GAN on catalog columns (size, magnitude, redshift...): the generator reads
    [z, c], the discriminator adds a projection term <embed(c), f(x)>; played as WGAN-GP by
    default. Samples need the condition values; out-of-range values are extrapolations (see
    ``conditions.outside_range``).

    Example:
        >>> cfg = ConditionalGANConfig(input_shape=(1, 16, 16), latent_dim=8, channels=(8, 16),
        ...                            condition=("magnitude",))
        >>> gan = ConditionalGAN(cfg).eval()
        >>> gan.sample(2, condition={"magnitude": 22.0}).shape
        torch.Size([2, 1, 16, 16])
    """

    family = "cgan"
    config_class = ConditionalGANConfig
    #: the catalog columns conditioned on when none are named
    DEFAULT_CONDITIONS = ("half_light_radius", "magnitude", "redshift")

    @classmethod
    def config_values(cls, store, options, family):
        options = dict(options)
        if not options.get("condition"):
            options["condition"] = tuple(c for c in cls.DEFAULT_CONDITIONS if c in store.columns)
            if not options["condition"]:
                raise ConfigError(f"cgan needs condition columns (--set condition=a,b); the store's catalog has: "
                                  f"{', '.join(store.columns)}")
        return super().config_values(store, options, family)

    def __init__(self, config: ConditionalGANConfig):
        if not config.condition:
            raise ConfigError("a conditional GAN needs condition columns, e.g. half_light_radius,magnitude,redshift")
        super().__init__(config)
