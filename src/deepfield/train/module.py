"""The thin Lightning layer: a LightningModule around any deepfield model, loaders, callbacks.

Models never import Lightning; this module adapts ``model.loss(batch)`` to Lightning's steps.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
import numpy as np
import torch

from deepfield.errors import InputError, TrainingDiverged

__all__ = ["ModelModule", "HistoryCallback", "InterruptCheckpoint", "ThroughputCallback", "EpochBar", "check_finite_batch"]


def check_finite_batch(batch: dict, loss: torch.Tensor) -> None:
    """Stop with the offending ids when a loss is NaN/inf: bad data, or a diverging run."""
    if bool(torch.isfinite(loss)):
        return
    x = batch["x"]
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        ids = batch["id"][bad].tolist()[:10] if "id" in batch else bad.nonzero().flatten().tolist()
        raise InputError(f"NaN/inf pixels in training objects with ids {ids}: clean or mask them in the store")
    raise TrainingDiverged(f"the loss became {float(loss)} on finite data (ids "
                           f"{batch['id'][:5].tolist() if 'id' in batch else '?'} ...): lower --lr; the last good "
                           "checkpoint is kept for --resume")


class ModelModule(L.LightningModule):
    """Trains `model` by minimising ``model.loss(batch).loss`` with AdamW, logging every part."""

    #: the spike guard compares a batch's loss with the median of this many recent steps, after as
    #: many steps, and steps anyway after this many skips in a row (the model may have moved on)
    GUARD_WINDOW, GUARD_MAX_SKIPS = 64, 8
    WARMUP_STEPS = 1000

    def __init__(self, model, lr: float = 1e-3, weight_decay: float = 0.0, channels_last: bool = False,
                 seed: int = 0, sampler=None, smoothing: float = 0.0):
        super().__init__()
        #: weight of the past in the exponential moving average of the validation loss
        #: (``val_loss_smooth``) that early stopping reads
        self.smoothing = float(smoothing)
        self.validated_epoch: int | None = None
        self._val_sum = self._val_count = 0.0
        self._val_smooth: float | None = None
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay
        self.channels_last = channels_last
        self.seed = int(seed)
        #: the training loader's SeededShuffle, placed by a checkpoint's step count on resume
        self.sampler = sampler
        self._recent: list[float] = []
        self._skips_in_a_row = 0

    def _reseed(self, *position: int) -> None:
        """Seed torch's generator from (seed, rank, position) alone: the noise a step draws (the
        VAE's reparametrisation, dropout, noise injection) is then the same whether or not the run
        was interrupted and resumed before it."""
        state = np.random.SeedSequence([self.seed, int(self.global_rank), *position]).generate_state(2)
        torch.manual_seed(int(state[0]) << 32 | int(state[1]))

    def on_train_epoch_start(self):
        if hasattr(self.model, "set_epoch"):  # e.g. the VAE's KL warm-up
            self.model.set_epoch(int(self.current_epoch))

    def on_train_batch_start(self, batch, batch_idx):
        self._reseed(0, int(self.global_step))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["deepfield"] = {"recent_losses": list(self._recent), "skips_in_a_row": self._skips_in_a_row,
                                   "val_loss_smooth": self._val_smooth}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("deepfield", {})
        self._recent = [float(v) for v in state.get("recent_losses", [])]
        self._skips_in_a_row = int(state.get("skips_in_a_row", 0))
        self._val_smooth = state.get("val_loss_smooth")
        if self.sampler is not None:
            self.sampler.resume_at(int(checkpoint.get("global_step", 0)))

    def _prepare(self, batch: dict) -> dict:
        if self.channels_last and batch["x"].ndim == 4:
            batch = dict(batch, x=batch["x"].contiguous(memory_format=torch.channels_last))
        return batch

    def training_step(self, batch, batch_idx):
        batch = self._prepare(batch)
        out = self.model.loss(batch)
        check_finite_batch(batch, out.loss)
        n = batch["x"].shape[0]
        loss = out.loss
        if getattr(self.model, "spike_guard", None):
            loss = self._guard(loss, float(self.model.spike_guard), n)
        for k, v in out.logged().items():
            self.log(f"train_{k}" if k != "loss" else "train_loss", v.detach(), on_step=False,
                     on_epoch=True, prog_bar=k == "loss", batch_size=n, sync_dist=True)
        return loss

    def _guard(self, loss: torch.Tensor, factor: float, n: int) -> torch.Tensor:
        """The loss to step on: zero (no gradient; the same on every DDP rank's graph) when this
        batch's loss is over `factor` x the median of the recent ones."""
        value = float(loss.detach())
        recent = self._recent
        spike = (len(recent) >= self.GUARD_WINDOW and value > factor * float(np.median(recent))
                 and self._skips_in_a_row < self.GUARD_MAX_SKIPS)
        self.log("train_skipped_steps", float(spike), on_step=False, on_epoch=True, reduce_fx="sum",
                 batch_size=n, sync_dist=True)
        if spike:
            self._skips_in_a_row += 1
            return loss * 0.0
        self._skips_in_a_row = 0
        recent.append(value)
        del recent[:-self.GUARD_WINDOW]
        return loss

    def validation_step(self, batch, batch_idx):
        batch = self._prepare(batch)
        n = batch["x"].shape[0]
        out = self.model.loss(batch)
        for k, v in out.logged().items():
            self.log(f"val_{k}" if k != "loss" else "val_loss", v.detach(), on_step=False, on_epoch=True,
                     prog_bar=k == "loss", batch_size=n, sync_dist=True)
        self._val_sum += float(out.loss.detach()) * n
        self._val_count += n

    def on_validation_epoch_start(self):
        self._reseed(1, int(self.current_epoch))
        self._val_sum = self._val_count = 0.0

    def on_validation_epoch_end(self):
        """Log ``val_loss_smooth``: the validation loss (the same object-weighted mean as
        ``val_loss``, over every rank) averaged over epochs with weight `smoothing` on the past.
        A validation split of a few hundred galaxies gives a loss that jumps from epoch to epoch
        while the trend still falls; early stopping reads the average, not one lucky epoch."""
        if self.trainer.sanity_checking or not self._val_count:
            return
        #: the last epoch whose validation finished (a Ctrl-C after it may be saved where it falls)
        self.validated_epoch = int(self.current_epoch)
        totals = torch.tensor([self._val_sum, self._val_count], dtype=torch.float64)
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        value = float(totals[0] / totals[1])
        self._val_smooth = value if self._val_smooth is None else (
            self.smoothing * self._val_smooth + (1 - self.smoothing) * value)
        self.log("val_loss_smooth", self._val_smooth, on_step=False, on_epoch=True)

    def configure_optimizers(self):
        # fused: one kernel for all parameters' updates (CPU and CUDA); 4-5% faster steps for the conv VAE here.
        # Lightning's mixed-precision plugin refuses to clip a fused optimizer's gradients, so only full precision.
        fused = str(self.trainer.precision).startswith(("32", "64"))
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay, fused=fused)
        # cosine decay to 1% over the planned epochs: calmer late epochs, better final codes
        epochs = max(1, int(self.trainer.max_epochs or 1))
        if getattr(self.model, "spike_guard", None):
            # touchy models also warm up linearly over their first WARMUP_STEPS steps (per-step schedule)
            total = max(1, int(self.trainer.estimated_stepping_batches))

            def factor(step: int) -> float:
                cosine = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
                return min(1.0, (step + 1) / self.WARMUP_STEPS) * cosine

            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=self.lr * 0.01)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


