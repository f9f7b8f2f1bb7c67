"""Hand-made run directories for the report tests: the files training and `tunelab eval` write,
with chosen numbers, so the report's tables can be checked against known values in seconds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{q}\n\n### Response:\n"
)
QUESTIONS = [
    ("What is 3 plus 4?", "7"),
    ("Repeat the word cat 2 times.", "cat cat"),
    ("Which word comes first?", "sun"),
]


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def make_run(
    root: Path, name: str, lr: float, final_em: float | None, steps: int = 40, evaluated: bool = True, answer: str = "7"
) -> Path:
    """A finished run whose loss falls as exp(-lr * 1000 * step / steps); final_em=None: no eval.json."""
    run = root / name
    run.mkdir(parents=True)
    config = {
        "model": {"name": "tiny:llama-2l"},
        "quantization": {"bits": None},
        "adapter": {"type": "lora", "r": 8, "alpha": 16},
        "data": {"train": {"path": "synthetic:200"}, "test_size": 16},
        "prompt": {"format": "alpaca"},
        "training": {"max_steps": steps, "learning_rate": lr, "batch_size": 4, "seed": 42},
        "output": {"dir": str(root), "name": name},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = []
    for step in range(1, steps + 1):
        metrics.append(
            {
                "step": step,
                "loss": 3 * math.exp(-lr * 1000 * step / steps),
                "learning_rate": lr,
                "tokens_per_s": 1000.0 + step,
            }
        )
        if step % 20 == 0:
            metrics.append({"step": step, "eval_loss": 3.2 * math.exp(-lr * 800 * step / steps)})
            metrics.append({"step": step, "samples_exact_match": step / steps / 2, "samples_chrf": 40.0 + step})
    write_jsonl(run / "metrics.jsonl", metrics)
    samples = [
        {
            "step": step,
            "prompt": PROMPT.format(q=q),
            "generation": answer if step == steps else "no",
            "reference": ref,
            "settings": {},
        }
        for step in (20, steps)
        for q, ref in QUESTIONS
    ]
    write_jsonl(run / "samples.jsonl", samples)
    summary = {
        "status": "completed",
        "steps": steps,
        "wall_time_s": 12.5,
        "train_time_s": 10.0,
        "tokens_per_s": 1020.0,
        "device": "cpu",
        "host": "test-host",
        "peak_rss_mb": 900.0,
        "base_model": "tiny:llama-2l",
        "final_train_loss": metrics[-3]["loss"],
        "final_eval_loss": metrics[-2]["eval_loss"],
        "samples_exact_match_before": 0.0,
        "samples_exact_match_after": steps / steps / 2,
        "parameters": {"total": 1000, "trainable": 100},
        "data": {"train_rows": 184, "test_rows": 16},
    }
    (run / "summary.json").write_text(json.dumps(summary))
    lineage = {"inputs": [{"type": "dataset", "ref": "trackio:tunelab/tasks:v3", "digest": "ab" * 32}], "outputs": []}
    (run / "lineage.json").write_text(json.dumps(lineage))
    if evaluated and final_em is not None:
        ev = {
            "target": str(run),
            "step": steps,
            "created": "2026-01-01T00:00:00+00:00",
            "data": {"source": "test split", "split": "test", "examples": 3},
            "models": {
                "target": {
                    "label": name,
                    "model": "final",
                    "metrics": {"exact_match": final_em, "loss": 1 - final_em, "chrf": 50.0},
                },
                "baseline": {
                    "label": "base",
                    "model": "base",
                    "metrics": {"exact_match": 0.05, "loss": 3.0, "chrf": 10.0},
                },
            },
        }
        (run / "eval.json").write_text(json.dumps(ev))
        write_jsonl(
            run / "eval_samples.jsonl",
            [
                {
                    "index": i,
                    "prompt": PROMPT.format(q=q),
                    "reference": ref,
                    "answers": {"target": answer, "baseline": "x"},
                    "scores": {},
                }
                for i, (q, ref) in enumerate(QUESTIONS)
            ],
        )
    return run


def make_unfinished_run(root: Path, name: str) -> Path:
    """A run that has written its config and nothing else yet."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        yaml.safe_dump({"model": {"name": "tiny:llama-2l"}, "training": {"learning_rate": 5e-4}})
    )
    return run
