"""Walks through a model's latent space: interpolations, traversal grids, attribute editing.

All functions take and return images in store units, (N, C, H, W).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from deepfield.errors import InputError

__all__ = ["interpolate", "traversal_grid", "edit_attributes"]


def _codes(model, x: torch.Tensor, condition=None) -> torch.Tensor:
    return model.encode(x, condition=condition if getattr(model.config, "condition", ()) else None)


def _decode(model, z: torch.Tensor, condition=None) -> torch.Tensor:
    return model.decode(z, condition=condition if getattr(model.config, "condition", ()) else None)


@torch.no_grad()
def interpolate(model, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 8, spherical: bool = False,
                condition=None) -> torch.Tensor:
    """Decoded images along the path between the codes of two objects (steps, C, H, W).

    `spherical` interpolates on the great circle (slerp), which keeps Gaussian-prior codes at
    a typical norm; linear is the default.
    """
    if steps < 2:
        raise InputError("interpolate needs steps >= 2")
    z = _codes(model, torch.stack([torch.as_tensor(x_a), torch.as_tensor(x_b)]), condition)
    t = torch.linspace(0, 1, steps)[:, None]
    if spherical:
        a, b = z[0], z[1]
        omega = torch.arccos(torch.clamp((a / a.norm()) @ (b / b.norm()), -1, 1))
        if float(omega) < 1e-6:
            path = (1 - t) * a + t * b
        else:
            path = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
    else:
        path = (1 - t) * z[0] + t * z[1]
    cond = None if condition is None else np.repeat(np.asarray(condition, dtype=np.float32)[:1], steps, axis=0)
    return _decode(model, path, cond)


@torch.no_grad()
def traversal_grid(model, z0: torch.Tensor | None = None, dims: Sequence[int] = (0, 1), span: float = 2.5,
                   steps: int = 15, condition=None) -> torch.Tensor:
    """A steps x steps grid of decoded images varying two latent coordinates by +-`span`.

    Returns (steps, steps, C, H, W): row i varies dims[0], column j varies dims[1] (the seed's
    15 x 15 latent grid). `z0` is the grid's centre (default: the origin).
    """
    if len(dims) != 2 or max(dims) >= model.latent_dim or min(dims) < 0:
        raise InputError(f"dims {tuple(dims)}: give two latent coordinates in 0..{model.latent_dim - 1}")
    centre = torch.zeros(model.latent_dim) if z0 is None else torch.as_tensor(z0, dtype=torch.float32).reshape(-1)
    values = torch.linspace(-span, span, steps)
    z = centre.repeat(steps * steps, 1)
    z[:, dims[0]] += values.repeat_interleave(steps)
    z[:, dims[1]] += values.repeat(steps)
    cond = None if condition is None else np.repeat(np.asarray(condition, dtype=np.float32).reshape(1, -1),
                                                    steps * steps, axis=0)
    images = _decode(model, z, cond)
    return images.reshape(steps, steps, *images.shape[1:])


@torch.no_grad()
def edit_attributes(model, x: torch.Tensor, condition: Mapping[str, np.ndarray],
                    changes: Mapping[str, float]) -> torch.Tensor:
    """Encode objects with their catalog conditions, change some conditions, decode.

    E.g. ``edit_attributes(cvae, x, {"half_light_radius": r, "magnitude": m, ...},
    {"half_light_radius": 1.2})`` redraws the same galaxies at 1.2 arcsec.
    """
    names = tuple(getattr(model.config, "condition", ()) or ())
    if not names:
        raise InputError("attribute editing needs a conditional model (train a cvae)")
    unknown = [k for k in changes if k not in names]
    if unknown:
        raise InputError(f"the model is not conditioned on {unknown}; it takes {list(names)}")
    n = x.shape[0]
    original = np.stack([np.broadcast_to(np.asarray(condition[c], dtype=np.float32), (n,)) for c in names], 1)
    edited = original.copy()
    for k, v in changes.items():
        edited[:, names.index(k)] = v
    z = model.encode(x, condition=original)
    return model.decode(z, condition=edited)
