"""deepfield's particle mesh against JaxPM, side by side, from the same initial field.

For each mesh (32^3 and 64^3 by default, box 4 Mpc/h per cell, Planck 2018):

- one linear field is drawn (deepfield's ``linear_field``, Eisenstein & Hu P(k)) and handed to
  both codes as it is;
- both run 2LPT to a = 0.1, then 10 FastPM kick-drift-kick steps equally spaced in a to a = 1,
  CIC forces on the particle grid (B = 1: JaxPM has no finer force mesh) with the 4-point
  finite-difference gradient (JaxPM's default), float32. JaxPM 0.1.6 ships no fixed-step
  integrator (only an ODE right-hand side for diffrax), so its side is JaxPM's own ``lpt``,
  ``pm_forces`` and FastPM growth functions (``Gf``, ``dGfa``, ``growth_factor``) stepped by the
  FastPM KDK update in a ``jax.jit``-compiled function: the one a JaxPM user writes;
- the final fields (CIC, mean 1) are compared: ``msre`` the mean over k bins of
  (P_deepfield / P_jaxpm - 1)^2 (all bins up to Nyquist; target < 1e-3), and the
  cross-correlation coefficient r(k) (target > 0.99 for k < 0.5 h/Mpc);
- speed: wall time of one simulation after warm-up, median of `--rounds` interleaved rounds
  (deepfield, JaxPM, deepfield, ...; target <= 1.0x JaxPM's); time to first result in a fresh
  process (imports excluded, JaxPM's compile and deepfield's growth-ODE solve included); peak
  resident memory of that fresh process over its size after imports and field creation.

Both engines use every core: torch.set_num_threads(os.cpu_count()) and XLA's default pool.
The machine may be shared: the load average is recorded with the result.

JaxPM needs ``pip install jaxpm packaging``; its jax_cosmo 0.1.0 imports ``pkg_resources``,
gone from setuptools >= 81: run this script from a virtual environment with
``setuptools<81`` (``python -m venv --system-site-packages V && V/bin/pip install
'setuptools<81'``) if ``import jax_cosmo`` fails.

Usage::

    python benchmarks/pm.py --meshes 32 64 --rounds 5

Writes benchmarks/results/pm.json and pm.md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_results  # noqa: E402

A_START, A_END, N_STEPS = 0.1, 1.0, 10
CELL = 4.0  # Mpc/h per cell
SEED = 42
PLANCK18 = dict(Omega_c=0.2607, Omega_b=0.0490, h=0.6766, n_s=0.9665, sigma8=0.8102, w0=-1.0, wa=0.0)


def initial_field(n: int) -> np.ndarray:
    import torch

    from deepfield.physics.cosmology import Cosmology, linear_power
    from deepfield.physics.pm import linear_field

    cosmo = Cosmology(**PLANCK18)
    return linear_field(n, n * CELL, lambda k: linear_power(cosmo, k), SEED, dtype=torch.float32).numpy()


def deepfield_runner(n: int):
    """A function field -> final density (numpy), running deepfield's simulate."""
    import torch

    from deepfield.physics.cosmology import Cosmology
    from deepfield.physics.pm import simulate

    torch.set_num_threads(os.cpu_count() or 1)
    cosmo = Cosmology(**PLANCK18)

    def run(field: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            sim = simulate(cosmo, n, n * CELL, initial_field=torch.from_numpy(field), a_start=A_START,
                           a_end=A_END, n_steps=N_STEPS, lpt_order=2)
        return sim.density.numpy()

    return run


def jaxpm_runner(n: int):
    """A function field -> final density (numpy), running JaxPM's pieces with FastPM KDK steps."""
    import jax
    import jax.numpy as jnp
    import jax_cosmo as jc
    from jaxpm.growth import Gf, dGfa, growth_factor
    from jaxpm.painting import cic_paint
    from jaxpm.pm import lpt, pm_forces

    mesh = (n, n, n)
    a_steps = np.linspace(A_START, A_END, N_STEPS + 1)

    def cosmology():
        return jc.Cosmology(Omega_c=PLANCK18["Omega_c"], Omega_b=PLANCK18["Omega_b"], h=PLANCK18["h"],
                            n_s=PLANCK18["n_s"], sigma8=PLANCK18["sigma8"], Omega_k=0.0, w0=PLANCK18["w0"],
                            wa=PLANCK18["wa"])

    @jax.jit
    def run_jit(field):
        # a fresh jax_cosmo object inside the trace: its growth cache (_workspace) then holds tracers
        # of this trace only (sharing one object with jc.power is what raises KeyError 'h')
        cosmo = cosmology()
        grid = jnp.stack(jnp.meshgrid(*[jnp.arange(s, dtype=jnp.float32) for s in mesh], indexing="ij"), -1)
        dx, p, _ = lpt(cosmo, field, particles=grid, a=A_START, order=2)
        x = grid + dx

        def force(x, a):
            e = jnp.sqrt(jc.background.Esqr(cosmo, a))
            return 1.5 * cosmo.Omega_m * pm_forces(x, mesh_shape=mesh) / (a ** 2 * e)

        def growth(a):
            return growth_factor(cosmo, jnp.atleast_1d(a))[0]

        def gf(a):
            return Gf(cosmo, jnp.atleast_1d(a))[0]

        def dgf(a):
            return dGfa(cosmo, jnp.atleast_1d(a))[0]

        f = force(x, a_steps[0])
        for ai, af in zip(a_steps[:-1], a_steps[1:]):
            ah = (ai + af) / 2
            p = p + f * ((gf(ah) - gf(ai)) / dgf(ai))
            x = x + p * ((growth(af) - growth(ai)) / gf(ah))
            f = force(x, af)
            p = p + f * ((gf(af) - gf(ah)) / dgf(af))
        return cic_paint(jnp.zeros(mesh), x)

    def run(field: np.ndarray) -> np.ndarray:
        out = run_jit(jnp.asarray(field))
        return np.asarray(out.block_until_ready())

    return run


def compare(a: np.ndarray, b: np.ndarray, n: int) -> dict:
    import torch

    from deepfield.physics.statistics import coherence, power_spectrum

    box = n * CELL
    ta, tb = torch.from_numpy(a.astype(np.float64)) - 1, torch.from_numpy(b.astype(np.float64)) - 1
    pa, pb = power_spectrum(ta, box), power_spectrum(tb, box)
    rel = (pa.power / pb.power - 1).numpy()
    r = coherence(ta, tb, box)
    low = (r.k < 0.5).numpy()
    return {"msre": float(np.mean(rel ** 2)), "max_abs_relative_pk_error": float(np.abs(rel).max()),
            "min_r_k_below_0.5": float(r.power.numpy()[low].min()),
            "k": pa.k.numpy().round(4).tolist(), "pk_ratio": (pa.power / pb.power).numpy().round(5).tolist(),
            "r": r.power.numpy().round(6).tolist(), "max_abs_density_difference": float(np.abs(a - b).max())}


def fresh_process(engine: str, n: int) -> dict:
    """Time to first result and peak memory of one simulation in a new Python process."""
    out = subprocess.run([sys.executable, __file__, "--child", engine, "--meshes", str(n)],
                         capture_output=True, text=True, check=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(engine: str, n: int) -> None:
    field = initial_field(n)
    runner = deepfield_runner(n) if engine == "deepfield" else jaxpm_runner(n)
    # the resident set now (not its high-water mark, which imports may have raised above it)
    base = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024
    t0 = time.perf_counter()
    runner(field)
    first = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"first_result_s": first, "peak_rss_mib": peak / 1024, "rss_growth_mib": (peak - base) / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meshes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", choices=["deepfield", "jaxpm"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.meshes[0])
        return

    import jax
    import jaxpm
    import torch

    results, rows = [], []
    for n in args.meshes:
        cold = {engine: fresh_process(engine, n) for engine in ("deepfield", "jaxpm")}
        field = initial_field(n)
        runners = {"deepfield": deepfield_runner(n), "jaxpm": jaxpm_runner(n)}
        finals = {name: run(field) for name, run in runners.items()}  # warm-up (and JaxPM's compile)
        times = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, run in runners.items():
                t0 = time.perf_counter()
                run(field)
                times[name].append(time.perf_counter() - t0)
        accuracy = compare(finals["deepfield"], finals["jaxpm"], n)
        wall = {name: float(np.median(t)) for name, t in times.items()}
        entry = {"mesh": n, "box_mpc_h": n * CELL, "wall_s": wall, "wall_s_all": times,
                 "speed_ratio_deepfield_over_jaxpm": wall["deepfield"] / wall["jaxpm"],
                 "first_result_s": {k: v["first_result_s"] for k, v in cold.items()},
                 "peak_rss_mib": {k: v["peak_rss_mib"] for k, v in cold.items()},
                 "rss_growth_mib": {k: v["rss_growth_mib"] for k, v in cold.items()},
                 **accuracy}
        results.append(entry)
        rows.append([f"{n}^3", accuracy["msre"], accuracy["min_r_k_below_0.5"], wall["deepfield"], wall["jaxpm"],
                     entry["speed_ratio_deepfield_over_jaxpm"], cold["deepfield"]["first_result_s"],
                     cold["jaxpm"]["first_result_s"], cold["deepfield"]["rss_growth_mib"],
                     cold["jaxpm"]["rss_growth_mib"]])
        print(f"{n}^3: msre={accuracy['msre']:.3g} min r={accuracy['min_r_k_below_0.5']:.5f} "
              f"wall deepfield={wall['deepfield']:.3f}s jaxpm={wall['jaxpm']:.3f}s", flush=True)

    header = ["mesh", "msre", "min r(k<0.5)", "deepfield s", "JaxPM s", "deepfield/JaxPM", "deepfield first s",
              "JaxPM first s (compile)", "deepfield peak MiB", "JaxPM peak MiB"]
    load = os.getloadavg()
    note = (f"\n\n2LPT (a=0.1) + {N_STEPS} FastPM KDK steps to a=1, {CELL:g} Mpc/h cells, the same initial field "
            f"for both, float32, B=1. Date {time.strftime('%Y-%m-%d')}, load average {load[0]:.2f} on "
            f"{os.cpu_count()} cores (a shared machine: times are indicative). Peak MiB: the resident set's high-water "
            "mark in a fresh process during its first simulation, above its size after imports and field creation.")
    payload = {"date": time.strftime("%Y-%m-%d %H:%M"), "load_average": load, "jax": jax.__version__,
               "jaxpm": getattr(jaxpm, "__version__", "?"), "torch_threads": torch.get_num_threads(),
               "a_start": A_START, "a_end": A_END, "n_steps": N_STEPS, "cell_mpc_h": CELL, "seed": SEED,
               "targets": {"msre": "< 1e-3", "min_r_k_below_0.5": "> 0.99", "speed_ratio": "<= 1.0"},
               "results": results}
    write_results("pm", payload, "# deepfield PM vs JaxPM\n\n" + markdown_table(header, rows) + note)


if __name__ == "__main__":
    main()
