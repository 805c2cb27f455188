"""`make_report`: one HTML page with the figures an astronomer checks a trained model by.

The page shows the model card facts, training curves (PCA: explained variance), input /
reconstruction / residual examples of held-out objects, the latent space coloured by a
catalog column, reconstruction error against that column, and, given other model folders
trained on the same store, a comparison of them all on the same objects. For generative
models (VAEs) it adds samples beside held-out galaxies, conditional sweeps and morphology
histograms (deepfield.report.samples).

Reconstruction errors are mean squared errors in normalised units, as in training and
metrics.json: data divided by the per-band pixel standard deviation of the training set
(per feature for tables), so an MSE of 1 is as large as the pixel variance itself.

The report folder is built under a hidden sibling name and renamed into place when
complete, so a crash never leaves a half-written report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepfield._atomic import check_replaceable, staged_dir
from deepfield.data.store import Store, open_store
from deepfield.errors import InputError, ModelFolderError
from deepfield.models import Model
from deepfield.progress import progress_bar
from deepfield.report import html as H
from deepfield.report import plots
from deepfield.tasks.evaluate import mean_image_mse, reconstruct_rows, reconstruction_errors

__all__ = ["make_report", "COLOUR_COLUMNS"]

#: catalog columns the latent space is coloured by when none is named (the first present)
COLOUR_COLUMNS = ("magnitude", "half_light_radius", "target", "redshift", "snr")
#: catalog columns annotated on example rows: (column, short label)
_ANNOTATE = (("magnitude", "m"), ("half_light_radius", "r½"), ("redshift", "z"), ("snr", "S/N"),
             ("target_name", ""), ("target", "class"))
_SPLITS = ("train", "val", "test", "all")
_MARKER = "report.json"


@dataclass
class _Member:
    """One model in the report: the main one or a comparison."""

    name: str
    path: Path
    model: Model
    metrics: dict
    mse: np.ndarray | None = None          # per-object MSE over the report rows
    codes: np.ndarray | None = None        # (n, d), main model only

    @property
    def record(self) -> dict:
        return getattr(self.model, "record", {}) or {}

    @property
    def fingerprint(self) -> str | None:
        return (self.record.get("store") or {}).get("fingerprint")

    @property
    def family(self) -> str:
        return self.record.get("family") or getattr(self.model, "family", "?")


def _read_metrics(path: Path) -> dict:
    p = path / "metrics.json"
    if not p.is_file():
        return {}
    try:
        metrics = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFolderError(f"{p} is corrupt ({err}); retrain or restore the folder") from None
    return metrics if isinstance(metrics, dict) else {}


def _load_member(path, taken: set[str]) -> _Member:
    from deepfield.models.folder import load_model

    p = Path(path)
    if not p.is_dir():
        raise ModelFolderError(f"no model folder at {p}: give a folder written by `deepfield train`")
    model = load_model(p)
    name = p.resolve().name or str(p)
    base, k = name, 2
    while name in taken:
        name, k = f"{base} ({k})", k + 1
    taken.add(name)
    return _Member(name=name, path=p, model=model, metrics=_read_metrics(p))


def _mse_units(model, kind: str) -> tuple[str, str]:
    """(sentence for the page, short axis label) of the MSE's unit for this model."""
    if getattr(model.config, "normalisation", "channel") == "feature":
        return ("MSE in units of the per-feature variance of the training set",
                "MSE / per-feature variance")
    if kind == "image":
        return ("MSE in units of the per-band pixel variance of the training set",
                "MSE / per-band pixel variance")
    return ("MSE in units of the pixel variance of the training set", "MSE / pixel variance")


def _colour_column(store: Store, color_by: str | None) -> str | None:
    if color_by is not None:
        if color_by not in store.columns:
            raise InputError(f"color_by {color_by!r}: store {store.path} has no catalog column of that "
                             f"name; available columns: {', '.join(store.columns)}")
        values = store.column(color_by)
        if values.dtype.kind not in "iufb" and not plots.is_categorical(values):
            raise InputError(f"color_by {color_by!r} is text with {np.unique(values.astype(str)).size} "
                             "distinct values, too many to colour by; choose a numeric column or a "
                             f"class label: {', '.join(store.columns)}")
        return color_by
    return next((c for c in COLOUR_COLUMNS if c in store.columns), None)


