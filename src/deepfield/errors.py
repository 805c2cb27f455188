"""Errors deepfield raises on bad input.

Every error says what is wrong, where (file, array, column) and what to do about it. The CLI
prints the message and exits with code 2 for any :class:`DeepfieldError`.
"""

from __future__ import annotations

__all__ = ["DeepfieldError", "StoreError", "InputError", "ModelFolderError", "ConfigError", "TrainingDiverged"]


class DeepfieldError(ValueError):
    """Base class: a problem with the user's input that the user can fix."""


class StoreError(DeepfieldError):
    """A store is missing, corrupt, truncated or inconsistent."""


class InputError(DeepfieldError):
    """Arrays or arguments have the wrong shape, values (NaN/inf) or type."""


class ModelFolderError(DeepfieldError):
    """A model folder is missing files, corrupt, or from an incompatible format version."""


class ConfigError(DeepfieldError):
    """A configuration file or option names something that does not exist."""


class TrainingDiverged(DeepfieldError):
    """The loss became NaN/inf although the data are finite."""
