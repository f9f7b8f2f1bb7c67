"""GRPO step throughput: `tunelab train` (training.method grpo) against TRL's `GRPOTrainer` used directly.

    python bench/grpo_ab.py [--reps 2] [--steps 12]    # writes bench/results/grpo-ab.json

Both arms train the same model folder (`tiny:llama-4l`, random weights, so every rollout runs to the full
completion length), on the same prompts (synthetic tasks in the Alpaca template, rendered by tunelab once and
handed to TRL as text), with the same rewards (exact match weight 1, a one-line format reward weight 0.2:
tunelab's from `grpo.rewards`, TRL's as two plain Python callables) and the same settings (group size,
completion length, temperature, batch, steps, LoRA r / alpha / targets, fp32, seed, optimizer and schedule).
A third arm is tunelab with glibc's malloc defaults (`training.cpu_allocator: system`, as TRL's process
runs), which separates what tunelab's allocator setting costs in peak RSS from the rest. Each arm is its own
process; the arms alternate (tunelab, TRL, tunelab-system in odd reps, the reverse in even ones), so a slow
minute of this shared machine touches all three. `same_step_rewards` says whether the two arms' mean reward
agreed at every step (within 1e-4): the same seed, prompts and settings sample the same rollouts.

Per run: seconds per step (TRL's `step_time`, logged by both, the first step left out as warm-up), the wall
of `trainer.train()` (no model load), completion tokens per second over it, the process's peak RSS (its
rusage from wait4, the same for both) and the end-to-end wall of the process. Differences that remain
between the arms are listed in the results (`differences`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import run_bench as rb  # noqa: E402

WORK = rb.OUT / "grpo-ab"
SYSTEM_ARM = "tunelab-system-malloc"
RESULT = rb.RESULTS / "grpo-ab.json"
MODEL = "tiny:llama-4l"
TASKS = "first_word,repeat_word,uppercase,count_words,add_numbers,sort_digits"
ONE_LINE = r"[^\n]+"
# what both arms share; tunelab's config and TRL's GRPOConfig are both built from these
SETTINGS = dict(
    num_generations=8,
    batch_size=16,  # completions per step: 2 prompts x 8
    max_completion_length=24,
    temperature=0.8,
    learning_rate=1e-4,
    lora_r=16,
    lora_alpha=32,
    lora_targets="all-linear",
    seed=42,
)
DIFFERENCES = [
    "tunelab keeps the memory a CPU run frees (training.cpu_allocator: auto, glibc mallopt); TRL's process runs "
    "with glibc's defaults",
    "tunelab loads the model through its own loader (safetensors, its attention registration, pad token distinct "
    "from EOS) and applies LoRA itself (PEFT, same r / alpha / targets); TRL gets a PEFT LoraConfig",
    "tunelab's process also prepares and caches the data, writes the run directory (config.yaml, metrics.jsonl, "
    "rollouts.jsonl at the last step, final/ adapter, summary.json) and runs its callbacks (metrics, progress, "
    "reward failures, graceful stop); TRL's saves nothing. These count in the end-to-end wall, only the "
    "callbacks in the step times",
    "the held-out reward (tunelab's samples) is off, as TRL has no equivalent without its own evaluation",
]


def rows_and_prompts(n_rows: int) -> tuple[Path, dict]:
    """The training rows (a JSONL file tunelab reads) and, rendered by tunelab, the prompts and references TRL
    gets: the texts tunelab's GRPOTrainer itself receives (`training.rewards.prompt_dataset`)."""
    from tunelab.config import build_config
    from tunelab.data.synthetic import generate, write_jsonl
    from tunelab.model.loading import load_tokenizer
    from tunelab.model.resolve import resolve_model_path
    from tunelab.training.rewards import prompt_dataset

    WORK.mkdir(parents=True, exist_ok=True)
    rows = generate(n_rows, seed=7, tasks=TASKS.split(","))
    data = write_jsonl(rows, WORK / "rows.jsonl")
    cfg = build_config(tunelab_cfg(resolve_model_path(MODEL), data, steps=1))
    ds = prompt_dataset(rows, cfg, load_tokenizer(cfg.model))
    return data, {"prompt": list(ds["prompt"]), "reference": list(ds["reference"])}