def _column_label(store: Store, name: str) -> str:
    unit = store.units.get(name)
    return f"{name} [{unit}]" if unit else name


def _report_rows(store: Store, member: _Member, split: str, notes: list[str]) -> np.ndarray:
    from deepfield.tasks.apply import resolve_indices

    if split == "all":
        return np.arange(len(store))
    if member.fingerprint is None:
        notes.append(f"The model records no training store, so its '{split}' split is unknown; all "
                     f"{len(store)} objects of the store are used.")
        return np.arange(len(store))
    if member.fingerprint != store.fingerprint:
        notes.append(f"This store (fingerprint {store.fingerprint}) is not the one the model was trained "
                     f"on ({member.fingerprint}, {member.record['store'].get('path')}). The model's "
                     f"'{split}' split applies to its training store only, so all {len(store)} objects "
                     "of this store are used; recorded metrics refer to the training store.")
        return np.arange(len(store))
    return resolve_indices(store, None, split, member.record)


def _row_label(store: Store, row: int) -> str:
    parts = [f"id {int(store.ids[row])}"]
    units = store.units
    for column, short in _ANNOTATE:
        if column in store.columns and len(parts) < 3:
            v = store.column(column)[row]
            if column == "target" and "target_name" in store.columns:
                continue
            text = f"{v:.3g}" if isinstance(v, (float, np.floating)) else str(v)
            unit = units.get(column, "")
            parts.append(f"{short} = {text} {unit}".strip() if short else text)
    return "\n".join(parts)


def _reference_band(bands: tuple[str, ...], channels: int) -> tuple[int, list[int] | None]:
    """The band shown alone (r if present, else the first) and 3 bands (blue to red) for RGB."""
    band = bands.index("r") if "r" in bands else 0
    rgb = None
    if channels >= 3:
        rgb = [bands.index(b) for b in "gri"] if all(b in bands for b in "gri") else [0, 1, 2]
    return band, rgb


def _spread_examples(store, rows: np.ndarray, n: int, rng) -> np.ndarray:
    """`n` objects spanning the magnitude range (bright to faint) where the catalog has one.

    A random draw from a survey to r = 25 is mostly faint, noise-dominated stamps; evenly
    spaced magnitude quantiles show how the model does across the whole sample.
    """
    if n <= 0 or rows.size == 0:
        return rows[:0]
    n = min(n, rows.size)
    if "magnitude" not in store.columns or store.column("magnitude").dtype.kind not in "iuf":
        return np.sort(rng.choice(rows, size=n, replace=False))
    order = rows[np.argsort(store.column("magnitude")[rows], kind="stable")]
    return order[np.unique(np.linspace(0, order.size - 1, n).round().astype(np.int64))]


