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
