"""Anomaly scores: one interface over every model that can say how odd an object is.

:func:`score_store` runs a model over a store and returns a table keyed by ``id`` with a
``score`` per object (higher = more anomalous), its ``rank`` (1 = most anomalous), the
method's parts, and the catalog's ``anomaly_type``/``anomaly_strength`` when the store has
them (an injected store, :mod:`deepfield.data.anomalies`). Methods:

- ``reconstruction`` (PCA, AE, VAE: any model with ``reconstruct_batch``): the mean squared
  (``norm='l2'``) or absolute (``'l1'``) residual per pixel, in units of the noise sigma
  (``weighting='ivar'``: L2 is then chi^2 per pixel) or of the per-band pixel std (``'none'``);
- ``local`` (the same models, stores with ``ivar``): the most significant ``window`` x ``window``
  patch of the noise-normalised residual, tested both ways, in -log10 of a tail probability:
  ``excess`` (more residual power than the noise: P(chi^2_k > the window's sum of squares)),
  ``quiet`` (less: P(chi^2_k < it), a region without noise, such as a dead readout region) and
  ``missing`` (data below the model: P(N(0, 1) < the window's summed residual / sqrt(k)), light
  gone); the score is the largest of the three. A stamp-wide mean chi^2 dilutes a few bad
  pixels over thousands, and a region with too little in it lowers it: an image with part of
  its signal gone is as odd as one with extra signal, and only a two-sided, local test says so;
- ``elbo`` (VAE): ``-ELBO`` in nats, averaged over posterior samples;
- ``density`` (VAE with a latent flow or GMM prior): ``KL(q(z|x) || p(z))`` in nats, the cost of
  the object's code under the fitted prior, its posterior width included (``code='posterior'``),
  or ``-log p(z)`` of the posterior-mean code (``code='mean'``). The prior is fitted to draws
  from the posteriors, and the posterior mean is not such a draw: when the VAE leaves faint
  galaxies' codes near the origin (inside the shell of 16-d draws, where a flow fitted to them
  puts little density) and puts unfamiliar inputs further out, on that shell, ``-log p(mean)``
  ranks anomalies as more typical than normal galaxies (AUROC 0.43 in the committed benchmark of
  21 Nov.); the KL compares like with like;
- ``pixelcnn`` (PixelCNN): ``-log p(x)`` in nats, via :mod:`deepfield.tasks.compare`;
- ``ratio`` (PixelCNN + background PixelCNN): ``-(log p(x) - log p_background(x))``
  (Ren et al. 2019), via :mod:`deepfield.tasks.compare`;
- ``gan`` (GAN): :mod:`deepfield.tasks.gan_score` (residual + discriminator-feature score).

:func:`ensemble_scores` averages the normalised ranks of several tables (a rank average is
blind to the scores' units, so reconstruction errors and log-likelihoods combine fairly) or
their robust z-scores (which keep how far out the tail lies: what sets a rare anomaly apart
from the top of the bulk), with equal weights or with weights :func:`fit_ensemble` chooses on
a validation store with its own injected anomalies (members near chance get none).
:func:`detection_metrics` gives AUROC, AUPR and precision@k per anomaly type.

Reconstruction errors and likelihoods depend on brightness: a model misfits a bright galaxy by
many noise sigma, so raw scores rank bright normal galaxies among the anomalies. With
``calibrate='magnitude'`` (any catalog column) each score is replaced by its robust z-score
among objects of similar magnitude (:func:`calibrate_scores`); the raw score is kept.

Objects with NaN/inf pixels cannot be scored: :func:`score_store` names them and stops, or
leaves them out with ``skip_nan=True`` (their ids are kept in the table's metadata).

References:
    Ren et al. (2019), Likelihood ratios for out-of-distribution detection, arXiv:1906.02845.
    Schlegl et al. (2017), AnoGAN, arXiv:1703.05921.
    Storey-Fisher et al. (2021), anomaly detection in HSC with GANs, arXiv:2012.08082.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from deepfield._atomic import write_parquet_atomic
from deepfield.data.store import Store, open_store
from deepfield.errors import InputError
from deepfield.models.folder import as_model
from deepfield.models.protocol import has

__all__ = ["METHODS", "COMBINES", "score_store", "ensemble_scores", "fit_ensemble", "calibrate_scores",
           "calibrate_table", "detection_metrics",
           "write_scores", "skipped_ids", "score_metadata", "default_method", "reconstructs",
           "observed_reconstructions"]

METHODS = ("reconstruction", "local", "elbo", "density", "pixelcnn", "ratio", "gan")
_LABEL_COLUMNS = ("anomaly_type", "anomaly_strength")




def reconstructs(model) -> bool:
    """True for models with a reconstruction of the data (PCA, AE, VAE, GAN, PixelCNN's
    one-step-ahead prediction); latent priors have none."""
    return has(model, "reconstruct")


def observed_reconstructions(model, store: Store, rows: np.ndarray) -> np.ndarray | None:
    """Reconstructions as observed (store units, float64, (len(rows), *input_shape)) of the
    objects `rows` of `store`: a GAN's best-matching G(z), another model's ``reconstruct_batch``
    (a PixelCNN's one-step-ahead prediction), or None for models without one (latent priors)."""
    from deepfield.data.batches import iterate_batches

    rows = np.asarray(rows, dtype=np.int64)
    batch = next(iterate_batches(store, rows, model, rows.size))
    if has(model, "adversarial") and has(model, "encode"):
        from deepfield.tasks.gan_score import gan_anomaly_scores

        return gan_anomaly_scores(model, batch)["reconstruction"].double().numpy()
    if reconstructs(model):
        with torch.no_grad():
            return model.reconstruct_batch(batch).double().numpy()
    return None


def default_method(model) -> str:
    """The natural score of a model, read from its capabilities: an exact likelihood
    ('pixelcnn'), the adversarial critic ('gan'), the ELBO ('elbo'), else 'reconstruction'."""
    if has(model, "log_prob") and reconstructs(model):
        return "pixelcnn"
    if has(model, "adversarial") and has(model, "encode"):
        return "gan"
    if has(model, "elbo"):
        return "elbo"
    return "reconstruction"


def _nonfinite_ids(store: Store, idx: np.ndarray, arrays: Sequence[str], chunk: int = 4096) -> np.ndarray:
    """Ids of the objects `idx` with a NaN/inf value in any of `arrays`."""
    bad = []
    for name in dict.fromkeys(arrays):
        if not store.has(name) or name in store.shared_arrays:
            continue
        for start in range(0, idx.size, chunk):
            rows = idx[start:start + chunk]
            values = store.read(name, rows)
            if values.dtype.kind != "f":
                break
            flags = ~np.isfinite(values.reshape(rows.size, -1)).all(axis=1)
            bad.append(rows[flags])
    rows = np.unique(np.concatenate(bad)) if bad else np.zeros(0, np.int64)
    return store.ids[rows]


def _batches(store: Store, idx: np.ndarray, model, batch_size: int, arrays=(), columns=()):
    """Batches the model reads (x, its arrays, its columns), plus `arrays` and `columns`."""
    from deepfield.data.batches import iterate_batches

    for start in range(0, idx.size, batch_size):
        rows = idx[start:start + batch_size]
        batch = next(iterate_batches(store, rows, model, rows.size))
        for name in arrays:
            if name not in batch and store.has(name):
                batch[name] = torch.from_numpy(np.ascontiguousarray(store.read(name, rows), dtype=np.float32))
        for name in columns:
            if name not in batch:
                batch[name] = torch.from_numpy(store.column(name)[rows].astype(np.float32))
        yield rows, batch


def _reconstruction(model, store, idx, batch_size, bar, task, norm: str, weighting: str) -> dict:
    if not reconstructs(model):
        raise InputError(f"the reconstruction score needs a model that reconstructs (PCA, AE, VAE); "
                         f"{type(model).__name__} does not: use --method {default_method(model)}")
    if norm not in ("l1", "l2"):
        raise InputError(f"norm {norm!r}: choose 'l2' (squared residuals) or 'l1' (absolute residuals)")
    if weighting == "auto":
        weighting = "ivar" if store.has("ivar") else "none"
    if weighting not in ("ivar", "none"):
        raise InputError(f"weighting {weighting!r}: choose 'ivar' (residual / noise sigma), 'none' (residual / "
                         "pixel std) or 'auto' (ivar when the store has it)")
    if weighting == "ivar" and not store.has("ivar"):
        raise InputError(f"store {store.path} has no 'ivar' array to weight residuals by: use weighting 'none'")
    extra = ("ivar",) if weighting == "ivar" else ()
    extra += ("mask",) if store.has("mask") else ()
    scores = []
    for rows, batch in _batches(store, idx, model, batch_size, arrays=extra):
        x = model.check_input(batch["x"])
        residual = x - model.reconstruct_batch(batch)
        if weighting == "ivar":
            ivar = batch["ivar"].to(x)
            used = ivar > 0
            residual = residual * ivar.clamp_min(0).sqrt()
        else:
            residual = residual / model.data_scale
            used = torch.ones_like(residual, dtype=torch.bool)
        if "mask" in batch:
            used = used & ~batch["mask"].bool()
        r = residual.abs() if norm == "l1" else residual.square()
        r = torch.where(used, r, torch.zeros((), dtype=r.dtype))
        scores.append((r.flatten(1).sum(1) / used.flatten(1).sum(1).clamp_min(1)).double().numpy())
        bar.advance(task, rows.size)
    return {"score": np.concatenate(scores)}


def _chi2_log_sf(x: np.ndarray, dof: float) -> np.ndarray:
    """log P(chi^2_dof > x), finite far in the tail where scipy's underflows to -inf (x >~ 1e4): there
    the leading term of the upper incomplete gamma function, (x/2)^(k/2-1) e^(-x/2) / Gamma(k/2)."""
    from scipy.special import gammaln
    from scipy.stats import chi2

    out = chi2.logsf(x, dof)
    far = ~np.isfinite(out)
    out[far] = (0.5 * dof - 1) * np.log(0.5 * x[far]) - 0.5 * x[far] - gammaln(0.5 * dof)
    return out


def _local(model, store, idx, batch_size, bar, task, window: int) -> dict:
    from scipy.stats import chi2, norm

    if not reconstructs(model):
        raise InputError(f"the local score needs a model that reconstructs (PCA, AE, VAE); "
                         f"{type(model).__name__} does not: use --method {default_method(model)}")
    if not store.has("ivar"):
        raise InputError(f"the local score tests residuals against the noise, and store {store.path} has no 'ivar' "
                         "array: add the inverse variances, or use --method reconstruction --weighting none")
    h, w = model.input_shape[-2:]
    if not 1 <= window <= min(h, w):
        raise InputError(f"window {window}: give a window side between 1 and the stamp's {min(h, w)} pixels")
    extra = ("ivar",) + (("mask",) if store.has("mask") else ())
    ln10 = math.log(10.0)
    area = window * window
    parts = {"excess": [], "quiet": [], "missing": []}
    for rows, batch in _batches(store, idx, model, batch_size, arrays=extra):
        x = model.check_input(batch["x"])
        ivar = batch["ivar"].to(x)
        used = ivar > 0
        if "mask" in batch:
            used = used & ~batch["mask"].bool()
        residual = (x - model.reconstruct_batch(batch)) * ivar.clamp_min(0).sqrt()
        residual = torch.where(used, residual, torch.zeros((), dtype=residual.dtype)).double()
        n, total, squares = (torch.nn.functional.avg_pool2d(v, window, stride=1).numpy().reshape(rows.size, -1) * area
                             for v in (used.double(), residual, residual.square()))
        n = np.rint(n)  # a pixel count (the pooled mean times the area is one only to rounding)
        ok = n >= 0.5 * area  # windows mostly of valid pixels
        # the tail probabilities are monotone in the window sums at a given number of pixels, so each
        # object's extreme windows are found first and only they are evaluated (scipy's chi^2 tails cost
        # ~1 us each: 13M windows for 5,000 32x32x3 stamps)
        too_much, too_little, missing = (np.zeros(rows.size) for _ in range(3))
        for dof in np.unique(n[ok]):
            here = ok & (n == dof)
            if not here.any():
                continue
            has = here.any(1)
            high = np.where(here, squares, -np.inf).max(1)[has]
            low = np.maximum(np.where(here, squares, np.inf).min(1)[has], 1e-12 * dof)  # exact zeros: log P = -inf
            lowest = np.where(here, total, np.inf).min(1)[has]
            too_much[has] = np.maximum(too_much[has], -_chi2_log_sf(high, dof))  # more residual power than noise
            too_little[has] = np.maximum(too_little[has], -chi2.logcdf(low, dof))  # less: a region without noise
            missing[has] = np.maximum(missing[has], -norm.logcdf(lowest / np.sqrt(dof)))  # data below the model
        for name, values in zip(parts, (too_much, too_little, missing)):
            parts[name].append(values / ln10)
        bar.advance(task, rows.size)
    parts = {name: np.concatenate(values) for name, values in parts.items()}
    return {"score": np.maximum.reduce(list(parts.values())), **parts}


def _elbo(model, store, idx, batch_size, bar, task, samples: int, seed: int) -> dict:
    if not has(model, "elbo"):
        raise InputError(f"the elbo score needs a VAE; {type(model).__name__} has no ELBO: use --method "
                         f"{default_method(model)}")
    if samples < 1:
        raise InputError(f"samples={samples}: average the ELBO over at least one posterior sample")
    nll, kl = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for rows, batch in _batches(store, idx, model, batch_size):
            terms = [model.elbo_terms(batch, sample=True) for _ in range(samples)]
            nll.append(torch.stack([t.nll for t in terms]).mean(0).double().numpy())
            kl.append(torch.stack([t.kl for t in terms]).mean(0).double().numpy())
            bar.advance(task, rows.size)
    nll, kl = np.concatenate(nll), np.concatenate(kl)
    return {"score": nll + kl, "nll": nll, "kl": kl}


def _density(model, store, idx, batch_size, bar, task, code: str, samples: int, seed: int) -> dict:
    prior = getattr(model, "prior", None)
    if not (has(model, "encode") and has(model, "elbo")):
        raise InputError(f"the density score needs a VAE with a latent prior; {type(model).__name__} has no "
                         f"posterior: use --method {default_method(model)}")
    if prior is None:
        raise InputError("the density score needs the VAE's latent prior, and this VAE has none: fit one with "
                         "`deepfield train flow --model VAE_DIR` (or gmm), or use --method elbo")
    if code not in ("posterior", "mean"):
        raise InputError(f"code {code!r}: score the density of the whole 'posterior' (KL(q || prior)) or of its "
                         "'mean' (-log p at the posterior mean)")
    if samples < 1:
        raise InputError(f"samples={samples}: average the prior's log-density over at least one posterior draw")
    fitted, standard = getattr(prior, "held_out_log_prob", (None, None))
    if fitted is not None and standard is not None and not fitted > standard:
        warnings.warn(f"the latent prior scored held-out codes at {fitted:.2f} nats per object, worse than N(0, I) at "
                      f"{standard:.2f}: its density ranks codes no better than their distance from the origin. Refit "
                      "it (deepfield train prior --model VAE_DIR --epochs N)", stacklevel=3)
    columns = tuple(prior.data_columns)
    for name in columns:
        store.column(name)  # names the missing column and the ones there are
    log_p_mean, cross_entropy, entropy = [], [], []
    generator = torch.Generator().manual_seed(seed)
    for rows, batch in _batches(store, idx, model, batch_size, columns=columns):
        mean, log_var, _ = model.posterior_batch(batch)
        condition = batch if columns else None
        log_p_mean.append(prior.log_prob(mean, condition=condition).double().numpy())
        if code == "posterior":
            std = (0.5 * log_var).exp()
            draws = [prior.log_prob(mean + std * torch.randn(mean.shape, generator=generator, dtype=mean.dtype),
                                    condition=condition) for _ in range(samples)]
            cross_entropy.append(-torch.stack(draws).mean(0).double().numpy())
            entropy.append((0.5 * (math.log(2 * math.pi) + 1.0) + 0.5 * log_var).sum(1).double().numpy())
        bar.advance(task, rows.size)
    parts = {"log_prob_mean": np.concatenate(log_p_mean)}
    if code == "mean":
        return {"score": -parts["log_prob_mean"], **parts}
    cross_entropy, entropy = np.concatenate(cross_entropy), np.concatenate(entropy)
    return {"score": cross_entropy - entropy, "cross_entropy": cross_entropy, "entropy": entropy, **parts}


def _ids_values(out, what: str) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(out, tuple) and len(out) == 2):
        raise InputError(f"{what} returned {type(out).__name__}, expected (ids, values)")
    return np.asarray(out[0], dtype=np.int64), np.asarray(out[1], dtype=np.float64)


