"""Particle-mesh N-body simulations into a store: final density fields or projected slices.

Each simulation draws a linear field (Eisenstein & Hu P(k), its own seed), runs 2LPT to
a = 0.1 and FastPM kick-drift-kick steps to a = 1 (:func:`deepfield.physics.pm.simulate`), and
writes its final density ``1 + delta`` (mean 1):

- without slices: one row per simulation, ``x`` of shape (mesh, mesh, mesh) (an "image" whose
  channel axis is the mesh's axis 0);
- with ``slice_thickness`` (Mpc/h): the field is projected along axis 0 onto slabs of that
  thickness, one row per slab, ``x`` of shape (1, mesh, mesh): the mean of ``1 + delta`` over
  the slab (mean 1), as Rodriguez et al. (2018) trained their GAN on.

Catalog columns (one row per field or slice): ``sim``, ``slice`` (-1 for 3-D fields), the
cosmology (``Omega_c``, ``Omega_b``, ``Omega_m``, ``h``, ``n_s``, ``sigma8``, ``w0``, ``wa``),
``box_size`` and ``slice_thickness`` (Mpc/h), ``seed``. ``meta.extra`` holds the mesh, box,
steps and base cosmology. Parameters named in `vary` are drawn uniformly per simulation, so a
conditional emulator can learn them.

Simulation i uses the seed ``SeedSequence([seed, i])``: the same store whatever the order or
interruption; a killed write continues with ``resume=True``, skipping the simulations written.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import numpy as np

from deepfield.errors import InputError

__all__ = ["simulate_nbody", "parse_vary"]

_COSMO_FIELDS = ("Omega_c", "Omega_b", "h", "n_s", "sigma8", "w0", "wa")
_UNITS = {"box_size": "Mpc/h", "slice_thickness": "Mpc/h", "Omega_c": "", "Omega_b": "", "Omega_m": "",
          "h": "", "n_s": "", "sigma8": "", "w0": "", "wa": ""}


def parse_vary(text: str | None) -> dict[str, tuple[float, float]]:
    """``"sigma8=0.7:0.9,Omega_c=0.2:0.3"`` -> {"sigma8": (0.7, 0.9), "Omega_c": (0.2, 0.3)}."""
    if not text:
        return {}
    out = {}
    for item in text.split(","):
        name, _, span = item.strip().partition("=")
        lo, _, hi = span.partition(":")
        if name not in _COSMO_FIELDS or not lo or not hi:
            raise InputError(f"--vary item {item!r}: write NAME=LOW:HIGH with NAME one of {', '.join(_COSMO_FIELDS)}")
        try:
            low, high = float(lo), float(hi)
        except ValueError:
            raise InputError(f"--vary item {item!r}: LOW and HIGH must be numbers") from None
        if not low < high:
            raise InputError(f"--vary item {item!r}: LOW must be below HIGH")
        out[name] = (low, high)
    return out


def _cosmology_of(index: int, seed: int, base, vary: Mapping[str, tuple[float, float]]):
    if not vary:
        return base
    rng = np.random.default_rng([seed, index, 1])
    draws = {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in sorted(vary.items())}
    return dataclasses.replace(base, **draws)


def simulate_nbody(out: str | os.PathLike, n_sims: int, *, mesh: int = 64, box_size: float = 256.0,
                   n_steps: int = 10, seed: int = 0, slice_thickness: float | None = None,
                   cosmology=None, vary: Mapping[str, tuple[float, float]] | None = None,
                   force_resolution: int = 1, overwrite: bool = False, resume: bool = False,
                   progress: bool = False):
    """Run `n_sims` PM simulations and write their final densities to a store at `out`.

    Arguments:
        out: store directory to create.
        n_sims: number of simulations (>= 1).
        mesh: particles and cells per side.
        box_size: side of the box in Mpc/h.
        n_steps: FastPM KDK steps from a = 0.1 to 1.
        seed: base seed (simulation i uses SeedSequence([seed, i])).
        slice_thickness: project onto slabs this thick (Mpc/h; a whole number of cells that
            divides the mesh); None stores the 3-D fields.
        cosmology: the base :class:`~deepfield.physics.cosmology.Cosmology` (default Planck18).
        vary: {parameter: (low, high)} drawn uniformly per simulation, e.g. {"sigma8": (0.7, 0.9)}.
        force_resolution: B >= 1, force mesh B times finer than the particle grid.
        overwrite: replace an existing store at `out`.
        resume: finish an interrupted write of the same simulations at `out`.
        progress: show a progress bar (stderr).

    Returns:
        The committed :class:`~deepfield.data.store.Store`.
    """
    import torch

    from deepfield.progress import progress_task
    from deepfield.data.store import create_store
    from deepfield.physics.cosmology import Planck18
    from deepfield.physics.pm import simulate
    from deepfield.physics.statistics import project_slices

    if isinstance(n_sims, bool) or not isinstance(n_sims, int) or n_sims < 1:
        raise InputError(f"n_sims={n_sims!r}: run at least one simulation (--n-sims 1 or more)")
    if isinstance(mesh, bool) or not isinstance(mesh, int) or mesh < 4:
        raise InputError(f"mesh={mesh!r}: pass at least 4 cells per side (--mesh 64)")
    if not (isinstance(box_size, (int, float)) and box_size > 0):
        raise InputError(f"box_size={box_size!r} must be a positive length in Mpc/h (--box 256)")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise InputError(f"n_steps={n_steps!r}: pass a positive number of KDK steps (--steps 10)")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed={seed!r}: use a non-negative integer seed")
    cell = box_size / mesh
    thickness_cells = None
    if slice_thickness is not None:
        cells = slice_thickness / cell
        thickness_cells = int(round(cells))
        if slice_thickness <= 0 or abs(cells - thickness_cells) > 1e-6 or thickness_cells < 1 or \
                mesh % thickness_cells:
            raise InputError(f"slice thickness {slice_thickness} Mpc/h is {cells:g} cells of {cell:g} Mpc/h: pass a "
                             f"whole number of cells that divides the mesh's {mesh} (e.g. --slices {cell * 4:g})")
    base = cosmology if cosmology is not None else Planck18
    vary = dict(vary or {})
    for name in vary:
        if name not in _COSMO_FIELDS:
            raise InputError(f"vary names {name!r}: choose among {', '.join(_COSMO_FIELDS)}")
    rows_per_sim = 1 if thickness_cells is None else mesh // thickness_cells
    sample_shape = (mesh, mesh, mesh) if thickness_cells is None else (1, mesh, mesh)
    parameters = {"n_sims": n_sims, "mesh": mesh, "box_size": float(box_size), "n_steps": n_steps, "seed": seed,
                  "slice_thickness": slice_thickness, "cosmology": base.as_dict(),
                  "vary": {k: list(v) for k, v in sorted(vary.items())}, "force_resolution": force_resolution}
    provenance = {"simulator": "deepfield.data.nbody.simulate_nbody", "parameters": parameters, "seed": seed,
                  "torch_version": torch.__version__}
    extra = {"density": "1 + delta, CIC on the particle grid" + ("" if thickness_cells is None else
                                                                  ", averaged over each slab along axis 0"),
             "mesh": mesh, "box_size_mpc_h": float(box_size), "cell_mpc_h": cell, "n_steps": n_steps,
             "a_start": 0.1, "a_end": 1.0, "lpt_order": 2, "force_resolution": force_resolution,
             "slice_thickness_mpc_h": slice_thickness, "slices_per_simulation": rows_per_sim,
             "cosmology": base.as_dict(), "transfer_function": "Eisenstein & Hu 1998 (with BAO)"}
    writer = create_store(out, sample_shape, kind="image", units=_UNITS, provenance=provenance,
                          extra_meta=extra, overwrite=overwrite, resume=resume)
    done = writer.n_written // rows_per_sim
    bar, task = progress_task(progress, n_sims, "simulations", completed=done)
    with writer, bar:
        for i in range(done, n_sims):
            cosmo = _cosmology_of(i, seed, base, vary)
            sim_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
            with torch.no_grad():
                result = simulate(cosmo, mesh, float(box_size), seed=sim_seed, n_steps=n_steps,
                                  force_resolution=force_resolution)
            density = result.density
            if thickness_cells is None:
                x = density[None].numpy()
                slice_index = np.array([-1])
            else:
                x = project_slices(density, thickness_cells, axis=0)[:, None].numpy()
                slice_index = np.arange(rows_per_sim)
            params = cosmo.as_dict()
            catalog = {"sim": np.full(rows_per_sim, i), "slice": slice_index,
                       **{k: np.full(rows_per_sim, params[k]) for k in _COSMO_FIELDS},
                       "Omega_m": np.full(rows_per_sim, params["Omega_c"] + params["Omega_b"]),
                       "box_size": np.full(rows_per_sim, float(box_size)),
                       "slice_thickness": np.full(rows_per_sim, float(slice_thickness or box_size)),
                       "seed": np.full(rows_per_sim, sim_seed, dtype=np.int64)}
            writer.append(x=x.astype(np.float32), catalog=catalog)
            bar.advance(task, 1)
    return writer.store
