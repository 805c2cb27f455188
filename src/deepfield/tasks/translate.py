"""Survey-to-survey translation through a CycleGAN or a deconvolver, and its evaluation against paired truth.

A CycleGAN learns to map images of one survey (domain A, e.g. ground-based: wide PSF, higher
noise) to another (B, e.g. space-based: sharp PSF, low noise) from unpaired examples. The
simulator can render the same galaxy both ways, so translations can be checked against the
truth the CycleGAN paper never had: the same galaxy as survey B would see it, noiseless.

Where the truth is known for training (simulations), a deconvolver
(deepfield.models.deconvolver) learns the PSF-free sky from (observation, truth) pairs and
redraws it through the target survey's PSF: a paired translator.

:func:`translate_store` writes the translations of a store (same ids and catalog).
:func:`evaluate_translation` compares them, object by object, with the paired target: mean
squared error, the relative error of the total flux (sum over the stamp) and of the HSM size
(adaptive-moment sigma), for the CycleGAN, for a plain deconvolution baseline (Wiener or
Richardson-Lucy deconvolution of the source PSF, then convolution with the target PSF) and
for the untranslated source image.

Units: images in counts per pixel (the stores' units), pixel scales and PSF FWHM in arcsec;
MSE in counts^2 per pixel; flux and size errors are fractions.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from deepfield.data.store import Store, create_store, open_store
from deepfield.errors import InputError
from deepfield.models.cyclegan import CycleGAN
from deepfield.models.protocol import has
from deepfield.physics.resample import resample_images
from deepfield.progress import progress_bar
from deepfield.tasks.apply import map_store

__all__ = ["translate_store", "resample_store", "deconvolution_baseline", "evaluate_translation", "BASELINES"]

BASELINES = ("wiener", "richardson_lucy")


def _grid(model: CycleGAN) -> tuple[float | None, tuple[int, ...]]:
    """The pixel scale (arcsec) and sample shape the CycleGAN works on: domain A's."""
    record = getattr(model, "record", {}) or {}
    return (record.get("store") or {}).get("pixel_scale"), model.input_shape


def resample_store(store, out, pixel_scale: float, size: int, *, indices=None, batch_size: int = 256,
                   overwrite: bool = False, progress: bool = True) -> Store:
    """Write `store`'s images (rows `indices`) on a grid of `pixel_scale` arcsec and `size` x `size`
    pixels, flux conserving (deepfield.physics.resample.resample_images), with the same ids and catalog.
    Only `x` is carried over (PSF stamps and noise maps change meaning under resampling)."""
    store = store if isinstance(store, Store) else open_store(store)
    if store.kind != "image" or store.pixel_scale is None:
        raise InputError(f"resampling needs an image store with a pixel scale; {store.path} is a {store.kind} store "
                         f"with pixel scale {store.pixel_scale}")
    idx = np.arange(len(store)) if indices is None else np.asarray(indices, dtype=np.int64)
    shape = (store.sample_shape[0], size, size)
    prov = {"task": "resample", "source_store": str(Path(store.path).resolve()),
            "source_fingerprint": store.fingerprint, "source_pixel_scale": store.pixel_scale}
    with create_store(out, shape, bands=store.bands, pixel_scale=pixel_scale, units=store.units, provenance=prov,
                      overwrite=overwrite) as writer, progress_bar(progress) as bar:
        task = bar.add_task("resampling", total=idx.size)
        for start in range(0, idx.size, batch_size):
            rows = idx[start:start + batch_size]
            x = resample_images(torch.from_numpy(store.read("x", rows)), store.pixel_scale, pixel_scale, size)
            writer.append(x=x.numpy(), catalog=store.catalog.take(rows))
            bar.advance(task, rows.size)
    return writer.store


def _on_model_grid(model: CycleGAN, store: Store, resample: bool, work: Path) -> Store:
    """`store` itself when it is on the model's grid; a resampled copy when asked; else refused."""
    scale, shape = _grid(model)
    if store.kind != "image" or store.sample_shape[0] != shape[0]:
        raise InputError(f"store {store.path} holds {store.sample_shape} objects but the CycleGAN translates "
                         f"{shape[0]}-band images: select matching bands")
    same_scale = scale is None or store.pixel_scale is None or np.isclose(store.pixel_scale, scale)
    if same_scale and store.sample_shape == shape:
        return store
    if not resample:
        raise InputError(f"store {store.path} has {store.sample_shape[1]}x{store.sample_shape[2]} stamps of "
                         f"{store.pixel_scale} arcsec pixels but the CycleGAN works on {shape[1]}x{shape[2]} stamps "
                         f"of {scale} arcsec: pass --resample to resample it onto that grid")
    if scale is None or store.pixel_scale is None:
        raise InputError("cannot resample: the pixel scale of the store or of the model's training data is unknown")
    return resample_store(store, work / "resampled", scale, shape[-1], progress=False)


