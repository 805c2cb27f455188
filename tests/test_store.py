"""The store contract: atomic writes, resume, append, validation, selection, splits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from deepfield.data.store import copy_store, create_store, is_store, open_store, split_fractions
from deepfield.errors import InputError, StoreError


def _write(path, n=10, start=0, **kw):
    with create_store(path, (1, 4, 4), bands=("r",), pixel_scale=0.2, units={"mag": "mag"}, **kw) as w:
        w.append(x=np.arange(start, start + n, dtype="f4")[:, None, None, None] * np.ones((1, 1, 4, 4), "f4"),
                 catalog={"mag": np.linspace(20, 25, n)})
    return open_store(path)


def test_round_trip_keeps_pixels_catalog_units_and_meta(tmp_path):
    s = _write(tmp_path / "s", n=10)
    assert len(s) == 10 and s.kind == "image" and s.sample_shape == (1, 4, 4)
    assert s.bands == ("r",) and s.pixel_scale == 0.2
    np.testing.assert_array_equal(s.read("x")[:, 0, 0, 0], np.arange(10))
    np.testing.assert_array_equal(s.ids, np.arange(10))
    np.testing.assert_allclose(s.column("mag"), np.linspace(20, 25, 10))
    assert s.units == {"mag": "mag"}
    # units live in the Parquet schema itself, readable by any Parquet tool
    field = pq.read_schema(s.path / "catalog.parquet").field("mag")
    assert field.metadata[b"unit"] == b"mag"
    assert s.read("x", [7, 2, 9])[:, 0, 0, 0].tolist() == [7, 2, 9]


def test_fingerprint_depends_on_content_not_batching(tmp_path):
    a = _write(tmp_path / "a", n=8)
    with create_store(tmp_path / "b", (1, 4, 4), bands=("r",), pixel_scale=0.2, units={"mag": "mag"}) as w:
        x = np.arange(8, dtype="f4")[:, None, None, None] * np.ones((1, 1, 4, 4), "f4")
        mag = np.linspace(20, 25, 8)
        w.append(x=x[:3], catalog={"mag": mag[:3]})
        w.append(x=x[3:], catalog={"mag": mag[3:]})
    b = open_store(tmp_path / "b")
    assert a.fingerprint == b.fingerprint
    c = _write(tmp_path / "c", n=8, start=1)
    assert c.fingerprint != a.fingerprint


def test_unfinished_write_is_invisible_and_resumable(tmp_path):
    path = tmp_path / "s"
    w = create_store(path, (1, 4, 4), bands=("r",))
    w.append(x=np.zeros((5, 1, 4, 4), "f4"))
    # while that writer lives, no second writer may start (or resume) at the same path
    with pytest.raises(StoreError, match="being written by another process"):
        create_store(path, (1, 4, 4), bands=("r",), resume=True)
    del w  # the writer "dies" here (its lock goes with it): nothing at the final name
    assert not path.exists() and not is_store(path)
    with pytest.raises(StoreError, match="--resume"):
        open_store(path)
    w2 = create_store(path, (1, 4, 4), bands=("r",), resume=True)
    assert w2.n_written == 5
    with w2:
        w2.append(x=np.ones((3, 1, 4, 4), "f4"))
    s = open_store(path)
    assert len(s) == 8 and s.ids.tolist() == list(range(8))
    assert s.read("x")[:, 0, 0, 0].tolist() == [0] * 5 + [1] * 3


def test_killed_writer_process_leaves_no_store(tmp_path):
    """A real process killed mid-write (SIGKILL) leaves only the hidden partial directory."""
    path = tmp_path / "killed"
    code = textwrap.dedent(f"""
        import numpy as np, os, signal
        from deepfield.data.store import create_store
        w = create_store({str(path)!r}, (1, 8, 8))
        w.append(x=np.zeros((4, 1, 8, 8), 'f4'))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9
    assert not path.exists()
    assert (tmp_path / ".killed.partial").is_dir()
    assert (tmp_path / ".killed.lock").is_file()  # its lock file stays, but the lock died with the process
    with create_store(path, (1, 8, 8), resume=True) as w:
        assert w.n_written == 4
        w.append(x=np.ones((2, 1, 8, 8), "f4"))
    assert len(open_store(path)) == 6
    assert not (tmp_path / ".killed.lock").exists()


