"""Batches of store rows as a model reads them: one way for training, tasks and reports.

A batch is a dict of float32 tensors: ``"x"`` (N, *sample_shape) in store units, the other
arrays the model reads (e.g. ``"psf"``, ``"ivar"``; a shared array is repeated per object),
the catalog columns it reads (N,) (e.g. the conditions of a conditional model) and ``"id"``
(N,) int64. Which arrays a model reads is :func:`model_arrays`: those its ``data_arrays``
requires, plus those of its ``optional_data_arrays`` that the store has (a stored noise
power spectrum or bad-pixel mask is used when there is one).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from deepfield.errors import InputError

if TYPE_CHECKING:
    from torch.utils.data import DataLoader, Dataset

    from deepfield.data.store import Store

__all__ = ["model_arrays", "model_columns", "check_model_store", "iterate_batches", "normalisation_sample", "make_loader",
           "batch_loader", "UnpairedDataset", "SeededShuffle"]


def model_arrays(model, store: Store | None = None) -> tuple[str, ...]:
    """The store arrays `model` reads, 'x' first: its required ``data_arrays``, then those of its
    ``optional_data_arrays`` that `store` has (none without a store)."""
    required = tuple(getattr(model, "data_arrays", ()) or ())
    optional = tuple(model.optional_data_arrays)
    names = ["x", *(a for a in required if a != "x")]
    if store is not None:
        names += [a for a in optional if a not in names and store.has(a)]
    return tuple(names)


def model_columns(model) -> tuple[str, ...]:
    """The catalog columns `model` reads (its conditions), in its order."""
    return tuple(getattr(model, "data_columns", ()) or ())


def check_model_store(model, store: Store) -> None:
    """Refuse a store whose objects `model` cannot read (other shape or bands, PSF stamps of another size,
    a missing array it requires, another pixel scale), saying what differs and the fix."""
    record = getattr(model, "record", {}) or {}
    rec = record.get("store", {})
    if tuple(store.sample_shape) != model.input_shape:
        trained = rec.get("bands") or []
        if store.kind == "image" and len(store.sample_shape) == 3 and store.sample_shape[0] != model.input_shape[0]:
            raise InputError(f"store {store.path} has {store.sample_shape[0]} band(s) "
                             f"{tuple(store.bands)} but the model was trained on {model.input_shape[0]} "
                             f"{tuple(trained)}: select matching bands or retrain")
        raise InputError(f"store {store.path} holds objects of shape {store.sample_shape} but the model "
                         f"was trained on {model.input_shape}: use a store of that shape or retrain")
    psf_shape = tuple(getattr(getattr(model, "config", None), "psf_shape", ()) or ())
    if getattr(getattr(model, "config", None), "psf_to_encoder", False) and store.has("psf") \
            and store.array_shape("psf") != psf_shape:
        raise InputError(f"store {store.path} has PSF stamps of shape {store.array_shape('psf')} but the model's "
                         f"encoder reads {psf_shape} stamps: crop or pad them symmetrically about their centre to "
                         "that size (or retrain on this store)")
    for array in getattr(model, "data_arrays", ()):
        if array != "x" and not store.has(array):
            raise InputError(f"the model reads {array!r} for each object but store {store.path} has no such array "
                             f"(it has {', '.join(store.array_names)}); "
                             + ("give the PSF stamps when importing (deepfield import --psf)" if array == "psf" else
                                "give the inverse variance when importing (deepfield import --ivar)" if array == "ivar"
                                else "add it to the store"))
    if rec.get("pixel_scale") and store.pixel_scale and not np.isclose(rec["pixel_scale"], store.pixel_scale):
        raise InputError(f"store {store.path} has pixel scale {store.pixel_scale} arcsec but the model was "
                         f"trained at {rec['pixel_scale']} arcsec: resample the images or retrain")


def iterate_batches(store: Store, indices: np.ndarray, model, batch_size: int = 256) -> Iterator[dict]:
    """Batches (dicts of tensors, see the module docstring) of the arrays and columns `model`
    reads, for rows `indices` of `store` in the given order, `batch_size` rows at a time."""
    indices = np.asarray(indices, dtype=np.int64)
    arrays = model_arrays(model, store)
    columns = {c: store.column(c) for c in model_columns(model)}
    for start in range(0, indices.size, batch_size):
        rows = indices[start:start + batch_size]
        batch = {a: torch.from_numpy(np.ascontiguousarray(store.read(a, rows), dtype=np.float32)) for a in arrays}
        for c, values in columns.items():
            batch[c] = torch.from_numpy(values[rows].astype(np.float32))
        batch["id"] = torch.from_numpy(store.ids[rows])
        yield batch


def normalisation_sample(store: Store, rows: np.ndarray, limit: int = 20000) -> np.ndarray:
    """`x` of at most `limit` of `rows` (evenly spaced), (n, *sample_shape): what a model fits
    its normalisation on."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size > limit:
        rows = rows[np.linspace(0, rows.size - 1, limit).astype(np.int64)]
    return store.read("x", rows)


class SeededShuffle:
    """A sampler of rows 0..n-1 in an order fixed by (seed, epoch) alone, so that a resumed run
    sees the same batches as an uninterrupted one: Lightning calls :meth:`set_epoch`, and a
    checkpoint's optimiser step count places the sampler with :meth:`resume_at` (skipping the
    batches of the epoch that were already trained on, once)."""

    def __init__(self, n: int, seed: int, batch_size: int):
        self.n, self.seed, self.batch_size = int(n), int(seed), int(batch_size)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.n // self.batch_size)

    def resume_at(self, step: int) -> None:
        """Continue after `step` optimisation steps of one batch each: at the start of the next
        epoch, or inside the current one past the batches already used."""
        self.epoch, into = divmod(int(step), max(1, self.batches_per_epoch))
        self.skip = into * self.batch_size

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.n)
        skip, self.skip = self.skip, 0
        return iter(order[skip:].tolist())


def batch_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, num_workers: int = 0,
                 drop_last: bool = False, seed: int | None = None) -> DataLoader:
    """A DataLoader over `dataset` (worker processes kept between epochs when there are any).
    With `shuffle` and a `seed`, the order of each epoch is a :class:`SeededShuffle`'s."""
    from torch.utils.data import DataLoader

    sampler = SeededShuffle(len(dataset), seed, batch_size) if shuffle and seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=num_workers, persistent_workers=num_workers > 0, drop_last=drop_last)


def make_loader(store: Store, indices: np.ndarray, *, batch_size: int, shuffle: bool, num_workers: int = 0,
                model=None, drop_last: bool = False, seed: int | None = None) -> DataLoader:
    """A DataLoader over rows `indices` of `store` (in memory for selections that fit), yielding
    dicts of tensors with 'x' and whatever else `model` reads (PSF, ivar, condition columns)."""
    dataset = store.dataset(indices, arrays=model_arrays(model, store), columns=model_columns(model))
    return batch_loader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                        drop_last=drop_last, seed=seed)


class UnpairedDataset:
    """Items of dataset `a`, each with an image of dataset `b` (``"x_b"``) drawn by a seeded
    permutation, so the pairs carry no correspondence even when both hold the same objects
    (the two domains of a CycleGAN)."""

    def __init__(self, a: Sequence, b: Sequence, seed: int):
        self.a, self.b = a, b
        self.perm = np.random.default_rng(seed).permutation(len(b))

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.a[i])
        item["x_b"] = self.b[int(self.perm[i % len(self.perm)])]["x"]
        return item
