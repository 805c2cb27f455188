"""MLPs and residual convolutional encoder/decoder stacks.

The conv stacks halve (encoder) or double (decoder) the image size per stage until it
reaches 4 pixels or an odd size, so the same code serves 8x8 digits, 32x32 and 64x64 stamps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP", "ResidualBlock", "ConvEncoder", "ConvDecoder", "downsample_plan", "stage_channels"]


def _activation(name: str) -> nn.Module:
    table = {"silu": nn.SiLU, "relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "gelu": nn.GELU,
             "tanh": nn.Tanh, "elu": nn.ELU}
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(table)}")
    return table[name]()


class MLP(nn.Sequential):
    """Linear layers with activations between them (none after the last).

    Arguments:
        sizes: layer widths including input and output, e.g. (784, 256, 32).
        activation: 'silu', 'relu', 'leaky_relu', 'gelu', 'tanh' or 'elu'.
        dropout: dropout probability after each hidden activation.

    Example:
        >>> MLP((4, 16, 2))(torch.zeros(3, 4)).shape
        torch.Size([3, 2])
    """

    def __init__(self, sizes: Sequence[int], activation: str = "silu", dropout: float = 0.0):
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(_activation(activation))
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """x + conv(act(conv(act(x)))) at constant channels and size (pre-activation)."""

    def __init__(self, channels: int, activation: str = "silu"):
        super().__init__()
        self.body = nn.Sequential(
            _activation(activation), nn.Conv2d(channels, channels, 3, padding=1),
            _activation(activation), nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def downsample_plan(image_size: int, max_stages: int = 5) -> tuple[int, int]:
    """(number of stride-2 stages, final spatial size) for a square image of `image_size`."""
    if image_size < 2:
        raise ValueError(f"image size {image_size} is too small for a convolutional model")
    stages, size = 0, image_size
    while size > 4 and size % 2 == 0 and stages < max_stages:
        size //= 2
        stages += 1
    return stages, size


def stage_channels(channels: Sequence[int], stages: int) -> list[int]:
    """Channels per stage: `channels` truncated or extended (with its last entry) to `stages`+1."""
    ch = list(channels)
    while len(ch) < stages + 1:
        ch.append(ch[-1])
    return ch[: stages + 1]


class ConvEncoder(nn.Module):
    """(N, C, H, W) images -> (N, out_features) vectors through residual stride-2 stages.

    A 3x3 stem lifts the bands to ``channels[0]`` features at full resolution; each stage then
    halves the size with a strided 4x4 convolution and refines with residual blocks at the
    reduced size. Keeping the residual blocks off the full-resolution grid is what makes the
    network cheap: at 64x64 a 32-channel block costs as much as the whole rest of the stack.
    Activations run channels-last (NHWC), which oneDNN convolves 1.6-2x faster on CPUs than
    NCHW whatever the weights' layout; :class:`ConvDecoder` likewise.

    Arguments:
        in_channels: image bands C.
        image_size: H (= W).
        out_features: length of the output vector (2 x latent for a VAE's mean and log-var).
        channels: feature channels per resolution, e.g. (16, 32, 64, 128).
        blocks: residual blocks per downsampled resolution.
    """

    def __init__(self, in_channels: int, image_size: int, out_features: int,
                 channels: Sequence[int] = (16, 32, 64, 128), blocks: int = 1, activation: str = "silu"):
        super().__init__()
        stages, final = downsample_plan(image_size)
        ch = stage_channels(channels, stages)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch[0], 3, padding=1)]
        for i in range(stages):
            layers += [_activation(activation), nn.Conv2d(ch[i], ch[i + 1], 4, stride=2, padding=1)]
            layers += [ResidualBlock(ch[i + 1], activation) for _ in range(blocks)]
        if stages == 0:
            layers += [ResidualBlock(ch[0], activation) for _ in range(blocks)]
        layers += [_activation(activation)]
        self.features = nn.Sequential(*layers)
        self.flat_features = ch[-1] * final * final
        self.head = nn.Linear(self.flat_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x.contiguous(memory_format=torch.channels_last))
        return self.head(h.flatten(1))


def _icnr_(conv: nn.Conv2d, out_channels: int, factor: int = 2) -> None:
    """Make the factor^2 sub-pixel kernels (and biases) of each output channel of a convolution
    feeding nn.PixelShuffle(factor) equal, in place: the pixel shuffle then starts as
    nearest-neighbour upsampling."""
    r2 = factor * factor
    with torch.no_grad():
        w = conv.weight.view(out_channels, r2, *conv.weight.shape[1:])
        w.copy_(w[:, :1].expand_as(w))
        if conv.bias is not None:
            b = conv.bias.view(out_channels, r2)
            b.copy_(b[:, :1].expand_as(b))


class ConvDecoder(nn.Module):
    """(N, in_features) vectors -> (N, C, H, W) images; mirror of :class:`ConvEncoder`.

    Each stage refines with residual blocks and doubles the size by nearest-neighbour
    upsampling and a 3x3 convolution; the last doubling is a sub-pixel convolution (a 3x3
    convolution to 4C channels at half size, then pixel shuffle), so no convolution runs on
    the full-resolution grid and there are no transposed-convolution checkerboards to
    imprint on faint galaxy wings. The sub-pixel convolution starts with its four kernels
    (and biases) equal, as nearest-neighbour upsampling (ICNR, Aitken et al. 2017): drawn at
    random, the four disagree and the 2x2 pattern they print at the Nyquist frequency stays
    in the decoded sky through training. The output is raw (unbounded, fp32 even under
    autocast); families apply softplus etc. where flux must be non-negative.
    """

    def __init__(self, in_features: int, out_channels: int, image_size: int,
                 channels: Sequence[int] = (16, 32, 64, 128), blocks: int = 1, activation: str = "silu"):
        super().__init__()
        stages, final = downsample_plan(image_size)
        ch = stage_channels(channels, stages)[::-1]
        self.final = final
        self.start_channels = ch[0]
        self.head = nn.Linear(in_features, ch[0] * final * final)
        layers: list[nn.Module] = []
        for i in range(stages):
            layers += [ResidualBlock(ch[i], activation) for _ in range(blocks)]
            if i < stages - 1:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch[i], ch[i + 1], 3, padding=1)]
            else:
                layers += [_activation(activation), nn.Conv2d(ch[i], out_channels * 4, 3, padding=1),
                           nn.PixelShuffle(2)]
        if stages == 0:
            layers += [ResidualBlock(ch[0], activation) for _ in range(blocks)]
            layers += [_activation(activation), nn.Conv2d(ch[0], out_channels, 3, padding=1)]
        self.body = nn.Sequential(*layers)
        self._out_conv = max(i for i, m in enumerate(self.body) if isinstance(m, nn.Conv2d))
        if stages > 0:
            _icnr_(self.output_conv, out_channels)

    @property
    def output_conv(self) -> nn.Conv2d:
        """The last convolution (its bias sets the initial output level)."""
        return self.body[self._out_conv]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.head(z).view(z.shape[0], self.start_channels, self.final, self.final)
        h = self.body[: self._out_conv](h.contiguous(memory_format=torch.channels_last))
        # The output convolution runs in fp32 even under bf16 autocast: bf16's 8-bit mantissa
        # would quantise the output by up to 0.4% of its value, i.e. several sigma per pixel
        # for a bright galaxy and up to 6% once a likelihood exponentiates it. It is 1-2% of
        # the decoder's arithmetic.
        with torch.autocast(h.device.type, enabled=False):
            return self.body[self._out_conv:](h.float()).contiguous()
