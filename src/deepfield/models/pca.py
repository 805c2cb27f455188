"""Principal component analysis: the linear baseline every autoencoder must beat.

Three fitting methods, all giving the same kind of model (mean + orthonormal components):
'exact' (full SVD), 'randomized' (Halko et al. randomised SVD; fast for large D) and
'incremental' (Ross et al. incremental PCA over batches; for stores larger than memory).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from deepfield.errors import ConfigError, InputError
from deepfield.models.base import Model, register
from deepfield.models.protocol import Encoding, LossOutput

__all__ = ["PCA", "PCAConfig"]


@dataclass(frozen=True)
class PCAConfig:
    """Arguments:
    input_shape: shape of one sample, (C, H, W) or (D,).
    latent_dim: number of principal components kept.
    method: 'exact', 'randomized' or 'incremental'.
    normalisation: 'channel' (images/spectra) or 'feature' (tables).
    seed: seed of the randomised SVD.
    """

    input_shape: tuple[int, ...]
    latent_dim: int = 16
    method: str = "exact"
    normalisation: str = "channel"
    seed: int = 0


@register
class PCA(Model, Encoding):
    """Principal component analysis on flattened, normalised samples.

    ``encode`` projects onto the leading components; ``decode`` maps codes back to data units.

    References:
        Halko, Martinsson & Tropp (2011), randomised SVD, arXiv:0909.4061.
        Ross et al. (2008), incremental learning for robust visual tracking (incremental PCA).

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(200, 5)).astype("f4")
        >>> pca = PCA(PCAConfig(input_shape=(5,), latent_dim=5, normalisation="feature")).fit(x)
        >>> float(abs(pca.reconstruct(torch.from_numpy(x)) - torch.from_numpy(x)).max()) < 1e-4
        True
    """

    family = "pca"
    config_class = PCAConfig
    trainer = "closed-form"
    check_options = {"latent_dim": 4}

    def __init__(self, config: PCAConfig):
        if config.method not in ("exact", "randomized", "incremental"):
            raise ConfigError(f"PCA method {config.method!r}: choose exact, randomized or incremental")
        super().__init__(config)
        d = int(np.prod(config.input_shape))
        if not 1 <= config.latent_dim <= d:
            raise ConfigError(f"PCA latent_dim {config.latent_dim} must be between 1 and the "
                              f"data dimension {d}")
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("components", torch.zeros(config.latent_dim, d))
        self.register_buffer("explained_variance", torch.zeros(config.latent_dim))
        self.register_buffer("total_variance", torch.zeros(()))

    def _flat(self, x: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        x = self.check_input(x)
        return self.normalise(x).reshape(x.shape[0], -1).double().numpy()

    def fit(self, x: np.ndarray, normalisation_fitted: bool = False) -> "PCA":
        """Fit on all of `x` (N, *input_shape) in store units.

        The normalisation is fitted on `x` too, unless `normalisation_fitted` (then the one
        set by :meth:`fit_normalisation` is kept, e.g. shared with other models).
        """
        x = np.asarray(x, dtype=np.float32)
        if x.shape[0] < self.latent_dim:
            raise InputError(f"PCA with {self.latent_dim} components needs at least that many "
                             f"training samples, got {x.shape[0]}")
        if not normalisation_fitted:
            self.fit_normalisation(x)
        flat = self._flat(x)
        from sklearn.decomposition import PCA as SkPCA

        if self.config.method == "incremental":
            return self.fit_batches([x], normalisation_fitted=True)
        solver = "full" if self.config.method == "exact" else "randomized"
        sk = SkPCA(n_components=self.latent_dim, svd_solver=solver, random_state=self.config.seed).fit(flat)
        self._set(sk.mean_, sk.components_, sk.explained_variance_, flat.var(axis=0, ddof=1).sum())
        return self

    def fit_batches(self, batches: Iterable[np.ndarray], normalisation_fitted: bool = False) -> "PCA":
        """Incremental fit over an iterable of batches (each (n, *input_shape), n >= latent_dim).

        Memory is one batch. Call :meth:`fit_normalisation` first on a representative subset
        unless `normalisation_fitted`.
        """
        from sklearn.decomposition import IncrementalPCA

        if not normalisation_fitted and bool((self.data_scale == 1).all()) and bool((self.data_offset == 0).all()):
            raise InputError("fit_batches needs the normalisation fitted first: call "
                             "fit_normalisation(subset) on a representative subset")
        ipca = IncrementalPCA(n_components=self.latent_dim)
        n, s1, s2 = 0, 0.0, 0.0
        pending = None  # sklearn needs >= latent_dim rows per partial_fit: hold small tails back
        for batch in batches:
            flat = self._flat(batch)
            n += flat.shape[0]
            s1 = s1 + flat.sum(0)
            s2 = s2 + (flat**2).sum(0)
            if pending is not None and pending.shape[0] >= self.latent_dim and flat.shape[0] >= self.latent_dim:
                ipca.partial_fit(pending)
                pending = flat
            else:
                pending = flat if pending is None else np.concatenate([pending, flat])
        if pending is None or n < self.latent_dim:
            raise InputError(f"incremental PCA with {self.latent_dim} components needs at least "
                             f"that many samples, got {n}")
        ipca.partial_fit(pending)
        total = float(((s2 - s1**2 / n) / max(n - 1, 1)).sum())
        self._set(ipca.mean_, ipca.components_, ipca.explained_variance_, total)
        return self

    def _set(self, mean, components, explained, total) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.components.copy_(torch.as_tensor(components, dtype=torch.float32))
        self.explained_variance.copy_(torch.as_tensor(explained, dtype=torch.float32))
        self.total_variance.fill_(float(total))

    @property
    def explained_variance_ratio(self) -> torch.Tensor:
        return self.explained_variance / self.total_variance.clamp_min(1e-30)

    def encode(self, x: torch.Tensor, *, condition=None) -> torch.Tensor:
        self.check_no_condition(condition)
        x = self.check_input(x)
        flat = self.normalise(x).reshape(x.shape[0], -1)
        return (flat - self.mean) @ self.components.T

    def decode(self, z: torch.Tensor, *, condition=None) -> torch.Tensor:
        self.check_no_condition(condition)
        flat = self.check_codes(z) @ self.components + self.mean
        return self.denormalise(flat.reshape(z.shape[0], *self.input_shape))

    def loss(self, batch: dict) -> LossOutput:
        """Mean squared reconstruction error in normalised units (PCA is fitted in closed form:
        this measures, it does not train)."""
        x = self.check_input(batch["x"])
        mse = ((self.normalise(self.reconstruct(x)) - self.normalise(x)) ** 2).mean()
        return LossOutput(mse, {"mse": mse})