def translate_store(model, store, out, *, direction: str = "a2b", indices=None, batch_size: int = 256,
                    resample: bool = False, target_psf=None, overwrite: bool = False, progress: bool = True) -> Store:
    """Translate the images of `store` (domain A for 'a2b', B for 'b2a') into the other domain and
    write them as a store at `out` with the same ids and catalog, on the model's pixel grid.

    `model` is a CycleGAN, or a deconvolver: its PSF-free estimate of each object is drawn
    through `target_psf` ((C, h, w) or (h, w) stamp at the store's pixel scale, e.g.
    ``deepfield.physics.gaussian_psf(0.1)``), noiseless. With `resample`, a store on another
    pixel grid is first resampled onto the model's (CycleGAN only).
    """
    store = store if isinstance(store, Store) else open_store(store)
    if has(model, "deconvolve"):
        from deepfield.data.batches import check_model_store
        from deepfield.physics import as_psf, convolve_psf

        if target_psf is None:
            raise InputError("a deconvolver draws each object through the target survey's PSF: pass target_psf "
                             "(--psf-fwhm on the command line)")
        if direction != "a2b" or resample:
            raise InputError("a deconvolver translates its training survey's images (a2b) on their own grid: drop "
                             "--direction b2a / --resample")
        check_model_store(model, store)
        model.eval()
        psf_t = as_psf(target_psf, (1, *store.sample_shape), dtype=torch.float32, name="target PSF")
        return map_store(lambda batch: convolve_psf(model.deconvolve_batch(batch), psf_t), store, out,
                         indices=indices, batch_size=batch_size, description="deconvolving and redrawing",
                         provenance={"task": "translate", "model_class": type(model).__name__,
                                     "target_psf_sum": float(psf_t.sum())},
                         overwrite=overwrite, progress=progress, model=model)
    if not isinstance(model, CycleGAN):
        raise InputError(f"translation needs a CycleGAN or a deconvolver model folder; got a {type(model).__name__}")
    if direction not in ("a2b", "b2a"):
        raise InputError(f"direction {direction!r}: choose a2b or b2a")
    model.eval()
    with tempfile.TemporaryDirectory(prefix="deepfield-translate-") as tmp:
        source = _on_model_grid(model, store, resample, Path(tmp))
        record = getattr(model, "record", {}) or {}
        prov = {"task": "translate", "direction": direction, "model_class": type(model).__name__,
                "model_store_fingerprint": (record.get("store") or {}).get("fingerprint"),
                "resampled_from_pixel_scale": store.pixel_scale if source is not store else None}
        return map_store(lambda x: model.translate(x, direction), source, out, indices=indices, batch_size=batch_size,
                         description=f"translating {direction}", provenance=prov, overwrite=overwrite,
                         progress=progress)


