"""A GAN emulator of cosmic-web slices against held-out particle-mesh slices (issue 17).

1. Simulate: `--n-sims` PM simulations (2LPT + 10 FastPM KDK steps, Planck 2018, Eisenstein &
   Hu P(k)), `--mesh`^3 particles in a box of `--box` Mpc/h, each projected onto slabs
   `--thickness` Mpc/h thick: mesh * cell / thickness slices per simulation, 1 + delta (cached
   in benchmarks/.cache).
2. Train: a GAN family (`--family`, default dcgan) on the slices' training split for at most
   `--minutes` of wall time (Lightning's Timer stops it; no encoder: the emulator only samples),
   with the working-space stretch `--stretch` and periodic (circular) padding.
3. Evaluate: :func:`deepfield.tasks.cosmicweb.evaluate_cosmicweb` on the held-out (test) slices,
   as many samples as slices: 2-D P(k) ratio GAN / sim for 0.06 < k < 0.4 h/Mpc (target within
   5%), peak counts and the density histogram of log10(1 + delta) within 2 standard errors per
   bin (target: every bin), cross spectra sim-GAN and GAN-GAN consistent with sim-sim.
4. Speed: slices per second of the GAN (sampling after warm-up, batches of 256) against the PM
   simulator (simulations per second after warm-up, times its slices per simulation), both on
   this machine's threads. The machine is shared: the load average is recorded.

Usage::

    python benchmarks/cosmicweb.py --minutes 8

Writes benchmarks/results/cosmicweb.json, .md, cosmicweb.png (the Figure-2-like panels) and
cosmicweb_examples.png (held-out slices above samples).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, RESULTS, cached_store, markdown_table, write_results  # noqa: E402


def parse_set(items: list[str]) -> dict:
    """key=value model options, values read as YAML scalars ('a,b' as a list)."""
    import yaml

    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key.strip()] = ([yaml.safe_load(v) for v in value.split(",")] if "," in value
                            else yaml.safe_load(value))
    return out


def pm_speed(mesh: int, box: float, steps: int, rounds: int = 3) -> float:
    """Simulations per second of deepfield's PM at this mesh (median of `rounds` after a warm-up)."""
    import numpy as np
    import torch

    from deepfield.physics.cosmology import Planck18
    from deepfield.physics.pm import simulate

    times = []
    with torch.no_grad():
        for i in range(rounds + 1):
            start = time.perf_counter()
            simulate(Planck18, mesh, box, seed=1000 + i, n_steps=steps)
            if i:
                times.append(time.perf_counter() - start)
    return 1.0 / float(np.median(times))


