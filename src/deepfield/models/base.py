"""What every deepfield model shares: a frozen config, data normalisation, a registry.

A model is a ``torch.nn.Module`` built from a frozen config dataclass. It takes and returns
data in the store's own units (counts, flux density, feature values); the normalisation to
order-unity numbers that networks like lives inside the model as buffers, fitted from the
training set and saved with the weights, so a loaded model needs nothing else.

A family is a :class:`Model` subclass that also inherits the roles it plays from
:mod:`deepfield.models.protocol` (encoding, generative, density, trainable, ...), names the
trainer that fits it (``trainer``), and is made known by the :func:`register` decorator: that
one line makes it loadable from a model folder and trainable as ``deepfield train FAMILY``.
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

__all__ = ["Model", "MODEL_REGISTRY", "FAMILIES", "register", "family_class", "config_from_dict",
           "config_to_dict", "config_docs", "fit_normalisation"]

#: class name -> class: what a model folder's config.json names
MODEL_REGISTRY: dict[str, type["Model"]] = {}
#: family name (the CLI's `deepfield train FAMILY`) -> class
FAMILIES: dict[str, type["Model"]] = {}


def register(cls: type["Model"]) -> type["Model"]:
    """Class decorator: make a model family loadable from a model folder and trainable by name.

    Registers the class under its class name and under ``cls.family`` and ``cls.aliases`` (e.g.
    the VAE is also 'cvae'). Refuses a class that breaks the protocol's signatures.
    """
    from deepfield.models.protocol import TRAINERS, signature_problems

    problems = signature_problems(cls)
    if problems:
        raise TypeError(f"{cls.__name__} does not follow deepfield.models.protocol: " + "; ".join(problems))
    if cls.trainer not in TRAINERS:
        raise TypeError(f"{cls.__name__}.trainer is {cls.trainer!r}; choose one of {TRAINERS}")
    MODEL_REGISTRY[cls.__name__] = cls
    for name in (cls.family, *cls.aliases):
        if name:
            FAMILIES[name] = cls
    return cls


def family_class(family: str) -> type["Model"]:
    """The class registered as `family`, or a ConfigError listing the families there are (the
    built-in families are registered when deepfield.models, this module's package, is imported)."""
    if family not in FAMILIES:
        raise ConfigError(f"unknown model family {family!r}; choose one of {', '.join(sorted(FAMILIES))}")
    return FAMILIES[family]


def _argument_docs(docstring: str) -> dict[str, str]:
    """{name: text} of the ``Arguments:`` block of a docstring."""
    docs: dict[str, str] = {}
    current: list[str] = []
    indent = None
    in_args = False
    for line in docstring.splitlines():
        stripped = line.strip()
        if stripped in ("Arguments:", "Args:", "Attributes:"):
            in_args, current, indent = True, [], None
            continue
        if not in_args or not stripped:
            continue
        depth = len(line) - len(line.lstrip())
        names, sep, text = stripped.partition(":")
        names = [n.strip() for n in names.split(",")]  # 'channels, blocks: ...' documents both
        if sep and all(n.isidentifier() for n in names) and (indent is None or depth <= indent):
            current, indent = names, depth
            for name in names:
                docs[name] = text.strip()
        elif current and indent is not None and depth > indent:
            for name in current:
                docs[name] += " " + stripped
        else:
            in_args = False
    return docs


def config_docs(config_class) -> dict[str, tuple[str, str, str]]:
    """{field: (type, default, doc)} of a config dataclass, the doc read from the ``Arguments:``
    blocks of its docstring and its parents' (``name: text`` or ``a, b: text`` lines, continued
    by deeper-indented lines; a subclass's text wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(config_class.__mro__):
        if "__doc__" in vars(klass) and dataclasses.is_dataclass(klass):
            docs.update(_argument_docs(klass.__doc__ or ""))
    hints = typing.get_type_hints(config_class)
    out = {}
    for f in dataclasses.fields(config_class):
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        kind = getattr(hints.get(f.name), "__name__", None) or str(hints.get(f.name)).replace("typing.", "")
        out[f.name] = (kind, repr(default), docs.get(f.name, ""))
    return out


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
        if hint is not None and not _matches(value, hint):
            raise ConfigError(f"{source}: {name} = {value!r} is not a {_type_words(hint)}; "
                              f"e.g. {name}: {_example(hint)}")
        kwargs[name] = value
    try:
        return config_class(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{source}: {err}") from None


def _matches(value, hint) -> bool:
    """Whether a config value (from JSON, YAML or --set) fits a field's type hint; hints this
    does not know (Any, callables) accept everything."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is tuple or origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return not args or (len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args)))
    return True


def _type_words(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_words(a) for a in args)
    if hint is type(None):
        return "null"
    if hint is tuple or origin is tuple:
        inner = args[0] if args else None
        return f"list of {_type_words(inner)}" if inner is not None else "list"
    return {int: "whole number", float: "number", str: "string", bool: "true/false"}.get(hint, str(hint))


def _example(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _example(next(a for a in args if a is not type(None)))
    if hint is tuple or origin is tuple:
        return f"[{_example(args[0]) if args else 1}, ...]"
    return {int: "3", float: "0.5", str: "name", bool: "true"}.get(hint, "...")


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
    #: more family names the class answers to (the VAE is also 'cvae')
    aliases: ClassVar[tuple[str, ...]] = ()
    config_class: ClassVar[type]
    #: what fits the family: 'gradient', 'adversarial', 'closed-form' or 'latent-prior'
    #: (deepfield.models.protocol.TRAINERS)
    trainer: ClassVar[str] = "gradient"
    #: config values that make the family small enough for deepfield.testing.check_model's
    #: seconds-long fit on a 16x16 store (latent priors: options of train_prior)
    check_options: ClassVar[dict[str, Any]] = {}
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

    @classmethod
    def capabilities(cls) -> frozenset[str]:
        """The roles this family plays (see deepfield.models.protocol), e.g. {'encode', 'sample'}."""
        from deepfield.models.protocol import capabilities

        return capabilities(cls)

    @classmethod
    def config_values(cls, store, options: dict[str, Any], family: str) -> dict[str, Any]:
        """The config of a fresh model of this family for a training store: the store's object
        shape and kind of normalisation, then the user's `options`; families add what they take
        from the store (a VAE picks the PSF-aware likelihood when the store has PSFs and noise).
        `family` is the name it is trained under (a class may answer to several)."""
        fields = {f.name for f in dataclasses.fields(cls.config_class)}
        values: dict[str, Any] = {"input_shape": store.sample_shape}
        if "normalisation" in fields:
            values["normalisation"] = "feature" if store.kind == "table" else "channel"
        return {**values, **options}

    def check_store(self, store, family: str) -> None:
        """Refuse a training store this model cannot learn from (a missing array or column),
        naming what is missing and the fix."""
        for column in self.data_columns:
            store.column(column)  # raises with the list of columns when one does not exist
        for name in self.data_arrays:
            if not store.has(name):
                store.read(name, slice(0, 0))  # raises: the store lacks an array the likelihood needs

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

    def check_codes(self, z) -> torch.Tensor:
        """Refuse codes whose length differs from the model's latent dimension."""
        if not torch.is_tensor(z):
            z = torch.as_tensor(np.asarray(z), dtype=torch.float32)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise InputError(f"codes have shape {tuple(z.shape)} but the model's latent dimension is "
                             f"{self.latent_dim}: pass (N, {self.latent_dim}) codes from this model's encode")
        return z.to(dtype=self.data_scale.dtype, device=self.data_scale.device)

    def check_no_condition(self, condition) -> None:
        """Refuse a condition given to a model that was trained without one."""
        if condition is not None and not self.data_columns:
            raise InputError(f"{type(self).__name__} ({self.family}) is not conditional: drop the condition, or "
                             "train a conditional family (e.g. cvae) on the catalog columns")

    # -- what the model reads from a store besides `x` (training and tasks load these)
    @property
    def data_arrays(self) -> tuple[str, ...]:
        """Store arrays each batch needs besides 'x' (e.g. 'psf', 'ivar')."""
        return ()

    @property
    def optional_data_arrays(self) -> tuple[str, ...]:
        """Store arrays the model reads when the store has them (e.g. a recorded 'noise_ps')."""
        return ()

    @property
    def data_columns(self) -> tuple[str, ...]:
        """Catalog columns each batch needs (e.g. the conditions of a conditional model)."""
        return ()

    def describe(self) -> str:
        """One paragraph for the model card."""
        return (self.__doc__ or type(self).__name__).strip().split("\n\n")[0]
