"""`deepfield demo`: stages with elapsed time and ETA, reports written as their stage finishes,
and a demo that resumes after Ctrl-C (or a stopped training run) without redoing finished work.

The demo runs here on a micro plan (80 galaxies of 16x16 pixels, 2 epochs): the full and
quick plans' sizes and speed are measured by running `deepfield demo`, not in tests.
"""

from __future__ import annotations

import json

import lightning as L
import pytest

from deepfield.demo import PLANS, STAGES, DemoInterrupted, DemoPlan, run_demo
from deepfield.errors import InputError

from conftest import cli

pytestmark = pytest.mark.usefixtures("one_thread")

MICRO = DemoPlan(n_galaxies=80, size=16, latent_dim=4, epochs=2, channels=(4, 8), hidden=(16,), workers=1,
                 vae_epochs=2, flow_epochs=2, morphology=0, depth=23.5, batch_size=32, threads=1,
                 seconds=PLANS["quick"].seconds)


class _StopInEpoch(L.Callback):
    """Ctrl-C as a user presses it: a KeyboardInterrupt in the VAE's first epoch."""

    def __init__(self):
        self.fired = False

    def on_train_epoch_end(self, trainer, pl_module):
        if not self.fired and type(pl_module.model).__name__ == "VAE":
            self.fired = True
            raise KeyboardInterrupt


def _run(out, lines, **kwargs):
    return run_demo(out, plan=MICRO, progress=False, log=lines.append, **kwargs)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A demo stopped by Ctrl-C between stages (before the VAE), then resumed; the resumed one
    stopped again inside the VAE's training, then resumed to the end."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    first: list[str] = []

    def stop_before_vae(name, when):
        if name == "vae" and when == "start":
            raise KeyboardInterrupt

    with pytest.raises(DemoInterrupted) as between:
        _run(out, first, on_stage=stop_before_vae)
    state_between = json.loads((out / "demo.json").read_text())
    reports_between = [(out / path).is_file() for path in ("report/index.html", "report-vae/index.html")]
    kept = {name: (out / path).stat().st_mtime_ns for name, path in
            (("survey", "survey"), ("pca", "models/pca"), ("conv-ae", "models/conv-ae"), ("report", "report"))}
    second: list[str] = []
    stop = _StopInEpoch()
    with pytest.raises(DemoInterrupted) as inside:
        _run(out, second, resume=True, callbacks=[stop])
    checkpoint_left = (out / "models" / ".vae.training" / "checkpoints" / "last.ckpt").is_file()
    third: list[str] = []
    report = _run(out, third, resume=True)
    return {"out": out, "between": between.value, "inside": inside.value, "first": first, "second": second,
            "third": third, "kept": kept, "checkpoint_left": checkpoint_left, "report": report, "stop": stop,
            "state_between": state_between, "reports_between": reports_between}


def test_ctrl_c_between_stages_offers_resume_and_keeps_finished_stages(interrupted):
    err = interrupted["between"]
    assert err.stage == "vae" and err.number == 6
    assert "--resume" in str(err) and str(interrupted["out"]) in str(err)
    first = interrupted["first"]
    # each report is written, and its path printed, when its stage finishes: before the VAE
    assert any(line.startswith("autoencoders report:") for line in first)
    assert interrupted["reports_between"] == [True, False]
    assert interrupted["state_between"]["done"] == ["survey", "pca", "ae", "conv-ae", "report"]


