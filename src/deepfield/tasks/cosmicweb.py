"""Validate a cosmic-web emulator: generated density slices against held-out N-body slices.

The statistics are those of Rodriguez et al. (2018, https://arxiv.org/abs/1801.09070, Figure 2),
measured here by :mod:`deepfield.physics.statistics` on as many model samples as there are
held-out slices (the model's test split of a ``deepfield simulate nbody --slices`` store):

- the density histogram: the one-point PDF of log10(1 + delta) over the pixels of each slice;
- peak counts: the number of local maxima (higher than their 8 neighbours, periodic) per slice
  in bins of their height delta;
- the 2-D power spectrum P(k) of delta per slice, k in h/Mpc, P in (Mpc/h)^2;
- cross power spectra between pairs of independent slices: sim-sim (two slices of different
  simulations), GAN-GAN (two samples) and sim-GAN: all should be consistent with zero, and a
  GAN that copies its training slices or collapses onto few modes shows here.

Both sides are mapped to the density contrast delta = x - 1 (the store holds 1 + delta, the
mean over each slab). Each statistic is a mean over slices with its standard error (standard
deviation over slices / sqrt(count)); held-out slices of one simulation are correlated at
large scales, so these errors are lower bounds there. Per bin the table gives GAN / sim, the
difference in combined standard errors z = (GAN - sim) / sqrt(se_sim^2 + se_GAN^2), and whether
|z| <= 2. For the cross spectra "sim" is the sim-sim cross power and the ratio is not defined.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from deepfield.data.store import Store, open_store
from deepfield.errors import InputError
from deepfield.models.protocol import has
from deepfield.tasks.apply import resolve_indices

__all__ = ["evaluate_cosmicweb", "slice_geometry", "STATISTICS", "K_RANGE"]

#: the statistics of the table, in its order
STATISTICS = ("density histogram", "peak counts", "P(k)", "cross P(k) sim-GAN", "cross P(k) GAN-GAN")
#: the k range (h/Mpc) of the headline P(k) ratio (Rodriguez et al. 2018's well-resolved scales)
K_RANGE = (0.06, 0.4)


def slice_geometry(store: Store) -> dict:
    """Box side and slab thickness (Mpc/h) of a store of 2-D density slices.

    Raises InputError naming the fix when the store does not hold single-channel square slices
    with their box size (``deepfield simulate nbody --slices`` writes them).
    """
    shape = tuple(store.sample_shape)
    extra = (store.meta or {}).get("extra", {}) or {}
    remedy = "make one with `deepfield simulate nbody OUT --n-sims N --slices THICKNESS`"
    if store.kind != "image" or len(shape) != 3 or shape[0] != 1 or shape[1] != shape[2]:
        raise InputError(f"store {store.path} holds {store.kind} data of shape {shape}, not 2-D density slices "
                         f"(1, H, H): {remedy}")
    box = extra.get("box_size_mpc_h")
    if box is None and "box_size" in store.columns:
        box = float(np.asarray(store.column("box_size"))[0])
    if extra.get("slice_thickness_mpc_h") is None and "slice_thickness" not in store.columns:
        raise InputError(f"store {store.path} records no slice thickness: its fields are not projected slices; "
                         f"{remedy}")
    if box is None or not box > 0:
        raise InputError(f"store {store.path} records no box size (meta extra 'box_size_mpc_h' or a 'box_size' "
                         f"column): {remedy}")
    thickness = extra.get("slice_thickness_mpc_h")
    if thickness is None:
        thickness = float(np.asarray(store.column("slice_thickness"))[0])
    return {"box_size": float(box), "slice_thickness": float(thickness), "pixels": int(shape[1])}


def _mean_se(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over the first axis of (S, B) values (NaN bins stay NaN)."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    mean = values.mean(axis=0)
    se = values.std(axis=0, ddof=1) / math.sqrt(n) if n > 1 else np.full_like(mean, np.nan)
    return mean, se


def _rows(statistic: str, centres: np.ndarray, unit: str, sim: np.ndarray, gan: np.ndarray,
          ratio: bool = True) -> list[dict]:
    """Table rows of one statistic from per-slice values (S, B) of both sides."""
    sim_mean, sim_se = _mean_se(sim)
    gan_mean, gan_se = _mean_se(gan)
    out = []
    for i, x in enumerate(centres):
        s, ss, g, gs = float(sim_mean[i]), float(sim_se[i]), float(gan_mean[i]), float(gan_se[i])
        combined = math.hypot(ss, gs)
        z = (g - s) / combined if combined > 0 else (0.0 if g == s else math.inf)
        r = g / s if ratio and s != 0 else None
        out.append({"statistic": statistic, "x": float(x), "unit": unit, "sim": s, "sim_se": ss, "gan": g,
                    "gan_se": gs, "ratio": r, "z": z, "within_2se": bool(abs(z) <= 2)})
    return out


def _partners(n: int, sims: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """For each of `n` slices i a partner j != i, from another simulation where `sims` says which
    (slabs of one box share its large-scale modes: their cross power is not zero)."""
    order = rng.permutation(n)
    partner = np.empty(n, dtype=np.int64)
    for pos, i in enumerate(order):
        for step in range(1, n):
            j = order[(pos + step) % n]
            if sims is None or sims[j] != sims[i]:
                partner[i] = j
                break
        else:
            partner[i] = order[(pos + 1) % n]
    return partner


def _default_edges(values: np.ndarray, low: float, high: float, bins: int) -> np.ndarray:
    lo, hi = np.percentile(values, [low, high])
    if not hi > lo:
        hi = lo + 1e-3
    return np.linspace(lo, hi, bins + 1)


@torch.no_grad()
def evaluate_cosmicweb(model, store, *, split: str | None = "test", n: int | None = None, seed: int = 0,
                       kedges=None, density_edges=None, peak_edges=None, batch_size: int = 64,
                       k_range: tuple[float, float] = K_RANGE, examples: int = 4) -> dict:
    """Compare samples of a generative `model` with the held-out slices of a slices `store`.

    Arguments:
        model: a generative model (``sample``) of (1, H, H) slices in the store's units (1 + delta).
        store: a store of 2-D density slices (``deepfield simulate nbody --slices``).
        split: the model's split to compare with ('test': its held-out slices; None: every row).
        n: at most this many held-out slices (and as many samples).
        seed: seeds the samples and the pairing of slices for the cross spectra.
        kedges: P(k) bins: None (one fundamental 2 pi / L wide), a count, or edges in h/Mpc.
        density_edges: edges of log10(1 + delta) for the density histogram (default: 24 bins
            between the 0.1 and 99.9 percentiles of the held-out slices).
        peak_edges: edges of peak height delta (default: 14 bins, even in log10(1 + delta),
            between the 1 and 99.5 percentiles of the held-out slices' peaks).
        batch_size: samples drawn per call.
        k_range: (k_min, k_max) in h/Mpc of the summary's P(k) ratio.
        examples: held-out slices and samples kept (1 + delta, (examples, H, H)) for figures.

    Returns:
        {"n_slices", "box_size", "slice_thickness", "pixels", "rows" (the table: one dict per
        statistic and bin, see the module docstring), "summary" (per statistic: bins, fraction
        within 2 standard errors; for P(k) the largest |GAN / sim - 1| and the mean ratio over
        `k_range`), "examples": {"sim", "gan"} as lists}.
    """
    from deepfield.physics.statistics import (cross_power_spectrum, density_histogram, local_maxima, peak_counts,
                                              power_spectrum)

    store = store if isinstance(store, Store) else open_store(store)
    if not has(model, "sample"):
        raise InputError(f"the cosmic-web validation compares samples with simulations: {type(model).__name__} "
                         "cannot sample; train a generative model (wgan-gp, dcgan, cgan, vae)")
    geometry = slice_geometry(store)
    shape = tuple(store.sample_shape)
    if tuple(getattr(model, "input_shape", ())) != shape:
        raise InputError(f"the model makes {tuple(getattr(model, 'input_shape', ()))} samples but store {store.path} "
                         f"holds {shape} slices: evaluate it on the store it was trained on")
    record = getattr(model, "record", None)
    if split is not None and not (record or {}).get("store"):
        raise InputError(f"split={split!r} needs the model's training record; pass split=None (--split all) to "
                         "compare with every slice of the store")
    rows = resolve_indices(store, None, split, record)
    if n is not None:
        rows = rows[:n]
    if rows.size < 4:
        raise InputError(f"only {rows.size} held-out slices in store {store.path}: the statistics need at least 4; "
                         "simulate more (--n-sims) or pass a larger split")
    box = (geometry["box_size"],) * 2
    sim = torch.from_numpy(store.read("x", rows)[:, 0].astype(np.float64))

    conditions = list(getattr(model.config, "condition", ()) or ())
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for start in range(0, rows.size, batch_size):
        chunk = rows[start:start + batch_size]
        cond = ({c: torch.from_numpy(store.column(c)[chunk].astype(np.float32)) for c in conditions}
                if conditions else None)
        parts.append(model.sample(len(chunk), condition=cond, generator=generator)[:, 0].double().cpu())
    gan = torch.cat(parts)
    if not bool(torch.isfinite(gan).all()):
        raise InputError(f"the model's samples hold {int((~torch.isfinite(gan)).sum())} NaN/inf pixels: the model "
                         "is broken; retrain it")
    delta_sim, delta_gan = sim - 1.0, gan - 1.0

    rng = np.random.default_rng(seed)
    sims = np.asarray(store.column("sim"))[rows] if "sim" in store.columns else None
    partner_sim = torch.from_numpy(_partners(rows.size, sims, rng))
    partner_gan = torch.from_numpy(_partners(rows.size, None, rng))

    # density histogram of log10(1 + delta), one per slice
    log_sim = torch.log10(sim.clamp_min(1e-12)).numpy()
    d_edges = (np.asarray(density_edges, dtype=np.float64) if density_edges is not None
               else _default_edges(log_sim, 0.1, 99.9, 24))
    hist_sim = density_histogram(sim, d_edges, log=True, spatial_dims=2).numpy()
    hist_gan = density_histogram(gan, d_edges, log=True, spatial_dims=2).numpy()

    # peak counts in bins of delta, per slice
    if peak_edges is None:
        heights = delta_sim[local_maxima(delta_sim)].numpy()
        p_edges = 10 ** _default_edges(np.log10(1 + heights), 1, 99.5, 14) - 1
    else:
        p_edges = np.asarray(peak_edges, dtype=np.float64)
    peaks_sim = peak_counts(delta_sim, p_edges, per_field=True).numpy()
    peaks_gan = peak_counts(delta_gan, p_edges, per_field=True).numpy()

    # 2-D power and cross power of delta, per slice or pair
    pk_sim = power_spectrum(delta_sim, box, kedges)
    pk_gan = power_spectrum(delta_gan, box, kedges)
    cross_ss = cross_power_spectrum(delta_sim, delta_sim[partner_sim], box, kedges).power.numpy()
    cross_gg = cross_power_spectrum(delta_gan, delta_gan[partner_gan], box, kedges).power.numpy()
    cross_sg = cross_power_spectrum(delta_sim, delta_gan, box, kedges).power.numpy()
    k = pk_sim.k.numpy()
    has_modes = pk_sim.n_modes.numpy() > 0

    table = []
    table += _rows("density histogram", (d_edges[1:] + d_edges[:-1]) / 2, "log10(1+delta)", hist_sim, hist_gan)
    table += _rows("peak counts", (p_edges[1:] + p_edges[:-1]) / 2, "delta", peaks_sim, peaks_gan)
    table += _rows("P(k)", k[has_modes], "h/Mpc", pk_sim.power.numpy()[:, has_modes],
                   pk_gan.power.numpy()[:, has_modes])
    table += _rows("cross P(k) sim-GAN", k[has_modes], "h/Mpc", cross_ss[:, has_modes], cross_sg[:, has_modes],
                   ratio=False)
    table += _rows("cross P(k) GAN-GAN", k[has_modes], "h/Mpc", cross_ss[:, has_modes], cross_gg[:, has_modes],
                   ratio=False)

    summary = {}
    for name in STATISTICS:
        mine = [r for r in table if r["statistic"] == name]
        summary[name] = {"bins": len(mine), "within_2se": sum(r["within_2se"] for r in mine),
                         "fraction_within_2se": (sum(r["within_2se"] for r in mine) / len(mine)) if mine else None}
    in_range = [r for r in table if r["statistic"] == "P(k)" and k_range[0] < r["x"] < k_range[1]]
    if in_range:
        ratios = np.array([r["ratio"] for r in in_range], dtype=np.float64)
        summary["P(k)"].update({"k_range": list(k_range), "bins_in_k_range": len(in_range),
                                "max_abs_ratio_error_in_k_range": float(np.max(np.abs(ratios - 1))),
                                "mean_ratio_in_k_range": float(np.mean(ratios)),
                                "within_2se_in_k_range": sum(r["within_2se"] for r in in_range)})
    keep = min(examples, rows.size)
    return {"n_slices": int(rows.size), "split": split, "seed": seed, **geometry, "rows": table,
            "summary": summary, "mean_density": {"sim": float(sim.mean()), "gan": float(gan.mean())},
            "examples": {"sim": sim[:keep].float().numpy().tolist(), "gan": gan[:keep].float().numpy().tolist()}}