class HistoryCallback(L.Callback):
    """Per-epoch train/validation losses, for metrics.json and the report's loss curves."""

    def __init__(self):
        self.rows: list[dict] = []

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        row = {"epoch": int(trainer.current_epoch)}
        for k, v in trainer.callback_metrics.items():
            if k.startswith(("train_", "val_")):
                row[k] = float(v)
        if self.rows and self.rows[-1]["epoch"] == row["epoch"]:
            self.rows[-1].update(row)
        else:
            self.rows.append(row)

    def on_train_epoch_end(self, trainer, pl_module):
        # the epoch's training means, and what the module logged after this callback's validation hook
        # (val_loss_smooth)
        if self.rows and self.rows[-1]["epoch"] == trainer.current_epoch:
            for k, v in trainer.callback_metrics.items():
                if k.startswith(("train_", "val_")):
                    self.rows[-1][k] = float(v)

    def state_dict(self):
        return {"rows": self.rows}

    def load_state_dict(self, state):
        self.rows = list(state.get("rows", []))


class InterruptCheckpoint(L.Callback):
    """On Ctrl-C (KeyboardInterrupt) save a checkpoint to resume from: mid-epoch, the step reached
    (the training loader's :class:`~deepfield.data.batches.SeededShuffle` skips the batches used);
    between an epoch's last step and its end-of-epoch checkpoint, the previous epoch's end."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.saved = False
        self.interrupted = False
        self.epoch = 0

    def on_exception(self, trainer, pl_module, exception):
        if not isinstance(exception, KeyboardInterrupt):
            return
        self.interrupted = True
        self.epoch = int(trainer.current_epoch)
        per_epoch = trainer.num_training_batches
        validated = getattr(pl_module, "validated_epoch", None) == trainer.current_epoch
        if (pl_module.automatic_optimization and math.isfinite(per_epoch) and not validated  # one step per batch
                and trainer.global_step >= (trainer.current_epoch + 1) * per_epoch):
            # the epoch's steps are done but its validation (and end-of-epoch checkpoint) is not: Lightning
            # would resume such a checkpoint in the next epoch and skip this one's validation, so the run
            # would no longer be the uninterrupted one. Keep the previous end-of-epoch checkpoint instead
            # (this epoch is trained again, the same way, on resume)
            self.saved = self.path.is_file()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(str(self.path))
        self.saved = True


class ThroughputCallback(L.Callback):
    """Training images per second (optimisation steps only, excluding validation)."""

    def __init__(self):
        self.images = 0
        self.seconds = 0.0
        self._t = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._t is not None and batch_idx > 0:  # skip the first (warm-up) batch of each epoch
            self.seconds += time.perf_counter() - self._t
            self.images += int(batch["x"].shape[0]) * trainer.world_size

    @property
    def images_per_second(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 else None


class EpochBar(RichProgressBar):
    """Lightning's rich progress bar as a user reads it: epochs counted from 1 ("Epoch 3/20"), and
    only the losses (no logger version number)."""

    def _get_train_description(self, current_epoch: int) -> str:
        total = self.trainer.max_epochs
        text = f"Epoch {current_epoch + 1}/{total}" if total and total > 0 else f"Epoch {current_epoch + 1}"
        return f"{text:{len(self.validation_description)}}"  # as wide as "Validation": no flicker

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
