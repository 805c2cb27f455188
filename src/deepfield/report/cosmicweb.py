"""Figures and a page for the cosmic-web validation (:func:`deepfield.tasks.cosmicweb.evaluate_cosmicweb`).

:func:`cosmicweb_figure` draws the statistics as Rodriguez et al. (2018, arXiv:1801.09070)
Figure 2 does: the density histogram, peak counts, 2-D power spectrum and the cross power
spectra, N-body against GAN with their standard-error bands, and under each panel the ratio
GAN / sim (the cross spectra: the difference in combined standard errors) with the +-2 sigma
band. :func:`cosmicweb_examples` shows held-out slices beside samples, and
:func:`write_cosmicweb_report` puts both figures, the summary and the table on one HTML page.
Everything here only draws: the numbers come measured in the result dict.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from deepfield._atomic import staged_dir
from deepfield.report import html as H

__all__ = ["cosmicweb_figure", "cosmicweb_examples", "write_cosmicweb_report"]

_SIM, _GAN = "#1f4e9c", "#d2691e"


def _series(result: dict, statistic: str) -> dict[str, np.ndarray]:
    rows = [r for r in result["rows"] if r["statistic"] == statistic]
    out = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in ("x", "sim", "sim_se", "gan", "gan_se", "z")}
    out["ratio"] = np.array([np.nan if r["ratio"] is None else r["ratio"] for r in rows], dtype=np.float64)
    return out


def _ratio_error(s: dict) -> np.ndarray:
    """Standard error of GAN / sim from both sides' errors (first order)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(s["ratio"]) * np.hypot(s["gan_se"] / s["gan"], s["sim_se"] / s["sim"])


def _band(ax, x, mean, se, colour, label, log_y=False):
    ax.plot(x, mean, color=colour, label=label, lw=1.4)
    low, high = mean - se, mean + se
    if log_y:
        low = np.where(low > 0, low, np.nan)
    ax.fill_between(x, low, high, color=colour, alpha=0.25, lw=0)


