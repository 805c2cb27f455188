"""Run a model over a whole store in batches and write the result as a new store.

Every task that maps objects to objects (encode, reconstruct, and later denoise or score)
goes through :func:`map_store`, so batching, progress, provenance and atomic writing are
done once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from deepfield.data.store import Store, create_store, open_store
from deepfield.errors import InputError
from deepfield.progress import progress_bar

__all__ = ["map_store", "progress_bar", "resolve_indices"]


def resolve_indices(store: Store, where: str | None = None, split: str | None = None,
                    record: dict | None = None) -> np.ndarray:
    """Rows of `store` to process: all, a catalog query, and/or the model's train/val/test split."""
    idx = store.select(where=where) if where else np.arange(len(store))
    if split:
        if not record or not record.get("store"):
            raise InputError("--split needs a model trained by deepfield (its config records the split)")
        rec = record["store"]
        if rec.get("fingerprint") != store.fingerprint:
            raise InputError(f"--split {split}: the model was trained on store fingerprint "
                             f"{rec.get('fingerprint')}, not {store.path} ({store.fingerprint})")
        from deepfield.data.splits import record_splits

        splits = record_splits(store, rec)
        if split not in splits:
            raise InputError(f"--split {split!r}: choose train, val or test")
        idx = np.intersect1d(idx, splits[split])
    return idx


@torch.no_grad()
def map_store(fn: Callable[[torch.Tensor], torch.Tensor], store: Store | str | Path, out: str | Path, *,
              out_kind: str | None = None, indices: Sequence[int] | None = None, batch_size: int = 256,
              description: str = "processing", provenance: dict | None = None, overwrite: bool = False,
              progress: bool = True, keep_arrays: Sequence[str] = (), model=None) -> Store:
    """Apply `fn` to batches of `x` (store units) and write a store with the outputs as `x`.

    With `model`, `fn` receives instead the batch dict that model reads (x plus its arrays,
    e.g. psf and ivar, and its catalog columns, e.g. conditions). The output keeps the
    input's catalog rows (ids and physical columns), pixel scale and bands for images (when
    outputs are images of the same bands), and `keep_arrays` (e.g. 'psf') copied from the input.
    """
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        raise InputError(f"batch size {batch_size!r}: give a whole number >= 1 (objects per forward pass)")
    store = store if isinstance(store, Store) else open_store(store)
    idx = np.arange(len(store)) if indices is None else np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        raise InputError(f"no objects selected from {store.path}")
    if model is None:
        def apply(rows):
            return fn(torch.from_numpy(store.read("x", rows))).detach().cpu().numpy()
    else:
        from deepfield.data.batches import iterate_batches

        def apply(rows):
            return fn(next(iterate_batches(store, rows, model, rows.size))).detach().cpu().numpy()
    first = apply(idx[:1])
    sample_shape = first.shape[1:]
    same_images = store.kind == "image" and len(sample_shape) == 3 and sample_shape[0] == store.sample_shape[0]
    kind = out_kind or ("image" if same_images else "spectrum" if store.kind == "spectrum" and sample_shape == store.sample_shape else "table")
    arrays = {a: store.read(a, idx[:1]).shape[1:] for a in keep_arrays if a in store.array_names}
    shared = {a: store.read_shared(a) for a in keep_arrays if a in store.shared_arrays}
    prov = {"source_store": str(Path(store.path).resolve()), "source_fingerprint": store.fingerprint}
    prov.update(provenance or {})
    with create_store(out, sample_shape, kind=kind, bands=store.bands if kind == "image" else (),
                      pixel_scale=store.pixel_scale if kind == "image" else None,
                      wavelength=store.wavelength if kind == "spectrum" else None,
                      arrays=arrays, shared=shared, units=store.units, provenance=prov,
                      overwrite=overwrite) as writer, progress_bar(progress) as bar:
        task = bar.add_task(description, total=idx.size)
        for start in range(0, idx.size, batch_size):
            rows = idx[start:start + batch_size]
            y = apply(rows)
            extra = {a: store.read(a, rows) for a in arrays}
            writer.append(x=y, catalog=store.catalog.take(rows), **extra)
            bar.advance(task, rows.size)
    return writer.store
