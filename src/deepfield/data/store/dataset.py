"""A store's rows as a torch Dataset (items are dicts of tensors)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from deepfield.data.store.reader import Store

__all__ = ["StoreDataset"]


class StoreDataset:
    """A map-style torch Dataset over store rows; items are dicts of tensors.

    Each item has the requested arrays (float32 tensors; a shared PSF is repeated), the
    requested catalog columns (float32 scalars) and ``"id"`` (int64) and ``"index"`` (row).
    Small selections are read into memory once (default below 2 GiB); larger ones are read
    from Zarr chunk by chunk with a one-chunk cache, which suits sequential samplers.
    """

    def __init__(self, store: Store, indices=None, arrays=("x",), columns=(), in_memory=None):
        self.store = store
        self.indices = np.arange(len(store)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.arrays = tuple(arrays)
        self.columns = tuple(columns)
        for name in self.arrays:
            if not store.has(name):
                store.read(name, slice(0, 0))  # raises the helpful error
        self._cols = {c: store.column(c).astype(np.float32) for c in self.columns}
        self._ids = store.ids
        nbytes = sum(4 * int(np.prod(store.array_shape(a))) for a in self.arrays if a not in store.shared_arrays)
        if in_memory is None:
            in_memory = nbytes * len(self.indices) < 2 * 1024**3
        self._mem = {a: store.read(a, self.indices) for a in self.arrays} if in_memory else None
        self._cache: dict[str, tuple[int, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.indices)

    def _row(self, name: str, pos: int) -> np.ndarray:
        if self._mem is not None:
            return self._mem[name][pos]
        row = int(self.indices[pos])
        if name in self.store.shared_arrays:
            return self.store.read(name, [row])[0]
        c = self.store.chunk_rows(name)
        key = row // c
        cached = self._cache.get(name)
        if cached is None or cached[0] != key:
            cached = (key, self.store.read(name, slice(key * c, (key + 1) * c)))
            self._cache[name] = cached
        return cached[1][row - key * c]

    def __getitem__(self, pos: int) -> dict:
        import torch

        item = {name: torch.from_numpy(np.array(self._row(name, pos), dtype=np.float32)) for name in self.arrays}
        row = int(self.indices[pos])
        for c in self.columns:
            item[c] = torch.tensor(self._cols[c][row])
        item["id"] = torch.tensor(int(self._ids[row]), dtype=torch.int64)
        item["index"] = torch.tensor(row, dtype=torch.int64)
        return item

    def tensors(self) -> dict:
        """All rows at once as tensors (for small in-memory sets)."""
        import torch

        out = {a: torch.from_numpy(np.ascontiguousarray(self.store.read(a, self.indices) if self._mem is None else self._mem[a], dtype=np.float32)) for a in self.arrays}
        for c in self.columns:
            out[c] = torch.from_numpy(self._cols[c][self.indices])
        out["id"] = torch.from_numpy(self._ids[self.indices].astype(np.int64))
        return out
