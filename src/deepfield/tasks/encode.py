"""Encode a store into latent codes, and reconstruct it through a model.

Codes are written as a 'table' store keyed by the same ids, with the input catalog beside
them, so latent-space plots, similarity search and density models read them like any store.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from deepfield._atomic import write_parquet_atomic
from deepfield.data.batches import check_model_store
from deepfield.data.store import Store, open_store
from deepfield.errors import InputError
from deepfield.models.protocol import capabilities, has
from deepfield.models import Model
from deepfield.tasks.apply import map_store

__all__ = ["encode_store", "reconstruct_store", "denoise_store", "codes_to_parquet", "check_model_store"]


def _provenance(model: Model, task: str) -> dict:
    record = getattr(model, "record", {}) or {}
    return {"task": task, "model_class": type(model).__name__,
            "model_store_fingerprint": record.get("store", {}).get("fingerprint")}


def encode_store(model: Model, store, out, *, indices=None, batch_size: int = 256, overwrite: bool = False,
                 progress: bool = True, provenance: dict | None = None) -> Store:
    """Latent codes (N, latent_dim) of the objects of `store`, written as a store at `out`.

    Each batch carries what the model reads besides the pixels (a conditional VAE's catalog
    columns, a PSF-reading encoder's PSF stamps). `provenance` adds entries to the record.
    """
    store = store if isinstance(store, Store) else open_store(store)
    if not has(model, "encode"):
        raise InputError(f"a {type(model).__name__} has no latent codes (it plays {', '.join(sorted(capabilities(model)))}): "
                         "encode with a family that encodes (pca, ae, conv-ae, vae, the GANs' encoders)")
    check_model_store(model, store)
    model.eval()
    return map_store(model.encode_batch, store, out, out_kind="table", indices=indices, batch_size=batch_size,
                     description="encoding", provenance={**_provenance(model, "encode"), **(provenance or {})},
                     overwrite=overwrite, progress=progress, model=model)


def reconstruct_store(model: Model, store, out, *, indices=None, batch_size: int = 256,
                      overwrite: bool = False, progress: bool = True) -> Store:
    """decode(encode(x)) of the objects of `store`, written as a store at `out`."""
    store = store if isinstance(store, Store) else open_store(store)
    check_model_store(model, store)
    model.eval()
    return map_store(model.reconstruct, store, out, indices=indices, batch_size=batch_size,
                     description="reconstructing", provenance=_provenance(model, "reconstruct"),
                     overwrite=overwrite, progress=progress, keep_arrays=("psf",))


def denoise_store(model: Model, store, out, *, indices=None, batch_size: int = 256, overwrite: bool = False,
                  refine_steps: int = 0, progress: bool = True) -> Store:
    """Noiseless images of `store`'s objects: a VAE's posterior mean (PSF-free for observation-model
    VAEs) or a deconvolver's estimate of the PSF-free sky.

    With `refine_steps` > 0 each object's code is refined from the encoder's mean in that many
    steps (``VAE.refine_codes``: the beta-ELBO's point estimate), at the cost of that many
    decoder passes forward and back per object (VAEs only). Written as a store with the same ids
    and catalog (and the input PSF, for reference).
    """
    store = store if isinstance(store, Store) else open_store(store)
    check_model_store(model, store)
    deconvolver = has(model, "deconvolve")
    if not deconvolver and not (has(model, "elbo") and has(model, "encode")):
        raise InputError(f"denoising needs a VAE (posterior mean of the noiseless sky) or a deconvolver; got a "
                         f"{type(model).__name__}: use `deepfield reconstruct` for autoencoders")
    model.eval()

    if refine_steps < 0:
        raise InputError(f"refine steps must be >= 0, got {refine_steps}")
    if refine_steps and deconvolver:
        raise InputError("refine steps refine a VAE's codes; a deconvolver has none: drop --refine-steps")

    def posterior_mean_sky(batch):
        if deconvolver:
            return model.deconvolve_batch(batch)
        z = model.refine_codes(batch, steps=refine_steps) if refine_steps else model.posterior_batch(batch)[0]
        return model.decode(z, condition=batch if model.config.condition else None)

    return map_store(posterior_mean_sky, store, out, indices=indices, batch_size=batch_size,
                     description="denoising" + (f" (codes refined in {refine_steps} steps)" if refine_steps else ""),
                     provenance={**_provenance(model, "denoise"), "refine_steps": refine_steps}, overwrite=overwrite,
                     progress=progress, keep_arrays=("psf",), model=model)


def codes_to_parquet(codes: Store, path, overwrite: bool = False) -> Path:
    """Write a codes store as one Parquet table: `id`, `z0..z{D-1}`, then the catalog columns."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path} exists; pass --overwrite to replace it")
    z = codes.read("x")
    if z.ndim != 2:
        raise InputError(f"{codes.path} does not hold codes (shape {z.shape})")
    cols = {"id": codes.ids}
    cols.update({f"z{i}": z[:, i] for i in range(z.shape[1])})
    table = pa.table(cols)
    for name in codes.columns:
        if name != "id":
            table = table.append_column(codes.catalog.schema.field(name), codes.catalog.column(name))
    return write_parquet_atomic(path, table)
