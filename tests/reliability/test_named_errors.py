"""Bad inputs end in a named error (exit 2 through the CLI) that names the file, the value and the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from deepfield.data.store import create_store, open_store
from deepfield.errors import InputError, StoreError


def _write(path, n=10, seed=0):
    rng = np.random.default_rng(seed)
    with create_store(path, (1, 8, 8), bands=("r",), pixel_scale=0.2, units={"mag": "mag"}) as w:
        w.append(x=rng.normal(size=(n, 1, 8, 8)).astype("f4"), catalog={"mag": rng.uniform(18, 24, n)})
    return path


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-m", "deepfield", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.mark.parametrize("meta", [[1, 2, 3], "MUTATE_N"])
def test_malformed_meta_json_is_a_named_error(tmp_path, meta):
    path = _write(tmp_path / "s", n=10)
    m = json.loads((path / "meta.json").read_text())
    if meta == "MUTATE_N":
        m["n"] = "abc"
        meta = m
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="meta.json"):
        open_store(path)
    r = _cli("info", path)
    assert r.returncode == 2 and "meta.json" in (r.stdout + r.stderr) and "Traceback" not in r.stderr


def test_comparing_a_number_column_with_a_string_is_a_named_error(tmp_path):
    s = open_store(_write(tmp_path / "s"))
    with pytest.raises(InputError, match=r"mag.*'abc'.*number"):
        s.select(where="mag < 'abc'")


def test_deeply_nested_query_is_refused_with_a_depth_limit(tmp_path):
    s = open_store(_write(tmp_path / "s"))
    with pytest.raises(InputError, match="nested"):
        s.select(where="(" * 500 + "mag < 20" + ")" * 500)
    with pytest.raises(InputError, match="nested"):
        s.select(where="not " * 400 + "mag < 20")
    with pytest.raises(InputError, match="nested"):
        s.select(where="-" * 20000 + "mag < 20")
    # an ordinary query still works
    assert len(s.select(where="((mag < 30))")) == 10


def _index(tmp_path):
    from deepfield.tasks.search import build_index

    codes = np.random.default_rng(1).normal(size=(40, 4)).astype("f4")
    build_index(codes, tmp_path / "idx", kind="flat")
    return tmp_path / "idx"


@pytest.mark.parametrize("damage", ["meta_garbage", "meta_list", "meta_no_count", "faiss_truncated",
                                    "ids_object", "catalog_garbage"])
def test_corrupt_index_files_are_named_errors(tmp_path, damage):
    from deepfield.tasks.search import open_index

    idx = _index(tmp_path)
    assert len(open_index(idx)) == 40
    if damage == "meta_garbage":
        (idx / "meta.json").write_text("{not json")
    elif damage == "meta_list":
        (idx / "meta.json").write_text("[1, 2]")
    elif damage == "meta_no_count":
        m = json.loads((idx / "meta.json").read_text())
        m["count"] = "many"
        (idx / "meta.json").write_text(json.dumps(m))
    elif damage == "faiss_truncated":
        raw = (idx / "index.faiss").read_bytes()
        (idx / "index.faiss").write_bytes(raw[: len(raw) // 3])
    elif damage == "ids_object":
        np.save(idx / "ids.npy", np.array([{"a": 1}] * 40, dtype=object), allow_pickle=True)
    elif damage == "catalog_garbage":
        (idx / "catalog.parquet").write_bytes(b"PAR1 garbage")
    name = {"meta_garbage": "meta.json", "meta_list": "meta.json", "meta_no_count": "meta.json",
            "faiss_truncated": "index.faiss", "ids_object": "ids.npy", "catalog_garbage": "catalog.parquet"}[damage]
    with pytest.raises(StoreError, match=rf"{name}.*rebuild"):
        open_index(idx)
    r = _cli("search", idx, "--id", "3")
    assert r.returncode == 2, r.stderr
    assert name in r.stderr and "Traceback" not in r.stderr


def test_object_dtype_npy_query_image_is_a_named_error(tmp_path):
    from deepfield.tasks.search import read_image_file

    bad = tmp_path / "q.npy"
    np.save(bad, np.array([None, "x"], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"q.npy.*object.*float"):
        read_image_file(bad)
    text = tmp_path / "t.npy"
    np.save(text, np.array(["a", "b"]))
    with pytest.raises(InputError, match=r"t.npy.*<U1.*float"):
        read_image_file(text)
    r = _cli("search", _index(tmp_path), "--image", bad)
    assert r.returncode == 2 and "q.npy" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("provenance, advice, wrong", [
    ({"importer": "deepfield.data.importers.import_data", "source": "cat.fits"},
     r"rerun the same `deepfield import`.*starts .*afresh", "--resume"),
    ({"simulator": "deepfield.data.galaxies.simulate_galaxies"}, r"--resume", None),
])
def test_unfinished_write_hint_is_true_for_its_writer(tmp_path, provenance, advice, wrong):
    w = create_store(tmp_path / "s", (1, 4, 4), bands=("r",), provenance=provenance)
    w.append(x=np.ones((3, 1, 4, 4), "f4"))
    w.release()  # as a killed writer leaves it: partial, unlocked
    with pytest.raises(StoreError, match=advice) as err:
        open_store(tmp_path / "s")
    if wrong:
        assert wrong not in str(err.value)
