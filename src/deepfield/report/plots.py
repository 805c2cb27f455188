"""The report's figures: pure functions from arrays to PNG files.

Each function takes numpy arrays and writes one PNG with matplotlib's Agg canvas (no pyplot,
no global backend switch, so importing or calling these never disturbs an interactive
session). Images are in the store's units; reconstruction errors are mean squared errors in
units of the per-band pixel variance (data / per-band pixel std, as in training).

Shapes: images (N, C, H, W); spectra (N, L) on a wavelength grid in Angstrom; codes (N, d).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_training_history", "plot_explained_variance", "plot_image_grid",
           "plot_spectra_grid", "plot_latent", "plot_mse_bars", "plot_mse_vs_column",
           "plot_validation_curves", "asinh_rgb", "is_categorical", "plot_morphology_histograms",
           "plot_sample_grid", "MORPHOLOGY_LABELS", "model_colour", "new_figure", "save_figure", "style_context",
           "robust_noise_sigma", "asinh_width", "scale_bar"]

DPI = 100
_MODEL_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
                  "#17becf")
_RC = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8,
       "xtick.labelsize": 8, "ytick.labelsize": 8}


def new_figure(width: float, height: float, layout: str | None = "constrained"):
    """A matplotlib Figure of `width` x `height` inches at the report's DPI, not tied to pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: Path) -> Path:
    """Write `fig` as a PNG on white at `path`; returns `path`."""
    path = Path(path)
    fig.savefig(path, dpi=DPI, facecolor="white", bbox_inches="tight", pad_inches=0.08)
    return path


def style_context():
    """A context in which matplotlib draws in the report's style."""
    import matplotlib

    return matplotlib.rc_context(_RC)


def model_colour(i: int) -> str:
    """The colour of the `i`-th model (or class) in every figure of a report (cycles)."""
    return _MODEL_COLOURS[i % len(_MODEL_COLOURS)]


def is_categorical(values: np.ndarray, max_classes: int = 12) -> bool:
    """True for class labels: strings, or integers with at most `max_classes` distinct values."""
    values = np.asarray(values)
    if values.dtype.kind in "USOb":
        return True
    if values.dtype.kind in "iu":
        return np.unique(values).size <= max_classes
    return False


# --------------------------------------------------------------------------------------
# training


def plot_training_history(history: Sequence[Mapping], path, title: str = "",
                          mse_label: str = "MSE / per-band pixel variance") -> Path:
    """Train and validation loss (and MSE, where it differs from the loss) against epoch.

    `history` is metrics.json's list of per-epoch dicts (epoch counted from 0; plotted from 1).
    """
    epochs = np.array([row.get("epoch", i) for i, row in enumerate(history)], dtype=float) + 1
    series = {k: np.array([row.get(k, np.nan) for row in history], dtype=float)
              for k in ("train_loss", "val_loss", "train_mse", "val_mse")}
    panels = [("loss", "training objective")]
    same = all(np.allclose(series[f"{s}_loss"], series[f"{s}_mse"], equal_nan=True) for s in ("train", "val"))
    if not same and np.isfinite(series["train_mse"]).any():
        panels.append(("mse", mse_label))
    elif same:
        panels[0] = ("loss", f"loss = {mse_label}")
    with style_context():
        fig = new_figure(4.2 * len(panels) + 0.6, 3.2)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (key, ylabel) in zip(axes, panels):
            for split, style in (("train", "-o"), ("val", "--s")):
                y = series[f"{split}_{key}"]
                ok = np.isfinite(y)
                if ok.any():
                    ax.plot(epochs[ok], y[ok], style, ms=3.5, label="validation" if split == "val" else split)
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            finite = np.concatenate([series[f"{s}_{key}"] for s in ("train", "val")])
            finite = finite[np.isfinite(finite)]
            if finite.size and finite.min() > 0 and finite.max() / finite.min() > 20:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend()
            ax.xaxis.get_major_locator().set_params(integer=True)
        if title:
            fig.suptitle(title)
        return save_figure(fig, path)


