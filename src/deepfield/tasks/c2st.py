"""Classifier two-sample test (C2ST): can a small CNN tell a model's samples from real galaxies?

A generative model of galaxy images is good when its samples, observed through the same
telescope, cannot be told from held-out galaxies. The C2ST measures exactly that: a small
convolutional network is trained to separate the two sets, and its area under the ROC curve
(AUC) on objects it never saw is the score. AUC 0.5: the classifier finds no difference (the
two sets are indistinguishable to it); AUC 1: it separates them perfectly. Unlike a fixed set
of statistics (sizes, ellipticities, Gini, M20), the classifier looks for whatever differs.

Both sides carry the same observing conditions: one sample is drawn per held-out galaxy (with
that galaxy's catalog conditions when the model is conditional) and observed through that
galaxy's PSF and noise (:func:`deepfield.tasks.evaluate.observed_samples`, the path the
morphology validation uses). Images are shown to the classifier as asinh(x * sqrt(ivar)): in
units of each pixel's noise, compressed at high S/N, the same map for both classes.

A C2ST is only as good as its classifier, so every run carries two controls: two disjoint
halves of the held-out galaxies (the AUC must sit at 0.5 within its interval: the test does not
invent differences) and empty sky observed the same way (pure noise; the AUC must sit near 1:
the test has the power to see a difference). With a fitted latent prior, N(0, I) samples are
scored too.

References:
    Lopez-Paz & Oquab (2017), "Revisiting Classifier Two-Sample Tests", ICLR,
    https://arxiv.org/abs/1610.06545
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from deepfield.data.store import Store, open_store
from deepfield.errors import InputError
from deepfield.progress import progress_bar
from deepfield.tasks.evaluate import check_observable, held_out_rows, observed_samples, prior_label

__all__ = ["classifier_two_sample_test", "c2st_auc", "TwoSampleCNN", "split_sizes", "objects_needed",
           "MIN_PER_PART", "POWER_AUC"]

#: the empty-sky control's AUC at or above which the classifier counts as having power
POWER_AUC = 0.9

#: objects of each class the classifier's smallest part (train, validation or test) must hold:
#: with fewer, the AUC's bootstrap interval spans most of [0, 1] and early stopping reads noise
MIN_PER_PART = 10


class TwoSampleCNN(nn.Module):
    """The C2ST's classifier: a small CNN from images (N, C, H, W) to one logit per image (N,)
    (positive: 'the second set'). The 4 x 4, stride-2 stem sees every pixel (it can learn a
    checkerboard's filter) at a quarter of the cost of full-resolution layers; global average and
    max pooling make it indifferent to the stamp size and let it read both extended structure
    and the brightest feature."""

    def __init__(self, channels: int, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(4 * width, 2 * width), nn.ReLU(), nn.Linear(2 * width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.head(torch.cat([h.mean(dim=(-2, -1)), h.amax(dim=(-2, -1))], dim=1)).squeeze(1)


def _dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th (0-7) of the 8 rotations by 90 degrees and reflections of images (..., H, W)."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image turned by its own random dihedral transform. Galaxies have no preferred
    orientation on the sky and both sets are turned alike, so this changes neither
    distribution; it shows the classifier 8x more views of the few objects there are."""
    k = torch.randint(0, 8, (x.shape[0],), generator=generator)
    out = torch.empty_like(x)
    for j in range(8):
        chosen = k == j
        if chosen.any():
            out[chosen] = _dihedral(x[chosen], j)
    return out


@torch.no_grad()
def _scores(net: nn.Module, x: torch.Tensor, views: int = 8, batch_size: int = 512) -> torch.Tensor:
    """Logits (N,) averaged over the first `views` dihedral views of each image (steadier than
    one view; the four rotations are half the cost of all eight)."""
    net.eval()
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size]
        out.append(torch.stack([net(_dihedral(xb, k)) for k in range(views)]).mean(dim=0))
    return torch.cat(out)


