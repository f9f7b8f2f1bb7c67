"""The pairwise judge against a stub OpenAI-compatible server (tests/support/judge_stub.py): verdicts in
both orders, the tie rule, retries and failures counted, the template and the spec checked up front."""

from __future__ import annotations

import pytest

from judge_stub import StubJudge, expected
from tunelab.config.schema import JudgeConfig
from tunelab.errors import TunelabError
from tunelab.evaluation.judge import (
    DEFAULT_TEMPLATE,
    AnswerPairs,
    JudgeTemplate,
    judge_spec,
    load_template,
    parse_verdict,
    run_judge,
)
from tunelab.scoring.judge_client import JudgeClient

pytestmark = pytest.mark.timeout(60)

INSTRUCTIONS = [f"Say something about topic {i}." for i in range(8)]
TUNED = ["a long tuned answer", "short", "same", "a much longer tuned answer here", "x", "yy", "tuned wins", "zz"]
BASELINE = ["base", "a longer baseline answer", "sane", "b", "baseline wins here", "qq", "t", "ww"]


def spec_for(url: str, **config) -> object:
    return judge_spec(JudgeConfig(**{"timeout_s": 0.5, "max_retries": 3, **config}), url, "stub-judge")


def test_verdicts_follow_the_rule_and_both_orders_are_asked(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-distinctive-test-key-4711")
    with StubJudge() as stub:
        result, verdicts = run_judge(spec_for(stub.url), AnswerPairs(INSTRUCTIONS, TUNED, BASELINE), backoff_s=0)
    assert (result.wins, result.ties, result.losses) == expected(TUNED, BASELINE) == (3, 3, 2)
    assert result.n == 8 and result.win_rate == pytest.approx((3 + 3 / 2) / 8)
    assert result.win_rate_low <= result.win_rate <= result.win_rate_high
    assert result.position_consistency == 1.0 and result.inconsistent == 0 and result.failed_pairs == 0
    assert (result.requests, result.retries, result.failures) == (16, 0, 0)
    assert (result.prompt_tokens, result.completion_tokens) == (1600, 160)
    assert result.model == "stub-judge" and result.template == DEFAULT_TEMPLATE
    # every prompt was asked twice, once with each answer first
    for i, instruction in enumerate(INSTRUCTIONS):
        asked = [r["prompt"] for r in stub.requests if instruction in r["prompt"]]
        tuned_first = {f"[Answer A]\n{TUNED[i]}\n" in p for p in asked}
        assert len(asked) == 2 and tuned_first == {True, False}
    assert {r["auth"] for r in stub.requests} == {"Bearer sk-distinctive-test-key-4711"}
    assert {r["path"] for r in stub.requests} == {"/v1/chat/completions"}
    assert "sk-distinctive" not in result.model_dump_json()
    assert [v.verdict for v in verdicts][:2] == ["win", "loss"]
    assert verdicts[0].sample()["orders"][0]["verdict"] == "A" and verdicts[0].sample()["orders"][1]["verdict"] == "B"


def test_faults_are_retried_counted_and_never_abort():
    faults = {1: "429", 2: "malformed", 3: "slow", 4: "500"}
    instructions = [*INSTRUCTIONS[:6], "NOVERDICT please", "POSITION please"]
    with StubJudge(faults=faults, slow_s=1.5) as stub:
        result, verdicts = run_judge(
            spec_for(stub.url, concurrency=2), AnswerPairs(instructions, TUNED, BASELINE), backoff_s=0
        )
    # the transient faults cost one retry each and change no verdict; NOVERDICT fails both orders after
    # 1 + 3 attempts each; POSITION answers A whatever the order: a disagreement, so a tie
    first_six = expected(TUNED[:6], BASELINE[:6])
    assert (result.wins, result.ties, result.losses) == (first_six[0], first_six[1] + 2, first_six[2])
    assert result.failed_pairs == 1 and result.failures == 2 and result.inconsistent == 1
    assert result.position_consistency == pytest.approx(6 / 7)
    assert result.rate_limited == 1 and result.unparsable == 1 + 2 * 4
    assert result.retries == 4 + 2 * 3
    assert result.requests == len(stub.requests) == 16 + result.retries
    assert result.errors["timeout"] == 1 and result.errors["HTTP 500"] == 1 and result.errors["HTTP 429"] == 1
    failed = verdicts[6].sample()
    assert failed["verdict"] == "tie" and failed["failed"] and failed["orders"][0]["verdict"] is None
    assert verdicts[7].sample()["consistent"] is False


def test_a_request_the_server_refuses_is_not_retried():
    with StubJudge() as stub:
        with JudgeClient(stub.url, "m", max_retries=3, backoff_s=0) as client:
            value, why = client.ask("not the template", parse_verdict)
    assert value is None and why.startswith("HTTP 400: not the judge template")
    assert (client.counts.requests, client.counts.failures) == (1, 1)


def test_an_unreachable_endpoint_is_counted_not_raised():
    with JudgeClient("http://127.0.0.1:9/v1", "m", timeout_s=0.5, max_retries=1, backoff_s=0) as client:
        value, why = client.ask("hi", parse_verdict)
    assert value is None and why.startswith("connection error")
    assert (client.counts.requests, client.counts.retries, client.counts.failures) == (2, 1, 1)


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("Answer A is better.\nVerdict: A", "A"),
        ("**Verdict:** [[B]]", "B"),
        ("verdict: TIE", "tie"),
        ("Verdict: A\n...on reflection\nVerdict: B", "B"),
        ("A is better", None),
        ("Verdict: neither", None),
    ],
)
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_template_renders_only_its_placeholders(tmp_path):
    t = JudgeTemplate('{"json": 1} {instruction} | {answer_a} | {answer_b}', "mine")
    assert t.render("do {answer_b}", "one", "two") == '{"json": 1} do {answer_b} | one | two'
    path = tmp_path / "judge.txt"
    path.write_text("{instruction} {answer_a}")
    with pytest.raises(TunelabError, match=r"lacks \{answer_b\}"):
        load_template(str(path))
    with pytest.raises(TunelabError, match="cannot be read"):
        load_template(str(tmp_path / "missing.txt"))
    path.write_text("{instruction} {answer_a} {answer_b}")
    assert load_template(str(path)).source == str(path)