def plot_explained_variance(ratio: Sequence[float], path, title: str = "") -> Path:
    """PCA: fraction of the (normalised) pixel variance per component, and cumulative."""
    ratio = np.asarray(ratio, dtype=float)
    k = np.arange(1, ratio.size + 1)
    with style_context():
        fig = new_figure(5.6, 3.3)
        ax = fig.subplots()
        ax.bar(k, ratio, color="#9ecae1", edgecolor="#3182bd", label="per component")
        ax.plot(k, np.cumsum(ratio), "-o", color="#d62728", ms=3.5, label="cumulative")
        ax.set_xlabel("principal component")
        ax.set_ylabel("fraction of pixel variance explained")
        ax.set_ylim(0, min(1.02, max(1e-3, float(np.cumsum(ratio)[-1]) * 1.1)))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(loc="center right")
        if title:
            ax.set_title(title)
        return save_figure(fig, path)


def plot_validation_curves(curves: Mapping[str, Sequence[Mapping] | float], path,
                           mse_label: str = "MSE / per-band pixel variance") -> Path:
    """Validation MSE per epoch for every trained model; closed-form fits (PCA) as lines.

    `curves`: model name -> metrics.json history (a list of per-epoch dicts), or one
    validation MSE (a float) for a model without epochs. Colours follow the mapping's order.
    """
    with style_context():
        fig = new_figure(6.0, 3.4)
        ax = fig.subplots()
        for i, (name, curve) in enumerate(curves.items()):
            if not isinstance(curve, (int, float)):
                rows = curve
                e = np.array([r.get("epoch", j) for j, r in enumerate(rows)], dtype=float) + 1
                y = np.array([r.get("val_mse", r.get("val_loss", np.nan)) for r in rows], dtype=float)
                ok = np.isfinite(y)
                ax.plot(e[ok], y[ok], "-o", ms=3, color=model_colour(i), label=name)
            elif np.isfinite(curve):
                ax.axhline(curve, ls="--", color=model_colour(i), label=f"{name} (closed form)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {mse_label}")
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
        return save_figure(fig, path)


# --------------------------------------------------------------------------------------
# images


def robust_noise_sigma(x: np.ndarray) -> float:
    """Robust pixel noise estimate: 1.4826 x the median absolute deviation."""
    x = np.asarray(x, dtype=np.float64).ravel()
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def asinh_width(x: np.ndarray, vmax: float) -> float:
    """The linear width of the asinh stretch of image `x` whose display peak is `vmax` (its units)."""
    # the linear part of the asinh stretch spans about one noise sigma, so the sky looks like
    # noise and the galaxy's wings stay visible; noiseless images fall back to 1% of the peak
    return max(robust_noise_sigma(x), 0.01 * abs(vmax), 1e-12)


def asinh_rgb(bgr: np.ndarray, peak: float, width: float) -> np.ndarray:
    """Lupton et al. (2004) style colour composite of 3 bands, blue to red, shape (3, H, W).

    Sky-subtracted flux is clipped at zero per band; the mean intensity I is stretched by
    asinh(I / width) / asinh(peak / width) and each band keeps its share of I, so colours
    stay true where bright cores saturate. With `width` a few noise sigma the sky stays dark.
    Returns (H, W, 3) in [0, 1]. Reference: Lupton et al. 2004, PASP 116, 133
    (arXiv:astro-ph/0312483).
    """
    bgr = np.clip(np.asarray(bgr, dtype=np.float64), 0, None)
    intensity = bgr.mean(axis=0)
    scale = np.arcsinh(intensity / width) / np.arcsinh(max(peak, width) / width)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(intensity > 0, scale / intensity, 0.0)
    rgb = np.clip(bgr[::-1] * factor, 0, None).transpose(1, 2, 0)  # R, G, B planes last
    top = rgb.max(axis=2, keepdims=True)
    rgb = np.where(top > 1, rgb / np.maximum(top, 1e-30), rgb)
    return np.clip(rgb, 0, 1)


