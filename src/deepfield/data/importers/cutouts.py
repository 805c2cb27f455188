"""Survey cutouts: stamps cut from a mosaic (a FITS image with a celestial WCS) at catalog
positions, into a store.

Each catalog object's RA/Dec goes through the mosaic's WCS (``all_world2pix``, distortions
included) to a pixel position; the stamp (astropy ``Cutout2D``) puts the pixel nearest to it on
the stamp's centre pixel ``(size // 2, size // 2)``, on the mosaic's own pixel grid (no
resampling, so a rotated or non-square-pixel WCS stays as it is; ``meta["extra"]`` records the
mosaic's CD matrix). Units and conventions:

- ``x`` (N, 1, H, W): mosaic pixels in the mosaic's units (BUNIT, recorded in the meta);
- ``ivar`` (N, 1, H, W): the weight map (inverse variance, SWarp / SExtractor ``MAP_WEIGHT``)
  cut the same way, or, without one, ``1 / sigma_sky**2`` from a sigma-clipped estimate of the
  mosaic's sky noise (recorded in the meta); 0 under the mask;
- ``mask`` (N, 1, H, W): True where a stamp runs off the mosaic (filled with 0) or the mosaic
  has no data (NaN, or weight 0);
- ``psf``: from a PSF image (h, w), one shared by every object (a shared array), or an
  (N_catalog, h, w) cube, one per catalog row, or a PSFEx model (``.psf``) evaluated at each
  object's position; resampled to an odd stamp centred on its middle pixel if it is not one,
  unit sum;
- catalog: the catalog's own columns (units from the file), ``id`` (the id column, else the row
  number), ``x_pixel``, ``y_pixel`` (the object's position on the mosaic, 0-based pixels),
  ``offset_x``, ``offset_y`` (position minus the stamp centre pixel, pixels, in [-0.5, 0.5]),
  ``cutout_x0``, ``cutout_y0`` (mosaic pixel of the stamp's [0, 0]) and ``masked_fraction``.

Pixel scale: ``sqrt(|det CD|)`` in arcsec (the geometric mean for non-square pixels; the two
axes' scales are in the meta); band: the header's FILTER / BAND, or ``band=``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from deepfield.data.importers._common import (_READ_ERRORS_HINT, _existing, file_record, _jsonable,
                                              _positive_int)
from deepfield.data.store import Store
from deepfield.errors import InputError

__all__ = ["import_cutouts", "EDGE_POLICIES"]

#: What to do with objects whose stamp runs off the mosaic: "mask" keeps them with the
#: missing pixels masked (an object whose centre is off the mosaic is refused), "drop" leaves
#: out every object whose stamp is not wholly on the mosaic.
EDGE_POLICIES = ("mask", "drop")

_DEFAULT_BATCH = 256


def _image_hdu_of(hdul, path: Path, hdu):
    from deepfield.data.importers._readers import _describe_hdus, _find_hdu

    if hdu is not None:
        found = _find_hdu(hdul, hdu, path, "mosaic")
        if not getattr(found, "is_image", False) or found.data is None or found.data.ndim != 2:
            raise InputError(f"{path} HDU {hdu!r} is not a 2-D image; its HDUs: {_describe_hdus(hdul)}")
        return found
    for h in hdul:
        if getattr(h, "is_image", False) and h.header.get("NAXIS") == 2:
            return h
    raise InputError(f"{path} has no 2-D image HDU for the mosaic; its HDUs: {_describe_hdus(hdul)}. "
                     "Pass hdu= (--hdu) to pick one")


def _column(columns: dict[str, np.ndarray], wanted: str | None, defaults: tuple[str, ...],
            what: str, label: str, required: bool = True) -> str | None:
    """The catalog column named `wanted` (any case), else the first of `defaults` present."""
    lower = {c.lower(): c for c in columns}
    names = (wanted,) if wanted else defaults
    for name in names:
        if name.lower() in lower:
            return lower[name.lower()]
    if not required:
        return None
    raise InputError(f"{label} has no {what} column {' or '.join(map(repr, names))} (any case); its "
                     f"columns: {', '.join(columns)}. Name it with --{what.replace(' ', '-')}-col")


def _degrees(values: np.ndarray, unit: str | None, name: str, label: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if not unit:
        return values
    import astropy.units as u

    try:
        return (values * u.Unit(unit)).to_value(u.deg)
    except (ValueError, u.UnitsError):
        raise InputError(f"{label} column {name!r} has unit {unit!r}, which is not an angle; give "
                         "RA/Dec in degrees") from None


def _sky_sigma(data, seed: int = 0) -> float:
    """Sky noise (mosaic units) of a mosaic: sigma-clipped standard deviation of up to 10^6
    pixels drawn at random (objects are clipped away)."""
    from astropy.stats import sigma_clipped_stats

    flat = data.reshape(-1)
    take = np.random.default_rng(seed).choice(flat.size, size=min(flat.size, 1_000_000), replace=False)
    sample = np.asarray(flat[np.sort(take)], dtype=np.float64)
    sample = sample[np.isfinite(sample) & (sample != 0)]
    if sample.size < 100:
        raise InputError("the mosaic has too few finite, non-zero pixels to estimate the sky noise; "
                         "pass a weight map (--weight)")
    _, _, sigma = sigma_clipped_stats(sample, sigma=3.0, maxiters=10)
    return float(sigma)


def _psfex(path: Path):
    """A PSFEx model (.psf): evaluate(x, y) -> (h, w) PSF at mosaic pixel (x, y), 0-based."""
    from astropy.io import fits

    with fits.open(path) as hdul:
        if len(hdul) < 2 or "PSF_MASK" not in getattr(hdul[1], "columns", fits.ColDefs([])).names:
            raise InputError(f"{path} is not a PSFEx model: no PSF_MASK column in HDU 1")
        h = hdul[1].header
        basis = np.asarray(hdul[1].data["PSF_MASK"][0], dtype=np.float64)  # (n_basis, h, w)
        names = [h.get(f"POLNAME{i + 1}", "") for i in range(int(h.get("POLNAXIS", 0)))]
        zero = [float(h[f"POLZERO{i + 1}"]) for i in range(len(names))]
        scale = [float(h[f"POLSCAL{i + 1}"]) for i in range(len(names))]
        degree = int(h.get("POLDEG1", 0))
        sampling = float(h.get("PSF_SAMP", 1.0))
    if names and names != ["X_IMAGE", "Y_IMAGE"]:
        raise InputError(f"{path}: PSFEx model varies with {names}; deepfield evaluates models in "
                         "X_IMAGE, Y_IMAGE only")
    if abs(sampling - 1.0) > 1e-6:
        raise InputError(f"{path}: PSFEx model is sampled at {sampling} mosaic pixels (PSF_SAMP); "
                         "deepfield reads models sampled at the mosaic's pixels (PSF_SAMP = 1)")
    if basis.ndim == 2:
        basis = basis[None]

    def evaluate(x: float, y: float) -> np.ndarray:
        if not names:
            return basis[0]
        # PSFEx positions are 1-based FITS pixels; terms ordered x^i y^j with i + j <= degree, i fastest
        dx = (x + 1 - zero[0]) / scale[0]
        dy = (y + 1 - zero[1]) / scale[1]
        terms = [dx**i * dy**j for j in range(degree + 1) for i in range(degree + 1 - j)]
        return np.tensordot(np.asarray(terms), basis[:len(terms)], axes=1)

    return evaluate


def import_cutouts(
    mosaic: str | os.PathLike,
    out: str | os.PathLike,
    *,
    catalog: str | os.PathLike,
    size: int = 64,
    weight: str | os.PathLike | None = None,
    psf: str | os.PathLike | None = None,
    ra_col: str | None = None,
    dec_col: str | None = None,
    id_col: str | None = None,
    edge: str = "mask",
    band: str | None = None,
    hdu: int | str | None = None,
    batch: int = _DEFAULT_BATCH,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> Store:
    """Cut stamps of the catalog's objects out of a survey mosaic into a store at `out`.

    Module docstring: what each array and column holds, and in which units.

    Arguments:
        mosaic: FITS image with a celestial WCS (the first 2-D image HDU, or `hdu`).
        out: the store directory to create.
        catalog: FITS table, CSV, ECSV or Parquet file, one row per object, RA/Dec in degrees
            (or in the angle unit the file gives).
        size: stamp side H = W in pixels (>= 8).
        weight: inverse-variance map of the mosaic's shape (default: a sky-noise estimate).
        psf: a PSF image (h, w) shared by all objects, an (N_catalog, h, w) cube with one PSF
            per catalog row, or a PSFEx ``.psf`` model (evaluated at each object).
        ra_col, dec_col, id_col: catalog column names (any case; defaults "ra", "dec" and "id",
            the id column optional).
        edge: "mask" (keep stamps that run off the mosaic, masking what is missing; refuse an
            object whose centre is off the mosaic) or "drop" (leave out every object not wholly
            on the mosaic).
        band: band name (default: the header's FILTER or BAND).
        hdu: the mosaic's HDU (name or index).
        batch: objects per batch appended to the store.
        overwrite: replace an existing store at `out`.
        resume: finish an interrupted import with the same inputs.
        progress: show a progress bar (stderr).

    Bad input (a mosaic without WCS, a position off the mosaic, a weight map of another shape,
    missing columns) raises :class:`~deepfield.errors.InputError` and leaves nothing at `out`.
    """
    from astropy.nddata import Cutout2D
    from astropy.wcs import WCS, FITSFixedWarning
    from astropy.wcs.utils import proj_plane_pixel_scales

    from deepfield.data.importers._readers import _open_fits, _read_catalog_file
    from deepfield.data.importers.fits import bands_from_headers, pixel_scale_from_headers

    mosaic, catalog_path = _existing(mosaic, "mosaic"), _existing(catalog, "catalog")
    size = _positive_int(size, "size")
    if size < 8:
        raise InputError(f"size={size} pixels is too small for a stamp; use --size 8 or more")
    batch = _positive_int(batch, "batch")
    edge = str(edge).lower()
    if edge not in EDGE_POLICIES:
        raise InputError(f"edge={edge!r}: choose 'mask' (keep stamps that run off the mosaic, masked) "
                         "or 'drop' (leave them out)")

    import warnings

    hdul = _open_fits(mosaic)
    try:
        image_hdu = _image_hdu_of(hdul, mosaic, hdu)
        header = image_hdu.header
        data = image_hdu.data  # memory-mapped: stamps are read as they are cut
        shape = data.shape
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header)
        if not wcs.has_celestial or wcs.celestial.naxis != 2:
            raise InputError(f"mosaic {mosaic} has no celestial WCS in its header (CTYPE1/2 RA---TAN, "
                             "DEC--TAN, CRVAL, CRPIX, CD or CDELT): catalog RA/Dec cannot be placed on "
                             "it; add the astrometric solution (e.g. from astrometry.net or SCAMP)")
        wcs = wcs.celestial
        pixel_scale = pixel_scale_from_headers([header])
        if pixel_scale is None or not pixel_scale > 0:
            raise InputError(f"mosaic {mosaic}: cannot tell the pixel scale from its WCS")
        axis_scales = (proj_plane_pixel_scales(wcs) * 3600.0).tolist()  # a celestial WCS is in degrees
        bands = (band,) if band else bands_from_headers([header, hdul[0].header], 1)
        bands = tuple(bands[:1])

        columns, units, label = _read_catalog_file(catalog_path)
        n_cat = len(next(iter(columns.values()))) if columns else 0
        if n_cat == 0:
            raise InputError(f"{label} has no rows; nothing to cut")
        ra_name = _column(columns, ra_col, ("ra", "ra_deg", "alpha_j2000", "raj2000"), "ra", label)
        dec_name = _column(columns, dec_col, ("dec", "dec_deg", "delta_j2000", "dej2000"), "dec", label)
        id_name = _column(columns, id_col, ("id",), "id", label, required=id_col is not None)
        ra = _degrees(columns[ra_name], units.get(ra_name), ra_name, label)
        dec = _degrees(columns[dec_name], units.get(dec_name), dec_name, label)
        bad = np.flatnonzero(~(np.isfinite(ra) & np.isfinite(dec)))
        if bad.size:
            raise InputError(f"{label}: rows {bad[:10].tolist()} have no finite RA/Dec; fix or drop them")
        x_pix, y_pix = wcs.all_world2pix(ra, dec, 0)
        ix, iy = np.rint(x_pix).astype(np.int64), np.rint(y_pix).astype(np.int64)
        ny, nx = shape
        centre_in = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        lo = size // 2
        whole = (ix - lo >= 0) & (ix - lo + size <= nx) & (iy - lo >= 0) & (iy - lo + size <= ny)
        if edge == "mask" and not centre_in.all():
            i = int(np.flatnonzero(~centre_in)[0])
            name = f"row {i}" + (f" (id {columns[id_name][i]})" if id_name else "")
            raise InputError(f"{label} {name} at RA {ra[i]:.6f}, Dec {dec[i]:.6f} deg falls at pixel "
                             f"({x_pix[i]:.1f}, {y_pix[i]:.1f}), outside the {nx} x {ny} mosaic {mosaic}"
                             f"{f' ({(~centre_in).sum()} objects in all)' if (~centre_in).sum() > 1 else ''}"
                             "; pass edge='drop' (--edge drop) to leave such objects out, or check the "
                             "catalog is of this field")
        keep = np.flatnonzero(centre_in if edge == "mask" else whole)
        if keep.size == 0:
            raise InputError(f"none of the {n_cat} objects of {label} has a whole {size} x {size} stamp "
                             f"on the mosaic {mosaic}; check the catalog is of this field")

        weight_data = None
        files = {str(mosaic.resolve()): file_record(mosaic), str(catalog_path.resolve()): file_record(catalog_path)}
        sky_sigma = None
        if weight is not None:
            weight_path = _existing(weight, "weight map")
            weight_hdul = _open_fits(weight_path)
            weight_data = _image_hdu_of(weight_hdul, weight_path, None).data
            if weight_data.shape != shape:
                weight_hdul.close()
                raise InputError(f"weight map {weight_path} has shape {weight_data.shape} but the mosaic "
                                 f"{mosaic} has {shape}: give the weight map made with this mosaic")
            files[str(weight_path.resolve())] = file_record(weight_path)
        else:
            weight_hdul = None
            sky_sigma = _sky_sigma(data)

        psf_shared = psf_rows = psf_model = None
        if psf is not None:
            psf_path = _existing(psf, "PSF")
            files[str(psf_path.resolve())] = file_record(psf_path)
            if psf_path.name.lower().endswith(".psf"):
                psf_model = _psfex(psf_path)
            else:
                from astropy.io import fits

                try:
                    cube = np.asarray(fits.getdata(psf_path), dtype=np.float64)
                except Exception as err:
                    raise InputError(f"PSF {psf_path} is not a readable FITS image ({type(err).__name__}: "
                                     f"{err}); {_READ_ERRORS_HINT}") from None
                if cube.ndim == 2:
                    psf_shared = _odd_psf(cube, f"PSF {psf_path}")
                elif cube.ndim == 3 and cube.shape[0] == n_cat:
                    psf_rows = cube
                else:
                    raise InputError(f"PSF {psf_path} has shape {cube.shape}: give one (h, w) PSF for all "
                                     f"objects or an ({n_cat}, h, w) cube, one per catalog row")

        # the store's catalog: the file's columns for the kept rows, plus where each stamp lies
        cat: dict[str, np.ndarray] = {}
        for name, values in columns.items():
            values = np.asarray(values)
            if values.ndim != 1 or name == id_name:
                continue
            cat["source_id" if name.lower() == "id" else name] = values[keep]
        ids = np.asarray(columns[id_name])[keep] if id_name else keep.astype(np.int64)
        if ids.dtype.kind == "f" and np.all(ids == np.round(ids)):
            ids = ids.astype(np.int64)
        if ids.dtype.kind not in "iu":
            raise InputError(f"{label}: id column {id_name!r} holds non-integer values (e.g. "
                             f"{ids[:3].tolist()}); store ids are integers: name an integer column "
                             "with --id-col, or rename this one")
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise InputError(f"{label}: id column {id_name!r} repeats ids {uniq[counts > 1][:5].tolist()}; "
                             "ids must be unique")
        cat = {"id": ids.astype(np.int64), **cat,
               "x_pixel": x_pix[keep], "y_pixel": y_pix[keep],
               "offset_x": x_pix[keep] - ix[keep], "offset_y": y_pix[keep] - iy[keep],
               "cutout_x0": ix[keep] - lo, "cutout_y0": iy[keep] - lo}
        units = {k: v for k, v in units.items() if k in cat}
        units.update({k: "pix" for k in ("x_pixel", "y_pixel", "offset_x", "offset_y", "cutout_x0", "cutout_y0")})

        psf_size = None
        if psf_rows is not None:
            psf_size = psf_rows.shape[1] | 1
        elif psf_model is not None:
            psf_size = psf_model(0.0, 0.0).shape[0] | 1
        arrays: dict[str, tuple[int, ...]] = {"ivar": (1, size, size), "mask": (1, size, size)}
        if psf_size is not None:
            arrays["psf"] = (1, psf_size, psf_size)
        from importlib.metadata import version

        from deepfield.progress import progress_task
        from deepfield.data.store import create_store

        provenance = {"importer": "deepfield.data.importers.import_cutouts",
                      "mosaic": str(mosaic.resolve()), "catalog": str(catalog_path.resolve()),
                      "options": _jsonable({"size": size, "weight": weight, "psf": psf, "ra_col": ra_name,
                                            "dec_col": dec_name, "id_col": id_name, "edge": edge,
                                            "band": band, "hdu": hdu}),
                      "files": files, "n_catalog": n_cat, "dropped_at_edge": int(n_cat - keep.size),
                      "astropy_version": version("astropy")}
        extra = {"source": "survey mosaic cutouts", "centre_pixel": [lo, lo],
                 "pixel_scales_xy": axis_scales, "cd_matrix": wcs.pixel_scale_matrix.tolist(),
                 "ctype": list(wcs.wcs.ctype), "bunit": header.get("BUNIT"),
                 "ivar": "weight map" if weight is not None else f"1 / sky_sigma**2, sky_sigma {sky_sigma:.6g}",
                 "sky_sigma": sky_sigma, "mask": "True off the mosaic, on NaN pixels and where the weight is 0"}
        writer = create_store(out, (1, size, size), kind="image", bands=bands, pixel_scale=pixel_scale,
                              arrays=arrays, shared={"psf": psf_shared[None]} if psf_shared is not None else None,
                              units=units, provenance=provenance, extra_meta=extra,
                              overwrite=overwrite, resume=resume)
        n = keep.size
        bar, task = progress_task(progress, n, "cutouts", completed=writer.n_written)
        with writer, bar:
            for start in range(writer.n_written, n, batch):
                stop = min(n, start + batch)
                m = stop - start
                x = np.zeros((m, 1, size, size), np.float32)
                ivar = np.zeros((m, 1, size, size), np.float32)
                mask = np.ones((m, 1, size, size), bool)
                psfs = None if psf_size is None else np.zeros((m, 1, psf_size, psf_size), np.float32)
                masked = np.zeros(m)
                for k in range(m):
                    row = int(keep[start + k])
                    centre = (int(ix[row]), int(iy[row]))
                    cut = Cutout2D(data, centre, (size, size), mode="partial", fill_value=0.0, copy=True)
                    stamp = np.asarray(cut.data, dtype=np.float64)
                    valid = np.zeros((size, size), bool)
                    valid[cut.slices_cutout] = True
                    if weight_data is not None:
                        w = np.zeros((size, size))
                        w[cut.slices_cutout] = weight_data[cut.slices_original]
                        valid &= np.isfinite(w) & (w > 0)
                    else:
                        w = np.full((size, size), 1.0 / sky_sigma**2)
                    valid &= np.isfinite(stamp)
                    x[k, 0] = np.where(valid, stamp, 0.0)
                    ivar[k, 0] = np.where(valid, w, 0.0)
                    mask[k, 0] = ~valid
                    masked[k] = 1.0 - valid.mean()
                    if psf_rows is not None:
                        psfs[k, 0] = _odd_psf(psf_rows[row], f"PSF row {row} of {psf}", psf_size)
                    elif psf_model is not None:
                        psfs[k, 0] = _odd_psf(psf_model(float(x_pix[row]), float(y_pix[row])),
                                              f"PSFEx PSF at row {row}", psf_size)
                rows_cat = {key: v[start:stop] for key, v in cat.items()}
                rows_cat["masked_fraction"] = masked
                batch_arrays = {"ivar": ivar, "mask": mask}
                if psfs is not None:
                    batch_arrays["psf"] = psfs
                writer.append(x=x, catalog=rows_cat, **batch_arrays)
                bar.advance(task, m)
        if weight_hdul is not None:
            weight_hdul.close()
        return writer.store
    finally:
        hdul.close()


def _odd_psf(image: np.ndarray, label: str, size: int | None = None) -> np.ndarray:
    """A unit-sum PSF on an odd (size, size) stamp centred on its middle pixel: an odd stamp of
    that size as it is, otherwise resampled through GalSim's InterpolatedImage (its centre taken
    at the image's true centre, as GalSim does)."""
    image = np.asarray(image, dtype=np.float64)
    if not np.isfinite(image).all() or not image.sum() > 0:
        raise InputError(f"{label} has NaN pixels or no flux; give a finite PSF of positive sum")
    h, w = image.shape
    if size is None:
        size = max(h, w) | 1
    if h == w == size:
        return image / image.sum()
    import galsim

    drawn = galsim.InterpolatedImage(galsim.Image(np.ascontiguousarray(image), scale=1.0), flux=1.0) \
        .drawImage(nx=size, ny=size, scale=1.0, method="no_pixel").array
    return drawn / drawn.sum()