def cosmicweb_figure(result: dict, path, *, title: str | None = None) -> Path:
    """Write the Figure-2-like panels of a cosmic-web result as a PNG at `path`; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(2, 4, figsize=(17, 6.8), sharex="col", gridspec_kw={"height_ratios": [2.2, 1]})
    panels = (("density histogram", "log10(1 + delta)", "PDF", False),
              ("peak counts", "peak height delta", "peaks per slice", True),
              ("P(k)", "k [h/Mpc]", "P(k) [(Mpc/h)^2]", True))
    for col, (stat, xlabel, ylabel, log_y) in enumerate(panels):
        s = _series(result, stat)
        ax, rx = axes[0, col], axes[1, col]
        _band(ax, s["x"], s["sim"], s["sim_se"], _SIM, "N-body", log_y)
        _band(ax, s["x"], s["gan"], s["gan_se"], _GAN, "GAN", log_y)
        ax.set_ylabel(ylabel)
        ax.set_title(stat)
        if log_y:
            ax.set_yscale("log")
        if stat != "density histogram":
            ax.set_xscale("log" if stat == "P(k)" else "symlog", **({} if stat == "P(k)" else {"linthresh": 1.0}))
        err = _ratio_error(s)
        rx.axhline(1, color="k", lw=0.8)
        rx.fill_between(s["x"], 1 - 2 * err, 1 + 2 * err, color=_GAN, alpha=0.2, lw=0, label="±2 SE")
        rx.plot(s["x"], s["ratio"], color=_GAN, marker=".", lw=1)
        if stat == "P(k)":
            k_range = result["summary"]["P(k)"].get("k_range")
            if k_range:
                rx.axvspan(*k_range, color="0.9", zorder=0)
                rx.axhline(1.05, color="0.5", ls=":", lw=0.8)
                rx.axhline(0.95, color="0.5", ls=":", lw=0.8)
        finite = s["ratio"][np.isfinite(s["ratio"])]
        spread = max(0.1, min(1.0, float(np.max(np.abs(finite - 1))) * 1.2)) if finite.size else 1.0
        rx.set_ylim(1 - spread, 1 + spread)
        rx.set_ylabel("GAN / N-body")
        rx.set_xlabel(xlabel)
        ax.legend(frameon=False, fontsize=8)
    ax, rx = axes[0, 3], axes[1, 3]
    auto = _series(result, "P(k)")
    for stat, colour, label in (("cross P(k) sim-GAN", _SIM, "sim-sim"), ("cross P(k) sim-GAN", _GAN, "sim-GAN"),
                                ("cross P(k) GAN-GAN", "#2e8b57", "GAN-GAN")):
        s = _series(result, stat)
        side = "sim" if label == "sim-sim" else "gan"
        _band(ax, s["x"], s[side] / auto["sim"], s[f"{side}_se"] / auto["sim"], colour, label)
        if label != "sim-sim":
            rx.plot(s["x"], s["z"], color=colour, marker=".", lw=1, label=label)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_title("cross P(k) / P_sim(k)")
    ax.set_ylabel("cross power / auto power")
    ax.legend(frameon=False, fontsize=8)
    rx.axhspan(-2, 2, color="0.85", zorder=0)
    rx.axhline(0, color="k", lw=0.8)
    rx.set_ylabel("(X - sim-sim) / SE")
    rx.set_xlabel("k [h/Mpc]")
    rx.legend(frameon=False, fontsize=7)
    from matplotlib.ticker import NullFormatter

    for ax in axes.ravel():  # log axes spanning under a decade would label every minor tick
        ax.xaxis.set_minor_formatter(NullFormatter())
    fig.suptitle(title or f"{result['n_slices']} held-out slices, box {result['box_size']:g} Mpc/h, "
                          f"{result['slice_thickness']:g} Mpc/h thick")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def cosmicweb_examples(result: dict, path) -> Path:
    """Held-out slices (top) beside samples (bottom), log10(1 + delta) on one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    sim, gan = np.asarray(result["examples"]["sim"]), np.asarray(result["examples"]["gan"])
    n = max(len(sim), 1)
    logs = [np.log10(np.clip(a, 1e-2, None)) for a in (sim, gan)]
    everything = np.concatenate([a.ravel() for a in logs]) if sim.size else np.zeros(1)
    vmin, vmax = np.percentile(everything, [1, 99.5])
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.6), squeeze=False)
    for row, (label, images) in enumerate((("N-body", logs[0]), ("GAN", logs[1]))):
        for j in range(n):
            ax = axes[row, j]
            ax.axis("off")
            if j < len(images):
                ax.imshow(images[j], cmap="magma", vmin=vmin, vmax=vmax, origin="lower")
            if j == 0:
                ax.set_title(label, loc="left", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_cosmicweb_report(result: dict, out, *, model_name: str = "model") -> Path:
    """A folder `out` with cosmicweb.json (the result), cosmicweb.png (the statistics),
    examples.png and index.html (both figures, the summary and the table), written under a
    hidden name and renamed into place. Returns the path of index.html."""
    out = Path(out)
    with staged_dir(out) as tmp:
        (tmp / "cosmicweb.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
        cosmicweb_figure(result, tmp / "cosmicweb.png")
        cosmicweb_examples(result, tmp / "examples.png")
        page = H.Page(f"Cosmic-web validation of {model_name}")
        body = page.section("Summary")
        body.append(H.definition_list([("held-out slices", result["n_slices"]),
                                       ("box", f"{result['box_size']:g} Mpc/h"),
                                       ("slice thickness", f"{result['slice_thickness']:g} Mpc/h"),
                                       ("mean 1 + delta (sim, GAN)",
                                        f"{result['mean_density']['sim']:.4g}, {result['mean_density']['gan']:.4g}")]))
        summary_rows = []
        for name, entry in result["summary"].items():
            summary_rows.append([name, f"{entry['within_2se']}/{entry['bins']}",
                                 entry.get("max_abs_ratio_error_in_k_range"), entry.get("mean_ratio_in_k_range")])
        body.append(H.table(["statistic", "bins within 2 SE", "max |GAN/sim - 1| in k range",
                             "mean GAN/sim in k range"],
                            summary_rows, numeric=[False, False, True, True]))
        body = page.section("Statistics")
        body.append(H.figure("cosmicweb.png", "N-body (blue) against GAN (orange): density histogram, peak counts, "
                                              "2-D P(k) and the cross spectra, with standard-error bands; below, "
                                              "GAN / N-body with the ±2 standard-error band"))
        body.append(H.figure("examples.png", "Held-out N-body slices (top) and GAN samples (bottom), log10(1 + delta)"))
        body = page.section("Table")
        body.append(H.table(["statistic", "bin", "unit", "sim", "sim SE", "GAN", "GAN SE", "GAN/sim", "z",
                             "within 2 SE"],
                            [[r["statistic"], r["x"], r["unit"], r["sim"], r["sim_se"], r["gan"], r["gan_se"],
                              math.nan if r["ratio"] is None else r["ratio"], r["z"], r["within_2se"]]
                             for r in result["rows"]],
                            numeric=[False, True, False, True, True, True, True, True, True, False]))
        (tmp / "index.html").write_text(page.render("deepfield evaluate cosmicweb"))
    return out / "index.html"
