"""The roles a deepfield model can play, each with one signature, enforced by abstract classes.

A model family is a :class:`deepfield.models.base.Model` subclass that also inherits the roles it
plays; Python then refuses to build a family that forgets one of a role's methods, and
:func:`capabilities` reads the roles back, so tasks ask what a model can do instead of which
family it is (the estimator-tags idea of scikit-learn):

| role | capability | methods |
|---|---|---|
| :class:`Encoding` | ``"encode"`` | ``encode(x, *, condition=None) -> z`` (N, latent_dim), ``decode(z, *, condition=None) -> x`` |
| :class:`Reconstructing` | ``"reconstruct"`` | ``reconstruct_batch(batch) -> x`` as observed (every encoder; PixelCNN, GANs too) |
| :class:`Generative` | ``"sample"`` | ``sample(n, *, condition=None, generator=None)`` |
| :class:`ExactDensity` | ``"log_prob"`` | ``log_prob(batch) -> (N,)``, nats per object |
| :class:`BoundDensity` | ``"elbo"`` | ``elbo(batch) -> (N,)``, a lower bound on log p, nats per object |
| :class:`Trainable` | ``"loss"`` | ``loss(batch) -> LossOutput`` (gradient-trained families) |
| :class:`Adversarial` | ``"adversarial"`` | ``discriminator_loss(batch)``, ``generator_loss(batch)`` -> LossOutput |
| :class:`Translating` | ``"translate"`` | ``translate(x, direction="a2b")`` between two surveys |
| :class:`Deconvolving` | ``"deconvolve"`` | ``deconvolve_batch(batch) -> x`` the PSF-free noiseless sky |

``batch`` is a dict of tensors as the data layer yields it: ``"x"`` (N, *input_shape) in store
units plus the arrays and catalog columns the model reads (``data_arrays``, ``data_columns``).
``condition`` is a dict {column: (N,) values} or an (N, K) array in ``data_columns`` order.

Every family also names the trainer that fits it (``Model.trainer``): ``"gradient"`` (the
Lightning loop over ``loss``), ``"adversarial"`` (the two-player loop), ``"closed-form"`` (PCA's
``fit``) or ``"latent-prior"`` (a prior fitted on a trained VAE's codes).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch

__all__ = ["LossOutput", "Encoding", "Reconstructing", "Generative", "ExactDensity", "BoundDensity",
           "Trainable", "Adversarial", "Translating", "ROLES", "TRAINERS", "capabilities", "has",
           "signature_problems"]

#: how a family is fitted; see the module docstring
TRAINERS = ("gradient", "adversarial", "closed-form", "latent-prior")


@dataclass(frozen=True)
class LossOutput:
    """What ``loss(batch)`` returns: the scalar to minimise and named parts to log.

    Arguments:
        loss: the scalar the optimiser steps on (per data element or per object, as the family
            documents).
        parts: named scalars logged beside it (e.g. ``nll`` and ``kl`` in nats per object).
    """

    loss: torch.Tensor
    parts: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def logged(self) -> dict[str, torch.Tensor]:
        """{'loss': loss, **parts}: every scalar the trainer logs."""
        return {"loss": self.loss, **self.parts}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.loss if name == "loss" else self.parts[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.logged())


class Reconstructing(ABC):
    """Models that predict the data they are given (as observed: through the PSF where the
    likelihood has one)."""

    capability = "reconstruct"

    @abstractmethod
    def reconstruct_batch(self, batch: dict) -> torch.Tensor:
        """Reconstruction (N, *input_shape) of ``batch["x"]`` in store units."""


class Encoding(Reconstructing):
    """Models with latent codes."""

    capability = "encode"

    @abstractmethod
    def encode(self, x: torch.Tensor, *, condition=None) -> torch.Tensor:
        """Codes (N, latent_dim) of images or vectors `x` (N, *input_shape) in store units."""

    @abstractmethod
    def decode(self, z: torch.Tensor, *, condition=None) -> torch.Tensor:
        """Data (N, *input_shape) in store units from codes `z` (N, latent_dim)."""

    def reconstruct(self, x: torch.Tensor, *, condition=None) -> torch.Tensor:
        return self.decode(self.encode(x, condition=condition), condition=condition)

    def encode_batch(self, batch: dict) -> torch.Tensor:
        """Codes of ``batch["x"]``, with whatever else the model reads from the batch."""
        return self.encode(batch["x"])

    def reconstruct_batch(self, batch: dict) -> torch.Tensor:
        return self.reconstruct(batch["x"])


class Generative(ABC):
    """Models that draw new objects."""

    capability = "sample"

    @abstractmethod
    def sample(self, n: int, *, condition=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` new objects (n, *input_shape) in store units; the same generator seed gives the same objects."""


