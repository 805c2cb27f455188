"""Which objects of a store a model trains, validates and is tested on.

A split is a dict of row-index arrays (``"train"``, ``"val"``, ``"test"``), drawn by a seeded
hash of each object's catalog ``id``: an object's split depends only on its id and the seed,
so it is the same whatever the row order, stays the same when the store grows, and every
model trained with the same seed holds out the same objects. A catalog query (``where``)
narrows the train and validation rows only; the test split stays whole, so held-out
evaluation covers every kind of object. A model folder records its split
(:func:`split_record`), and :func:`record_splits` gives the same rows back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deepfield.errors import ConfigError, InputError

if TYPE_CHECKING:
    from deepfield.data.store import Store

__all__ = ["split_fractions", "training_splits", "narrow_splits", "record_splits", "split_record"]


def split_fractions(ids: np.ndarray, fractions: Sequence[float], seed: int) -> np.ndarray:
    """Assign each id to a split by a seeded hash of the id (0, 1, 2, ... per fraction).

    The assignment of an object depends only on its id and the seed, so it is the same
    whatever the row order and stays the same when the store grows.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if np.any(fr < 0) or not np.isclose(fr.sum(), 1.0):
        raise InputError(f"split fractions {tuple(fractions)} must be non-negative and sum to 1")
    ids = np.asarray(ids, dtype=np.uint64)
    # splitmix64 of (id, seed): a fast, well-mixed hash into [0, 1)
    with np.errstate(over="ignore"):
        z = ids + np.uint64(0x9E3779B97F4A7C15) * (np.uint64(seed) + np.uint64(1))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) / float(2**53)
    edges = np.cumsum(fr)[:-1]
    return np.searchsorted(edges, u, side="right")


def training_splits(store: Store, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                    where: str | None = None) -> dict[str, np.ndarray]:
    """The train / val / test rows of `store` to train a model on.

    Arguments:
        fractions: train, validation and test fractions (two: no test split).
        seed: seed of the id hash.
        where: train and validate on the objects matching this catalog query only.

    Raises InputError when no training objects are left.
    """
    fr = tuple(fractions)
    if len(fr) == 2:
        fr = (*fr, 0.0)
    if len(fr) != 3:
        raise ConfigError(f"split_fractions {fr}: give train, validation and test fractions")
    splits = store.split(fr, seed=seed)
    if splits["train"].size == 0:
        raise InputError(f"store {store.path} has {len(store)} objects: too few to train on")
    splits = narrow_splits(store, splits, where)
    if splits["train"].size == 0:
        raise InputError(f"no training objects of {store.path} match {where!r}: loosen the query")
    return splits


def narrow_splits(store: Store, splits: dict[str, np.ndarray], where: str | None) -> dict[str, np.ndarray]:
    """`splits` with the train and validation rows cut to those matching the catalog query
    `where` (None: unchanged); the test split stays whole."""
    if not where:
        return splits
    chosen = store.select(where=where)
    return {k: np.intersect1d(v, chosen) if k in ("train", "val") else v for k, v in splits.items()}


def record_splits(store: Store, record: dict) -> dict[str, np.ndarray]:
    """The train / val / test rows of `store` that a model folder's store record describes: the
    same id-hash split, with train and val cut to the catalog selection it was trained on."""
    fr = tuple(record["split_fractions"]) + ((0.0,) if len(record["split_fractions"]) == 2 else ())
    return narrow_splits(store, store.split(fr, seed=record["split_seed"]), record.get("where"))


def split_record(store: Store, splits: dict[str, np.ndarray], fractions: Sequence[float], seed: int,
                 where: str | None) -> dict:
    """The store record a model folder keeps: which store (path, fingerprint, shape) and which
    of its objects (split sizes, fractions, seed, query), so :func:`record_splits` finds them again."""
    return {
        "path": str(Path(store.path).resolve()),
        "fingerprint": store.fingerprint,
        "kind": store.kind,
        "bands": list(store.bands),
        "pixel_scale": store.pixel_scale,
        "sample_shape": list(store.sample_shape),
        "n_train": int(splits["train"].size),
        "n_val": int(splits["val"].size),
        "n_test": int(splits["test"].size),
        "split_fractions": list(fractions),
        "split_seed": seed,
        "where": where,
    }
