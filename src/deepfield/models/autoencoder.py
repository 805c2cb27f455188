"""Autoencoders: dense (the classic 784-32-784 kind) and convolutional, each optionally
denoising (Gaussian noise on the input, clean target) and sparse (L1 penalty on the code).

Images of flux are non-negative, so with ``positive=True`` the decoder ends in a softplus
and never predicts negative flux. Losses are mean squared errors in normalised units
(data / per-band pixel standard deviation), so numbers compare across stores and with PCA.

Galaxy stamps span orders of magnitude in brightness: in a survey to r = 25 half the stamps
peak below the pixel standard deviation and a few reach a hundred times it. A plain network
trained on such data has its loss set by the few bright objects in each batch and learns
erratically (measured: held-out MSE 0.17 with validation losses jumping 0.3-2.5 between
epochs, vs 0.078 and smooth with the split below). With ``split_amplitude`` the model
factorises each object as amplitude x shape, as a galaxy is flux x profile: the encoder sees
asinh(x / a) with a the object's RMS, the code's first coordinate is log a, and the decoder
makes an order-one shape that a multiplies back. The code stays a plain vector
(``decode(encode(x))`` as usual), one of whose coordinates is the log amplitude.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from deepfield.errors import ConfigError
from deepfield.models.base import Model, register
from deepfield.models.protocol import Encoding, LossOutput, Trainable
from deepfield.nn import MLP, ConvDecoder, ConvEncoder

__all__ = ["AutoencoderConfig", "ConvAutoencoderConfig", "DenseAutoencoder", "ConvAutoencoder"]


@dataclass(frozen=True)
class AutoencoderConfig:
    """Arguments:
    input_shape: one sample's shape, (C, H, W) images, (L,) spectra or (D,) features.
    latent_dim: code length.
    hidden: hidden layer widths of the encoder (the decoder mirrors them).
    activation: 'silu', 'relu', 'leaky_relu', 'gelu', 'tanh' or 'elu'.
    positive: softplus output, for flux that cannot be negative.
    denoise_sigma: std of Gaussian noise added to the input in training, in units of the
        per-band pixel standard deviation (0: plain autoencoder).
    sparse_l1: weight of the mean |z| penalty on the code (0: none).
    normalisation: 'channel' (images/spectra) or 'feature' (tables).
    split_amplitude: code = (log RMS amplitude, shape code); the network sees and makes
        unit-RMS shapes and the amplitude scales them (see the module docstring).
    """

    input_shape: tuple[int, ...]
    latent_dim: int = 16
    hidden: tuple[int, ...] = (512, 128)
    activation: str = "silu"
    positive: bool = False
    denoise_sigma: float = 0.0
    sparse_l1: float = 0.0
    normalisation: str = "channel"
    split_amplitude: bool = False


@dataclass(frozen=True)
class ConvAutoencoderConfig:
    """Arguments:
    input_shape: (C, H, W) with H = W.
    latent_dim: code length.
    channels: feature channels per resolution, from full size down.
    blocks: residual blocks per resolution.
    activation, positive, denoise_sigma, sparse_l1, normalisation, split_amplitude: as for
        the dense model.
    """

    input_shape: tuple[int, ...]
    latent_dim: int = 16
    channels: tuple[int, ...] = (16, 32, 64, 128)
    blocks: int = 1
    activation: str = "silu"
    positive: bool = False
    denoise_sigma: float = 0.0
    sparse_l1: float = 0.0
    normalisation: str = "channel"
    split_amplitude: bool = True


class _Autoencoder(Model, Encoding, Trainable):
    """Shared loss and output head of both autoencoders."""

    @classmethod
    def config_values(cls, store, options, family):
        fields = {f.name for f in dataclasses.fields(cls.config_class)}
        values = {"split_amplitude": store.kind == "image"}
        if "positive" in fields and store.kind == "image" and "positive" not in options:
            # non-negative decoder for non-negative data (digits, noiseless truth); noisy
            # sky-subtracted stamps fit better unconstrained
            sample = store.read("x", slice(0, min(len(store), 2000)))
            values["positive"] = bool((sample < 0).mean() < 0.01)
        if "hidden" in fields:
            d = int(np.prod(store.sample_shape))
            values["hidden"] = (64, 32) if d <= 64 else (512, 128)
        return super().config_values(store, {**values, **options}, family)

    def _check_common(self, config) -> None:
        if config.latent_dim < 1:
            raise ConfigError(f"latent_dim must be >= 1, got {config.latent_dim}")
        if config.positive and config.normalisation != "channel":
            raise ConfigError("positive=True needs normalisation='channel' (zero flux must stay zero)")
        if config.denoise_sigma < 0 or config.sparse_l1 < 0:
            raise ConfigError("denoise_sigma and sparse_l1 must be >= 0")
        if config.split_amplitude and config.latent_dim < 2:
            raise ConfigError("split_amplitude uses one code coordinate for the amplitude: latent_dim must be >= 2 "
                              "(or set split_amplitude: false)")

    @property
    def code_dim(self) -> int:
        """Length of the network's code (latent_dim less the amplitude coordinate)."""
        return self.config.latent_dim - int(self.config.split_amplitude)

    def _output(self, h: torch.Tensor) -> torch.Tensor:
        return F.softplus(h) if self.config.positive else h

    def _encoder_net(self, inp: torch.Tensor) -> torch.Tensor:
        return self.encoder(inp)

    def _decoder_net(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(code)

    def _encode_normalised(self, xn: torch.Tensor) -> torch.Tensor:
        if not self.config.split_amplitude:
            return self._encoder_net(xn)
        dims = tuple(range(1, xn.ndim))
        amplitude = xn.pow(2).mean(dim=dims).sqrt().clamp_min(1e-4)
        shape = torch.asinh(xn / amplitude.view(-1, *([1] * (xn.ndim - 1))))
        return torch.cat([amplitude.log()[:, None], self._encoder_net(shape)], dim=1)

    def _decode_normalised(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's raw output (before the positivity transform), normalised units."""
        if not self.config.split_amplitude:
            return self._decoder_net(z)
        shape = self._decoder_net(z[:, 1:])
        return torch.exp(z[:, :1]).view(-1, *([1] * (shape.ndim - 1))) * shape

    def encode(self, x: torch.Tensor, *, condition=None) -> torch.Tensor:
        """Codes (N, latent_dim) of data `x` in store units."""
        self.check_no_condition(condition)
        return self._encode_normalised(self.normalise(self.check_input(x)))

    def decode(self, z: torch.Tensor, *, condition=None) -> torch.Tensor:
        """Data (N, *input_shape) in store units from codes `z`."""
        self.check_no_condition(condition)
        return self.denormalise(self._output(self._decode_normalised(self.check_codes(z))))

    def loss(self, batch: dict) -> LossOutput:
        x = self.check_input(batch["x"])
        target = self.normalise(x)
        inp = target
        if self.training and self.config.denoise_sigma > 0:
            inp = target + self.config.denoise_sigma * torch.randn_like(target)
        z = self._encode_normalised(inp)
        recon = self._output(self._decode_normalised(z))
        mse = F.mse_loss(recon, target)
        parts = {"mse": mse}
        loss = mse
        if self.config.sparse_l1 > 0:
            l1 = (z[:, 1:] if self.config.split_amplitude else z).abs().mean()
            parts["l1"] = l1
            loss = loss + self.config.sparse_l1 * l1
        return LossOutput(loss, parts)


@register
class DenseAutoencoder(_Autoencoder):
    """Fully connected autoencoder on flattened samples (the seed's 784-32-784 kind).

    Example:
        >>> ae = DenseAutoencoder(AutoencoderConfig(input_shape=(1, 8, 8), latent_dim=2, hidden=(32,)))
        >>> ae.decode(ae.encode(torch.rand(5, 1, 8, 8))).shape
        torch.Size([5, 1, 8, 8])
    """

    family = "ae"
    config_class = AutoencoderConfig
    check_options = {"latent_dim": 4, "hidden": (32,)}

    def __init__(self, config: AutoencoderConfig):
        self._check_common(config)
        super().__init__(config)
        d = int(np.prod(config.input_shape))
        self.encoder = MLP((d, *config.hidden, self.code_dim), config.activation)
        self.decoder = MLP((self.code_dim, *config.hidden[::-1], d), config.activation)

    def _encoder_net(self, inp):
        return self.encoder(inp.reshape(inp.shape[0], -1))

    def _decoder_net(self, code):
        return self.decoder(code).reshape(code.shape[0], *self.input_shape)


@register
class ConvAutoencoder(_Autoencoder):
    """Convolutional autoencoder with residual stride-2 stages (shared with the VAEs).

    Example:
        >>> ae = ConvAutoencoder(ConvAutoencoderConfig(input_shape=(1, 16, 16), latent_dim=4, channels=(8, 16)))
        >>> ae.encode(torch.rand(2, 1, 16, 16)).shape
        torch.Size([2, 4])
    """

    family = "conv-ae"
    config_class = ConvAutoencoderConfig
    check_options = {"latent_dim": 4, "channels": (8, 16)}

    def __init__(self, config: ConvAutoencoderConfig):
        self._check_common(config)
        shape = tuple(config.input_shape)
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ConfigError(f"the convolutional autoencoder needs square (C, H, W) images, got "
                              f"input shape {shape}; use the dense autoencoder ('ae') for spectra and tables")
        super().__init__(config)
        c, h, _ = shape
        self.encoder = ConvEncoder(c, h, self.code_dim, config.channels, config.blocks, config.activation)
        self.decoder = ConvDecoder(self.code_dim, c, h, config.channels, config.blocks, config.activation)
