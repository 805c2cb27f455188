"""Likelihoods of whole stores, likelihood ratios, and the observations-vs-simulation comparison.

A model trained on one store (the "observations") scores the objects of another (the
"simulation"): if the simulation were faithful, the two distributions of log p(x) would agree.
Raw likelihoods of images are dominated by low-level statistics (sky, noise, how many pixels
are empty), so a background model (Ren et al. 2019: the same model trained on perturbed
images) is subtracted: log p(x) - log p_background(x) keeps what is specific to the galaxies.

What the numbers are:
    - PixelCNN (``log_prob``): the exact log-probability, in nats, of the image after the model's
      stretch and quantisation (see deepfield.models.pixelcnn); bits/dim = -log p / (C H W ln 2).
    - VAE (``elbo``): the evidence lower bound, in nats, of the continuous image in store units
      (a bound, one posterior sample per object, seeded); its bits/dim is an upper bound.

References:
    Ren et al. (2019), Likelihood Ratios for Out-of-Distribution Detection, arXiv:1906.02845.
    Nalisnick et al. (2019), Do Deep Generative Models Know What They Don't Know?, arXiv:1810.09136.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from deepfield._atomic import staged_dir
from deepfield.data.batches import check_model_store
from deepfield.data.store import Store, open_store
from deepfield.errors import InputError, ModelFolderError
from deepfield.models.folder import as_model
from deepfield.progress import progress_bar

__all__ = ["likelihood_kind", "log_likelihood_store", "likelihood_ratio_store", "compare_stores", "auroc",
           "bits_per_dim"]


def likelihood_kind(model) -> str:
    """'log_prob' (an exact log-likelihood) or 'elbo' (a lower bound) for `model`, else an error."""
    if callable(getattr(model, "log_prob", None)) and len(getattr(model, "input_shape", ())) == 3:
        return "log_prob"
    if callable(getattr(model, "elbo", None)):
        return "elbo"
    raise InputError(f"{type(model).__name__} gives no likelihood of an image: score with a pixelcnn (log_prob) "
                     "or a vae (elbo)")


def bits_per_dim(log_likelihood: np.ndarray, shape) -> np.ndarray:
    """-log p / (n ln 2): bits per pixel value for images of `shape` (C, H, W); log p in nats."""
    return -np.asarray(log_likelihood, dtype=np.float64) / (float(np.prod(shape)) * math.log(2.0))


def _score(model, store: Store, indices, batch_size: int, progress: bool, skip_nonfinite: bool, seed: int,
           description: str) -> tuple[np.ndarray, np.ndarray]:
    from deepfield.data.batches import iterate_batches

    kind = likelihood_kind(model)
    check_model_store(model, store)
    idx = np.arange(len(store)) if indices is None else np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        raise InputError(f"no objects selected from {store.path}")
    model.eval()
    ids, values, skipped = [], [], []
    with torch.no_grad(), torch.random.fork_rng(devices=[]), progress_bar(progress) as bar:
        torch.manual_seed(seed)  # the ELBO's posterior samples: the same seed, the same scores
        task = bar.add_task(description, total=idx.size)
        for batch in iterate_batches(store, idx, model, batch_size):
            n = batch["x"].shape[0]
            finite = torch.isfinite(batch["x"].reshape(n, -1)).all(1)
            if not bool(finite.all()):
                bad = batch["id"][~finite].tolist()
                if not skip_nonfinite:
                    raise InputError(f"NaN/inf pixels in objects with ids {bad[:10]}{' ...' if len(bad) > 10 else ''} "
                                     f"of {store.path}: clean them, or skip them (skip_nonfinite=True, "
                                     "--skip-nonfinite)")
                skipped += bad
                batch = {k: v[finite] for k, v in batch.items()}
            if batch["x"].shape[0]:
                value = model.log_prob(batch) if kind == "log_prob" else model.elbo(batch)
                ids.append(batch["id"].numpy())
                values.append(value.double().cpu().numpy())
            bar.advance(task, n)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} object(s) of {store.path} with NaN/inf pixels: ids {skipped[:20]}"
                      f"{' ...' if len(skipped) > 20 else ''}", stacklevel=3)
    if not ids:
        raise InputError(f"every selected object of {store.path} has NaN/inf pixels: nothing to score")
    return np.concatenate(ids).astype(np.int64), np.concatenate(values)


def log_likelihood_store(model, store, indices=None, batch_size: int = 256, progress: bool = True, *,
                         skip_nonfinite: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-object log-likelihood of the rows `indices` (default all) of `store`.

    Arguments:
        model: a model (or model folder) with ``log_prob(batch)`` (exact, e.g. PixelCNN) or
            ``elbo(batch)`` (a lower bound, e.g. VAE); :func:`likelihood_kind` says which.
        store: a store (or its path) of objects shaped like the model's training data.
        skip_nonfinite: drop objects with NaN/inf pixels (a warning lists their ids) instead of
            stopping with an error that names them.
        seed: seeds the ELBO's posterior samples (no effect on exact likelihoods).

    Returns:
        (ids, values): catalog ids and log p (or ELBO) in nats, float64, in row order.
    """
    model = as_model(model)
    store = store if isinstance(store, Store) else open_store(store)
    return _score(model, store, indices, batch_size, progress, skip_nonfinite, seed, "log-likelihood")