def tunelab_cfg(model: str, data: Path, steps: int, allocator: str = "auto") -> dict:
    s = SETTINGS
    return {
        "model": {"name": str(model)},
        "adapter": {"r": s["lora_r"], "alpha": s["lora_alpha"], "dropout": 0.0, "target_modules": s["lora_targets"]},
        "data": {"train": {"path": str(data)}, "shuffle": False, "cache_dir": str(WORK / "data-cache")},
        "prompt": {"format": "alpaca"},
        "training": {
            "method": "grpo",
            "max_steps": steps,
            "batch_size": s["batch_size"],
            "grad_accum": 1,
            "learning_rate": s["learning_rate"],
            "lr_scheduler": "constant",
            "warmup_ratio": 0.0,
            "precision": "fp32",
            "gradient_checkpointing": False,
            "logging_steps": 1,
            "save_steps": None,
            "seed": s["seed"],
            "cpu_allocator": allocator,
        },
        "grpo": {
            "num_generations": s["num_generations"],
            "max_completion_length": s["max_completion_length"],
            "temperature": s["temperature"],
            "beta": 0.0,
            "rewards": [
                {"exact_match": {"weight": 1.0}},
                {"regex": {"pattern": ONE_LINE, "mode": "fullmatch", "weight": 0.2, "name": "one_line"}},
            ],
        },
        "samples": {"enabled": False},
        "tracking": {"backend": "none"},
        "output": {"dir": str(WORK / "runs"), "name": "tunelab", "overwrite": True},
    }


def trl_child(spec_path: str) -> None:
    """The TRL arm, in its own process: GRPOTrainer as its docs use it, nothing of tunelab imported."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    spec = json.loads(Path(spec_path).read_text())
    s = spec["settings"]
    t0 = time.perf_counter()

    def exact_match(prompts, completions, reference, **kw):
        return [float(c.strip() == r.strip()) for c, r in zip(completions, reference, strict=True)]

    def one_line(prompts, completions, **kw):
        return [float(re.fullmatch(ONE_LINE, c) is not None) for c in completions]

    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    args = GRPOConfig(
        output_dir=spec["out"],
        max_steps=spec["steps"],
        per_device_train_batch_size=s["batch_size"],
        gradient_accumulation_steps=1,
        learning_rate=s["learning_rate"],
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        seed=s["seed"],
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        remove_unused_columns=False,
        num_generations=s["num_generations"],
        max_completion_length=s["max_completion_length"],
        temperature=s["temperature"],
        beta=0.0,
        reward_weights=[1.0, 0.2],
        log_completions=False,
    )
    lora = LoraConfig(
        r=s["lora_r"],
        lora_alpha=s["lora_alpha"],
        lora_dropout=0.0,
        target_modules=s["lora_targets"],
        task_type="CAUSAL_LM",
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[exact_match, one_line],
        args=args,
        train_dataset=datasets.Dataset.from_dict(spec["data"]),
        processing_class=tokenizer,
        peft_config=lora,
    )
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t1
    logs = [h for h in trainer.state.log_history if "step_time" in h]
    print(
        json.dumps(
            {
                "load_s": round(load_s, 2),
                "train_time_s": round(train_s, 2),
                "threads": torch.get_num_threads(),
                "pad_is_eos": tokenizer.pad_token_id == tokenizer.eos_token_id,
                "steps": [step_record(h) for h in logs],
            }
        )
    )


def step_record(log: dict) -> dict:
    return {
        "step": log["step"],
        "step_time": log["step_time"],
        "mean_length": log["completions/mean_length"],
        "reward": log.get("reward"),
    }


def run_child(cmd: list[str], stdout: Path) -> tuple[int, float, float]:
    """(exit status, wall seconds, peak RSS in MB of that process from its own rusage)."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    with open(stdout, "w") as out, open(stdout.with_suffix(".err"), "w") as err:
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{cmd[1:4]} failed ({p.returncode}):\n{stdout.with_suffix('.err').read_text()[-3000:]}")
    return p.returncode, wall, usage.ru_maxrss / 1024


