"""A sweep over GRPO runs (issue 24): the objective is the held-out reward the runs log at each evaluation
(a median pruner is set, so the trials report it step by step), every trial is an ordinary GRPO run, and
`runs compare` reads two of them beside each other."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import read_jsonl, run_cli, run_sweep

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BASE = {
    "model": {"name": "tiny:llama-2l"},
    "adapter": {"r": 8, "alpha": 16, "dropout": 0.0},
    "data": {"train": {"path": "synthetic:48:seed=5"}, "test_size": 4},
    "training": {
        "method": "grpo",
        "max_steps": 2,
        "batch_size": 4,
        "grad_accum": 1,
        "max_length": 128,
        "eval_steps": 1,
        "gradient_checkpointing": False,
    },
    "grpo": {
        "num_generations": 2,
        "max_completion_length": 6,
        "rewards": [{"exact_match": {"weight": 1.0}}, {"regex": {"pattern": "\\d", "weight": 0.5, "name": "digit"}}],
    },
    "samples": {"num_prompts": 4, "max_new_tokens": 6},
    "tracking": {"backend": "none"},
    "output": {"dir": "runs"},
}
SWEEP = {
    "base": {"config": "base.yaml"},
    "method": "grid",
    "space": {"grpo.temperature": [0.7, 1.2]},
    "objective": "heldout_reward",
    "pruner": {"name": "median", "startup_trials": 1, "warmup_steps": 0},
}


def test_a_sweep_of_grpo_runs_ranks_them_by_the_held_out_reward(tmp_path):
    _, res = run_sweep(tmp_path, BASE, SWEEP, timeout=800)
    assert res["objectives"] == [{"metric": "heldout_reward", "direction": "maximize"}]
    trials = [t for t in res["trials"] if t["state"] in ("completed", "pruned")]
    assert len(trials) == 2
    names = []
    for t in trials:  # each value is the trial's own last logged held-out reward
        run = tmp_path / "sweeps" / "s" / "trials" / t["name"]
        names.append(str(run))
        logged = [m["heldout_reward"] for m in read_jsonl(run / "metrics.jsonl") if "heldout_reward" in m]
        assert logged and t["values"][0] == pytest.approx(logged[-1])
        summary = json.loads((run / "summary.json").read_text())
        assert summary["heldout_reward_after"] == pytest.approx(logged[-1])
        assert yaml.safe_load((run / "config.yaml").read_text())["training"]["method"] == "grpo"
    best = max(trials, key=lambda t: t["values"][0])
    assert res["best"]["values"][0] == best["values"][0]
    c = run_cli("runs", "compare", *names, "--json", cwd=tmp_path, timeout=120)
    assert c.returncode == 0, c.stderr[-2000:]
    table = json.loads(c.stdout)
    assert sorted(table["config"]["grpo.temperature"]) == [0.7, 1.2]
    after = table["metrics"]["heldout_reward_after"]
    assert after == [pytest.approx(t["values"][0]) for t in trials]  # the same figures the sweep ranked by
