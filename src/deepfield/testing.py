"""The model check suite: every registered family through one contract.

:func:`check_model` is deepfield's ``parametrize_with_checks``: it fits a family on a tiny store
of its own (:func:`tiny_store`), then checks what the protocol promises for each role the
family plays (:mod:`deepfield.models.protocol`): the model folder round-trips bit for bit,
seeded sampling repeats, codes / samples / densities / losses have the documented shapes and
are finite, and bad input (a wrong band count, codes of the wrong length, a missing condition)
is refused with a :class:`deepfield.errors.DeepfieldError` that names the problem. A new family
runs it in its test with one line::

    from deepfield.testing import check_model
    check_model("my-family", tmp_path)

Families keep their fits small for it through ``Model.check_options`` (config values, e.g.
narrow networks). The suite takes seconds per family on a CPU.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from deepfield.errors import DeepfieldError

__all__ = ["check_model", "tiny_store", "CheckFailed"]

#: catalog columns of the tiny store, with units: what conditional families condition on
TINY_COLUMNS = {"half_light_radius": "arcsec", "magnitude": "mag", "redshift": "", "snr": ""}


class CheckFailed(AssertionError):
    """A family broke the model protocol; the message names the check and the family."""


def tiny_store(path, *, n: int = 64, size: int = 16, bands: int = 1, seed: int = 0, pixel_scale: float = 0.2):
    """A small store of Gaussian galaxies seen through a Gaussian PSF with white noise.

    Arrays ``x`` (n, bands, size, size) in counts, ``truth`` (the noiseless, PSF-free sky),
    ``psf`` (n, bands, 9, 9) of unit sum and ``ivar`` (1 / noise variance); catalog columns
    ``half_light_radius`` (arcsec), ``magnitude`` (zeropoint 30 in counts), ``redshift`` and
    ``snr``. Everything follows from `seed`.
    """
    from deepfield.data.store import create_store, open_store

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    c = size // 2
    sigma_gal = rng.uniform(0.8, size / 7, n)
    flux = 10 ** rng.uniform(2.0, 3.0, n)
    e = rng.uniform(0.0, 0.4, n)
    angle = rng.uniform(0, np.pi, n)
    psf_sigma = rng.uniform(0.7, 1.2, n)
    py, px = np.mgrid[-4:5, -4:5].astype(np.float64)
    noise_sigma = 0.5
    x = np.empty((n, bands, size, size), np.float32)
    truth = np.empty_like(x)
    psf = np.empty((n, bands, 9, 9), np.float32)
    for i in range(n):
        dx, dy = xx - c, yy - c
        u = np.cos(angle[i]) * dx + np.sin(angle[i]) * dy
        v = -np.sin(angle[i]) * dx + np.cos(angle[i]) * dy
        q = (1 - e[i]) / (1 + e[i])
        sky = np.exp(-0.5 * (u**2 * q + v**2 / q) / sigma_gal[i] ** 2)
        sky *= flux[i] / sky.sum()
        kernel = np.exp(-0.5 * (px**2 + py**2) / psf_sigma[i] ** 2)
        kernel /= kernel.sum()
        observed = np.real(np.fft.ifft2(np.fft.fft2(sky) * np.fft.fft2(np.fft.ifftshift(_pad(kernel, size)))))
        for b in range(bands):
            truth[i, b] = sky * (1 + 0.1 * b)
            psf[i, b] = kernel
            x[i, b] = observed * (1 + 0.1 * b) + rng.normal(0, noise_sigma, (size, size))
    half_light = sigma_gal * np.sqrt(2 * np.log(2)) * pixel_scale
    snr = flux / (noise_sigma * np.sqrt(4 * np.pi * (sigma_gal**2 + psf_sigma**2)))
    names = tuple("grizy"[:bands]) if bands <= 5 else tuple(f"b{k}" for k in range(bands))
    with create_store(path, (bands, size, size), bands=names, pixel_scale=pixel_scale,
                      arrays={"truth": (bands, size, size), "psf": (bands, 9, 9), "ivar": (bands, size, size)},
                      units=TINY_COLUMNS, provenance={"made_by": "deepfield.testing.tiny_store", "seed": seed},
                      extra_meta={"zeropoint_ab": 30.0}, overwrite=True) as writer:
        writer.append(x=x, truth=truth, psf=psf, ivar=np.full_like(x, 1 / noise_sigma**2),
                      catalog={"half_light_radius": half_light, "magnitude": 30 - 2.5 * np.log10(flux),
                               "redshift": rng.uniform(0.1, 1.5, n), "snr": snr})
    return open_store(path)


def _pad(kernel: np.ndarray, size: int) -> np.ndarray:
    """A (k, k) kernel centred at (size // 2, size // 2) of a (size, size) array."""
    out = np.zeros((size, size))
    k = kernel.shape[0]
    start = size // 2 - k // 2
    out[start:start + k, start:start + k] = kernel
    return out


def _require(condition: bool, family: str, what: str) -> None:
    if not condition:
        raise CheckFailed(f"{family}: {what}")


def _refused(family: str, what: str, call) -> None:
    """`call` must raise a DeepfieldError (a named error with its fix), not crash or pass."""
    try:
        call()
    except DeepfieldError:
        return
    except Exception as err:  # noqa: BLE001 - any other exception is the failure being checked for
        raise CheckFailed(f"{family}: {what} raised {type(err).__name__} ({err}) instead of a named deepfield "
                          "error") from err
    raise CheckFailed(f"{family}: {what} was accepted")


def _condition(model, store, rows) -> dict | None:
    columns = tuple(model.data_columns)
    return {c: store.column(c)[rows] for c in columns} if columns else None


def _fit(family: str, cls, store, store_b, out: Path, options: dict | None) -> Path:
    """Train `family` on the tiny store(s) through its own trainer; returns the model folder."""
    from deepfield.train import TrainSettings, train
    from deepfield.train.gan import train_gan
    from deepfield.train.prior import train_prior

    settings = TrainSettings(epochs=1, batch_size=16, patience=0, progress=False, threads=1)
    model_options = {**cls.check_options, **(options or {})}
    if cls.trainer == "latent-prior":
        vae = train("vae", store, out, model_options={"latent_dim": 4, "channels": (8, 16)}, settings=settings)
        train_prior(vae, epochs=2, progress=False, **model_options)
        return vae / "prior"
    if cls.trainer == "adversarial":
        return train_gan(family, store, out, store_b=store_b, model_options=model_options, settings=settings)
    return train(family, store, out, model_options=model_options, settings=settings)


def check_model(family: str, tmp_dir=None, *, options: dict | None = None) -> dict:
    """Run the protocol checks on a registered `family`; raises :class:`CheckFailed` on the first
    broken promise. Returns {check name: True} of the checks run (which depend on the roles).

    Arguments:
        family: a name of :data:`deepfield.models.FAMILIES` (the latent priors 'flow' and 'gmm'
            are fitted on a tiny VAE trained first).
        tmp_dir: where the tiny store and model folders go (default: a temporary directory,
            removed afterwards).
        options: config values on top of the family's ``check_options``.
    """
    if tmp_dir is None:
        with tempfile.TemporaryDirectory(prefix="deepfield-check-") as tmp:
            return check_model(family, tmp, options=options)
    from deepfield.models.base import family_class
    from deepfield.models.folder import load_model
    from deepfield.models.protocol import capabilities, signature_problems

    tmp = Path(tmp_dir)
    cls = family_class(family)
    caps = capabilities(cls)
    done: dict[str, bool] = {}
    problems = signature_problems(cls)
    _require(not problems, family, "; ".join(problems))
    _require(bool(caps), family, "plays no role of deepfield.models.protocol")
    done["signatures"] = True

    store = tiny_store(tmp / "tiny-store", seed=0)
    store_b = tiny_store(tmp / "tiny-store-b", seed=1) if getattr(cls, "needs_second_store", False) else None
    path = _fit(family, cls, store, store_b, tmp / f"model-{family}", options)
    done["fit"] = True

    model, again = load_model(path), load_model(path)
    _require(type(model) is cls, family, f"the folder loads as {type(model).__name__}, not {cls.__name__}")
    record = json.loads((path / "config.json").read_text())
    _require(record["class"] == cls.__name__, family, "config.json names another class")
    _require((path / "README.md").read_text().startswith("# "), family, "the model card README.md is missing")
    if cls.trainer != "latent-prior":
        _require(record["store"]["fingerprint"] == store.fingerprint, family, "config.json lacks the store fingerprint")
        _require(record["family"] == family, family, f"config.json records family {record['family']!r}")
    done["folder"] = True

    rows = np.arange(8)
    shape = tuple(model.input_shape)
    if cls.trainer == "latent-prior":
        vae = load_model(path.parent)
        batch = {"x": vae.encode(torch.from_numpy(store.read("x", rows)))}
        columns = {c: torch.from_numpy(store.column(c)[rows].astype(np.float32)) for c in model.data_columns}
        batch.update(columns)
    else:
        from deepfield.data.batches import iterate_batches

        batch = next(iterate_batches(store, rows, model, rows.size))
        if store_b is not None:
            batch["x_b"] = torch.from_numpy(store_b.read("x", rows))
    cond = _condition(model, store, rows)
    wrong = torch.zeros(2, shape[0] + 1, *shape[1:]) if len(shape) == 3 else torch.zeros(2, shape[0] + 1)

    with torch.no_grad():
        if "encode" in caps:
            z = model.encode(batch["x"], condition=cond)
            _require(tuple(z.shape) == (8, model.latent_dim) and bool(torch.isfinite(z).all()), family,
                     f"encode gave codes of shape {tuple(z.shape)} (want (8, {model.latent_dim}), finite)")
            x = model.decode(z, condition=cond)
            _require(tuple(x.shape) == (8, *shape) and bool(torch.isfinite(x).all()), family,
                     f"decode gave {tuple(x.shape)}, want (8, {shape}) finite")
            _require(torch.equal(again.encode(batch["x"], condition=cond), z)
                     and torch.equal(again.decode(z, condition=cond), x), family,
                     "a reloaded model encodes or decodes differently")
            _refused(family, "encode of images with another band count", lambda: model.encode(wrong, condition=None))
            _refused(family, "decode of codes of the wrong length",
                     lambda: model.decode(torch.zeros(2, model.latent_dim + 1), condition=cond and {
                         k: v[:2] for k, v in cond.items()}))
            if cond is not None:
                _refused(family, "decode without its condition columns",
                         lambda: model.decode(z, condition=None))
            else:
                _refused(family, "a condition given to an unconditional model",
                         lambda: model.decode(z, condition={"magnitude": np.zeros(8)}))
            done["encode"] = True
        if "reconstruct" in caps:
            r = model.reconstruct_batch(batch)
            _require(tuple(r.shape) == (8, *shape) and bool(torch.isfinite(r).all()), family,
                     f"reconstruct_batch gave {tuple(r.shape)}, want (8, {shape}) finite")
            done["reconstruct"] = True
        if "sample" in caps:
            n = 3
            sample_cond = None if cond is None else {k: v[:n] for k, v in cond.items()}
            a = model.sample(n, condition=sample_cond, generator=torch.Generator().manual_seed(7))
            b = again.sample(n, condition=sample_cond, generator=torch.Generator().manual_seed(7))
            _require(tuple(a.shape) == (n, *shape) and bool(torch.isfinite(a).all()), family,
                     f"sample gave {tuple(a.shape)}, want ({n}, {shape}) finite")
            _require(torch.equal(a, b), family, "the same generator seed gave other samples")
            if cond is not None:
                _refused(family, "sample without its condition", lambda: model.sample(n, condition=None))
            done["sample"] = True
        for role in ("log_prob", "elbo"):
            if role in caps:
                torch.manual_seed(0)
                value = getattr(model, role)(batch)
                extra = {k: v[:2] for k, v in batch.items() if k != "x" and torch.is_tensor(v) and v.ndim == 1}
                if cls.trainer != "latent-prior":
                    _refused(family, f"{role} of images with another band count",
                             lambda: getattr(model, role)({"x": wrong, **extra}))
                _require(tuple(value.shape) == (8,) and value.dtype.is_floating_point
                         and bool(torch.isfinite(value).all()), family,
                         f"{role} gave {tuple(value.shape)} {value.dtype}, want (8,) finite, nats per object")
                done[role] = True
        if "log_prob" in caps and cls.trainer == "latent-prior":
            _refused(family, "log_prob of codes of the wrong length",
                     lambda: model.log_prob(torch.zeros(2, shape[0] + 1), condition=cond and {
                         k: v[:2] for k, v in cond.items()}))
        if "translate" in caps:
            t = model.translate(batch["x"], "a2b")
            _require(tuple(t.shape) == tuple(batch["x"].shape) and bool(torch.isfinite(t).all()), family,
                     f"translate gave {tuple(t.shape)}")
            _require(torch.equal(again.translate(batch["x"], "a2b"), t), family, "a reloaded model translates "
                                                                                   "differently")
            _refused(family, "translate of images with another band count", lambda: model.translate(wrong, "a2b"))
            done["translate"] = True
        if "deconvolve" in caps:
            sky = model.deconvolve_batch(batch)
            _require(tuple(sky.shape) == (8, *shape) and bool(torch.isfinite(sky).all()), family,
                     f"deconvolve_batch gave {tuple(sky.shape)}, want (8, {shape}) finite")
            _require(torch.equal(again.deconvolve_batch(batch), sky), family,
                     "a reloaded model deconvolves differently")
            done["deconvolve"] = True
    if "loss" in caps:
        model.train()
        out = model.loss(batch)
        model.eval()
        _require(out.loss.ndim == 0 and bool(torch.isfinite(out.loss)), family,
                 f"loss gave {out.loss!r}, want a finite scalar")
        _require(all(bool(torch.isfinite(v).all()) for v in out.parts.values()), family, "a loss part is not finite")
        done["loss"] = True
    if "adversarial" in caps:
        for player in ("discriminator_loss", "generator_loss"):
            out = getattr(model, player)(batch)
            _require(out.loss.ndim == 0 and bool(torch.isfinite(out.loss)), family, f"{player} is not a finite scalar")
        done["adversarial"] = True
    return done
