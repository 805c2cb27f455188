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

__all__ = ["embed_store", "model_identity", "code_form", "FORMS"]

#: how codes are written: 'codes' as the model gives them; 'polar' (d + 1 values) each code's
#: direction (unit vector) and the natural log of its length
FORMS = ("codes", "polar")


def code_form(z: torch.Tensor, form: str = "codes") -> torch.Tensor:
    """Codes (N, d) in `form`: as they are ('codes'), or 'polar': (N, d + 1), each code's
    direction and the log of its length. The codes of PCA and of the conv autoencoder are
    proportional to the flux, so their length is the brightness and their direction the shape:
    in polar form a linear probe or a distance sees both apart, where the plain codes mix a
    galaxy's size and ellipticity with how bright it is."""
    if form == "codes":
        return z
    if form != "polar":
        raise InputError(f"code form {form!r}: choose one of {', '.join(FORMS)}")
    length = z.norm(dim=1, keepdim=True)
    if bool((length <= 0).any()):
        raise InputError("a code of length 0 has no direction: polar form needs non-zero codes")
    return torch.cat([z / length, length.log()], dim=1)


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
                form: str = "codes", batch_size: int = 256, overwrite: bool = False, progress: bool = True) -> Store:
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
        form: 'codes' (as the model gives them) or 'polar' (direction and log length, see
            :func:`code_form`); recorded with the model, so queries are embedded the same way.
    """
    if form not in FORMS:
        raise InputError(f"code form {form!r}: choose one of {', '.join(FORMS)}")
    model, path = model_and_folder(model)
    store = store if isinstance(store, Store) else open_store(store)
    check_model_store(model, store)
    model.eval()
    identity = {**model_identity(model, path), "form": form}

    def codes_of(batch: dict) -> torch.Tensor:
        z = model.encode_batch(batch)
        bad = ~torch.isfinite(z).all(dim=1)
        if bool(bad.any()):
            ids = batch["id"][bad].tolist()
            raise InputError(f"{describe_model(identity)} gives NaN/inf codes for objects with ids "
                             f"{ids[:10]}{' ...' if len(ids) > 10 else ''} of {store.path}: check their pixels "
                             "(deepfield info), or leave them out with --where")
        return code_form(z, form)

    provenance = {"task": "embed", "model_class": identity["class"], "model": identity,
                  "model_store_fingerprint": identity["trained_on"]}
    return map_store(codes_of, store, out, out_kind="table", indices=indices, batch_size=batch_size,
                     description="embedding", provenance=provenance, overwrite=overwrite, progress=progress,
                     model=model)
