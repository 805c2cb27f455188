"""A full disk: a named error with the path and the space needed, and no partial output left."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from deepfield.data.store import create_store
from deepfield.errors import StoreError


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a 1 MB tmpfs here ({r.stderr.strip() or 'mount failed'}): needs root "
                    "and CAP_SYS_ADMIN")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_full_disk_names_path_and_space_and_removes_the_partial(small_disk):
    out = small_disk / "s"
    x = np.random.default_rng(0).normal(size=(200, 1, 64, 64)).astype("f4")  # 3.3 MB of noise
    with pytest.raises(StoreError, match=r"no space left.*s.*MB"):
        with create_store(out, (1, 64, 64), bands=("r",)) as w:
            for i in range(0, 200, 50):
                w.append(x=x[i:i + 50])
    assert sorted(os.listdir(small_disk)) == []