def _asinh_ticks(norm, max_ticks: int = 5) -> list[float]:
    """Round-number colourbar ticks for an asinh stretch, spread evenly along the bar."""
    vmin, vmax = float(norm.vmin), float(norm.vmax)
    span = max(abs(vmin), abs(vmax))
    candidates = [0.0] if vmin <= 0 <= vmax else []
    for e in range(int(np.floor(np.log10(span))) - 3, int(np.floor(np.log10(span))) + 1):
        for m in (1, 2, 5):
            candidates += [m * 10.0**e, -m * 10.0**e]
    candidates = [c for c in candidates if vmin <= c <= vmax]
    candidates.sort(key=lambda c: (c != 0, -abs(c)))  # zero first, then the largest
    chosen: list[float] = []
    for c in candidates:
        pos = float(norm(c))
        if all(abs(pos - float(norm(t))) > 0.16 for t in chosen):
            chosen.append(c)
        if len(chosen) >= max_ticks:
            break
    return sorted(chosen)


def scale_bar(ax, width_px: int, pixel_scale: float, colour: str = "white") -> None:
    """Draw an angular scale bar (arcsec) on the image axes `ax` of a `width_px`-pixel stamp."""
    width = width_px * pixel_scale
    nice = [v for v in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120) if v <= width / 3]
    if not nice:
        return
    length = nice[-1]
    x0, y0 = 0.06 * width_px - 0.5, 0.08 * width_px - 0.5
    x1 = x0 + length / pixel_scale
    ax.plot([x0, x1], [y0, y0], color=colour, lw=2, solid_capstyle="butt")
    ax.text(x1 + 0.03 * width_px, y0, f"{length:g}″", color=colour, fontsize=7, va="center", ha="left")


