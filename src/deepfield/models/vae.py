"""Variational autoencoders: VAE, beta-VAE and conditional VAE, with telescope-aware likelihoods.

The decoder describes the noiseless sky. With the observation-model likelihoods ('pixel' or
'fourier') it emits a non-negative, PSF-free image in the store's flux units; the likelihood
convolves it with each object's PSF and scores the data under that object's noise (per-pixel
inverse variance, or a stationary noise power spectrum). The morphology model is then
independent of the observing conditions, and ``decode`` gives deconvolved, denoised galaxies.

Likelihoods:
    'gaussian'  : isotropic Gaussian on the normalised data with a learned noise scale (the
                  seed's continuous VAE; no PSF).
    'bernoulli' : data in [0, 1] (e.g. binarised or 0-1 scaled digits; the seed's MNIST VAE).
    'pixel'     : PSF convolution + per-pixel inverse variance `ivar` (+ `mask`).
    'fourier'   : PSF convolution + stationary noise power spectrum `noise_ps`.

References:
    Kingma & Welling (2014), Auto-Encoding Variational Bayes, arXiv:1312.6114.
    Higgins et al. (2017), beta-VAE, ICLR.
    Sohn, Lee & Yan (2015), conditional VAE (learning structured output representations).
    Lanusse et al. (2021), deep generative models for galaxy image simulations,
    arXiv:2008.03833 (the hybrid physical/deep observation model).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepfield.errors import ConfigError, InputError
from deepfield.models.base import Model, register
from deepfield.models.protocol import BoundDensity, Encoding, Generative, LossOutput, Trainable
from deepfield.nn import MLP, ConditionNormaliser, ConvDecoder, ConvEncoder

__all__ = ["VAEConfig", "VAE", "LIKELIHOODS"]

LIKELIHOODS = ("gaussian", "bernoulli", "pixel", "fourier")
#: decoder logits below this are pushed back up (see VAE.loss): softplus(-10) = 4.5e-5
SKY_FLOOR_LOGIT = -10.0
#: with flux_condition the decoder draws sky in units of the object's flux / PROFILE_UNIT per
#: native pixel: a 0.6" galaxy's peak holds ~5% of its flux, i.e. softplus ~ 3 at its centre
PROFILE_UNIT = 64.0
#: with size_condition the decoder draws every galaxy at this quantile of the training radii:
#: most galaxies are then shrunk (drizzled, exact in flux) and few grown by interpolation,
#: while the reference profile still fits on the stamp (0.67" = 3.3 pixels in the benchmark store)
SIZE_REFERENCE_QUANTILE = 0.9


#: below this KL to the prior (nats per object) a VAE's codes say almost nothing about the object: its
#: posterior has collapsed (training warns, the report says so)
COLLAPSE_KL_NATS = 1.5


@dataclass(frozen=True)
class VAEConfig:
    """Arguments:
    input_shape: (C, H, W) images (square) or (L,) spectra / (D,) features.
    latent_dim: code length (default 16).
    channels, blocks, activation: the conv stacks (images), shared with the autoencoders.
    hidden: MLP widths for non-image data.
    likelihood: 'gaussian', 'bernoulli', 'pixel' or 'fourier' (see the module docstring).
    beta: weight of the KL term (beta-VAE; 1 is the plain VAE).
    kl_warmup_epochs: the KL weight rises linearly from 0 to beta over this many epochs.
    oversample: the decoder draws the sky on an oversample x finer grid (pixel/fourier).
    condition: catalog columns given to encoder and decoder (conditional VAE), e.g.
        ('half_light_radius', 'magnitude', 'redshift').
    psf_to_encoder: also show the encoder each object's PSF stamp (pixel/fourier).
    psf_shape: (h, w) of the PSF stamps the encoder reads (taken from the training store).
    flux_zeropoint: AB zeropoint of the store's pixel units, when flux_condition is a magnitude
        (taken from the training store's meta; see flux_condition).
    flux_condition: one of the condition columns holding each object's total flux in the
        reference band (pixel/fourier). The decoder then draws a flux-free profile, in units
        of that flux, and does not see the column: a faint galaxy's shape is drawn from the
        same profiles as a bright one's, rather than from a region of latent space that only
        faint galaxies (whose noisy data hardly constrain their shapes) train, and that
        decodes to round mean blobs. ``flux_zeropoint`` set: the column is an AB magnitude at
        that zeropoint (store units = 10**(-0.4 (m - zeropoint))); unset: a flux in store units.
        Training is touchier than with the plain decoder: loss spikes on bright galaxies wrecked
        benchmark runs, so batches whose loss jumps 20x above the recent median are not
        stepped on (``spike_guard``; counted as train_skipped_steps in metrics.json) and the
        learning rate warms up over the first 1,000 steps. Look at a model's samples
        (deepfield report) before using it.
    size_condition: one of the condition columns holding each object's half-light radius (any
        unit) (pixel/fourier). The decoder then draws every galaxy at one reference radius (the
        90% quantile of the training radii, saved with the model) and does not see the column;
        the profile is dilated by radius / reference about the stamp centre, conserving flux
        (deepfield.physics.dilate). The size asked for is applied exactly (noiseless samples' size
        Spearman 0.99 in benchmarks/morphology.py, 0.79-0.89 without), and the decoder cannot tell
        small (mostly faint, poorly measured) galaxies from large ones. The code then holds the
        shape alone, which says little for most faint galaxies: trained with beta 1 on every
        galaxy of the benchmark store, the posterior collapsed in two runs of three (training
        warns). Train on well-measured galaxies (TrainSettings.where, e.g. 'snr > 20') or with a
        lower beta. The samples are still rounder than the data: the VAE shrinks the shapes of
        small galaxies, bright ones included (docs/benchmarks.md, the morphology paragraph).
    decoder_condition: the condition columns the decoder reads (default: all but
        flux_condition and size_condition); the encoder reads them all. () with flux_condition:
        the decoder sees the code alone, so it cannot tell faint galaxies from bright ones of the
        same shape, while the encoder can still place each galaxy by its catalog size.
    normalisation: 'channel' (images/spectra) or 'feature' (tables).
    """

    input_shape: tuple[int, ...]
    latent_dim: int = 16
    channels: tuple[int, ...] = (16, 32, 64, 128)
    blocks: int = 1
    activation: str = "silu"
    hidden: tuple[int, ...] = (512, 128)
    likelihood: str = "gaussian"
    beta: float = 1.0
    kl_warmup_epochs: int = 0
    oversample: int = 1
    condition: tuple[str, ...] = ()
    psf_to_encoder: bool = False
    psf_shape: tuple[int, ...] = ()
    flux_condition: str = ""
    flux_zeropoint: float | None = None
    size_condition: str = ""
    decoder_condition: tuple[str, ...] | None = None
    normalisation: str = "channel"


class ElboTerms(NamedTuple):
    """The ELBO's parts per object: ``nll`` = -log p(x | z) and ``kl`` = KL(q(z | x) || N(0, I)),
    (N,) in nats, and ``raw``, the decoder's output before the sky transform."""

    nll: torch.Tensor
    kl: torch.Tensor
    raw: torch.Tensor