def make_report(model_dir, store, out=None, *, compare=(), color_by: str | None = None, n_examples: int = 8,
                split: str = "test", seed: int = 0, max_objects: int = 20000, batch_size: int = 256,
                samples: int | None = 1000, progress: bool = False) -> Path:
    """Write an HTML report on a trained model; returns the path of its index.html.

    Arguments:
        model_dir: the model folder (from `deepfield train`).
        store: the store (path or :class:`~deepfield.data.store.Store`) to evaluate on,
            normally the training store, whose held-out objects are then used.
        out: report folder (default MODEL_DIR/report); an existing report there is replaced.
        compare: other model folders trained on the same store, shown side by side.
        color_by: catalog column for the latent scatter and the error-vs-column plot
            (default: the first of magnitude, half_light_radius, target, redshift, snr).
        n_examples: objects in the reconstruction grids.
        split: which of the model's objects to use: 'test' (held out), 'val', 'train' or 'all'.
        seed: chooses the example objects (and the subsample beyond `max_objects`).
        max_objects: evaluate at most this many objects (a seeded random subset beyond).
        batch_size: objects per forward pass.
        samples: generative models (VAEs on image stores with PSF and noise): a 'Samples'
            section with held-out vs sample grids, conditional sweeps, and morphology
            histograms of up to this many held-out galaxies vs samples (0: grids and sweeps
            only; None: no section).
        progress: show a progress bar.

    Raises:
        ModelFolderError: a model folder is missing or corrupt.
        InputError: the store does not fit the model, a comparison model was trained on
            another store, `color_by` names no catalog column, or bad arguments.
    """
    from deepfield.tasks.encode import check_model_store

    if split not in _SPLITS:
        raise InputError(f"split {split!r}: choose one of {', '.join(_SPLITS)}")
    if n_examples < 0:
        raise InputError(f"n_examples must be >= 0, got {n_examples}")
    model_dir = Path(model_dir)
    taken: set[str] = set()
    main = _load_member(model_dir, taken)
    store = store if isinstance(store, Store) else open_store(store)
    check_model_store(main.model, store)
    members = [main]
    for other in compare:
        m = _load_member(other, taken)
        if m.fingerprint != main.fingerprint:
            raise InputError(f"cannot compare {m.path} with {main.path}: {m.path} was trained on store "
                             f"fingerprint {m.fingerprint} but {main.path} on {main.fingerprint}; "
                             "compare models trained on the same store (retrain one of them on it)")
        check_model_store(m.model, store)
        members.append(m)
    colour = _colour_column(store, color_by)
    out = Path(out) if out is not None else model_dir / "report"
    check_replaceable(out, _MARKER, "report")

    notes: list[str] = []
    rows = _report_rows(store, main, split, notes)
    if rows.size == 0:
        raise InputError(f"the model's '{split}' split of {store.path} is empty; use --split all or a "
                         "store with more objects")
    rng = np.random.default_rng(seed)
    n_selected = rows.size
    if rows.size > max_objects:
        rows = np.sort(rng.choice(rows, size=max_objects, replace=False))
        notes.append(f"{n_selected} objects selected; a random subset of {max_objects} (seed {seed}) is "
                     "evaluated, so MSEs here differ slightly from those recorded in metrics.json.")
    for m in members[1:]:
        rec = m.record.get("store") or {}
        if (rec.get("split_fractions"), rec.get("split_seed")) != ((main.record.get("store") or {}).get("split_fractions"),
                                                                  (main.record.get("store") or {}).get("split_seed")) \
                and m.fingerprint == store.fingerprint:
            from deepfield.tasks.apply import resolve_indices

            seen = np.intersect1d(rows, resolve_indices(store, None, "train", m.record)).size
            notes.append(f"{m.name} used another split (fractions {rec.get('split_fractions')}, seed "
                         f"{rec.get('split_seed')}): {seen} of the {rows.size} objects here were in its "
                         "training set, which favours it.")

    # on stderr: the CLI prints the report's path on stdout
    with progress_bar(progress, stderr=True, transient=True, time_remaining=False) as bar:
        task = bar.add_task("evaluating", total=rows.size * len(members))
        for m in members:
            m.mse, m.codes = reconstruction_errors(m.model, store, rows, batch_size=batch_size, codes=m is main,
                                                   advance=lambda k: bar.advance(task, k))

    check_replaceable(out, _MARKER, "report")
    with staged_dir(out) as tmp:
        page = _build_page(main, members, store, rows, n_selected, split, colour, n_examples, rng, notes, tmp,
                           n_morphology=samples)
        (tmp / "index.html").write_text(page)
    return out / "index.html"