def figures(train_s: float, steps: list[dict], wall: float, rss: float) -> dict:
    timed = [s["step_time"] for s in steps[1:]] or [s["step_time"] for s in steps]
    completion_tokens = sum(s["mean_length"] * SETTINGS["batch_size"] for s in steps)
    return {
        "steps": len(steps),
        "s_per_step_median": round(statistics.median(timed), 3),
        "train_time_s": round(train_s, 2),
        "completion_tokens": round(completion_tokens),
        "completion_tokens_per_s": round(completion_tokens / train_s, 1),
        "peak_rss_mb": round(rss, 1),
        "process_wall_s": round(wall, 2),
        "rewards": [s["reward"] for s in steps],
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def run_tunelab(model: str, data: Path, steps: int, i: int, allocator: str = "auto") -> dict:
    path = WORK / "tunelab.yaml"
    path.write_text(yaml.safe_dump(tunelab_cfg(model, data, steps, allocator)))
    _, wall, rss = run_child([rb.PY, "-m", "tunelab", "train", str(path)], WORK / f"tunelab-{allocator}-{i}.out")
    run = WORK / "runs" / "tunelab"
    s = json.loads((run / "summary.json").read_text())
    logs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    out = figures(s["train_time_s"], [step_record(m) for m in logs if "step_time" in m], wall, rss)
    out["summary_peak_rss_mb"] = s["peak_rss_mb"]
    return out


def run_trl(model: str, prompts: dict, steps: int, i: int) -> dict:
    spec = WORK / "trl-spec.json"
    spec.write_text(
        json.dumps({"model": model, "data": prompts, "steps": steps, "settings": SETTINGS, "out": str(WORK / "trl")})
    )
    stdout = WORK / f"trl-{i}.out"
    _, wall, rss = run_child([rb.PY, str(Path(__file__).resolve()), "--trl-child", str(spec)], stdout)
    r = json.loads(stdout.read_text().strip().splitlines()[-1])
    out = figures(r["train_time_s"], r["steps"], wall, rss)
    out.update(load_s=r["load_s"], threads=r["threads"], pad_is_eos=r["pad_is_eos"])
    return out


def medians(runs: list[dict]) -> dict:
    keys = ("s_per_step_median", "train_time_s", "completion_tokens_per_s", "peak_rss_mb", "process_wall_s")
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}


def same_rewards(a: list, b: list) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= 1e-4 for x, y in zip(a, b, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--trl-child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.trl_child:
        return trl_child(a.trl_child)
    rb.bench_env()
    from tunelab.model.resolve import resolve_model_path

    host = rb.machine()
    started = time.time()
    model = resolve_model_path(MODEL)
    data, prompts = rows_and_prompts(n_rows=max(64, 2 * a.steps))
    # the third arm: tunelab with glibc's malloc defaults (training.cpu_allocator: system), as TRL's process runs
    runs: dict[str, list[dict]] = {"tunelab": [], "trl": [], SYSTEM_ARM: []}
    order = ("tunelab", "trl", SYSTEM_ARM)
    for i in range(a.reps):
        for arm in order if i % 2 == 0 else order[::-1]:
            print(f"rep {i + 1}/{a.reps}: {arm}", flush=True)
            if arm == "trl":
                got = run_trl(model, prompts, a.steps, i)
            else:
                got = run_tunelab(model, data, a.steps, i, "system" if arm == SYSTEM_ARM else "auto")
            runs[arm].append(got)
            print(f"  {json.dumps({k: v for k, v in got.items() if k != 'rewards'})}", flush=True)
    med = {arm: medians(r) for arm, r in runs.items()}
    ratios = {k: round(med["tunelab"][k] / med["trl"][k], 3) for k in med["tunelab"]}
    system_ratios = {k: round(med[SYSTEM_ARM][k] / med["trl"][k], 3) for k in med[SYSTEM_ARM]}
    res = {
        "workload": "grpo-ab",
        "model": MODEL,
        "settings": {**SETTINGS, "steps": a.steps, "reps": a.reps, "rewards": "exact_match x1 + one_line x0.2"},
        "medians": med,
        "ratios_tunelab_over_trl": ratios,
        f"ratios_{SYSTEM_ARM}_over_trl": system_ratios,
        "same_step_rewards": same_rewards(runs["tunelab"][0]["rewards"], runs["trl"][0]["rewards"]),
        "differences": DIFFERENCES,
        "runs": runs,
        "date": dt.date.today().isoformat(),
        "commit": rb.git_commit(),
        "machine": host,
        "load_avg_after_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "command": " ".join(["python", "bench/grpo_ab.py", *sys.argv[1:]]),
        "bench_wall_s": round(time.time() - started, 1),
    }
    rb.RESULTS.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(res, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: res[k]
                for k in ("medians", "ratios_tunelab_over_trl", f"ratios_{SYSTEM_ARM}_over_trl", "same_step_rewards")
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
