"""CycleGAN: unpaired translation between two surveys' stores (e.g. ground-based to space-based).

Generators G: A -> B and F: B -> A and PatchGAN discriminators D_A, D_B play least-squares
adversarial games, held to the data by cycle-consistency and identity L1 losses, in each
domain's bounded working units (see deepfield.models.gan for the working space). Training
alternates the players (deepfield.train.gan); this module holds only the maths.

References:
    Zhu et al. (2017), Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial
    Networks (CycleGAN), arXiv:1703.10593.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepfield.errors import ConfigError, InputError
from deepfield.models.base import Model, register
from deepfield.models.gan import WorkingStretch, normalised_chunks
from deepfield.models.protocol import Adversarial, LossOutput, Reconstructing, Translating
from deepfield.nn import ResidualBlock, downsample_plan

__all__ = ["CycleGANConfig", "CycleGAN"]


@dataclass(frozen=True)
class CycleGANConfig:
    """Arguments:
    input_shape: (C, H, W) images of both domains (the B store is on A's pixel grid).
    channels: base width of the generators and discriminators.
    downsample: stride-2 stages in each generator (capped by the image size).
    res_blocks: residual blocks at the bottom of each generator.
    d_layers: stride-2 layers of each PatchGAN discriminator.
    leaky_slope: negative slope of the discriminators' LeakyReLUs.
    cycle_weight: weight of the cycle-consistency L1 losses |F(G(a)) - a| + |G(F(b)) - b|.
    identity_weight: weight of the identity L1 losses |G(b) - b| + |F(a) - a|.
    lr_g, lr_d, betas: Adam settings of the generators / discriminators.
    shared_normalisation: one normalisation and stretch, fitted on both domains' training
        images, so that the identity in working units is the identity in flux (stores in one
        flux unit, e.g. counts at one zeropoint); false: each domain its own.
    stretch_softening: asinh softening, in units of the pixel standard deviation.
    normalisation: 'channel'.
    """

    input_shape: tuple[int, ...]
    channels: int = 32
    downsample: int = 2
    res_blocks: int = 4
    d_layers: int = 2
    leaky_slope: float = 0.2
    cycle_weight: float = 10.0
    identity_weight: float = 5.0
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    shared_normalisation: bool = True
    stretch_softening: float = 1.0
    normalisation: str = "channel"


class _TranslationGenerator(nn.Module):
    """(N, C, H, W) -> (N, C, H, W): stride-2 convolutions down, residual blocks, nearest
    upsampling + convolutions up, a final 3x3 convolution added to the input (residual
    translation: the identity is the starting point)."""

    def __init__(self, channels: int, width: int, image_size: int, downsample: int, res_blocks: int):
        super().__init__()
        stages = min(downsample, downsample_plan(image_size)[0])
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.SiLU()]
        ch = width
        for _ in range(stages):
            layers += [nn.Conv2d(ch, 2 * ch, 4, stride=2, padding=1), nn.SiLU()]
            ch *= 2
        layers += [ResidualBlock(ch) for _ in range(res_blocks)]
        for _ in range(stages):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch // 2, 3, padding=1), nn.SiLU()]
            ch //= 2
        layers.append(nn.Conv2d(ch, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u + self.body(u)


class _PatchDiscriminator(nn.Sequential):
    """PatchGAN: stride-2 4x4 convolutions with LeakyReLU, then a 3x3 convolution to one logit per patch."""

    def __init__(self, channels: int, width: int, image_size: int, layers: int, slope: float):
        stages = max(1, min(layers, downsample_plan(image_size)[0]))
        mods: list[nn.Module] = []
        ch_in, ch = channels, width
        for _ in range(stages):
            mods += [nn.Conv2d(ch_in, ch, 4, stride=2, padding=1), nn.LeakyReLU(slope)]
            ch_in, ch = ch, ch * 2
        mods.append(nn.Conv2d(ch_in, 1, 3, padding=1))
        super().__init__(*mods)


@register
class CycleGAN(Model, Reconstructing, Translating, Adversarial):
    """CycleGAN between two stores (domains A and B, e.g. a ground-based and a space-based survey):
    generators G: A -> B and F: B -> A, PatchGAN discriminators D_A and D_B, least-squares
    adversarial losses plus cycle-consistency |F(G(a)) - a| + |G(F(b)) - b| and identity
    |G(b) - b| + |F(a) - a| L1 losses, in each domain's working units.

    ``translate(x, direction='a2b')`` maps images in store units of one domain to the other's.
    Both domains share one normalisation by default (then the untrained generators, which
    start as the identity, leave the flux alone); ``data_scale`` holds A's, ``data_scale_b`` B's.

    Example:
        >>> gan = CycleGAN(CycleGANConfig(input_shape=(1, 16, 16), channels=8, res_blocks=1))
        >>> gan.translate(torch.rand(2, 1, 16, 16), "a2b").shape
        torch.Size([2, 1, 16, 16])
    """

    family = "cyclegan"
    config_class = CycleGANConfig
    trainer = "adversarial"
    check_options = {"channels": 8, "res_blocks": 1}
    #: the second domain's store (``store_b``) is read as batch["x_b"]
    needs_second_store = True

    def __init__(self, config: CycleGANConfig):
        shape = tuple(config.input_shape)
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ConfigError(f"CycleGAN translates square images (C, H, W), got input shape {shape}")
        if config.channels < 1 or config.res_blocks < 0 or config.downsample < 0 or config.d_layers < 1:
            raise ConfigError("channels >= 1, res_blocks >= 0, downsample >= 0 and d_layers >= 1 are required")
        if config.cycle_weight < 0 or config.identity_weight < 0 or config.lr_g <= 0 or config.lr_d <= 0:
            raise ConfigError("loss weights must be >= 0 and learning rates > 0")
        super().__init__(config)
        c, h, _ = shape
        self.register_buffer("data_offset_b", torch.zeros_like(self.data_offset))
        self.register_buffer("data_scale_b", torch.ones_like(self.data_scale))
        self.stretch_a = WorkingStretch(self.data_scale.shape, True, config.stretch_softening)
        self.stretch_b = WorkingStretch(self.data_scale.shape, True, config.stretch_softening)
        self.g_ab = _TranslationGenerator(c, config.channels, h, config.downsample, config.res_blocks)
        self.g_ba = _TranslationGenerator(c, config.channels, h, config.downsample, config.res_blocks)
        self.d_a = _PatchDiscriminator(c, config.channels, h, config.d_layers, config.leaky_slope)
        self.d_b = _PatchDiscriminator(c, config.channels, h, config.d_layers, config.leaky_slope)

    @property
    def latent_dim(self) -> int:
        raise AttributeError("a CycleGAN translates images; it has no latent codes")

    # -- normalisation of both domains
    def fit_normalisation(self, x: np.ndarray) -> None:
        """Fit domain A's scale and stretch on its training images (store units)."""
        super().fit_normalisation(x)
        self.stretch_a.fit(normalised_chunks(x, self.data_offset, self.data_scale))

    def fit_normalisation_b(self, x: np.ndarray) -> None:
        """Fit domain B's scale and stretch on its training images (store units, on A's grid)."""
        from deepfield.models.base import fit_normalisation

        offset, scale = fit_normalisation(x, self.config.normalisation)
        self.data_offset_b.copy_(torch.as_tensor(offset).reshape(self.data_offset_b.shape))
        self.data_scale_b.copy_(torch.as_tensor(scale).reshape(self.data_scale_b.shape))
        self.stretch_b.fit(normalised_chunks(x, self.data_offset_b, self.data_scale_b))

    def fit_domains(self, x_a: np.ndarray, x_b: np.ndarray) -> None:
        """Fit both domains' normalisations on their training images (store units, one grid):
        one shared normalisation of the pooled images, or one each (``shared_normalisation``)."""
        if self.config.shared_normalisation:
            x_a = x_b = np.concatenate([np.asarray(x_a), np.asarray(x_b)])
        self.fit_normalisation(x_a)
        self.fit_normalisation_b(x_b)

    def to_working(self, x: torch.Tensor, domain: str = "a") -> torch.Tensor:
        x = self.check_input(x)
        if domain == "a":
            return self.stretch_a((x - self.data_offset) / self.data_scale)
        return self.stretch_b((x - self.data_offset_b) / self.data_scale_b)

    def from_working(self, u: torch.Tensor, domain: str = "a") -> torch.Tensor:
        if domain == "a":
            return self.stretch_a.inverse(u) * self.data_scale + self.data_offset
        return self.stretch_b.inverse(u) * self.data_scale_b + self.data_offset_b

    # -- losses (batch["x"]: domain A, batch["x_b"]: domain B, store units)
    @staticmethod
    def _lsgan(score: torch.Tensor, real: bool) -> torch.Tensor:
        return ((score - (1.0 if real else 0.0)) ** 2).mean()

    def discriminator_loss(self, batch: dict) -> LossOutput:
        a, b = self.to_working(batch["x"], "a"), self.to_working(batch["x_b"], "b")
        with torch.no_grad():
            fake_b, fake_a = self.g_ab(a), self.g_ba(b)
        loss_a = 0.5 * (self._lsgan(self.d_a(a), True) + self._lsgan(self.d_a(fake_a), False))
        loss_b = 0.5 * (self._lsgan(self.d_b(b), True) + self._lsgan(self.d_b(fake_b), False))
        return LossOutput(loss_a + loss_b, {"d_a": loss_a, "d_b": loss_b})

    def generator_loss(self, batch: dict) -> LossOutput:
        a, b = self.to_working(batch["x"], "a"), self.to_working(batch["x_b"], "b")
        fake_b, fake_a = self.g_ab(a), self.g_ba(b)
        adversarial = self._lsgan(self.d_b(fake_b), True) + self._lsgan(self.d_a(fake_a), True)
        cycle = F.l1_loss(self.g_ba(fake_b), a) + F.l1_loss(self.g_ab(fake_a), b)
        parts = {"adversarial": adversarial, "cycle": cycle}
        loss = adversarial + self.config.cycle_weight * cycle
        if self.config.identity_weight > 0:
            identity = F.l1_loss(self.g_ab(b), b) + F.l1_loss(self.g_ba(a), a)
            parts["identity"] = identity
            loss = loss + self.config.identity_weight * identity
        return LossOutput(loss, parts)

    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.g_ab.parameters()) + list(self.g_ba.parameters())

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return list(self.d_a.parameters()) + list(self.d_b.parameters())

    # -- protocol
    def translate(self, x: torch.Tensor, direction: str = "a2b") -> torch.Tensor:
        """Images (N, C, H, W) of one domain in its store units -> the other domain's units."""
        if direction not in ("a2b", "b2a"):
            raise InputError(f"direction {direction!r}: choose a2b or b2a")
        src, dst = ("a", "b") if direction == "a2b" else ("b", "a")
        net = self.g_ab if direction == "a2b" else self.g_ba
        return self.from_working(net(self.to_working(x, src)), dst)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """A -> B -> A: the cycle reconstruction of domain-A images."""
        return self.translate(self.translate(x, "a2b"), "b2a")

    def reconstruct_batch(self, batch: dict) -> torch.Tensor:
        return self.reconstruct(batch["x"])
