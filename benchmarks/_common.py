"""Shared by the benchmark scripts: result files, tables, cached input stores."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(os.environ.get("DEEPFIELD_BENCH_CACHE", Path(__file__).resolve().parent / ".cache"))


def machine() -> dict:
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}


def markdown_table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, payload: dict, table: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), **payload}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table)
    print(f"\nwrote {RESULTS / (name + '.json')}")


def cached_store(name: str, make):
    """Open the cached store `name`, making it with make(path) the first time."""
    from deepfield.data.store import is_store, open_store

    path = CACHE / name
    if not is_store(path):
        CACHE.mkdir(parents=True, exist_ok=True)
        make(path)
    return open_store(path)


#: the command that trains the recipe's VAE (cached as models/dilc_snr20_b0.1_e200; its training took 17 min on 2 cores)
RECIPE_VAE_COMMAND = ("python benchmarks/morphology.py --family cvae --flux-condition magnitude --size-condition "
                      "half_light_radius --decoder-condition '' --train-where 'snr > 20' --prior-condition "
                      "half_light_radius,redshift --beta 0.1 --epochs 200 --name dilc_snr20_b0.1_e200")


def cached_model(name: str) -> Path:
    """The model folder benchmarks/morphology.py cached under `name`; exits naming how to make it."""
    folder = CACHE / "models" / name
    if not (folder / "config.json").is_file():
        hint = RECIPE_VAE_COMMAND if name == "dilc_snr20_b0.1_e200" else f"python benchmarks/morphology.py ... --name {name}"
        raise SystemExit(f"no cached model {folder}: train it first with\n    {hint}")
    return folder