def _pixelcnn(model, store, idx, batch_size, progress) -> dict:
    from deepfield.tasks import compare

    if not (has(model, "log_prob") and reconstructs(model)):
        raise InputError(f"the pixelcnn score needs a PixelCNN (an exact log p(x)); got a {type(model).__name__}: "
                         f"use --method {default_method(model)}")
    ids, log_p = _ids_values(compare.log_likelihood_store(model, store, indices=idx, batch_size=batch_size,
                                                          progress=progress), "log_likelihood_store")
    n_dims = float(np.prod(store.sample_shape))
    return {"id": ids, "score": -log_p, "log_prob": log_p, "bits_per_dim": -log_p / (n_dims * math.log(2))}


def _ratio(model, background, store, idx, batch_size, progress) -> dict:
    from deepfield.tasks import compare

    if background is None:
        raise InputError("the likelihood-ratio score needs a background model (a PixelCNN trained on perturbed "
                         "data): pass background= (--background DIR)")
    for m, role in ((model, "model"), (background, "background")):
        if not (has(m, "log_prob") and reconstructs(m)):
            raise InputError(f"the ratio score needs PixelCNNs; the {role} is a {type(m).__name__}")
    ids, llr = _ids_values(compare.likelihood_ratio_store(model, background, store, indices=idx,
                                                          batch_size=batch_size, progress=progress),
                           "likelihood_ratio_store")
    return {"id": ids, "score": -llr, "log_likelihood_ratio": llr}