def test_spec_is_checked_before_anything_loads():
    assert judge_spec(JudgeConfig(), None) is None
    with pytest.raises(TunelabError, match="not an http"):
        judge_spec(None, "ftp://host/v1", "m")
    with pytest.raises(TunelabError, match="which model judges"):
        judge_spec(None, "http://localhost:11434/v1")
    with pytest.raises(TunelabError, match="--judge-concurrency 0"):
        judge_spec(None, "http://localhost:11434/v1", "m", 0)
    spec = judge_spec(JudgeConfig(url="https://user:pw@api.example.com/v1", model="gpt"), None)
    assert spec.endpoint == "https://api.example.com/v1" and spec.concurrency == 4
    served = judge_spec(JudgeConfig(), "runs/other")
    assert served.target == "runs/other" and served.url is None
    with pytest.raises(ValueError, match="url or target, not both"):
        JudgeConfig(url="http://x/v1", target="runs/a")


def _add_judge(run, wins: int, ties: int, losses: int) -> None:
    """A judge result in a run's eval.json, as `tunelab eval --judge` writes one."""
    import json

    n = wins + ties + losses
    ev = json.loads((run / "eval.json").read_text())
    rate = (wins + ties / 2) / n
    ev["models"]["target"]["metrics"]["judge_win_rate"] = rate
    ev["judge"] = {"model": "stub", "template": DEFAULT_TEMPLATE, "n": n, "wins": wins, "ties": ties,
                   "losses": losses, "win_rate": rate, "win_rate_low": rate - 0.1, "win_rate_high": rate + 0.1,
                   "position_consistency": 0.9, "failed_pairs": 1}  # fmt: skip
    (run / "eval.json").write_text(json.dumps(ev))


def test_report_draws_a_win_tie_loss_bar_per_judged_run(tmp_path):
    from report_runs import make_run
    from tunelab.evaluation.report import write_report

    judged, plain = make_run(tmp_path, "judged", 1e-3, 0.5), make_run(tmp_path, "plain", 2e-3, 0.4)
    _add_judge(judged, 6, 2, 2)
    write_report([judged, plain], tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert html.count('<div class="wtl">') == 1
    assert 'class="wins" style="width: 60.00%"' in html and 'class="losses" style="width: 20.00%"' in html
    assert "6 / 2 / 2 of 10" in html and "70.0% (60.0%..80.0%), better" in html and "1 without a verdict" in html
    assert "judge win rate vs baseline (ties half)" in html  # the metric-table row, in the eval table


def test_runs_index_and_sweeps_read_the_win_rate(tmp_path):
    from report_runs import make_run
    from tunelab.runs import RunDir
    from tunelab.runs.metric_table import TABLE

    run = make_run(tmp_path, "judged", 1e-3, 0.5)
    _add_judge(run, 3, 1, 0)
    record = RunDir(run).read_eval()
    assert record.judge.win_rate == pytest.approx(0.875) and record.judge.verdict() == "better"
    row = TABLE.get("eval.judge_win_rate")
    assert row.direction == 1 and record.metrics()[row.field] == pytest.approx(0.875)
    from tunelab.sweep.gateway import objective_value

    assert objective_value(run, "eval.judge_win_rate") == pytest.approx(0.875)


def test_a_sweep_may_maximize_the_win_rate_only_of_runs_that_name_a_judge(tmp_path):
    from tunelab.config import build_config
    from tunelab.sweep.gateway import metric_problem

    cfg = {
        "model": {"name": "tiny:llama-2l"},
        "data": {"train": {"path": "synthetic:50"}, "test_size": 8},
        "output": {"dir": str(tmp_path)},
    }
    problem = metric_problem("eval.judge_win_rate", build_config(cfg), pruning=False)
    assert problem == "eval.judge_win_rate: the run names no judge (set eval.judge.url or eval.judge.target)"
    cfg["eval"] = {"judge": {"url": "http://localhost:11434/v1", "model": "m"}}
    assert metric_problem("eval.judge_win_rate", build_config(cfg), pruning=False) is None
