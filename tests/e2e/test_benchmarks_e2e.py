"""`tunelab eval --tasks` through the real CLI: the shipped lm-eval task (`tunelab_synthetic`, offline)
on a QLoRA run and its base, and the no-regression gate's exit codes.

The run is conftest.quickstart_run (the quickstart cut to 150 steps, shared with the eval tests). The
margin asserted below (tuned >= base + 0.15) is half of the one measured once at 100 steps (0.81 vs 0.51);
a 150-step run is trained further, so its margin is at least that.
"""

import json
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def run_dir(quickstart_run) -> Path:
    return quickstart_run


def test_the_shipped_task_scores_the_tuned_model_above_its_base(run_dir, tmp_path):
    args = ["--limit", "8", "--out", str(tmp_path), "--tasks", "tunelab_synthetic", "--max-drop", "tunelab_synthetic=0"]
    r = run_cli("eval", str(run_dir), *args)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    bench = json.loads((tmp_path / "eval.json").read_text())["benchmarks"]["tunelab_synthetic"]
    assert bench["metric"] == "acc" and bench["examples"] == 150
    assert bench["tuned"] >= bench["baseline"] + 0.15, bench
    assert 0 < bench["tuned_stderr"] < 0.06 and 0 < bench["baseline_stderr"] < 0.06
    assert bench["diff"] == pytest.approx(bench["tuned"] - bench["baseline"])
    assert f"{bench['tuned']:.4f} ± {bench['tuned_stderr']:.4f}" in r.stdout  # lm-eval's stderr, shown
    assert "gates passed (1)" in r.stdout
    assert "INFO" not in r.stderr  # lm-eval's logging kept quiet


def test_a_model_worse_than_its_baseline_fails_the_gate_with_exit_3(run_dir, tmp_path):
    # the base model judged against the tuned run as its baseline: a drop the gate must catch
    r = run_cli(
        "eval",
        "tiny:quickstart-base",
        "--baseline",
        str(run_dir),
        "--data",
        "synthetic:4:seed=5",
        "--tasks",
        "tunelab_synthetic",
        "--max-drop",
        "tunelab_synthetic=0.05,exact_match=1",
        "--out",
        str(tmp_path),
    )
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-3000:]
    failed = [line for line in r.stderr.splitlines() if line.startswith("gate failed:")]
    assert len(failed) == 1 and "tunelab_synthetic: tuned 0." in failed[0] and "> --max-drop 0.05" in failed[0]
    assert "benchmarks" in json.loads((tmp_path / "eval.json").read_text())  # the results are written first
