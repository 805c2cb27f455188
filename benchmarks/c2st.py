"""Classifier two-sample test on a briefly trained VAE, and how often its null control sits at 0.5.

A 3,000-galaxy store of 32x32 stamps (seed 21, the simulator's default depth and PSF) and a VAE
(latent_dim 16, 10 epochs: about 5 minutes on 2 busy cores, far short of the README's recipe)
are made with the CLI and cached in benchmarks/.cache. `classifier_two_sample_test` (what
`deepfield evaluate c2st` runs) then scores the VAE's samples against its held-out galaxies,
for all of them and for S/N > 20, with its controls. An undertrained model should score far
from 0.5; the point is that the tool separates it while its null control does not.

The held-out-vs-held-out control is then rerun with `--null-seeds` seeds (each: other halves,
other classifier splits, initialisation and batches) to measure its calibration: the mean and
spread of the null AUCs, and how often 0.5 falls outside each run's 68% and 95% bootstrap
intervals (nominally 32% and 5%).

    python benchmarks/c2st.py                    # ~12 minutes on 2 busy cores (training included)
    python benchmarks/c2st.py --null-seeds 5     # a quicker calibration
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import torch

from _common import CACHE, cached_store, markdown_table, write_results

STORE = "c2st-survey-3000-32px"
MODEL = "c2st-vae-latent16-e10"
SIMULATE = ["simulate", "galaxies", "{out}", "--n", "3000", "--size", "32", "--bands", "r", "--seed", "21",
            "--workers", "1", "--no-progress"]
TRAIN = ["train", "vae", "--store", "{store}", "--out", "{out}", "--set", "latent_dim=16", "--epochs", "10",
         "--no-progress"]


def deepfield_cli(args: list[str], **paths) -> None:
    subprocess.run([sys.executable, "-m", "deepfield", *[a.format(**paths) for a in args]], check=True)


def row(subset: str, test: str, r: dict) -> list:
    return [subset, test, f"{r['n_first'][2]}+{r['n_second'][2]}", f"{r['epochs']} ({r['best_epoch']})",
            f"{r['auc']:.3f}", "{:.3f}-{:.3f}".format(*r["interval_68"]), "{:.3f}-{:.3f}".format(*r["interval_95"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--null-seeds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import deepfield
    from deepfield.tasks import resolve_indices
    from deepfield.tasks.c2st import _noise_units, c2st_auc, classifier_two_sample_test

    store = cached_store(STORE, lambda p: deepfield_cli(SIMULATE, out=p))
    model_dir = CACHE / "models" / MODEL
    if not (model_dir / "config.json").is_file():
        t = time.time()
        deepfield_cli(TRAIN, store=store.path, out=model_dir)
        print(f"trained in {time.time() - t:.0f} s")
    model = deepfield.load(model_dir)

    t = time.time()
    result = classifier_two_sample_test(model, store, seed=0)
    seconds = time.time() - t
    rows = []
    for name, entry in result["subsets"].items():
        label = f"{name} ({entry['n_held_out']} galaxies, {entry['n_samples']['model']} samples)"
        for test, r in entry["tests"].items():
            rows.append(row(label, test, r) if "skipped" not in r else [label, test, r["skipped"], "", "", "", ""])
            label = ""

    # calibration of the null: the held-out galaxies against themselves, many seeds
    held_out = resolve_indices(store, None, "test", model.record)
    galaxies = _noise_units(store.read("x", held_out), store.read("ivar", held_out))
    nulls = []
    for seed in range(args.null_seeds):
        half = np.random.default_rng((seed, 1)).permutation(held_out.size)  # as classifier_two_sample_test
        r = c2st_auc(galaxies[half[: half.size // 2]], galaxies[half[half.size // 2:]], seed=seed)
        nulls.append({"seed": seed, **r})
        print(f"null seed {seed}: AUC {r['auc']:.3f} ({r['interval_95'][0]:.3f}-{r['interval_95'][1]:.3f})", flush=True)
    auc = np.array([r["auc"] for r in nulls])
    outside = {level: int(sum(not (r[f"interval_{level}"][0] <= 0.5 <= r[f"interval_{level}"][1]) for r in nulls))
               for level in ("68", "95")}
    n_test = nulls[0]["n_first"][2] + nulls[0]["n_second"][2]
    calibration = [[len(nulls), n_test, round(float(auc.mean()), 3), round(float(auc.std(ddof=1)), 3),
                    round(float(np.sqrt((n_test + 1) / (12 * (n_test / 2) ** 2))), 3),
                    f"{outside['68']}/{len(nulls)}", f"{outside['95']}/{len(nulls)}"]]

    table = (markdown_table(["subset", "comparison", "N test", "epochs (best)", "AUC", "68%", "95%"], rows)
             + f"\n\nC2ST wall time {seconds:.0f} s ({args.threads} thread). Null calibration (held-out vs "
             "held-out, other seeds):\n\n"
             + markdown_table(["seeds", "N test", "mean AUC", "spread", "Mann-Whitney sigma", "0.5 outside 68%",
                               "0.5 outside 95%"], calibration))
    write_results("c2st", {"store": STORE, "model": MODEL, "simulate": "deepfield " + " ".join(SIMULATE),
                           "train": "deepfield " + " ".join(TRAIN), "load_average": os.getloadavg()[0],
                           "seconds": seconds, "result": result, "null_calibration": nulls,
                           "null_summary": {"mean": float(auc.mean()), "std": float(auc.std(ddof=1)),
                                            "outside": outside}}, table)


if __name__ == "__main__":
    main()
