"""Fit a latent prior (flow or Gaussian mixture) on a trained VAE's aggregate posterior.

The prior is written inside the VAE's model folder as ``prior/`` (a model folder of its own),
and :func:`deepfield.load` attaches it, so ``model.sample`` draws from it.
"""

from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from deepfield.data.batches import iterate_batches
from deepfield.data.splits import narrow_splits, record_splits
from deepfield.data.store import Store, open_store
from deepfield.errors import ConfigError, InputError, ModelFolderError
from deepfield.models import load_model, save_model
from deepfield.models.prior import GaussianMixturePrior, LatentFlow, LatentPriorConfig, gaussian_log_prob

__all__ = ["train_prior", "posterior_codes"]


@torch.no_grad()
def posterior_codes(vae, store: Store, rows: np.ndarray, batch_size: int = 256,
                    refine: int = 0, refine_prior_weight: float | None = None,
                    progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means and standard deviations (N, D) of the objects `rows`; with `refine` > 0
    the means are refined object by object in that many steps (``VAE.refine_codes``, with
    `refine_prior_weight` its ``prior_weight``)."""
    from deepfield.progress import progress_bar

    means, stds = [], []
    with progress_bar(progress and refine > 0) as bar:
        task = bar.add_task(f"refining codes ({refine} steps)", total=int(rows.size))
        for batch in iterate_batches(store, rows, vae, batch_size):
            mean, log_var, _ = vae.posterior_batch(batch)
            if refine:
                mean = vae.refine_codes(batch, steps=refine, mean=mean, prior_weight=refine_prior_weight)
            means.append(mean.numpy())
            stds.append((0.5 * log_var).exp().numpy())
            bar.advance(task, mean.shape[0])
    return np.concatenate(means), np.concatenate(stds)


def train_prior(model_dir, store=None, *, kind: str = "nsf", condition: tuple[str, ...] = (), epochs: int = 100,
                batch_size: int = 256, lr: float = 1e-3, transforms: int = 6, hidden: tuple[int, ...] = (128, 128),
                components: int = 10, seed: int = 0, threads: int | None = 1, where: str | None = None,
                refine_steps: int = 0, refine_prior_weight: float | None = None, extra_stores: tuple = (),
                progress: bool = True) -> Path:
    """Fit a prior on the codes of the VAE in `model_dir` (train split of its store); returns prior/.

    The flow trains on a fresh draw from every object's posterior q(z|x) each epoch (the
    aggregate posterior), and the epoch kept is the one with the highest log-density of fixed
    posterior draws of the validation objects. (Scoring the posterior means instead picks
    flows that are too narrow: the means of faint galaxies crowd near the origin, so such a
    flow under-samples the bright, elongated galaxies whose codes lie far out.)

    `where`: fit on the training objects matching this catalog query only, e.g. ``"snr > 20"``.
    With a flux-conditioned VAE (``flux_condition``) the codes hold shape and size (shape only
    with ``size_condition``) but not brightness, so a prior fitted on well-measured galaxies
    and conditioned on size (and redshift) but not magnitude draws faint galaxies with the
    shapes of bright ones of the same size. In benchmarks/morphology.py (snr > 15 or > 30) that
    did not bring the samples' mean |e| closer to the held-out galaxies' than a prior fitted on
    all codes, which stays the default.

    `refine_steps`: fit on codes refined object by object (``VAE.refine_codes``, with
    `refine_prior_weight` its ``prior_weight``) instead of draws from the encoder's posteriors,
    whose means fall short for objects the encoder finds hard (small galaxies: their decoded
    means come out rounder than they are). The refined codes are point estimates, and the flow
    fits them as points: drawing about them with the encoder's widths (as commit 4d8f1a3 did)
    broadened the samples (in benchmarks/morphology.py, mean size +2.2 sigma from the held-out
    galaxies against +1.6 as points). About `refine_steps` decoder passes forward and back per object: 30 steps over
    2,000 32x32 galaxies take ~1 minute on 2 cores.

    `extra_stores`: more stores (paths or Stores) whose objects add their codes to the training
    codes, selected as the VAE's own are: those matching the catalog query the VAE was trained
    on (``deepfield train ... --where``) and `where` (all objects when neither is set). Each
    must hold objects the VAE reads (same stamp shape, bands, pixel scale, arrays) and must not
    be the VAE's own store. Validation stays on the VAE's own store. A
    flow on 2,023 codes in 16 dimensions is short of data: in benchmarks/prior_more_codes.py,
    3,887 more codes from a second simulated store brought the samples' mean size from +1.5 to
    +0.5 sigma of the held-out galaxies.

    `threads`: torch CPU threads while the flow trains (restored afterwards). The flow's
    matrices are small (batch x 128), so threads buy nothing and cost a lot when the cores are
    shared: on 2 busy cores one NSF step took 0.34 s with 1 thread and 7.7 s with 2.
    """
    model_dir = Path(model_dir)
    vae = load_model(model_dir)
    if type(vae).__name__ != "VAE":
        raise ModelFolderError(f"{model_dir} holds a {type(vae).__name__}; a latent prior needs a VAE "
                               "(train one with `deepfield train vae`)")
    record = vae.record["store"]
    store = open_store(store or record["path"]) if not isinstance(store, Store) else store
    if store.fingerprint != record.get("fingerprint"):
        raise InputError(f"the VAE was trained on store fingerprint {record.get('fingerprint')} but {store.path} has "
                         f"{store.fingerprint}: fit the prior on the VAE's own training store")
    # the VAE's own training selection, then the prior's
    splits = narrow_splits(store, record_splits(store, record), where)
    if where:
        if splits["train"].size < 10 * vae.latent_dim:
            raise InputError(f"only {splits['train'].size} training objects match {where!r}: a prior on "
                             f"{vae.latent_dim}-d codes needs at least {10 * vae.latent_dim}; loosen the selection")
    if refine_prior_weight is not None and not refine_steps:
        raise ConfigError("a refinement prior weight (--refine-prior-weight) applies only when codes are refined: "
                          "give refine_steps > 0 too (--refine-steps N)")
    condition = tuple(condition)
    # the training objects: the VAE's own, then those of any extra store (checked before any work)
    from deepfield.data.batches import check_model_store

    sources = [(store, splits["train"])]
    for extra in ([extra_stores] if isinstance(extra_stores, (str, Path, Store)) else extra_stores):
        extra = extra if isinstance(extra, Store) else open_store(extra)
        check_model_store(vae, extra)
        if extra.fingerprint == store.fingerprint:
            raise InputError(f"the extra store {extra.path} is the VAE's own store: its validation and test objects "
                             "would join the prior's training codes; give a different store (--extra-store)")
        # the same selection as the VAE's own codes: the VAE's training `where`, then the prior's
        queries = [q for q in (record.get("where"), where) if q]
        rows = np.arange(len(extra))
        for query in queries:
            rows = np.intersect1d(rows, extra.select(where=query))
        if rows.size == 0:
            raise InputError(f"no objects of the extra store {extra.path} match {' and '.join(map(repr, queries))}")
        sources.append((extra, rows))
    for s, _ in sources:
        for column in condition:
            s.column(column)
    val_rows = splits["val"] if splits["val"].size else splits["train"]
    t0 = time.perf_counter()
    refine = {"refine": refine_steps, "refine_prior_weight": refine_prior_weight, "progress": progress}
    codes = [posterior_codes(vae, s, rows, **refine) for s, rows in sources]
    mean_tr, std_tr = np.concatenate([m for m, _ in codes]), np.concatenate([sd for _, sd in codes])
    cond_tr = np.concatenate([_condition_values(s, rows, condition) for s, rows in sources]) if condition else None
    mean_va, std_va = posterior_codes(vae, store, val_rows, **refine)
    cond_va = _condition_values(store, val_rows, condition) if condition else None
    extra_record = [{"path": str(s.path), "fingerprint": s.fingerprint, "n": int(rows.size)} for s, rows in sources[1:]]
    if refine_steps:  # point estimates: the encoder's widths, drawn about them, only broaden the fit
        std_tr, std_va = np.zeros_like(std_tr), np.zeros_like(std_va)
    cfg = LatentPriorConfig(input_shape=(vae.latent_dim,), kind=kind, condition=condition, transforms=transforms,
                            hidden=tuple(hidden), components=components)
    z_val = torch.from_numpy(_validation_draws(mean_va, std_va, seed))
    c_val = _columns(cond_va, condition)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    # the prior is fitted to draws from the posteriors, so it is normalised by their spread, not the means'
    # alone: in a dimension the VAE does not use, the means sit near 0 while the draws spread as N(0, 1), and
    # scaling by the means' spread put the draws 10-100x out, where the fit started far off and often ended
    # worse than N(0, I)
    aggregate = mean_tr + std_tr * np.random.default_rng((seed, 1)).standard_normal(mean_tr.shape)
    if kind == "gmm":
        prior = GaussianMixturePrior(cfg)
        prior.fit_normalisation(aggregate)
        draws = mean_tr + std_tr * rng.standard_normal(mean_tr.shape)
        prior.fit_codes(((draws - prior.data_offset.numpy()) / prior.data_scale.numpy()), seed=seed)
        history = []
    else:
        prior = LatentFlow(cfg)
        prior.fit_normalisation(aggregate)
        if condition:
            prior.conditions.fit(cond_tr)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads or previous)
        try:
            prior, history = _fit_flow(prior, mean_tr, std_tr, cond_tr, z_val, c_val, condition, epochs, batch_size,
                                       lr, rng, progress)
        finally:
            torch.set_num_threads(previous)
    prior.eval()
    with torch.no_grad():
        val_log_p = float(prior.log_prob(z_val, condition=c_val).mean())
        val_log_p_gauss = float(gaussian_log_prob(z_val).mean())
    if not val_log_p > val_log_p_gauss:
        warnings.warn(f"the fitted {kind} prior scores held-out codes at {val_log_p:.2f} nats per object, worse than "
                      f"N(0, I) at {val_log_p_gauss:.2f}: it is kept in {model_dir / 'prior'} but `sample --prior auto` "
                      f"draws from N(0, I) instead. Fit it longer (--epochs, now {epochs}) or give it a simpler kind "
                      "(--kind gmm)", stacklevel=2)
    metrics = {"val_log_prob": val_log_p, "val_log_prob_standard_normal": val_log_p_gauss,
               "fit_seconds": time.perf_counter() - t0, "n_train_codes": int(mean_tr.shape[0]), "history": history}
    return save_model(prior, model_dir / "prior", metrics=metrics, store={**record, "vae": str(model_dir)},
                      training={"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "where": where,
                                "codes": ("refined codes (points)" if refine_steps else
                                          "one posterior draw per object per epoch"),
                                "refine_steps": refine_steps, "refine_prior_weight": refine_prior_weight,
                                "extra_stores": extra_record}, overwrite=True)


def _condition_values(store: Store, rows: np.ndarray, condition: tuple[str, ...]) -> np.ndarray:
    """The catalog values (N, K) of `condition` for the objects `rows`."""
    return np.stack([store.column(c)[rows] for c in condition], 1)


def _validation_draws(mean: np.ndarray, std: np.ndarray, seed: int) -> np.ndarray:
    """One fixed draw from each validation object's posterior (the same every epoch)."""
    rng = np.random.default_rng([seed, 1])
    return (mean + std * rng.standard_normal(mean.shape)).astype(np.float32)


