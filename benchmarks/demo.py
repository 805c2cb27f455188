"""How long `deepfield demo` takes, stage by stage, and whether its reports warn about a model.

Runs the demo (``--quick`` or the full plan) in a fresh Python process, as a user's
``deepfield demo`` runs, reads each stage's seconds from its stage lines, and records the
wall time (imports included), the load average before and after (the machine may be shared:
seconds measured at load 4 are about 2.5x those of a quiet 2-core machine), and the banners of
both reports (report.json 'warnings': a collapsed posterior, a prior worse than N(0, I),
reconstructions that explain little, diverged training, samples outside the histograms).
The issue 14 target: the full demo under 5 minutes on a quiet 2-core machine, with no banner.

Usage::

    python benchmarks/demo.py            # the full plan
    python benchmarks/demo.py --quick    # the CI-sized plan

Writes benchmarks/results/demo.json and demo.md (demo_quick.* with --quick) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_results  # noqa: E402

_DONE = re.compile(r"^stage (\d+)/(\d+): (\S+) done in (\d+) s")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the CI-sized plan")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from deepfield.demo import PLANS

    plan = PLANS["quick" if args.quick else "full"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        env = dict(os.environ, COLUMNS="400", MPLBACKEND="Agg")
        run = subprocess.run([sys.executable, "-m", "deepfield", "demo", "--out", str(out), "--no-progress",
                              "--seed", str(args.seed), *(["--quick"] if args.quick else [])],
                             capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        load_after = os.getloadavg()
        if run.returncode:
            raise SystemExit(f"deepfield demo failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")
        stages = {}
        for line in (run.stdout + run.stderr).splitlines():
            match = _DONE.match(line.strip())
            if match:
                stages[match.group(3)] = int(match.group(4))
        warnings = {name: json.loads((out / name / "report.json").read_text()).get("warnings", [])
                    for name in ("report", "report-vae")}
    rows = [[name, seconds, plan.seconds.get(name, "")] for name, seconds in stages.items()]
    rows.append(["total (wall, imports included)", round(wall), sum(plan.seconds.values())])
    table = (f"`deepfield demo{' --quick' if args.quick else ''}`: seconds per stage, load average "
             f"{load_before[0]:.2f} before and {load_after[0]:.2f} after (1 minute)\n\n"
             + markdown_table(["stage", "seconds", "expected on a quiet 2-core machine"], rows)
             + "\n\nReport warnings: " + ("; ".join(f"{k}: {w}" for k, ws in warnings.items() for w in ws) or "none"))
    payload = {"plan": "quick" if args.quick else "full", "seed": args.seed, "stage_seconds": stages,
               "wall_seconds": wall, "load_before": load_before, "load_after": load_after,
               "expected_seconds": plan.seconds, "report_warnings": warnings}
    write_results("demo_quick" if args.quick else "demo", payload, table)
    return payload


if __name__ == "__main__":
    main()
