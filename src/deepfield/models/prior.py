"""Latent priors fitted on a trained VAE's codes: a normalizing flow (zuko) or a Gaussian mixture.

A VAE's N(0, I) prior and its aggregate posterior (the codes of real galaxies) differ, so
samples from N(0, I) decode to blurry, unrealistic galaxies. Fitting a density to the
aggregate posterior and sampling from it fixes that; conditioning the flow on catalog columns
(size, magnitude, redshift) gives galaxies with asked-for properties.

References:
    Papamakarios, Pavlakou & Murray (2017), Masked Autoregressive Flow, arXiv:1705.07057.
    Durkan et al. (2019), Neural Spline Flows, arXiv:1906.04032.
    Lanusse et al. (2021), arXiv:2008.03833 (latent flow prior for galaxy VAEs).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from deepfield.errors import ConfigError, InputError
from deepfield.models.base import Model, register
from deepfield.models.protocol import ExactDensity, Generative, LossOutput, Trainable
from deepfield.nn import ConditionNormaliser

__all__ = ["LatentPriorConfig", "LatentFlow", "GaussianMixturePrior"]


@dataclass(frozen=True)
class LatentPriorConfig:
    """Arguments:
    input_shape: (latent_dim,) of the VAE the prior belongs to.
    kind: 'nsf' (neural spline flow), 'maf' (masked autoregressive flow) or 'gmm'.
    condition: catalog columns the flow is conditioned on (flows only).
    transforms: flow transforms (spline or affine, after the leading affine one).
    hidden: hidden widths of each transform's network.
    bins: spline bins per transform ('nsf').
    passes: network passes a transform needs to invert: 2 makes coupling transforms (half the
        coordinates condition the other half; sampling costs one pass per transform), 0 fully
        autoregressive ones (sampling costs latent_dim passes per transform: 8x slower at 16-D).
    affine_first: ('nsf') start with an affine autoregressive transform. Codes of bright
        galaxies sit up to 30 standard deviations out, beyond the splines' [-5, 5] domain
        where a spline is the identity; the affine transform brings them in.
    components: mixture components ('gmm').
    normalisation: codes are standardised per coordinate ('feature').
    """

    input_shape: tuple[int, ...]
    kind: str = "nsf"
    condition: tuple[str, ...] = ()
    transforms: int = 6
    hidden: tuple[int, ...] = (128, 128)
    bins: int = 8
    passes: int = 2
    affine_first: bool = True
    components: int = 10
    normalisation: str = "feature"

    @property
    def latent_dim(self) -> int:
        return int(self.input_shape[0])


def _seed_from(generator: torch.Generator | None) -> int | None:
    return None if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator))


class _Prior(Model, Generative, ExactDensity):
    """Shared parts: standardised codes, log-density with the Jacobian, seeded sampling.

    A prior's data are a VAE's codes: ``log_prob`` takes codes (N, latent_dim), or a batch dict
    whose ``"x"`` holds them beside the condition columns.
    """

    config_class = LatentPriorConfig
    trainer = "latent-prior"  # fitted on a trained VAE's codes by deepfield.train.prior

    def __init__(self, config: LatentPriorConfig):
        if len(config.input_shape) != 1:
            raise ConfigError(f"a latent prior models (latent_dim,) codes, got input shape {config.input_shape}")
        super().__init__(config)
        self.conditions = ConditionNormaliser(config.condition)

    @property
    def data_columns(self) -> tuple[str, ...]:
        return tuple(self.config.condition)

    def _standardised_log_prob(self, zn: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _standardised_sample(self, n: int, c: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, batch, *, condition=None) -> torch.Tensor:
        """log p(z | condition) per code (N,), in nats of the VAE's latent coordinates; `batch` is
        codes z (N, latent_dim) (with `condition` for a conditional prior), or a dict with the
        codes as ``"x"`` and the condition columns."""
        if isinstance(batch, dict):
            condition = batch if self.config.condition and condition is None else condition
            batch = batch["x"]
        z = self.check_input(batch)
        c = self.conditions(condition, n=z.shape[0]) if self.config.condition else None
        return self._standardised_log_prob(self.normalise(z), c) - torch.log(self.data_scale).sum()

    @torch.no_grad()
    def sample(self, n: int, *, condition=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` codes (n, latent_dim), seeded by `generator` (same seed, same codes)."""
        c = self.conditions(condition, n=n) if self.config.condition else None
        seed = _seed_from(generator)
        with torch.random.fork_rng(devices=[]), torch.no_grad():  # sampling never needs a graph
            if seed is not None:
                torch.manual_seed(seed)
            zn = self._standardised_sample(n, c)
        return self.denormalise(zn)


