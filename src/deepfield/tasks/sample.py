"""Draw galaxies from a generative model into a store, optionally as a survey would see them."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping

import numpy as np
import torch

from deepfield.data.store import Store, create_store
from deepfield.errors import InputError
from deepfield.progress import progress_bar

__all__ = ["sample_store", "parse_condition"]


def parse_condition(text: str | None) -> dict[str, float]:
    """'half_light_radius=0.8,magnitude=22' -> {'half_light_radius': 0.8, 'magnitude': 22.0}."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        if "=" not in part:
            raise InputError(f"condition {part!r}: write NAME=VALUE pairs separated by commas, "
                             "e.g. 'half_light_radius=0.8,magnitude=22'")
        name, value = part.split("=", 1)
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise InputError(f"condition {name.strip()}={value!r} is not a number") from None
    return out


def _needed_conditions(model) -> tuple[str, ...]:
    names = list(getattr(model.config, "condition", ()) or ())
    prior = getattr(model, "prior", None)
    for name in getattr(prior, "data_columns", ()) or ():
        if name not in names:
            names.append(name)
    return tuple(names)


@torch.no_grad()
def sample_store(model, out, n: int, *, condition: Mapping[str, float] | None = None, seed: int = 0,
                 prior: str = "auto", psf_fwhm: float | None = None, noise_sigma: float | None = None,
                 batch_size: int = 256, overwrite: bool = False, progress: bool = True, bf16: bool = False) -> Store:
    """Write `n` samples of `model` to a store at `out`.

    Without a PSF, `x` is the noiseless (for observation-model VAEs: deconvolved) galaxy.
    With `psf_fwhm` (arcsec, a Moffat PSF at the model's pixel scale) and `noise_sigma`
    (counts/pixel), `x` is the galaxy as a survey would see it, and `truth`, `psf` and `ivar`
    hold the noiseless image, the PSF and the inverse variance, as the simulator writes them.
    The catalog holds the conditions and the prior used. `bf16` decodes a VAE's samples under
    bfloat16 autocast (see :meth:`deepfield.models.VAE.sample`).
    """
    if n < 1:
        raise InputError(f"--n must be >= 1, got {n}")
    if bf16 and "bf16" not in inspect.signature(model.sample).parameters:
        raise InputError(f"bf16 decoding is for VAEs; a {type(model).__name__} samples in fp32: drop --bf16")
    condition = dict(condition or {})
    needed = _needed_conditions(model)
    missing = [c for c in needed if c not in condition]
    unknown = [c for c in condition if c not in needed]
    if missing:
        raise InputError(f"this model is conditioned on {', '.join(needed)}: give "
                         f"--condition {','.join(f'{c}=VALUE' for c in needed)} (missing {', '.join(missing)})")
    if unknown:
        raise InputError(f"the model was not trained on condition(s) {', '.join(unknown)}; it takes: "
                         f"{', '.join(needed) or 'none'}")
    for normaliser in (getattr(model, "conditions", None), getattr(getattr(model, "prior", None), "conditions", None)):
        if normaliser is not None and len(normaliser):
            for message in normaliser.outside_range([[condition[c] for c in normaliser.names]]):
                warnings.warn(f"{message}: samples there are extrapolations", stacklevel=2)
    record = getattr(model, "record", {}) or {}
    pixel_scale = record.get("store", {}).get("pixel_scale")
    bands = tuple(record.get("store", {}).get("bands") or ())
    shape = model.input_shape
    observe = psf_fwhm is not None
    if observe:
        if len(shape) != 3 or pixel_scale is None:
            raise InputError("--psf-fwhm needs an image model with a known pixel scale")
        if noise_sigma is None or noise_sigma <= 0:
            raise InputError("--psf-fwhm needs --noise-sigma (counts/pixel, > 0) to observe the samples")
        from deepfield.physics import ObservationModel, moffat_psf

        psf = moffat_psf(psf_fwhm, size=25, pixel_scale=pixel_scale).float()
        psf = psf.expand(shape[0], -1, -1) if psf.ndim == 2 else psf
        observation = ObservationModel("pixel")
    # 'auto' is resolved here (N(0, I) when the fitted prior scored worse), so the catalog says what was used
    if prior == "auto" and hasattr(model, "usable_prior"):
        usable = model.usable_prior()
        prior = "gaussian" if usable is None else usable
    if isinstance(prior, str):
        chosen = None if prior == "gaussian" else getattr(model, "prior", None)
    else:
        chosen = prior
    used_prior = "gaussian" if chosen is None else type(chosen).__name__
    generator = torch.Generator().manual_seed(seed)
    # the protocol's sample(n, *, condition, generator); a latent prior and bf16 where the family has them
    takes = inspect.signature(model.sample).parameters
    if prior != "auto" and "prior" not in takes:
        raise InputError(f"a {type(model).__name__} has no latent prior to choose: drop --prior {prior}")
    options = {**({"prior": prior} if "prior" in takes else {}), **({"bf16": True} if bf16 else {})}
    arrays = {"truth": shape, "psf": tuple(psf.shape), "ivar": shape} if observe else {}
    units = {c: u for c, u in (record.get("store", {}).get("units") or {}).items()}
    provenance = {"task": "sample", "model_class": type(model).__name__, "prior": used_prior, "seed": seed,
                  "condition": condition, "psf_fwhm_arcsec": psf_fwhm, "noise_sigma": noise_sigma, "bf16": bf16}
    with create_store(out, shape, bands=bands if len(shape) == 3 else (), pixel_scale=pixel_scale,
                      arrays=arrays, units=units, provenance=provenance, overwrite=overwrite) as writer, \
            progress_bar(progress) as bar:
        task = bar.add_task("sampling", total=n)
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            cond = {k: torch.full((m,), float(v)) for k, v in condition.items()} if condition else None
            images = model.sample(m, condition=cond, generator=generator, **options)
            catalog = {k: np.full(m, v) for k, v in condition.items()}
            catalog["prior"] = np.array([used_prior] * m)
            if observe:
                psf_batch = psf.expand(m, *psf.shape)
                x = observation.observe(images, psf_batch, noise_sigma=noise_sigma, generator=generator)
                ivar = torch.full_like(images, 1.0 / noise_sigma**2)
                writer.append(x=x.numpy(), truth=images.numpy(), psf=psf_batch.numpy(), ivar=ivar.numpy(), catalog=catalog)
            else:
                writer.append(x=images.numpy(), catalog=catalog)
            bar.advance(task, m)
    return writer.store
