"""Frechet distance between two sets of images on the features of a domain encoder.

The Frechet (2-Wasserstein) distance between Gaussians fitted to two feature sets,

    FD = |mu_a - mu_b|^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)),

is the FID of Heusel et al. (2017) when the features are Inception's. No ImageNet weights can
be had here, and Inception knows nothing of galaxies anyway, so deepfield uses the encoder of
its own autoencoder or VAE trained on the survey (the codes: posterior means for a VAE), the
same for every generative family, so GAN, VAE and PixelCNN samples compare on one scale. The
distance is in squared feature units; it is only comparable between runs using the same
encoder. With finite samples it is biased upwards (two samples of one distribution give
FD > 0, shrinking as 1/N): compare against the FD between two real sets of the same sizes.

References:
    Frechet (1957); Dowson & Landau (1982), the Frechet distance between multivariate normals.
    Heusel et al. (2017), GANs trained by a two time-scale update rule converge to a local
    Nash equilibrium (FID), arXiv:1706.08500.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

from deepfield.errors import InputError

__all__ = ["frechet_distance", "frechet_distance_gaussians", "encoder_features", "encoder_frechet_distance"]


def _trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """Tr (C_a C_b)^(1/2) for symmetric positive semi-definite C_a, C_b.

    C_a C_b is similar to the symmetric PSD matrix S = C_a^(1/2) C_b C_a^(1/2) (same
    eigenvalues), so the trace is the sum of the square roots of S's eigenvalues: real
    arithmetic, no complex parts from round-off, and tiny negative eigenvalues clipped at 0.
    (scipy.linalg.sqrtm of C_a C_b gives the same number where it is well conditioned.)
    """
    w, v = linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    s = root_a @ cov_b @ root_a
    eig = linalg.eigvalsh((s + s.T) / 2)
    return float(np.sqrt(np.clip(eig, 0, None)).sum())


def frechet_distance_gaussians(mean_a, cov_a, mean_b, cov_b) -> float:
    """Frechet distance between N(mean_a, cov_a) and N(mean_b, cov_b) (squared feature units)."""
    mean_a, mean_b = np.atleast_1d(np.asarray(mean_a, np.float64)), np.atleast_1d(np.asarray(mean_b, np.float64))
    cov_a, cov_b = np.atleast_2d(np.asarray(cov_a, np.float64)), np.atleast_2d(np.asarray(cov_b, np.float64))
    d = mean_a.shape[0]
    if mean_b.shape != (d,) or cov_a.shape != (d, d) or cov_b.shape != (d, d):
        raise InputError(f"means {mean_a.shape}, {mean_b.shape} and covariances {cov_a.shape}, {cov_b.shape} do not "
                         "describe two Gaussians of one dimension")
    for name, c in (("cov_a", cov_a), ("cov_b", cov_b)):
        if not np.isfinite(c).all() or not np.allclose(c, c.T, rtol=1e-6, atol=1e-12 * max(1.0, np.abs(c).max())):
            raise InputError(f"{name} must be a finite symmetric matrix")
    cov_a, cov_b = (cov_a + cov_a.T) / 2, (cov_b + cov_b.T) / 2
    diff = mean_a - mean_b
    value = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * _trace_sqrt_product(cov_a, cov_b)
    return float(max(value, 0.0))


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N_a, D) and (N_b, D).

    Means and (unbiased) covariances in float64; squared feature units. 0 for identical sets.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> a = rng.normal(size=(20000, 2))
        >>> round(frechet_distance(a, a), 6), round(frechet_distance(a, a + [3.0, 4.0]), 2)
        (0.0, 25.0)
    """
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if b.ndim == 1:
        b = b[:, None]
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise InputError(f"feature sets of shapes {a.shape} and {b.shape}: give (N_a, D) and (N_b, D) arrays")
    if len(a) < 2 or len(b) < 2:
        raise InputError(f"the Frechet distance needs at least 2 objects per set, got {len(a)} and {len(b)}")
    for name, f in (("feats_a", a), ("feats_b", b)):
        if not np.isfinite(f).all():
            raise InputError(f"{name} holds NaN/inf features: check the images and the encoder")
    return frechet_distance_gaussians(a.mean(0), np.cov(a, rowvar=False).reshape(a.shape[1], a.shape[1]),
                                      b.mean(0), np.cov(b, rowvar=False).reshape(b.shape[1], b.shape[1]))


def encoder_features(encoder, data, *, indices=None, batch_size: int = 256) -> np.ndarray:
    """Codes (N, D) of images under `encoder` (a model folder or a loaded AE/VAE).

    `data` is a store (rows `indices`, default all) or an array (N, C, H, W) in the encoder's
    store units. The encoder must read images alone: a conditional or PSF-reading encoder is
    refused (its features would depend on more than the image).
    """
    import torch

    from deepfield.data.store import Store, open_store

    from deepfield.models.folder import as_model

    encoder = as_model(encoder)
    if not hasattr(encoder, "encode"):
        raise InputError(f"a {type(encoder).__name__} has no encoder: give an ae, conv-ae or vae model folder")
    reads_psf = bool(getattr(encoder.config, "psf_to_encoder", False))
    if getattr(encoder, "data_columns", ()) or reads_psf:
        raise InputError("the Frechet encoder must read images alone; this one also reads "
                         f"{list(encoder.data_columns) or ['psf']}: train an unconditional ae, conv-ae or vae")
    encoder.eval()
    if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        data = open_store(data)
    if isinstance(data, Store):
        idx = np.arange(len(data)) if indices is None else np.asarray(indices, dtype=np.int64)
        chunks = (data.read("x", idx[s:s + batch_size]) for s in range(0, idx.size, batch_size))
    else:
        arr = np.asarray(data, dtype=np.float32)
        if indices is not None:
            arr = arr[np.asarray(indices)]
        chunks = (arr[s:s + batch_size] for s in range(0, len(arr), batch_size))
    feats = []
    with torch.no_grad():
        for x in chunks:
            feats.append(encoder.encode(torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)).cpu().numpy())
    if not feats:
        raise InputError("no images to encode")
    return np.concatenate(feats).astype(np.float64)


def encoder_frechet_distance(encoder, a, b, *, indices_a=None, indices_b=None, batch_size: int = 256) -> float:
    """Frechet distance between two image sets (stores or (N, C, H, W) arrays, store units) on the
    codes of `encoder` (a model folder or a loaded AE/VAE trained on the survey)."""
    from deepfield.models.folder import as_model

    encoder = as_model(encoder)
    fa = encoder_features(encoder, a, indices=indices_a, batch_size=batch_size)
    fb = encoder_features(encoder, b, indices=indices_b, batch_size=batch_size)
    return frechet_distance(fa, fb)
