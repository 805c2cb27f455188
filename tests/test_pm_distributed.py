"""Sharded particle mesh: two gloo processes on CPU give the single-process final field and its
gradient (float32 round-off), and a mesh that does not split into slabs is refused."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from deepfield.errors import InputError
from deepfield.physics.cosmology import Planck18, linear_power
from deepfield.physics.pm import linear_field, simulate

N, BOX, STEPS = 16, 64.0, 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights() -> torch.Tensor:
    return torch.randn(N, N, N, generator=torch.Generator().manual_seed(3))


def _worker(rank: int, world: int, port: int, out: str, force_resolution: int) -> None:
    from deepfield.physics.pm_distributed import simulate_distributed

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        rows = N // world
        field = linear_field(N, BOX, lambda k: linear_power(Planck18, k), 0)
        slab = field[rank * rows:(rank + 1) * rows].clone().requires_grad_(True)
        sim = simulate_distributed(Planck18, N, slab, n_steps=STEPS, force_resolution=force_resolution)
        loss = (sim.density * _weights()[rank * rows:(rank + 1) * rows]).sum()
        loss.backward()
        torch.save({"density": sim.density.detach(), "grad": slab.grad, "n_particles": sim.positions.shape[0]},
                   f"{out}/rank{rank}.pt")
        try:
            simulate_distributed(Planck18, (15, 16, 16), torch.zeros(7, 16, 16))
        except InputError as err:
            torch.save(str(err), f"{out}/error{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("force_resolution", [1, 2])
def test_two_gloo_processes_give_the_single_process_field_and_gradient(tmp_path, force_resolution):
    world = 2
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path), force_resolution), nprocs=world)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    density = torch.cat([p["density"] for p in parts])
    grad = torch.cat([p["grad"] for p in parts])
    assert sum(p["n_particles"] for p in parts) == N ** 3
    assert parts[0]["n_particles"] != N ** 3 // world  # particles did cross between slabs

    field = linear_field(N, BOX, lambda k: linear_power(Planck18, k), 0).requires_grad_(True)
    single = simulate(Planck18, N, BOX, initial_field=field, n_steps=STEPS, force_resolution=force_resolution)
    (single.density * _weights()).sum().backward()
    np.testing.assert_allclose(density, single.density.detach(), rtol=0, atol=1e-4)  # values up to ~35
    assert float((density - single.density.detach()).abs().mean()) < 1e-5
    scale = float(field.grad.abs().max())
    np.testing.assert_allclose(grad, field.grad, rtol=0, atol=2e-5 * scale)
    assert "mesh (15, 16, 16) cannot be split into 2 slabs" in torch.load(tmp_path / "error0.pt")


def test_distributed_simulation_needs_an_initialised_group():
    from deepfield.physics.pm_distributed import simulate_distributed

    with pytest.raises(InputError, match="torch.distributed is not initialised"):
        simulate_distributed(Planck18, 16, torch.zeros(8, 16, 16))
