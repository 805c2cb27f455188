"""Exact resume: a training run killed (SIGKILL, nothing saved on the way out) or stopped with
Ctrl-C, then resumed, ends with the same weights, bit for bit, as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import deepfield
from deepfield.data.batches import SeededShuffle
from deepfield.train import TrainingInterrupted, TrainSettings, train, training_dir

#: a VAE (its loss draws noise: the reparametrisation) on the blob store, 8 steps per epoch
OPTIONS = {"latent_dim": 3, "hidden": (16,), "likelihood": "gaussian"}
SETTINGS = dict(epochs=4, batch_size=24, progress=False, patience=2, seed=3)


def weights(path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in deepfield.load(path).state_dict().items()}


def assert_same_run(a, b) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    diff = max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa if wa[k].numel())
    assert diff == 0.0, f"weights differ by up to {diff}"
    ha = json.loads((a / "metrics.json").read_text())["history"]
    hb = json.loads((b / "metrics.json").read_text())["history"]
    assert [r["val_loss"] for r in ha] == [r["val_loss"] for r in hb]


@pytest.fixture(scope="module")
def uninterrupted(blob_store, tmp_path_factory):
    path = train("vae", blob_store, tmp_path_factory.mktemp("ref") / "vae", model_options=OPTIONS,
                 settings=TrainSettings(**SETTINGS))
    again = train("vae", blob_store, path.parent / "again", model_options=OPTIONS, settings=TrainSettings(**SETTINGS))
    assert_same_run(path, again)  # the reference is itself reproducible
    return path


KILLER = textwrap.dedent("""
    import os, signal, sys
    import lightning as L
    from deepfield.data.store import open_store
    from deepfield.train import TrainSettings, train

    class KillAt(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == {step}:
                os.kill(os.getpid(), signal.SIGKILL)

    train("vae", open_store(sys.argv[1]), sys.argv[2], model_options={options!r},
          settings=TrainSettings(**{settings!r}), callbacks=[KillAt()])
""")


def test_sigkill_mid_epoch_then_resume_is_bit_identical(blob_store, uninterrupted, tmp_path):
    out = tmp_path / "vae"
    steps = SeededShuffle(blob_store.split()["train"].size, 0, SETTINGS["batch_size"]).batches_per_epoch
    script = KILLER.format(step=2 * steps + 3, options=OPTIONS, settings=SETTINGS)  # 3 batches into epoch 2
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script, str(blob_store.path), str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not out.exists() and (training_dir(out) / "checkpoints" / "last.ckpt").is_file()
    resumed = train("vae", blob_store, out, model_options=OPTIONS, settings=TrainSettings(**SETTINGS), resume=True)
    assert_same_run(uninterrupted, resumed)


class CtrlCAt:
    def __new__(cls, step: int):
        import lightning as L

        class CtrlC(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if trainer.global_step == step:
                    raise KeyboardInterrupt

        return CtrlC()


# 5 steps into epoch 1; after epoch 1's last step, before its validation (the run goes back to epoch 0's end)
@pytest.mark.parametrize("epoch, step_into_epoch", [(1, 5), (2, 0)], ids=["mid-epoch", "before-validation"])
def test_ctrl_c_mid_epoch_then_resume_is_bit_identical(blob_store, uninterrupted, tmp_path, epoch, step_into_epoch):
    steps = SeededShuffle(blob_store.split()["train"].size, 0, SETTINGS["batch_size"]).batches_per_epoch
    out = tmp_path / "vae"
    with pytest.raises(TrainingInterrupted) as info:
        train("vae", blob_store, out, model_options=OPTIONS, settings=TrainSettings(**SETTINGS),
              callbacks=[CtrlCAt(epoch * steps + step_into_epoch)])
    assert info.value.checkpoint is not None and info.value.checkpoint.is_file()
    resumed = train("vae", blob_store, out, model_options=OPTIONS, settings=TrainSettings(**SETTINGS), resume=True)
    assert_same_run(uninterrupted, resumed)


def test_the_shuffle_depends_on_seed_and_epoch_only_and_resumes_inside_an_epoch():
    sampler = SeededShuffle(10, seed=1, batch_size=4)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and list(sampler) == first  # the same epoch, the same order
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(second) == list(range(10))
    assert sampler.batches_per_epoch == 3
    sampler.resume_at(3 + 2)  # two batches into epoch 1
    assert sampler.epoch == 1 and list(sampler) == second[8:]
    assert list(sampler) == second  # the skip applies once
    assert list(SeededShuffle(10, seed=2, batch_size=4)) != first
    assert np.array_equal(sorted(list(SeededShuffle(10, seed=2, batch_size=4))), np.arange(10))


def test_ctrl_c_before_the_first_checkpoint_keeps_nothing_and_a_rerun_starts_afresh(blob_store, uninterrupted, tmp_path):
    steps = SeededShuffle(blob_store.split()["train"].size, 0, SETTINGS["batch_size"]).batches_per_epoch
    out = tmp_path / "vae"
    with pytest.raises(TrainingInterrupted, match="nothing was kept") as info:
        train("vae", blob_store, out, model_options=OPTIONS, settings=TrainSettings(**SETTINGS),
              callbacks=[CtrlCAt(steps)])
    assert info.value.checkpoint is None and not training_dir(out).exists() and not out.exists()
    assert_same_run(uninterrupted, train("vae", blob_store, out, model_options=OPTIONS,
                                         settings=TrainSettings(**SETTINGS)))


def test_ctrl_c_after_an_epochs_validation_then_resume_is_bit_identical(blob_store, uninterrupted, tmp_path):
    import lightning as L

    class CtrlCAfterValidation(L.Callback):  # as the user presses it while epoch 1's end is being recorded
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise KeyboardInterrupt

    out = tmp_path / "vae"
    with pytest.raises(TrainingInterrupted):
        train("vae", blob_store, out, model_options=OPTIONS, settings=TrainSettings(**SETTINGS),
              callbacks=[CtrlCAfterValidation()])
    resumed = train("vae", blob_store, out, model_options=OPTIONS, settings=TrainSettings(**SETTINGS), resume=True)
    assert_same_run(uninterrupted, resumed)


GAN_OPTIONS = {"latent_dim": 4, "channels": (8, 16), "encoder_epochs": 0}
GAN_SETTINGS = dict(epochs=3, batch_size=32, progress=False, seed=5)


def test_sigkill_of_a_gan_then_resume_is_bit_identical(blob_store, tmp_path):
    """The two-player game too: killed in its third epoch, resumed from the end of the second."""
    reference = train("dcgan", blob_store, tmp_path / "ref", model_options=GAN_OPTIONS,
                      settings=TrainSettings(**GAN_SETTINGS))
    out = tmp_path / "gan"
    script = KILLER.replace('"vae"', '"dcgan"').replace("trainer.global_step == {step}", "trainer.current_epoch == 2 "
                                                        "and batch_idx == 2").format(options=GAN_OPTIONS,
                                                                                     settings=GAN_SETTINGS)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script, str(blob_store.path), str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    resumed = train("dcgan", blob_store, out, model_options=GAN_OPTIONS, settings=TrainSettings(**GAN_SETTINGS),
                    resume=True)
    wa, wb = weights(reference), weights(resumed)
    assert max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa if wa[k].numel()) == 0.0
