"""Training harness: interruption and resume, early stopping, configs, NaN guards, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch

import deepfield
from deepfield.errors import ConfigError, InputError, ModelFolderError
from deepfield.train import TrainingInterrupted, TrainSettings, load_yaml_config, train, training_dir
from deepfield.train.module import check_finite_batch

FAST = dict(batch_size=32, progress=False, patience=0)


class CtrlCAt(L.Callback):
    """Press Ctrl-C (raise KeyboardInterrupt) after the given global step."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_the_run(blob_store, tmp_path):
    out = tmp_path / "ae"
    opts = {"latent_dim": 4, "hidden": (32,)}
    settings = TrainSettings(epochs=4, **FAST)
    steps_per_epoch = int(np.ceil(blob_store.split()["train"].size / 32))
    with pytest.raises(TrainingInterrupted) as info:
        train("ae", blob_store, out, model_options=opts, settings=settings,
              callbacks=[CtrlCAt(steps_per_epoch + 2)])
    assert info.value.epoch == 1 and info.value.checkpoint.is_file()
    assert not out.exists()  # no half-trained model folder
    with pytest.raises(ModelFolderError, match="--resume"):
        train("ae", blob_store, out, model_options=opts, settings=settings)
    ckpt = torch.load(info.value.checkpoint, weights_only=False)
    assert ckpt["global_step"] == steps_per_epoch + 2
    path = train("ae", blob_store, out, model_options=opts, settings=settings, resume=True)
    metrics = json.loads((path / "metrics.json").read_text())
    record = json.loads((path / "config.json").read_text())
    assert record["training"]["resumed"] is True and metrics["epochs_run"] == 4
    assert [row["epoch"] for row in metrics["history"]] == [0, 1, 2, 3]
    assert not training_dir(out).exists()  # work folder cleaned up
    assert (path / "logs").is_dir() and any((path / "logs").rglob("events.out.tfevents*"))


def test_resume_refuses_another_store_and_missing_checkpoint(blob_store, tmp_path):
    with pytest.raises(ModelFolderError, match="nothing to resume"):
        train("ae", blob_store, tmp_path / "m", settings=TrainSettings(epochs=1, **FAST), resume=True)


def test_early_stopping_stops_before_max_epochs(blob_store, tmp_path):
    # a huge learning rate on PCA-like data: the val loss stops improving almost at once
    path = train("ae", blob_store, tmp_path / "m", model_options={"latent_dim": 2, "hidden": (16,)},
                 settings=TrainSettings(epochs=60, batch_size=64, lr=0.5, patience=2, progress=False))
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["epochs_run"] < 60
    best = min(row["val_loss"] for row in metrics["history"])
    assert metrics["best_val_loss"] == pytest.approx(best, rel=1e-5)
    # the saved weights are the best epoch's, not the last
    assert metrics["val_mse"] == pytest.approx(best, rel=1e-3)


def test_yaml_config_sections_and_unknown_keys(tmp_path, blob_store):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model:\n  latent_dim: 3\n  hidden: [16]\ntraining:\n  epochs: 1\n  batch_size: 50\n")
    model_opts, train_opts = load_yaml_config(cfg)
    assert model_opts == {"latent_dim": 3, "hidden": [16]} and train_opts == {"epochs": 1, "batch_size": 50}
    path = train("ae", blob_store, tmp_path / "m", model_options=model_opts,
                 settings=TrainSettings(**train_opts, progress=False))
    assert deepfield.load(path).config.hidden == (16,)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['latent_dimension'\].*valid keys"):
        train("ae", blob_store, tmp_path / "x", model_options={"latent_dimension": 3})
    cfg.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml_config(cfg)


def test_nan_batch_names_the_ids_and_divergence_is_reported():
    batch = {"x": torch.zeros(3, 1, 4, 4), "id": torch.tensor([10, 11, 12])}
    check_finite_batch(batch, torch.tensor(1.0))  # finite: nothing happens
    batch["x"][1, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match=r"ids \[11\]"):
        check_finite_batch(batch, torch.tensor(float("nan")))
    batch["x"][1, 0, 0, 0] = 0
    with pytest.raises(deepfield.DeepfieldError, match="lower --lr"):
        check_finite_batch(batch, torch.tensor(float("inf")))


