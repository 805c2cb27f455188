"""Killed or failed writers leave nothing that a rerun does not clear."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))


def test_killed_index_build_leaves_a_tmp_folder_that_a_rerun_clears(tmp_path):
    from deepfield.tasks.search import build_index, open_index

    script = textwrap.dedent(f"""
        import os, signal, numpy as np
        import deepfield._atomic as atomic
        from deepfield.tasks.search import build_index
        real = atomic.replace_dir
        def die(tmp, final):  # killed after the files are staged, before the rename
            os.kill(os.getpid(), signal.SIGKILL)
        import deepfield.tasks.search.index as index_module
        atomic.replace_dir = die
        build_index(np.random.default_rng(0).normal(size=(30, 4)).astype("f4"), {str(tmp_path / 'idx')!r}, kind="flat")
    """)
    r = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    stale = [p.name for p in tmp_path.iterdir() if p.name.startswith(".idx.tmp-")]
    assert len(stale) == 1
    build_index(np.random.default_rng(0).normal(size=(30, 4)).astype("f4"), tmp_path / "idx", kind="flat")
    assert len(open_index(tmp_path / "idx")) == 30
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


def test_a_live_writers_tmp_folder_is_left_alone(tmp_path):
    from deepfield.tasks.search import build_index

    live = tmp_path / f".idx.tmp-{os.getpid() + 0}"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".idx.tmp-{other.pid}"
        live.mkdir()
        build_index(np.random.default_rng(0).normal(size=(30, 4)).astype("f4"), tmp_path / "idx", kind="flat")
        assert live.is_dir()
    finally:
        other.kill()
        other.wait()


def test_parquet_encode_stages_its_codes_beside_the_output_not_in_tmp():
    # the staging folder is a hidden partial name beside OUT, so a SIGKILL leaves nothing in /tmp
    # and the next run clears it
    from pathlib import Path

    from deepfield.cli.tasks import _codes_staging

    out = Path("/data/run/codes.parquet")
    assert _codes_staging(out) == Path("/data/run/.codes.parquet.codes-partial")
