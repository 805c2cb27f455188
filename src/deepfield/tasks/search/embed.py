"""Embedding a store: every object's code under a model, written as a codes store keyed by id."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from deepfield.data.batches import check_model_store
from deepfield.data.store import Store, open_store
from deepfield.errors import InputError
from deepfield.models import Model
from deepfield.models.base import config_to_dict
from deepfield.models.folder import as_model
from deepfield.tasks.apply import map_store

__all__ = ["embed_store", "model_identity"]


def model_identity(model: Model, path: str | os.PathLike | None = None) -> dict:
    """Class, a fingerprint of config + weights, and the folder (if known) of `model`.

    The fingerprint is a hash of the class, its config and every parameter and buffer, so a
    model retrained into the same folder, or copied elsewhere, is told apart (or recognised).
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(type(model).__name__.encode())
    h.update(json.dumps(config_to_dict(model.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    record = getattr(model, "record", None) or {}
    return {"class": type(model).__name__, "fingerprint": h.hexdigest(),
            "path": None if path is None else str(Path(path).resolve()), "input_shape": list(model.input_shape),
            "trained_on": (record.get("store") or {}).get("fingerprint")}


def describe_model(identity: dict | None) -> str:
    """A model's identity record (:func:`model_identity`) in words, for error messages."""
    if not identity:
        return "no recorded model"
    where = f" at {identity['path']}" if identity.get("path") else ""
    return f"{identity['class']} {identity['fingerprint'][:12]}{where}"


def describe_store(record: dict | None) -> str:
    """A store record (path, fingerprint) in words, for error messages."""
    if not record or not record.get("fingerprint"):
        return "no recorded store"
    return f"{record.get('path')} (fingerprint {record['fingerprint'][:12]})"


def model_and_folder(model) -> tuple[Model, Path | None]:
    """The model, and its folder when it was given as one."""
    return as_model(model), None if isinstance(model, torch.nn.Module) else Path(model)


def embed_store(model: Model | str | os.PathLike, store: Store | str | os.PathLike, out, *, indices=None,
                batch_size: int = 256, overwrite: bool = False, progress: bool = True) -> Store:
    """Codes (N, latent_dim) of `store`'s objects under `model`, written as a codes store at `out`.

    Like :func:`deepfield.tasks.encode.encode_store` (same codes store: ids and catalog kept),
    plus what an index needs to refuse a mismatched query later: the model's identity (class,
    weight fingerprint, folder) in the provenance beside the source store's fingerprint. The
    model reads the batch it was trained with (PSF, conditions), and codes that come out NaN
    or infinite are reported by object id.

    Arguments:
        model: a model folder or a loaded model.
        store: the store to embed.
        out: the codes store to write (atomically).
        indices: rows of `store` to embed (default: all).
    """
    model, path = model_and_folder(model)
    store = store if isinstance(store, Store) else open_store(store)
    check_model_store(model, store)
    model.eval()
    identity = model_identity(model, path)

    def codes_of(batch: dict) -> torch.Tensor:
        z = model.encode_batch(batch)
        bad = ~torch.isfinite(z).all(dim=1)
        if bool(bad.any()):
            ids = batch["id"][bad].tolist()
            raise InputError(f"{describe_model(identity)} gives NaN/inf codes for objects with ids "
                             f"{ids[:10]}{' ...' if len(ids) > 10 else ''} of {store.path}: check their pixels "
                             "(deepfield info), or leave them out with --where")
        return z

    provenance = {"task": "embed", "model_class": identity["class"], "model": identity,
                  "model_store_fingerprint": identity["trained_on"]}
    return map_store(codes_of, store, out, out_kind="table", indices=indices, batch_size=batch_size,
                     description="embedding", provenance=provenance, overwrite=overwrite, progress=progress,
                     model=model)
