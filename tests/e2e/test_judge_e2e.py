"""`tunelab eval --judge` through the real CLI: a stub judge (tests/support/judge_stub.py) over the answers of
the session's tiny trained run and its base, with a 429, a malformed reply and a 500 injected."""

from __future__ import annotations

import json

import pytest

from conftest import read_jsonl, run_cli
from inference_support import trained_run
from judge_stub import StubJudge, expected

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

KEY = "sk-judge-e2e-distinctive-0f9e8d7c"
PROMPTS = 6


def test_eval_judges_both_orders_counts_faults_and_writes_no_key(tmp_path_factory, tmp_path, monkeypatch):
    run = trained_run(tmp_path_factory)
    out = tmp_path / "eval"
    monkeypatch.setenv("JUDGE_E2E_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # the default eval.judge.api_key_env: what the run's config names
    with StubJudge(faults={1: "429", 2: "malformed", 3: "500"}) as stub:
        r = run_cli(
            "eval", str(run), "--data", f"synthetic:{PROMPTS}:seed=5", "--max-new-tokens", "8", "--out", str(out),
            "--judge", stub.url, "--judge-model", "stub-judge", "--judge-concurrency", "2",
        )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "judge win rate" in r.stdout and "judge stub-judge:" in r.stdout

    judge = json.loads((out / "eval.json").read_text())["judge"]
    samples = read_jsonl(out / "eval_samples.jsonl")
    tuned = [s["answers"]["target"] for s in samples]
    baseline = [s["answers"]["baseline"] for s in samples]
    assert (judge["wins"], judge["ties"], judge["losses"]) == expected(tuned, baseline)
    assert judge["n"] == PROMPTS and judge["failures"] == 0 and judge["failed_pairs"] == 0
    assert (judge["rate_limited"], judge["unparsable"], judge["errors"].get("HTTP 500")) == (1, 1, 1)
    assert judge["retries"] == 3 and judge["requests"] == len(stub.requests) == 2 * PROMPTS + 3
    assert judge["prompt_tokens"] == 100 * (2 * PROMPTS + 1)  # the malformed reply was answered (and billed) too
    ev = json.loads((out / "eval.json").read_text())
    assert ev["models"]["target"]["metrics"]["judge_win_rate"] == pytest.approx(judge["win_rate"])
    # both orders of every prompt reached the judge
    for s in samples:
        t, b = s["answers"]["target"], s["answers"]["baseline"]
        for a_, b_ in ((t, b), (b, t)):
            pair = f"[Answer A]\n{a_}\n\n[Answer B]\n{b_}\n\nExplain"
            assert any(pair in req["prompt"] for req in stub.requests)
        assert s["judge"]["verdict"] in ("win", "tie", "loss") and len(s["judge"]["orders"]) == 2
    assert {req["auth"] for req in stub.requests} == {f"Bearer {KEY}"}
    for folder in (run, out):
        for f in folder.rglob("*"):
            if f.is_file():
                assert KEY.encode() not in f.read_bytes(), f"the key is in {f}"


def test_a_target_judges_served_in_process(tmp_path_factory, tmp_path):
    """The tiny base model as the judge: served on 127.0.0.1 for the judging, stopped after. It writes no
    `Verdict:` line, so every question is retried and counted as a failure, and the evaluation still finishes."""
    run = trained_run(tmp_path_factory)
    out = tmp_path / "eval"
    r = run_cli(
        "eval", str(run), "--data", "synthetic:1:seed=5", "--max-new-tokens", "4", "--out", str(out),
        "--judge", "tiny:llama-2l",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    ev = json.loads((out / "eval.json").read_text())
    judge = ev["judge"]
    assert judge["model"] == "tiny:llama-2l" and judge["endpoint"] == "tiny:llama-2l (served in-process)"
    tries = 1 + 3  # the first attempt and eval.judge.max_retries' default, for each of the two orders
    assert judge["requests"] == judge["unparsable"] == 2 * tries and judge["retries"] == 2 * (tries - 1)
    assert judge["errors"] == {"unparsable reply": 2 * tries}  # served and answered every time, never a verdict
    assert (judge["failures"], judge["failed_pairs"], judge.get("position_consistency")) == (2, 1, None)
    # an order without a verdict makes the prompt a tie, half a win: the win rate and its interval are exactly 0.5
    assert (judge["n"], judge["wins"], judge["ties"], judge["losses"]) == (1, 0, 1, 0)
    assert (judge["win_rate"], judge["win_rate_low"], judge["win_rate_high"]) == (0.5, 0.5, 0.5)
    assert ev["models"]["target"]["metrics"]["judge_win_rate"] == 0.5
    assert "1 of 1 prompts got no verdict" in r.stdout