def _check_settings(fractions, max_epochs: int, patience: int, n_bootstrap: int) -> None:
    fr = tuple(fractions)
    if len(fr) != 3 or min(fr) <= 0 or not np.isclose(sum(fr), 1.0):
        raise InputError(f"fractions {fr}: give the classifier's train, validation and test fractions, each > 0, "
                         "summing to 1, e.g. (0.5, 0.25, 0.25)")
    for name, value in (("max_epochs", max_epochs), ("patience", patience), ("n_bootstrap", n_bootstrap)):
        if not (isinstance(value, (int, np.integer)) and value >= 1):
            raise InputError(f"{name}={value!r}: give a whole number >= 1")


def split_sizes(n: int, fractions=(0.5, 0.25, 0.25)) -> tuple[int, int, int]:
    """How many of `n` objects of one class go to the classifier's train, validation and test
    parts: floor(n * fraction) for validation and test, the rest for training."""
    val, test = int(n * fractions[1]), int(n * fractions[2])
    return n - val - test, val, test


def objects_needed(fractions=(0.5, 0.25, 0.25), min_per_part: int = MIN_PER_PART) -> int:
    """The fewest objects of one class whose smallest part holds `min_per_part` objects."""
    n = min_per_part
    while min(split_sizes(n, fractions)) < min_per_part:
        n += 1
    return n


def _bootstrap_auc(s0: np.ndarray, s1: np.ndarray, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """AUCs of `n_bootstrap` resamplings (with replacement, each class on its own) of the scores."""
    from deepfield.tasks.compare import auroc

    out = np.empty(n_bootstrap)
    for b in range(n_bootstrap):
        out[b] = auroc(rng.choice(s0, s0.size), rng.choice(s1, s1.size))
    return out


def c2st_auc(first, second, *, seed: int = 0, fractions=(0.5, 0.25, 0.25), max_epochs: int = 300,
             patience: int = 30, batch_size: int = 64, lr: float = 1e-3, n_bootstrap: int = 1000,
             min_per_part: int = MIN_PER_PART) -> dict:
    """Train a :class:`TwoSampleCNN` to tell image set `second` from `first`, score it on objects
    it never saw.

    Each set is split at random into train, validation and test parts (`fractions`). The network
    trains on the train parts (random dihedral turns, classes weighted to count equally) until
    the validation loss has not improved for `patience` epochs (or `max_epochs`), and the weights
    of the best validation epoch are kept. Its scores on the test parts give the AUC: the
    probability that a random image of `second` scores above a random one of `first`.

    Arguments:
        first, second: images (N1, C, H, W) and (N2, C, H, W), as the classifier should see them
            (e.g. in noise units and asinh-stretched); equal C, H, W.
        seed: seeds the split, the network's initialisation, the batches and the bootstrap.
        n_bootstrap: resamplings of the test scores for the AUC's intervals.
        min_per_part: fewest objects of each class in each part (else InputError).

    Returns:
        {"auc", "interval_68": [lo, hi], "interval_95": [lo, hi] (bootstrap percentiles over the
        test objects: the spread from which objects were tested, not from retraining),
        "p_value" (one-sided Mann-Whitney, AUC > 0.5), "n_first" / "n_second": [train, val, test],
        "epochs" (run), "best_epoch" (kept, 1-based), "stopped_early", "val_loss" (best, nats)}.
    """
    from scipy.stats import mannwhitneyu

    from deepfield.tasks.compare import auroc

    first = torch.as_tensor(np.asarray(first, dtype=np.float32))
    second = torch.as_tensor(np.asarray(second, dtype=np.float32))
    if first.ndim != 4 or first.shape[1:] != second.shape[1:]:
        raise InputError(f"the C2ST compares image sets (N, C, H, W) of one shape; got {tuple(first.shape)} and "
                         f"{tuple(second.shape)}")
    _check_settings(fractions, max_epochs, patience, n_bootstrap)
    need = objects_needed(fractions, min_per_part)
    for name, x in (("first", first), ("second", second)):
        if not bool(torch.isfinite(x).all()):
            raise InputError(f"the {name} set has {int((~torch.isfinite(x)).sum())} NaN or infinite pixels: the "
                             "classifier needs finite images (check the store with deepfield verify, or the model's "
                             "samples)")
        if x.shape[0] < need:
            raise InputError(f"the {name} set has {x.shape[0]} images: the classifier needs at least {need} per set "
                             f"(split {tuple(fractions)} into train, validation and test parts of >= {min_per_part})")
    rng = np.random.default_rng(seed)
    parts = []  # (train, val, test) index arrays of each class
    for x in (first, second):
        order = rng.permutation(x.shape[0])
        n_train, n_val, _ = split_sizes(x.shape[0], fractions)
        parts.append((order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]))

    def stack(p):
        x = torch.cat([first[parts[0][p]], second[parts[1][p]]])
        y = torch.cat([torch.zeros(parts[0][p].size), torch.ones(parts[1][p].size)])
        return x, y

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = stack(0), stack(1), stack(2)
    # each class weighs as much as the other in the loss, whatever their sizes
    def class_weights(y):
        n1 = float(y.sum())
        return torch.where(y > 0, 0.5 * y.numel() / n1, 0.5 * y.numel() / (y.numel() - n1))

    w_train, w_val = class_weights(y_train), class_weights(y_val)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = TwoSampleCNN(first.shape[1])
    optimiser = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = nn.functional.binary_cross_entropy_with_logits
    best, best_epoch, best_state, epoch = math.inf, 0, None, 0
    for epoch in range(1, max_epochs + 1):
        net.train()
        order = torch.randperm(y_train.numel(), generator=generator)
        for start in range(0, order.numel(), batch_size):
            idx = order[start:start + batch_size]
            with torch.enable_grad():  # callers may hold no_grad for their sampling
                loss = loss_fn(net(_augment(x_train[idx], generator)), y_train[idx], weight=w_train[idx])
                optimiser.zero_grad()
                loss.backward()
            optimiser.step()
        val_loss = float(loss_fn(_scores(net, x_val, views=4), y_val, weight=w_val))
        if val_loss < best:
            best, best_epoch = val_loss, epoch
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        elif epoch - best_epoch >= patience:
            break
    if best_state is None:  # finite inputs make this a diverged optimiser, not bad data
        raise InputError(f"the classifier's validation loss was never finite in {epoch} epochs: lower lr ({lr})")
    net.load_state_dict(best_state)
    scores = _scores(net, x_test).double().numpy()
    s0, s1 = scores[y_test.numpy() == 0], scores[y_test.numpy() == 1]
    boot = _bootstrap_auc(s0, s1, n_bootstrap, rng)
    return {
        "auc": auroc(s0, s1),
        "interval_68": [float(v) for v in np.percentile(boot, [16, 84])],
        "interval_95": [float(v) for v in np.percentile(boot, [2.5, 97.5])],
        "p_value": float(mannwhitneyu(s1, s0, alternative="greater").pvalue),
        "n_first": [int(p.size) for p in parts[0]],
        "n_second": [int(p.size) for p in parts[1]],
        "epochs": epoch,
        "best_epoch": best_epoch,
        "stopped_early": epoch < max_epochs,
        "val_loss": best,
    }


