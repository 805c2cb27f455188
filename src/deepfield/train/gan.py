"""Train adversarial models (DCGAN, WGAN-GP, conditional GAN, CycleGAN) and write a model folder.

The loop is the classic two-player one, in Lightning with manual optimisation: for each batch,
generate, update the discriminator on the real and the generated images, and every
``n_critic`` batches update the generator through the frozen discriminator. Noise-to-image
GANs then train their encoder for ``encoder_epochs`` more epochs with G and D frozen (izi_f),
so the model folder gives codes and anomaly scores.

The engineering is that of :mod:`deepfield.train.fit`: the seeded id-hash split, the
normalisation fitted on the training split, the hidden work folder ``.NAME.training/`` with
checkpoints (one at the start and one after every epoch) and TensorBoard logs, resume after
Ctrl-C, and the atomic model folder at the end. The progress bar shows the D and G losses; a
grid of samples (translations for CycleGAN) is written every epoch to
``logs/samples/epoch_NNN.png`` and kept in the model folder. A run whose losses become NaN/inf
on finite data stops with :class:`~deepfield.train.fit.TrainingDiverged` naming the
checkpoint from before the divergence.

``TrainSettings.lr``, ``patience`` and ``gradient_clip`` do not apply: the learning rates are
the model's ``lr_g`` / ``lr_d`` (GANs are not early-stopped on a validation loss).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import torch

from deepfield._atomic import WriteLock
from deepfield.data.batches import UnpairedDataset, batch_loader, iterate_batches, model_arrays, normalisation_sample
from deepfield.data.splits import split_record, training_splits
from deepfield.data.store import Store, open_store
from deepfield.errors import ConfigError, InputError, ModelFolderError, TrainingDiverged
from deepfield.models import save_model
from deepfield.models.base import FAMILIES, family_class
from deepfield.models.cyclegan import CycleGAN
from deepfield.models.gan import GAN
from deepfield.physics.resample import resample_images
from deepfield.train.fit import (TRAINERS, TrainSettings, build_model, fit_interruptibly, launched_rank, prepare_work_dir,
                                 quiet_lightning, training_dir)

__all__ = ["train_gan", "GANModule", "check_cycle_stores"]


def check_cycle_stores(store_a: Store, store_b: Store, resample: bool = False) -> tuple[float, float] | None:
    """Check that two stores can be the domains of one CycleGAN.

    Returns None when B is already on A's grid, or (B's pixel scale, A's pixel scale) in
    arcsec when B must be resampled (only with `resample`). Different band counts, kinds or
    (without `resample`) pixel scales or stamp sizes are refused with the fix.
    """
    for s in (store_a, store_b):
        if s.kind != "image":
            raise InputError(f"CycleGAN translates images; store {s.path} holds {s.kind} data")
    ca, cb = store_a.sample_shape[0], store_b.sample_shape[0]
    if ca != cb:
        raise InputError(f"store {store_a.path} has {ca} band(s) {tuple(store_a.bands)} but {store_b.path} has {cb} "
                         f"{tuple(store_b.bands)}: CycleGAN maps images band for band, so select the same number of "
                         "bands in both stores")
    pa, pb = store_a.pixel_scale, store_b.pixel_scale
    same_scale = pa is None and pb is None or (pa is not None and pb is not None and np.isclose(pa, pb))
    if same_scale and store_a.sample_shape == store_b.sample_shape:
        return None
    if not resample:
        raise InputError(f"store {store_a.path} has {store_a.sample_shape[1]}x{store_a.sample_shape[2]} stamps of "
                         f"{pa} arcsec pixels but {store_b.path} has {store_b.sample_shape[1]}x"
                         f"{store_b.sample_shape[2]} of {pb} arcsec: pass --resample (resample=True) to put B on A's "
                         "pixel grid, or resample the stores yourself")
    if pa is None or pb is None:
        raise InputError(f"cannot resample: a pixel scale is unknown ({store_a.path}: {pa}, {store_b.path}: {pb}); "
                         "give both stores a pixel scale in arcsec")
    return float(pb), float(pa)


@contextlib.contextmanager
def _frozen(params):
    """Parameters that take no gradient inside the block (the frozen player)."""
    params = list(params)
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


class GANModule(L.LightningModule):
    """Plays the game of a :class:`~deepfield.models.gan.GAN` or :class:`~deepfield.models.cyclegan.CycleGAN`
    with manual optimisation; then (GANs) trains the encoder."""

    def __init__(self, model, gan_epochs: int, checkpoint: Path, channels_last: bool = False,
                 resample_b: tuple[float, float] | None = None, seed: int = 0):
        super().__init__()
        self.automatic_optimization = False
        self.seed = int(seed)
        self.model = model
        self.gan_epochs = int(gan_epochs)
        self.checkpoint = Path(checkpoint)
        self.channels_last = channels_last
        self.resample_b = resample_b
        self.d_steps = 0
        self.saved_at: dict | None = None  # {"step", "label"} of the last checkpoint written
        self.saving_label = "an interrupted epoch"

    # -- optimisers (learning rates from the model config, also after a resume with new ones)
    def configure_optimizers(self):
        cfg = self.model.config
        opts = [torch.optim.Adam(self.model.discriminator_parameters(), lr=cfg.lr_d, betas=tuple(cfg.betas)),
                torch.optim.Adam(self.model.generator_parameters(), lr=cfg.lr_g, betas=tuple(cfg.betas))]
        if isinstance(self.model, GAN):
            opts.append(torch.optim.Adam(self.model.encoder_parameters(), lr=cfg.lr_g, betas=tuple(cfg.betas)))
        return opts

    def on_train_start(self):
        cfg = self.model.config
        lrs = [cfg.lr_d, cfg.lr_g, cfg.lr_g]
        for opt, lr in zip(self.optimizers(), lrs):
            for group in opt.param_groups:
                group["lr"] = lr

    # -- checkpoint state: the critic-step counter, and what the last checkpoint holds
    def on_save_checkpoint(self, checkpoint):
        self.saved_at = {"step": int(checkpoint.get("global_step", 0)), "label": self.saving_label}
        checkpoint["deepfield_gan"] = {"d_steps": self.d_steps, "saved_at": self.saved_at}

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint.get("deepfield_gan", {})
        self.d_steps = int(state.get("d_steps", 0))
        self.saved_at = state.get("saved_at")

    def _prepare(self, batch: dict) -> dict:
        if self.resample_b is not None:
            size = self.model.input_shape[-1]
            batch = dict(batch, x_b=resample_images(batch["x_b"], *self.resample_b, size).to(batch["x"].device))
        if self.channels_last and batch["x"].ndim == 4:
            batch = dict(batch, **{k: batch[k].contiguous(memory_format=torch.channels_last)
                                   for k in ("x", "x_b") if k in batch})
        return batch

    def _check(self, loss: torch.Tensor, batch: dict, player: str) -> None:
        if bool(torch.isfinite(loss)):
            return
        for key in ("x", "x_b"):
            if key in batch:
                bad = ~torch.isfinite(batch[key].reshape(batch[key].shape[0], -1)).all(dim=1)
                if bool(bad.any()):
                    ids = batch["id"][bad].tolist()[:10] if key == "x" and "id" in batch else bad.nonzero().flatten().tolist()
                    raise InputError(f"NaN/inf pixels in training objects {ids} of store "
                                     f"{'A' if key == 'x' else 'B'}: clean or mask them in the store")
        where = "no checkpoint was written"
        if self.checkpoint.is_file():
            saved = self.saved_at or {}
            where = (f"the checkpoint from before the divergence ({saved.get('label', 'last saved')}, global step "
                     f"{saved.get('step', '?')}) is kept at {self.checkpoint}")
        raise TrainingDiverged(
            f"the {player} loss became {float(loss.detach())} in epoch {self.current_epoch} on finite data: the run diverged; "
            f"{where}. Resume from it with --resume and a lower learning rate (lr_g/lr_d, --lr), more critic steps "
            "(--n-critic), or train wgan-gp")

    def training_step(self, batch, batch_idx):
        batch = self._prepare(batch)
        opts = self.optimizers()
        if self.current_epoch >= self.gan_epochs:
            with _frozen(self.model.generator_parameters() + self.model.discriminator_parameters()):
                self.model.generator.eval()
                self.model.critic.eval()
                self._update(opts[2], self.model.encoder_loss(batch), batch, "encoder", "e_loss", "train_encoder_")
            return
        self._update(opts[0], self.model.discriminator_loss(batch), batch, "discriminator", "d_loss", "train_d_")
        self.d_steps += 1
        if self.d_steps % getattr(self.model.config, "n_critic", 1):
            return
        with _frozen(self.model.discriminator_parameters()):  # G learns through a fixed D
            self._update(opts[1], self.model.generator_loss(batch), batch, "generator", "g_loss", "train_g_")

    def _update(self, optimizer, parts: dict, batch: dict, player: str, bar_name: str, prefix: str) -> None:
        """One optimiser step of `player` on its loss parts; its loss on the progress bar as
        `bar_name`, every part logged per epoch under `prefix`."""
        self._check(parts.loss, batch, player)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(parts.loss)
        optimizer.step()
        n = batch["x"].shape[0]
        self.log(bar_name, parts.loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        for k, v in parts.logged().items():
            self.log(f"{prefix}{k}", v.detach(), on_step=False, on_epoch=True, batch_size=n, sync_dist=True)

    def on_train_batch_start(self, batch, batch_idx):
        # the noise of this batch's steps (z, dropout) from (seed, rank, epoch, batch) alone: a run resumed from
        # an end-of-epoch checkpoint draws what the uninterrupted one drew (the loader's order is a SeededShuffle's)
        state = np.random.SeedSequence([self.seed, int(self.global_rank), int(self.current_epoch),
                                        int(batch_idx)]).generate_state(2)
        torch.manual_seed(int(state[0]) << 32 | int(state[1]))

    def on_train_epoch_start(self):
        # the encoder phase keeps G and D in eval mode (batch-norm statistics, no dropout)
        if self.current_epoch >= self.gan_epochs:
            self.model.generator.eval()
            self.model.critic.eval()


class _EpochCheckpoint(L.Callback):
    """last.ckpt at the start of training and after every epoch (written atomically)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def _save(self, trainer, pl_module, label: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        pl_module.saving_label = label
        try:
            trainer.save_checkpoint(str(tmp))
        finally:
            pl_module.saving_label = "an interrupted epoch"
        os.replace(tmp, self.path)

    def on_train_start(self, trainer, pl_module):
        if not self.path.is_file():
            self._save(trainer, pl_module, "the start of training")

    def on_train_epoch_end(self, trainer, pl_module):
        self._save(trainer, pl_module, f"after {trainer.current_epoch + 1} completed epoch(s)")


class _History(L.Callback):
    """Per-epoch means of the logged losses, for metrics.json."""

    def __init__(self):
        self.rows: list[dict] = []

    def on_train_epoch_end(self, trainer, pl_module):
        encoder_phase = trainer.current_epoch >= pl_module.gan_epochs  # keep only this phase's losses
        row = {"epoch": int(trainer.current_epoch)}
        row.update({k: float(v) for k, v in trainer.callback_metrics.items()
                    if k.startswith("train_") and k.startswith("train_encoder_") == encoder_phase})
        self.rows.append(row)

    def state_dict(self):
        return {"rows": self.rows}

    def load_state_dict(self, state):
        self.rows = list(state.get("rows", []))


class _SampleGrid(L.Callback):
    """A PNG grid every epoch: samples from fixed noise (GANs), or A | G(A) | B | F(B) rows (CycleGAN)."""

    def __init__(self, folder: Path, examples: dict | None, seed: int, n: int = 16):
        self.folder = Path(folder)
        self.examples = examples
        self.seed = seed
        self.n = n

    @torch.no_grad()
    def on_train_epoch_end(self, trainer, pl_module):
        model = pl_module.model
        if len(model.input_shape) != 3 or not trainer.is_global_zero:
            return
        was_training = model.training
        model.eval()
        try:
            if isinstance(model, CycleGAN):
                a = self.examples["x"].to(model.data_scale.device)
                b = self.examples["x_b"].to(model.data_scale.device)
                rows = [model.to_working(a, "a"), model.to_working(model.translate(a, "a2b"), "b"),
                        model.to_working(b, "b"), model.to_working(model.translate(b, "b2a"), "a")]
            else:
                z = torch.randn(self.n, model.latent_dim, generator=torch.Generator().manual_seed(self.seed))
                z = z.to(model.data_scale.device)
                cond = None
                if model.config.condition:
                    cond = {k: v[: self.n] for k, v in self.examples.items() if k in model.config.condition}
                    z = z[: len(next(iter(cond.values())))]
                c = model.condition_tensor(cond, n=z.shape[0])
                u = model.generate(z, c)
                per_row = int(np.ceil(np.sqrt(u.shape[0])))
                rows = [u[i:i + per_row] for i in range(0, u.shape[0], per_row)]
        finally:
            model.train(was_training)
        path = _write_grid(rows, self.folder / f"epoch_{trainer.current_epoch:03d}.png")
        logger = trainer.logger
        if logger is not None and hasattr(logger, "experiment") and hasattr(logger.experiment, "add_image"):
            import matplotlib.image

            logger.experiment.add_image("samples", matplotlib.image.imread(path)[..., :3],
                                        trainer.current_epoch, dataformats="HWC")


def _write_grid(rows: list[torch.Tensor], path: Path) -> Path:
    """Rows of working-unit images (band mean) as one grey PNG, shown on a shared [-0.05, p99.5] range."""
    import matplotlib.pyplot as plt

    width = max(r.shape[0] for r in rows)
    tiles = []
    for r in rows:
        img = r.float().mean(1).cpu().numpy()
        pad = np.zeros((width - img.shape[0], *img.shape[1:]), dtype=img.dtype)
        img = np.concatenate([img, pad])
        tiles.append(np.concatenate([np.pad(t, 1, constant_values=np.nan) for t in img], axis=1))
    grid = np.concatenate(tiles, axis=0)
    zoom = max(1, 64 // rows[0].shape[-1])  # small stamps: show each pixel as zoom x zoom
    grid = np.repeat(np.repeat(grid, zoom, axis=0), zoom, axis=1)
    finite = grid[np.isfinite(grid)]
    vmax = float(np.percentile(finite, 99.5)) if finite.size else 1.0
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, np.nan_to_num(grid, nan=vmax), cmap="gray", vmin=-0.05, vmax=max(vmax, 1e-3))
    return path


@torch.no_grad()
def _gan_metrics(model: GAN, store: Store, rows: np.ndarray, seed: int) -> dict:
    """Held-out numbers: the encoder's izi errors (working units) and the mean total flux of
    held-out images vs as many samples (store units, summed over pixels and bands)."""
    model.eval()
    if rows.size == 0:
        return {}
    res, feat, flux_real, flux_fake, count = 0.0, 0.0, 0.0, 0.0, 0
    generator = torch.Generator().manual_seed(seed)
    for batch in iterate_batches(store, rows, model, 256):
        u = model.to_working(batch["x"])
        c = model.condition_tensor(batch)
        recon = model.generate(model.encode_working(u), c)
        m = u.shape[0]
        res += float(((recon - u) ** 2).flatten(1).mean(1).sum())
        feat += float(((model.critic_features(recon) - model.critic_features(u)) ** 2).mean(1).sum())
        flux_real += float(batch["x"].flatten(1).sum(1).sum())
        samples = model.decode(model.noise(m, generator), condition=batch if model.config.condition else None)
        flux_fake += float(samples.flatten(1).sum(1).sum())
        count += m
    return {"encoder_val_residual_mse": res / count, "encoder_val_feature_mse": feat / count,
            "val_mean_flux": flux_real / count, "sample_mean_flux": flux_fake / count}


@torch.no_grad()
def _cycle_metrics(model: CycleGAN, a: Store, b: Store, rows_a: np.ndarray, rows_b: np.ndarray,
                   resample_b) -> dict:
    """Held-out cycle-consistency L1 errors in working units: |F(G(a)) - a| and |G(F(b)) - b|."""
    model.eval()
    out = {}
    for name, store, rows, src, dst in (("a", a, rows_a, "a2b", "b2a"), ("b", b, rows_b, "b2a", "a2b")):
        total, count = 0.0, 0
        for start in range(0, rows.size, 256):
            x = torch.from_numpy(store.read("x", rows[start:start + 256]))
            if name == "b" and resample_b is not None:
                x = resample_images(x, *resample_b, model.input_shape[-1])
            back = model.translate(model.translate(x, src), dst)
            total += float((model.to_working(back, name) - model.to_working(x, name)).abs().mean((1, 2, 3)).sum())
            count += x.shape[0]
        out[f"cycle_val_l1_{name}"] = total / max(count, 1)
    return out


def train_gan(family: str, store, out, *, store_b=None, model_options: dict | None = None,
              settings: TrainSettings | None = None, resample: bool = False, resume: bool = False,
              overwrite: bool = False, callbacks: list | None = None) -> Path | None:
    """Train a 'dcgan', 'wgan-gp', 'cgan' or 'cyclegan' on `store` (and `store_b`, CycleGAN's
    domain B); write the model folder `out` and return its path (None on non-zero DDP ranks).

    Arguments:
        model_options: config values (see deepfield.models.gan), e.g. {"latent_dim": 32,
            "n_critic": 5}; 'cgan' defaults its condition to the catalog's half_light_radius,
            magnitude and redshift.
        settings: epochs (of the game; the encoder adds ``encoder_epochs``), batch size, seed,
            split, devices, precision, threads, progress.
        resample: CycleGAN: put store B on store A's pixel grid when their pixel scales or
            stamp sizes differ (otherwise refused).
        resume: continue the interrupted (or diverged) run from its last checkpoint.

    Raises :class:`~deepfield.train.fit.TrainingInterrupted` after Ctrl-C and
    :class:`~deepfield.train.fit.TrainingDiverged` when the losses become NaN/inf.
    """
    cls = family_class(family)
    if cls.trainer != "adversarial":
        adversarial = sorted(name for name, c in FAMILIES.items() if c.trainer == "adversarial")
        raise ConfigError(f"train_gan trains the adversarial families ({', '.join(adversarial)}); {family!r} is "
                          f"fitted by the {cls.trainer!r} trainer: use deepfield.train.train")
    two_stores = getattr(cls, "needs_second_store", False)
    settings = settings or TrainSettings()
    store = store if isinstance(store, Store) else open_store(store)
    out = Path(out)
    if out.exists() and not overwrite and not resume and not launched_rank():
        raise ModelFolderError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    options = dict(model_options or {})
    resample_b = None
    if two_stores:
        if store_b is None:
            raise ConfigError(f"{family} translates between two stores: pass --store A --store-b B")
        store_b = store_b if isinstance(store_b, Store) else open_store(store_b)
        resample_b = check_cycle_stores(store, store_b, resample)
    elif store_b is not None:
        raise ConfigError(f"--store-b is CycleGAN's second domain; {family} trains on one store")
    elif resample:
        raise ConfigError("--resample applies to translation between two stores (cyclegan) only")
    lock = None if launched_rank() else WriteLock(out, ModelFolderError, "model folder")  # one run per folder
    try:
        return _train_gan_locked(family, store, out, options, settings, resume, overwrite, callbacks,
                                 store_b=store_b, resample_b=resample_b, two_stores=two_stores)
    finally:
        if lock is not None:
            lock.release()


def _train_gan_locked(family, store, out, options, settings, resume, overwrite, callbacks, *, store_b, resample_b,
                      two_stores):
    torch.manual_seed(settings.seed)  # before the networks are built: the seed fixes their initialisation
    model = build_model(family, store, options)
    splits = training_splits(store, settings.split_fractions, settings.split_seed, settings.where)
    model.fit_normalisation(normalisation_sample(store, splits["train"]))
    if model.data_columns:
        model.fit_conditions(np.stack([store.column(c)[splits["train"]] for c in model.data_columns], axis=1))
    record = split_record(store, splits, settings.split_fractions, settings.split_seed, settings.where)
    splits_b = None
    if two_stores:
        splits_b = training_splits(store_b, settings.split_fractions, settings.split_seed, settings.where)
        sample_b = normalisation_sample(store_b, splits_b["train"])
        if resample_b is not None:
            sample_b = resample_images(torch.from_numpy(sample_b), *resample_b, model.input_shape[-1]).numpy()
        model.fit_domains(normalisation_sample(store, splits["train"]), sample_b)
        record["b"] = {**split_record(store_b, splits_b, settings.split_fractions, settings.split_seed, settings.where),
                       "resampled_to_a": resample_b is not None}
    return _fit(model, store, splits, out, record, settings, resume, overwrite, callbacks or [],
                store_b=store_b, splits_b=splits_b, resample_b=resample_b)


def _fit(model, store, splits, out, record, settings, resume, overwrite, extra_callbacks, *, store_b, splits_b,
         resample_b):
    from lightning.pytorch.loggers import TensorBoardLogger

    from deepfield.train.module import InterruptCheckpoint, ThroughputCallback

    work = training_dir(out)
    last = work / "checkpoints" / "last.ckpt"
    if not launched_rank():
        previous_b = None
        if resume and (work / "run.json").is_file():
            previous_b = json.loads((work / "run.json").read_text()).get("store_b_fingerprint")
        prepare_work_dir(work, last, store, model, resume, overwrite)
        if store_b is not None:
            if resume and previous_b not in (None, store_b.fingerprint):
                raise ModelFolderError(f"the interrupted run at {work} trained on a domain-B store with fingerprint "
                                       f"{previous_b}, but {store_b.path} has {store_b.fingerprint}: resume with the "
                                       "same store, or start afresh with --overwrite")
            meta = json.loads((work / "run.json").read_text())
            meta["store_b_fingerprint"] = store_b.fingerprint
            (work / "run.json").write_text(json.dumps(meta))
    quiet_lightning()
    procs = settings.devices if isinstance(settings.devices, int) and settings.accelerator == "cpu" else 1
    torch.set_num_threads(settings.threads or max(1, (os.cpu_count() or 1) // max(procs, 1)))
    L.seed_everything(settings.seed, workers=True, verbose=False)
    channels_last = settings.channels_last and len(model.input_shape) == 3
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    is_gan = isinstance(model, GAN)
    gan_epochs = settings.epochs
    total_epochs = gan_epochs + (model.config.encoder_epochs if is_gan else 0)
    module = GANModule(model, gan_epochs, last, channels_last=channels_last, resample_b=resample_b,
                       seed=settings.seed)

    train_a = store.dataset(splits["train"], arrays=model_arrays(model, store), columns=model.data_columns)
    val_rows = splits["val"] if splits["val"].size else splits["train"][: max(1, settings.batch_size)]
    if store_b is not None:
        dataset = UnpairedDataset(train_a, store_b.dataset(splits_b["train"]), settings.seed)
        val_b = splits_b["val"] if splits_b["val"].size else splits_b["train"]
        ex_b = torch.from_numpy(store_b.read("x", val_b[:8]))
        if resample_b is not None:
            ex_b = resample_images(ex_b, *resample_b, model.input_shape[-1])
        examples = {"x": torch.from_numpy(store.read("x", val_rows[:8])), "x_b": ex_b}
    else:
        dataset = train_a
        examples = {c: torch.from_numpy(store.column(c)[val_rows[:16]].astype(np.float32)) for c in model.data_columns}
    # drop the last short batch: batch norm cannot normalise a batch of one
    train_loader = batch_loader(dataset, batch_size=settings.batch_size, shuffle=True, seed=settings.seed,
                                num_workers=settings.num_workers, drop_last=len(dataset) > settings.batch_size)

    history = _History()
    throughput = ThroughputCallback()
    # the history records an epoch before its checkpoint is written, so a resumed run keeps it
    callbacks = [history, _SampleGrid(work / "logs" / "samples", examples, settings.seed), _EpochCheckpoint(last),
                 InterruptCheckpoint(last), throughput, *extra_callbacks]
    if settings.progress:
        from deepfield.train.module import EpochBar

        callbacks.append(EpochBar(leave=True))
    strategy = settings.strategy
    if strategy == "ddp":  # each step trains one player: the others' parameters get no gradient
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(find_unused_parameters=True)
    logger = TensorBoardLogger(str(work), name="logs", version=0, default_hp_metric=False)
    trainer = L.Trainer(
        max_epochs=total_epochs, accelerator=settings.accelerator, devices=settings.devices, strategy=strategy,
        precision=settings.precision, callbacks=callbacks, logger=logger, enable_progress_bar=settings.progress,
        enable_model_summary=False, log_every_n_steps=max(1, min(10, len(train_loader))), deterministic=False,
        num_sanity_val_steps=0, limit_val_batches=0, enable_checkpointing=False)
    interrupt = next(c for c in callbacks if isinstance(c, InterruptCheckpoint))
    seconds = fit_interruptibly(trainer, module, (train_loader,), last, interrupt, resume)
    if not trainer.is_global_zero:
        return None
    model = module.model.to(memory_format=torch.contiguous_format).cpu().eval()
    for p in model.parameters():
        p.data = p.data.contiguous()
    metrics = {"epochs_run": int(trainer.current_epoch), "train_seconds": seconds,
               "train_images_per_s": throughput.images_per_second,
               "iterations_per_s": (throughput.images_per_second / settings.batch_size
                                    if throughput.images_per_second else None),
               "history": history.rows}
    if is_gan:
        metrics.update(_gan_metrics(model, store, val_rows, settings.seed))
    else:
        val_b = splits_b["val"] if splits_b["val"].size else splits_b["train"][: settings.batch_size]
        metrics.update(_cycle_metrics(model, store, store_b, val_rows, val_b, resample_b))
    training = {"epochs": gan_epochs, "encoder_epochs": model.config.encoder_epochs if is_gan else 0,
                "epochs_run": int(trainer.current_epoch), "batch_size": settings.batch_size, "seed": settings.seed,
                "precision": settings.precision,
                "accelerator": str(trainer.accelerator.__class__.__name__).replace("Accelerator", "").lower(),
                "devices": trainer.num_devices, "strategy": type(trainer.strategy).__name__, "resumed": resume}
    path = save_model(model, out, metrics=metrics, store=record, training=training, logs_dir=work / "logs",
                      overwrite=overwrite or resume)
    shutil.rmtree(work, ignore_errors=True)
    return path


TRAINERS["adversarial"] = train_gan
