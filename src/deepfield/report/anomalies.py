"""The anomaly gallery: the top-ranked objects of a score table as PNG grids and one HTML page.

Each gallery row shows an object as observed (one band, or a colour composite of three), the
model's reconstruction where it has one, and the residual in units of the noise sigma (from
``ivar``) or of the stamp's robust pixel scatter. The page adds the score distribution per
anomaly type and, for stores with injected anomalies, AUROC / AUPR / precision@k per type.

The gallery folder is written under a hidden temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from deepfield._atomic import check_replaceable, staged_dir
from deepfield.data.store import Store, open_store
from deepfield.errors import InputError
from deepfield.models.folder import as_model
from deepfield.report import html as H
from deepfield.report import plots
from deepfield.report.plots import (asinh_rgb, asinh_width, new_figure, robust_noise_sigma, save_figure, scale_bar,
                                    style_context)

__all__ = ["plot_anomaly_grid", "plot_score_distribution", "anomaly_gallery"]

_MARKER = "anomalies.json"


def plot_anomaly_grid(images: np.ndarray, reconstructions: np.ndarray | None, residuals: np.ndarray | None, path, *,
                      row_labels: Sequence[str], bands: Sequence[str] = (), band: int = 0,
                      rgb: Sequence[int] | None = None, pixel_scale: float | None = None,
                      residual_label: str = "residual / σ") -> Path:
    """Rows of objects; columns: image, reconstruction, residual (each present one).

    Arguments:
        images: (N, C, H, W) in store units; reconstructions: the same or None.
        residuals: (N, H, W) residuals of band `band` in units of the noise (or None).
        row_labels: one annotation per row (rank, id, score, type).
        band: the band shown in grey scale; rgb: three band indices (blue to red) for a colour
            composite of images and reconstructions instead.
        pixel_scale: arcsec per pixel, for a scale bar.
    """
    from matplotlib.colors import AsinhNorm, Normalize

    n = images.shape[0]
    columns = ["image"] + (["reconstruction"] if reconstructions is not None else []) + \
              (["residual"] if residuals is not None else [])
    band_name = bands[band] if band < len(bands) else f"channel {band}"
    with style_context():
        panel = 1.5
        fig = new_figure(panel * len(columns) + 1.6, panel * n + 0.3, layout=None)
        grid = fig.add_gridspec(n, len(columns), wspace=0.05, hspace=0.08, left=1.3 / (panel * len(columns) + 1.6),
                                right=1 - 0.3 / (panel * len(columns) + 1.6), top=1 - 0.3 / (panel * n + 0.3), bottom=0)
        for i in range(n):
            ref = images[i, band]
            vmin = float(np.percentile(ref, 0.5))
            vmax = float(max(np.percentile(ref, 99.9), vmin + 1e-12))
            norm = AsinhNorm(linear_width=asinh_width(ref, vmax), vmin=vmin, vmax=vmax)
            for j, what in enumerate(columns):
                ax = fig.add_subplot(grid[i, j])
                if what == "residual":
                    lim = float(max(np.percentile(np.abs(residuals[i]), 99.5), 3.0))
                    im = ax.imshow(residuals[i], origin="lower", cmap="RdBu_r", norm=Normalize(-lim, lim),
                                   interpolation="nearest")
                    cax = ax.inset_axes([0.04, 0.04, 0.5, 0.05])
                    cb = fig.colorbar(im, cax=cax, orientation="horizontal", ticks=[-lim, 0, lim])
                    cb.ax.set_xticklabels([f"{-lim:.0f}", "0", f"{lim:.0f}"])
                    cb.ax.tick_params(labelsize=5, pad=1)
                else:
                    image = images[i] if what == "image" else reconstructions[i]
                    if rgb is not None:
                        mean_ref = images[i][list(rgb)].mean(axis=0)
                        sigma = robust_noise_sigma(mean_ref)
                        peak = max(float(np.percentile(mean_ref, 99.9)), 20 * sigma, 1e-12)
                        ax.imshow(asinh_rgb(image[list(rgb)], peak, max(2 * sigma, 0.01 * peak)), origin="lower",
                                  interpolation="nearest")
                    else:
                        ax.imshow(image[band], origin="lower", cmap="gray", norm=norm, interpolation="nearest")
                if i == 0:
                    title = {"image": "image (" + ("".join(bands[k] if k < len(bands) else str(k) for k in rgb)
                                                   if rgb is not None else band_name) + ")",
                             "reconstruction": "reconstruction", "residual": f"{residual_label} ({band_name})"}[what]
                    ax.set_title(title, fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    if pixel_scale:
                        scale_bar(ax, images.shape[-1], pixel_scale)
                    ax.set_ylabel(row_labels[i], fontsize=7, rotation=0, ha="right", va="center", labelpad=4)
        return save_figure(fig, path)


def plot_score_distribution(scores: np.ndarray, path, *, labels: np.ndarray | None = None,
                            score_label: str = "anomaly score") -> Path:
    """Histogram of the scores (log x where all are positive), one colour per anomaly type."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = bool((scores > 0).all())
    values = np.log10(scores) if positive else scores
    edges = np.histogram_bin_edges(values, bins=40)
    with style_context():
        fig = new_figure(6.4, 3.6)
        ax = fig.subplots()
        if labels is None:
            ax.hist(values, bins=edges, color=plots.model_colour(0))
        else:
            labels = np.asarray(labels).astype(str)
            kinds = ["none"] + sorted(set(labels) - {"none"})
            for k, kind in enumerate(kinds):
                sel = labels == kind
                if sel.any():
                    ax.hist(values[sel], bins=edges, histtype="stepfilled" if kind == "none" else "step",
                            color="0.75" if kind == "none" else plots.model_colour(k - 1), lw=1.4,
                            label=f"{kind} ({int(sel.sum())})")
            ax.legend(fontsize=7)
        ax.set_yscale("log")
        ax.set_xlabel(f"log10 {score_label}" if positive else score_label)
        ax.set_ylabel("objects")
        ax.grid(alpha=0.25)
        return save_figure(fig, path)


