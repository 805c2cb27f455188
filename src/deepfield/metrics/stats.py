"""Comparing two samples of a statistic: bootstrap means, Wasserstein-1 distances, Spearman
correlation, and a table of real-versus-model rows.

Every function ignores non-finite values (NaN marks a failed measurement in
:mod:`deepfield.metrics.morphology`), and counts them where it reports sample sizes. Means,
sigmas and W1 are in the unit of the statistic; ``standardised_w1`` and the difference in sigmas
are dimensionless.

Example:
    >>> rng = np.random.default_rng(0)
    >>> real = {"gini": rng.normal(0.50, 0.05, 2000)}
    >>> model = {"gini": rng.normal(0.52, 0.05, 2000)}
    >>> row = compare_samples(real, model)[0]
    >>> round(row["w1"], 2), round(row["standardised_w1"], 1)
    (0.02, 0.4)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats as _scipy_stats

from deepfield.errors import InputError

__all__ = [
    "bootstrap_mean",
    "robust_sigma",
    "wasserstein1",
    "standardised_w1",
    "spearman",
    "SpearmanResult",
    "compare_samples",
    "format_table",
]

_IQR_TO_SIGMA = 2 * _scipy_stats.norm.ppf(0.75)  # 1.349: the IQR of a unit Gaussian


def _finite(values, name: str = "values") -> np.ndarray:
    a = np.asarray(values)
    if a.dtype == bool or not np.issubdtype(a.dtype, np.number):
        raise InputError(f"{name} has dtype {a.dtype}: pass numbers (a flag array is not a statistic)")
    a = a.astype(np.float64).reshape(-1)
    return a[np.isfinite(a)]


def bootstrap_mean(values, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Mean of the finite `values` and its bootstrap standard error.

    Arguments:
        values: any array; NaN and inf are dropped.
        n_boot: bootstrap resamples.
        seed: seed of the resampling.

    Returns:
        (mean, sigma); (NaN, NaN) with no finite value, (value, NaN) with one.

    Example:
        >>> x = np.random.default_rng(1).normal(size=400)
        >>> mean, sigma = bootstrap_mean(x)
        >>> round(float(sigma / (x.std() / np.sqrt(400))), 1)  # the standard error of the mean
        1.0
    """
    a = _finite(values)
    n = len(a)
    if n == 0:
        return float("nan"), float("nan")
    if n == 1:
        return float(a[0]), float("nan")
    if int(n_boot) < 2:
        raise InputError(f"n_boot={n_boot}: use at least 2 bootstrap resamples (1000 is usual)")
    rng = np.random.default_rng(seed)
    means = np.empty(int(n_boot))
    chunk = max(1, 2_000_000 // n)  # resamples at a time, ~16 MB of indices
    for lo in range(0, len(means), chunk):
        hi = min(lo + chunk, len(means))
        means[lo:hi] = a[rng.integers(0, n, (hi - lo, n))].mean(axis=1)
    return float(a.mean()), float(means.std(ddof=1))


def robust_sigma(values) -> float:
    """Interquartile range / 1.349 of the finite `values` (the sigma of a Gaussian with that
    IQR); the standard deviation where the IQR is 0; NaN with < 2 values."""
    a = _finite(values)
    if len(a) < 2:
        return float("nan")
    q25, q75 = np.percentile(a, [25, 75])
    scale = (q75 - q25) / _IQR_TO_SIGMA
    return float(scale if scale > 0 else a.std(ddof=1))


def wasserstein1(a, b) -> float:
    """Wasserstein-1 (earth mover's) distance between the empirical distributions of the finite
    values of `a` and `b`, in their unit: the mean shift needed to turn one into the other
    (exactly d for two samples that differ by a shift d). NaN if either is empty."""
    a, b = _finite(a, "a"), _finite(b, "b")
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    return float(_scipy_stats.wasserstein_distance(a, b))


def standardised_w1(a, b) -> float:
    """W1(a, b) in units of the robust sigma (IQR / 1.349) of `a`, the reference (real) sample,
    so that one number compares across statistics of any unit: 0.1 means the model's
    distribution sits a tenth of the real sample's width away from it. The scale is the
    reference's alone, not pooled with `b`: a model far off would otherwise widen the pool and
    shrink its own distance. Invariant under a common affine change of units."""
    scale = robust_sigma(a)
    w1 = wasserstein1(a, b)
    return float(w1 / scale) if scale > 0 else float("nan")


class SpearmanResult(NamedTuple):
    """Spearman rank correlation, its two-sided p-value and the number of finite pairs."""

    rho: float
    pvalue: float
    n: int


def spearman(a, b) -> SpearmanResult:
    """Spearman rank correlation of the pairs (a_i, b_i) where both are finite.

    Returns:
        :class:`SpearmanResult` (rho, pvalue, n); NaN rho and p-value with < 3 pairs or a
        constant input.

    Example:
        >>> spearman([1, 2, np.nan, 4], [10, 20, 30, 40]).rho
        1.0
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise InputError(f"spearman needs paired values: a has {a.size}, b has {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    n = int(keep.sum())
    a, b = a[keep], b[keep]
    if n < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return SpearmanResult(float("nan"), float("nan"), n)
    res = _scipy_stats.spearmanr(a, b)
    return SpearmanResult(float(res.statistic), float(res.pvalue), n)


def _statistic_names(stats_real: Mapping, stats_model: Mapping) -> list[str]:
    """Keys in both holding 1-D numeric (not bool) arrays, in the order of `stats_real`."""
    names = []
    for key, value in stats_real.items():
        if key not in stats_model:
            continue
        a, b = np.asarray(value), np.asarray(stats_model[key])
        if all(x.ndim == 1 and np.issubdtype(x.dtype, np.number) and x.dtype != bool for x in (a, b)):
            names.append(key)
    return names


def compare_samples(stats_real: Mapping[str, np.ndarray], stats_model: Mapping[str, np.ndarray],
                    names: Sequence[str] | None = None, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """One row per statistic comparing its values on real objects with those on model samples.

    Arguments:
        stats_real: {statistic: (N,) values} of the real (held-out) objects, e.g. the output
            of :func:`~deepfield.metrics.morphology.morphology`.
        stats_model: the same for the model's samples (observed through the same PSFs and noise).
        names: statistics to compare; default all 1-D numeric arrays present in both (flags,
            bool arrays and the ``n_failed`` summary are left out).
        n_boot: bootstrap resamples for the sigmas of the means.
        seed: seed of the bootstrap.

    Returns:
        Rows (dicts): ``statistic``; ``n_real``, ``n_model`` (finite values) and ``failed_real``,
        ``failed_model`` (NaN/inf, i.e. failed measurements); ``real_mean``, ``real_sigma``,
        ``model_mean``, ``model_sigma`` (bootstrap); ``difference_sigma`` = (model - real) /
        sqrt(real_sigma^2 + model_sigma^2); ``w1``; ``standardised_w1`` (W1 / robust sigma of
        the real values).
    """
    if names is None:
        names = _statistic_names(stats_real, stats_model)
    rows = []
    for name in names:
        for side, d in (("real", stats_real), ("model", stats_model)):
            if name not in d:
                raise InputError(f"statistic {name!r} is missing from the {side} sample; it has "
                                 f"{sorted(k for k in d)}")
        real = np.asarray(stats_real[name], dtype=np.float64).reshape(-1)
        model = np.asarray(stats_model[name], dtype=np.float64).reshape(-1)
        real_mean, real_sigma = bootstrap_mean(real, n_boot, seed)
        model_mean, model_sigma = bootstrap_mean(model, n_boot, seed + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            difference = (model_mean - real_mean) / np.hypot(real_sigma, model_sigma)
        rows.append({
            "statistic": name,
            "n_real": int(np.isfinite(real).sum()),
            "n_model": int(np.isfinite(model).sum()),
            "failed_real": int((~np.isfinite(real)).sum()),
            "failed_model": int((~np.isfinite(model)).sum()),
            "real_mean": real_mean,
            "real_sigma": real_sigma,
            "model_mean": model_mean,
            "model_sigma": model_sigma,
            "difference_sigma": float(difference),
            "w1": wasserstein1(real, model),
            "standardised_w1": standardised_w1(real, model),
        })
    return rows


def _with_error(mean: float, sigma: float) -> str:
    """'mean ± sigma' with sigma to two significant figures and the mean to match."""
    if not np.isfinite(mean):
        return "nan"
    if not (np.isfinite(sigma) and sigma > 0):
        return f"{mean:.4g}"
    decimals = max(0, 1 - int(np.floor(np.log10(sigma))))
    return f"{mean:.{decimals}f} ± {sigma:.{decimals}f}"


def format_table(rows: Sequence[Mapping]) -> str:
    """A markdown table of :func:`compare_samples` rows (one line per statistic).

    Example:
        >>> rows = compare_samples({"c": np.arange(10.0)}, {"c": np.arange(10.0) + 1})
        >>> print(format_table(rows).splitlines()[0])
        | statistic | N real (failed) | N model (failed) | real mean | model mean | Δ / σ | W1 | W1 / σ_real |
    """
    header = ("| statistic | N real (failed) | N model (failed) | real mean | model mean | Δ / σ | W1 "
              "| W1 / σ_real |")
    lines = [header, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['statistic']} | {r['n_real']} ({r['failed_real']}) | {r['n_model']} ({r['failed_model']}) "
            f"| {_with_error(r['real_mean'], r['real_sigma'])} "
            f"| {_with_error(r['model_mean'], r['model_sigma'])} "
            f"| {r['difference_sigma']:.1f} | {r['w1']:.3g} | {r['standardised_w1']:.3f} |")
    return "\n".join(lines)