@pytest.mark.slow
def test_ddp_two_cpu_processes_through_the_cli(blob_store, tmp_path):
    """`--devices 2 --strategy ddp` runs two real processes and writes one model folder."""
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "deepfield", "train", "ae", "--store", str(blob_store.path), "--out", str(out),
           "--latent-dim", "4", "--epochs", "2", "--batch-size", "32", "--accelerator", "cpu",
           "--devices", "2", "--strategy", "ddp", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "config.json").read_text())
    assert record["training"]["devices"] == 2 and record["training"]["strategy"] == "DDPStrategy"
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(metrics["test_mse"]) and metrics["epochs_run"] == 2


def test_the_seed_fixes_the_initial_weights_whatever_ran_before(blob_store, tmp_path):
    import deepfield

    settings = TrainSettings(epochs=1, batch_size=64, seed=3, progress=False)
    weights = []
    for i, noise in enumerate((1, 1000)):
        torch.rand(noise)  # the global RNG in another state each time
        out = train("conv-ae", blob_store, tmp_path / f"m{i}", model_options={"latent_dim": 2, "channels": (4, 8)},
                    settings=settings)
        weights.append(deepfield.load(out).state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_train_runs_gans_through_their_two_player_loop(blob_store, tmp_path):
    from deepfield.errors import ConfigError

    with pytest.raises(ConfigError, match="store_b"):
        train("cyclegan", blob_store, tmp_path / "c")
    out = train("dcgan", blob_store, tmp_path / "g", model_options={"latent_dim": 4, "channels": (8, 16)},
                settings=TrainSettings(epochs=1, batch_size=64, progress=False))
    assert (out / "config.json").exists() and '"DCGAN"' in (out / "config.json").read_text()


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_vae_trains_with_gradient_clipping_in_both_precisions(blob_store, tmp_path, precision):
    """VAEs clip gradients by default; full precision uses the fused AdamW, which Lightning's
    mixed-precision plugin cannot clip, so bf16 must fall back to the unfused one."""
    out = train("vae", blob_store, tmp_path / precision, model_options={"latent_dim": 2, "channels": (8, 16),
                                                                        "likelihood": "gaussian"},
                settings=TrainSettings(epochs=2, batch_size=32, patience=0, precision=precision, progress=False))
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert np.isfinite(history[-1]["val_loss"]) and history[-1]["train_loss"] < history[0]["train_loss"]


def test_where_trains_on_a_catalog_selection_and_keeps_the_test_split_whole(blob_store, tmp_path):
    out = train("pca", blob_store, tmp_path / "pca", model_options={"latent_dim": 2},
                settings=TrainSettings(where="magnitude < 24.6", **FAST))
    record = json.loads((out / "config.json").read_text())["store"]
    splits = blob_store.split()
    bright = blob_store.column("magnitude") < 24.6
    assert record["where"] == "magnitude < 24.6"
    assert record["n_train"] == int(bright[splits["train"]].sum()) < splits["train"].size
    assert record["n_val"] == int(bright[splits["val"]].sum())
    assert record["n_test"] == splits["test"].size  # held-out evaluation covers faint objects too
    # the model's splits, rebuilt from its folder for --split, are the selected ones
    from deepfield.tasks.apply import resolve_indices

    model = deepfield.load(out)
    assert resolve_indices(blob_store, split="train", record=model.record).size == record["n_train"]
    assert resolve_indices(blob_store, split="test", record=model.record).size == record["n_test"]
    with pytest.raises(InputError, match="loosen the query"):
        train("pca", blob_store, tmp_path / "none", settings=TrainSettings(where="magnitude < 0", **FAST))


def test_spike_guard_skips_outlier_batches_but_not_a_new_normal():
    from deepfield.train.module import ModelModule

    module = ModelModule(torch.nn.Linear(1, 1))
    module.log = lambda *a, **k: None  # outside a Trainer
    window, skips = module.GUARD_WINDOW, module.GUARD_MAX_SKIPS
    for _ in range(window):
        assert float(module._guard(torch.tensor(1.0), 20.0, 8)) == 1.0
    assert float(module._guard(torch.tensor(50.0), 20.0, 8)) == 0.0  # a spike: no gradient
    assert float(module._guard(torch.tensor(15.0), 20.0, 8)) == 15.0  # within 20x of the median: stepped
    # a loss that stays high is the new normal after GUARD_MAX_SKIPS skips in a row
    stepped = [float(module._guard(torch.tensor(100.0), 20.0, 8)) for _ in range(skips + 1)]
    assert stepped == [0.0] * skips + [100.0]


def test_guarded_models_warm_up_the_learning_rate_then_decay_it():
    from types import SimpleNamespace

    from deepfield.models import VAE, VAEConfig
    from deepfield.train.module import ModelModule

    vae = VAE(VAEConfig(input_shape=(1, 8, 8), latent_dim=2, channels=(4,), likelihood="pixel",
                        condition=("magnitude",), flux_condition="magnitude", flux_zeropoint=30.0))
    module = ModelModule(vae, lr=1e-3)
    module._trainer = SimpleNamespace(max_epochs=10, estimated_stepping_batches=5000, precision="32-true")
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(5000):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    warm = module.WARMUP_STEPS
    assert lrs[0] == pytest.approx(1e-3 / warm, rel=0.01)  # starts tiny
    assert int(np.argmax(lrs)) == warm - 1  # the peak ends the warm-up, the cosine has begun under it
    assert max(lrs) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * (warm - 1) / 5000))), rel=1e-3)
    assert lrs[-1] == pytest.approx(1e-5, rel=0.05)  # cosine to 1% at the end