def plot_image_grid(inputs: np.ndarray, reconstructions: Mapping[str, np.ndarray], path, *,
                    row_labels: Sequence[str], mse: Mapping[str, np.ndarray], bands: Sequence[str] = (),
                    band: int = 0, rgb: Sequence[int] | None = None, pixel_scale: float | None = None,
                    flux_unit: str = "store units") -> Path:
    """Rows of objects; columns: input, each model's reconstruction, each model's residual.

    Arguments:
        inputs: (N, C, H, W) images in store units.
        reconstructions: model name -> (N, C, H, W) reconstructions.
        row_labels: one annotation per object (id, magnitude, size).
        mse: model name -> (N,) per-object MSE in units of the per-band pixel variance.
        band: index of the band shown (and used for residuals).
        rgb: three band indices, blue to red, for a colour composite of input and
            reconstructions (residuals stay in `band`).
        pixel_scale: arcsec per pixel, for a scale bar.
    """
    from matplotlib.colors import AsinhNorm, Normalize
    from matplotlib.ticker import FormatStrFormatter, NullLocator

    names = list(reconstructions)
    n, _, h, w = inputs.shape
    band_name = bands[band] if band < len(bands) else f"channel {band}"
    single = len(names) == 1
    with style_context():
        # narrow gaps between images; wider ones after the reconstructions and the residuals
        # (an empty grid column each) for their colourbars
        gap = 0.5 if rgb is None else 0.0
        ratios = [1.0] * (1 + len(names)) + [gap] + [1.0] * len(names) + [gap]
        wspace, hspace, panel = 0.06, 0.1, 1.6
        width = panel * (sum(ratios) + wspace * (len(ratios) - 1))
        height = panel * (n + hspace * (n - 1))
        fig = new_figure(width, height, layout=None)
        grid = fig.add_gridspec(n, len(ratios), width_ratios=ratios, wspace=wspace, hspace=hspace,
                                left=0, right=1, top=1, bottom=0)
        columns = [j for j in range(len(ratios)) if ratios[j] == 1.0]
        axes = np.array([[fig.add_subplot(grid[i, j]) for j in columns] for i in range(n)], dtype=object)
        for i in range(n):
            ref = inputs[i, band]
            recs = [reconstructions[m][i, band] for m in names]
            both = np.concatenate([ref.ravel(), *[r.ravel() for r in recs]])
            vmin = float(np.percentile(both, 0.5))
            vmax = float(max(np.percentile(ref, 99.9), np.max(both) * 0.999))
            if vmax <= vmin:
                vmax = vmin + 1e-12
            norm = AsinhNorm(linear_width=asinh_width(ref, vmax), vmin=vmin, vmax=vmax)
            residuals = [inputs[i, band] - reconstructions[m][i, band] for m in names]
            lim = float(max(np.percentile(np.abs(np.stack(residuals)), 99.5), 1e-12))
            rnorm = Normalize(-lim, lim)
            panels = [(inputs[i], "input"), *[(reconstructions[m][i], m) for m in names]]
            for j, (image, name) in enumerate(panels):
                ax = axes[i, j]
                if rgb is not None:
                    cube = image[list(rgb)]
                    ref_cube = inputs[i][list(rgb)]
                    mean_ref = ref_cube.mean(axis=0)
                    sigma = robust_noise_sigma(mean_ref)
                    peak = max(float(np.percentile(mean_ref, 99.9)), 20 * sigma, 1e-12)
                    ax.imshow(asinh_rgb(cube, peak, max(2 * sigma, 0.01 * peak)), origin="lower",
                              interpolation="nearest")
                else:
                    im = ax.imshow(image[band], origin="lower", cmap="gray", norm=norm, interpolation="nearest")
                if i == 0:
                    if j == 0:
                        what = ("input (" + "".join(bands[k] if k < len(bands) else str(k) for k in rgb) + ")"
                                if rgb is not None else f"input ({band_name})")
                    else:
                        what = "reconstruction" if single else name
                    ax.set_title(what)
            if rgb is None:
                cax = axes[i, len(names)].inset_axes([1.04, 0.0, 0.06, 1.0])
                cb = fig.colorbar(im, cax=cax, ticks=_asinh_ticks(im.norm))
                cb.ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
                cb.ax.yaxis.set_minor_locator(NullLocator())
                cb.ax.tick_params(labelsize=6)
                if i == n - 1:
                    cb.set_label(f"flux [{flux_unit}], asinh", fontsize=7)
            for k, m in enumerate(names):
                ax = axes[i, 1 + len(names) + k]
                rim = ax.imshow(residuals[k], origin="lower", cmap="RdBu_r", norm=rnorm, interpolation="nearest")
                ax.text(0.03, 0.97, f"MSE {mse[m][i]:.3g}", transform=ax.transAxes, va="top", ha="left",
                        fontsize=6.5, color="black", bbox=dict(fc="white", ec="none", alpha=0.7, pad=1))
                if i == 0:
                    ax.set_title("residual" if single else f"residual {m}")
            cax = axes[i, -1].inset_axes([1.04, 0.0, 0.06, 1.0])
            cb = fig.colorbar(rim, cax=cax)
            cb.ax.tick_params(labelsize=6)
            if i == n - 1:
                cb.set_label("input − recon.", fontsize=7)
            for ax in axes[i]:
                ax.set_xticks([])
                ax.set_yticks([])
            if pixel_scale:
                scale_bar(axes[i, 0], w, pixel_scale)
            axes[i, 0].set_ylabel(row_labels[i], fontsize=7, rotation=0, ha="right", va="center", labelpad=4)
        return save_figure(fig, path)


# --------------------------------------------------------------------------------------
# spectra