@register
class VAE(Model, Encoding, Generative, BoundDensity, Trainable):
    """Variational autoencoder (beta-VAE, conditional) with a Gaussian posterior q(z|x, c).

    ``encode`` returns the posterior mean; ``posterior`` returns (mean, log variance);
    ``decode`` gives the noiseless (and, for observation-model likelihoods, PSF-free) image in
    store units; ``sample(n, condition, generator)`` draws from the N(0, I) prior (a latent
    flow prior can replace it); ``elbo(batch)`` is the evidence lower bound per object in nats.

    Example:
        >>> vae = VAE(VAEConfig(input_shape=(1, 16, 16), latent_dim=4, channels=(8, 16)))
        >>> vae.sample(3, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 1, 16, 16])
    """

    family = "vae"
    aliases = ("cvae",)
    config_class = VAEConfig
    check_options = {"latent_dim": 4, "channels": (8, 16)}
    # chi^2 of bright galaxies under per-pixel ivar reaches thousands: unclipped steps diverge
    default_gradient_clip = 1.0

    def __init__(self, config: VAEConfig):
        if config.likelihood not in LIKELIHOODS:
            raise ConfigError(f"likelihood {config.likelihood!r}: choose one of {', '.join(LIKELIHOODS)}")
        if config.latent_dim < 1 or config.beta < 0 or config.oversample < 1:
            raise ConfigError("latent_dim >= 1, beta >= 0 and oversample >= 1 are required")
        shape = tuple(config.input_shape)
        image = len(shape) == 3
        if config.likelihood in ("pixel", "fourier") and not image:
            raise ConfigError(f"the {config.likelihood!r} likelihood convolves images with a PSF; "
                              f"input shape {shape} is not an image: use 'gaussian'")
        if config.oversample > 1 and config.likelihood not in ("pixel", "fourier"):
            raise ConfigError("oversample applies to the 'pixel' and 'fourier' likelihoods")
        if config.psf_to_encoder and not config.psf_shape:
            raise ConfigError("psf_to_encoder needs psf_shape (the PSF stamp shape, set from the store)")
        if config.flux_condition:
            if config.flux_condition not in config.condition:
                raise ConfigError(f"flux_condition {config.flux_condition!r} must be one of the condition columns "
                                  f"{list(config.condition)}: add it to --condition")
            if config.likelihood not in ("pixel", "fourier"):
                raise ConfigError("flux_condition scales the decoded sky: it needs the 'pixel' or 'fourier' likelihood")
        if config.size_condition:
            if config.size_condition not in config.condition:
                raise ConfigError(f"size_condition {config.size_condition!r} must be one of the condition columns "
                                  f"{list(config.condition)}: add it to --condition")
            if config.likelihood not in ("pixel", "fourier") or len(shape) != 3:
                raise ConfigError("size_condition dilates the decoded sky: it needs images and the 'pixel' or "
                                  "'fourier' likelihood")
            if config.size_condition == config.flux_condition:
                raise ConfigError("size_condition and flux_condition must be different columns")
        scaled = (config.flux_condition, config.size_condition)
        if config.decoder_condition is not None:
            bad = [c for c in config.decoder_condition if c not in config.condition or c in scaled]
            if bad:
                raise ConfigError(f"decoder_condition {bad}: the decoder can read condition columns "
                                  f"{[c for c in config.condition if c not in scaled]} (not flux_condition or "
                                  "size_condition, which scale its output)")
        super().__init__(config)
        self.family = "cvae" if config.condition else "vae"  # as recorded in the model folder
        n_cond = len(config.condition)
        self.conditions = ConditionNormaliser(config.condition)
        self.register_buffer("kl_weight", torch.tensor(float(config.beta if config.kl_warmup_epochs == 0 else 0.0)))
        psf_features = int(np.prod(config.psf_shape)) if config.psf_to_encoder else 0
        extra = n_cond + psf_features
        # the decoder sees every condition but the flux and size, which scale its output instead (or those chosen)
        names = list(config.condition)
        self._flux_index = names.index(config.flux_condition) if config.flux_condition else None
        self._size_index = names.index(config.size_condition) if config.size_condition else None
        if self._size_index is not None:
            # the radius every galaxy is decoded at, in the column's unit (fit_conditions sets it)
            self.register_buffer("size_reference", torch.tensor(1.0))
        chosen = (config.decoder_condition if config.decoder_condition is not None
                  else [c for c in names if c not in (config.flux_condition, config.size_condition)])
        self._decoder_columns = [names.index(c) for c in chosen]
        n_decoder_cond = len(self._decoder_columns)
        if image:
            c, h, w = shape
            if h != w:
                raise ConfigError(f"the VAE needs square images, got {shape}")
            o = config.oversample
            self.encoder = ConvEncoder(c, h, 2 * config.latent_dim if extra == 0 else 256, config.channels,
                                       config.blocks, config.activation)
            self.decoder = ConvDecoder(config.latent_dim + n_decoder_cond, c, h * o, config.channels, config.blocks,
                                       config.activation)
        else:
            d = int(np.prod(shape))
            self.encoder = MLP((d, *config.hidden, 2 * config.latent_dim if extra == 0 else 256), config.activation)
            self.decoder = MLP((config.latent_dim + n_decoder_cond, *config.hidden[::-1], d), config.activation)
        if self._flux_index is not None:
            # one profile serves bright and faint galaxies, so a step that moves it by 1% moves a bright galaxy's
            # chi^2 by thousands: batches whose loss jumps 20x above the recent median are not stepped on (seen
            # without the guard: a spike to an epoch-mean chi^2 of 2.6e5 per galaxy, after which every sample
            # was round)
            self.spike_guard = 20.0
            # start from a flat sky holding the object's flux: softplus(bias) * H * W / PROFILE_UNIT = 1
            # (from raw = 0 it would hold 11x the flux at 32 x 32, a chi^2 of ~1e9 for bright galaxies)
            level = PROFILE_UNIT / (shape[1] * shape[2])
            with torch.no_grad():
                self.decoder.output_conv.bias.fill_(math.log(math.expm1(level)))
        # with conditions/PSF the encoder's features are joined with them in a small head
        self.encoder_head = (MLP((256 + extra, 256, 2 * config.latent_dim), config.activation) if extra else None)
        # 'gaussian': a learned noise scale per band in normalised units
        self.log_sigma = nn.Parameter(torch.zeros(shape[0] if image else 1))
        self._observation = None
        self.prior = None  # a fitted latent prior (deepfield.train.prior), attached by deepfield.load

    @classmethod
    def config_values(cls, store, options, family):
        # the telescope-aware likelihood wherever the store knows its PSF and noise
        values = {"likelihood": "pixel" if store.has("psf") and store.has("ivar") and store.kind == "image"
                  else "gaussian"}
        if values["likelihood"] == "gaussian" and "likelihood" not in options and store.kind == "image":
            missing = [a for a in ("psf", "ivar") if not store.has(a)]
            warnings.warn(f"store {store.path} has no {' or '.join(missing)}: the VAE falls back to the Gaussian "
                          "likelihood, which knows no PSF or per-object noise (its decoded galaxies are not "
                          "deconvolved). Import the PSF and inverse variance, or set likelihood=gaussian to say "
                          "this is meant", stacklevel=3)
        if family == "cvae":
            values["condition"] = tuple(c for c in ("half_light_radius", "magnitude", "redshift") if c in store.columns)
        values = super().config_values(store, {**values, **options}, family)
        if values.get("psf_to_encoder") and store.has("psf"):
            values["psf_shape"] = tuple(store.read("psf", [0]).shape[1:])
        if family == "cvae" and not values.get("condition"):
            raise ConfigError(f"cvae needs condition columns (e.g. --set condition=half_light_radius,magnitude); "
                              f"the store's catalog has: {', '.join(store.columns)}")
        flux = values.get("flux_condition")
        if flux and values.get("flux_zeropoint") is None and store.units.get(flux) == "mag":
            zeropoint = (store.meta.get("extra") or {}).get("zeropoint_ab")
            if zeropoint is None:
                raise ConfigError(f"flux_condition {flux!r} is a magnitude, but the store does not record the AB "
                                  "zeropoint of its pixel units: give flux_zeropoint, or use a flux column in store "
                                  "units")
            values["flux_zeropoint"] = float(zeropoint)
        return values

    # -- data the model needs from a store
    @property
    def data_arrays(self) -> tuple[str, ...]:
        if self.config.likelihood == "pixel":
            return ("x", "psf", "ivar")
        if self.config.likelihood == "fourier":
            return ("x", "psf", "ivar")
        return ("psf",) if self.config.psf_to_encoder else ()

    @property
    def optional_data_arrays(self) -> tuple[str, ...]:
        """Store arrays the likelihood reads when the store has them: the bad-pixel 'mask'
        (pixel: flagged pixels are left out) and the noise power spectrum 'noise_ps' (fourier:
        without one it is rebuilt from 'ivar' as white noise)."""
        return {"pixel": ("mask",), "fourier": ("noise_ps",)}.get(self.config.likelihood, ())

    @property
    def data_columns(self) -> tuple[str, ...]:
        return tuple(self.config.condition)

    @property
    def observation(self):
        if self._observation is None and self.config.likelihood in ("pixel", "fourier"):
            from deepfield.physics import ObservationModel

            self._observation = ObservationModel(likelihood=self.config.likelihood, oversample=self.config.oversample)
        return self._observation

    # -- conditions
    def fit_conditions(self, values: np.ndarray) -> None:
        """Fit the normalisation and training range of the condition columns (N, K) (and, with
        size_condition, the reference radius the decoder draws at)."""
        self.conditions.fit(values)
        if self._size_index is not None:
            radii = np.asarray(values, dtype=np.float64).reshape(-1, len(self.config.condition))[:, self._size_index]
            if (radii <= 0).any():
                raise InputError(f"size_condition {self.config.size_condition!r} holds {int((radii <= 0).sum())} "
                                 "radii <= 0: a dilated profile needs positive sizes; drop those objects (--where)")
            self.size_reference.fill_(float(np.quantile(radii, SIZE_REFERENCE_QUANTILE)))

    def condition_tensor(self, batch_or_values, n: int | None = None) -> torch.Tensor | None:
        """Normalised condition (N, K) from a batch dict with the columns, or from values (N, K)/(K,)."""
        return self.conditions(batch_or_values, n) if self.config.condition else None

    # -- networks
    def posterior(self, x: torch.Tensor, condition: torch.Tensor | None = None,
                  psf: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance (N, latent_dim) of q(z | x, condition)."""
        xn = self.normalise(self.check_input(x))
        if self.config.likelihood == "bernoulli":
            xn = x
        inp = torch.asinh(xn) if len(self.input_shape) == 3 and self.config.likelihood != "bernoulli" else xn
        h = self.encoder(inp if len(self.input_shape) == 3 else inp.reshape(inp.shape[0], -1))
        if self.encoder_head is not None:
            parts = [h]
            if condition is not None:
                parts.append(condition)
            if self.config.psf_to_encoder:
                if psf is None:
                    raise InputError("this model reads the PSF in its encoder: the batch needs 'psf'")
                if tuple(psf.shape[1:]) != tuple(self.config.psf_shape):
                    raise InputError(f"PSF stamps of shape {tuple(psf.shape[1:])} given, but this model's encoder "
                                     f"reads {tuple(self.config.psf_shape)} stamps (the training store's): crop or "
                                     "pad the stamps symmetrically about their centre to that size, or retrain")
                parts.append(psf.reshape(psf.shape[0], -1) * float(np.prod(self.config.psf_shape[-2:])))
            h = self.encoder_head(torch.cat(parts, dim=1))
        mean, log_var = h.chunk(2, dim=1)
        return mean, log_var.clamp(-12, 8)

    def _decode_raw(self, z: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        if condition is not None:
            condition = condition[:, self._decoder_columns]  # also puts a reordered decoder_condition in order
        inp = z if condition is None or condition.shape[1] == 0 else torch.cat([z, condition], dim=1)
        out = self.decoder(inp)
        if len(self.input_shape) == 3:
            c, h, w = self.input_shape
            o = self.config.oversample
            return out.reshape(z.shape[0], c, h * o, w * o)
        return out.reshape(z.shape[0], *self.input_shape)

    def _flux(self, condition: torch.Tensor) -> torch.Tensor:
        """Total flux (N,) in store units from the normalised conditions (flux_condition)."""
        value = self.conditions.value(condition, self._flux_index)
        if self.config.flux_zeropoint is not None:
            return 10.0 ** (-0.4 * (value - self.config.flux_zeropoint))
        return value.clamp_min(0.0)

    def _dilation(self, condition: torch.Tensor) -> torch.Tensor:
        """Each object's radius / the reference radius (N,), from the normalised conditions."""
        radius = self.conditions.value(condition, self._size_index)
        bad = ~torch.isfinite(radius) | (radius <= 0)
        if bool(bad.any()):
            rows = torch.nonzero(bad).flatten()
            raise InputError(f"the size condition {self.config.size_condition!r} must be finite and > 0; "
                             f"{rows.numel()} object(s) (rows {rows[:5].tolist()}) have "
                             f"{[round(float(radius[i]), 4) for i in rows[:5]]}: drop them or fix the catalog")
        return radius / self.size_reference

    def _sky(self, raw: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder output -> image in store units (non-negative sky for observation models)."""
        if self.config.likelihood == "bernoulli":
            return torch.sigmoid(raw)
        if self.config.likelihood in ("pixel", "fourier"):
            if self._flux_index is not None:
                scale = (self._flux(condition) / PROFILE_UNIT).view(-1, *([1] * (raw.ndim - 1)))
            else:
                scale = self.data_scale
            sky = F.softplus(raw) * scale
            o = self.config.oversample
            if self._size_index is not None:
                from deepfield.physics import dilate

                # about the object's centre, native pixel n // 2 (its fine-pixel centre when oversampled)
                centre = (self.input_shape[-1] // 2) * o + (o - 1) / 2
                sky = dilate(sky, self._dilation(condition), centre)
            return sky / (o * o)  # flux per fine pixel: o*o fine pixels make one native pixel
        return self.denormalise(raw)

    # -- protocol
    def encode(self, x: torch.Tensor, *, condition=None, psf=None) -> torch.Tensor:
        """Posterior mean codes (N, latent_dim); `condition` as raw catalog values (N, K)."""
        x = self.check_input(x)
        c = self.condition_tensor(condition, n=x.shape[0]) if self.config.condition else None
        return self.posterior(x, c, psf)[0]

    def decode(self, z: torch.Tensor, *, condition=None) -> torch.Tensor:
        """Noiseless images in store units; for 'pixel'/'fourier' PSF-free on the native grid."""
        z = self.check_codes(z)
        if not self.config.condition:
            self.check_no_condition(condition)
        if isinstance(condition, dict):
            condition = {k: v for k, v in condition.items() if k in self.config.condition}
        c = self.condition_tensor(condition, n=z.shape[0]) if self.config.condition else None
        sky = self._sky(self._decode_raw(z, c), c)
        o = self.config.oversample
        if o > 1:
            sky = F.avg_pool2d(sky, o) * (o * o)  # integrate fine pixels back to native pixels
        return sky

    def reconstruct(self, x: torch.Tensor, *, condition=None, psf=None) -> torch.Tensor:
        return self.decode(self.encode(x, condition=condition, psf=psf), condition=condition)

    def posterior_batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """q(z | x, c) of a batch: (mean, log variance, normalised conditions or None), reading
        the batch's condition columns and PSF where the model uses them."""
        c = self.condition_tensor(batch)
        mean, log_var = self.posterior(self.check_input(batch["x"]), c, batch.get("psf"))
        return mean, log_var, c

    def refine_codes(self, batch: dict, steps: int = 30, lr: float = 0.2, mean: torch.Tensor | None = None,
                     prior_weight: float | None = None) -> torch.Tensor:
        """Codes (N, latent_dim) refined object by object from the encoder's posterior mean.

        The encoder is amortised: one network guesses every object's code, and for objects it
        finds hard it guesses short. In benchmarks/refine_codes.py the posterior means of snr
        20-40 training galaxies decode rounder than their truth (|e| 0.095 against 0.128);
        maximum-likelihood refined codes reach 0.125.

        Each code minimises ``-log p(x | z) + w * |z|^2 / 2`` by `steps` Adam steps of size `lr`
        (in units of the prior's sigma) from the encoder's mean (or `mean`); each object keeps
        its best step. `prior_weight` w defaults to the model's beta: the training objective's
        point estimate (the beta-ELBO of a posterior narrowed to a point); 0 gives maximum-
        likelihood codes. Objects do not interact (Adam's steps are per element), so a code does
        not depend on its batch. Costs `steps` decoder passes forward and back.
        """
        if steps < 0:
            raise InputError(f"refine steps must be >= 0, got {steps}")
        if prior_weight is not None and not prior_weight >= 0:
            raise InputError(f"the refinement's prior weight must be >= 0, got {prior_weight}")
        c = self.condition_tensor(batch)
        if mean is None:
            with torch.no_grad():
                mean = self.posterior(self.check_input(batch["x"]), c, batch.get("psf"))[0]
        z = mean.detach().clone().requires_grad_(True)
        if steps == 0:
            return z.detach()
        weight = float(self.config.beta if prior_weight is None else prior_weight)
        opt = torch.optim.Adam([z], lr=lr)
        best, best_z = None, z.detach().clone()
        with torch.enable_grad():
            for step in range(steps + 1):
                objective = self._nll(self._decode_raw(z, c), batch, c) + weight * 0.5 * (z**2).sum(1)
                with torch.no_grad():
                    better = (torch.ones_like(objective, dtype=torch.bool) if best is None
                              else objective < best)
                    best = objective.detach() if best is None else torch.where(better, objective, best)
                    best_z[better] = z.detach()[better]
                if step == steps:
                    break
                (grad,) = torch.autograd.grad(objective.sum(), z)
                z.grad = grad
                opt.step()
        return best_z

    def encode_batch(self, batch: dict) -> torch.Tensor:
        """Posterior-mean codes of a batch (with its conditions and PSF when the model reads them)."""
        return self.posterior_batch(batch)[0]

    def reconstruct_batch(self, batch: dict) -> torch.Tensor:
        """Posterior-mean reconstruction as observed: through the PSF for 'pixel'/'fourier'."""
        mean, _, c = self.posterior_batch(batch)
        sky = self._sky(self._decode_raw(mean, c), c)
        if self.config.likelihood in ("pixel", "fourier"):
            return self.observation.predict(sky, batch["psf"])
        return sky

    def usable_prior(self):
        """The fitted latent prior, unless it scored held-out codes worse than N(0, I) did when it
        was fitted (then None, with a warning: N(0, I) is the better prior)."""
        prior = self.prior
        fitted, standard = getattr(prior, "held_out_log_prob", (None, None))
        if prior is not None and fitted is not None and standard is not None and not fitted > standard:
            warnings.warn(f"the fitted latent prior scored held-out codes at {fitted:.2f} nats per object, worse than "
                          f"N(0, I) at {standard:.2f}: sampling from N(0, I) instead. Refit it (deepfield train prior "
                          "--model VAE_DIR --epochs N) or ask for it anyway with --prior fitted", stacklevel=3)
            return None
        return prior

    def sample(self, n: int, *, condition=None, generator: torch.Generator | None = None,
               prior: str | object = "auto", bf16: bool = False) -> torch.Tensor:
        """`n` noiseless (PSF-free for observation models) images in store units.

        Arguments:
            condition: a dict {column: value or (n,) values} covering the VAE's and the prior's
                condition columns, or an array (n, K) / (K,) in the VAE's column order.
            generator: torch.Generator; the same seed gives the same galaxies.
            prior: 'auto' (the fitted latent prior when there is one and it scored held-out codes
                better than N(0, I) did, else N(0, I), with a warning), 'fitted' (the fitted prior
                however it scored), 'gaussian' (N(0, I) always: shows what the flow fixes), or a
                prior object.
            bf16: decode under bfloat16 autocast: about 2x faster on CPUs with AVX512-BF16 or
                AMX and on GPUs; pixels differ from fp32 by up to ~1% of the peak.
        """
        device = self.data_scale.device
        chosen = self.usable_prior() if prior == "auto" else (None if prior == "gaussian" else self.prior
                                                                  if prior == "fitted" else prior)
        if prior == "fitted" and chosen is None:
            raise InputError("this VAE has no fitted latent prior: fit one (deepfield train prior --model VAE_DIR) "
                             "or sample with --prior auto")
        if chosen is None:
            z = torch.randn(n, self.latent_dim, generator=generator, device=device)
        else:
            prior_condition = None
            if chosen.data_columns:
                if not isinstance(condition, dict):
                    raise InputError(f"the latent prior is conditioned on {list(chosen.data_columns)}: pass a dict "
                                     "of condition values")
                prior_condition = condition
            z = chosen.sample(n, condition=prior_condition, generator=generator).to(device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return self.decode(z, condition=condition if self.config.condition else None).float()

    def _nll(self, raw: torch.Tensor, batch: dict, condition: torch.Tensor | None = None) -> torch.Tensor:
        """-log p(x | z) per object (nats)."""
        x = batch["x"]
        like = self.config.likelihood
        if like == "bernoulli":
            if float(x.min()) < 0 or float(x.max()) > 1:
                raise InputError("the bernoulli likelihood needs data in [0, 1]; rescale (e.g. digits / 16) or use "
                                 "'gaussian'")
            return F.binary_cross_entropy_with_logits(raw, x, reduction="none").flatten(1).sum(1)
        if like == "gaussian":
            xn = self.normalise(x)
            log_sigma = self.log_sigma.view(-1, *([1] * (xn.ndim - 2))) if xn.ndim > 2 else self.log_sigma
            r = (xn - raw) / log_sigma.exp()
            per = 0.5 * r**2 + log_sigma + 0.5 * math.log(2 * math.pi)
            # in nats of the data in store units: add log(scale) per element (change of variables)
            per = per + torch.log(self.data_scale).expand_as(xn)
            return per.flatten(1).sum(1)
        if self.config.likelihood == "fourier" and "noise_ps" not in batch:
            from deepfield.physics import noise_power_spectrum_from_ivar

            batch = dict(batch, noise_ps=noise_power_spectrum_from_ivar(batch["ivar"]))
        return self.observation.nll(self._sky(raw, condition), batch)

    def elbo_terms(self, batch: dict, sample: bool = True) -> ElboTerms:
        """-log p(x | z) and KL(q(z | x) || N(0, I)) per object (nats), and the decoder's raw output."""
        mean, log_var, c = self.posterior_batch(batch)
        z = mean + torch.randn_like(mean) * (0.5 * log_var).exp() if sample else mean
        raw = self._decode_raw(z, c)
        nll = self._nll(raw, batch, c)
        kl = 0.5 * (mean**2 + log_var.exp() - 1 - log_var).sum(1)
        return ElboTerms(nll, kl, raw)

    def elbo(self, batch: dict) -> torch.Tensor:
        """Evidence lower bound per object (nats; one posterior sample)."""
        t = self.elbo_terms(batch)
        return -(t.nll + t.kl)

    def loss(self, batch: dict) -> LossOutput:
        t = self.elbo_terms(batch, sample=True)
        nll, kl = t.nll.mean(), t.kl.mean()
        n_el = float(np.prod(self.input_shape))
        loss = (nll + self.kl_weight * kl) / n_el  # per data element: learning rates transfer across sizes
        parts = {"nll": nll, "kl": kl, "elbo": -(nll + kl)}
        if self.config.likelihood in ("pixel", "fourier"):
            # Empty sky wants softplus(raw) -> 0, i.e. raw -> -inf; Adam turns that vanishing gradient into
            # full-size steps, until the whole decoder sits where softplus has no gradient and stops learning
            # (seen: raw ~ -1000 after one epoch, loss frozen). A barrier below SKY_FLOOR_LOGIT (a sky of
            # 5e-5 x the pixel std per pixel) holds it in the live range and pulls a dead decoder back.
            floor = F.relu(SKY_FLOOR_LOGIT - t.raw.float()).square().mean()
            loss = loss + floor
            parts["sky_floor"] = floor
        return LossOutput(loss, parts)

    def set_epoch(self, epoch: int) -> None:
        """KL warm-up: the KL weight rises linearly to beta over `kl_warmup_epochs`."""
        warm = self.config.kl_warmup_epochs
        w = self.config.beta if warm <= 0 else self.config.beta * min(1.0, (epoch + 1) / warm)
        self.kl_weight.fill_(w)