def test_a_second_writer_of_the_same_path_is_refused_and_the_first_finishes(tmp_path):
    """Two processes writing one store: the second is refused (new, overwrite or resume) instead
    of deleting the first one's unfinished rows, and the first commits all of its rows."""
    path, ready, go = tmp_path / "s", tmp_path / "ready", tmp_path / "go"
    code = textwrap.dedent(f"""
        import numpy as np, pathlib, time
        from deepfield.data.store import create_store
        with create_store({str(path)!r}, (1, 4, 4)) as w:
            w.append(x=np.ones((3, 1, 4, 4), 'f4'))
            pathlib.Path({str(ready)!r}).touch()
            while not pathlib.Path({str(go)!r}).exists():
                time.sleep(0.02)
            w.append(x=np.ones((2, 1, 4, 4), 'f4'))
    """)
    first = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(3000):  # up to a minute for the first writer to start
            if ready.exists() or first.poll() is not None:
                break
            time.sleep(0.02)
        assert ready.exists(), "the first writer did not start"
        for options in ({}, {"overwrite": True}, {"resume": True}):
            with pytest.raises(StoreError, match=r"s is being written by another process .*\.s\.lock"):
                create_store(path, (1, 4, 4), **options)
        assert (tmp_path / ".s.partial").is_dir()
    finally:
        go.touch()
        assert first.wait(60) == 0
    s = open_store(path)
    assert len(s) == 5 and float(s.read("x").sum()) == 5 * 16
    assert not (tmp_path / ".s.lock").exists()
    # appends take the same lock: one at a time, and the path is free again after a commit or abort
    w = create_store(path, append=True)
    with pytest.raises(StoreError, match="being written by another process"):
        create_store(path, append=True)
    w.abort()
    with create_store(path, append=True) as w:
        w.append(x=np.zeros((1, 1, 4, 4), "f4"))
    assert len(open_store(path)) == 6 and not (tmp_path / ".s.lock").exists()


def test_append_commits_atomically_and_a_killed_append_changes_nothing(tmp_path):
    s = _write(tmp_path / "s", n=4)
    before = s.fingerprint
    w = create_store(s.path, append=True)
    w.append(x=np.full((2, 1, 4, 4), 9, "f4"), catalog={"mag": [26.0, 27.0]})
    # not committed: the store still opens as it was
    again = open_store(s.path)
    assert len(again) == 4 and again.fingerprint == before
    w.commit()
    after = open_store(s.path)
    assert len(after) == 6 and after.ids.tolist() == list(range(6))
    assert after.column("mag")[-1] == 27.0 and after.units == {"mag": "mag"}
    assert after.fingerprint != before


def test_bad_input_is_refused_and_leaves_nothing(tmp_path):
    path = tmp_path / "bad"
    with pytest.raises(InputError, match=r"NaN or inf values in rows \[1\]"):
        with create_store(path, (1, 4, 4)) as w:
            x = np.zeros((3, 1, 4, 4), "f4")
            x[1, 0, 2, 2] = np.nan
            w.append(x=x)
    assert not path.exists() and not (tmp_path / ".bad.partial").exists()
    with pytest.raises(InputError, match=r"expected \(n, 1, 4, 4\)"):
        with create_store(path, (1, 4, 4)) as w:
            w.append(x=np.zeros((3, 4, 4), "f4"))
    with pytest.raises(InputError, match="one value per object"):
        with create_store(path, (1, 4, 4)) as w:
            w.append(x=np.zeros((3, 1, 4, 4), "f4"), catalog={"mag": [1.0, 2.0]})
    with pytest.raises(InputError, match="3 band names"):
        create_store(path, (1, 4, 4), bands=("g", "r", "i"))
    assert not os.listdir(tmp_path)


def test_existing_store_needs_overwrite(tmp_path):
    _write(tmp_path / "s")
    with pytest.raises(StoreError, match="overwrite"):
        create_store(tmp_path / "s", (1, 4, 4))
    s = _write(tmp_path / "s", n=3, overwrite=True)
    assert len(s) == 3