def plot_spectra_grid(wavelength: np.ndarray | None, inputs: np.ndarray, reconstructions: Mapping[str, np.ndarray],
                      path, *, row_labels: Sequence[str], mse: Mapping[str, np.ndarray],
                      flux_unit: str = "store units") -> Path:
    """Per object: input and reconstruction(s) against wavelength, residuals below.

    Arguments:
        wavelength: (L,) observed wavelength in Angstrom (None: pixel index).
        inputs: (N, L) spectra in store units; reconstructions: name -> (N, L).
    """
    names = list(reconstructions)
    n, length = inputs.shape
    x = np.arange(length) if wavelength is None else np.asarray(wavelength)
    xlabel = "pixel" if wavelength is None else "observed wavelength [Å]"
    single = len(names) == 1
    with style_context():
        fig = new_figure(9.0, 2.4 * n + 0.4, layout="constrained")
        grid = fig.add_gridspec(2 * n, 1, height_ratios=[3, 1.2] * n)
        for i in range(n):
            top = fig.add_subplot(grid[2 * i])
            bottom = fig.add_subplot(grid[2 * i + 1], sharex=top)
            top.plot(x, inputs[i], color="0.35", lw=0.8, label="input")
            for k, m in enumerate(names):
                label = "reconstruction" if single else m
                top.plot(x, reconstructions[m][i], color=model_colour(k), lw=1.0, label=f"{label} (MSE {mse[m][i]:.3g})")
                bottom.plot(x, inputs[i] - reconstructions[m][i], color=model_colour(k), lw=0.7)
            bottom.axhline(0, color="k", lw=0.6)
            top.set_ylabel(f"flux [{flux_unit}]")
            top.set_title(row_labels[i].replace("\n", ", "), loc="left", fontsize=8)
            top.legend(loc="upper right", fontsize=7, ncol=min(4, 1 + len(names)))
            top.tick_params(labelbottom=False)
            bottom.set_ylabel("residual")
            if i == n - 1:
                bottom.set_xlabel(xlabel)
            for ax in (top, bottom):
                ax.grid(alpha=0.25)
        return save_figure(fig, path)


# --------------------------------------------------------------------------------------
# latent space


def _scatter_coloured(fig, ax, x, y, values, label, categorical, class_names=None):
    size = float(np.clip(3000 / max(x.size, 1), 3, 25))
    if values is None:
        ax.scatter(x, y, s=size, color="#1f77b4", alpha=0.7, lw=0)
        return
    if categorical:
        classes = np.unique(values.astype(str) if values.dtype.kind in "OSU" else values)
        for k, c in enumerate(classes):
            sel = values.astype(str) == str(c) if values.dtype.kind in "OSU" else values == c
            name = f"{label.split(' [')[0]} = {c}"
            if class_names and str(c) in class_names:
                name += f" ({class_names[str(c)]})"
            ax.scatter(x[sel], y[sel], s=size, color=model_colour(k), alpha=0.8, lw=0, label=name)
        ax.legend(markerscale=max(1.0, 12 / size), loc="best")
        return
    values = values.astype(float)
    ok = np.isfinite(values)
    if (~ok).any():
        ax.scatter(x[~ok], y[~ok], s=size, color="0.7", lw=0, label="no value")
        ax.legend(loc="best")
    order = np.argsort(values[ok])  # draw extreme values last, on top
    sc = ax.scatter(x[ok][order], y[ok][order], c=values[ok][order], s=size, cmap="viridis", lw=0, alpha=0.85)
    fig.colorbar(sc, ax=ax, label=label)


