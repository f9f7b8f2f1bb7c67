"""The README's GRPO quickstart figures, measured: SFT-then-GRPO on the CPU, as the README tells a user to run it.

    python bench/grpo_quickstart.py          # writes bench/results/grpo-quickstart-run.json

Three commands, in order, each timed:
1. `tunelab train examples/quickstart.yaml` cut to SFT_STEPS steps (the short SFT run GRPO starts from: it
   answers the Alpaca template often enough for GRPO's groups to differ, and far from always);
2. `tunelab train examples/grpo-quickstart.yaml` on that run (its QLoRA adapter continued);
3. `tunelab eval GRPO_RUN --baseline SFT_RUN`: both runs answer the same 96 held-out prompts (the quickstart's
   test split, which neither trained on), greedy; the paired bootstrap interval of the exact-match difference.

Recorded: the SFT run's held-out exact match, the GRPO run's held-out exact match and reward at each
evaluation, both runs' training time (summary.json `train_time_s`, sample generation excluded) and process
wall time, peak RSS, and eval's interval. The issue's targets: held-out exact match from the base's figure
(before the SFT run) to at least 0.6 within 10 minutes of training, and GRPO above the SFT run it started from
with the interval excluding 0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_bench as rb  # noqa: E402  (machine record, commit, paths: one owner)

SFT_STEPS = 110
WORK = rb.OUT / "grpo-quickstart"
RESULT = rb.RESULTS / "grpo-quickstart-run.json"
SFT_DIR = WORK / "quickstart-short"
EXAMPLE = yaml.safe_load((rb.ROOT / "examples" / "grpo-quickstart.yaml").read_text())
TUNELAB = [sys.executable, "-m", "tunelab"]
TARGET_EXACT_MATCH = 0.6
TARGET_TRAIN_MINUTES = 10


def run(args: list[str], log: Path) -> float:
    """Run a tunelab command from the checkout root (the examples' relative paths), return its wall seconds."""
    started = time.perf_counter()
    with log.open("w") as out:
        r = subprocess.run([*TUNELAB, *args], cwd=rb.ROOT, stdout=out, stderr=subprocess.STDOUT, check=False)
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)} failed (exit {r.returncode}); see {log}")
    return round(time.perf_counter() - started, 1)


def read(run_dir: Path) -> tuple[dict, list[dict]]:
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return summary, metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sft-steps", type=int, default=SFT_STEPS)
    a = ap.parse_args()
    rb.bench_env()
    WORK.mkdir(parents=True, exist_ok=True)
    host, load_before = rb.machine(), [round(x, 2) for x in os.getloadavg()]
    common = [f"output.dir={WORK}", "tracking.backend=none"]
    sft_args = [
        "train",
        "examples/quickstart.yaml",
        f"training.max_steps={a.sft_steps}",
        "output.name=quickstart-short",
        *common,
    ]
    sft_wall = run(sft_args, WORK / "sft.log")
    sft, _ = read(SFT_DIR)
    grpo_args = ["train", "examples/grpo-quickstart.yaml", f"model.name={SFT_DIR}", "output.name=grpo", *common]
    grpo_wall = run(grpo_args, WORK / "grpo.log")
    grpo, metrics = read(WORK / "grpo")
    eval_wall = run(["eval", str(WORK / "grpo"), "--baseline", str(SFT_DIR)], WORK / "eval.log")
    ev = json.loads((WORK / "grpo" / "eval.json").read_text())
    train_minutes = (sft["train_time_s"] + grpo["train_time_s"]) / 60
    after = grpo["samples_exact_match_after"]
    interval = ev["intervals"]["exact_match"]
    res = {
        "workload": "grpo-quickstart",
        "commands": [" ".join(["tunelab", *c]) for c in (sft_args, grpo_args)]
        + [f"tunelab eval {WORK / 'grpo'} --baseline {SFT_DIR}"],
        "grpo_example": {k: EXAMPLE[k] for k in ("training", "grpo")},
        "held_out": "the quickstart's 96-prompt test split (neither run trained on it), greedy, 16 new tokens",
        "base_exact_match": sft["samples_exact_match_before"],
        "sft": {
            "steps": sft["steps"],
            "exact_match": sft["samples_exact_match_after"],
            "train_time_s": sft["train_time_s"],
            "process_wall_s": sft_wall,
            "peak_rss_mb": sft["peak_rss_mb"],
        },
        "grpo": {
            "steps": grpo["steps"],
            "exact_match_by_step": {m["step"]: m["samples_exact_match"] for m in metrics if "samples_exact_match" in m},
            "heldout_reward_by_step": {m["step"]: m["heldout_reward"] for m in metrics if "heldout_reward" in m},
            "exact_match": after,
            "train_time_s": grpo["train_time_s"],
            "process_wall_s": grpo_wall,
            "peak_rss_mb": grpo["peak_rss_mb"],
        },
        "eval_vs_sft_run": {
            "target": ev["models"]["target"]["metrics"]["exact_match"],
            "baseline": ev["models"]["baseline"]["metrics"]["exact_match"],
            "interval_95": [interval["low"], interval["high"]],
            "prompts": interval["prompts"],
            "process_wall_s": eval_wall,
        },
        "targets": {
            "exact_match_at_least": TARGET_EXACT_MATCH,
            "train_minutes_at_most": TARGET_TRAIN_MINUTES,
            "train_minutes": round(train_minutes, 2),
            "exact_match_within_time_met": after >= TARGET_EXACT_MATCH and train_minutes <= TARGET_TRAIN_MINUTES,
            "above_sft_run_met": interval["low"] > 0,
        },
        "date": dt.date.today().isoformat(),
        "commit": rb.git_commit(),
        "machine": host,
        "load_avg_before_1_5_15": load_before,
        "load_avg_after_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }
    rb.RESULTS.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: res[k] for k in ("base_exact_match", "sft", "grpo", "eval_vs_sft_run", "targets")}, indent=2))


if __name__ == "__main__":
    main()
