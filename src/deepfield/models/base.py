"""What every deepfield model shares: a frozen config, data normalisation, a registry.

A model is a ``torch.nn.Module`` built from a frozen config dataclass. It takes and returns
data in the store's own units (counts, flux density, feature values); the normalisation to
order-unity numbers that networks like lives inside the model as buffers, fitted from the
training set and saved with the weights, so a loaded model needs nothing else.

Families implement the parts of the protocol that apply to them:
``encode(x) -> z``, ``decode(z) -> x``, ``reconstruct(x)``, ``loss(batch) -> dict``
(``batch["x"]`` in store units; the dict has ``"loss"`` and named parts), and later
``sample``, ``log_prob`` or ``elbo``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from deepfield.errors import ConfigError, InputError

__all__ = ["Model", "MODEL_REGISTRY", "register", "config_from_dict", "config_to_dict",
           "fit_normalisation"]

MODEL_REGISTRY: dict[str, type["Model"]] = {}


def register(cls: type["Model"]) -> type["Model"]:
    """Class decorator: make a model class loadable by name from a model folder."""
    MODEL_REGISTRY[cls.__name__] = cls
    return cls


def config_to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(config_class, values: dict[str, Any], source: str = "config"):
    """Build a frozen config from a dict (JSON/YAML), converting lists to tuples.

    Unknown keys are an error that lists the valid ones (a typo must not be silently ignored).
    """
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} for {config_class.__name__}; "
                          f"valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(config_class)
    kwargs = {}
    for name, value in values.items():
        hint = hints.get(name)
        origin = typing.get_origin(hint)
        if isinstance(value, list) and (origin is tuple or hint is tuple):
            value = tuple(value)
        elif isinstance(value, list) and origin in (typing.Union, types.UnionType):
            value = tuple(value)
        kwargs[name] = value
    try:
        return config_class(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{source}: {err}") from None


def fit_normalisation(x: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Offset and scale so that (x - offset) / scale is of order one.

    mode 'channel': offset 0 and one scale per image band (or one for a spectrum), the
    pixel standard deviation; zero stays zero, so non-negative flux stays non-negative.
    mode 'feature': per-feature mean and standard deviation (tabular data, e.g. iris).
    Returns arrays shaped to broadcast against one sample.
    """
    x = np.asarray(x, dtype=np.float64)
    if mode == "channel":
        if x.ndim == 4:
            scale = x.transpose(1, 0, 2, 3).reshape(x.shape[1], -1).std(axis=1)[:, None, None]
        else:
            scale = np.atleast_1d(x.std())
        offset = np.zeros_like(scale)
    elif mode == "feature":
        offset, scale = x.mean(axis=0), x.std(axis=0)
    else:
        raise ConfigError(f"normalisation {mode!r}: choose 'channel' or 'feature'")
    scale = np.where(scale > 0, scale, 1.0)
    return offset.astype(np.float32), scale.astype(np.float32)


def _normalisation_shape(input_shape: tuple[int, ...], mode: str) -> tuple[int, ...]:
    if mode == "channel":
        return (input_shape[0], 1, 1) if len(input_shape) == 3 else (1,)
    return tuple(input_shape)


class Model(nn.Module):
    """Base class: config, normalisation buffers, input checks.

    Subclasses set ``family`` (the CLI name, e.g. 'conv-ae') and ``config_class``, and call
    ``super().__init__(config)`` first.
    """

    family: ClassVar[str] = ""
    config_class: ClassVar[type]
    trainable: ClassVar[bool] = True  # False: fitted in closed form (PCA), not by gradients
    #: gradient-norm clipping this family needs unless the user sets one (None: no clipping)
    default_gradient_clip: ClassVar[float | None] = None
    #: training skips a step whose batch loss exceeds this many times the median of the last
    #: steps (None: never); see deepfield.train.module.ModelModule
    spike_guard: float | None = None
    #: config keys added after a family's first release, with the values that rebuild the
    #: layout a model folder written without them holds
    legacy_config_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, config):
        super().__init__()
        if not dataclasses.is_dataclass(config):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}")
        self.config = config
        shape = _normalisation_shape(tuple(config.input_shape), config.normalisation)
        self.register_buffer("data_offset", torch.zeros(shape))
        self.register_buffer("data_scale", torch.ones(shape))

    # -- construction
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Model":
        return cls(config_from_dict(cls.config_class, values, cls.__name__))

    def extra_repr(self) -> str:
        return repr(self.config)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.config.input_shape)

    @property
    def latent_dim(self) -> int:
        return int(self.config.latent_dim)

    # -- normalisation
    def set_normalisation(self, offset, scale) -> None:
        offset = torch.as_tensor(np.asarray(offset), dtype=torch.float32).reshape(self.data_offset.shape)
        scale = torch.as_tensor(np.asarray(scale), dtype=torch.float32).reshape(self.data_scale.shape)
        self.data_offset.copy_(offset)
        self.data_scale.copy_(scale)

    def fit_normalisation(self, x: np.ndarray) -> None:
        """Fit offset/scale on training data `x` (N, *input_shape) in store units."""
        self.set_normalisation(*fit_normalisation(x, self.config.normalisation))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.data_offset) / self.data_scale

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.data_scale + self.data_offset

    # -- checks
    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Refuse a batch whose shape differs from the training data's (with the fix)."""
        if not torch.is_tensor(x):
            x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        shape = self.input_shape
        if tuple(x.shape[1:]) != shape:
            what = (f"{x.shape[1]} band(s) of {tuple(x.shape[2:])} pixels" if x.ndim == 4 else f"shape {tuple(x.shape[1:])}")
            want = (f"{shape[0]} band(s) of {shape[1:]} pixels" if len(shape) == 3 else f"shape {shape}")
            raise InputError(f"input has {what} but the model was trained on {want}: select the "
                             "matching bands/size or retrain on this data")
        return x.to(dtype=self.data_scale.dtype, device=self.data_scale.device)

    # -- what the model reads from a store besides `x` (training and tasks load these)
    @property
    def data_arrays(self) -> tuple[str, ...]:
        """Store arrays each batch needs besides 'x' (e.g. 'psf', 'ivar')."""
        return ()

    @property
    def data_columns(self) -> tuple[str, ...]:
        """Catalog columns each batch needs (e.g. the conditions of a conditional model)."""
        return ()

    # -- protocol defaults
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def encode_batch(self, batch: dict) -> torch.Tensor:
        """Codes of batch['x'], with whatever else the model reads from the batch."""
        return self.encode(batch["x"])

    def reconstruct_batch(self, batch: dict) -> torch.Tensor:
        """Reconstruction of batch['x'] in the data's own space (as observed, for models with a PSF)."""
        return self.reconstruct(batch["x"])

    def describe(self) -> str:
        """One paragraph for the model card."""
        return (self.__doc__ or type(self).__name__).strip().split("\n\n")[0]
