"""The CLI: commands work end to end and bad input exits with code 2 and a useful message."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import cli

import deepfield
from deepfield.data.store import create_store, open_store


@pytest.fixture(scope="module")
def trained(blob_store, tmp_path_factory):
    from deepfield.train import TrainSettings, train

    out = tmp_path_factory.mktemp("models") / "ae"
    return train("ae", blob_store, out, model_options={"latent_dim": 3, "hidden": (32,)},
                 settings=TrainSettings(epochs=1, progress=False))


def test_help_lists_the_commands():
    proc = subprocess.run([sys.executable, "-m", "deepfield", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for command in ("info", "train", "encode", "reconstruct", "import", "simulate", "report", "demo"):
        assert command in proc.stdout


def test_info_prints_shapes_units_and_stats(capsys, blob_store):
    code, out = cli(capsys, "info", blob_store.path)
    assert code == 0
    assert "240 objects" in out and "0.2 arcsec/pixel" in out and "arcsec" in out and "magnitude" in out
    code, out = cli(capsys, "info", blob_store.path / "missing")
    assert code == 2 and "no store at" in out


def test_train_encode_reconstruct_through_the_cli(capsys, blob_store, tmp_path):
    code, out = cli(capsys, "train", "pca", "--store", blob_store.path, "--out", tmp_path / "pca",
                    "--latent-dim", 5, "--no-progress")
    assert code == 0 and "model written to" in out
    code, out = cli(capsys, "encode", tmp_path / "pca", "--store", blob_store.path, "--out",
                    tmp_path / "codes.parquet", "--split", "test", "--no-progress")
    assert code == 0
    table = pq.read_table(tmp_path / "codes.parquet")
    test_rows = blob_store.split()["test"]
    assert table.column("id").to_pylist() == blob_store.ids[test_rows].tolist()
    assert {"z0", "z4", "magnitude"} <= set(table.column_names)
    # the codes agree with the Python API
    model = deepfield.load(tmp_path / "pca")
    import torch

    z = model.encode(torch.from_numpy(blob_store.read("x", test_rows))).numpy()
    np.testing.assert_allclose(table.column("z0").to_numpy(), z[:, 0], rtol=1e-5, atol=1e-5)
    code, _ = cli(capsys, "reconstruct", tmp_path / "pca", "--store", blob_store.path, "--out",
                  tmp_path / "rec", "--where", "magnitude < 25", "--no-progress")
    assert code == 0
    rec = open_store(tmp_path / "rec")
    assert len(rec) == int((blob_store.column("magnitude") < 25).sum()) and rec.pixel_scale == 0.2


@pytest.mark.parametrize("args, message", [
    (["train", "gan", "--store", "{store}", "--out", "{tmp}/m"], "unknown model family"),
    (["train", "ae", "--store", "{tmp}/nostore", "--out", "{tmp}/m"], "no store at"),
    (["train", "ae", "--store", "{store}", "--out", "{tmp}/m", "--config", "{tmp}/bad.yaml"], "unknown key"),
    (["train", "pca", "--store", "{store}", "--out", "{tmp}/m", "--denoise", "0.1"], "apply to ae and conv-ae only"),
    (["train", "ae", "--store", "{store}", "--out", "{tmp}/m", "--resume"], "nothing to resume"),
    (["encode", "{tmp}/nomodel", "--store", "{store}", "--out", "{tmp}/c"], "no model folder"),
    (["encode", "{model}", "--store", "{three_band}", "--out", "{tmp}/c"], "3 band(s)"),
    (["encode", "{model}", "--store", "{store}", "--out", "{tmp}/c", "--where", "colour > 1"], "no catalog column"),
])
def test_bad_input_exits_2_with_the_fix(capsys, blob_store, trained, tmp_path, args, message):
    (tmp_path / "bad.yaml").write_text("model:\n  latent_size: 4\n")
    with create_store(tmp_path / "three", (3, 16, 16), bands=("g", "r", "i"), pixel_scale=0.2) as w:
        w.append(x=np.zeros((2, 3, 16, 16), "f4"))
    subs = {"store": blob_store.path, "tmp": tmp_path, "model": trained, "three_band": tmp_path / "three"}
    code, out = cli(capsys, *[a.format(**subs) for a in args])
    assert code == 2, out
    assert message in out
    assert not (tmp_path / "m").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("args, message", [
    (["train", "--n", "abc"], "No such option: --n"),
    (["nosuch"], "No such command 'nosuch'"),
    (["sample"], "Missing argument"),
    (["sample", "{tmp}/m", "--n", "abc"], "Invalid value for '--n'"),
])
def test_usage_mistakes_exit_2_with_a_message_and_no_traceback(capsys, tmp_path, args, message):
    code, out = cli(capsys, *[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and message in out and "Traceback" not in out


def test_version_prints_and_exits_0(capsys):
    code, out = cli(capsys, "--version")
    assert code == 0 and out.strip() == f"deepfield {deepfield.__version__}"


@pytest.mark.parametrize("raised, code, message", [
    (KeyboardInterrupt(), 130, "interrupted"),
    (RuntimeError("boom"), 1, "unexpected error: RuntimeError: boom"),
    (PermissionError(13, "Permission denied", "/data/out"), 2, "cannot write or read /data/out: permission denied"),
    (OSError(28, "No space left on device", "/data/out"), 2, "no space left on the device of /data/out"),
])
def test_interrupts_and_unexpected_errors_end_in_one_message(capsys, monkeypatch, blob_store, raised, code, message):
    import deepfield.data.store as store_module

    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(store_module, "open_store", fail)
    got, out = cli(capsys, "info", blob_store.path)
    assert got == code and message in out and "Traceback" not in out


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "epochs=0 (give >= 1)"),
    (["--epochs", "-1"], "epochs=-1 (give >= 1)"),
    (["--set", "batch_size=0"], "batch_size=0 (give >= 1)"),
    (["--config", "{tmp}/three.yaml"], "epochs = 'three' is not a whole number"),
    (["--set", "hidden=a,b"], "hidden = ('a', 'b') is not a list of whole number"),
])
def test_bad_training_values_are_refused_before_any_folder_is_made(capsys, blob_store, tmp_path, args, message):
    (tmp_path / "three.yaml").write_text("training:\n  epochs: three\n")
    code, out = cli(capsys, "train", "ae", "--store", blob_store.path, "--out", tmp_path / "m",
                    *[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and message in out, out
    assert not (tmp_path / "m").exists() and not (tmp_path / ".m.training").exists()


def test_a_vae_without_psf_or_noise_says_it_falls_back_to_the_gaussian_likelihood(blob_store):
    from deepfield.train import build_model

    with pytest.warns(UserWarning, match="has no psf or ivar: the VAE falls back to the Gaussian likelihood"):
        model = build_model("vae", blob_store, {"latent_dim": 2, "channels": (8, 16)})
    assert model.config.likelihood == "gaussian"


def test_encode_batch_size_and_index_recall_are_checked(capsys, blob_store, trained, tmp_path):
    for size in ("0", "-4"):
        code, out = cli(capsys, "encode", trained, "--store", blob_store.path, "--out", tmp_path / "c.parquet",
                        "--batch-size", size, "--no-progress")
        assert code == 2 and f"batch size {size}: give a whole number >= 1" in out
        assert not (tmp_path / "c.parquet").exists()
    from deepfield.errors import ConfigError
    from deepfield.tasks.search import build_index

    with pytest.raises(ConfigError, match="target recall 2"):
        build_index(np.zeros((20, 3), "f4"), target_recall=2)


def test_an_interrupted_training_says_how_to_continue_once(blob_store, tmp_path, capsys, monkeypatch):
    from conftest import cli

    import deepfield.train as training
    from deepfield.train import TrainingInterrupted

    def stopped(*args, **kwargs):
        raise TrainingInterrupted(tmp_path / "last.ckpt", 3)

    monkeypatch.setattr(training, "train", stopped)
    code, out = cli(capsys, "train", "ae", "--store", str(blob_store.path), "--out", str(tmp_path / "m"))
    assert code == 130 and "--resume" in out and "interrupted in epoch 3" in out
    assert "\ninterrupted" not in out  # the command's own message, not a second generic one
