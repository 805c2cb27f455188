"""`deepfield simulate nbody`: a store of PM density slices with the cosmology in the catalog,
varied per simulation, resumable after a crash, and its CLI."""

from __future__ import annotations

import numpy as np
import pytest

import deepfield.data.store as store_module
from conftest import cli
from deepfield.data.nbody import parse_vary, simulate_nbody
from deepfield.data.store import open_store
from deepfield.errors import InputError, StoreError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_slices_store_holds_mean_one_slices_and_varied_cosmology(tmp_path):
    store = simulate_nbody(tmp_path / "s", 2, mesh=8, box_size=64.0, n_steps=2, seed=1, slice_thickness=32.0,
                           vary={"sigma8": (0.7, 0.9)})
    assert len(store) == 4 and store.sample_shape == (1, 8, 8)  # 2 sims x 2 slabs of 4 cells (8 Mpc/h each)
    x = store.read("x")
    # 1 + delta averages to 1 over each simulation's slabs (a slab's own mean holds its mass excess)
    np.testing.assert_allclose(x.reshape(2, -1).mean(1), 1.0, rtol=1e-5)
    assert float(np.abs(x.mean(axis=(1, 2, 3)) - 1).max()) > 1e-3
    assert (x >= 0).all()
    sigma8 = store.column("sigma8")
    assert sigma8[0] == sigma8[1] and sigma8[2] == sigma8[3] and sigma8[0] != sigma8[2]
    assert ((0.7 <= sigma8) & (sigma8 <= 0.9)).all()
    np.testing.assert_array_equal(store.column("sim"), [0, 0, 1, 1])
    np.testing.assert_array_equal(store.column("slice"), [0, 1, 0, 1])
    assert store.units["box_size"] == "Mpc/h"
    assert store.meta["extra"]["box_size_mpc_h"] == 64.0
    # 3-D fields: one row per simulation, the same first simulation as above (same seed)
    fields = simulate_nbody(tmp_path / "f", 1, mesh=8, box_size=64.0, n_steps=2, seed=1,
                            vary={"sigma8": (0.7, 0.9)})
    cube = fields.read("x")[0]
    np.testing.assert_allclose(cube.reshape(2, 4, 8, 8).mean(1), x[:2, 0], rtol=1e-6)


def test_killed_write_resumes_to_the_same_store(tmp_path, monkeypatch):
    reference = simulate_nbody(tmp_path / "ref", 3, mesh=8, box_size=64.0, n_steps=2, seed=4, slice_thickness=32.0)
    out = tmp_path / "crash"
    real_append = store_module.StoreWriter.append
    calls = {"n": 0}

    def crashing_append(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash while writing the second simulation")
        return real_append(self, *args, **kwargs)

    monkeypatch.setattr(store_module.StoreWriter, "append", crashing_append)
    with pytest.raises(RuntimeError, match="simulated crash"):
        simulate_nbody(out, 3, mesh=8, box_size=64.0, n_steps=2, seed=4, slice_thickness=32.0)
    monkeypatch.undo()
    with pytest.raises(StoreError, match="--resume"):
        open_store(out)
    resumed = simulate_nbody(out, 3, mesh=8, box_size=64.0, n_steps=2, seed=4, slice_thickness=32.0, resume=True)
    assert len(resumed) == 6
    assert resumed.fingerprint == reference.fingerprint


@pytest.mark.parametrize("kwargs, message", [
    ({"slice_thickness": 12.0}, "slice thickness 12.0 Mpc/h is 1.5 cells"),
    ({"box_size": -1.0}, "box_size=-1.0"),
    ({"n_steps": 0}, "n_steps=0"),
    ({"vary": {"sigma": (0.7, 0.9)}}, "vary names 'sigma'"),
])
def test_bad_simulation_settings_are_refused(tmp_path, kwargs, message):
    args = dict(mesh=8, box_size=64.0, n_steps=2)
    args.update(kwargs)
    with pytest.raises(InputError, match=message):
        simulate_nbody(tmp_path / "bad", 1, **args)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(InputError, match="NAME=LOW:HIGH"):
        parse_vary("sigma8=0.9")


def test_cli_simulate_nbody(tmp_path, capsys):
    out = tmp_path / "cli"
    code, text = cli(capsys, "simulate", "nbody", out, "--n-sims", 1, "--mesh", 8, "--box", 64, "--steps", 2,
                     "--slices", 32, "--vary", "Omega_c=0.2:0.3", "--no-progress")
    assert code == 0, text
    store = open_store(out)
    assert len(store) == 2 and 0.2 <= store.column("Omega_c")[0] <= 0.3
    code, text = cli(capsys, "simulate", "nbody", tmp_path / "x", "--n-sims", 1, "--mesh", 8, "--box", 64,
                     "--slices", 24, "--no-progress")
    assert code == 2 and "whole number of cells" in text
