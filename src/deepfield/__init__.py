"""deepfield: deep generative and probabilistic models of astronomical survey data.

The data flow is store -> train -> model folder -> tasks; see docs/architecture.md.
"""

from __future__ import annotations

from deepfield._version import __version__
from deepfield.errors import ConfigError, DeepfieldError, InputError, ModelFolderError, StoreError

__all__ = [
    "__version__",
    "load",
    "open_store",
    "DeepfieldError",
    "StoreError",
    "InputError",
    "ModelFolderError",
    "ConfigError",
]


def load(path):
    """Load a model folder written by deepfield and return the ready model (eval mode)."""
    from deepfield.models.folder import load_model

    return load_model(path)


def open_store(path):
    """Open a store directory; see :func:`deepfield.data.store.open_store`."""
    from deepfield.data.store import open_store as _open

    return _open(path)