def plot_latent(codes: np.ndarray, path, *, values: np.ndarray | None = None, label: str = "",
                title: str = "", class_names: Mapping[str, str] | None = None) -> Path:
    """Codes of held-out objects: dims 1 and 2, and (latent_dim > 2) their 2-D PCA projection.

    Arguments:
        codes: (N, d) latent codes.
        values: (N,) catalog values to colour by (None: one colour); integer or string
            labels with few distinct values get one colour per class and a legend.
        label: colourbar label, e.g. 'magnitude [mag]'.
        class_names: class label (as text) -> name, e.g. {'0': 'setosa'}, for the legend.
    """
    codes = np.asarray(codes, dtype=np.float64)
    n, d = codes.shape
    categorical = values is not None and is_categorical(values)
    panels = []
    if d == 1:
        panels.append(("z1 vs value", None))
    else:
        panels.append(("dims", (codes[:, 0], codes[:, 1], "z$_1$", "z$_2$", "latent dimensions 1 and 2")))
    if d > 2:
        centred = codes - codes.mean(axis=0)
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        proj = centred @ vt[:2].T
        frac = s**2 / max(float(np.sum(s**2)), 1e-300)
        panels.append(("pca", (proj[:, 0], proj[:, 1], f"code PC1 ({100 * frac[0]:.0f}% of code variance)",
                               f"code PC2 ({100 * frac[1]:.0f}%)", f"PCA projection of the {d}-D codes")))
    with style_context():
        fig = new_figure(4.8 * len(panels) + 0.8, 4.0)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (kind, spec) in zip(axes, panels):
            if spec is None:
                if values is None or categorical:
                    ax.hist(codes[:, 0], bins=40, color="#1f77b4")
                    ax.set_xlabel("z$_1$")
                    ax.set_ylabel("objects")
                else:
                    ax.scatter(values, codes[:, 0], s=6, lw=0)
                    ax.set_xlabel(label)
                    ax.set_ylabel("z$_1$")
                ax.set_title("1-D latent space")
            else:
                x, y, xl, yl, t = spec
                _scatter_coloured(fig, ax, x, y, values, label, categorical, class_names)
                ax.set_xlabel(xl)
                ax.set_ylabel(yl)
                ax.set_title(t)
            ax.grid(alpha=0.25)
        if title:
            fig.suptitle(title)
        return save_figure(fig, path)


# --------------------------------------------------------------------------------------
# errors


def plot_mse_bars(names: Sequence[str], values: Sequence[float], path, *, recorded: Sequence[float] | None = None,
                  n_objects: int | None = None, mse_label: str = "MSE / per-band pixel variance") -> Path:
    """Held-out MSE per model (bars), with the value recorded at training as a marker."""
    values = np.asarray(values, dtype=float)
    y = np.arange(len(names))
    with style_context():
        fig = new_figure(6.2, 0.55 * len(names) + 1.3)
        ax = fig.subplots()
        ax.barh(y, values, color=[model_colour(i) for i in range(len(names))], alpha=0.85,
                label=f"on the {n_objects} objects of this report" if n_objects else "this report")
        if recorded is not None:
            rec = np.asarray(recorded, dtype=float)
            ok = np.isfinite(rec)
            ax.plot(rec[ok], y[ok], "k|", ms=16, mew=2, label="test MSE in metrics.json")
        for yi, v in zip(y, values):
            ax.text(v, yi, f" {v:.4g}", va="center", fontsize=8)
        ax.set_yticks(y, list(names))
        ax.invert_yaxis()
        ax.set_xlabel(f"reconstruction {mse_label}")
        ax.set_xlim(0, float(np.nanmax(values)) * 1.25 if np.isfinite(values).any() else 1)
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=7, frameon=False)
        ax.grid(alpha=0.3, axis="x")
        return save_figure(fig, path)


def _binned(x: np.ndarray, y: np.ndarray, nbins: int):
    """Equal-count bins in x: centres (median x), median y, 16th and 84th percentile of y."""
    order = np.argsort(x)
    groups = [g for g in np.array_split(order, nbins) if g.size]
    centres = np.array([np.median(x[g]) for g in groups])
    q = np.array([np.percentile(y[g], (16, 50, 84)) for g in groups])
    return centres, q[:, 1], q[:, 0], q[:, 2]


