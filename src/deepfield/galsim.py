"""Learned galaxies as GalSim objects: draw deepfield samples into any GalSim scene.

    >>> import galsim, deepfield.galsim as dg                       # doctest: +SKIP
    >>> model = dg.GenerativeGalaxyModel("models/flow-vae")         # doctest: +SKIP
    >>> gals = model.sample({"half_light_radius": [0.5, 0.9], "magnitude": [22, 23],
    ...                      "redshift": [0.4, 0.8]}, rng=galsim.BaseDeviate(1))  # doctest: +SKIP
    >>> scene = galsim.Convolve(gals[0], galsim.Kolmogorov(fwhm=0.7)).drawImage(scale=0.2)  # doctest: +SKIP

Samples are the model's noiseless, PSF-free galaxies (for observation-model VAEs), as
``galsim.InterpolatedImage`` objects at the model's pixel scale, so they can be sheared,
convolved with any PSF and drawn at any resolution. Batched (one network pass for many
galaxies), seeded from GalSim's random deviates, multi-band, with per-object flux override.
GalSim-Hub did this for TensorFlow 1 models, one galaxy at a time, in one band.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from deepfield.errors import InputError

__all__ = ["GenerativeGalaxyModel"]


def _columns(catalog, names: Sequence[str]) -> tuple[int, dict[str, np.ndarray]]:
    """Number of objects and the named columns from a dict, astropy/pyarrow table or record array."""
    if catalog is None:
        return 0, {}
    if hasattr(catalog, "column_names") and hasattr(catalog, "column"):  # pyarrow.Table
        get, have, n = (lambda k: catalog.column(k).to_numpy()), set(catalog.column_names), catalog.num_rows
    elif isinstance(catalog, Mapping):
        get, have = (lambda k: np.atleast_1d(np.asarray(catalog[k], dtype=np.float64))), set(catalog)
        n = max((np.atleast_1d(np.asarray(v)).size for v in catalog.values()), default=0)
    else:  # astropy Table, numpy structured array
        names_in = getattr(catalog, "colnames", None) or getattr(getattr(catalog, "dtype", None), "names", None) or ()
        get, have, n = (lambda k: np.asarray(catalog[k], dtype=np.float64)), set(names_in), len(catalog)
    missing = [c for c in names if c not in have]
    if missing:
        raise InputError(f"the catalog lacks column(s) {missing} the model is conditioned on; it has: {sorted(have)}")
    cols = {}
    for c in names:
        v = np.asarray(get(c), dtype=np.float64)
        cols[c] = np.broadcast_to(v, (n,)) if v.size in (1, n) else v
        if cols[c].shape != (n,):
            raise InputError(f"catalog column {c!r} has {v.size} values for {n} objects")
    return n, cols


class GenerativeGalaxyModel:
    """A deepfield generative model folder (VAE, optionally with a latent prior) for GalSim.

    Arguments:
        path: the model folder.
        prior: 'auto' (its fitted latent prior if any) or 'gaussian'.
        batch_size: galaxies per network pass.
    """

    def __init__(self, path, prior: str = "auto", batch_size: int = 256):
        import deepfield

        self.model = deepfield.load(path)
        if not hasattr(self.model, "sample"):
            raise InputError(f"{path} holds a {type(self.model).__name__}, which cannot sample: train a vae or cvae")
        record = self.model.record.get("store", {})
        self.pixel_scale = record.get("pixel_scale")
        if self.pixel_scale is None or len(self.model.input_shape) != 3:
            raise InputError(f"{path} is not an image model with a pixel scale")
        self.bands = tuple(record.get("bands") or [f"band{i}" for i in range(self.model.input_shape[0])])
        self.prior = prior
        self.batch_size = batch_size
        names = list(self.model.config.condition)
        for c in getattr(self.model.prior, "data_columns", ()) or ():
            if c not in names:
                names.append(c)
        self.conditions = tuple(names)

    def __repr__(self) -> str:
        return (f"GenerativeGalaxyModel({type(self.model).__name__}, bands={self.bands}, "
                f"pixel_scale={self.pixel_scale}, conditions={self.conditions})")

    def sample(self, catalog=None, rng=None, flux=None, n: int | None = None, bands=None):
        """One galaxy per catalog row (or `n` galaxies for an unconditional model).

        Arguments:
            catalog: rows with the model's condition columns (dict of arrays, astropy Table,
                pyarrow Table or structured array).
            rng: a galsim.BaseDeviate; the same seed gives the same galaxies.
            flux: per-object total flux (counts) replacing the model's (scalar or (n,)); in
                multi-band models it sets the first (requested) band's flux and keeps the colours.
            bands: the bands to return (default all the model's), e.g. ('r',) or 'r'.

        Returns:
            a list of galsim.InterpolatedImage (one band), or of dicts {band: InterpolatedImage}.
        """
        import galsim

        wanted = (bands,) if isinstance(bands, str) else tuple(bands or self.bands)
        lacking = [b for b in wanted if b not in self.bands]
        if lacking:
            raise InputError(f"the model has no band(s) {', '.join(map(str, lacking))}: it was trained on "
                             f"{', '.join(self.bands)}; ask for those, or train a model on a store with the band")
        index = [self.bands.index(b) for b in wanted]

        rows, columns = _columns(catalog, self.conditions)
        if self.conditions and rows == 0:
            raise InputError(f"this model is conditioned on {', '.join(self.conditions)}: pass a catalog with them")
        count = rows or (n if n is not None else 0)
        if count < 1:
            raise InputError("nothing to draw: pass a catalog or n >= 1")
        deviate = galsim.UniformDeviate(rng if rng is not None else 0)
        generator = torch.Generator().manual_seed(int(deviate() * 2**31))
        images = []
        for start in range(0, count, self.batch_size):
            m = min(self.batch_size, count - start)
            cond = {c: torch.tensor(v[start:start + m], dtype=torch.float32) for c, v in columns.items()} or None
            images.append(self.model.sample(m, condition=cond, generator=generator, prior=self.prior).numpy())
        stack = np.concatenate(images).astype(np.float64)
        fluxes = None
        if flux is not None:
            fluxes = np.broadcast_to(np.asarray(flux, dtype=np.float64), (count,))
        out = []
        for i in range(count):
            factor = 1.0
            if fluxes is not None:
                total = stack[i, index[0]].sum()
                if total <= 0:
                    raise InputError(f"sample {i} has no flux to rescale to {fluxes[i]}")
                factor = fluxes[i] / total
            # use_true_center=False: the profile's origin is pixel (n // 2, n // 2), where deepfield's
            # stamps put the galaxy (GalSim's default, the array's true centre, is half a pixel off)
            objs = {band: galsim.InterpolatedImage(galsim.Image(stack[i, b] * factor, scale=self.pixel_scale),
                                                   flux=float(stack[i, b].sum() * factor), use_true_center=False)
                    for b, band in zip(index, wanted)}
            out.append(objs[wanted[0]] if len(wanted) == 1 else objs)
        return out