def _gan(model, store, idx, batch_size, progress) -> dict:
    from deepfield.tasks import gan_score

    if not (has(model, "adversarial") and has(model, "encode")):
        raise InputError(f"the gan score needs a GAN model folder; got a {type(model).__name__}: use --method "
                         f"{default_method(model)}")
    out = dict(gan_score.gan_score_store(model, store, indices=idx, batch_size=batch_size, progress=progress))
    ids = out.pop("id", None)
    ids = out.pop("ids", None) if ids is None else ids
    if ids is None or "score" not in out:
        raise InputError(f"gan_score_store returned keys {sorted(out)}; expected 'id(s)' and 'score'")
    n = len(ids)
    parts = {k: np.asarray(v, dtype=np.float64) for k, v in out.items()
             if np.ndim(v) == 1 and len(v) == n and np.asarray(v).dtype.kind in "iuf"}
    return {"id": np.asarray(ids, dtype=np.int64), **parts}


def score_store(store: Store | str | os.PathLike, method: str, model=None, *, background=None, indices=None,
                batch_size: int = 256, skip_nan: bool = False, progress: bool = True, norm: str = "l2",
                weighting: str = "auto", samples: int | None = None, seed: int = 0, calibrate: str | None = None,
                window: int = 4, code: str = "posterior") -> pa.Table:
    """Anomaly scores of the objects of `store` (higher = more anomalous), keyed by id.

    Arguments:
        store: the store to score (path or Store).
        method: one of :data:`METHODS` (module docstring).
        model: the model (or its folder); background: the ratio method's background model.
        indices: rows to score (default all).
        batch_size: objects per forward pass.
        skip_nan: leave out objects with NaN/inf pixels instead of stopping (ids in the metadata).
        progress: show a progress bar.
        norm: reconstruction: 'l2' (mean squared residual) or 'l1' (mean absolute residual).
        weighting: reconstruction: 'ivar' (residual x sqrt(ivar), so L2 is chi^2 per pixel),
            'none' (residual / per-band pixel std, the training MSE's units) or 'auto'.
        samples, seed: elbo, density: posterior draws per object (default 4 for the ELBO, a decoder
            pass each; 32 for the density, a pass of the prior on the codes), and their seed (same
            seed, same scores).
        code: density: 'posterior' (KL(q(z|x) || prior) in nats: the code's cost under the prior,
            for the whole posterior) or 'mean' (-log prior(posterior mean)).
        window: local: the side (pixels) of the square windows the residual is tested in.
        calibrate: a numeric catalog column (e.g. 'magnitude'): the score becomes the robust
            z-score among objects of similar values (:func:`calibrate_scores`); ``raw_score``
            keeps the uncalibrated one.

    Returns:
        A pyarrow Table with ``id``, ``score``, ``rank`` and the method's parts (e.g. ``nll``,
        ``kl``), plus ``anomaly_type``/``anomaly_strength`` when the catalog has them; schema
        metadata records the method, options, model and store fingerprint, and skipped ids.
    """
    from deepfield.progress import progress_bar
    from deepfield.data.batches import check_model_store

    if method not in METHODS:
        raise InputError(f"method {method!r}: choose one of {', '.join(METHODS)} (or ensemble_scores for a "
                         "rank average)")
    store = store if isinstance(store, Store) else open_store(store)
    model_path = "" if model is None or isinstance(model, torch.nn.Module) else str(model)
    model, background = as_model(model), as_model(background)
    if model is None:
        raise InputError(f"the {method} score needs a model (--model DIR)")
    model.eval()
    if background is not None:
        background.eval()
    check_model_store(model, store)
    if calibrate is not None and calibrate not in store.columns:
        store.column(calibrate)  # raises, naming the columns there are
    idx = np.arange(len(store)) if indices is None else np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        raise InputError(f"no objects selected from {store.path}")
    from deepfield.data.batches import model_arrays

    arrays = model_arrays(model, store)
    if (method == "reconstruction" and store.has("ivar") and weighting in ("auto", "ivar")) or method == "local":
        arrays += ("ivar",)
    bad = _nonfinite_ids(store, idx, arrays)
    if bad.size and not skip_nan:
        shown = ", ".join(map(str, bad[:20].tolist())) + (" ..." if bad.size > 20 else "")
        raise InputError(f"{bad.size} object(s) of {store.path} have NaN/inf values in {'/'.join(arrays)}, ids: "
                         f"{shown}. Clean or drop them, or pass skip_nan=True (--skip-nan) to score the others")
    if bad.size:
        idx = idx[~np.isin(store.ids[idx], bad)]
        if idx.size == 0:
            raise InputError(f"every selected object of {store.path} has NaN/inf values; nothing to score")
    options: dict = {}
    with torch.no_grad(), progress_bar(progress and method in ("reconstruction", "local", "elbo", "density")) as bar:
        task = bar.add_task(f"scoring ({method})", total=idx.size)
        if method == "reconstruction":
            options = {"norm": norm, "weighting": weighting if weighting != "auto" else
                       ("ivar" if store.has("ivar") else "none")}
            parts = _reconstruction(model, store, idx, batch_size, bar, task, norm, weighting)
        elif method == "local":
            options = {"window": window}
            parts = _local(model, store, idx, batch_size, bar, task, window)
        elif method == "elbo":
            samples = 4 if samples is None else samples
            options = {"samples": samples, "seed": seed}
            parts = _elbo(model, store, idx, batch_size, bar, task, samples, seed)
        elif method == "density":
            samples = 32 if samples is None else samples
            options = {"code": code, **({"samples": samples, "seed": seed} if code == "posterior" else {})}
            parts = _density(model, store, idx, batch_size, bar, task, code, samples, seed)
        elif method == "pixelcnn":
            parts = _pixelcnn(model, store, idx, batch_size, progress)
        elif method == "ratio":
            parts = _ratio(model, background, store, idx, batch_size, progress)
        else:
            parts = _gan(model, store, idx, batch_size, progress)
    ids = parts.pop("id", store.ids[idx])
    rows = idx
    if not np.array_equal(ids, store.ids[idx]):  # a delegate may return its own order
        position = {int(i): r for i, r in zip(store.ids, range(len(store)))}
        rows = np.array([position[int(i)] for i in ids], dtype=np.int64)
    metadata = {"method": method, "options": options, "model_class": type(model).__name__,
                "model_path": model_path, "store": str(store.path),
                "store_fingerprint": store.fingerprint, "skipped_ids": bad.tolist()}
    table = _table(ids, parts, store, rows, metadata)
    return table if calibrate is None else calibrate_table(table, store, calibrate)


