"""Noise twins: the same simulated galaxies under a fresh, independent noise draw.

A store from :func:`~deepfield.data.galaxies.simulate_galaxies` records (in its provenance) the
sample seed and survey settings from which every object's parameters, and so its noise seed,
can be drawn again. :func:`redraw_noise` takes each stamp's noise off (``x - noise_sigma *
unit_noise(old seed)``: the noiseless observation, up to float32 rounding, ~1e-7 of the pixel
value) and adds a new draw with the same ``noise_sigma``. The twin is what
``simulate_galaxies(..., noise_seed=k)`` writes for the same sample, without drawing any galaxy
again. A pair of twins tells what a code, a denoiser or an anomaly score does with the noise
alone: the same galaxy should land near itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from deepfield.data.galaxies.parameters import _check_noise_seed, galaxy_parameters
from deepfield.data.galaxies.rendering import cosmos_noise_filter, unit_noise
from deepfield.errors import InputError, StoreError
from deepfield.progress import progress_task

__all__ = ["redraw_noise"]

_SIMULATOR = "deepfield.data.galaxies.simulate_galaxies"


def redraw_noise(store, out: str | os.PathLike, *, noise_seed: int, overwrite: bool = False,
                 progress: bool = True, batch: int = 1024):
    """Write a noise twin of the simulated galaxy store `store` at `out`: every array and the
    catalog as they are, and ``x`` with its noise drawn again.

    Each object's new noise comes from (sample seed, `noise_seed`, object index), as
    ``simulate_galaxies(..., noise_seed=noise_seed)`` draws it, with the object's own
    ``noise_sigma`` per band (counts/pixel) and, for ``correlated_noise`` stores, the same COSMOS
    correlation. ``truth``, ``psf``, ``ivar``, the ids and the catalog (``snr`` included: it is the
    noiseless S/N) are copied bit for bit; a store holding a subset of a simulation (a split
    written by ``copy_store``) is twinned object by object through its ids. Written atomically:
    a failed or interrupted call leaves no store at `out`.

    Arguments:
        store: a :class:`~deepfield.data.store.Store` or path, made by ``simulate_galaxies``
            with ``morphology="parametric"``.
        out: the twin store to create.
        noise_seed: non-negative integer, other than the noise seed `store` was drawn with.
        overwrite: replace an existing store at `out`.
        progress: show a progress bar (stderr).
        batch: objects read and written at a time.

    Returns:
        The committed twin :class:`~deepfield.data.store.Store`; its provenance records the
        source's path, fingerprint and noise seed.
    """
    import pyarrow as pa

    from deepfield.data.store import Store, create_store, open_store

    store = store if isinstance(store, Store) else open_store(store)
    noise_seed = _check_noise_seed(noise_seed)
    if noise_seed is None:
        raise InputError("noise_seed=None: give the twin's noise seed, a non-negative integer (--noise-seed 7)")
    provenance = dict(store.meta.get("provenance") or {})
    parameters = dict(provenance.get("parameters") or {})
    if provenance.get("simulator") != _SIMULATOR or parameters.get("morphology", "parametric") != "parametric":
        what = ("real (COSMOS) galaxies, whose noise includes whitened HST noise that cannot be drawn again"
                if parameters.get("morphology") == "cosmos" else
                f"made by {provenance.get('simulator') or provenance.get('importer') or 'an unrecorded source'}")
        raise InputError(f"store {store.path} holds {what}; only stores of `deepfield simulate galaxies` "
                         "(parametric morphology) can have their noise drawn again. For a new simulation with "
                         "other noise, pass --noise-seed to `deepfield simulate galaxies`")
    old_seed = parameters.get("noise_seed")
    if old_seed == noise_seed:
        raise InputError(f"noise_seed={noise_seed} is the noise seed store {store.path} was drawn with: the twin "
                         "would be the store itself; choose another --noise-seed")
    out = Path(out)
    if out.resolve() == store.path.resolve():
        raise InputError(f"out={out} is the source store itself: write the twin to another path")
    bands = tuple(parameters["bands"])
    survey = {"bands": bands, "depth": parameters["depth"], "pixel_scale": parameters["pixel_scale"],
              "seed": parameters["seed"]}
    ids = store.ids
    if len(ids) and (ids.min() < 0 or ids.max() >= parameters["n"]):
        raise StoreError(f"store {store.path} has ids outside 0..{parameters['n'] - 1} of the simulation its "
                         "provenance records: its ids were changed, so its objects' noise cannot be found again")
    size = int(parameters["size"])
    noise_filter = cosmos_noise_filter(size, float(parameters["pixel_scale"])) if parameters["correlated_noise"] \
        else None
    C = len(bands)
    twin_provenance = {**provenance, "parameters": {**parameters, "noise_seed": noise_seed},
                       "noise_twin_of": {"path": str(store.path.resolve()), "fingerprint": store.fingerprint,
                                         "noise_seed": old_seed}}
    catalog = store.catalog
    per_row = {name: store.array_shape(name) for name in store.array_names if name != "x"}
    bar, task = progress_task(progress, len(store), "noise twins")
    with create_store(out, store.sample_shape, kind=store.kind, bands=store.bands, pixel_scale=store.pixel_scale,
                      arrays=per_row, shared={n: store.read_shared(n) for n in store.shared_arrays},
                      units=store.units, provenance=twin_provenance, extra_meta=store.meta.get("extra"),
                      overwrite=overwrite) as writer, bar:
        for lo in range(0, len(store), batch):
            rows = np.arange(lo, min(lo + batch, len(store)))
            batch_ids = ids[rows]
            first = int(batch_ids.min())
            span = int(batch_ids.max()) - first + 1
            old = galaxy_parameters(span, start=first, noise_seed=old_seed, **survey)[batch_ids - first]
            new = galaxy_parameters(span, start=first, noise_seed=noise_seed, **survey)[batch_ids - first]
            _check_same_objects(store, rows, old, bands)
            x = store.read("x", rows).astype(np.float64)
            for i in range(len(rows)):
                sigma = old.noise_sigma[i][:, None, None]
                x[i] += sigma * (unit_noise(int(new.noise_seed[i]), (C, size, size), noise_filter)
                                 - unit_noise(int(old.noise_seed[i]), (C, size, size), noise_filter))
            arrays = {name: store.read(name, rows) for name in per_row}
            writer.append(x=x.astype(np.float32), catalog=catalog.take(pa.array(rows)), **arrays)
            bar.advance(task, len(rows))
    return writer.store


def _check_same_objects(store, rows: np.ndarray, params, bands) -> None:
    """Refuse a store whose catalog is not the simulation its provenance records: taking off
    noise drawn from the wrong seeds would leave twice the noise, silently."""
    for column, expected in [("magnitude", params.magnitude),
                             *[(f"noise_sigma_{b}", params.noise_sigma[:, c]) for c, b in enumerate(bands)]]:
        if column not in store.columns:
            raise StoreError(f"store {store.path} has no catalog column {column!r}, which simulate_galaxies writes: "
                             "it is not a simulated galaxy store as its provenance says")
        found = store.column(column)[rows]
        if not np.allclose(found, expected, rtol=1e-6, atol=0.0):
            bad = int(store.ids[rows][np.argmax(~np.isclose(found, expected, rtol=1e-6, atol=0.0))])
            raise StoreError(f"store {store.path}: object {bad}'s {column} is not the one the simulation in its "
                             "provenance draws (seed, depth, bands, pixel scale): the store was edited after it was "
                             "simulated, so its noise cannot be found again; simulate it afresh with --noise-seed")
