"""Validate a generative model on galaxy morphology: held-out galaxies vs samples, same telescope.

Model samples are drawn for the held-out objects (with their catalog conditions when the
model or its prior is conditional) and observed through each held-out object's own PSF and
noise, so both sides carry identical observing conditions. Both are measured with HSM
adaptive moments and non-parametric morphology (deepfield.metrics), then compared per
statistic: means with bootstrap errors, the difference in sigmas, and standardised
Wasserstein-1 distances; for conditional models, Spearman correlations between asked and
measured size and magnitude.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from deepfield.data.store import Store, open_store
from deepfield.errors import InputError
from deepfield.models.protocol import has
from deepfield.progress import progress_bar
from deepfield.tasks.apply import resolve_indices

__all__ = ["mean_image_mse", "evaluate_morphology", "STATISTICS", "reconstruction_errors", "noiseless_observation",
           "reconstruct_rows", "condition_names",
           "prior_choices", "samples_beside", "conditional_sweep", "check_observable", "held_out_rows",
           "observed_samples", "ObservedSamples", "prior_label"]

#: the statistics compared (flux as a magnitude: counts have a tail that dominates W1)
STATISTICS = ("magnitude", "sigma_arcsec", "e", "rho4", "gini", "m20", "concentration", "asymmetry")


def _measure(images: np.ndarray, noise_sigma: np.ndarray, pixel_scale: float) -> dict[str, np.ndarray]:
    from deepfield.metrics import morphology

    stats = morphology(images, noise_sigma=noise_sigma, pixel_scale=pixel_scale)
    flux = np.asarray(stats["flux"], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        stats["magnitude"] = np.where(flux > 0, 30.0 - 2.5 * np.log10(flux), np.nan)  # zeropoint 30 (counts)
    return stats


@torch.no_grad()
def evaluate_morphology(model, store, *, split: str = "test", n: int | None = None, seed: int = 0,
                        band: int = 0, priors=("auto", "gaussian"), batch_size: int = 256,
                        measurements: bool = False, progress: bool = False, rows=None) -> dict:
    """Compare held-out galaxies of `store` with samples of `model` observed the same way.

    Returns {"n": N, "band": b, "priors": {prior name: {"rows": compare_samples rows, "spearman":
    {column: rho}}}, "reference": {...}}. "reference" compares two random halves of the held-out
    galaxies with each other (the same rows): the W1 a perfect model would reach with this
    many objects, and the Spearman correlations measured on the real galaxies themselves (the
    ceiling noise and the PSF leave for a conditional model). Conditional accuracy is given
    twice: "spearman" correlates the asked half_light_radius / magnitude with the HSM size and
    flux of the observed samples (noise and PSF included, like the real galaxies), and
    "spearman_noiseless" with the half-light radius and flux of the noiseless, PSF-free samples
    (what the model was asked for; the reference's is measured on the store's truth). With `measurements`, the
    per-object statistics too: out["measurements"] = {"held-out": {...}, prior name: {...}}.
    `rows` (store row indices) replaces the split selection.
    """
    from deepfield.metrics import compare_samples, spearman

    store = store if isinstance(store, Store) else open_store(store)
    check_observable(model, store, "morphology validation")
    rows = held_out_rows(model, store, split=split, n=n, rows=rows)
    if rows.size < 10:
        raise InputError(f"only {rows.size} held-out objects: too few for morphology statistics")
    pixel_scale = store.pixel_scale
    ivar = store.read("ivar", rows)
    sigma = np.sqrt(1.0 / np.where(ivar[:, band] > 0, ivar[:, band], np.inf).mean(axis=(1, 2)).clip(1e-30))
    real = _measure(store.read("x", rows)[:, band], sigma, pixel_scale)
    halves = np.random.default_rng(seed).permutation(rows.size)
    first, second = halves[: rows.size // 2], halves[rows.size // 2:]
    catalog = {c: store.column(c)[rows].astype(np.float32) for c in condition_names(model)}
    chosen = [p for p in priors if p != "auto" or getattr(model, "prior", None) is not None]
    generator = torch.Generator().manual_seed(seed)
    out = {"n": int(rows.size), "band": band, "priors": {}}
    asked = {c: store.column(c)[rows] for c in ("half_light_radius", "magnitude") if c in store.columns}
    out["reference"] = {
        "rows": compare_samples({k: real[k][first] for k in STATISTICS}, {k: real[k][second] for k in STATISTICS},
                                seed=seed),
        "spearman": _spearman(asked, real, spearman)}
    if store.has("truth"):  # the simulator's noiseless, PSF-free galaxies: the ceiling for noiseless samples
        out["reference"]["spearman_noiseless"] = _spearman(
            asked, _intrinsic(store.read("truth", rows)[:, band], pixel_scale), spearman, size="half_light_radius")
    if measurements:
        out["measurements"] = {"held-out": {k: real[k] for k in STATISTICS}}
    with progress_bar(progress) as bar:
        for prior in chosen:
            name = type(model.prior).__name__ if prior == "auto" else "N(0, I)"
            task = bar.add_task(f"sampling ({name} prior)", total=rows.size)
            drawn = observed_samples(model, store, rows, prior=prior, generator=generator, batch_size=batch_size,
                                     advance=lambda k, task=task: bar.advance(task, k))
            samples = _measure(drawn.observed[:, band], sigma, pixel_scale)
            intrinsic = _intrinsic(drawn.sky[:, band], pixel_scale)
            table = compare_samples({k: real[k] for k in STATISTICS}, {k: samples[k] for k in STATISTICS}, seed=seed)
            out["priors"][name] = {"rows": table, "spearman": _spearman(catalog, samples, spearman),
                                   "spearman_noiseless": _spearman(catalog, intrinsic, spearman, size="half_light_radius")}
            if measurements:
                out["measurements"][name] = {k: samples[k] for k in STATISTICS}
    return out


def check_observable(model, store: Store, task: str) -> None:
    """Refuse, naming the fix, a `model` that cannot sample or a `store` without the PSF stamps
    and inverse variance that observe its samples the way the store's galaxies were observed.
    `task` names the caller in the message ('morphology validation', 'the C2ST')."""
    if not has(model, "sample"):
        raise InputError(f"{task} needs a generative model (vae, cvae) whose samples can be observed; "
                         f"got a {type(model).__name__}, which cannot sample: train a vae or cvae")
    for array in ("psf", "ivar"):
        if not store.has(array):
            raise InputError(f"store {store.path} has no {array!r}: for {task} model samples are observed "
                             "through each held-out object's PSF and noise, so the store needs both (simulate "
                             "it, or import it with --psf and --ivar)")


def held_out_rows(model, store: Store, *, split: str | None = "test", n: int | None = None,
                  rows=None) -> np.ndarray:
    """Store rows of the galaxies `model` never trained on: its recorded `split` (None: every
    row), or the given `rows`; the first `n` of them when `n` is given. (M,) int64."""
    rows = (resolve_indices(store, None, split, getattr(model, "record", None)) if rows is None
            else np.asarray(rows, dtype=np.int64))
    return rows if n is None else rows[:n]


class ObservedSamples(NamedTuple):
    """Model samples drawn for some store rows, as :func:`observed_samples` returns them."""

    #: (N, C, H, W) float32, store units: the sky through each row's PSF, plus its noise
    observed: np.ndarray
    #: (N, C, oH, oW) float32, store units: the noiseless, PSF-free sky the model drew
    sky: np.ndarray
    #: (N, C) float64: optimal S/N per band, sqrt(sum(sky * PSF)^2 * ivar), the simulator's `snr`
    snr: np.ndarray


@torch.no_grad()
def observed_samples(model, store: Store, rows, *, generator: torch.Generator, prior="auto",
                     batch_size: int = 256, advance=None) -> ObservedSamples:
    """One sample of `model` per row in `rows` (with that row's catalog conditions when the
    model or its latent prior is conditional), observed through that row's PSF and noise.

    So every sample carries the observing conditions of one held-out galaxy, and any difference
    between the two sets is the model's. `generator` draws the latents and the noise in turn,
    batch by batch (same generator state, same samples); `prior` is ``sample``'s argument
    ('auto': the fitted latent prior if any, 'gaussian': N(0, I)); `advance` (optional) is
    called with the number of objects after each batch.
    """
    from deepfield.physics import ObservationModel

    rows = np.asarray(rows, dtype=np.int64)
    catalog = {c: store.column(c)[rows].astype(np.float32) for c in condition_names(model)}
    observation = ObservationModel("pixel", oversample=getattr(getattr(model, "observation", None), "oversample", 1))
    observed, sky, snr = [], [], []
    for start in range(0, rows.size, batch_size):
        sl = slice(start, start + batch_size)
        cond = {c: torch.from_numpy(v[sl]) for c, v in catalog.items()} or None
        drawn = model.sample(len(rows[sl]), condition=cond, generator=generator, prior=prior)
        psf = torch.from_numpy(store.read("psf", rows[sl]))
        ivar = torch.from_numpy(store.read("ivar", rows[sl]))
        observed.append(observation.observe(drawn, psf, ivar=ivar, generator=generator).numpy())
        sky.append(drawn.numpy())
        snr.append((observation.predict(drawn, psf).double() ** 2 * ivar).sum(dim=(-2, -1)).sqrt().numpy())
        if advance is not None:
            advance(len(rows[sl]))
    return ObservedSamples(np.concatenate(observed), np.concatenate(sky), np.concatenate(snr))


def _intrinsic(images: np.ndarray, pixel_scale: float) -> dict[str, np.ndarray]:
    """Half-light radius (arcsec) and magnitude (zeropoint 30) of noiseless, PSF-free stamps."""
    from deepfield.metrics import half_light_radius

    flux = images.sum(axis=(-2, -1)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        magnitude = np.where(flux > 0, 30.0 - 2.5 * np.log10(flux), np.nan)
    return {"half_light_radius": half_light_radius(images, pixel_scale), "magnitude": magnitude}


def _spearman(catalog: dict, measured: dict, spearman, size: str = "sigma_arcsec") -> dict[str, float]:
    """Rank correlation of asked (catalog) and measured size (`size` statistic) and magnitude."""
    rho = {}
    if "half_light_radius" in catalog:
        rho["half_light_radius"] = spearman(catalog["half_light_radius"], measured[size]).rho
    if "magnitude" in catalog:
        rho["magnitude"] = spearman(catalog["magnitude"], measured["magnitude"]).rho
    return rho


# --------------------------------------------------------------------------------------
# what a report shows, measured here so that the report only draws


@torch.no_grad()
def reconstruction_errors(model, store: Store, rows, *, batch_size: int = 256, codes: bool = False,
                          advance=None, against: str = "data") -> tuple[np.ndarray, np.ndarray | None]:
    """Per-object reconstruction MSE of `model` over rows `rows` of `store`, and their codes.

    The error is the mean over pixels (and bands) of the squared difference in normalised units
    (data / the training set's per-band pixel std, per feature for tables), between a reference
    and the model's reconstruction of the data in the data space (through the PSF for
    observation-model VAEs, with conditions for conditional ones). `against`: 'data' compares
    with the data themselves (the number training's evaluate_mse records); 'noiseless' with the
    simulator's noiseless observation, i.e. its PSF-free ``truth`` convolved with each object's
    ``psf`` (the truth itself in stores without PSFs, e.g. spectra): how much of the signal the
    reconstruction keeps, free of the noise no compressor should keep.

    Returns ((N,) float64 MSE, (N, latent_dim) float64 posterior-mean codes or None without
    `codes`). `advance` (optional) is called with the number of objects after each batch.
    """
    from deepfield.data.batches import iterate_batches

    if against not in ("data", "noiseless"):
        raise InputError(f"against={against!r}: choose 'data' or 'noiseless'")
    if against == "noiseless" and not store.has("truth"):
        raise InputError(f"{store.path} has no 'truth' array: errors against the noiseless observation need a "
                         "simulated store (deepfield simulate ...); use against='data'")
    model.eval()
    errs, zs = [], []
    rows = np.asarray(rows, dtype=np.int64)
    for start, batch in zip(range(0, rows.size, batch_size), iterate_batches(store, rows, model, batch_size)):
        x = model.check_input(batch["x"])
        reference = x if against == "data" else noiseless_observation(store, rows[start:start + batch_size])
        err = (model.normalise(model.reconstruct_batch(batch)) - model.normalise(reference)) ** 2
        errs.append(err.reshape(err.shape[0], -1).double().mean(dim=1).numpy())
        if codes:
            zs.append(model.encode_batch(batch).double().numpy())
        if advance is not None:
            advance(x.shape[0])
    return np.concatenate(errs), np.concatenate(zs) if codes else None


def noiseless_observation(store: Store, rows) -> torch.Tensor:
    """The simulator's noiseless observation of rows `rows` (store units, float32): the PSF-free
    ``truth`` convolved with each object's ``psf``, or the truth where the store has no PSFs."""
    truth = torch.from_numpy(np.ascontiguousarray(store.read("truth", rows), dtype=np.float32))
    if not store.has("psf"):
        return truth
    from deepfield.physics import ObservationModel

    psf = torch.from_numpy(np.ascontiguousarray(store.read("psf", rows), dtype=np.float32))
    return ObservationModel("pixel").predict(truth, psf)


@torch.no_grad()
def reconstruct_rows(model, store: Store, rows) -> np.ndarray:
    """The model's reconstructions of rows `rows` of `store` as observed (store units, float64,
    (len(rows), *sample_shape)), in one batch."""
    from deepfield.data.batches import iterate_batches

    batch = next(iterate_batches(store, np.asarray(rows, dtype=np.int64), model, len(rows)))
    return model.reconstruct_batch(batch).double().numpy()


def condition_names(model) -> list[str]:
    """The catalog columns a generative model's samples are conditioned on: the model's own,
    then its latent prior's."""
    names = list(getattr(model.config, "condition", ()) or ())
    for c in getattr(getattr(model, "prior", None), "data_columns", ()) or ():
        if c not in names:
            names.append(c)
    return names


def prior_label(prior) -> str:
    """The short name of a fitted latent prior object in tables and plots: 'flow', 'GMM'."""
    name = type(prior).__name__
    return {"LatentFlow": "flow", "GaussianMixturePrior": "GMM"}.get(name, name)


def prior_choices(model) -> list[tuple[str, str]]:
    """(``sample``'s prior argument, label) of the latent priors to sample: the fitted prior
    first when there is one ('flow', 'GMM'), then N(0, I)."""
    out = []
    if getattr(model, "prior", None) is not None:
        out.append(("auto", prior_label(model.prior)))
    out.append(("gaussian", "N(0, I)"))
    return out


@torch.no_grad()
def samples_beside(model, store: Store, rows, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Samples drawn for the held-out objects `rows` of an image store (with their conditions),
    observed through each object's own PSF and noise, for each prior of :func:`prior_choices`.

    Returns {"held-out": the objects' images, "LABEL, observed": the samples as observed, one
    entry per prior, "LABEL, no PSF/noise": the first prior's noiseless, PSF-free samples}, each
    (len(rows), C, H, W) in store units. One seeded generator draws the samples and the noise.
    """
    rows = np.asarray(rows, dtype=np.int64)
    priors = prior_choices(model)
    generator = torch.Generator().manual_seed(seed)
    panels = {"held-out": store.read("x", rows)}
    noiseless = None
    for arg, label in priors:
        drawn = observed_samples(model, store, rows, generator=generator, prior=arg, batch_size=max(rows.size, 1))
        noiseless = drawn.sky if noiseless is None else noiseless
        panels[f"{label}, observed"] = drawn.observed
    panels[f"{priors[0][1]}, no PSF/noise"] = noiseless
    return panels


@torch.no_grad()
def conditional_sweep(model, store: Store, rows, column: str, *, n_columns: int = 6, seed: int = 0,
                      percentiles=(5, 27.5, 50, 72.5, 95)) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Noiseless, PSF-free samples with condition `column` at `percentiles` of its values over
    `rows` (one entry "column = value" each, (n_columns, C, H, W) in store units) and the other
    conditions at their medians (returned as the second value, {column: median}). Every entry
    reuses the same latent draws (seed), so only the condition changes between them."""
    names = condition_names(model)
    catalog = {c: store.column(c)[np.asarray(rows, dtype=np.int64)].astype(np.float64) for c in names}
    base = {c: float(np.median(v)) for c, v in catalog.items()}
    panels = {}
    for v in np.percentile(catalog[column], percentiles):
        g = torch.Generator().manual_seed(seed)
        cond = {k: torch.full((n_columns,), float(v if k == column else base[k])) for k in names}
        panels[f"{column} = {v:.3g}"] = model.sample(n_columns, condition=cond, generator=g).numpy()
    return panels, base


def mean_image_mse(model, store, rows: np.ndarray, batch_size: int = 512) -> tuple[float, float | None]:
    """(MSE of predicting every object by the mean image, the noise's share of it), over rows
    `rows` of `store`, in the model's normalised units (so comparable with its reconstruction
    MSE). The noise share is the mean of 1 / ivar / scale**2 when the store has ``ivar``
    (None without): an MSE at that level is all a perfect model can reach."""
    rows = np.asarray(rows, dtype=np.int64)
    total = total_sq = None
    noise = 0.0
    for lo in range(0, rows.size, batch_size):
        idx = rows[lo:lo + batch_size]
        with torch.no_grad():
            x = model.normalise(torch.from_numpy(np.ascontiguousarray(store.read("x", idx), dtype=np.float32)))
        x = x.double().numpy()
        total = x.sum(axis=0) if total is None else total + x.sum(axis=0)
        total_sq = (x**2).sum(axis=0) if total_sq is None else total_sq + (x**2).sum(axis=0)
        if store.kind == "image" and store.has("ivar"):
            ivar = store.read("ivar", idx).astype(np.float64)
            scale = model.data_scale.double().numpy()
            with np.errstate(divide="ignore"):
                variance_of_noise = np.where(ivar > 0, 1.0 / ivar, 0.0) / scale**2  # normalised units
            noise += float(variance_of_noise.reshape(len(idx), -1).mean(axis=1).sum())
    n = rows.size
    variance = total_sq / n - (total / n) ** 2
    has_noise = store.kind == "image" and store.has("ivar")
    return float(variance.mean()), (noise / n if has_noise else None)