def test_a_second_run_into_the_same_model_folder_is_refused_while_the_first_trains(blob_store, tmp_path):
    """Two real processes: the second `train --overwrite` is refused naming the lock, and leaves the
    first run's work alone (it used to delete it, and both exited 0)."""
    import time

    out = tmp_path / "m"
    cmd = [sys.executable, "-m", "deepfield", "train", "ae", "--store", str(blob_store.path), "--out", str(out),
           "--set", "latent_dim=2", "--epochs", "400", "--set", "patience=0", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        work = training_dir(out)
        deadline = time.time() + 120
        while not (work / "run.json").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None and (work / "run.json").exists(), "the first run should be training"
        second = subprocess.run([*cmd, "--overwrite"], env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        assert "is being written by another process" in second.stderr and ".m.lock" in second.stderr
        assert (work / "run.json").exists() and first.poll() is None  # the first run's work is untouched
    finally:
        first.kill()
        first.wait()
    # the kernel dropped the killed run's lock: a new run may take the folder over
    again = subprocess.run([*cmd[:-5], "--epochs", "1", "--overwrite", "--no-progress"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out / "config.json").exists()


def test_progress_bar_counts_epochs_from_one_and_shows_only_losses(blob_store, tmp_path, capsys):
    train("ae", blob_store, tmp_path / "m", model_options={"latent_dim": 2, "hidden": (8,)},
          settings=TrainSettings(epochs=2, batch_size=64, patience=0, progress=True))
    out = capsys.readouterr().out
    assert "Epoch 1/2" in out and "Epoch 2/2" in out and "Epoch 0" not in out
    assert "val_loss" in out and "v_num" not in out


@pytest.mark.parametrize("options, says, not_says", [
    ({"likelihood": "gaussian"}, ["beta=0.3", "kl_warmup_epochs"], ["decoder is given", "flux"]),
    ({"likelihood": "gaussian", "beta": 0.2, "kl_warmup_epochs": 3, "condition": ("half_light_radius",)},
     ["decoder is given half_light_radius"], ["beta=0.3", "kl_warmup_epochs=5"]),
])
def test_collapse_advice_fits_the_model(options, says, not_says):
    from deepfield.models.vae import VAEConfig
    from deepfield.train.fit import collapse_advice

    advice = collapse_advice(VAEConfig(input_shape=(1, 16, 16), **options))
    assert all(s in advice for s in says), advice
    assert not any(s in advice for s in not_says), advice


def test_cli_warnings_are_one_line_without_source(blob_store, tmp_path, capsys):
    from conftest import cli

    code, out = cli(capsys, "train", "vae", "--store", str(blob_store.path), "--out", str(tmp_path / "v"),
                    "--set", "latent_dim=2", "--set", "hidden=[8]", "--epochs", "1", "--no-progress")
    assert code == 0
    # the store has no PSF: the likelihood fallback is said once, as a line, without Python's source echo
    assert out.count("warning: store") == 1 and "Gaussian likelihood" in out
    assert "build_model(" not in out and "UserWarning" not in out and "LeafSpec" not in out


def test_fine_tuning_starts_from_the_given_weights_and_checks_them(blob_store, tmp_path):
    opts = {"latent_dim": 3, "hidden": (16,)}
    base = train("ae", blob_store, tmp_path / "base", model_options=opts,
                 settings=TrainSettings(epochs=12, **{**FAST, "batch_size": 16}, lr=3e-3))
    base_metrics = json.loads((base / "metrics.json").read_text())
    tuned = train("ae", blob_store, tmp_path / "tuned", settings=TrainSettings(epochs=1, init=str(base), **FAST))
    record = json.loads((tuned / "config.json").read_text())
    assert record["training"]["initialised_from"] == str(base.resolve())
    first = json.loads((tuned / "metrics.json").read_text())["history"][0]
    fresh = train("ae", blob_store, tmp_path / "fresh", model_options=opts, settings=TrainSettings(epochs=1, **FAST))
    fresh_first = json.loads((fresh / "metrics.json").read_text())["history"][0]
    # one more epoch from the trained weights is at least as good as where they were, and far from a fresh start
    assert first["val_loss"] <= base_metrics["best_val_loss"] * 1.05
    assert first["val_loss"] < 0.8 * fresh_first["val_loss"]
    a, b = deepfield.load(base), deepfield.load(tuned)
    assert torch.equal(a.data_scale, b.data_scale)  # the normalisation is the trained model's
    with pytest.raises(ConfigError, match="holds a .*ae model"):
        train("vae", blob_store, tmp_path / "x", settings=TrainSettings(epochs=1, init=str(base), **FAST))
    with pytest.raises(ConfigError, match="keeps the config"):
        train("ae", blob_store, tmp_path / "x", model_options={"latent_dim": 5},
              settings=TrainSettings(epochs=1, init=str(base), **FAST))
    with pytest.raises(ModelFolderError, match="not a model folder"):
        train("ae", blob_store, tmp_path / "x", settings=TrainSettings(epochs=1, init=str(tmp_path), **FAST))
    with pytest.raises(ConfigError, match="drop init"):
        train("pca", blob_store, tmp_path / "x", settings=TrainSettings(epochs=1, init=str(base), **FAST))


def test_early_stopping_reads_an_average_of_the_validation_loss_over_epochs(blob_store, tmp_path):
    path = train("ae", blob_store, tmp_path / "m", model_options={"latent_dim": 2, "hidden": (16,)},
                 settings=TrainSettings(epochs=6, batch_size=32, patience=3, smoothing=0.6, progress=False))
    rows = json.loads((path / "metrics.json").read_text())["history"]
    smooth = rows[0]["val_loss"]
    for row in rows:  # v_t = 0.6 v_(t-1) + 0.4 l_t, from v_0 = l_0
        smooth = smooth if row is rows[0] else 0.6 * smooth + 0.4 * row["val_loss"]
        assert row["val_loss_smooth"] == pytest.approx(smooth, rel=1e-5)
    record = json.loads((path / "config.json").read_text())["training"]
    assert record["early_stopping_smoothing"] == 0.6
    with pytest.raises(ConfigError, match="smoothing=1"):
        TrainSettings(smoothing=1.0)