def calibrate_table(table: pa.Table, store: Store | str | os.PathLike, column: str) -> pa.Table:
    """A score table with its scores calibrated against the catalog `column` of the scored store
    (:func:`calibrate_scores`); the uncalibrated scores move to ``raw_score``."""
    store = store if isinstance(store, Store) else open_store(store)
    if "raw_score" in table.column_names:
        raise InputError(f"this score table is already calibrated (against "
                         f"{score_metadata(table).get('options', {}).get('calibrate')!r})")
    values = store.column(column)  # names the columns there are when it is missing
    if values.dtype.kind not in "iuf":
        raise InputError(f"calibrate={column!r}: the column holds {values.dtype} values; calibrate against a "
                         "numeric column such as magnitude")
    ids = table.column("id").to_numpy()
    position = dict(zip(store.ids.tolist(), range(len(store))))
    missing = [int(i) for i in ids if int(i) not in position]
    if missing:
        raise InputError(f"ids {missing[:10]} of the score table are not in {store.path}: pass the store that was "
                         "scored")
    rows = np.array([position[int(i)] for i in ids], dtype=np.int64)
    covariate = values[rows].astype(np.float64)
    if not np.isfinite(covariate).all():
        raise InputError(f"calibrate={column!r}: the column is NaN/inf for ids "
                         f"{ids[~np.isfinite(covariate)][:10].tolist()}; choose another column or fill them")
    parts = {name: table.column(name).to_numpy() for name in table.column_names
             if name not in ("id", "rank", *_LABEL_COLUMNS)}
    parts["raw_score"] = parts["score"]
    parts["score"] = calibrate_scores(parts["score"], covariate)
    metadata = score_metadata(table)
    metadata["options"] = {**metadata.get("options", {}), "calibrate": column}
    labelled = store if any(name in table.column_names for name in _LABEL_COLUMNS) else None
    return _table(ids, parts, labelled, rows, metadata)


