"""training.method grpo through the real CLI on the tiny model: per-reward metrics, the held-out reward
before and after, failures of a python reward counted, `tunelab eval` on the run, and a crash then
`--resume` that continues to the losses and rewards of an uninterrupted run; SIGTERM mid-run: a checkpoint
at the next step, then `--resume` finishes."""

from __future__ import annotations

import json

import pytest

from conftest import base_config, read_jsonl, run_cli, run_faulty, write_cfg

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REWARDS = [
    {"exact_match": {"weight": 1.0}},
    {"regex": {"pattern": "\\d", "weight": 0.2}},
    {"python": "my_rewards:picky"},
]


def grpo_run_config(tmp_path, synth_file, **training):
    (tmp_path / "my_rewards.py").write_text(
        "def picky(prompt, answer, reference, row):\n"
        "    if 'word' in prompt:\n"
        "        raise ValueError('cannot score words')\n"
        "    return float(len(answer) < 20)\n"
    )
    cfg = base_config(
        synth_file,
        tmp_path / "runs",
        training={"method": "grpo", "max_steps": 4, "batch_size": 4, "grad_accum": 1, "eval_steps": None, **training},
        grpo={"num_generations": 2, "max_completion_length": 6, "rewards": REWARDS},
        samples={"num_prompts": 4, "max_new_tokens": 6, "at_start": True},
        tracking={"backend": "none"},
    )
    cfg["adapter"]["dropout"] = 0.1  # the RNG state is part of what resume restores
    return write_cfg(tmp_path, cfg)


def trained(metrics: list[dict]) -> dict[int, dict]:
    return {m["step"]: m for m in metrics if "loss" in m}


@pytest.mark.timeout(600)
def test_grpo_run_logs_each_reward_and_the_held_out_reward(tmp_path, synth_file):
    path = grpo_run_config(tmp_path, synth_file)
    r = run_cli("train", str(path), "output.name=g", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "g"
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "completed" and s["steps"] == 4
    assert 0 <= s["heldout_reward_before"] <= 1.4 and 0 <= s["heldout_reward_after"] <= 1.4
    steps = trained(read_jsonl(run / "metrics.jsonl"))
    assert sorted(steps) == [1, 2, 3, 4]
    for m in steps.values():
        for key in ("rewards/exact_match/mean", "rewards/regex/std", "reward", "reward_std", "frac_reward_zero_std"):
            assert key in m, key
        assert "completions/clipped_ratio" in m and "completions/mean_length" in m
    # the python reward raised on the prompts about words: counted, said once, never a traceback
    assert "Traceback" not in r.stderr
    assert s["reward_failures"]["picky"] == steps[4]["reward_failures/picky"] > 0
    assert s["reward_failures"]["exact_match"] == 0
    assert s["heldout_reward_failures"]["picky"] > 0  # the held-out prompts about words, at the start and the end
    assert r.stderr.count("warning: reward picky") == 2  # once for the rollouts, once for the held-out answers
    held = [m for m in read_jsonl(run / "metrics.jsonl") if "heldout_reward" in m]
    assert [m["step"] for m in held] == [0, 4]
    # one record per sampled step: the sample table's figures and the held-out reward together
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl") if "samples_exact_match" in m] == [0, 4]
    assert all("samples_regex" in m for m in held)
    assert not (run / "checkpoints" / "README.md").exists()
    rollouts = read_jsonl(run / "rollouts.jsonl")  # the last step's generation batch: 2 prompts x 2 completions
    assert len(rollouts) == 4 and {r["step"] for r in rollouts} == {4}
    assert set(rollouts[0]["rewards"]) == {"exact_match", "regex", "picky"} and "advantage" in rollouts[0]

    e = run_cli("eval", str(run), "--limit", "4", "--no-baseline", cwd=tmp_path)
    assert e.returncode == 0, e.stderr[-3000:]
    # eval re-scores the held-out answers with the rewards; picky's failures leave it unscored, as in training
    record = json.loads((run / "eval.json").read_text())
    assert {"exact_match", "regex", "picky"} <= set(record["scorers"]) and "regex" in record["models"]["target"][
        "metrics"
    ]
    assert e.stderr.count("warning: reward picky") <= 1

    # a GRPO run is a run like any other downstream: merged, generated from, in the report beside its figures
    m = run_cli("merge", str(run), "-o", str(tmp_path / "merged"), cwd=tmp_path)
    assert m.returncode == 0, m.stderr[-2000:]
    assert "saved logits match the adapter model's" in m.stdout
    g = run_cli("generate", str(tmp_path / "merged"), "What is 2 plus 3?", "--max-new-tokens", "4", cwd=tmp_path)
    assert g.returncode == 0 and g.stdout.strip(), g.stderr[-2000:]
    rep = run_cli("report", str(run), "-o", str(tmp_path / "report.html"), cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr[-2000:]
    html = (tmp_path / "report.html").read_text()
    assert "held-out reward, last evaluation" in html and "mean reward (training rollouts)" in html


def test_grpo_resume_after_a_crash_continues_as_an_uninterrupted_run(tmp_path, synth_file):
    path = grpo_run_config(tmp_path, synth_file, save_steps=2)
    off = "samples.enabled=false"
    assert run_cli("train", str(path), "output.name=straight", off, cwd=tmp_path).returncode == 0
    r = run_faulty("crash_after_save:2", "train", str(path), "output.name=crashed", off, cwd=tmp_path)
    assert r.returncode == 75, r.stderr[-2000:]
    r = run_cli("train", str(path), "output.name=crashed", off, "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    straight = trained(read_jsonl(tmp_path / "runs" / "straight" / "metrics.jsonl"))
    resumed = trained(read_jsonl(tmp_path / "runs" / "crashed" / "metrics.jsonl"))
    assert sorted(resumed) == [1, 2, 3, 4]
    for step in (3, 4):
        for key in ("loss", "reward", "rewards/exact_match/mean", "completions/mean_length"):
            assert resumed[step][key] == pytest.approx(straight[step][key], abs=1e-4), (step, key)


def test_grpo_sigterm_mid_run_saves_a_checkpoint_and_resume_finishes(tmp_path, synth_file):
    path = grpo_run_config(tmp_path, synth_file, save_steps=None)
    off = "samples.enabled=false"
    r = run_faulty("signal_at:2:SIGTERM", "train", str(path), "output.name=stopped", off, cwd=tmp_path)
    assert r.returncode == 143, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "continue with: tunelab train" in r.stdout + r.stderr
    run = tmp_path / "runs" / "stopped"
    stopped = json.loads((run / "summary.json").read_text())
    # the signal came during step 2's callbacks: the run stops at the next step boundary, with its checkpoint
    assert stopped["status"] == "interrupted" and "SIGTERM" in stopped["reason"], stopped
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-000003"]
    assert not (run / "final").exists()
    r = run_cli("train", str(path), "output.name=stopped", off, "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    done = json.loads((run / "summary.json").read_text())
    assert done["status"] == "completed" and done["steps"] == 4 and done["resumed_from"].endswith("step-000003")
    assert sorted(trained(read_jsonl(run / "metrics.jsonl"))) == [1, 2, 3, 4]
    assert (run / "final").is_dir()
