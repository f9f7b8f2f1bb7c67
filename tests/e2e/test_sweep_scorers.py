"""A sweep whose objectives are scorers (issue 23): a scorer the base config declares under a name of its own,
read from eval.json after each trial's `tunelab eval` and from metrics.jsonl; the best trial is the best by it."""

from __future__ import annotations

import json

import pytest

from conftest import run_sweep

pytestmark = pytest.mark.slow

BASE = {
    "model": {"name": "tiny:llama-2l"},
    "adapter": {"r": 8, "alpha": 16, "dropout": 0.0},
    "data": {"train": {"path": "synthetic:48:seed=5"}, "test_size": 4},
    "training": {"max_steps": 2, "batch_size": 4, "max_length": 128, "eval_steps": 2, "gradient_checkpointing": False},
    "samples": {"num_prompts": 2, "max_new_tokens": 6},
    # chrF reported as `similarity`: continuous, so two trials can differ; higher is better (its kind's direction)
    "eval": {"scorers": ["exact_match", {"chrf": {"name": "similarity"}}]},
    "tracking": {"backend": "none"},
    "output": {"dir": "runs"},
}
SWEEP = {
    "base": {"config": "base.yaml"},
    "method": "grid",
    "space": {"training.learning_rate": [1.0e-4, 0.3]},
    "objective": ["eval.similarity", "samples_similarity"],
}


def test_a_sweep_on_a_declared_scorer_ranks_its_trials_by_it(tmp_path):
    r, res = run_sweep(tmp_path, BASE, SWEEP)
    assert res["objectives"] == [
        {"metric": "eval.similarity", "direction": "maximize"},
        {"metric": "samples_similarity", "direction": "maximize"},
    ]
    trials = [t for t in res["trials"] if t["state"] == "completed"]
    assert len(trials) == 2 and all(v is not None for t in trials for v in t["values"])
    for t in trials:  # each value is what the trial's own files say
        run = tmp_path / "sweeps" / "s" / "trials" / t["name"]
        ev = json.loads((run / "eval.json").read_text())
        assert t["values"][0] == pytest.approx(ev["models"]["target"]["metrics"]["similarity"])
        assert ev["scorers"]["similarity"] == {"chrf": {"name": "similarity"}}
        logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        last = [m["samples_similarity"] for m in logged if "samples_similarity" in m][-1]
        assert t["values"][1] == pytest.approx(last)
    assert res["best"]["values"][0] == max(t["values"][0] for t in trials)  # maximized, ranked by the first
    assert res["trials"][0]["number"] == res["best"]["trial"]
    assert "eval.similarity (max)" in r.stdout