def _build_page(main: _Member, members: list[_Member], store: Store, rows: np.ndarray, n_selected: int,
                split: str, colour: str | None, n_examples: int, rng, notes: list[str], tmp: Path,
                n_morphology: int | None = 1000) -> str:
    import deepfield

    unit_sentence, mse_label = _mse_units(main.model, store.kind)
    record = main.record
    rec_store = record.get("store") or {}
    split_words = {"test": "held-out (test)", "val": "validation", "train": "training", "all": "all"}[split]
    page = H.Page(f"deepfield report: {main.name} ({main.family})")
    figures: list[str] = []
    summary: dict = {"model": str(main.path), "store": str(store.path), "store_fingerprint": store.fingerprint,
                     "split": split, "n_objects": int(rows.size), "mse_unit": unit_sentence, "models": {}}

    def add_figure(body, filename, caption):
        figures.append(filename)
        body.append(H.figure(filename, caption))

    # -- is any model unusable? (banners at the top of the page)
    from deepfield.report import checks

    for m in members:
        baseline, noise = mean_image_mse(m.model, store, rows)
        for text in (checks.collapse_warning(m.name, m.metrics), checks.divergence_warning(m.name, m.metrics),
                     checks.prior_warning(m.name, m.path),
                     checks.reconstruction_warning(m.name, float(m.mse.mean()), baseline, noise)):
            if text:
                page.banner(text)
        summary.setdefault("mean_image_mse", {})[m.name] = baseline

    # -- model card
    body = page.section("Model")
    body.append(H.definition_list([
        ("model folder", str(main.path.resolve())),
        ("family", f"{main.family} ({record.get('class', type(main.model).__name__)})"),
        ("latent dimension", int(main.model.latent_dim)),
        ("input shape", " × ".join(map(str, main.model.input_shape))),
        ("trained on store", f"{rec_store.get('path', '?')} (fingerprint {rec_store.get('fingerprint', '?')})"),
        ("training split", f"{rec_store.get('n_train', '?')} train / {rec_store.get('n_val', '?')} validation / "
                           f"{rec_store.get('n_test', '?')} held out; fractions {rec_store.get('split_fractions')}, "
                           f"seed {rec_store.get('split_seed')}"),
        ("report store", f"{Path(store.path).resolve()} (fingerprint {store.fingerprint}; {store.kind}, {len(store)} objects)"),
        ("bands", ", ".join(store.bands) if store.bands else "—"),
        ("pixel scale", f"{store.pixel_scale:g} arcsec/pixel" if store.pixel_scale else "—"),
        *([("wavelength", f"{store.wavelength[0]:.1f}–{store.wavelength[-1]:.1f} Å, {store.wavelength.size} pixels")]
          if store.wavelength is not None else []),
        ("objects in this report", f"{rows.size} {split_words}" + (f" (of {n_selected})" if n_selected != rows.size else "")),
        ("written by", f"deepfield {deepfield.__version__}; model trained with {record.get('library_version', '?')} "
                       f"on {record.get('created', '?')}"),
    ]))
    for text in notes:
        body.append(H.note(text))
    metric_rows = []
    units = {"train_mse": unit_sentence, "val_mse": unit_sentence, "test_mse": unit_sentence,
             "best_val_loss": "training objective (MSE + any penalty)", "epochs_run": "epochs",
             "train_seconds": "s", "fit_seconds": "s", "train_images_per_s": "objects / s"}
    for key, value in main.metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metric_rows.append((key, value, units.get(key, "")))
    metric_rows.append((f"MSE on the {rows.size} objects of this report", float(main.mse.mean()), unit_sentence))
    body.append("<h3>Metrics</h3>")
    body.append(H.table(["metric", "value", "unit"], metric_rows, id="metrics", numeric=[False, True, False]))
    cfg = record.get("config") or {}
    body.append("<h3>Hyperparameters</h3>")
    body.append(H.table(["name", "value"], [(k, v) for k, v in cfg.items()]))

    # -- 1. training
    body = page.section("Training")
    history = main.metrics.get("history")
    if history:
        add_figure(body, "loss_curves.png", "Training and validation loss against epoch (" + mse_label + ").")
        plots.plot_training_history(history, tmp / "loss_curves.png", mse_label=mse_label)
    elif main.metrics.get("explained_variance_ratio"):
        body.append(H.note(f"{main.family} is fitted in closed form, so there are no loss curves; its "
                           "explained-variance spectrum is shown instead."))
        add_figure(body, "explained_variance.png",
                   "Fraction of the normalised pixel variance of the training set explained by each "
                   "principal component (bars) and cumulatively (line).")
        plots.plot_explained_variance(main.metrics["explained_variance_ratio"], tmp / "explained_variance.png")
    else:
        body.append(H.note("metrics.json has no training history: no loss curves to show."))

    # -- 2. examples
    body = page.section("Reconstructions")
    examples = _spread_examples(store, rows, n_examples, rng)
    position = np.searchsorted(rows, examples)
    flux_unit = (store.meta.get("extra") or {}).get("flux_unit") or "store units"
    labels = [_row_label(store, int(r)) for r in examples]
    if examples.size and store.kind in ("image", "spectrum"):
        x = store.read("x", examples)
        recon = {main.name if len(members) > 1 else "reconstruction": reconstruct_rows(main.model, store, examples)}
        mse = {k: main.mse[position] for k in recon}
        band, rgb = _reference_band(store.bands, x.shape[1]) if store.kind == "image" else (0, None)
        order = "ordered from bright to faint, " if "magnitude" in store.columns else ""
        if store.kind == "image":
            add_figure(body, "reconstructions.png",
                       f"{examples.size} {split_words} objects ({order}chosen with seed), one per row: input, "
                       "reconstruction and residual (input − reconstruction). Input and reconstruction share "
                       "one asinh stretch per row; residuals use a diverging scale symmetric about zero. "
                       f"Corner numbers: the object's {mse_label}"
                       + (f" over all bands. Band {store.bands[band]} shown." if x.shape[1] > 1 and band < len(store.bands)
                          else "."))
            plots.plot_image_grid(x, recon, tmp / "reconstructions.png", row_labels=labels, mse=mse,
                                  bands=store.bands, band=band, rgb=None, pixel_scale=store.pixel_scale,
                                  flux_unit=flux_unit)
            if rgb:
                add_figure(body, "reconstructions_rgb.png",
                           "The same objects as colour composites (Lupton-style asinh) of bands "
                           f"{', '.join(store.bands[k] for k in rgb)} (blue to red).")
                plots.plot_image_grid(x, recon, tmp / "reconstructions_rgb.png", row_labels=labels, mse=mse,
                                      bands=store.bands, band=band, rgb=rgb, pixel_scale=store.pixel_scale,
                                      flux_unit=flux_unit)
        else:
            add_figure(body, "reconstructions.png",
                       f"{examples.size} {split_words} spectra: input (grey) and reconstruction against "
                       "observed wavelength; residual (input − reconstruction) below each.")
            plots.plot_spectra_grid(store.wavelength, x, recon, tmp / "reconstructions.png", row_labels=labels,
                                    mse=mse, flux_unit=flux_unit)
    elif store.kind == "table":
        body.append(H.note("Tabular data (one feature vector per object): no image grid. The table lists "
                           "each example's features as input → reconstruction."))
        if examples.size:
            x = store.read("x", examples)
            r = reconstruct_rows(main.model, store, examples)
            names = (store.meta.get("extra") or {}).get("feature_names") or [f"x{j}" for j in range(x.shape[1])]
            trs = [(int(store.ids[e]), *[f"{a:.3g} → {b:.3g}" for a, b in zip(x[i], r[i])], float(main.mse[position[i]]))
                   for i, e in enumerate(examples)]
            body.append(H.table(["id", *names, mse_label], trs, id="examples"))
    else:
        body.append(H.note("No examples requested (n_examples = 0)."))

    # -- 3. latent space
    body = page.section("Latent space")
    values = store.column(colour)[rows] if colour else None
    label = _column_label(store, colour) if colour else ""
    class_names = None
    extra = store.meta.get("extra") or {}
    if colour == "target" and extra.get("target_names"):
        class_names = {str(i): n for i, n in enumerate(extra["target_names"])}
    if colour is None:
        body.append(H.note(f"The catalog has none of {', '.join(COLOUR_COLUMNS)}; points are not coloured "
                           f"(pass color_by, one of: {', '.join(store.columns)})."))
    d = main.model.latent_dim
    add_figure(body, "latent.png",
               f"Latent codes of the {rows.size} {split_words} objects"
               + (f", coloured by {label}" if colour else "")
               + ("; left: the first two code dimensions, right: the codes projected on their two leading "
                  "principal components." if d > 2 else "."))
    plots.plot_latent(main.codes, tmp / "latent.png", values=values, label=label, class_names=class_names)

    # -- 4. comparison
    if len(members) > 1:
        body = page.section("Comparison")
        body.append(f"<p>All models on the same {rows.size} {split_words} objects of {H.escape(store.path)}. "
                    f"{H.escape(unit_sentence)}. “Recorded” is test_mse from each model's metrics.json.</p>")
        trs = []
        for m in members:
            n_numbers = sum(v.numel() for k, v in m.model.state_dict().items() if not k.startswith("data_"))
            trs.append((m.name, m.family, int(m.model.latent_dim), n_numbers,
                        m.metrics.get("test_mse", float("nan")), float(m.mse.mean()), float(np.median(m.mse))))
        body.append(H.table(["model", "family", "latent dim", "stored numbers", "recorded test MSE",
                             f"MSE here (mean of {rows.size})", "median per-object MSE"],
                            trs, id="comparison", numeric=[False, False, True, True, True, True, True]))
        add_figure(body, "comparison_mse.png", f"Mean reconstruction {mse_label} per model on these objects; "
                   "black ticks: test MSE recorded at training.")
        plots.plot_mse_bars([m.name for m in members], [float(m.mse.mean()) for m in members],
                            tmp / "comparison_mse.png", recorded=[m.metrics.get("test_mse", np.nan) for m in members],
                            n_objects=rows.size, mse_label=mse_label)
        curves = {m.name: m.metrics.get("history") or float(m.metrics.get("val_mse", np.nan)) for m in members}
        if any(m.metrics.get("history") for m in members):
            add_figure(body, "comparison_val_curves.png", "Validation MSE against epoch; models fitted in closed "
                       "form (PCA) as dashed lines at their validation MSE.")
            plots.plot_validation_curves(curves, tmp / "comparison_val_curves.png", mse_label=mse_label)
        if examples.size and store.kind in ("image", "spectrum"):
            x = store.read("x", examples)
            recon = {m.name: reconstruct_rows(m.model, store, examples) for m in members}
            mse = {m.name: m.mse[position] for m in members}
            if store.kind == "image":
                band, _ = _reference_band(store.bands, x.shape[1])
                add_figure(body, "comparison_reconstructions.png",
                           "The same objects through every model: input | reconstructions | residuals "
                           "(input − reconstruction), one shared stretch per row.")
                plots.plot_image_grid(x, recon, tmp / "comparison_reconstructions.png", row_labels=labels, mse=mse,
                                      bands=store.bands, band=band, pixel_scale=store.pixel_scale, flux_unit=flux_unit)
            else:
                add_figure(body, "comparison_reconstructions.png",
                           "The same spectra through every model, residuals below.")
                plots.plot_spectra_grid(store.wavelength, x, recon, tmp / "comparison_reconstructions.png",
                                        row_labels=labels, mse=mse, flux_unit=flux_unit)

    # -- 5. errors against a catalog column
    body = page.section("Where the model fails")
    if colour is None:
        body.append(H.note("No catalog column to bin the errors by (pass color_by)."))
    else:
        add_figure(body, "mse_vs_column.png",
                   f"Per-object reconstruction {mse_label} of the {rows.size} {split_words} objects against "
                   f"{label}: points, and the median per bin of equal counts (band: 16th–84th percentile)"
                   if not plots.is_categorical(values) else
                   f"Per-object reconstruction {mse_label} per class of {label}; diamonds: medians.")
        plots.plot_mse_vs_column(values, {m.name: m.mse for m in members}, tmp / "mse_vs_column.png",
                                 label=label, mse_label=mse_label, class_names=class_names)

    # -- 6. generative models: samples, conditional sweeps, morphology
    from deepfield.report.samples import is_generative, sample_section

    if is_generative(main.model, store) and n_morphology is not None:
        sample_section(page, main.model, store, rows, examples, tmp, add_figure, seed=int(rng.integers(2**31)),
                       n_morphology=n_morphology, summary=summary)

    for m in members:
        summary["models"][m.name] = {"path": str(m.path), "family": m.family, "latent_dim": int(m.model.latent_dim),
                                     "recorded_test_mse": m.metrics.get("test_mse"),
                                     "mse": float(m.mse.mean()), "median_mse": float(np.median(m.mse))}
    summary["figures"] = figures
    summary["notes"] = notes
    summary["warnings"] = list(page.banners)
    (tmp / _MARKER).write_text(json.dumps(summary, indent=2) + "\n")
    return page.render(footer=f"deepfield {deepfield.__version__} · machine-readable summary: {_MARKER}")