@register
class LatentFlow(_Prior, Trainable):
    """A (conditional) normalizing flow on VAE codes, built from zuko's NSF or MAF.

    Example:
        >>> flow = LatentFlow(LatentPriorConfig(input_shape=(4,), kind="maf", transforms=2, hidden=(16,)))
        >>> flow.sample(3, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 4])
    """

    family = "flow"
    check_options = {"kind": "nsf", "transforms": 2, "hidden": (16, 16), "condition": ("magnitude",)}
    # folders written before these settings existed hold fully autoregressive NSF/MAF flows
    legacy_config_defaults = {"bins": 8, "passes": 0, "affine_first": False}

    def __init__(self, config: LatentPriorConfig):
        import zuko
        from zuko.flows.autoregressive import MaskedAutoregressiveTransform
        from zuko.transforms import MonotonicRQSTransform

        if config.kind not in ("nsf", "maf"):
            raise ConfigError(f"flow kind {config.kind!r}: choose 'nsf' or 'maf' (or the 'gmm' prior)")
        if config.passes not in (0, 2) or config.transforms < 1 or config.bins < 2:
            raise ConfigError("passes must be 2 (coupling) or 0 (autoregressive); transforms >= 1; bins >= 2")
        super().__init__(config)
        d, k = config.latent_dim, len(config.condition)
        spline = dict(univariate=functools.partial(MonotonicRQSTransform, slope=1e-3),
                      shapes=[(config.bins,), (config.bins,), (config.bins - 1,)])
        kinds = (["affine"] if config.kind == "nsf" and config.affine_first else [])
        kinds += [config.kind] * config.transforms
        order = torch.arange(d)
        layers = []
        # the orders alternate, so each half of the coordinates conditions the other in turn; with
        # passes=0 and no affine layer this is exactly zuko's NSF / MAF (same modules, same names)
        for i, kind in enumerate(kinds):
            layers.append(MaskedAutoregressiveTransform(
                d, k, passes=config.passes or None, order=order if i % 2 == 0 else order.flip(0),
                hidden_features=tuple(config.hidden), **(spline if kind == "nsf" else {})))
        base = zuko.flows.UnconditionalDistribution(zuko.distributions.DiagNormal, loc=torch.zeros(d),
                                                    scale=torch.ones(d), buffer=True)
        self.flow = zuko.flows.Flow(layers, base)

    def _standardised_log_prob(self, zn, c):
        return self.flow(c).log_prob(zn)

    def _standardised_sample(self, n, c):
        dist = self.flow(c)
        return dist.sample() if c is not None else dist.sample((n,))

    def loss(self, batch: dict) -> LossOutput:
        """Mean -log p of the batch's codes ``batch["x"]`` (nats per code)."""
        nll = -self.log_prob(batch).mean()
        return LossOutput(nll, {"nll": nll})


@register
class GaussianMixturePrior(_Prior):
    """A Gaussian mixture on VAE codes (full covariances), fitted by scikit-learn's EM.

    The seed's simpler alternative to a flow; unconditional.
    """

    family = "gmm"
    check_options = {"kind": "gmm", "components": 2}

    def __init__(self, config: LatentPriorConfig):
        if config.kind != "gmm":
            raise ConfigError("GaussianMixturePrior needs kind='gmm'")
        if config.condition:
            raise ConfigError("the Gaussian mixture prior is unconditional: use a flow ('nsf' or 'maf') "
                              "for conditions")
        super().__init__(config)
        k, d = config.components, config.latent_dim
        self.register_buffer("weights", torch.full((k,), 1.0 / k))
        self.register_buffer("means", torch.zeros(k, d))
        self.register_buffer("scale_tril", torch.eye(d).expand(k, d, d).clone())

    def fit_codes(self, zn: np.ndarray, seed: int = 0) -> "GaussianMixturePrior":
        """Fit on standardised codes (N, D)."""
        from sklearn.mixture import GaussianMixture

        if zn.shape[0] < self.config.components:
            raise InputError(f"{zn.shape[0]} codes are too few for {self.config.components} mixture components")
        gmm = GaussianMixture(self.config.components, covariance_type="full", random_state=seed).fit(zn)
        self.weights.copy_(torch.as_tensor(gmm.weights_, dtype=torch.float32))
        self.means.copy_(torch.as_tensor(gmm.means_, dtype=torch.float32))
        self.scale_tril.copy_(torch.linalg.cholesky(torch.as_tensor(gmm.covariances_, dtype=torch.float64)).float())
        return self

    def _mixture(self):
        from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

        return MixtureSameFamily(Categorical(probs=self.weights), MultivariateNormal(self.means, scale_tril=self.scale_tril))

    def _standardised_log_prob(self, zn, c):
        return self._mixture().log_prob(zn)

    def _standardised_sample(self, n, c):
        return self._mixture().sample((n,))


def gaussian_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) per code: the VAE's own prior, for comparisons."""
    return -0.5 * (z**2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)