def _check_pair(model, background) -> None:
    """Refuse a background that does not score the same quantity on the same images."""
    if tuple(model.input_shape) != tuple(background.input_shape):
        raise InputError(f"the background model takes objects of shape {tuple(background.input_shape)} but the model "
                         f"{tuple(model.input_shape)}: train the background on the same store")
    kinds = likelihood_kind(model), likelihood_kind(background)
    if kinds[0] != kinds[1]:
        raise InputError(f"the model gives {kinds[0]} but the background {kinds[1]}: use two models of one family")
    qa, qb = getattr(model, "quantisation", None), getattr(background, "quantisation", None)
    if qa is not None or qb is not None:
        def same(a, b) -> bool:
            return a == b if isinstance(a, str) else np.allclose(np.asarray(a, float), np.asarray(b, float))
        if qa is None or qb is None or qa.keys() != qb.keys() or not all(same(qa[k], qb[k]) for k in qa):
            raise InputError(f"the model and the background quantise images differently (model {qa}, background "
                             f"{qb}), so their log-probabilities do not subtract: train the background on the same "
                             "store with the same --bits, or give it the model's noise_sigma/low/high in --config")


def likelihood_ratio_store(model, background, store, indices=None, batch_size: int = 256, progress: bool = True,
                           *, skip_nonfinite: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-object log-likelihood ratio log p_model(x) - log p_background(x) in nats (Ren et al.
    2019), for the rows `indices` of `store`; arguments as :func:`log_likelihood_store`.
    Both models must score the same quantity (for PixelCNNs: the same stretch and quantisation).

    Returns:
        (ids, log_ratio) in row order.
    """
    model, background = as_model(model), as_model(background)
    store = store if isinstance(store, Store) else open_store(store)
    _check_pair(model, background)
    ids, lp = _score(model, store, indices, batch_size, progress, skip_nonfinite, seed, "log-likelihood")
    ids_b, lp_b = _score(background, store, indices, batch_size, progress, skip_nonfinite, seed, "background")
    if not np.array_equal(ids, ids_b):  # cannot happen: both skip the same non-finite objects
        raise InputError("the model and the background scored different objects")
    return ids, lp - lp_b


def auroc(reference, other) -> float:
    """Area under the ROC curve for telling `other` from `reference` by a score where higher means
    'more like other': P(score of a random other object > that of a random reference object),
    ties counting one half (the Mann-Whitney U statistic / (n_ref n_other)). 0.5: no separation."""
    from scipy.stats import rankdata

    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size == 0 or b.size == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([a, b]))
    return float((ranks[a.size:].sum() - b.size * (b.size + 1) / 2) / (a.size * b.size))


def _distribution_stats(reference: np.ndarray, other: np.ndarray, higher_is_other: bool) -> dict:
    from scipy.stats import ks_2samp

    from deepfield.metrics import wasserstein1

    ks = ks_2samp(reference, other)
    sep = auroc(reference, other) if higher_is_other else auroc(-reference, -other)
    return {
        "reference": {"n": int(reference.size), "mean": float(reference.mean()), "median": float(np.median(reference)),
                      "std": float(reference.std(ddof=1)) if reference.size > 1 else float("nan")},
        "simulation": {"n": int(other.size), "mean": float(other.mean()), "median": float(np.median(other)),
                       "std": float(other.std(ddof=1)) if other.size > 1 else float("nan")},
        "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
        "w1": wasserstein1(reference, other), "auroc": sep,
    }


def _reference_rows(model, reference: Store, which: str) -> tuple[np.ndarray, str]:
    """The reference objects to score: the model's held-out split when it was trained on this store."""
    if which not in ("auto", "all", "test"):
        raise InputError(f"reference rows {which!r}: choose auto (held-out split if trained on it), test or all")
    rec = (getattr(model, "record", {}) or {}).get("store", {})
    trained_here = rec.get("fingerprint") == reference.fingerprint
    if which == "all":
        return np.arange(len(reference)), "all objects" + (" (including the model's training objects)"
                                                           if trained_here else "")
    if trained_here:
        from deepfield.data.splits import record_splits

        test = record_splits(reference, rec)["test"]
        if test.size:
            return test, f"the model's held-out test split ({test.size} objects)"
        if which == "test":
            raise InputError(f"the model's held-out split of {reference.path} is empty: train with a test fraction "
                             "or compare with --reference-split all")
        warnings.warn(f"the model has no held-out objects of {reference.path}: the reference includes its training "
                      "objects, whose likelihoods are optimistic", stacklevel=3)
        return np.arange(len(reference)), "all objects (the model has no held-out split; includes training objects)"
    if which == "test":
        raise InputError(f"--reference-split test needs the model's training store; {reference.path} "
                         f"(fingerprint {reference.fingerprint}) is not it ({rec.get('fingerprint')})")
    why = "the model was trained on another store" if rec else "the model records no training store"
    return np.arange(len(reference)), f"all objects ({why})"


def _check_stores(model, reference: Store, store: Store) -> None:
    if tuple(store.sample_shape) != tuple(reference.sample_shape):
        raise InputError(f"store {store.path} holds objects of shape {tuple(store.sample_shape)} but the reference "
                         f"{reference.path} {tuple(reference.sample_shape)}: expected {tuple(reference.sample_shape)}, "
                         f"got {tuple(store.sample_shape)}; cut or resample the stamps to match")
    if tuple(store.bands) != tuple(reference.bands):
        raise InputError(f"store {store.path} has bands {tuple(store.bands)} but the reference {reference.path} has "
                         f"{tuple(reference.bands)}: expected {tuple(reference.bands)}, got {tuple(store.bands)}; "
                         "select the same bands in the same order")
    trained = tuple((getattr(model, "record", {}) or {}).get("store", {}).get("bands") or ())
    for s in (reference, store):
        check_model_store(model, s)
        if trained and s.bands and tuple(s.bands) != trained:
            raise InputError(f"store {s.path} has bands {tuple(s.bands)} but the model was trained on {trained}: "
                             f"expected {trained}, got {tuple(s.bands)}")


def _write_parquet(path: Path, columns: dict[str, np.ndarray], units: dict[str, str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields, arrays = [], []
    for name, values in columns.items():
        arr = pa.array(values)
        meta = {"unit": units[name]} if name in units else None
        fields.append(pa.field(name, arr.type, metadata=meta))
        arrays.append(arr)
    pq.write_table(pa.Table.from_arrays(arrays, schema=pa.schema(fields)), path)


def _histogram(path: Path, reference: np.ndarray, other: np.ndarray, xlabel: str, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 3.4), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    both = np.concatenate([reference, other])
    lo, hi = np.percentile(both, [0.5, 99.5])
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 41)
    for values, label, colour in ((reference, "reference (observations)", "#1f77b4"),
                                  (other, "simulation", "#d62728")):
        ax.hist(np.clip(values, bins[0], bins[-1]), bins=bins, density=True, histtype="stepfilled", alpha=0.35,
                color=colour, label=f"{label}, N={values.size}")
        ax.axvline(np.median(values), color=colour, lw=1, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("probability density (per bit/dim)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.savefig(path, facecolor="white")


def _markdown(summary: dict) -> str:
    lines = [f"# Likelihood comparison: {summary['simulation_store']} vs {summary['reference_store']}", "",
             f"Model: `{summary['model']}` ({summary['model_class']}); scores: {summary['score']}.", "",
             f"Reference objects: {summary['reference_rows']}. Simulation objects: {summary['n_simulation']}.", "",
             "| score | unit | reference mean | simulation mean | KS | KS p | W1 | AUROC |",
             "|---|---|---|---|---|---|---|---|"]
    for name, e in summary["statistics"].items():
        lines.append(f"| {name} | {e['unit']} | {e['reference']['mean']:.4g} | {e['simulation']['mean']:.4g} "
                     f"| {e['ks_statistic']:.3f} | {e['ks_pvalue']:.2g} | {e['w1']:.4g} | {e['auroc']:.3f} |")
    lines += ["", "KS: two-sample Kolmogorov-Smirnov statistic; W1: Wasserstein-1 distance in the score's unit; "
              "AUROC: how well the score tells simulation from reference objects (0.5: not at all; 1: perfectly), "
              "with higher bits/dim and lower log-ratio counting as 'simulation'."]
    if summary.get("background"):
        lines += ["", f"Background model: `{summary['background']}` (Ren et al. 2019; trained on perturbed images). "
                  "log ratio = log p_model - log p_background."]
    return "\n".join(lines) + "\n"


def compare_stores(model, reference, store, out, *, background=None, reference_split: str = "auto",
                   batch_size: int = 256, skip_nonfinite: bool = False, seed: int = 0, overwrite: bool = False,
                   progress: bool = True) -> dict:
    """Score the observations (`reference`, the model's training store) and a simulation (`store`)
    under `model` (and `background`), compare the distributions and write them to folder `out`.

    Writes ``scores.parquet`` (one row per object: dataset 'reference'/'simulation', id, log p or
    ELBO [nat], bits_per_dim [bit], and with a background log_p_background [nat], log_ratio [nat],
    log_ratio_bits_per_dim [bit]; ids are unique within a dataset), ``bits_per_dim.png``,
    ``log_ratio.png`` (with a background), ``summary.json`` and ``summary.md`` (KS statistic and
    p-value, W1 and AUROC per score). The folder appears only when complete.

    Arguments:
        model, background: model folders or loaded models (background: Ren et al. 2019, e.g.
            ``deepfield train pixelcnn --perturb-rate 0.2`` on the same store).
        reference_split: 'auto' (the model's held-out split if it was trained on `reference`,
            else every object), 'test' (that split, or an error) or 'all'.
        skip_nonfinite: drop objects with NaN/inf pixels (their ids are reported).
        seed: seeds the ELBO's posterior samples (VAEs).

    Returns:
        The summary (as written to summary.json).
    """
    model_path = str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    background_path = (str(background) if isinstance(background, (str, os.PathLike))
                       else type(background).__name__ if background is not None else None)
    model = as_model(model)
    background = as_model(background) if background is not None else None
    reference = reference if isinstance(reference, Store) else open_store(reference)
    store = store if isinstance(store, Store) else open_store(store)
    out = Path(out)
    if out.exists() and not overwrite:
        raise ModelFolderError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    _check_stores(model, reference, store)
    if background is not None:
        _check_pair(model, background)
    kind = likelihood_kind(model)
    shape = tuple(model.input_shape)
    ref_idx, ref_words = _reference_rows(model, reference, reference_split)
    args = (batch_size, progress, skip_nonfinite, seed)
    ids_r, lp_r = _score(model, reference, ref_idx, *args, "reference")
    ids_s, lp_s = _score(model, store, None, *args, "simulation")
    value_name = "log_p" if kind == "log_prob" else "elbo"
    tables = {"reference": {"id": ids_r, value_name: lp_r, "bits_per_dim": bits_per_dim(lp_r, shape)},
              "simulation": {"id": ids_s, value_name: lp_s, "bits_per_dim": bits_per_dim(lp_s, shape)}}
    if background is not None:
        for name, st, rows in (("reference", reference, ref_idx), ("simulation", store, None)):
            ids_b, lp_b = _score(background, st, rows, *args, f"{name} (background)")
            if not np.array_equal(ids_b, tables[name]["id"]):
                raise InputError("the model and the background scored different objects")
            ratio = tables[name][value_name] - lp_b
            tables[name].update(log_p_background=lp_b, log_ratio=ratio,
                                log_ratio_bits_per_dim=ratio / (float(np.prod(shape)) * math.log(2.0)))
    if kind == "log_prob":
        quant = getattr(model, "quantisation", None)
        score = ("exact log-probability of the image after the model's stretch and quantisation"
                 + (f" ({quant['stretch']}, softening {quant['softening']} x noise sigma, {quant['bits']} bits)"
                    if quant else ""))
        bpd_label = "bits/dim (bits per pixel value; quantised stretch)"
    else:
        score = ("evidence lower bound (ELBO) of the image in store units: a bound on log p, not the likelihood; "
                 "one posterior sample per object")
        bpd_label = "-ELBO bits/dim (upper bound on -log2 p per pixel value)"
    statistics = {"bits_per_dim": {"unit": "bit", **_distribution_stats(tables["reference"]["bits_per_dim"],
                                                                        tables["simulation"]["bits_per_dim"], True)}}
    if background is not None:
        statistics["log_ratio_bits_per_dim"] = {"unit": "bit", **_distribution_stats(
            tables["reference"]["log_ratio_bits_per_dim"], tables["simulation"]["log_ratio_bits_per_dim"], False)}
    summary = {
        "model": model_path, "model_class": type(model).__name__, "likelihood": kind, "score": score,
        "background": background_path, "reference_store": str(reference.path), "simulation_store": str(store.path),
        "reference_fingerprint": reference.fingerprint, "simulation_fingerprint": store.fingerprint,
        "reference_rows": ref_words, "n_reference": int(ids_r.size), "n_simulation": int(ids_s.size),
        "image_shape": list(shape), "statistics": statistics,
    }
    with staged_dir(out) as tmp:
        n_r, n_s = ids_r.size, ids_s.size
        columns = {"dataset": np.array(["reference"] * n_r + ["simulation"] * n_s)}
        for key in tables["reference"]:
            columns[key] = np.concatenate([tables["reference"][key], tables["simulation"][key]])
        units = {value_name: "nat", "bits_per_dim": "bit", "log_p_background": "nat", "log_ratio": "nat",
                 "log_ratio_bits_per_dim": "bit"}
        _write_parquet(tmp / "scores.parquet", columns, units)
        _histogram(tmp / "bits_per_dim.png", tables["reference"]["bits_per_dim"], tables["simulation"]["bits_per_dim"],
                   bpd_label, f"{type(model).__name__}: lower is more probable")
        if background is not None:
            _histogram(tmp / "log_ratio.png", tables["reference"]["log_ratio_bits_per_dim"],
                       tables["simulation"]["log_ratio_bits_per_dim"],
                       "log-likelihood ratio, model - background (bits/dim)",
                       "Ren et al. (2019) ratio: higher is more like the observations")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (tmp / "summary.md").write_text(_markdown(summary))
    return summary
