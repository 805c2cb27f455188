"""Gated PixelCNN: an exact, autoregressive likelihood of (multi-band) galaxy stamps.

What is modelled. Each pixel value ``x`` (store units, e.g. counts) of band ``c`` is first
stretched and then quantised; the model gives the exact probability of the quantised image:

    y = asinh(x / (softening * noise_sigma[c]))     (stretch 'asinh'; 'linear': y = x / noise_sigma[c])
    q = round((y - low[c]) / (high[c] - low[c]) * (2**bits - 1)),  clipped to 0 ... 2**bits - 1

``noise_sigma`` (counts, per band) is the sky noise, ``softening`` is in units of it (asinh is
linear within ~softening * noise_sigma of zero and logarithmic above), and ``low``/``high``
bound the stretched values. All of them live in the model's config (fitted on the training
split when not given), so the quantisation is reproducible from config.json alone. Values
beyond ``low``/``high`` fall into the edge bins, whose probability is that of the whole tail.

``log_prob`` is log P(q) in nats, summed over the C x H x W pixel values; ``bits_per_dim`` is
-log P(q) / (C H W ln 2), between 0 and ``bits`` (a uniform model scores ``bits``).

The distribution is p(q) = prod_{i,j} p(q[:, i, j] | q at pixels before (i, j) in raster order),
each factor a mixture of discretised logistics (PixelCNN++) shared across bands: within a
pixel, band c's logistic mean moves linearly with the values of bands c' < c at that pixel, so
later bands are conditioned on earlier ones (the joint is exact, not a product of independent
bands). The network is a gated PixelCNN: a vertical stack that sees the rows above and a
horizontal stack that sees the pixels to the left in the current row, with no blind spot.

Ren et al. (2019)'s background model is the same network trained with ``perturb_rate`` > 0:
each pixel value of a training image is replaced by a uniformly random level with that
probability, so the model learns the population-level statistics (sky, noise) but not the
semantics; log p(x) - log p_background(x) is the likelihood ratio.

References:
    van den Oord et al. (2016), Conditional Image Generation with PixelCNN Decoders,
    arXiv:1606.05328 (gated PixelCNN, vertical and horizontal stacks).
    Salimans et al. (2017), PixelCNN++, arXiv:1701.05517 (discretised logistic mixture).
    Ren et al. (2019), Likelihood Ratios for Out-of-Distribution Detection, arXiv:1906.02845.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepfield.errors import ConfigError, InputError
from deepfield.models.base import Model, register
from deepfield.models.protocol import ExactDensity, Generative, LossOutput, Reconstructing, Trainable
from deepfield.nn import ConditionNormaliser

__all__ = ["PixelCNNConfig", "PixelCNN", "discretized_logistic_mixture_log_prob", "STRETCHES"]

STRETCHES = ("asinh", "linear")
_MIN_LOG_SCALE = -7.0


@dataclass(frozen=True)
class PixelCNNConfig:
    """Arguments:
    input_shape: (C, H, W) images.
    channels: feature maps of each stack.
    layers: gated layers (the receptive field covers every earlier pixel of a W-wide image when
        layers * (kernel_size // 2) >= W - 1).
    kernel_size: odd width of the stacks' convolutions.
    mixtures: logistic components per pixel.
    bits: quantisation depth (2**bits levels per band).
    stretch: 'asinh' or 'linear' (module docstring).
    softening: asinh softening in units of the noise sigma.
    noise_sigma: per-band noise sigma in store units (counts); fitted from the training split
        (robust sigma of the stamps' outer two-pixel border) when empty.
    low, high: per-band range of the stretched values that the levels span; fitted (training
        minimum and maximum, widened by 5% of the span) when empty.
    perturb_rate: fraction of pixel values replaced by random levels in training (Ren et al.
        2019's background model; 0 for the main model).
    condition: catalog columns the model is conditioned on (e.g. magnitude, half_light_radius).
    normalisation: 'channel' (the base class's pixel-std scale; used for reported MSEs).
    """

    input_shape: tuple[int, ...]
    channels: int = 32
    layers: int = 5
    kernel_size: int = 5
    mixtures: int = 5
    bits: int = 8
    stretch: str = "asinh"
    softening: float = 1.0
    noise_sigma: tuple[float, ...] = ()
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()
    perturb_rate: float = 0.0
    condition: tuple[str, ...] = ()
    normalisation: str = "channel"


def _down_shift(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def _right_shift(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


def _gate(a: torch.Tensor) -> torch.Tensor:
    f, g = a.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class GatedLayer(nn.Module):
    """One gated layer of both stacks (van den Oord et al. 2016, fig. 2).

    Invariants (kept by every layer): the vertical features at (i, j) depend only on pixels in
    rows above i; the horizontal features at (i, j) only on pixels before (i, j) in raster order.
    The first layer reads the image and shifts (down for the vertical stack, right for the
    horizontal one) so that the pixel (i, j) itself is excluded.
    """

    def __init__(self, in_channels: int, channels: int, kernel_size: int, n_condition: int, first: bool):
        super().__init__()
        r = kernel_size // 2
        self.r, self.first = r, first
        self.vertical = nn.Conv2d(in_channels, 2 * channels, (r + 1, kernel_size))
        self.horizontal = nn.Conv2d(in_channels, 2 * channels, (1, r + 1))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.horizontal_out = nn.Conv2d(channels, channels, 1)
        self.condition = nn.Linear(n_condition, 4 * channels) if n_condition else None

    def forward(self, v: torch.Tensor, h: torch.Tensor, condition: torch.Tensor | None):
        r = self.r
        v_pre = self.vertical(F.pad(v, (r, r, r, 0)))  # rows i-r..i, columns j-r..j+r
        h_pre = self.horizontal(F.pad(h, (r, 0, 0, 0)))  # row i, columns j-r..j
        if self.first:
            v_pre, h_pre = _down_shift(v_pre), _right_shift(h_pre)
        h_pre = h_pre + self.vertical_to_horizontal(v_pre)
        if self.condition is not None:
            cv, ch = self.condition(condition)[:, :, None, None].chunk(2, dim=1)
            v_pre, h_pre = v_pre + cv, h_pre + ch
        out = self.horizontal_out(_gate(h_pre))
        return _gate(v_pre), out if self.first else h + out  # residual on the horizontal stack


def _log_bin_prob(u: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, levels: int) -> torch.Tensor:
    """log P(bin at u) of a logistic discretised to `levels` bins of centres -1 ... 1; the edge
    bins extend to -inf / +inf. Exact: log(sigmoid(b) - sigmoid(a)) =
    logsigmoid(b) + logsigmoid(-a) + log(1 - exp(a - b))."""
    half = 1.0 / (levels - 1)
    inv = torch.exp(-log_scale)
    a = (u - half - mean) * inv
    b = (u + half - mean) * inv
    middle = F.logsigmoid(b) + F.logsigmoid(-a) + torch.log(-torch.expm1(a - b))
    lower = F.logsigmoid(b)  # the bin at -1 takes everything below it
    upper = F.logsigmoid(-a)  # the bin at +1 takes everything above it
    return torch.where(u < -1 + half / 2, lower, torch.where(u > 1 - half / 2, upper, middle))


def _mixture_parameters(params: torch.Tensor, u: torch.Tensor, n_bands: int, k: int):
    """Split the network output (B, P, H, W) into logits (B, K, H, W), means and log scales
    (B, K, C, H, W), with band c's means moved by the values u (B, C, H, W) of bands c' < c."""
    b, _, hh, ww = params.shape
    c = n_bands
    logits = params[:, :k]
    means = params[:, k:k + k * c].reshape(b, k, c, hh, ww)
    log_scales = params[:, k + k * c:k + 2 * k * c].reshape(b, k, c, hh, ww).clamp(min=_MIN_LOG_SCALE)
    n_coef = c * (c - 1) // 2
    if n_coef:
        coef = torch.tanh(params[:, k + 2 * k * c:]).reshape(b, k, n_coef, hh, ww)
        shifted, pos = [means[:, :, 0]], 0
        for band in range(1, c):
            m = means[:, :, band]
            for earlier in range(band):
                m = m + coef[:, :, pos] * u[:, None, earlier]
                pos += 1
            shifted.append(m)
        means = torch.stack(shifted, dim=2)
    return logits, means, log_scales


def discretized_logistic_mixture_log_prob(u: torch.Tensor, params: torch.Tensor, levels: int,
                                          mixtures: int) -> torch.Tensor:
    """log P(u | params) per pixel (B, H, W), in nats, of values u (B, C, H, W) on the grid of
    `levels` bin centres in [-1, 1]: a mixture over `mixtures` components of products over
    bands of discretised logistics, each band's mean depending linearly on the earlier bands."""
    logits, means, log_scales = _mixture_parameters(params, u, u.shape[1], mixtures)
    per_band = _log_bin_prob(u[:, None], means, log_scales, levels)  # (B, K, C, H, W)
    return torch.logsumexp(per_band.sum(2) + F.log_softmax(logits, dim=1), dim=1)


def _n_parameters(n_bands: int, k: int) -> int:
    return k * (1 + 2 * n_bands + n_bands * (n_bands - 1) // 2)


@register
class PixelCNN(Model, Reconstructing, Generative, ExactDensity, Trainable):
    """Gated PixelCNN with a discretised logistic mixture likelihood (exact log p).

    ``log_prob(batch)`` is log P of the stretched, quantised image in nats (module docstring);
    ``bits_per_dim(batch)``; ``sample(n, condition, generator)`` draws images by ancestral
    sampling, returned in store units; ``loss(batch)`` is bits/dim for the trainer. A batch is
    a dict with 'x' (B, C, H, W) in store units and the condition columns, or just the tensor x
    for unconditional models.

    Example:
        >>> m = PixelCNN(PixelCNNConfig(input_shape=(1, 6, 6), channels=8, layers=2, bits=4,
        ...                             noise_sigma=(1.0,), low=(-3.0,), high=(3.0,)))
        >>> x = m.sample(2, generator=torch.Generator().manual_seed(0))
        >>> x.shape, m.bits_per_dim(x).shape
        (torch.Size([2, 1, 6, 6]), torch.Size([2]))
    """

    family = "pixelcnn"
    config_class = PixelCNNConfig
    check_options = {"channels": 8, "layers": 2, "mixtures": 2, "bits": 5}
    default_gradient_clip = 1.0

    def __init__(self, config: PixelCNNConfig):
        shape = tuple(config.input_shape)
        if len(shape) != 3:
            raise ConfigError(f"PixelCNN models images (C, H, W); got input shape {shape}")
        if config.stretch not in STRETCHES:
            raise ConfigError(f"stretch {config.stretch!r}: choose one of {', '.join(STRETCHES)}")
        if not 1 <= config.bits <= 16:
            raise ConfigError(f"bits={config.bits}: choose 1 to 16 bits per pixel value")
        if config.kernel_size < 3 or config.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size={config.kernel_size}: use an odd size >= 3")
        if config.layers < 1 or config.channels < 1 or config.mixtures < 1:
            raise ConfigError("layers, channels and mixtures must be >= 1")
        if not 0.0 <= config.perturb_rate < 1.0:
            raise ConfigError(f"perturb_rate={config.perturb_rate}: give a fraction in [0, 1) (Ren et al. use 0.1-0.2)")
        if not config.softening > 0:
            raise ConfigError(f"softening={config.softening}: give a positive value (units of the noise sigma)")
        for name in ("noise_sigma", "low", "high"):
            value = getattr(config, name)
            if value and len(value) != shape[0]:
                raise ConfigError(f"{name} has {len(value)} value(s) but the images have {shape[0]} band(s)")
        if config.low and config.high and not all(h > lo for lo, h in zip(config.low, config.high)):
            raise ConfigError(f"high {config.high} must exceed low {config.low} in every band")
        super().__init__(config)
        c = shape[0]
        n_cond = len(config.condition)
        self.conditions = ConditionNormaliser(config.condition)
        self.stack = nn.ModuleList(
            GatedLayer(c if i == 0 else config.channels, config.channels, config.kernel_size, n_cond, first=i == 0)
            for i in range(config.layers))
        self.head = nn.Sequential(nn.ELU(), nn.Conv2d(config.channels, config.channels, 1), nn.ELU(),
                                  nn.Conv2d(config.channels, _n_parameters(c, config.mixtures), 1))

    # -- data
    @property
    def data_columns(self) -> tuple[str, ...]:
        return tuple(self.config.condition)

    @property
    def levels(self) -> int:
        return 2 ** int(self.config.bits)

    @property
    def quantisation(self) -> dict:
        """The stretch and quantisation, as recorded in the config (two models that share it
        assign the same levels to the same image, so their log-probabilities can be subtracted)."""
        cfg = self.config
        return {"stretch": cfg.stretch, "softening": cfg.softening, "noise_sigma": list(cfg.noise_sigma),
                "low": list(cfg.low), "high": list(cfg.high), "bits": cfg.bits}

    def fit_normalisation(self, x: np.ndarray) -> None:
        """Fit the pixel scale (base class) and, where the config leaves them empty, the noise
        sigma and the stretched range on training images `x` (N, C, H, W) in store units."""
        super().fit_normalisation(x)
        x = np.asarray(x, dtype=np.float64)
        values = {}
        sigma = self.config.noise_sigma or tuple(_noise_sigma(x[:, c]) for c in range(x.shape[1]))
        values["noise_sigma"] = tuple(float(s) for s in sigma)
        y = self._stretch_numpy(x, values["noise_sigma"])
        lo = y.min(axis=(0, 2, 3))
        hi = y.max(axis=(0, 2, 3))
        pad = 0.05 * np.maximum(hi - lo, 1e-6)
        values["low"] = self.config.low or tuple(float(v) for v in lo - pad)
        values["high"] = self.config.high or tuple(float(v) for v in hi + pad)
        self.config = dataclasses.replace(self.config, **values)

    def fit_conditions(self, values: np.ndarray) -> None:
        """Fit the normalisation and training range of the condition columns (N, K)."""
        self.conditions.fit(values)

    def _stretch_numpy(self, x: np.ndarray, sigma) -> np.ndarray:
        s = np.asarray(sigma, dtype=np.float64)[None, :, None, None]
        if self.config.stretch == "asinh":
            return np.arcsinh(x / (self.config.softening * s))
        return x / s

    def _quantisation_tensors(self, like: torch.Tensor):
        cfg = self.config
        if not (cfg.noise_sigma and cfg.low and cfg.high):
            raise ConfigError("the PixelCNN's stretch is not set: train it (which fits noise_sigma, low and high) "
                              "or give noise_sigma, low and high in its config")
        def band(v):
            return torch.tensor(v, dtype=like.dtype, device=like.device)[None, :, None, None]
        return band(cfg.noise_sigma), band(cfg.low), band(cfg.high)

    def quantise(self, x: torch.Tensor) -> torch.Tensor:
        """Levels (B, C, H, W), integers 0 ... 2**bits - 1 as floats, of images in store units."""
        sigma, lo, hi = self._quantisation_tensors(x)
        y = torch.asinh(x / (self.config.softening * sigma)) if self.config.stretch == "asinh" else x / sigma
        return torch.round((y - lo) / (hi - lo) * (self.levels - 1)).clamp(0, self.levels - 1)

    def dequantise(self, q: torch.Tensor) -> torch.Tensor:
        """Store units of levels `q` (the bin centres mapped back through the stretch)."""
        sigma, lo, hi = self._quantisation_tensors(q)
        y = lo + q / (self.levels - 1) * (hi - lo)
        return torch.sinh(y) * self.config.softening * sigma if self.config.stretch == "asinh" else y * sigma

    def _to_unit(self, q: torch.Tensor) -> torch.Tensor:
        return 2.0 * q / (self.levels - 1) - 1.0

    # -- network
    def network(self, u: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Mixture parameters (B, P, H, W) at every pixel from values u (B, C, H, W) in [-1, 1];
        the output at (i, j) depends only on u at pixels before (i, j) in raster order."""
        v = h = u
        for layer in self.stack:
            v, h = layer(v, h, condition)
        return self.head(h)

    def _split_batch(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = batch["x"] if isinstance(batch, dict) else batch
        x = self.check_input(x)
        if not bool(torch.isfinite(x).all()):
            bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
            where = (f"ids {batch['id'][bad].tolist()[:10]}" if isinstance(batch, dict) and "id" in batch
                     else f"rows {bad.nonzero().flatten().tolist()[:10]}")
            raise InputError(f"NaN/inf pixels in {where}: clean or mask them before scoring")
        if not self.config.condition:
            return x, None
        if not isinstance(batch, dict):
            raise InputError(f"this PixelCNN is conditioned on {list(self.config.condition)}: pass a batch dict "
                             "with 'x' and those columns")
        raw = self.conditions.raw(batch, x.shape[0])
        self._warn_range(raw)
        return x, self.conditions.normalise(raw).to(x.dtype)

    def _warn_range(self, raw: torch.Tensor) -> None:
        for message in self.conditions.outside_range(raw.detach().cpu().numpy()):
            warnings.warn(f"PixelCNN: {message}; the model extrapolates there", stacklevel=3)

    def _log_prob_levels(self, q: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        u = self._to_unit(q)
        params = self.network(u, condition)
        return discretized_logistic_mixture_log_prob(u, params, self.levels, self.config.mixtures).flatten(1).sum(1)

    # -- protocol
    def log_prob(self, batch) -> torch.Tensor:
        """log P (B,) in nats of the stretched, quantised images of `batch` (never perturbed)."""
        x, c = self._split_batch(batch)
        return self._log_prob_levels(self.quantise(x), c)

    def bits_per_dim(self, batch) -> torch.Tensor:
        """-log2 P / (C H W) (B,): bits per pixel value of the quantised images."""
        return -self.log_prob(batch) / (float(np.prod(self.input_shape)) * math.log(2.0))

    def loss(self, batch: dict) -> LossOutput:
        """Mean bits/dim of the batch. In training mode with perturb_rate > 0 (background model)
        each pixel value is first replaced by a uniformly random level with that probability
        (Ren et al. 2019); in eval mode (validation) the loss is that of the clean images."""
        x, c = self._split_batch(batch)
        q = self.quantise(x)
        if self.training and self.config.perturb_rate > 0:
            replace = torch.rand(q.shape, device=q.device) < self.config.perturb_rate
            q = torch.where(replace, torch.randint(0, self.levels, q.shape, device=q.device).to(q.dtype), q)
        nll = -self._log_prob_levels(q, c)
        bpd = nll / (float(np.prod(self.input_shape)) * math.log(2.0))
        return LossOutput(bpd.mean(), {"bits_per_dim": bpd.mean(), "nll": nll.mean()})

    @torch.no_grad()
    def reconstruct_batch(self, batch) -> torch.Tensor:
        """One-step-ahead prediction (B, C, H, W) in store units: at each pixel the mixture mean
        given the true earlier pixels (and earlier bands), mapped back through the stretch. The
        trainer's reported MSEs are of this prediction."""
        x, c = self._split_batch(batch)
        u = self._to_unit(self.quantise(x))
        logits, means, _ = _mixture_parameters(self.network(u, c), u, u.shape[1], self.config.mixtures)
        mean_u = (torch.softmax(logits, dim=1)[:, :, None] * means).sum(1).clamp(-1, 1)
        return self.dequantise((mean_u + 1) / 2 * (self.levels - 1))

    def reconstruct(self, x: torch.Tensor, *, condition=None) -> torch.Tensor:
        """As :meth:`reconstruct_batch` for images `x` (and raw condition values (B, K))."""
        if not self.config.condition:
            return self.reconstruct_batch(x)
        values = self.conditions.raw(condition, x.shape[0])
        return self.reconstruct_batch({"x": x, **{k: values[:, i] for i, k in enumerate(self.config.condition)}})

    @torch.no_grad()
    def sample(self, n: int, *, condition=None, generator: torch.Generator | None = None,
               prior: str = "auto") -> torch.Tensor:
        """`n` images (n, C, H, W) in store units (bin centres of the quantised stretch), drawn
        pixel by pixel and band by band in raster order.

        Arguments:
            condition: for a conditional model, a dict {column: value or (n,) values} or an array
                (n, K) / (K,) in the config's column order; values outside the training range warn.
            generator: torch.Generator (CPU); the same seed gives the same images.
            prior: accepted for the shared sampling interface; a PixelCNN has no latent prior.
        """
        del prior
        device, dtype = self.data_scale.device, self.data_scale.dtype
        c_norm = None
        if self.config.condition:
            raw = self.conditions.raw(condition, n)
            self._warn_range(raw)
            c_norm = self.conditions.normalise(raw).to(dtype)
        elif condition is not None:
            raise InputError("this PixelCNN is unconditional: call sample without a condition")
        c, h, w = self.input_shape
        k, levels = self.config.mixtures, self.levels
        u = torch.zeros(n, c, h, w, device=device, dtype=dtype)
        for i in range(h):
            for j in range(w):
                # outputs of row i depend only on rows <= i: run the network on those rows alone
                params = self.network(u[:, :, :i + 1], c_norm)[:, :, i:i + 1, j:j + 1]
                rand = torch.rand(n, k + c, generator=generator).to(device, dtype).clamp(1e-6, 1 - 1e-6)
                logits = params[:, :k, 0, 0]
                comp = torch.argmax(logits - torch.log(-torch.log(rand[:, :k])), dim=1)  # Gumbel-max
                for band in range(c):
                    _, means, log_scales = _mixture_parameters(params, u[:, :, i:i + 1, j:j + 1], c, k)
                    mean = means[torch.arange(n), comp, band, 0, 0]
                    scale = log_scales[torch.arange(n), comp, band, 0, 0].exp()
                    r = rand[:, k + band]
                    value = mean + scale * (torch.log(r) - torch.log1p(-r))
                    q = torch.round((value + 1) / 2 * (levels - 1)).clamp(0, levels - 1)
                    u[:, band, i, j] = self._to_unit(q)
        return self.dequantise((u + 1) / 2 * (levels - 1))


def _noise_sigma(x: np.ndarray) -> float:
    """Robust noise sigma of images (N, H, W): IQR/1.349 of the two-pixel outer border (mostly sky
    on centred stamps); the pixel std where that is zero (noiseless data); 1 for constant data."""
    border = np.concatenate([x[:, :2].ravel(), x[:, -2:].ravel(), x[:, 2:-2, :2].ravel(), x[:, 2:-2, -2:].ravel()])
    q25, q75 = np.percentile(border, [25, 75])
    sigma = (q75 - q25) / 1.349
    if not sigma > 0:
        sigma = float(x.std())
    return float(sigma) if sigma > 0 else 1.0
