"""Train a model family on a store and write a model folder.

The model defines the maths (``loss``); this module owns the engineering: the seeded split,
normalisation, Lightning (devices, precision, DDP), early stopping, TensorBoard logs,
checkpoints, resume after interruption (Ctrl-C saves a checkpoint) and the atomic model
folder at the end.

Work in progress lives beside the output in a hidden folder ``.NAME.training/``
(checkpoints, logs); the model folder NAME appears only when training has finished.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from deepfield._atomic import WriteLock
from deepfield.data.batches import make_loader, normalisation_sample
from deepfield.data.splits import split_record, training_splits
from deepfield.data.store import Store, open_store
from deepfield.errors import ConfigError, ModelFolderError, TrainingDiverged
from deepfield.models import Model, save_model
from deepfield.models.base import config_from_dict, family_class
from deepfield.models.vae import COLLAPSE_KL_NATS

__all__ = ["TrainSettings", "TrainingInterrupted", "TrainingDiverged", "train", "build_model",
           "load_yaml_config", "evaluate_mse", "training_dir", "launched_rank", "prepare_work_dir", "quiet_lightning",
           "fit_interruptibly"]


class TrainingInterrupted(Exception):
    """Training was stopped (Ctrl-C); a checkpoint to resume from was saved."""

    def __init__(self, checkpoint: Path | None, epoch: int):
        self.checkpoint = checkpoint
        self.epoch = epoch
        if checkpoint is None:
            super().__init__(f"training interrupted in epoch {epoch}, before the first epoch's checkpoint: "
                             "nothing was kept; run the same command again to start afresh")
        else:
            super().__init__(f"training interrupted in epoch {epoch}; checkpoint saved at {checkpoint}. "
                             "Run the same command with --resume to continue")


@dataclass(frozen=True)
class TrainSettings:
    """How to train (not what: that is the model config).

    Arguments:
        epochs: maximum passes over the training split.
        batch_size: objects per optimisation step (per device under DDP).
        lr: Adam learning rate.
        weight_decay: AdamW weight decay.
        seed: seed of initialisation, noise injection and shuffling.
        split_fractions: train / validation / held-out test fractions.
        split_seed: seed of the id-hash split (the same objects are held out by every model).
        where: train and validate on the objects matching this catalog query only, e.g.
            ``"snr > 20"`` (well-measured galaxies); the test split stays whole, so held-out
            evaluation still covers every kind of object.
        patience: early stopping after this many epochs without validation improvement (0: off).
        smoothing: weight of the past in the exponential moving average of the validation loss
            that early stopping reads (0: the raw per-epoch loss; 0.7 averages over about 3
            epochs, so one noisy epoch neither stops a run nor restarts its patience).
        accelerator: 'auto', 'cpu' or 'gpu'.
        devices: 'auto' or a number of devices (processes on CPU).
        strategy: 'auto', 'ddp' or 'ddp_spawn'.
        precision: Lightning precision, e.g. '32-true' or 'bf16-mixed'.
        gradient_clip: clip the gradient norm to this (None: the model family's default).
        channels_last: NHWC memory layout for convolutional models (faster on CPU).
        threads: torch CPU threads (default: all cores).
        num_workers: DataLoader worker processes (0: load in the main process).
        progress: show a progress bar.
        init: fine-tune: start from the weights of this model folder (of the same family) instead of
            a fresh initialisation, keeping its config and normalisation, e.g. a VAE trained on
            simulated galaxies fine-tuned on real morphologies.
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    split_fractions: tuple[float, ...] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    where: str | None = None
    patience: int = 5
    smoothing: float = 0.7
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    precision: str = "32-true"
    gradient_clip: float | None = None
    channels_last: bool = True
    threads: int | None = None
    num_workers: int = 0
    progress: bool = True
    init: str | None = None

    def __post_init__(self):
        bad = [f"epochs={self.epochs} (give >= 1)" if self.epochs < 1 else "",
               f"batch_size={self.batch_size} (give >= 1)" if self.batch_size < 1 else "",
               f"lr={self.lr} (give > 0)" if not self.lr > 0 else "",
               f"weight_decay={self.weight_decay} (give >= 0)" if not self.weight_decay >= 0 else "",
               f"patience={self.patience} (give >= 0; 0 turns early stopping off)" if self.patience < 0 else "",
               f"smoothing={self.smoothing} (give 0 <= smoothing < 1)" if not 0 <= self.smoothing < 1 else "",
               f"num_workers={self.num_workers} (give >= 0)" if self.num_workers < 0 else "",
               f"threads={self.threads} (give >= 1)" if self.threads is not None and self.threads < 1 else "",
               f"gradient_clip={self.gradient_clip} (give > 0, or null for the family's)"
               if self.gradient_clip is not None and not self.gradient_clip > 0 else "",
               f"split_fractions={self.split_fractions} (each >= 0, train > 0, summing to at most 1)"
               if any(f < 0 for f in self.split_fractions) or not self.split_fractions or self.split_fractions[0] <= 0
               or sum(self.split_fractions) > 1 + 1e-9 else ""]
        bad = [b for b in bad if b]
        if bad:
            raise ConfigError(f"training settings: {'; '.join(bad)}")


def training_dir(out: Path) -> Path:
    """The hidden work folder (checkpoints, logs) of a training run writing to `out`."""
    return out.with_name(f".{out.name}.training")


def load_yaml_config(path) -> tuple[dict, dict]:
    """Read a YAML training config: sections `model:` and `training:` (or one flat mapping).

    Returns (model_options, training_options); keys are checked later against the model
    config and :class:`TrainSettings`, and unknown keys are reported with the valid ones.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{p} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping with 'model' and/or 'training' sections")
    if set(data) <= {"model", "training"}:
        return dict(data.get("model") or {}), dict(data.get("training") or {})
    settings_keys = {f.name for f in dataclasses.fields(TrainSettings)}
    model = {k: v for k, v in data.items() if k not in settings_keys}
    training = {k: v for k, v in data.items() if k in settings_keys}
    return model, training


def build_model(family: str, store: Store, options: dict | None = None) -> Model:
    """A fresh model of `family` shaped for `store`, with the defaults its class takes from the store
    (:meth:`deepfield.models.base.Model.config_values`) under the user's `options`."""
    cls = family_class(family)
    values = cls.config_values(store, dict(options or {}), family)
    model = cls(config_from_dict(cls.config_class, values, f"{family} options"))
    for column in model.data_columns:
        store.column(column)  # raises with the list of columns when one does not exist
    return model


def initial_model(family: str, store: Store, init, options: dict | None = None) -> Model:
    """The trained model in folder `init`, to be fine-tuned on `store` as a `family`: its weights,
    config, normalisation and condition scalings are kept, so it must be of `family` and able to
    read `store` (bands, stamp size, pixel scale, the arrays its likelihood needs)."""
    from deepfield.data.batches import check_model_store
    from deepfield.models.folder import load_model

    path = Path(init)
    if not (path / "config.json").is_file():
        raise ModelFolderError(f"init {path} is not a model folder (no config.json): give the folder a training run "
                               "wrote")
    model = load_model(path)
    if not isinstance(model, family_class(family)):
        raise ConfigError(f"init {path} holds a {model.family} model; fine-tuning continues the same family: train "
                          f"{model.family}, or drop init")
    if options:
        raise ConfigError(f"fine-tuning keeps the config of {path}; model options ({', '.join(sorted(options))}) "
                          "would change it: drop them, or train afresh without init")
    check_model_store(model, store)  # bands, stamp size, pixel scale, the arrays it reads
    for column in model.data_columns:
        store.column(column)
    return model


def launched_rank() -> bool:
    """True in a DDP worker process that Lightning launched (ranks >= 1)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0) > 0 or int(os.environ.get("NODE_RANK", "0") or 0) > 0


@torch.no_grad()
def evaluate_mse(model: Model, store: Store, indices, batch_size: int = 256) -> float:
    """Mean squared reconstruction error in normalised units (data / pixel std) over rows.

    Reconstructions are compared in the data's own space: for models with a PSF-aware
    likelihood, the PSF-free reconstruction is convolved with each object's PSF first.
    """
    from deepfield.tasks.evaluate import reconstruction_errors

    idx = np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        return float("nan")
    return float(reconstruction_errors(model, store, idx, batch_size=batch_size)[0].mean())


#: trainers that build and fit their family themselves, by the name a family gives as ``trainer``;
#: deepfield.train.gan adds 'adversarial' (gradient and closed-form fits are this module's own)
TRAINERS: dict[str, Callable[..., Path | None]] = {}


def train(family: str, store, out, *, model_options: dict | None = None,
          settings: TrainSettings | None = None, resume: bool = False, overwrite: bool = False,
          callbacks: list | None = None) -> Path | None:
    """Train a model of `family` ('pca', 'ae', 'conv-ae', ... any registered family) on `store`;
    write folder `out`. The family's ``trainer`` decides how: gradient steps on ``loss``
    (Lightning), the two-player game (:func:`deepfield.train.gan.train_gan`) or a closed-form fit.

    Returns the model folder path (None on non-zero DDP ranks). Raises
    :class:`TrainingInterrupted` after Ctrl-C (a checkpoint is saved; call again with
    ``resume=True``).
    """
    settings = settings or TrainSettings()
    store = store if isinstance(store, Store) else open_store(store)
    out = Path(out)
    cls = family_class(family)
    # a DDP rank started by Lightning re-running this command leaves the folders to rank 0
    if out.exists() and not overwrite and not resume and not launched_rank():
        raise ModelFolderError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    if cls.trainer == "latent-prior":
        raise ConfigError(f"{family} is a latent prior fitted on a trained VAE's codes: call "
                          f"deepfield.train.prior.train_prior(VAE_DIR, kind=...) (the CLI: deepfield train prior "
                          f"--model VAE_DIR --kind {family})")
    if getattr(cls, "needs_second_store", False):
        raise ConfigError(f"{family} learns between two stores: call deepfield.train.gan.train_gan({family!r}, "
                          "store_a, out, store_b=store_b) (the CLI: deepfield train cyclegan --store A --set "
                          "store_b=B)")
    if settings.init is not None and cls.trainer != "gradient":
        raise ConfigError(f"init (fine-tuning from a trained model) applies to families trained by gradient steps on "
                          f"their loss, not to {family} ({cls.trainer} training): drop init")
    if cls.trainer in TRAINERS:  # a trainer of its own, e.g. the two-player loop of deepfield.train.gan
        return TRAINERS[cls.trainer](family, store, out, model_options=model_options, settings=settings,
                                     resume=resume, overwrite=overwrite, callbacks=callbacks)
    # one training run per model folder: a second run (even with --overwrite) is refused, not
    # allowed to delete this one's checkpoints; DDP ranks started by Lightning share rank 0's
    lock = None if launched_rank() else WriteLock(out, ModelFolderError, "model folder")
    try:
        return _train_locked(family, cls, store, out, model_options, settings, resume, overwrite, callbacks)
    finally:
        if lock is not None:
            lock.release()


def _train_locked(family, cls, store, out, model_options, settings, resume, overwrite, callbacks):
    torch.manual_seed(settings.seed)  # before building: the initial weights are part of the seed's promise
    splits = training_splits(store, settings.split_fractions, settings.split_seed, settings.where)
    if settings.init is not None:
        model = initial_model(family, store, settings.init, model_options)
    else:
        model = build_model(family, store, model_options)
        model.fit_normalisation(normalisation_sample(store, splits["train"]))
        if model.data_columns and hasattr(model, "fit_conditions"):
            model.fit_conditions(np.stack([store.column(c)[splits["train"]] for c in model.data_columns], axis=1))
    model.check_store(store, family)
    record = split_record(store, splits, settings.split_fractions, settings.split_seed, settings.where)
    if cls.trainer == "closed-form":
        return _fit_closed_form(model, store, splits, out, record, settings, overwrite)
    return _fit_lightning(model, store, splits, out, record, settings, resume, overwrite, callbacks or [])


def _fit_closed_form(model, store, splits, out, record, settings, overwrite) -> Path:
    """Fit a closed-form family: ``fit(x)`` on the training rows in memory, or ``fit_batches`` over
    chunks when they pass 4 GiB (or the config asks for the incremental method)."""
    t0 = time.perf_counter()
    train_idx = splits["train"]
    row_bytes = 4 * int(np.prod(store.sample_shape))
    method = getattr(model.config, "method", None)
    if method == "incremental" or row_bytes * train_idx.size > 4 * 1024**3:
        batch = max(4 * model.latent_dim, (256 * 1024**2) // row_bytes)
        model.fit_batches((store.read("x", train_idx[s:s + batch]) for s in range(0, train_idx.size, batch)),
                          normalisation_fitted=True)
    else:
        model.fit(store.read("x", train_idx), normalisation_fitted=True)
    seconds = time.perf_counter() - t0
    metrics = {
        "train_mse": evaluate_mse(model, store, train_idx),
        "val_mse": evaluate_mse(model, store, splits["val"]),
        "test_mse": evaluate_mse(model, store, splits["test"]),
        "fit_seconds": seconds,
    }
    if hasattr(model, "explained_variance_ratio"):
        metrics["explained_variance_ratio"] = [float(v) for v in model.explained_variance_ratio]
    training = {"method": method, "seed": settings.seed}
    return save_model(model, out, metrics=metrics, store=record, training=training, overwrite=overwrite)


def quiet_lightning() -> None:
    """Silence what Lightning prints that is noise for our users: its start-up banners (GPU/TPU
    availability, tips), a deprecation inside its own code, and notices about what the trainers
    here do on purpose (resuming into their own work folder; mid-epoch checkpoints, whose skipped
    batches SeededShuffle restores)."""
    import logging

    for message in (r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                    r"Checkpoint directory .* exists and is not empty",
                    r"You're resuming from a checkpoint that ended before the epoch ended"):
        warnings.filterwarnings("ignore", message=message)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning_utilities.core.rank_zero", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def prepare_work_dir(work: Path, last: Path, store: Store, model: Model, resume: bool, overwrite: bool) -> None:
    """Make the hidden work folder `work` of a run: checked against `store` when resuming from
    checkpoint `last`, else new (an unfinished one is replaced only with `overwrite`)."""
    if resume:
        if not last.is_file():
            raise ModelFolderError(f"nothing to resume: no checkpoint at {last}. Start without --resume")
        meta = json.loads((work / "run.json").read_text())
        if meta.get("store_fingerprint") != store.fingerprint:
            raise ModelFolderError(f"the interrupted run at {work} trained on store fingerprint "
                                   f"{meta.get('store_fingerprint')}, but {store.path} has {store.fingerprint}: "
                                   "resume with the same store, or start afresh with --overwrite")
    elif work.exists():
        if not overwrite:
            raise ModelFolderError(f"an unfinished training run for {work.name[1:-len('.training')]} exists at "
                                   f"{work}: pass --resume to continue it or --overwrite to start afresh")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "run.json").write_text(json.dumps({"store_fingerprint": store.fingerprint, "family": model.family}))


def _fit_lightning(model, store, splits, out, record, settings, resume, overwrite, extra_callbacks):
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from deepfield.train.module import HistoryCallback, InterruptCheckpoint, ModelModule, ThroughputCallback

    work = training_dir(out)
    ckpt_dir = work / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if not launched_rank():  # rank 0 (or the only process) checks and prepares the work folder
        prepare_work_dir(work, last, store, model, resume, overwrite)

    quiet_lightning()
    # DDP on CPU runs one process per device: give each its share of the cores
    procs = settings.devices if isinstance(settings.devices, int) and settings.accelerator == "cpu" else 1
    threads = settings.threads or max(1, (os.cpu_count() or 1) // max(procs, 1))
    torch.set_num_threads(threads)
    L.seed_everything(settings.seed, workers=True, verbose=False)
    channels_last = settings.channels_last and len(model.input_shape) == 3
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_loader = make_loader(store, splits["train"], batch_size=settings.batch_size, shuffle=True,
                               num_workers=settings.num_workers, model=model, seed=settings.seed)
    module = ModelModule(model, lr=settings.lr, weight_decay=settings.weight_decay, channels_last=channels_last,
                         seed=settings.seed, sampler=train_loader.sampler, smoothing=settings.smoothing)
    val_idx = splits["val"] if splits["val"].size else splits["train"][: max(1, settings.batch_size)]
    val_loader = make_loader(store, val_idx, batch_size=settings.batch_size, shuffle=False,
                             num_workers=settings.num_workers, model=model)

    history = HistoryCallback()
    interrupt = InterruptCheckpoint(last)
    throughput = ThroughputCallback()
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_loss", mode="min",
                                 save_top_k=1, save_last=True)
    callbacks = [checkpoint, history, interrupt, throughput, *extra_callbacks]
    if settings.patience > 0:
        callbacks.append(EarlyStopping(monitor="val_loss_smooth", mode="min", patience=settings.patience))
    if settings.progress:
        from deepfield.train.module import EpochBar

        callbacks.append(EpochBar(leave=True))
    logger = TensorBoardLogger(str(work), name="logs", version=0, default_hp_metric=False)
    trainer = L.Trainer(
        max_epochs=settings.epochs, accelerator=settings.accelerator, devices=settings.devices,
        strategy=settings.strategy, precision=settings.precision, callbacks=callbacks, logger=logger,
        enable_progress_bar=settings.progress, enable_model_summary=False, log_every_n_steps=max(1, min(10, len(train_loader))),
        deterministic=False, num_sanity_val_steps=0,
        gradient_clip_val=settings.gradient_clip if settings.gradient_clip is not None else model.default_gradient_clip,
    )
    seconds = fit_interruptibly(trainer, module, (train_loader, val_loader), last, interrupt, resume)
    if not trainer.is_global_zero:
        return None
    model = module.model.to(memory_format=torch.contiguous_format).cpu()
    best = checkpoint.best_model_path
    if best and Path(best).is_file():
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    model.eval()
    for p in model.parameters():
        p.data = p.data.contiguous()
    metrics = {
        "train_mse": evaluate_mse(model, store, splits["train"]),
        "val_mse": evaluate_mse(model, store, splits["val"]),
        "test_mse": evaluate_mse(model, store, splits["test"]),
        "best_val_loss": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
        "epochs_run": int(trainer.current_epoch),
        "train_seconds": seconds,
        "train_images_per_s": throughput.images_per_second,
        "history": history.rows,
    }
    _warn_on_collapse(metrics["history"], model.config)
    training = {
        "epochs": settings.epochs, "epochs_run": int(trainer.current_epoch), "batch_size": settings.batch_size,
        "lr": settings.lr, "seed": settings.seed, "precision": settings.precision,
        "accelerator": str(trainer.accelerator.__class__.__name__).replace("Accelerator", "").lower(),
        "devices": trainer.num_devices, "strategy": type(trainer.strategy).__name__,
        "early_stopping_patience": settings.patience, "early_stopping_smoothing": settings.smoothing,
        "resumed": resume,
        "initialised_from": str(Path(settings.init).resolve()) if settings.init is not None else None,
        "gradient_clip": trainer.gradient_clip_val,
    }
    path = save_model(model, out, metrics=metrics, store=record, training=training,
                      logs_dir=work / "logs", overwrite=overwrite or resume)
    shutil.rmtree(work, ignore_errors=True)
    return path




def collapse_advice(config) -> str:
    """What to try when a VAE of `config` (a VAEConfig) collapsed, for that model: what its
    decoder is given, its KL weight and warm-up."""
    tips = []
    given = [c for c in (config.flux_condition, config.size_condition) if c]
    decoder = config.decoder_condition if config.decoder_condition is not None else tuple(
        c for c in config.condition if c not in given)
    if given or decoder:
        told = ", ".join(f"{c} (as the {what})" for c, what in ((config.flux_condition, "flux"),
                                                                (config.size_condition, "size")) if c)
        told = ", ".join(x for x in (told, ", ".join(decoder)) if x)
        tips.append(f"its decoder is given {told}, so little is left for the codes: drop conditions it need not "
                    "have (--set decoder_condition=[]) or lower beta")
    if config.beta >= 0.5:
        tips.append(f"lower beta (it is {config.beta:g}; try --set beta=0.3)")
    if config.kl_warmup_epochs == 0:
        tips.append("let the KL weight rise over the first epochs (--set kl_warmup_epochs=5)")
    tips.append("train longer, or on well-measured objects only (--where 'snr > 20') when most are faint")
    return "Try: " + "; ".join(tips) + "."


def _warn_on_collapse(history: list[dict], config=None) -> None:
    """Warn when a VAE's posterior collapsed (KL to the prior near zero): at the kept (best
    validation) epoch, or by the last epoch, when the kept one is then an early, undertrained one."""
    rows = [r for r in history if r.get("val_kl") is not None and r.get("val_loss") is not None]
    if not rows:
        return
    best, last = min(rows, key=lambda r: r["val_loss"]), rows[-1]
    advice = collapse_advice(config) if config is not None and hasattr(config, "beta") else (
        "Try a lower beta, a KL warm-up, or longer training.")
    if best["val_kl"] < COLLAPSE_KL_NATS:
        warnings.warn(f"the kept epoch's codes carry {best['val_kl']:.2f} nats per object (KL to the prior): the "
                      f"posterior has collapsed, and samples will all look alike. {advice}", stacklevel=3)
    elif last["val_kl"] < COLLAPSE_KL_NATS:
        warnings.warn(f"the posterior collapsed during training (the last epoch's codes carry {last['val_kl']:.2f} "
                      f"nats per object) and never beat epoch {best['epoch'] + 1}, which the folder keeps: that "
                      f"model is undertrained. {advice}", stacklevel=3)


def fit_interruptibly(trainer, module, loaders, last: Path, interrupt, resume: bool) -> float:
    """trainer.fit(...) from `last` when resuming; Ctrl-C (the InterruptCheckpoint callback
    `interrupt` saved `last`) becomes TrainingInterrupted. Restores the SIGINT handler; returns
    the seconds spent."""
    old_handler = signal.getsignal(signal.SIGINT)
    t0 = time.perf_counter()
    try:
        trainer.fit(module, *loaders, ckpt_path=str(last) if resume else None)
    except SystemExit:
        if interrupt.saved:
            raise TrainingInterrupted(last, interrupt.epoch) from None
        if getattr(interrupt, "interrupted", False):  # Ctrl-C before any checkpoint: nothing to resume from
            if not resume:
                shutil.rmtree(last.parent.parent, ignore_errors=True)
            raise TrainingInterrupted(None, interrupt.epoch) from None
        raise
    finally:
        signal.signal(signal.SIGINT, old_handler)
    return time.perf_counter() - t0
