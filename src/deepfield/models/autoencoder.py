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

The convolutional autoencoder goes further by default (``linear_path``): its code is the
projection of the image on the leading singular vectors of the training images (PCA through
the origin, fitted with the normalisation), plus a correction from the convolutional encoder,
and its reconstruction is the linear one plus a correction from the convolutional decoder.
Both corrections start at zero, so the untrained model is that linear compressor, and they
are scaled by the code's own amplitude, so the networks work on shapes while the linear path
carries the flux (a galaxy twice as bright has twice the code and twice the reconstruction,
up to the corrections' response to noise). The amplitude then comes from the projection,
which averages the noise down, not from the noisy image's RMS: with the split-amplitude
design the reconstruction of a faint galaxy kept the RMS of its noise, and the held-out error
against the noiseless images was 13x PCA's at 16-D codes (benchmarks/compression.py).

Sky images have no preferred orientation (``symmetry='dihedral'``): the basis is then fitted
on the training images with their rotations by 90 degrees and reflections, and training turns
and flips each batch at random. With fewer training images than pixels, plain PCA's higher
components are mostly noise (its basis misses signal that a noiseless fit captures 4x better
at 16 components); the eightfold set gives the network's starting point a cleaner basis.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from deepfield.errors import ConfigError
from deepfield.models.base import Model, register
from deepfield.models.protocol import Encoding, LossOutput, Trainable
from deepfield.nn import MLP, ConvDecoder, ConvEncoder

__all__ = ["AutoencoderConfig", "ConvAutoencoderConfig", "DenseAutoencoder", "ConvAutoencoder", "random_dihedral"]

#: memory for the samples the linear path is fitted on (float32)
LINEAR_PATH_BYTES = 2**30

#: the eight rotations by multiples of 90 degrees, each with or without a left-right flip
DIHEDRAL = tuple((k, flip) for k in range(4) for flip in (False, True))


def _transform(images: torch.Tensor, g: tuple[int, bool], inverse: bool = False) -> torch.Tensor:
    """Images (N, C, H, W) rotated by g[0] quarter turns after a flip if g[1] (or the inverse)."""
    k, flip = g
    if inverse:
        out = torch.rot90(images, -k, dims=(-2, -1))
        return out.flip(-1) if flip else out
    out = images.flip(-1) if flip else images
    return torch.rot90(out, k, dims=(-2, -1))


def random_dihedral(images: torch.Tensor, *more: torch.Tensor, generator: torch.Generator | None = None):
    """Each image (N, C, H, W), H = W, turned by a random multiple of 90 degrees and flipped or
    not, one of the eight with equal probability: the sky has no preferred orientation, so a
    model trained on these sees every galaxy in all of them. Further square arrays `more`
    (N, ..., h, h) of the same objects (their PSF stamps, noise maps) get each object's same
    turn; then a tuple of all is returned."""
    which = torch.randint(len(DIHEDRAL), (images.shape[0],), generator=generator, device=images.device)
    outs = []
    for arr in (images, *more):
        out = arr.clone()
        for i, g in enumerate(DIHEDRAL[1:], start=1):
            rows = (which == i).nonzero().flatten()
            if rows.numel():
                out[rows] = _transform(arr[rows], g)
        outs.append(out)
    return tuple(outs) if more else outs[0]



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
    linear_path: as for the convolutional model (off by default here).
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
    linear_path: bool = False


@dataclass(frozen=True)
class ConvAutoencoderConfig:
    """Arguments:
    input_shape: (C, H, W) with H = W.
    latent_dim: code length.
    channels: feature channels per resolution, from full size down.
    blocks: residual blocks per resolution.
    activation, positive, denoise_sigma, sparse_l1, normalisation, split_amplitude: as for
        the dense model.
    linear_path: code = linear projection + amplitude-scaled network correction, image =
        linear reconstruction + amplitude-scaled network correction, with the linear basis
        fitted on the training images (see the module docstring); excludes split_amplitude.
    symmetry: 'dihedral': the data have no preferred orientation (the sky), so the linear basis
        is fitted on the training images and their rotations by 90 degrees and reflections, and
        training turns and flips each batch's images at random; 'none' for data that do
        (digits, letters). Default: 'dihedral' for stores that carry a PSF (sky images), else
        'none'. With 4,000 64x64 training galaxies (fewer images than pixels) the eightfold set
        halves the basis' share of noise: held-out error against the noiseless images 0.66x
        plain PCA's at 16 components.
    linear_basis: which linear basis the linear path uses: 'symmetric' (fitted on the eightfold
        set; needs symmetry 'dihedral'), 'plain' (the training images alone, as PCA), or 'auto':
        with symmetry 'dihedral', whichever reconstructs a held-back fifth of the training
        sample better (then refitted on all of it), else 'plain'. At few components the
        symmetric basis spends them on turned copies of one mode (at 8 of them it lost to PCA);
        with white noise of one level, the held-back images' error differs between two bases of
        one size by just what their errors against the noiseless images differ, so the choice
        needs no truth. With the plain basis, training does not turn and flip the batches.
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
    split_amplitude: bool = False
    linear_path: bool = True
    symmetry: str = "dihedral"
    linear_basis: str = "auto"


class _Autoencoder(Model, Encoding, Trainable):
    """Shared loss and output head of both autoencoders."""

    @classmethod
    def config_values(cls, store, options, family):
        fields = {f.name for f in dataclasses.fields(cls.config_class)}
        # one amplitude design per model: the linear path's (default for the conv AE) or the split
        linear = options.get("linear_path", getattr(cls.config_class, "linear_path", False))
        values = {"split_amplitude": store.kind == "image" and not linear}
        if "symmetry" in fields:
            values["symmetry"] = "dihedral" if store.kind == "image" and store.has("psf") else "none"
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
        if getattr(config, "symmetry", "none") not in ("dihedral", "none"):
            raise ConfigError(f"symmetry {config.symmetry!r}: choose 'dihedral' (sky images) or 'none'")
        basis = getattr(config, "linear_basis", "auto")
        if basis not in ("auto", "symmetric", "plain"):
            raise ConfigError(f"linear_basis {basis!r}: choose 'auto', 'symmetric' or 'plain'")
        if basis == "symmetric" and getattr(config, "symmetry", "none") != "dihedral":
            raise ConfigError("linear_basis 'symmetric' is fitted on the turned and flipped images: it needs "
                              "symmetry 'dihedral'")
        if config.split_amplitude and config.linear_path:
            raise ConfigError("split_amplitude and linear_path are two ways of carrying the amplitude: set one of "
                              "them false")
        if config.linear_path and config.latent_dim > int(np.prod(config.input_shape)):
            raise ConfigError(f"linear_path projects on latent_dim={config.latent_dim} singular vectors, more than "
                              f"the {int(np.prod(config.input_shape))} data values: lower latent_dim")

    @property
    def code_dim(self) -> int:
        """Length of the network's code (latent_dim less the amplitude coordinate)."""
        return self.config.latent_dim - int(self.config.split_amplitude)

    def _init_linear_path(self, encoder_head: torch.nn.Linear, decoder_out: torch.nn.Module) -> None:
        """Buffers of the linear path; the networks' last layers start at zero so that the
        untrained model is the linear compressor."""
        if not self.config.linear_path:
            return
        d = int(np.prod(self.config.input_shape))
        self.register_buffer("linear_basis", torch.zeros(self.config.latent_dim, d))
        #: whether the fitted basis is the symmetric one (see ConvAutoencoderConfig.linear_basis)
        self.register_buffer("linear_basis_symmetric", torch.tensor(self._symmetry == "dihedral"))
        with torch.no_grad():
            for layer in (encoder_head, decoder_out):
                layer.weight.zero_()
                layer.bias.zero_()

    def fit_normalisation(self, x: np.ndarray) -> None:
        """Fit the normalisation on training data `x` (N, *input_shape) in store units and, with
        ``linear_path``, the linear basis: the leading right singular vectors of the normalised
        samples (no centring, so the code is proportional to the flux), of the samples and their
        rotations and reflections with ``symmetry='dihedral'``."""
        super().fit_normalisation(x)
        if not self.config.linear_path:
            return
        # at most 1 GiB of float32 samples (every one of 20,000 64x64 stamps; 5,000 of 128x128x3)
        limit = max(self.config.latent_dim, LINEAR_PATH_BYTES // (4 * int(np.prod(self.input_shape))))
        rows = np.linspace(0, len(x) - 1, min(len(x), limit)).astype(np.int64)
        flat = self.normalise(torch.as_tensor(np.asarray(x[rows], dtype=np.float32))).reshape(len(rows), -1)
        if flat.shape[0] < self.config.latent_dim:
            raise ConfigError(f"linear_path needs at least latent_dim={self.config.latent_dim} training samples, "
                              f"got {flat.shape[0]}")
        choice = getattr(self.config, "linear_basis", "auto")
        symmetric = choice == "symmetric" or (choice == "auto" and self._symmetry == "dihedral")
        if choice == "auto" and symmetric and flat.shape[0] >= 5 * self.config.latent_dim:
            held = torch.arange(flat.shape[0]) % 5 == 4
            fit, test = flat[~held], flat[held]

            def held_error(sym: bool) -> float:
                b = self._leading_basis(fit, sym)
                return float(((test - (test @ b.T) @ b) ** 2).sum())

            symmetric = held_error(True) <= held_error(False)
        self.linear_basis.copy_(self._leading_basis(flat, symmetric))
        self.linear_basis_symmetric.fill_(symmetric)

    def _leading_basis(self, flat: torch.Tensor, symmetric: bool) -> torch.Tensor:
        """The latent_dim leading right singular vectors (latent_dim, D) of samples `flat` (N, D),
        with `symmetric` of the samples with their eight rotations and reflections."""
        shape = self.input_shape
        transforms = DIHEDRAL if symmetric else DIHEDRAL[:1]

        def gram(v: torch.Tensor) -> torch.Tensor:
            """The (augmented) second-moment matrix times v (D, k), without forming the matrix:
            sum over transforms g of g(X^T X g^-1(v))."""
            out = torch.zeros_like(v)
            for g in transforms:
                back = _transform(v.T.reshape(-1, *shape), g, inverse=True).reshape(v.shape[1], -1).T
                out += _transform((flat.T @ (flat @ back)).T.reshape(-1, *shape), g).reshape(v.shape[1], -1).T
            return out

        # randomised subspace iteration (Halko et al. 2011) with generous oversampling: the
        # leading eigenvectors to round-off at a fraction of a full decomposition's cost
        k = min(self.config.latent_dim + 24, flat.shape[1])
        q = torch.randn(flat.shape[1], k, dtype=flat.dtype, generator=torch.Generator().manual_seed(0))
        for _ in range(6):
            q, _ = torch.linalg.qr(gram(q).double())
            q = q.float()
        values, vectors = torch.linalg.eigh((q.T @ gram(q)).double())
        q = q.double()
        basis = (q @ vectors[:, values.argsort(descending=True)])[:, : self.config.latent_dim].T
        # a fixed sign convention (largest entry positive) so that the codes do not flip between fits
        signs = torch.sign(basis.gather(1, basis.abs().argmax(1, keepdim=True)))
        return (basis * signs).float()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # folders written before the basis choice existed hold the symmetric basis when symmetry was dihedral
        key = prefix + "linear_basis_symmetric"
        if hasattr(self, "linear_basis_symmetric") and key not in state_dict and prefix + "linear_basis" in state_dict:
            state_dict[key] = torch.tensor(self._symmetry == "dihedral")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def _symmetry(self) -> str:
        return getattr(self.config, "symmetry", "none")

    @property
    def _augment(self) -> bool:
        """Training turns and flips batches: for data without orientation, unless the linear path
        kept the plain basis (fitted on the images as they are, it reconstructs their turned
        copies worse, and the networks' corrections, trained on those, leave the model worse on
        the images as they come than its linear start)."""
        if self._symmetry != "dihedral":
            return False
        return not getattr(self.config, "linear_path", False) or bool(self.linear_basis_symmetric)

    def _output(self, h: torch.Tensor) -> torch.Tensor:
        return F.softplus(h) if self.config.positive else h

    def _encoder_net(self, inp: torch.Tensor) -> torch.Tensor:
        return self.encoder(inp)

    def _decoder_net(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(code)

    @staticmethod
    def _rms_and_shape(xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sample's RMS (N, 1, ...) and asinh(xn / RMS): the order-one shape the encoder sees."""
        rms = xn.pow(2).mean(dim=tuple(range(1, xn.ndim)), keepdim=True).sqrt().clamp_min(1e-4)
        return rms, torch.asinh(xn / rms)

    def _encode_normalised(self, xn: torch.Tensor) -> torch.Tensor:
        if self.config.linear_path:
            linear = xn.flatten(1) @ self.linear_basis.T
            amplitude = linear.pow(2).mean(dim=1, keepdim=True).sqrt()
            return linear + amplitude * self._encoder_net(self._rms_and_shape(xn)[1])
        if not self.config.split_amplitude:
            return self._encoder_net(xn)
        rms, shape = self._rms_and_shape(xn)
        return torch.cat([rms.flatten(1)[:, :1].log(), self._encoder_net(shape)], dim=1)

    def _decode_normalised(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's raw output (before the positivity transform), normalised units."""
        if self.config.linear_path:
            norm = z.pow(2).sum(dim=1, keepdim=True).sqrt()
            linear = (z @ self.linear_basis).view(z.shape[0], *self.input_shape)
            # the network draws the shape of the unit code; the code's length (= the linear
            # reconstruction's norm) scales it to the image's RMS
            shape = self._decoder_net(z / norm.clamp_min(1e-6))
            scale = (norm / math.sqrt(linear[0].numel())).view(-1, *([1] * (shape.ndim - 1)))
            return linear + scale * shape
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
        if self.training and self._augment:
            target = random_dihedral(target)
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
        self._init_linear_path(self.encoder[-1], self.decoder[-1])

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
        self._init_linear_path(self.encoder.head, self.decoder.output_conv)
