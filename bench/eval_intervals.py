"""Paired intervals measured on the quickstart, and the report's verdict on two runs that differ by noise only.

Issue 23's "honest differences": every metric's paired 95 % interval, and what the report says about two
runs whose difference is within noise.

    python bench/eval_intervals.py       # writes bench/results/eval-intervals.json (trains the quickstart twice)

1. `tunelab train examples/quickstart.yaml` into a scratch folder (tracking none), then `tunelab eval` on its
   test split: the quickstart carves 96 held-out prompts (`data.test_size: 96`), and eval asks all of them.
   Each metric's tuned / baseline / difference / 95 % interval / verdict is read from eval.json, and the
   console table is kept as printed.
2. The same recipe again with only `training.seed` changed (42 -> 43): the same data split and held-out
   prompts, another LoRA initialisation, dropout mask and data order. That is run-to-run noise by
   definition, the difference a user sees when comparing two runs of one recipe; a change of the recipe
   (one more step, another rank) would mix noise with a real, if small, effect.
3. `tunelab report` over both runs; the result records the report's verdict line and whether it says
   "not distinguishable", with the two runs' exact match and the paired interval of their difference.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from quickstart import cpu_model, git_commit  # noqa: E402

RESULT = ROOT / "bench" / "results" / "eval-intervals.json"
CONFIG = "examples/quickstart.yaml"
SEEDS = (42, 43)  # the quickstart's training.seed (the schema's default), then the noise-only rerun


def tunelab(*args: str, env: dict[str, str]) -> tuple[float, str]:
    """Run one verb; (seconds, stdout). A failure ends the benchmark with the verb's stderr."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "tunelab", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"tunelab {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return round(time.perf_counter() - t0, 1), r.stdout


def train_and_eval(work: Path, seed: int, env: dict[str, str]) -> dict:
    """Train the quickstart with `seed` into work/runs/seed-<seed>, evaluate it; its figures and console lines."""
    name = f"seed-{seed}"
    train_s, _ = tunelab(
        "train",
        CONFIG,
        f"output.dir={work / 'runs'}",
        f"output.name={name}",
        f"training.seed={seed}",
        "tracking.backend=none",
        env=env,
    )
    run = work / "runs" / name
    eval_s, console = tunelab("eval", str(run), env=env)
    ev = json.loads((run / "eval.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    return {
        "run": run,
        "training_seed": seed,
        "seconds": {"train": train_s, "eval": eval_s},
        "steps": summary["steps"],
        "prompts": ev["data"]["examples"],
        "metrics": metric_rows(ev),
        "console": [line.rstrip() for line in console.splitlines() if line.strip()],
    }


def metric_rows(ev: dict) -> dict[str, dict]:
    """{metric: tuned, baseline, difference and, where eval computed one, the interval and its verdict}."""
    from tunelab.runs.records import EvalInterval

    models = ev["models"]
    base = next(k for k in models if k != "target")
    intervals, difference = ev.get("intervals") or {}, ev.get("difference") or {}
    rows = {}
    for key, tuned in models["target"]["metrics"].items():
        row = {"tuned": tuned, "baseline": models[base]["metrics"].get(key), "diff": difference.get(key)}
        if key in intervals:
            i = EvalInterval.model_validate(intervals[key])
            row |= {"interval": [i.low, i.high], "prompts": i.prompts, "verdict": i.verdict()}
        rows[key] = row
    return rows


def report_verdict(work: Path, runs: list[Path], env: dict[str, str]) -> dict:
    """`tunelab report` over the runs: its verdict line, and whether it says "not distinguishable"."""
    page = work / "report.html"
    seconds, _ = tunelab("report", *map(str, runs), "-o", str(page), env=env)
    text = page.read_text()
    found = re.search(r'id="verdict">([^<]*)<', text)
    verdict = " ".join(html.unescape(found.group(1)).split()) if found else None
    return {
        "seconds": seconds,
        "verdict": verdict,
        "verdict_says_not_distinguishable": verdict is not None and "not distinguishable" in verdict,
        # each run's cells against its own base carry their verdicts too ("base 4.2 %, better")
        "not_distinguishable_anywhere": html.unescape(text).count("not distinguishable"),
    }


def pair_interval(runs: list[Path]) -> dict:
    """The report's own paired interval of the two tuned models' exact match (per prompt, run 2 - run 1)."""
    from tunelab.evaluation.report import run_interval
    from tunelab.runs.contents import load_runs

    a, b = load_runs(runs)
    i = run_interval(b, a, "exact_match")
    return {"interval": [i.low, i.high], "prompts": i.prompts, "distinguishes": i.distinguishes()}


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help, not a run
    work = Path(tempfile.mkdtemp(prefix="tunelab-eval-intervals-"))
    env = {**os.environ, "COLUMNS": "200"}  # the console table unwrapped, as a wide terminal prints it
    load = [round(x, 2) for x in os.getloadavg()]
    try:
        first, second = (train_and_eval(work, seed, env) for seed in SEEDS)
        runs = [first.pop("run"), second.pop("run")]
        report = report_verdict(work, runs, env) | {"exact_match_pair": pair_interval(runs)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import torch

    result = {
        "date": dt.date.today().isoformat(),
        "commit": git_commit(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_avg_1_5_15": load,
        "torch": torch.__version__,
        "config": CONFIG,
        "runs": [first, second],
        "report": report,
    }
    text = json.dumps(result, indent=2, ensure_ascii=False)  # the console table's box lines stay readable
    RESULT.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
