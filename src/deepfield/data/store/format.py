"""The store's layout on disk: the format version, reserved names, chunking and paths.

A store is a directory::

    STORE/
      zarr.json            Zarr v3 group
      x/                   (N, C, H, W) images or (N, L) spectra, float32
      psf/ ivar/ mask/ truth/ noise_ps/   optional per-object arrays, first axis N
                           (a *shared* array, e.g. one PSF (C, h, w) for all objects, has no N axis)
      _digest/             (N, 16) uint8: a hash of each object's rows, for the fingerprint
      catalog.parquet      one row per object: `id` (int64, unique) + physical columns;
                           units in each field's metadata (b"unit")
      meta.json            kind, bands, pixel scale (arcsec), wavelength grid (Angstrom),
                           provenance, fingerprint, format version, and `n`: the commit record

A store being written lives under the hidden name ``.NAME.partial`` until it commits; its
writer's lock is ``.NAME.lock`` (see :mod:`deepfield.data.store.writer`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["FORMAT_VERSION", "DIGEST_ARRAY", "PROGRESS_DIR", "CHUNK_BYTES", "partial_path",
           "chunk_rows", "is_store"]

#: the version of this layout that this deepfield reads and writes
FORMAT_VERSION = 1
#: the per-object content hashes the fingerprint is made of
DIGEST_ARRAY = "_digest"
#: inside an unfinished write: the rows written so far and the catalog parts
PROGRESS_DIR = "_progress"
#: target size of one chunk of an array (rows per chunk follow from the row size)
CHUNK_BYTES = 2 * 1024**2


def partial_path(path: Path) -> Path:
    """Where the store `path` is built until it commits."""
    return path.with_name(f".{path.name}.partial")


def chunk_rows(row_shape: Sequence[int]) -> int:
    """Rows per chunk of an array whose rows have shape `row_shape` (float32): about CHUNK_BYTES."""
    row_bytes = 4 * int(np.prod(row_shape, dtype=np.int64)) if len(row_shape) else 4
    return int(max(1, min(4096, CHUNK_BYTES // max(row_bytes, 1))))


def is_store(path: str | os.PathLike) -> bool:
    """True if `path` is a committed store directory (has meta.json and catalog.parquet)."""
    p = Path(path)
    return (p / "meta.json").is_file() and (p / "catalog.parquet").is_file()