def plot_mse_vs_column(values: np.ndarray, mse: Mapping[str, np.ndarray], path, *, label: str,
                       nbins: int | None = None, mse_label: str = "MSE / per-band pixel variance",
                       class_names: Mapping[str, str] | None = None) -> Path:
    """Per-object reconstruction MSE against a catalog column, median per bin.

    Continuous columns get equal-count bins (16-84th percentile band for the first model);
    class labels get one bin per class.
    """
    values = np.asarray(values)
    categorical = is_categorical(values)
    names = list(mse)
    with style_context():
        fig = new_figure(6.4, 3.8)
        ax = fig.subplots()
        allpos = all(np.all(np.asarray(v) > 0) for v in mse.values())
        if categorical:
            classes = np.unique(values.astype(str)) if values.dtype.kind in "OSU" else np.unique(values)
            key = values.astype(str) if values.dtype.kind in "OSU" else values
            rng = np.random.default_rng(0)
            width = 0.8 / max(len(names), 1)
            for k, m in enumerate(names):
                med = []
                for c_i, c in enumerate(classes):
                    y = np.asarray(mse[m])[key == c]
                    xs = c_i + (k - (len(names) - 1) / 2) * width
                    ax.scatter(xs + rng.uniform(-width / 3, width / 3, y.size), y, s=6, color=model_colour(k), alpha=0.35, lw=0)
                    med.append((xs, np.median(y) if y.size else np.nan))
                xs, ys = np.array(med).T
                ax.plot(xs, ys, "D", color=model_colour(k), ms=6, mec="k", label=f"{m} (median)")
            names_of = class_names or {}
            ax.set_xticks(np.arange(len(classes)),
                          [f"{c}\n{names_of[str(c)]}" if str(c) in names_of else str(c) for c in classes])
        else:
            x = values.astype(float)
            ok = np.isfinite(x)
            nb = nbins or int(np.clip(ok.sum() // 15, 3, 12))
            for k, m in enumerate(names):
                y = np.asarray(mse[m], dtype=float)
                ax.scatter(x[ok], y[ok], s=7, color=model_colour(k), alpha=0.35 if len(names) == 1 else 0.25, lw=0)
                c, med, lo, hi = _binned(x[ok], y[ok], nb)
                if k == 0:
                    ax.fill_between(c, lo, hi, color=model_colour(k), alpha=0.15, lw=0, label=f"{m} 16–84%")
                ax.plot(c, med, "-o", color=model_colour(k), ms=4, label=f"{m} median per bin")
        if allpos:
            from matplotlib.ticker import FormatStrFormatter, NullFormatter

            ax.set_yscale("log")
            lo, hi = ax.get_ylim()
            if hi / lo < 100:  # a short log axis reads better with plain numbers
                ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
                if hi / lo < 8:  # too few decades for major ticks alone
                    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
                else:
                    ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel(f"reconstruction {mse_label}")
        ax.grid(alpha=0.25)
        ax.legend(fontsize=7)
        return save_figure(fig, path)


# --------------------------------------------------------------------------------------
# generative models

#: axis labels (with units) of the morphology statistics (deepfield.tasks.evaluate.STATISTICS)
MORPHOLOGY_LABELS = {"magnitude": "magnitude (zeropoint 30, counts)", "sigma_arcsec": "HSM size σ (arcsec)",
                     "e": "HSM |e| (distortion)", "rho4": "HSM ρ4 (kurtosis)", "gini": "Gini", "m20": "M20",
                     "concentration": "concentration C", "asymmetry": "asymmetry A"}


def plot_morphology_histograms(measurements: Mapping[str, Mapping[str, np.ndarray]], path, *,
                               reference: str = "held-out") -> Path:
    """One panel per statistic: histograms of the held-out galaxies (grey, filled) and of each
    prior's samples observed the same way (lines), on the held-out 1st-99th percentile range widened
    towards the samples (deepfield.report.checks.histogram_range); legends count values outside it."""
    sets = list(measurements)
    stats = [k for k in measurements[reference] if k in MORPHOLOGY_LABELS] or list(measurements[reference])
    cols = 4
    rows = -(-len(stats) // cols)
    with style_context():
        fig = new_figure(2.6 * cols, 2.1 * rows)
        axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
        for ax, stat in zip(axes, stats):
            ref = np.asarray(measurements[reference][stat], dtype=float)
            ref = ref[np.isfinite(ref)]
            if ref.size < 2:
                ax.set_axis_off()
                continue
            from deepfield.report.checks import histogram_range

            lo, hi = histogram_range(ref, [np.asarray(measurements[n][stat], dtype=float)[
                np.isfinite(np.asarray(measurements[n][stat], dtype=float))] for n in sets if n != reference])
            bins = np.linspace(lo, hi, 31)
            for k, name in enumerate(sets):
                v = np.asarray(measurements[name][stat], dtype=float)
                v = v[np.isfinite(v)]
                if not ((v >= lo) & (v <= hi)).any():  # nothing in the plotted range: say so in the legend
                    ax.plot([], [], color=model_colour(k), label=f"{name}: all {v.size} outside")
                    continue
                outside = int(((v < lo) | (v > hi)).sum())
                label = f"{name} ({v.size}" + (f", {outside} outside)" if outside else ")")
                if name == reference:
                    ax.hist(v, bins, density=True, color="0.75", label=label)
                else:
                    ax.hist(v, bins, density=True, histtype="step", lw=1.4, color=model_colour(k), label=label)
            ax.set_xlabel(MORPHOLOGY_LABELS.get(stat, stat))
            ax.set_yticks([])
        for ax in axes[len(stats):]:
            ax.set_axis_off()
        for ax in axes[:len(stats)]:  # each panel's counts outside its own range
            if ax.axison:
                ax.legend(fontsize=5, loc="upper left")
        return save_figure(fig, path)


def plot_sample_grid(panels: Mapping[str, np.ndarray], path, *, band: int = 0, pixel_scale: float | None = None,
                     column_labels: Sequence[str] | None = None, flux_unit: str = "store units",
                     stretch: str = "column") -> Path:
    """Rows of images (one row per panel name: held-out / samples per prior, or one row per
    condition value). `stretch`: one asinh stretch for the whole 'figure' (brightness compares
    everywhere), per 'column' (a held-out galaxy and the samples beside it), or per 'panel'."""
    from matplotlib.colors import AsinhNorm

    names = list(panels)
    stack = [np.asarray(panels[k])[:, band] for k in names]
    n = max(s.shape[0] for s in stack)

    def limits(pixels: np.ndarray) -> tuple[float, float, float]:
        sigma = robust_noise_sigma(pixels)
        hi = float(np.percentile(pixels, 99.7))
        lo = -3 * sigma if sigma > 0 else float(pixels.min())
        return lo, max(hi, lo + 1e-12), asinh_width(pixels, hi)

    whole = limits(np.concatenate([s.ravel() for s in stack]))
    per_column = [limits(np.concatenate([s[j].ravel() for s in stack if j < s.shape[0]])) for j in range(n)]
    with style_context():
        fig = new_figure(1.05 * n + 1.2, 1.05 * len(names) + 0.5)
        axes = fig.subplots(len(names), n, squeeze=False)
        for i, name in enumerate(names):
            for j in range(n):
                ax = axes[i, j]
                ax.set_xticks([])
                ax.set_yticks([])
                if j >= stack[i].shape[0]:
                    ax.set_axis_off()
                    continue
                img = stack[i][j]
                lo, hi, width = {"figure": whole, "column": per_column[j]}.get(stretch) or limits(img)
                ax.imshow(img, origin="lower", cmap="gray", interpolation="nearest",
                          norm=AsinhNorm(linear_width=width, vmin=lo, vmax=hi))
                if i == 0 and column_labels is not None and j < len(column_labels):
                    ax.set_title(column_labels[j], fontsize=7)
                if j == 0:
                    ax.set_ylabel(name, fontsize=7)
                if pixel_scale and i == len(names) - 1 and j == 0:
                    scale_bar(ax, img.shape[-1], pixel_scale)
        fig.suptitle(f"asinh stretch per {stretch} ({flux_unit})", fontsize=7)
        return save_figure(fig, path)