def gan_speed(model, batch: int = 256, rounds: int = 3) -> float:
    """Slices per second the model samples (median of `rounds` batches after a warm-up)."""
    import numpy as np
    import torch

    generator = torch.Generator().manual_seed(0)
    times = []
    for i in range(rounds + 1):
        start = time.perf_counter()
        model.sample(batch, generator=generator)
        if i:
            times.append(time.perf_counter() - start)
    return batch / float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mesh", type=int, default=32)
    parser.add_argument("--box", type=float, default=128.0)
    parser.add_argument("--thickness", type=float, default=16.0)
    parser.add_argument("--n-sims", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--family", default="dcgan")
    parser.add_argument("--stretch", default="log")
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="model option key=value (repeatable)")
    parser.add_argument("--name", default="cosmicweb", help="results name (benchmarks/results/NAME.json)")
    args = parser.parse_args()

    import torch
    from lightning.pytorch.callbacks import Timer

    import deepfield
    from deepfield.data.nbody import simulate_nbody
    from deepfield.report.cosmicweb import cosmicweb_examples, cosmicweb_figure
    from deepfield.tasks.cosmicweb import evaluate_cosmicweb
    from deepfield.train import TrainSettings
    from deepfield.train.gan import train_gan

    threads = torch.get_num_threads()
    name = f"cosmicweb_m{args.mesh}_b{args.box:g}_t{args.thickness:g}_n{args.n_sims}_s{args.seed}"
    start = time.perf_counter()
    store = cached_store(name, lambda p: simulate_nbody(p, args.n_sims, mesh=args.mesh, box_size=args.box,
                                                        n_steps=args.steps, seed=args.seed,
                                                        slice_thickness=args.thickness))
    print(f"store {store.path}: {len(store)} slices ({time.perf_counter() - start:.0f} s)")

    options = {"stretch": args.stretch, "padding": "circular", "encoder_epochs": 0, **parse_set(args.set)}
    out = CACHE / "models" / f"{args.name}_{args.family}_{args.stretch}"
    settings = TrainSettings(epochs=100000, batch_size=args.batch_size, seed=args.seed, progress=False)
    timer = Timer(duration={"seconds": int(args.minutes * 60)})
    train_gan(args.family, store, out, model_options=options, settings=settings, overwrite=True,
              callbacks=[timer])
    model = deepfield.load(out)
    metrics = json.loads((out / "metrics.json").read_text())
    result = evaluate_cosmicweb(model, store, split="test", seed=args.seed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    cosmicweb_figure(result, RESULTS / f"{args.name}.png",
                     title=f"{args.family} ({args.stretch} stretch) vs PM, {result['n_slices']} held-out slices")
    cosmicweb_examples(result, RESULTS / f"{args.name}_examples.png")

    pm_sims_per_s = pm_speed(args.mesh, args.box, args.steps)
    slices_per_sim = int(round(args.box / args.thickness))
    gan_slices_per_s = gan_speed(model)
    summary = result["summary"]
    pk = summary["P(k)"]
    payload = {
        "store": {"path": str(store.path), "n_sims": args.n_sims, "mesh": args.mesh, "box_mpc_h": args.box,
                  "slice_thickness_mpc_h": args.thickness, "slices": len(store), "slices_per_sim": slices_per_sim,
                  "pixel_mpc_h": args.box / args.mesh, "steps": args.steps},
        "model": {"family": args.family, "options": {k: (list(v) if isinstance(v, tuple) else v)
                                                      for k, v in options.items()},
                  "batch_size": args.batch_size, "train_minutes_budget": args.minutes,
                  "train_seconds": metrics.get("train_seconds"), "epochs_run": metrics.get("epochs_run"),
                  "train_images_per_s": metrics.get("train_images_per_s"), "folder": str(out),
                  # DCGAN: one generator step per batch (WGAN-GP: one per n_critic); short last batches are dropped
                  "batches_run": (metrics.get("epochs_run") or 0) * (model.record["store"]["n_train"]
                                                                     // args.batch_size)},
        "held_out_slices": result["n_slices"],
        "summary": summary,
        "mean_density": result["mean_density"],
        "speed": {"threads": threads, "pm_simulations_per_s": pm_sims_per_s,
                  "pm_slices_per_s": pm_sims_per_s * slices_per_sim, "gan_slices_per_s": gan_slices_per_s,
                  "gan_over_pm_slices": gan_slices_per_s / (pm_sims_per_s * slices_per_sim)},
        "load_average": os.getloadavg()[0],
        "targets": {"pk_max_abs_ratio_error_in_k_range": 0.05, "peaks_and_histogram_within_2se": "every bin"},
        "rows": result["rows"],
    }
    hist, peaks = summary["density histogram"], summary["peak counts"]
    header = ["statistic", "value", "target", "met"]
    table_rows = [
        ["P(k) max abs(GAN/sim - 1), 0.06<k<0.4", pk.get("max_abs_ratio_error_in_k_range"), 0.05,
         pk.get("max_abs_ratio_error_in_k_range", 1) <= 0.05],
        ["P(k) mean GAN/sim, 0.06<k<0.4", pk.get("mean_ratio_in_k_range"), "1", ""],
        ["P(k) bins within 2 SE, 0.06<k<0.4", f"{pk.get('within_2se_in_k_range')}/{pk.get('bins_in_k_range')}", "", ""],
        ["density histogram bins within 2 SE", f"{hist['within_2se']}/{hist['bins']}", "all",
         hist["within_2se"] == hist["bins"]],
        ["peak-count bins within 2 SE", f"{peaks['within_2se']}/{peaks['bins']}", "all",
         peaks["within_2se"] == peaks["bins"]],
        ["cross P(k) sim-GAN bins within 2 SE of sim-sim",
         f"{summary['cross P(k) sim-GAN']['within_2se']}/{summary['cross P(k) sim-GAN']['bins']}", "all", ""],
        ["cross P(k) GAN-GAN bins within 2 SE of sim-sim",
         f"{summary['cross P(k) GAN-GAN']['within_2se']}/{summary['cross P(k) GAN-GAN']['bins']}", "all", ""],
        ["GAN slices/s", gan_slices_per_s, "", ""],
        ["PM slices/s", pm_sims_per_s * slices_per_sim, "", ""],
        ["GAN / PM speed", gan_slices_per_s / (pm_sims_per_s * slices_per_sim), "", ""],
    ]
    text = (f"# Cosmic-web GAN emulator vs particle mesh\n\n{markdown_table(header, table_rows)}\n\n"
            f"{args.n_sims} PM simulations ({args.mesh}^3 particles, {args.box:g} Mpc/h box, {args.steps} KDK steps), "
            f"{len(store)} slices {args.thickness:g} Mpc/h thick ({args.box / args.mesh:g} Mpc/h pixels); "
            f"{result['n_slices']} held-out (test split) slices against as many samples. {args.family} with the "
            f"{args.stretch} stretch and circular padding, options {payload['model']['options']}, batch "
            f"{args.batch_size}, trained for {metrics.get('train_seconds') or 0:.0f} s "
            f"({metrics.get('epochs_run')} epochs) on {threads} threads. Load average {payload['load_average']:.2f} "
            f"(a shared machine: speeds are indicative). Figure: benchmarks/results/{args.name}.png.")
    write_results(args.name, payload, text)


if __name__ == "__main__":
    main()
