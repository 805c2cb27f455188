"""The store: survey data on disk as Zarr v3 arrays, a Parquet catalog and a JSON record.

A store is a directory::

    STORE/
      zarr.json            Zarr v3 group
      x/                   (N, C, H, W) images or (N, L) spectra, float32
      psf/ ivar/ mask/ truth/   optional per-object arrays, first axis N
                           (a *shared* array, e.g. one PSF (C, h, w) for all objects, has no N axis)
      _digest/             (N, 16) uint8: a hash of each object's rows, for the fingerprint
      catalog.parquet      one row per object: `id` (int64, unique) + physical columns;
                           units in each field's metadata (b"unit")
      meta.json            kind, bands, pixel scale (arcsec), wavelength grid (Angstrom),
                           provenance, fingerprint, format version, and `n`: the commit record

Writes are atomic. A new store is built under a hidden partial name (``.NAME.partial``) and
renamed to NAME only when complete, so a killed writer leaves nothing that opens as a good
store. Appending to an existing store writes rows past ``n`` and commits by replacing
``catalog.parquet`` then ``meta.json``; readers only see the first ``meta['n']`` rows, so a
killed append leaves the store exactly as it was. Both kinds of write are resumable: the rows
written so far are recorded after every batch, and ``resume=True`` continues from there.
One writer at a time: a writer holds a lock (``.NAME.lock``, released when it commits, aborts or
its process ends), and a second writer of the same path is refused instead of deleting the
first one's unfinished rows.

Example:
    >>> import numpy as np, tempfile, os
    >>> from deepfield.data.store import create_store, open_store
    >>> path = os.path.join(tempfile.mkdtemp(), "s")
    >>> with create_store(path, sample_shape=(1, 8, 8), bands=("r",), pixel_scale=0.2,
    ...                   units={"magnitude": "mag"}) as w:
    ...     w.append(x=np.zeros((3, 1, 8, 8), "f4"), catalog={"magnitude": [20.0, 21.0, 22.0]})
    >>> s = open_store(path)
    >>> len(s), s.bands, s.units["magnitude"]
    (3, ('r',), 'mag')
"""

from deepfield.data.splits import split_fractions
from deepfield.data.store.dataset import StoreDataset
from deepfield.data.store.format import FORMAT_VERSION, is_store
from deepfield.data.store.query import evaluate_query
from deepfield.data.store.reader import Store, open_store
from deepfield.data.store.writer import StoreWriter, copy_store, create_store

__all__ = [
    "copy_store",
    "FORMAT_VERSION",
    "Store",
    "StoreWriter",
    "StoreDataset",
    "create_store",
    "open_store",
    "is_store",
    "split_fractions",
    "evaluate_query",
]