def _columns(values: np.ndarray | None, names: tuple[str, ...]) -> dict[str, torch.Tensor] | None:
    """Condition columns (N, K) as the {name: (N,) float32 tensor} batch entries a prior reads."""
    return {c: torch.from_numpy(values[:, i].astype(np.float32)) for i, c in enumerate(names)} if names else None


def _fit_flow(prior, mean_tr, std_tr, cond_tr, z_val, c_val, condition, epochs, batch_size, lr, rng, progress):
    """Fit on fresh posterior draws each epoch; keep the epoch with the best mean log p of
    `z_val` (fixed validation draws, a tensor) given `c_val` (their conditions, or None)."""
    from deepfield.progress import progress_bar

    opt = torch.optim.Adam(prior.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs), eta_min=lr * 0.01)
    n = mean_tr.shape[0]
    best, best_state, history = -np.inf, None, []
    with progress_bar(progress) as bar:
        task = bar.add_task("fitting latent flow", total=epochs)
        for epoch in range(epochs):
            prior.train()
            # the aggregate posterior: a fresh draw from each object's q(z|x) every epoch
            draws = (mean_tr + std_tr * rng.standard_normal(mean_tr.shape)).astype(np.float32)
            order = rng.permutation(n)
            total = 0.0
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                batch = {"x": torch.from_numpy(draws[idx])}
                if condition:
                    batch.update(_columns(cond_tr[idx], condition))
                loss = prior.loss(batch).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * idx.size
            sched.step()
            prior.eval()
            with torch.no_grad():
                val = float(prior.log_prob(z_val, condition=c_val).mean())
            history.append({"epoch": epoch, "train_nll": total / n, "val_log_prob": val})
            if val > best:
                best, best_state = val, copy.deepcopy(prior.state_dict())
            bar.advance(task)
    prior.load_state_dict(best_state)
    return prior, history
