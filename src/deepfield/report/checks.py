"""Is the model usable? The report's warnings (banners at the top of the page).

A report whose figures look plausible can still show a model that learned nothing: a VAE whose
posterior collapsed draws every sample alike, a latent prior worse than N(0, I) draws worse
samples than none, an autoencoder that predicts the mean image reconstructs no galaxy, and a
histogram of samples outside the plotted range shows nothing of them. Each check reads what
training recorded (metrics.json) or what the report measured, and says what is wrong and
what to do.

Numbers: KL in nats per object; log-densities in nats per object (codes of the held-out
objects); MSEs in normalised units, as everywhere in the report.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["collapse_warning", "divergence_warning", "prior_warning", "reconstruction_warning",
           "histogram_range", "outside_range", "histogram_warning", "DIVERGED_RATIO", "EXPLAINED_FRACTION_MIN",
           "OUTSIDE_FRACTION_MAX"]

#: the last epoch's validation loss this many times above the best one: training went unstable
DIVERGED_RATIO = 2.0
#: with per-pixel noise known (ivar), reconstructions 'explain little' below this fraction of the
#: variance about the mean image that is not noise. Measured on the quick demo's survey: PCA 0.99,
#: autoencoders and VAE trained 6 epochs 0.88-0.92; a convolutional autoencoder drawing one grey
#: plate scaled by each galaxy's brightness 0.45 (brightness alone explains that much). Without
#: ivar the noise is unknown (a good PCA of noisy stamps explains 27% of all their variance), so
#: only a model no better than the mean image is flagged.
EXPLAINED_FRACTION_MIN = 0.5
#: samples of one statistic outside the histogram's range above this fraction get a warning
#: (a faithful model's samples fall outside about as often as the held-out galaxies: ~2%)
OUTSIDE_FRACTION_MAX = 0.1


def collapse_warning(name: str, metrics: Mapping) -> str | None:
    """A warning when the VAE's kept epoch (lowest validation loss) carries less than
    ``deepfield.models.vae.COLLAPSE_KL_NATS`` nats per object (its validation KL to the prior):
    the codes then say almost nothing about each object and samples all look alike."""
    from deepfield.models.vae import COLLAPSE_KL_NATS

    rows = [r for r in metrics.get("history") or [] if isinstance(r, Mapping)
            and isinstance(r.get("val_kl"), (int, float)) and isinstance(r.get("val_loss"), (int, float))]
    if not rows:
        return None
    kept = min(rows, key=lambda r: r["val_loss"])
    if kept["val_kl"] >= COLLAPSE_KL_NATS:
        return None
    return (f"Posterior collapse: {name}'s kept epoch ({int(kept.get('epoch', 0)) + 1}) carries "
            f"{kept['val_kl']:.2f} nats per object (validation KL to the prior; below {COLLAPSE_KL_NATS:g} the codes "
            "say almost nothing about each galaxy). Its reconstructions are near-average galaxies and its samples "
            "all look alike. Train it longer, with a lower beta, or on better-measured objects (--where 'snr > 20').")


def divergence_warning(name: str, metrics: Mapping) -> str | None:
    """A warning when the validation loss ended DIVERGED_RATIO times above its best epoch's (for
    losses that are positive, as MSEs are): training went unstable, and the folder keeps an early,
    undertrained epoch. Measured: the full demo's convolutional autoencoder at lr 2e-3 over 12
    epochs kept epoch 1 (0.464) and ended at 1.03."""
    rows = [r for r in metrics.get("history") or [] if isinstance(r, Mapping)
            and isinstance(r.get("val_loss"), (int, float)) and np.isfinite(r["val_loss"])]
    if len(rows) < 2:
        return None
    best, last = min(rows, key=lambda r: r["val_loss"]), rows[-1]
    if best["val_loss"] <= 0 or last["val_loss"] < DIVERGED_RATIO * best["val_loss"]:
        return None
    return (f"{name}'s training went unstable: the validation loss rose from {best['val_loss']:.4g} (epoch "
            f"{int(best.get('epoch', 0)) + 1}, the one the folder keeps) to {last['val_loss']:.4g} by the last epoch "
            f"({int(last.get('epoch', len(rows) - 1)) + 1}). The kept model is an early, undertrained one: retrain "
            "with a lower learning rate.")


def prior_warning(name: str, model_dir: Path) -> str | None:
    """A warning when the latent prior in MODEL_DIR/prior gives the held-out codes a lower mean
    log-density than the standard normal N(0, I) does: samples drawn through it are then less
    like the data than samples from N(0, I)."""
    path = Path(model_dir) / "prior" / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"The latent prior's {path} is corrupt: refit the prior (deepfield train prior)."
    flow, normal = metrics.get("val_log_prob"), metrics.get("val_log_prob_standard_normal")
    if not isinstance(flow, (int, float)) or not isinstance(normal, (int, float)):
        return None
    if np.isfinite(flow) and flow >= normal:
        return None
    return (f"The latent prior of {name} is worse than N(0, I): held-out codes have log p = {flow:.2f} nats per "
            f"object under it against {normal:.2f} under the standard normal. Its samples ('flow' rows and "
            "histograms) are less faithful than N(0, I)'s: refit it (deepfield train prior, more epochs) or sample "
            "with --prior gaussian.")


def reconstruction_warning(name: str, mse: float, baseline: float, noise: float | None) -> str | None:
    """A warning when the reconstruction MSE explains less than EXPLAINED_FRACTION_MIN of the
    data's variance about the mean image less its noise (`noise` known), or is no better than
    the mean image (`noise` None)."""
    if not np.isfinite(mse):
        return f"{name}'s reconstructions are not finite numbers (MSE {mse}): the model is broken; retrain it."
    if not baseline > 0:  # one object, or identical ones: no spread to explain
        return None
    if noise is None:
        if mse < baseline:
            return None
        return (f"{name}'s reconstructions explain nothing: MSE {mse:.4g}, no better than {baseline:.4g} for "
                "predicting every object by the mean image. It has not learned the objects: train longer or with "
                "another learning rate.")
    signal = baseline - noise
    if signal <= 0:
        return None
    explained = (baseline - mse) / signal
    if explained >= EXPLAINED_FRACTION_MIN:
        return None
    return (f"{name}'s reconstructions explain little: MSE {mse:.4g} against {baseline:.4g} for predicting every "
            f"object by the mean image (noise alone: {noise:.4g}), i.e. {max(explained, -9.99):.0%} of the variance "
            "about the mean image that is not noise. It has not learned the objects: train longer or with another "
            "learning rate.")


def histogram_range(reference: np.ndarray, others: list[np.ndarray]) -> tuple[float, float]:
    """The range a morphology histogram plots: the held-out galaxies' 1st-99th percentiles,
    widened to take in the 2nd-98th percentiles of each sample set, but by no more than twice
    the held-out range on either side (so one broken model does not squash the others into a
    spike)."""
    ref = np.asarray(reference, dtype=float)
    lo, hi = (float(v) for v in np.percentile(ref, (1, 99)))
    span = max(hi - lo, 1e-12)
    for v in others:
        if v.size:
            a, b = np.percentile(v, (2, 98))
            lo, hi = min(lo, max(float(a), lo - 2 * span)), max(hi, min(float(b), hi + 2 * span))
    return lo, hi


def outside_range(measurements: Mapping[str, Mapping[str, np.ndarray]], reference: str = "held-out"
                  ) -> dict[str, dict[str, tuple[int, int, float, float]]]:
    """For each sample set and statistic: (finite values outside, finite values, lo, hi), where
    [lo, hi] is the range the morphology histograms plot (:func:`histogram_range`)."""
    out: dict[str, dict[str, tuple[int, int, float, float]]] = {}
    for stat, ref in measurements[reference].items():
        ref = np.asarray(ref, dtype=float)
        ref = ref[np.isfinite(ref)]
        if ref.size < 2:
            continue
        finite = {}
        for name, values in measurements.items():
            v = np.asarray(values.get(stat, ()), dtype=float)
            finite[name] = v[np.isfinite(v)]
        lo, hi = histogram_range(ref, [v for name, v in finite.items() if name != reference])
        for name, v in finite.items():
            out.setdefault(name, {})[stat] = (int(((v < lo) | (v > hi)).sum()), int(v.size), lo, hi)
    return out


def histogram_warning(counts: Mapping[str, Mapping[str, tuple[int, int, float, float]]],
                      reference: str = "held-out") -> str | None:
    """A warning naming each prior and statistic whose samples fall outside the plotted range
    more often than OUTSIDE_FRACTION_MAX."""
    bad = []
    for name, stats in counts.items():
        if name == reference:
            continue
        for stat, (outside, n, lo, hi) in stats.items():
            if n and outside / n > OUTSIDE_FRACTION_MAX:
                bad.append(f"{name}: {outside} of {n} in {stat} (plotted {lo:.3g} to {hi:.3g})")
    if not bad:
        return None
    return ("Samples fall outside the morphology histograms' range (the held-out galaxies' range, widened up to "
            "twice its width towards the samples), so the histograms do not show them: " + "; ".join(bad)
            + ". Those samples are unlike the data.")
