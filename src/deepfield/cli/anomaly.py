"""`deepfield inject` (labelled anomalies into a copy of a store) and `deepfield anomalies` (score and rank)."""

from __future__ import annotations

from pathlib import Path

import typer

from deepfield._names import comma_list
from deepfield.cli._app import app, console


@app.command()
def inject(
    store: Path = typer.Argument(..., help="Image store to copy (it is not modified)."),
    out: Path = typer.Option(..., "--out", "-o", help="The new store with anomalies."),
    fraction: float = typer.Option(0.02, "--fraction", help="Share of objects given one anomaly each."),
    types: str = typer.Option(None, "--types", help="Comma-separated, e.g. cosmic_ray,satellite_trail,ring "
                                                    "(default: all that apply, except missing_signal, which is "
                                                    "injected only when named)."),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Copy a store with labelled anomalies (catalog columns anomaly_type, anomaly_strength, anomaly_params)."""
    import numpy as np

    from deepfield.data.anomalies import inject_anomalies

    result = inject_anomalies(store, out, fraction=fraction, types=types, seed=seed, overwrite=overwrite,
                              progress=progress)
    kinds, counts = np.unique(result.column("anomaly_type"), return_counts=True)
    summary = ", ".join(f"{k} {c}" for k, c in zip(kinds, counts) if k != "none")
    console.print(f"[green]{len(result)} objects written to[/] {out}: {summary or 'no anomalies'}", soft_wrap=True)


def _members(models: str | None, model: Path | None) -> list[tuple[str, str | None]]:
    """(folder, method or None) for each --models entry 'DIR' or 'DIR:method' (and --model)."""
    from deepfield.errors import InputError

    entries = list(comma_list(models))
    if model is not None:
        entries.insert(0, str(model))
    out = []
    for entry in entries:
        path, _, method = entry.rpartition(":") if ":" in entry else (entry, "", "")
        out.append((path, method or None))
    if len(out) < 2:
        raise InputError("--method ensemble needs two or more models: --models DIR1,DIR2 (optionally DIR:method, "
                         "e.g. models/vae:density)")
    return out


@app.command()
def anomalies(
    store: Path = typer.Argument(..., help="Store to score."),
    model: Path = typer.Option(None, "--model", "-m", help="Model folder."),
    method: str = typer.Option("auto", "--method", help="reconstruction, local, elbo, density, pixelcnn, ratio, "
                                                        "gan, ensemble, or auto (the model's natural score)."),
    models: str = typer.Option(None, "--models", help="Ensemble members: DIR[:method],DIR[:method],..."),
    background: Path = typer.Option(None, "--background", help="Background model folder (--method ratio)."),
    out: Path = typer.Option(..., "--out", "-o", help="Score table (.parquet)."),
    gallery: Path = typer.Option(None, "--gallery", help="Also write the ranked gallery (PNG + HTML) here."),
    top: int = typer.Option(50, "--top", help="Objects in the gallery."),
    show: int = typer.Option(20, "--show", help="Top-ranked objects printed."),
    norm: str = typer.Option("l2", "--norm", help="Reconstruction: l2 or l1."),
    weighting: str = typer.Option("auto", "--weighting", help="Reconstruction: ivar, none or auto."),
    window: int = typer.Option(4, "--window", help="Local: side (pixels) of the windows the residual is tested in."),
    code: str = typer.Option("posterior", "--code", help="Density: posterior (KL(q || prior), the code's cost with "
                                                         "its width) or mean (-log prior at the posterior mean)."),
    combine: str = typer.Option("rank", "--combine", help="Ensemble: rank (rank average) or zscore (mean robust "
                                                          "z-score, keeps how far out the tail lies)."),
    fit_on: Path = typer.Option(None, "--fit-on", help="Ensemble: a store with injected anomalies (deepfield inject) "
                                                       "on which the members' weights are chosen (by AUPR); not the "
                                                       "store you measure detection on."),
    calibrate: str = typer.Option(None, "--calibrate", help="Score relative to objects of similar values of this "
                                                            "catalog column, e.g. magnitude (robust z-score)."),
    where: str = typer.Option(None, "--where", help="Catalog query, e.g. 'magnitude < 23'."),
    split: str = typer.Option(None, "--split", help="Only the model's train, val or test objects."),
    skip_nan: bool = typer.Option(False, "--skip-nan", help="Leave out objects with NaN/inf pixels."),
    batch_size: int = typer.Option(256, "--batch-size"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Score every object (higher = more anomalous), write the table keyed by id, print the top ranks."""
    from rich.console import Console
    from rich.table import Table

    import deepfield
    from deepfield.data.store import open_store
    from deepfield.errors import InputError
    from deepfield.tasks.anomaly import (METHODS, default_method, detection_metrics, ensemble_scores, reconstructs,
                                         score_metadata, score_store, skipped_ids, write_scores)
    from deepfield.tasks.apply import resolve_indices

    if out.exists() and not overwrite:
        raise InputError(f"{out} exists; pass --overwrite to replace it or choose another --out")
    s = open_store(store)
    options = {"batch_size": batch_size, "skip_nan": skip_nan, "progress": progress, "norm": norm,
               "weighting": weighting, "calibrate": calibrate, "window": window, "code": code}
    if method != "ensemble" and (fit_on is not None or combine != "rank"):
        raise InputError("--fit-on and --combine choose an ensemble's weights and rule: use them with "
                         "--method ensemble")
    if method == "ensemble":
        loaded = [(deepfield.load(path), path, m) for path, m in _members(models, model)]
        idx = resolve_indices(s, where, split, getattr(loaded[0][0], "record", None))
        named = []
        for m, path, chosen in loaded:
            chosen = chosen or default_method(m)
            name, k = f"{Path(path).name}:{chosen}", 2
            while name in [n for n, _, _ in named]:  # the same folder and method twice still counts twice
                name, k = f"{Path(path).name}:{chosen}#{k}", k + 1
            named.append((name, m, chosen))
        weights = None
        if fit_on is not None:
            from deepfield.tasks.anomaly import fit_ensemble

            validation = open_store(fit_on)
            if validation.fingerprint == s.fingerprint:
                raise InputError(f"--fit-on {fit_on} is the store being scored: choose the weights on another store "
                                 "with its own injected anomalies (deepfield inject ... --seed N), or the detection "
                                 "measured here flatters the ensemble")
            if "anomaly_type" not in validation.columns:
                raise InputError(f"--fit-on {fit_on} has no anomaly_type column: inject labelled anomalies into it "
                                 "first (deepfield inject)")
            weights = fit_ensemble({name: score_store(validation, chosen, m, **options) for name, m, chosen in named},
                                   combine=combine)
            console.print("weights fitted on " + str(fit_on) + ": "
                          + ", ".join(f"{n} {w:.2f}" for n, w in weights.items()), soft_wrap=True)
        tables = {name: score_store(s, chosen, m, indices=idx, **options) for name, m, chosen in named}
        table = ensemble_scores(tables, weights=weights, combine=combine)
        shown_model = next((m for m, _, _ in loaded if reconstructs(m)), None)
    else:
        if model is None:
            raise InputError(f"--method {method} needs --model DIR (or --method ensemble with --models)")
        m = deepfield.load(model)
        chosen = default_method(m) if method == "auto" else method
        if chosen not in METHODS:
            raise InputError(f"--method {method!r}: choose one of {', '.join(METHODS)}, ensemble or auto")
        idx = resolve_indices(s, where, split, getattr(m, "record", None))
        table = score_store(s, chosen, m, background=background, indices=idx, **options)
        shown_model = m
    write_scores(table, out, overwrite=overwrite)
    skipped = skipped_ids(table)
    console.print(f"[green]{table.num_rows} objects scored, written to[/] {out}"
                  + (f"; skipped {len(skipped)} with NaN/inf pixels: {skipped[:10]}" if skipped else ""), soft_wrap=True)
    con = Console()
    ranked = table.sort_by([("rank", "ascending")]).slice(0, max(show, 0))
    labelled = "anomaly_type" in table.column_names
    meta = score_metadata(table)
    t = Table(title=f"most anomalous ({meta.get('method', 'score')})", show_edge=False)
    for col in ("rank", "id", "score") + (("anomaly_type",) if labelled else ()):
        t.add_column(col, justify="left" if col == "anomaly_type" else "right")
    for row in ranked.to_pylist():
        t.add_row(str(row["rank"]), str(row["id"]), f"{row['score']:.5g}",
                  *((str(row["anomaly_type"]),) if labelled else ()))
    con.print(t)
    if labelled:
        kinds = set(table.column("anomaly_type").to_pylist())
        if "none" in kinds and len(kinds) > 1:
            metrics = detection_metrics(table)
            mt = Table(title="detection (each type vs normal objects)", show_edge=False)
            for col in ("anomaly type", "n", "AUROC", "AUPR", "precision@100"):
                mt.add_column(col, justify="left" if col == "anomaly type" else "right")
            for name, v in metrics.items():
                mt.add_row(name, str(v["n"]), f"{v['auroc']:.3f}", f"{v['aupr']:.3f}",
                           f"{v['precision_at_k']:.2f} (max {v['precision_ceiling']:.2f})")
            con.print(mt)
    if gallery is not None:
        from deepfield.report.anomalies import anomaly_gallery

        page = anomaly_gallery(s, table, gallery, model=shown_model, top=top)
        console.print(f"[green]gallery written to[/] {page}", soft_wrap=True)