def calibrate_scores(score: np.ndarray, covariate: np.ndarray, per_bin: int | None = None) -> np.ndarray:
    """Robust z-scores of `score` among objects of similar `covariate` (e.g. magnitude).

    The objects are sorted by the covariate into equal-count bins (`per_bin` objects, default
    N / 20 between 50 and 250). The bins' median log(score) (the score itself when some are
    <= 0), interpolated linearly in the covariate between the bins' median values (and
    extrapolated beyond the end bins), is the trend; 1.4826 x the median absolute deviation
    about it in each bin, interpolated the same way, is the spread; the z-score is the distance
    from the trend in units of the spread. Anomalies being rare, trend and spread are those of
    normal objects, so a bright galaxy's larger misfit no longer outranks a faint galaxy's
    artefact.
    """
    score = np.asarray(score, dtype=np.float64)
    covariate = np.asarray(covariate, dtype=np.float64)
    if score.shape != covariate.shape:
        raise InputError(f"{score.size} scores but {covariate.size} covariate values")
    values = np.log(score) if (score > 0).all() else score
    n = values.size
    per_bin = per_bin or int(np.clip(n // 20, 50, 250))
    groups = np.array_split(np.argsort(covariate, kind="stable"), max(1, n // per_bin))
    centre = np.array([np.median(covariate[g]) for g in groups])
    trend = _interpolate(covariate, centre, np.array([np.median(values[g]) for g in groups]))
    residual = values - trend
    mad = np.array([1.4826 * np.median(np.abs(residual[g] - np.median(residual[g]))) for g in groups])
    spread = np.interp(covariate, centre, mad)
    return residual / np.maximum(spread, max(float(np.median(mad)) * 1e-3, 1e-12))


def _interpolate(x: np.ndarray, nodes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Piecewise-linear through (nodes, values), extended linearly beyond the end nodes."""
    if nodes.size < 2 or nodes[0] == nodes[-1]:
        return np.full_like(x, values.mean())
    out = np.interp(x, nodes, values)
    lo, hi = x < nodes[0], x > nodes[-1]
    if nodes[1] > nodes[0]:
        out[lo] = values[0] + (x[lo] - nodes[0]) * (values[1] - values[0]) / (nodes[1] - nodes[0])
    if nodes[-1] > nodes[-2]:
        out[hi] = values[-1] + (x[hi] - nodes[-1]) * (values[-1] - values[-2]) / (nodes[-1] - nodes[-2])
    return out


def _table(ids: np.ndarray, parts: Mapping[str, np.ndarray], store: Store | None, rows, metadata: dict) -> pa.Table:
    score = np.asarray(parts["score"], dtype=np.float64)
    if np.isnan(score).any():
        raise InputError(f"the {metadata.get('method')} score is NaN for ids "
                         f"{np.asarray(ids)[np.isnan(score)][:10].tolist()}; check the model and those objects")
    order = np.argsort(-score, kind="stable")
    rank = np.empty(score.size, dtype=np.int64)
    rank[order] = np.arange(1, score.size + 1)
    columns = {"id": pa.array(np.asarray(ids, dtype=np.int64)), "score": pa.array(score), "rank": pa.array(rank)}
    for name, values in parts.items():
        if name != "score":
            columns[name] = pa.array(np.asarray(values, dtype=np.float64))
    if store is not None:
        for name in _LABEL_COLUMNS:
            if name in store.columns:
                columns[name] = pa.array(store.column(name)[rows])
    table = pa.table(columns)
    return table.replace_schema_metadata({b"deepfield": json.dumps(metadata).encode()})


def score_metadata(table: pa.Table) -> dict:
    """The record a score table carries: method, options, model, store fingerprint, skipped ids."""
    raw = (table.schema.metadata or {}).get(b"deepfield")
    return json.loads(raw) if raw else {}


def skipped_ids(table: pa.Table) -> list[int]:
    """Ids left out of a score table because of NaN/inf pixels (``skip_nan=True``)."""
    return list(score_metadata(table).get("skipped_ids", []))


def _named(tables) -> tuple[list[str], list[pa.Table]]:
    """(names, tables) of a mapping, or of a sequence named by each table's method."""
    if isinstance(tables, Mapping):
        return list(tables), list(tables.values())
    tables = list(tables)
    names = []
    for t in tables:
        base = score_metadata(t).get("method", "score")
        name, k = base, 2
        while name in names:
            name, k = f"{base}{k}", k + 1
        names.append(name)
    return names, tables


def _member_values(score: np.ndarray, combine: str) -> np.ndarray:
    """One member's scores on the ensemble's common scale (higher = more anomalous)."""
    from scipy.stats import rankdata

    if combine == "rank":
        return rankdata(score, method="average") / score.size
    # robust z-score: the median and MAD are those of normal objects (anomalies are rare), and unlike a rank
    # it keeps how far out the tail lies, which is what separates a rare anomaly from the top of the bulk
    values = np.log(score) if (score > 0).all() else score
    centre = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - centre))
    spread = mad if mad > 0 else (np.std(values) or 1.0)
    return (values - centre) / spread


COMBINES = ("rank", "zscore")


def ensemble_scores(tables: Sequence[pa.Table] | Mapping[str, pa.Table], weights: Mapping[str, float] | None = None,
                    combine: str = "rank") -> pa.Table:
    """Ensemble of score tables: each member's scores are put on a common scale, and the
    ensemble score is their weighted mean.

    Arguments:
        tables: score tables, a mapping {name: table} or a sequence (named by their methods).
        weights: {name: weight >= 0} (default equal weights); members of weight 0 are left
            out. :func:`fit_ensemble` chooses them on a validation store with its own injected
            anomalies.
        combine: 'rank': normalised ranks (1/n lowest ... 1 highest, ties share their mean
            rank), blind to the scores' units; 'zscore': robust z-scores, (s - median) /
            (1.4826 MAD), of log(s) when every s > 0, which keep how far out the tail lies.

    Objects missing from any table (e.g. skipped there) are left out. Returns a score table
    with ``id``, ``score``, ``rank``, one ``rank_<name>`` (or ``z_<name>``) column per member,
    and the labels; its metadata records the members, weights and combine rule.
    """
    if combine not in COMBINES:
        raise InputError(f"combine {combine!r}: choose 'rank' (rank average) or 'zscore' (mean robust z-score)")
    names, tables = _named(tables)
    if len(tables) < 2:
        raise InputError(f"an ensemble needs two or more score tables, got {len(tables)}")
    if weights is not None:
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise InputError(f"weights for {unknown}, which are not among the members {names}")
        bad = {k: v for k, v in weights.items() if not (np.isfinite(v) and v >= 0)}
        if bad or not sum(weights.values()) > 0:
            raise InputError(f"ensemble weights must be finite, >= 0 and not all 0; got {dict(weights)}")
    w = {n: float(1.0 if weights is None else weights.get(n, 0.0)) for n in names}
    kept = [(n, t) for n, t in zip(names, tables) if w[n] > 0]
    common = kept[0][1].column("id").to_numpy()
    for _, t in kept[1:]:
        common = common[np.isin(common, t.column("id").to_numpy())]
    if common.size == 0:
        raise InputError("the score tables share no ids: score the same store with each model")
    prefix = "rank" if combine == "rank" else "z"
    columns = {}
    for name, t in kept:
        ids = t.column("id").to_numpy()
        score = t.column("score").to_numpy()
        lookup = dict(zip(ids.tolist(), range(ids.size)))
        columns[f"{prefix}_{name}"] = _member_values(score[[lookup[int(i)] for i in common]], combine)
    total = sum(w[n] for n, _ in kept)
    parts = {"score": sum(w[n] * columns[f"{prefix}_{n}"] for n, _ in kept) / total, **columns}
    table = _table(common, parts, None, None, {"method": "ensemble", "members": [n for n, _ in kept],
                                               "weights": {n: w[n] / total for n, _ in kept}, "combine": combine,
                                               "member_metadata": [score_metadata(t) for _, t in kept],
                                               "skipped_ids": sorted({i for _, t in kept for i in skipped_ids(t)})})
    for name in _LABEL_COLUMNS:
        source = next((t for _, t in kept if name in t.column_names), None)
        if source is not None:
            lookup = dict(zip(source.column("id").to_numpy().tolist(), range(source.num_rows)))
            table = table.append_column(name, source.column(name).take(pa.array([lookup[int(i)] for i in common])))
    return table


def fit_ensemble(tables: Sequence[pa.Table] | Mapping[str, pa.Table], metric: str = "aupr", group: str = "all",
                 combine: str = "zscore", rounds: int = 10, k: int = 100) -> dict[str, float]:
    """Ensemble weights chosen on a validation store with its own injected anomalies.

    Greedy forward selection with replacement (Caruana et al. 2004): start from the member
    with the best `metric` on `group` (a :func:`detection_metrics` group: 'all', 'artefacts',
    an anomaly type, ...), then, for up to `rounds` rounds, add the member (again, if it is
    already in) whose extra unit of weight raises the metric most; stop when none raises it.
    The weights are the counts, normalised to sum 1; a member never added gets 0. So on the
    validation store the ensemble scores at least as well as its best member; on another
    store it does as long as the validation injections stand for the anomalies there. Score
    the test store apart: weights fitted on the test store's own labels would flatter it.

    Arguments:
        tables: the members' score tables on the validation store (with anomaly_type labels).
        metric: 'aupr' (average precision: the rare-anomaly metric), 'auroc' or 'precision'
            (precision among the top `k`).
        combine: the :func:`ensemble_scores` rule the weights are for.

    Returns:
        {name: weight}, for :func:`ensemble_scores` (`weights=`) on the test store's tables.
    """
    keys = {"aupr": "aupr", "auroc": "auroc", "precision": "precision_at_k"}
    if metric not in keys:
        raise InputError(f"metric {metric!r}: choose aupr, auroc or precision")
    if rounds < 1:
        raise InputError(f"rounds={rounds}: give at least one round of selection")
    names, tables = _named(tables)
    if len(tables) < 2:
        raise InputError(f"an ensemble needs two or more score tables, got {len(tables)}")

    def value(counts: dict[str, int]) -> float:
        if sum(counts.values()) == 1:  # a single member: its own ranking (any rule keeps the order)
            table = dict(zip(names, tables))[next(n for n, c in counts.items() if c)]
        else:
            table = ensemble_scores(dict(zip(names, tables)), weights=counts, combine=combine)
        metrics = detection_metrics(table, k=k)
        if group not in metrics:
            raise InputError(f"group {group!r} has no anomalies in the validation tables; choose one of "
                             f"{sorted(metrics)}")
        return metrics[group][keys[metric]]

    single = {n: value({m: int(m == n) for m in names}) for n in names}
    best_name = max(names, key=lambda n: single[n])
    counts, best = {n: int(n == best_name) for n in names}, single[best_name]
    for _ in range(rounds):
        trials = {n: value({**counts, n: counts[n] + 1}) for n in names}
        name = max(names, key=lambda n: trials[n])
        if not trials[name] > best:
            break
        counts[name] += 1
        best = trials[name]
    total = sum(counts.values())
    return {n: counts[n] / total for n in names}


def detection_metrics(table: pa.Table, score: str = "score", k: int = 100) -> dict[str, dict]:
    """How well `score` separates each anomaly type from normal objects (``anomaly_type == 'none'``).

    For each type (and the groups 'artefacts', 'oddities' and 'all'): ``n`` positives, ``auroc``,
    ``aupr`` (average precision), ``precision_at_k`` (positives among the top k of positives +
    normal objects) and ``precision_ceiling`` = min(1, n / k), the best possible value.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    from deepfield.data.anomalies import ARTEFACTS, ODDITIES

    if "anomaly_type" not in table.column_names:
        raise InputError("the score table has no anomaly_type column: score a store with injected anomalies "
                         "(deepfield inject) to measure detection")
    labels = np.asarray(table.column("anomaly_type").to_pylist(), dtype=object)
    values = table.column(score).to_numpy().astype(np.float64)
    normal = labels == "none"
    if not normal.any():
        raise InputError("the score table has no normal objects (anomaly_type 'none') to compare with")
    present = [t for t in dict.fromkeys(labels.tolist()) if t != "none"]
    groups = {t: labels == t for t in sorted(present)}
    groups["artefacts"] = np.isin(labels, ARTEFACTS)
    groups["oddities"] = np.isin(labels, ODDITIES)
    groups["all"] = ~normal
    out = {}
    for name, positive in groups.items():
        n = int(positive.sum())
        if n == 0:
            continue
        sel = positive | normal
        y, s = positive[sel].astype(int), values[sel]
        top = np.argsort(-s, kind="stable")[:k]
        out[name] = {"n": n, "auroc": float(roc_auc_score(y, s)), "aupr": float(average_precision_score(y, s)),
                     "precision_at_k": float(y[top].mean()), "precision_ceiling": min(1.0, n / k), "k": k}
    return out


def write_scores(table: pa.Table, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a score table as Parquet, atomically (temporary name, then rename)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path} exists; pass --overwrite to replace it or choose another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(path, table)
    return path