def _row_label(rank: int, ident: int, score: float, kind: str | None) -> str:
    text = f"#{rank}  id {ident}\nscore {score:.4g}"
    return text + (f"\n{kind}" if kind is not None else "")


def anomaly_gallery(store: Store | str | os.PathLike, table: pa.Table, out: str | os.PathLike, *, model=None,
                    top: int = 50, per_image: int = 10, k: int = 100) -> Path:
    """Write the gallery of the `top` highest-scoring objects of `table` (from
    :func:`deepfield.tasks.anomaly.score_store`) to the folder `out`; returns its index.html.

    Arguments:
        store: the scored store; model: the model (or folder) whose reconstructions are shown
            (None: images only); per_image: rows per PNG; k: precision@k in the detection table.
    """
    from deepfield.tasks.anomaly import detection_metrics, observed_reconstructions, score_metadata, skipped_ids

    store = store if isinstance(store, Store) else open_store(store)
    if store.kind != "image":
        raise InputError(f"the anomaly gallery shows images; {store.path} holds {store.kind} data")
    if top < 1 or per_image < 1:
        raise InputError(f"top={top}, per_image={per_image}: show at least one object")
    model = as_model(model)
    out = Path(out)
    check_replaceable(out, _MARKER, "anomaly gallery")
    meta = score_metadata(table)
    ids = table.column("id").to_numpy()
    scores = table.column("score").to_numpy().astype(np.float64)
    order = np.argsort(-scores, kind="stable")[:top]
    position = dict(zip(store.ids.tolist(), range(len(store))))
    missing = [int(i) for i in ids[order] if int(i) not in position]
    if missing:
        raise InputError(f"ids {missing[:10]} of the score table are not in {store.path}: pass the store that "
                         "was scored")
    rows = np.array([position[int(i)] for i in ids[order]], dtype=np.int64)
    labels = (np.asarray(table.column("anomaly_type").to_pylist(), dtype=object)
              if "anomaly_type" in table.column_names else None)
    bands = store.bands
    band = bands.index("r") if "r" in bands else 0
    rgb = None
    if store.sample_shape[0] >= 3:
        rgb = [bands.index(b) for b in "gri"] if all(b in bands for b in "gri") else [0, 1, 2]

    with staged_dir(out) as tmp:
        page = H.Page(f"deepfield anomalies: {meta.get('method', 'score')} on {Path(store.path).name}")
        body = page.section("Summary")
        body.append(H.definition_list([
            ("store", f"{Path(store.path).resolve()} (fingerprint {store.fingerprint}, {len(store)} objects)"),
            ("method", meta.get("method", "?") + (f" {meta['options']}" if meta.get("options") else "")),
            ("model", meta.get("model_path") or meta.get("model_class") or
             ", ".join(meta.get("members", [])) or "—"),
            ("objects scored", int(ids.size)),
            ("skipped (NaN/inf pixels)", len(skipped_ids(table))),
            ("score", "higher = more anomalous; rank 1 is the most anomalous"),
        ]))
        if labels is not None and (labels == "none").any() and (labels != "none").any():
            body = page.section("Detection of the injected anomalies")
            metrics = detection_metrics(table, k=k)
            body.append(H.table(["anomaly type", "n", "AUROC", "AUPR", f"precision@{k}", "best possible"],
                                [(name, m["n"], m["auroc"], m["aupr"], m["precision_at_k"], m["precision_ceiling"])
                                 for name, m in metrics.items()], numeric=[False, True, True, True, True, True]))
        body = page.section("Score distribution")
        plot_score_distribution(scores, tmp / "scores.png", labels=labels)
        body.append(H.figure("scores.png", "Scores of all scored objects" +
                             (", one histogram per injected anomaly type." if labels is not None else ".")))
        body = page.section(f"The {rows.size} most anomalous objects")
        x = store.read("x", rows).astype(np.float64)
        recon = observed_reconstructions(model, store, rows) if model is not None else None
        residual = None
        if recon is not None:
            diff = x[:, band] - recon[:, band]
            if store.has("ivar"):
                residual = diff * np.sqrt(np.clip(store.read("ivar", rows)[:, band], 0, None))
            else:
                noise = np.array([max(robust_noise_sigma(x[i, band]), 1e-12) for i in range(rows.size)])
                residual = diff / noise[:, None, None]
        kinds = labels[order] if labels is not None else [None] * rows.size
        for p, start in enumerate(range(0, rows.size, per_image), 1):
            sl = slice(start, start + per_image)
            name = f"gallery_{p:02d}.png"
            plot_anomaly_grid(x[sl], None if recon is None else recon[sl], None if residual is None else residual[sl],
                              tmp / name, row_labels=[_row_label(start + j + 1, int(ids[order][start + j]),
                                                                 float(scores[order][start + j]), kinds[start + j])
                                                      for j in range(len(x[sl]))],
                              bands=bands, band=band, rgb=rgb, pixel_scale=store.pixel_scale,
                              residual_label="residual / σ")
            body.append(H.figure(name, f"Ranks {start + 1}–{start + len(x[sl])}: image" +
                                 (", reconstruction and residual in noise sigma" if recon is not None else "") + "."))
        headers = ["rank", "id", "score"] + (["anomaly type"] if labels is not None else [])
        body.append(H.table(headers, [[r + 1, int(ids[order][r]), float(scores[order][r])] +
                                      ([kinds[r]] if labels is not None else []) for r in range(rows.size)],
                            numeric=[True, True, True, False]))
        (tmp / "index.html").write_text(page.render(footer="written by deepfield.report.anomalies"))
        (tmp / _MARKER).write_text(json.dumps({"method": meta.get("method"), "store": str(store.path),
                                               "top_ids": [int(i) for i in ids[order]]}, indent=2) + "\n")
    return out / "index.html"
