"""The GAN anomaly score (AnoGAN / f-AnoGAN, as used on HSC by Storey-Fisher et al. 2021).

For each image x, find the code z whose generated image G(z) is closest to x: start from the
encoder's estimate z0 = E(x), then take a few Adam steps on z (default 10 steps, lr 0.1,
betas (0.4, 0.9)), each object's code independently (the batch's loss is a sum over objects
and Adam is element-wise, so batching changes nothing). The score is

    score = (1 - lambda) * sum |x - G(z)|  +  lambda * sum |f(x) - f(G(z))|,

the residual score summed over pixels and the feature score over the critic's last feature
layer f, lambda = 0.3 by default. Sums are in the GAN's working units (asinh-stretched,
normalised; see deepfield.models.gan), so a bright galaxy's noise does not dominate. The
reconstruction G(z) and the residual x - G(z) come back in store units, for real /
reconstructed / residual triplets. Higher = more anomalous.

References:
    Schlegl et al. (2017), AnoGAN, arXiv:1703.05921; Schlegl et al. (2019), f-AnoGAN.
    Storey-Fisher et al. (2021), Anomaly detection in Hyper Suprime-Cam galaxy images with
    generative adversarial networks, arXiv:2012.08082.
"""

from __future__ import annotations

import numpy as np
import torch

from deepfield.data.store import Store, open_store
from deepfield.errors import InputError
from deepfield.models.gan import GAN
from deepfield.progress import progress_bar

__all__ = ["gan_anomaly_scores", "gan_score_store"]


def _check_model(model) -> None:
    if not isinstance(model, GAN):
        raise InputError(f"the GAN anomaly score needs a dcgan, wgan-gp or cgan model folder; got a "
                         f"{type(model).__name__}")
    if getattr(model, "record", None) and not (model.record.get("training") or {}).get("encoder_epochs", 1):
        import warnings

        warnings.warn("this GAN's encoder was never trained (encoder_epochs 0): the search starts from an "
                      "untrained E(x) and 10 steps may not reach the best code; retrain with encoder_epochs > 0",
                      stacklevel=3)


def gan_anomaly_scores(model: GAN, batch: dict, *, steps: int = 10, lr: float = 0.1,
                       betas: tuple[float, float] = (0.4, 0.9), feature_weight: float = 0.3) -> dict:
    """GAN anomaly scores of one batch.

    Arguments:
        model: a trained DCGAN / WGAN-GP / conditional GAN (its encoder gives z0).
        batch: {"x": (B, *input_shape) in store units, plus the condition columns of a cGAN}.
        steps, lr, betas: the Adam search over each object's code.
        feature_weight: lambda, the weight of the critic-feature score.

    Returns:
        {"score", "residual_score", "feature_score": (B,) tensors (working units, summed),
        "reconstruction": G(z) (B, *input_shape) and "residual": x - G(z), both in store units,
        "code": z (B, latent_dim)}.
    """
    _check_model(model)
    if steps < 0 or lr <= 0 or not 0 <= feature_weight <= 1:
        raise InputError(f"steps >= 0, lr > 0 and 0 <= feature_weight <= 1 are required; got steps={steps}, "
                         f"lr={lr}, feature_weight={feature_weight}")
    model.eval()
    x = model.check_input(batch["x"])
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)).nonzero().flatten().tolist()
        ids = batch["id"][bad].tolist() if "id" in batch else bad
        raise InputError(f"NaN/inf pixels in objects {ids[:10]}: a GAN cannot score them; clean or drop them")
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)  # only the codes move
    try:
        with torch.no_grad():
            u = model.to_working(x)
            c = model.condition_tensor(batch)
            f_real = model.critic_features(u)
            z0 = model.encode_working(u)
        z = z0.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr, betas=tuple(betas))

        def parts(z):
            g = model.generate(z, c)
            residual = (u - g).abs().flatten(1).sum(1)
            feature = (f_real - model.critic_features(g)).abs().sum(1)
            return g, residual, feature

        with torch.enable_grad():
            for _ in range(steps):
                _, residual, feature = parts(z)
                loss = ((1 - feature_weight) * residual + feature_weight * feature).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        with torch.no_grad():
            g, residual, feature = parts(z)
            recon = model.from_working(g)
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    return {"score": (1 - feature_weight) * residual + feature_weight * feature, "residual_score": residual,
            "feature_score": feature, "reconstruction": recon, "residual": x - recon, "code": z.detach()}


def gan_score_store(model: GAN, store, indices=None, batch_size: int = 256, progress: bool = True, *,
                    steps: int = 10, lr: float = 0.1, betas: tuple[float, float] = (0.4, 0.9),
                    feature_weight: float = 0.3, reconstructions: bool = False) -> dict:
    """GAN anomaly scores of the objects of `store` (rows `indices`, default all), batched.

    Returns a dict of numpy arrays in row order: ``id`` (N,), ``score``, ``residual_score``,
    ``feature_score`` (N,), ``code`` (N, latent_dim) and, with `reconstructions`,
    ``reconstruction`` and ``residual`` (N, *input_shape) in store units.
    """
    from deepfield.data.batches import check_model_store
    from deepfield.data.batches import iterate_batches

    _check_model(model)
    store = store if isinstance(store, Store) else open_store(store)
    check_model_store(model, store)
    idx = np.arange(len(store)) if indices is None else np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        raise InputError(f"no objects selected from {store.path}")
    keys = ["score", "residual_score", "feature_score", "code"] + (["reconstruction", "residual"] if reconstructions
                                                                    else [])
    out: dict[str, list] = {k: [] for k in keys}
    ids = []
    with progress_bar(progress) as bar:
        task = bar.add_task("GAN scores", total=idx.size)
        for batch in iterate_batches(store, idx, model, batch_size):
            result = gan_anomaly_scores(model, batch, steps=steps, lr=lr, betas=betas, feature_weight=feature_weight)
            for k in keys:
                out[k].append(result[k].cpu().numpy())
            ids.append(batch["id"].numpy())
            bar.advance(task, int(batch["x"].shape[0]))
    result = {"id": np.concatenate(ids)}
    result.update({k: np.concatenate(v) for k, v in out.items()})
    return result