def _noise_units(x: np.ndarray, ivar: np.ndarray) -> np.ndarray:
    """asinh(x * sqrt(ivar)): each pixel in units of its noise, compressed above S/N ~ 1
    (masked pixels, ivar 0, read 0). (N, C, H, W) float32."""
    return np.arcsinh(x * np.sqrt(np.clip(ivar, 0, None))).astype(np.float32)


def _reference_band(store: Store) -> int:
    """Index of the band whose S/N the store's `snr` column gives (the simulator's reference band:
    the one whose `snr_<band>` column equals `snr`; the first band otherwise)."""
    snr = store.column("snr")
    for c, b in enumerate(store.bands):
        if f"snr_{b}" in store.columns and np.allclose(store.column(f"snr_{b}"), snr):
            return c
    return 0


def _chosen_prior(model, prior: str):
    """The latent prior object `prior` names for `model` ('auto', 'fitted', 'gaussian'), None for
    N(0, I). 'auto' asks the model which prior it would use (a VAE that has ``usable_prior``
    passes over a fitted prior that scored held-out codes worse than N(0, I))."""
    fitted = getattr(model, "prior", None)
    if prior == "gaussian":
        return None
    if prior == "fitted":
        if fitted is None:
            raise InputError(f"prior 'fitted': this {type(model).__name__} has no fitted latent prior: fit one "
                             "(deepfield train prior --model VAE_DIR) or use auto")
        return fitted
    return model.usable_prior() if fitted is not None and hasattr(model, "usable_prior") else fitted