@pytest.mark.parametrize("damage", ["truncated_catalog", "corrupt_meta", "missing_array", "version", "truncated_array"])
def test_corrupt_stores_are_rejected_with_the_fix(tmp_path, damage):
    s = _write(tmp_path / "s", n=10)
    p = s.path
    if damage == "truncated_catalog":
        data = (p / "catalog.parquet").read_bytes()
        (p / "catalog.parquet").write_bytes(data[: len(data) // 2])
        match = "catalog.parquet is corrupt or truncated"
    elif damage == "corrupt_meta":
        (p / "meta.json").write_text("{ not json")
        match = "meta.json is corrupt"
    elif damage == "missing_array":
        shutil.rmtree(p / "x")
        match = "array 'x' listed in meta.json is missing"
    elif damage == "version":
        meta = json.loads((p / "meta.json").read_text())
        meta["format_version"] = 99
        (p / "meta.json").write_text(json.dumps(meta))
        match = "format version 99"
    else:
        meta = json.loads((p / "meta.json").read_text())
        meta["n"] = 50
        (p / "meta.json").write_text(json.dumps(meta))
        match = "truncated"
    with pytest.raises(StoreError, match=match):
        open_store(p)


def test_select_by_ids_and_query(tmp_path):
    s = _write(tmp_path / "s", n=10)
    assert s.select(ids=[3, 1]).tolist() == [1, 3]
    mag = s.column("mag")
    np.testing.assert_array_equal(s.select(where="mag < 22"), np.flatnonzero(mag < 22))
    np.testing.assert_array_equal(s.select(where="21 <= mag < 23 or id == 9"),
                                  np.flatnonzero(((mag >= 21) & (mag < 23)) | (np.arange(10) == 9)))
    with pytest.raises(InputError, match="no catalog column 'size'"):
        s.select(where="size > 1")
    with pytest.raises(InputError, match="unsupported expression"):
        s.select(where="__import__('os').system('true')")
    with pytest.raises(InputError, match="ids not in store"):
        s.select(ids=[99])


def test_split_is_seeded_disjoint_complete_and_stable_under_append(tmp_path):
    s = _write(tmp_path / "s", n=400)
    a = s.split((0.8, 0.1, 0.1), seed=3)
    assert sum(v.size for v in a.values()) == 400
    assert not set(a["train"]) & set(a["test"])
    assert 280 < a["train"].size < 360  # binomial(400, 0.8): 320 +- 8
    b = s.split((0.8, 0.1, 0.1), seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(s.split(seed=4)["test"], a["test"])
    with create_store(s.path, append=True) as w:
        w.append(x=np.zeros((50, 1, 4, 4), "f4"), catalog={"mag": np.full(50, 22.0)})
    grown = open_store(s.path).split((0.8, 0.1, 0.1), seed=3)
    np.testing.assert_array_equal(grown["test"][grown["test"] < 400], a["test"])
    labels = split_fractions(np.arange(100000), (0.5, 0.5), seed=0)
    assert abs(labels.mean() - 0.5) < 0.01


def test_dataset_view_returns_tensors_and_columns(blob_store):
    ds = blob_store.dataset(indices=[5, 6], arrays=("x", "truth"), columns=("magnitude",))
    item = ds[1]
    assert item["x"].shape == (1, 16, 16) and item["truth"].dtype.is_floating_point
    assert int(item["id"]) == 6
    assert float(item["magnitude"]) == pytest.approx(float(blob_store.column("magnitude")[6]), rel=1e-6)
    streamed = blob_store.dataset(indices=[5, 6], in_memory=False)
    assert np.array_equal(streamed[1]["x"].numpy(), item["x"].numpy())


def test_shared_psf_broadcasts_and_copy_keeps_everything(tmp_path):
    psf = np.zeros((1, 5, 5), "f4")
    psf[0, 2, 2] = 1
    with create_store(tmp_path / "s", (1, 4, 4), shared={"psf": psf}) as w:
        w.append(x=np.ones((6, 1, 4, 4), "f4"), catalog={"z": np.arange(6) / 10})
    s = open_store(tmp_path / "s")
    assert s.read("psf", [0, 3]).shape == (2, 1, 5, 5)
    sub = copy_store(s, tmp_path / "sub", indices=s.select(where="z > 0.25"))
    assert sub.ids.tolist() == [3, 4, 5] and sub.has("psf")
    assert sub.meta["provenance"]["source_fingerprint"] == s.fingerprint


def test_public_readers_of_shared_arrays_and_chunks(tmp_path):
    psf = np.zeros((1, 5, 5), "f4")
    psf[0, 2, 2] = 1
    with create_store(tmp_path / "s", (1, 4, 4), arrays={"ivar": (1, 4, 4)}, shared={"psf": psf}) as w:
        w.append(x=np.arange(6, dtype="f4")[:, None, None, None] * np.ones((1, 1, 4, 4), "f4"),
                 ivar=np.ones((6, 1, 4, 4), "f4"))
    s = open_store(tmp_path / "s")
    assert np.array_equal(s.read_shared("psf"), psf)  # the one PSF itself, no N axis
    with pytest.raises(InputError, match="no shared array 'ivar'.*psf"):
        s.read_shared("ivar")
    # 16 float32 pixels a row: a 2 MiB chunk holds 4096 rows (the cap), so the 6 rows share one
    assert s.chunk_rows("x") == 4096 == s.chunk_rows("ivar")
    with pytest.raises(InputError, match="no per-object array 'psf'"):
        s.chunk_rows("psf")
    streamed = s.dataset(indices=[4, 1], arrays=("x", "psf"), in_memory=False)
    assert float(streamed[0]["x"][0, 0, 0]) == 4.0 and float(streamed[1]["x"][0, 0, 0]) == 1.0
    assert np.array_equal(streamed[1]["psf"].numpy(), psf)


def test_summary_reports_band_stats(blob_store):
    summary = blob_store.summary()
    assert summary["n"] == 240 and summary["bands"] == ["r"]
    x = blob_store.read("x")
    assert summary["pixel_stats"]["r"]["mean"] == pytest.approx(float(x.mean()), rel=1e-5)
    assert summary["columns"]["half_light_radius"]["unit"] == "arcsec"


def test_reads_with_masks_and_negative_steps(tmp_path):
    psf = np.ones((1, 3, 3), "f4") / 9
    with create_store(tmp_path / "s", (1, 4, 4), shared={"psf": psf}) as w:
        w.append(x=np.arange(5, dtype="f4")[:, None, None, None] * np.ones((1, 1, 4, 4), "f4"))
    s = open_store(tmp_path / "s")
    mask = np.array([True, False, True, False, False])
    assert s.read("psf", mask).shape == (2, 1, 3, 3)
    assert s.read("x", mask)[:, 0, 0, 0].tolist() == [0, 2]
    assert s.read("x", slice(None, None, -1))[:, 0, 0, 0].tolist() == [4, 3, 2, 1, 0]
    assert s.read("x", slice(0, 5, 2))[:, 0, 0, 0].tolist() == [0, 2, 4]


def test_bad_batch_while_resuming_keeps_the_earlier_batches(tmp_path):
    path = tmp_path / "s"
    w = create_store(path, (1, 4, 4), provenance={"seed": 1})
    w.append(x=np.zeros((4, 1, 4, 4), "f4"))
    del w  # the writer dies, releasing its lock
    with pytest.raises(InputError):
        with create_store(path, (1, 4, 4), provenance={"seed": 1}, resume=True) as w2:
            w2.append(x=np.full((2, 1, 4, 4), np.nan, "f4"))
    with create_store(path, (1, 4, 4), provenance={"seed": 1}, resume=True) as w3:
        assert w3.n_written == 4
    with pytest.raises(StoreError, match="cannot resume"):  # another simulation's settings
        create_store(tmp_path / "t", (1, 4, 4), provenance={"seed": 1}).append(x=np.zeros((1, 1, 4, 4), "f4")) or \
            create_store(tmp_path / "t", (1, 4, 4), provenance={"seed": 2}, resume=True)


def test_stale_progress_record_is_ignored_by_the_next_append(tmp_path):
    """A crash between commit's rename and its clean-up leaves a record the next append must not reuse."""
    s = _write(tmp_path / "s", n=4)
    w = create_store(s.path, append=True)
    w.append(x=np.ones((3, 1, 4, 4), "f4"), catalog={"mag": [1.0, 2.0, 3.0]})  # abandoned, never committed
    del w  # its process dies, releasing the lock
    with create_store(s.path, append=True) as w2:
        assert w2.n_written == 4
        w2.append(x=np.ones((1, 1, 4, 4), "f4"), catalog={"mag": [9.0]})
    after = open_store(s.path)
    assert len(after) == 5 and after.column("mag")[-1] == 9.0
    assert not (s.path / "_progress").exists()