def _centred_psf(psf: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A PSF stamp cut to fit inside an image of `shape` (odd side, centre kept), renormalised."""
    h, w = psf.shape
    side_h, side_w = min(h, shape[0] - (1 - shape[0] % 2)), min(w, shape[1] - (1 - shape[1] % 2))
    top, left = (h - side_h) // 2, (w - side_w) // 2
    cut = psf[top:top + side_h, left:left + side_w]
    return cut / cut.sum()


def deconvolution_baseline(images, psf, target_psf, *, method: str = "wiener", balance: float = 0.05,
                           iterations: int = 30) -> np.ndarray:
    """Deconvolve each image by its own PSF, then convolve with the target PSF.

    Arguments:
        images: (N, C, H, W) source images (counts per pixel).
        psf: (N, C, h, w) or (C, h, w) source PSF stamps (unit sum, pixel-centre sampled).
        target_psf: (N, C, h, w) or (C, h, w) PSF stamps of the target survey, same pixel grid.
        method: 'wiener' (skimage.restoration.wiener with a Laplacian regulariser weighted by
            `balance`) or 'richardson_lucy' (`iterations` steps on the image raised by a constant
            pedestal that makes it positive, as the algorithm assumes non-negative counts; the
            pedestal is subtracted afterwards).

    Returns:
        (N, C, H, W) images as the target survey would see them, without its noise.
    """
    from skimage import restoration

    from deepfield.physics import convolve_psf

    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4:
        raise InputError(f"images must be (N, C, H, W), got shape {x.shape}")
    n, c, h, w = x.shape
    psf = np.broadcast_to(np.asarray(psf, np.float64), (n, c, *np.shape(psf)[-2:]))
    if method not in BASELINES:
        raise InputError(f"baseline {method!r}: choose one of {', '.join(BASELINES)}")
    sharp = np.empty_like(x)
    for i in range(n):
        for b in range(c):
            kernel = _centred_psf(psf[i, b], (h, w))
            if method == "wiener":
                sharp[i, b] = restoration.wiener(x[i, b], kernel, balance, clip=False)
            else:  # on a pedestal: RL needs non-negative data, and clipping the noise at 0 would add flux
                pedestal = max(0.0, -float(x[i, b].min())) + 1e-3 * max(float(np.abs(x[i, b]).max()), 1e-12)
                sharp[i, b] = restoration.richardson_lucy(x[i, b] + pedestal, kernel, num_iter=iterations,
                                                          clip=False) - pedestal
    target = torch.as_tensor(np.asarray(target_psf, dtype=np.float32))
    return convolve_psf(torch.from_numpy(sharp.astype(np.float32)), target).numpy()


def _paired_rows(source: Store, target: Store, rows: np.ndarray) -> np.ndarray:
    ids = source.ids[rows]
    target_rows = target.select(ids=ids)  # sorted by row; reorder to follow `ids`
    order = {int(i): r for i, r in zip(target.ids[target_rows], target_rows)}
    return np.array([order[int(i)] for i in ids], dtype=np.int64)


def _summary(pred: np.ndarray, ref: np.ndarray, ref_hsm: dict, pixel_scale) -> dict:
    from deepfield.metrics import hsm_moments, robust_sigma

    mse = ((pred - ref) ** 2).reshape(len(ref), -1).mean(1)
    flux_p, flux_r = pred.reshape(len(ref), -1).sum(1), ref.reshape(len(ref), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        flux_err = np.where(flux_r > 0, flux_p / flux_r - 1, np.nan)
    hsm = hsm_moments(pred[:, 0], pixel_scale=pixel_scale)
    ok = hsm["hsm_ok"] & ref_hsm["hsm_ok"]
    size_err = np.where(ok, hsm["sigma"] / np.where(ok, ref_hsm["sigma"], 1.0) - 1, np.nan)
    e_err = np.where(ok, hsm["e"] - ref_hsm["e"], np.nan)
    return {"mse": float(mse.mean()), "normalised_mse": float(mse.sum() / (ref**2).reshape(len(ref), -1).mean(1).sum()),
            "flux_bias": float(np.nanmedian(flux_err)), "flux_scatter": robust_sigma(flux_err),
            "size_bias": float(np.nanmedian(size_err)) if ok.any() else float("nan"),
            "size_scatter": robust_sigma(size_err), "ellipticity_scatter": robust_sigma(e_err),
            "hsm_failed": float(1 - ok.mean())}


@torch.no_grad()
def evaluate_translation(model, source, target, *, direction: str = "a2b", indices=None,
                         target_array: str = "clean", baselines=BASELINES, balance: float = 0.05,
                         iterations: int = 30, batch_size: int = 256, progress: bool = True) -> dict:
    """Translations of `source` by a CycleGAN or a deconvolver against the same objects (by id) in `target`.

    Arguments:
        source: the store to translate (domain A for 'a2b'), on the model's grid.
        target: the other survey's store holding the same ids.
        indices: rows of `source` (default all; pass the model's held-out split for a fair test).
        target_array: what a translation should match: 'clean' (the target's noiseless PSF-free
            ``truth`` convolved with its ``psf``: the galaxy as survey B sees it without noise),
            or any array of the target store ('x', 'truth').
        baselines: deconvolution baselines to run (need ``psf`` in both stores).
        balance, iterations: the Wiener regularisation weight / Richardson-Lucy steps.

    Returns:
        {"n": N, "target": target_array, "methods": {name: {"mse" (counts^2/pixel),
        "normalised_mse" (MSE / mean square of the target), "flux_bias", "flux_scatter" (median and
        robust sigma of the fractional total-flux error), "size_bias", "size_scatter" (of the
        fractional HSM sigma error), "ellipticity_scatter" (of |g| differences), "hsm_failed"
        (fraction)}}} for the model ('cyclegan', or 'deconvolver': its PSF-free estimate through the
        target's PSF), each baseline and 'source' (the untranslated image).
    """
    from deepfield.metrics import hsm_moments
    from deepfield.physics import ObservationModel

    deconvolver = has(model, "deconvolve")
    if not (isinstance(model, CycleGAN) or deconvolver):
        raise InputError(f"translation needs a CycleGAN or a deconvolver model folder; got a {type(model).__name__}")
    source = source if isinstance(source, Store) else open_store(source)
    target = target if isinstance(target, Store) else open_store(target)
    if deconvolver:
        if direction != "a2b":
            raise InputError("a deconvolver translates one way (source -> target, 'a2b'): its training store's survey "
                             "to any survey whose PSF the target store holds")
        from deepfield.data.batches import check_model_store

        check_model_store(model, source)  # the source's psf and ivar, which the deconvolver reads
        if not target.has("psf"):
            raise InputError(f"a deconvolver redraws its estimate through the target's 'psf': {target.path} has "
                             f"{list(target.array_names)}")
    else:
        _on_model_grid(model, source, False, Path("."))
    if target.sample_shape != source.sample_shape:
        raise InputError(f"target {target.path} holds {target.sample_shape} images but the source has "
                         f"{source.sample_shape}: put both on one pixel grid")
    if target_array == "clean":
        for name in ("truth", "psf"):
            if not target.has(name):
                raise InputError(f"target_array 'clean' needs the target's noiseless '{name}'; {target.path} has "
                                 f"{list(target.array_names)}: pass target_array='x' to compare with its images")
    elif not target.has(target_array):
        raise InputError(f"target {target.path} has no array {target_array!r}; it has {list(target.array_names)}")
    can_deconvolve = source.has("psf") and target.has("psf")
    baselines = tuple(baselines) if can_deconvolve else ()
    rows = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
    if rows.size == 0:
        raise InputError(f"no objects selected from {source.path}")
    target_rows = _paired_rows(source, target, rows)
    model.eval()
    model_name = "deconvolver" if deconvolver else "cyclegan"
    methods = (model_name, *baselines, "source")
    preds: dict[str, list] = {m: [] for m in methods}
    refs = []
    with progress_bar(progress) as bar:
        task = bar.add_task("evaluating translations", total=rows.size)
        for start in range(0, rows.size, batch_size):
            r, t = rows[start:start + batch_size], target_rows[start:start + batch_size]
            x, psf_r = source.read("x", r), source.read("psf", r) if source.has("psf") else None
            if target_array == "clean":
                ref = ObservationModel("pixel").predict(torch.from_numpy(target.read("truth", t)),
                                                        torch.from_numpy(target.read("psf", t))).numpy()
            else:
                ref = target.read(target_array, t)
            refs.append(ref)
            if deconvolver:
                from deepfield.physics import convolve_psf

                sky = model.deconvolve(torch.from_numpy(x), torch.from_numpy(psf_r),
                                       torch.from_numpy(source.read("ivar", r)))
                preds[model_name].append(convolve_psf(sky, torch.from_numpy(target.read("psf", t))).numpy())
            else:
                preds[model_name].append(model.translate(torch.from_numpy(x), direction).numpy())
            for name in baselines:
                preds[name].append(deconvolution_baseline(x, psf_r, target.read("psf", t),
                                                          method=name, balance=balance, iterations=iterations))
            preds["source"].append(x)
            bar.advance(task, r.size)
    ref = np.concatenate(refs).astype(np.float64)
    ref_hsm = hsm_moments(ref[:, 0], pixel_scale=target.pixel_scale)
    out = {"n": int(rows.size), "target": target_array, "direction": direction,
           "baseline_settings": {"wiener_balance": balance, "richardson_lucy_iterations": iterations},
           "methods": {}}
    for name in methods:
        out["methods"][name] = _summary(np.concatenate(preds[name]).astype(np.float64), ref, ref_hsm,
                                        target.pixel_scale)
    return out