def classifier_two_sample_test(model, store, *, split: str | None = "test", n: int | None = None, seed: int = 0,
                               prior: str = "auto", snr_threshold: float | None = 20.0,
                               fractions=(0.5, 0.25, 0.25), max_epochs: int = 300, patience: int = 30,
                               n_bootstrap: int = 1000, batch_size: int = 256, rows=None,
                               progress: bool = False) -> dict:
    """C2ST of `model`'s samples against the held-out galaxies of `store`, with its controls.

    One sample is drawn per held-out galaxy (its conditions, its PSF and noise; `prior`: 'auto'
    the latent prior ``sample`` would use, 'fitted' the fitted one, 'gaussian' N(0, I)). Each
    comparison trains a fresh classifier (:func:`c2st_auc`) on the held-out galaxies (class 0)
    and the other set (class 1), images as asinh(x * sqrt(ivar)):

    - "model": the model's samples; the number to read.
    - "held-out vs held-out": one random half of the galaxies against the other (both halves
      smaller than the model comparison's sets, so its interval is wider); AUC 0.5 within its
      interval, else the classifier finds differences that are not there.
    - "empty sky": zero sky observed through each galaxy's PSF and noise (pure noise); AUC near
      1, else the classifier is too weak to judge the model.
    - "N(0, I) prior": only when the model samples through a fitted prior: its codes drawn from
      the standard normal instead.

    All of this for every held-out galaxy ("all") and again for S/N > `snr_threshold` (the
    store's `snr` column for the galaxies; each sample's own optimal S/N, sqrt(sum of its noiseless
    observed image^2 * ivar), in the same band); a subset too small for the classifier is
    reported with "skipped" (why) instead of its tests.

    Arguments:
        split: the model's held-out split ('test'), or None for every row.
        n: at most this many held-out galaxies (the first of the split).
        rows: store rows to use instead of the split.
        fractions: the classifier's train / validation / test fractions of each set.
        max_epochs, patience: the classifier's training budget and early stopping.
        n_bootstrap: resamplings for the AUC's 68% and 95% intervals.
        batch_size: samples drawn per batch.

    Returns:
        {"n_held_out", "prior" (label of the prior sampled), "seed", "snr_threshold",
        "objects_needed" (held-out galaxies the controls need), "subsets": {"all" | "snr > T":
        {"n_held_out", "n_samples", "tests": {name: c2st_auc result}, "controls": {"null at 0.5":
        0.5 inside the held-out-vs-held-out 95% interval, "power": empty-sky AUC >= POWER_AUC}}
        or {..., "skipped": why}}}.

    Raises:
        InputError: the model cannot sample; the store lacks 'psf' or 'ivar'; fewer held-out
            galaxies than the held-out-vs-held-out control needs (the message says how many).
    """
    store = store if isinstance(store, Store) else open_store(store)
    check_observable(model, store, "the C2ST")
    if store.kind != "image":
        raise InputError(f"store {store.path} holds {store.kind}s: the C2ST's classifier reads images (N, C, H, W)")
    if prior not in ("auto", "fitted", "gaussian"):
        raise InputError(f"prior {prior!r}: choose auto (the fitted latent prior if any), fitted or gaussian (N(0, I))")
    _check_settings(fractions, max_epochs, patience, n_bootstrap)
    rows = held_out_rows(model, store, split=split, n=n, rows=rows)
    per_class = objects_needed(fractions)
    # the held-out-vs-held-out control halves the galaxies: each half must fill the three parts
    need = 2 * per_class
    if rows.size < need:
        where = f"the {split!r} split of" if split and n is None else "the objects chosen from"
        raise InputError(f"only {rows.size} held-out galaxies in {where} {store.path}: the C2ST needs at least "
                         f"{need} ({per_class} per half for the held-out-vs-held-out control, split "
                         f"{tuple(fractions)} into parts of >= {MIN_PER_PART}); use a larger store, or a model "
                         "trained with a larger test fraction (split_fractions)")
    chosen = _chosen_prior(model, prior)
    label = "N(0, I)" if chosen is None else prior_label(chosen)
    generator = torch.Generator().manual_seed(seed)
    ivar = store.read("ivar", rows)
    real = _noise_units(store.read("x", rows), ivar)
    others = {}
    with progress_bar(progress) as bar:
        task = bar.add_task(f"sampling ({label} prior)", total=rows.size)
        # the prior object itself (or 'gaussian'), so the label says what drew the samples
        drawn = observed_samples(model, store, rows, generator=generator,
                                 prior="gaussian" if chosen is None else chosen, batch_size=batch_size,
                                 advance=lambda k: bar.advance(task, k))
        others["model"] = drawn
        if chosen is not None:
            task = bar.add_task("sampling (N(0, I) prior)", total=rows.size)
            others["N(0, I) prior"] = observed_samples(model, store, rows, generator=generator, prior="gaussian",
                                                       batch_size=batch_size, advance=lambda k: bar.advance(task, k))
    from deepfield.physics import ObservationModel

    with torch.no_grad():
        empty = ObservationModel("pixel").observe(torch.zeros(real.shape), torch.from_numpy(store.read("psf", rows)),
                                                  ivar=torch.from_numpy(ivar), generator=generator).numpy()
    snr_col = "snr" if "snr" in store.columns else None  # optimal S/N in the reference band
    band = _reference_band(store) if snr_col else 0
    subsets = {"all": (np.ones(rows.size, bool), {k: np.ones(rows.size, bool) for k in others})}
    if snr_threshold is not None:
        name = f"snr > {snr_threshold:g}"
        if snr_col is None:
            subsets[name] = None
        else:
            subsets[name] = (store.column(snr_col)[rows] > snr_threshold,
                             {k: v.snr[:, band] > snr_threshold for k, v in others.items()})
    out = {"n_held_out": int(rows.size), "prior": label, "seed": seed, "snr_threshold": snr_threshold,
           "objects_needed": need, "fractions": list(fractions), "image_stretch": "asinh(x * sqrt(ivar))",
           "subsets": {}}
    settings = dict(fractions=fractions, max_epochs=max_epochs, patience=patience, n_bootstrap=n_bootstrap)
    for name, chosen in subsets.items():
        if chosen is None:
            out["subsets"][name] = {"skipped": f"store {store.path} has no 'snr' column"}
            continue
        keep_real, keep_other = chosen
        entry = {"n_held_out": int(keep_real.sum()), "n_samples": {k: int(v.sum()) for k, v in keep_other.items()},
                 "tests": {}}
        out["subsets"][name] = entry
        if keep_real.sum() < need:
            entry["skipped"] = (f"{int(keep_real.sum())} held-out galaxies with {name}: the C2ST needs at least "
                                f"{need}")
            continue
        galaxies = real[keep_real]
        # a stream of its own: c2st_auc's splits draw from default_rng(seed)
        half = np.random.default_rng((seed, 1)).permutation(galaxies.shape[0])
        comparisons = {"model": None, "held-out vs held-out": None, "empty sky": empty[keep_real]}
        if "N(0, I) prior" in others:
            comparisons["N(0, I) prior"] = None
        for test in comparisons:
            if test == "held-out vs held-out":
                a, b = galaxies[half[: half.size // 2]], galaxies[half[half.size // 2:]]
            elif test == "empty sky":
                a, b = galaxies, _noise_units(comparisons[test], ivar[keep_real])
            else:
                keep = keep_other[test]
                if keep.sum() < per_class:
                    entry["tests"][test] = {"skipped": f"{int(keep.sum())} samples with {name}: the classifier "
                                                       f"needs at least {per_class}"}
                    continue
                a, b = galaxies, _noise_units(others[test].observed[keep], ivar[keep])
            entry["tests"][test] = c2st_auc(a, b, seed=seed, **settings)
        null, power = entry["tests"]["held-out vs held-out"], entry["tests"]["empty sky"]
        entry["controls"] = {
            "null at 0.5": bool(null["interval_95"][0] <= 0.5 <= null["interval_95"][1]),
            "power": bool(power["auc"] >= POWER_AUC)}
    return out
