"""Pruning on vs off: the quickstart sweep (examples/sweep-quickstart.yaml) run as shipped and with `pruner: none`.

    python bench/sweep_pruning.py            # both sweeps, then bench/results/sweep_pruning.json

Reports each sweep's total optimizer steps (the sum of every trial's steps: a pruned trial counts the steps
it ran), wall time, the trials' states, and the best trial, and whether pruning kept the same best trial.
The tiny base model is built before the clock starts. Scratch files go to bench/out/sweep-pruning/.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "sweep-pruning"
RESULT = ROOT / "bench" / "results" / "sweep_pruning.json"
SWEEP = ROOT / "examples" / "sweep-quickstart.yaml"


def git_commit() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    return r.stdout.strip() or "unknown"


def run(name: str, *overrides: str) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "tunelab.cli.main", "sweep", str(SWEEP), f"name={name}", *overrides],
        cwd=OUT,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"sweep {name} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    print(r.stdout)
    res = json.loads((OUT / "sweeps" / name / "results.json").read_text())
    return {
        "overrides": list(overrides),
        "wall_s": round(wall, 1),
        "optimizer_steps": res["optimizer_steps"],
        "counts": res["counts"],
        "best": res["best"],
        "trials": [{k: t[k] for k in ("number", "name", "settings", "state", "values", "step")} for t in res["trials"]],
    }


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    from tunelab.model.resolve import resolve_model_path

    resolve_model_path("tiny:quickstart-base")  # built and cached once, outside both measurements
    pruned = run("quickstart-pruned")
    unpruned = run("quickstart-unpruned", "pruner=none")
    saved = 1 - pruned["optimizer_steps"] / unpruned["optimizer_steps"]
    same = pruned["best"]["settings"] == unpruned["best"]["settings"]
    result = {
        "workload": "sweep-pruning",
        "sweep": str(SWEEP.relative_to(ROOT)),
        "date": dt.date.today().isoformat(),
        "commit": git_commit(),
        "machine": {"platform": platform.platform(), "cores": os.cpu_count()},
        "pruned": pruned,
        "unpruned": unpruned,
        "steps_saved_pct": round(100 * saved, 1),
        "wall_saved_pct": round(100 * (1 - pruned["wall_s"] / unpruned["wall_s"]), 1),
        "same_best_trial": same,
    }
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"optimizer steps: {pruned['optimizer_steps']} pruned vs {unpruned['optimizer_steps']} without pruning "
        f"({result['steps_saved_pct']} % fewer); wall {pruned['wall_s']} s vs {unpruned['wall_s']} s; "
        f"best trial {'the same' if same else 'DIFFERENT'}: {pruned['best']['name']} / {unpruned['best']['name']}"
    )
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
