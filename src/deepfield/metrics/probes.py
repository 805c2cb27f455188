"""Linear probes: how much of a catalog quantity a set of codes carries, linearly.

A probe regresses a quantity (log half-light radius, ellipticity, magnitude, ...) on the codes
(N, d) with ridge regression and scores it on objects it never saw (k-fold cross-validation):
R^2 = 1 - sum (y - y_hat)^2 / sum (y - mean y)^2 over the out-of-fold predictions. 1 means the
quantity is a linear function of the codes, 0 that the codes predict it no better than its mean
(negative: worse). Codes are standardised on each training fold, so a coordinate's scale (a
code that stores brightness in one large coordinate) does not decide what the probe reads; the
ridge strength is chosen on each training fold by leave-one-out (scikit-learn's RidgeCV).

Example:
    >>> rng = np.random.default_rng(0)
    >>> codes = rng.normal(size=(1000, 4))
    >>> size = codes @ [1.0, 0.5, 0.0, 0.0] + rng.normal(0, 0.5, 1000)  # signal var 1.25, noise 0.25
    >>> round(linear_probe(codes, size, seed=0).r2, 2)
    0.83
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from deepfield.errors import InputError

__all__ = ["ProbeResult", "linear_probe"]

#: ridge strengths tried on each training fold, in units of the standardised codes' sum of squares per object
RIDGE_ALPHAS = tuple(10.0 ** np.arange(-3, 4))


class ProbeResult(NamedTuple):
    """Cross-validated linear probe of one quantity.

    Attributes:
        r2: R^2 of all out-of-fold predictions pooled (dimensionless).
        fold_r2: (folds,) R^2 within each held-out fold: their spread is the probe's noise.
        alpha: (folds,) ridge strength chosen on each training fold.
        n: objects used.
    """

    r2: float
    fold_r2: np.ndarray
    alpha: np.ndarray
    n: int


def linear_probe(codes, target, *, folds: int = 5, seed: int = 0) -> ProbeResult:
    """Cross-validated R^2 of a ridge regression from `codes` to `target`.

    Arguments:
        codes: (N, d) codes (any unit; standardised per training fold).
        target: (N,) the quantity, in its catalog unit (take a log first where the quantity
            spans decades, e.g. half-light radius).
        folds: k of the k-fold split (2 <= k <= N / 2).
        seed: seed of the shuffle that assigns objects to folds.

    Returns:
        :class:`ProbeResult`; the same seed gives the same folds and numbers.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    codes = np.asarray(codes, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if codes.ndim != 2:
        raise InputError(f"codes have shape {codes.shape}: give (N, d), one row per object")
    if target.shape != (len(codes),):
        raise InputError(f"target has shape {target.shape} for {len(codes)} codes: give one value per code, (N,)")
    bad = ~np.isfinite(target) | ~np.isfinite(codes).all(axis=1)
    if bad.any():
        raise InputError(f"{int(bad.sum())} of {len(codes)} objects have NaN/inf codes or target (first at row "
                         f"{int(np.argmax(bad))}): leave them out before probing")
    folds = int(folds)
    if not 2 <= folds <= len(codes) // 2:
        raise InputError(f"folds={folds} for {len(codes)} objects: use 2 <= folds <= {len(codes) // 2}")
    if np.ptp(target) == 0:
        raise InputError("the target is constant: there is nothing to predict (R^2 is undefined)")
    predicted = np.empty_like(target)
    fold_r2, alpha = [], []
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(codes):
        probe = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
        probe.fit(codes[train], target[train])
        predicted[test] = probe.predict(codes[test])
        fold_r2.append(_r2(target[test], predicted[test]))
        alpha.append(probe[-1].alpha_)
    return ProbeResult(r2=_r2(target, predicted), fold_r2=np.array(fold_r2), alpha=np.array(alpha), n=len(codes))


def _r2(y: np.ndarray, predicted: np.ndarray) -> float:
    return float(1.0 - np.sum((y - predicted) ** 2) / np.sum((y - y.mean()) ** 2))
