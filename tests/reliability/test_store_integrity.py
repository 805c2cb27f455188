"""Integrity on read: a store whose chunks are missing or corrupt is refused, never served as zeros."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from deepfield.data.store import create_store, open_store
from deepfield.errors import StoreError


def _write(path, n=300, seed=0):
    rng = np.random.default_rng(seed)
    # (1, 64, 64) float32 rows: 128 rows per chunk, so 300 rows make 3 chunks of x
    with create_store(path, (1, 64, 64), bands=("r",), pixel_scale=0.2) as w:
        w.append(x=rng.normal(size=(n, 1, 64, 64)).astype("f4"), catalog={"mag": rng.uniform(18, 24, n)})
    return path


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-m", "deepfield", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=120)


def test_deleted_chunk_is_refused_naming_array_chunk_and_fix(tmp_path):
    path = _write(tmp_path / "s")
    os.remove(path / "x" / "c" / "1" / "0" / "0" / "0")
    with pytest.raises(StoreError, match=r"array 'x'.*chunk 1 \(rows 128-255\).*re-create"):
        open_store(path)


def test_all_zero_rows_are_not_mistaken_for_missing_chunks(tmp_path):
    # zarr may leave an all-fill-value chunk unwritten; the stored digests tell it from a lost one
    with create_store(tmp_path / "z", (1, 4, 4), bands=("r",)) as w:
        w.append(x=np.zeros((5, 1, 4, 4), "f4"))
    assert len(open_store(tmp_path / "z")) == 5
    assert open_store(tmp_path / "z").verify() == []


def test_corrupt_chunk_is_found_by_verify_and_cli_exits_2(tmp_path):
    path = _write(tmp_path / "s")
    s = open_store(path)
    assert s.verify() == []
    assert _cli("verify", path).returncode == 0
    # overwrite the chunk with another chunk's bytes: it decodes fine but holds the wrong pixels
    chunk = path / "x" / "c" / "2" / "0" / "0" / "0"
    chunk.write_bytes((path / "x" / "c" / "0" / "0" / "0" / "0").read_bytes())
    bad = open_store(path).verify()
    assert bad == list(range(256, 300))
    r = _cli("verify", path)
    assert r.returncode == 2, r.stderr
    assert "rows 256-299" in (r.stdout + r.stderr) and "re-create" in (r.stdout + r.stderr).lower()
    assert "Traceback" not in r.stderr


def test_truncated_chunk_is_a_named_error_on_read_and_verify(tmp_path):
    path = _write(tmp_path / "s")
    chunk = path / "x" / "c" / "1" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:100])
    s = open_store(path)
    with pytest.raises(StoreError, match=r"array 'x'.*cannot be read.*deepfield verify"):
        s.read("x", slice(120, 140))
    assert s.verify()[:1] == [128]
    r = _cli("verify", path)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_encode_refuses_a_store_with_a_lost_chunk(tmp_path):
    path = _write(tmp_path / "s")
    os.remove(path / "x" / "c" / "0" / "0" / "0" / "0")
    r = _cli("info", path)
    assert r.returncode == 2 and "chunk 0" in (r.stdout + r.stderr)
