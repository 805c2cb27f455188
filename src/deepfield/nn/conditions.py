"""Catalog conditions (size, magnitude, redshift...) as network inputs: normalised, with range."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from deepfield.errors import InputError

__all__ = ["ConditionNormaliser"]


class ConditionNormaliser(nn.Module):
    """Standardises K named catalog columns and remembers their training range.

    Buffers (saved with the model): ``offset``, ``scale`` (mean and std of the training
    values) and ``low``, ``high`` (their range, for out-of-range warnings).
    """

    def __init__(self, names: Sequence[str]):
        super().__init__()
        self.names = tuple(names)
        k = len(self.names)
        self.register_buffer("offset", torch.zeros(k))
        self.register_buffer("scale", torch.ones(k))
        self.register_buffer("low", torch.full((k,), -math.inf))
        self.register_buffer("high", torch.full((k,), math.inf))

    def __len__(self) -> int:
        return len(self.names)

    def fit(self, values: np.ndarray) -> None:
        """Fit on training values (N, K)."""
        values = np.asarray(values, dtype=np.float64).reshape(-1, len(self.names))
        if not np.isfinite(values).all():
            raise InputError(f"condition columns {list(self.names)} contain NaN/inf: clean the catalog or "
                             "drop those objects")
        scale = values.std(axis=0)
        self.offset.copy_(torch.as_tensor(values.mean(axis=0)))
        self.scale.copy_(torch.as_tensor(np.where(scale > 0, scale, 1.0)))
        self.low.copy_(torch.as_tensor(values.min(axis=0)))
        self.high.copy_(torch.as_tensor(values.max(axis=0)))

    def raw(self, batch_or_values, n: int | None = None) -> torch.Tensor:
        """Raw values (N, K) from a batch dict holding the columns, or from an array (N, K) / (K,)."""
        if isinstance(batch_or_values, dict):
            missing = [c for c in self.names if c not in batch_or_values]
            if missing:
                raise InputError(f"this model is conditioned on {list(self.names)}; the batch lacks {missing}")
            c = torch.stack([torch.as_tensor(batch_or_values[k], dtype=torch.float32) for k in self.names], dim=-1)
            if c.ndim == 1:  # one value per column, e.g. {"magnitude": 22.0}
                c = c.expand(n or 1, -1)
        else:
            if batch_or_values is None:
                raise InputError(f"this model is conditional: give values for {', '.join(self.names)}")
            c = torch.as_tensor(np.asarray(batch_or_values, dtype=np.float32))
            if c.ndim == 1:
                c = c.expand(n or 1, -1)
            if c.shape[-1] != len(self.names):
                raise InputError(f"condition has {c.shape[-1]} values; the model needs {len(self.names)}: "
                                 f"{', '.join(self.names)}")
        finite = torch.isfinite(c)
        if not bool(finite.all()):
            bad = [name for k, name in enumerate(self.names) if not bool(finite[..., k].all())]
            rows = torch.nonzero(~finite.reshape(-1, len(self.names)).all(dim=1)).flatten()
            raise InputError(f"condition {', '.join(bad)} is NaN/inf for {rows.numel()} object(s) (rows "
                             f"{rows[:5].tolist()}): give finite values, or drop those objects")
        return c.to(self.offset.device)

    def forward(self, batch_or_values, n: int | None = None) -> torch.Tensor:
        """Normalised conditions (N, K)."""
        return self.normalise(self.raw(batch_or_values, n))

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw values (N, K), as ``raw`` returns them, normalised by the training mean and std."""
        return (raw - self.offset) / self.scale

    def value(self, normalised: torch.Tensor, k: int) -> torch.Tensor:
        """Column `k`'s raw catalog values (N,) back from normalised conditions (N, K)."""
        return normalised[:, k].float() * self.scale[k] + self.offset[k]

    def outside_range(self, values) -> list[str]:
        """One message per condition that leaves the training range."""
        v = torch.as_tensor(np.asarray(values, dtype=np.float32)).reshape(-1, len(self.names))
        out = []
        for k, name in enumerate(self.names):
            lo, hi = float(self.low[k]), float(self.high[k])
            if bool(((v[:, k] < lo) | (v[:, k] > hi)).any()):
                out.append(f"{name} outside the training range [{lo:.4g}, {hi:.4g}]")
        return out