class ExactDensity(ABC):
    """Models with an exact (log-)likelihood."""

    capability = "log_prob"

    @abstractmethod
    def log_prob(self, batch) -> torch.Tensor:
        """log p per object, (N,), in nats of the data in store units."""


class BoundDensity(ABC):
    """Models with a lower bound on the log-likelihood."""

    capability = "elbo"

    @abstractmethod
    def elbo(self, batch: dict) -> torch.Tensor:
        """Evidence lower bound per object, (N,), in nats."""


class Trainable(ABC):
    """Models fitted by minimising ``loss`` with gradients."""

    capability = "loss"

    @abstractmethod
    def loss(self, batch: dict) -> LossOutput:
        """The training objective of a batch."""


class Adversarial(ABC):
    """Two-player models (GANs): a critic and a generator step in turn."""

    capability = "adversarial"

    @abstractmethod
    def discriminator_loss(self, batch: dict) -> LossOutput:
        """The critic's objective on a batch of real objects (and fresh fakes)."""

    @abstractmethod
    def generator_loss(self, batch: dict) -> LossOutput:
        """The generator's objective (`batch` gives the size and any conditions)."""

    def loss(self, batch: dict) -> LossOutput:
        from deepfield.errors import ConfigError

        raise ConfigError(f"a {type(self).__name__} is trained as a two-player game, not by minimising one loss: "
                          f"use deepfield.train.gan.train_gan or `deepfield train {getattr(self, 'family', '')}`")


class Translating(ABC):
    """Models that map one survey's objects onto another's."""

    capability = "translate"

    @abstractmethod
    def translate(self, x: torch.Tensor, direction: str = "a2b") -> torch.Tensor:
        """`x` in one domain's store units to the other's; direction 'a2b' or 'b2a'."""


class Deconvolving(ABC):
    """Models that estimate each object's PSF-free, noiseless sky from its observation."""

    capability = "deconvolve"

    @abstractmethod
    def deconvolve_batch(self, batch: dict) -> torch.Tensor:
        """The PSF-free noiseless sky (N, *input_shape) of ``batch["x"]`` in store units, from the
        batch's PSF and noise."""


#: every role, in the order capabilities are listed
ROLES: tuple[type, ...] = (Encoding, Reconstructing, Generative, ExactDensity, BoundDensity, Trainable,
                           Adversarial, Translating, Deconvolving)


def capabilities(model) -> frozenset[str]:
    """The capabilities (see the module table) of a model instance or class."""
    cls = model if isinstance(model, type) else type(model)
    return frozenset(role.capability for role in ROLES if issubclass(cls, role))


def has(model, capability: str) -> bool:
    """True if `model` (instance or class) plays the role named `capability`."""
    return capability in capabilities(model)


def signature_problems(cls: type) -> list[str]:
    """How `cls`'s role methods depart from the protocol's signatures (empty: none).

    A family may add keyword-only options after the protocol's parameters, never rename,
    reorder or drop them, and never make a keyword-only one positional.
    """
    problems = []
    for role in ROLES:
        if not issubclass(cls, role):
            continue
        for name, spec in vars(role).items():
            if not getattr(spec, "__isabstractmethod__", False):
                continue
            want = list(inspect.signature(spec).parameters.values())[1:]
            got = list(inspect.signature(getattr(cls, name)).parameters.values())[1:]
            for i, p in enumerate(want):
                q = got[i] if i < len(got) else None
                if q is None or q.name != p.name or q.kind != p.kind:
                    problems.append(f"{cls.__name__}.{name}: parameter {i + 1} must be {p} "
                                    f"({p.kind.description}); found {q if q is not None else 'nothing'}")
                    break
            else:
                extra = [q for q in got[len(want):] if q.default is inspect.Parameter.empty
                         and q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD)]
                if extra:
                    problems.append(f"{cls.__name__}.{name}: extra parameter {extra[0].name} needs a default")
    return problems