def test_resume_skips_finished_stages_and_continues_training_from_its_checkpoint(interrupted):
    second, third = interrupted["second"], interrupted["third"]
    for number, name in enumerate(["survey", "pca", "ae", "conv-ae", "report"], 1):
        assert f"stage {number}/9: {name} already done ({STAGES[number - 1][2]}), skipped" in second
    assert interrupted["stop"].fired and interrupted["inside"].stage == "vae"
    assert interrupted["checkpoint_left"]
    assert "  resuming vae from its checkpoint" in third
    assert any(line.startswith("stage 6/9: vae done in") for line in third)
    # the kept folders were not rewritten by either resumed run
    for name, path in (("survey", "survey"), ("pca", "models/pca"), ("conv-ae", "models/conv-ae"),
                       ("report", "report")):
        assert (interrupted["out"] / path).stat().st_mtime_ns == interrupted["kept"][name], name
    metrics = json.loads((interrupted["out"] / "models" / "vae" / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [0, 1]  # one epoch before the stop, one after
    for output in ("models/vae/prior", "report-vae/index.html", "samples"):
        assert (interrupted["out"] / output).exists(), output
    assert interrupted["report"] == interrupted["out"] / "report" / "index.html"
    state = json.loads((interrupted["out"] / "demo.json").read_text())
    assert state["done"] == [name for name, _, _ in STAGES]


def test_micro_demo_vae_report_says_its_posterior_collapsed(interrupted):
    # 2 epochs on 64 galaxies teach a VAE nothing (its fit warns): the page must say so
    summary = json.loads((interrupted["out"] / "report-vae" / "report.json").read_text())
    assert any(w.startswith("Posterior collapse: vae's kept epoch") for w in summary["warnings"])
    page = (interrupted["out"] / "report-vae" / "index.html").read_text()
    assert '<p class="banner">Warning: Posterior collapse' in page


def test_stage_lines_show_elapsed_time_and_eta(interrupted):
    lines = [line for line in interrupted["first"] if line.startswith("stage ")]
    starts = [line for line in lines if " done in " not in line]
    assert [line.split(":")[0] for line in starts] == [f"stage {k}/9" for k in range(1, 7)]
    assert all(" elapsed " in line and ", ETA " in line for line in lines)
    # before any stage has run, the ETA is the plan's expected total; then it is rescaled by the
    # speed measured so far, and a finished demo's last line expects nothing more
    total = sum(MICRO.seconds.values())
    assert starts[0].endswith(f"elapsed 0:00, ETA {total // 60}:{total % 60:02d}")
    done = [line for line in interrupted["third"] if " done in " in line and line.startswith("stage ")]
    assert done[-1].startswith("stage 9/9: samples done in") and done[-1].endswith("ETA 0:00")


def test_resume_refuses_a_folder_without_a_demo_or_with_another_plan(tmp_path, interrupted):
    with pytest.raises(InputError, match="nothing to resume"):
        run_demo(tmp_path / "none", resume=True, progress=False, log=lambda line: None)
    with pytest.raises(InputError, match="started with other options"):
        run_demo(interrupted["out"], quick=True, resume=True, progress=False, log=lambda line: None)


def test_cli_demo_resume_without_a_demo_is_a_usage_error(tmp_path, capsys):
    code, out = cli(capsys, "demo", "--resume", "--out", tmp_path / "none", "--no-progress")
    assert code == 2 and "nothing to resume" in out and "Traceback" not in out


def test_cli_demo_ctrl_c_offers_resume(tmp_path, capsys, monkeypatch):
    import deepfield.demo

    def interrupted_in_training(out, **kwargs):
        raise DemoInterrupted("conv-ae", 4, f"deepfield demo --resume --out {out}")

    monkeypatch.setattr(deepfield.demo, "run_demo", interrupted_in_training)
    code, out = cli(capsys, "demo", "--out", tmp_path / "d", "--no-progress")
    assert code == 130 and "Traceback" not in out
    assert f"Continue with: deepfield demo --resume --out {tmp_path / 'd'}" in out.replace("\n", "")


def test_resume_redoes_every_stage_after_a_missing_output(interrupted):
    import shutil

    # run after the fixture's demo finished: remove the prior, which the VAE report and the samples read
    weights = interrupted["out"] / "models" / "vae" / "weights.safetensors"
    vae_written = weights.stat().st_mtime_ns
    shutil.rmtree(interrupted["out"] / "models" / "vae" / "prior")
    lines: list[str] = []
    _run(interrupted["out"], lines, resume=True)
    skipped = [line.split(":")[1].split()[0] for line in lines if line.endswith(", skipped")]
    redone = [line.split(":")[1].split()[0] for line in lines if " done in " in line]
    assert skipped == ["survey", "pca", "ae", "conv-ae", "report", "vae"], lines
    assert redone == ["prior", "report-vae", "samples"], lines
    assert (interrupted["out"] / "models" / "vae" / "prior" / "metrics.json").is_file()
    assert weights.stat().st_mtime_ns == vae_written  # the VAE itself was kept
