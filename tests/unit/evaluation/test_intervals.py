"""Honest differences: the paired bootstrap intervals of `tunelab eval`, the leakage count, the eval
record that holds both, the report's verdict and the baseline a continued run is compared with."""

import json
from pathlib import Path

import pytest

from conftest import run_cli


def test_identical_answers_give_an_interval_at_zero_and_no_verdict():
    from tunelab.evaluation.intervals import paired_interval

    scores = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    interval = paired_interval(scores, scores)
    assert (interval.low, interval.high, interval.prompts) == (0.0, 0.0, 8)
    assert interval.verdict(1) == "not distinguishable on 8 prompts" and not interval.distinguishes()


def test_a_clear_difference_is_better_or_worse_by_the_metrics_direction():
    from tunelab.evaluation.intervals import paired_interval

    tuned, base = [1.0] * 30 + [0.0] * 10, [0.0] * 36 + [1.0] * 4
    interval = paired_interval(tuned, base)
    assert 0 < interval.low < 0.65 < interval.high <= 1.0  # the difference of the means is 0.65
    assert interval.verdict(1) == "better" and interval.verdict(-1) == "worse" and interval.verdict(0) == "higher"
    assert paired_interval(base, tuned).verdict(1) == "worse"


def test_a_small_difference_on_few_prompts_is_not_distinguishable():
    from tunelab.evaluation.intervals import paired_interval

    tuned, base = [1, 0, 1, 0, 1, 0, 1, 0, 1, 1], [1, 0, 1, 0, 1, 0, 1, 0, 0, 1]  # one prompt apart
    interval = paired_interval(tuned, base)
    assert interval.low <= 0 <= interval.high
    assert interval.verdict(1) == "not distinguishable on 10 prompts"


def test_the_bootstrap_is_seeded():
    from tunelab.evaluation.intervals import paired_interval

    a, b = [0.3, 0.9, 0.1, 0.5, 0.7, 0.2], [0.2, 0.4, 0.3, 0.5, 0.1, 0.2]
    assert paired_interval(a, b) == paired_interval(a, b)
    other = paired_interval(a, b, seed=1)
    assert (other.low, other.high) != (paired_interval(a, b).low, paired_interval(a, b).high)


def test_score_intervals_cover_mean_and_corpus_metrics():
    from tunelab.evaluation.intervals import score_intervals
    from tunelab.scoring import config_scorers, score_set

    scorers = config_scorers(["exact_match", "chrf", "answer_words"])
    refs = [f"answer number {i}" for i in range(12)]
    tuned = list(refs)
    base = ["something else"] * 12
    ts, _ = score_set(scorers, [""] * 12, tuned, refs, [{}] * 12)
    bs, _ = score_set(scorers, [""] * 12, base, refs, [{}] * 12)
    got = score_intervals(scorers, refs, tuned, ts, base, bs, resamples=200)
    assert set(got) == {"exact_match", "chrf", "answer_words"}
    assert got["exact_match"].low == got["exact_match"].high == 1.0 and got["exact_match"].verdict() == "better"
    assert got["chrf"].low > 50 and got["chrf"].verdict() == "better"  # the corpus score, recomputed per resample
    assert got["answer_words"].verdict() == "higher"  # 3 words vs 2; no direction: higher / lower


def test_leakage_counts_exact_and_near_duplicate_prompts():
    from tunelab.config.schema import PromptConfig
    from tunelab.evaluation.leakage import count_leakage, rows_leakage, warning

    training = [
        "What is the capital of France?",
        "Translate 'good morning' into German, please, and keep it polite and short.",
        "Add 3 and 4.",
    ]
    held_out = [
        "what is the capital of france",  # exact after folding case and punctuation
        "Translate 'good morning' into German, please, and keep it polite and brief.",  # near: Jaccard 10/12
        "Name the largest planet of the solar system.",  # new
        "Add 5 and 6.",  # short and different: not a near-duplicate
        "Translate 'good morning' into German",  # inside a training prompt, but short: checked exactly only
    ]
    leak = count_leakage(held_out, training)
    assert (leak.checked, leak.training_rows, leak.exact, leak.near) == (5, 3, 1, 1)
    assert leak.examples == [0, 1] and leak.threshold == 0.8 and leak.ngram == 3
    assert "1 of 5 held-out prompts" in warning(leak)
    assert warning(count_leakage(held_out[2:], training)) is None

    alpaca = PromptConfig(format="alpaca")
    rows = [{"instruction": "Add 3 and 4.", "input": "", "output": "7"}]
    assert rows_leakage(rows, [{"instruction": "add 3 and 4", "output": "seven"}], alpaca).exact == 1


def test_eval_record_round_trips_intervals_and_leakage_and_reads_old_files(tmp_path):
    from tunelab.runs.records import EvalInterval, EvalLeakage, EvalRecord

    record = EvalRecord(
        target="runs/a",
        difference={"exact_match": 0.25},
        intervals={"exact_match": EvalInterval(low=0.1, high=0.4, prompts=32, resamples=1000, seed=0, direction=1)},
        leakage=EvalLeakage(checked=32, training_rows=200, exact=1, near=0, examples=[3]),
    )
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(record.to_dict()))
    back = EvalRecord.read(path)
    assert back.intervals["exact_match"].verdict() == "better" and back.leakage.exact == 1
    assert back.to_dict() == record.to_dict()

    path.write_text(json.dumps({"target": "old", "models": {"target": {"metrics": {"exact_match": 0.5}}}}))
    old = EvalRecord.read(path)
    assert old.intervals is None and old.leakage is None and "intervals" not in old.to_dict()
    path.write_text(json.dumps({"target": "x", "intervals": {"exact_match": {"low": "wide", "high": 1}}}))
    assert EvalRecord.read(path).intervals is None  # an interval of another shape reads as absent


def _run(name: str, scores: list[float]):
    from tunelab.runs.contents import RunData

    samples = [
        {"index": i, "prompt": f"q{i}", "reference": "r", "scores": {"target": {"exact_match": s}}}
        for i, s in enumerate(scores)
    ]
    return RunData(path=Path(name), name=name, eval_samples=samples)


def test_report_names_no_winner_within_noise():
    from tunelab.evaluation.report import metric_row, verdict

    a = [1.0] * 10 + [0.0] * 10
    b = [1.0] * 11 + [0.0] * 9  # one prompt better on 20: noise
    rows = [metric_row("exact match", "exact_match", [0.5, 0.55], "pct")]
    line = verdict([_run("a", a), _run("b", b)], rows, [])
    assert line.startswith("b and a are not distinguishable on exact match on 20 prompts (55.0% vs 50.0%")
    assert "Best" not in line

    far = [1.0] * 19 + [0.0]
    rows = [metric_row("exact match", "exact_match", [0.5, 0.95], "pct")]
    line = verdict([_run("a", a), _run("c", far)], rows, [])
    assert line.startswith("Best on exact match: c (95.0%), +45.0 points against a (95 % interval +")
    assert line.endswith("paired over 20 prompts).")


def test_compare_shows_each_recorded_interval(tmp_path):
    from tunelab.runs.index import metrics_of
    from tunelab.runs.records import EvalInterval, EvalRecord

    run = tmp_path / "a"
    run.mkdir()
    (run / "config.yaml").write_text("model:\n  name: tiny:llama-2l\n")
    record = EvalRecord(
        target=str(run),
        intervals={"chrf": EvalInterval(low=-3.2, high=1.5, prompts=24, direction=1)},
    )
    (run / "eval.json").write_text(json.dumps(record.to_dict()))
    assert metrics_of(run)["eval_vs_baseline_chrf"] == "-3.2..+1.5: not distinguishable on 24 prompts"


@pytest.mark.slow
def test_eval_prints_and_records_every_interval(tmp_path):
    """Two identical models: every generation metric's interval is at zero, and the table says so."""
    out = tmp_path / "ev"
    r = run_cli(
        "eval",
        "tiny:llama-2l",
        "--data",
        "synthetic:12:seed=3",
        "--baseline",
        "tiny:llama-2l",
        "--out",
        str(out),
        "--max-new-tokens",
        "6",
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ev = json.loads((out / "eval.json").read_text())
    assert set(ev["intervals"]) == {"exact_match", "normalized_exact_match", "rougeL", "bleu", "chrf", "answer_words"}
    for interval in ev["intervals"].values():
        assert interval["low"] == interval["high"] == 0.0 and interval["prompts"] == 12
    assert "95 % interval" in r.stdout and r.stdout.count("not distinguishable on 12 prompts") == 6


def _config(model_name: str):
    from tunelab.config.load import build_config

    return build_config({"model": {"name": model_name}, "data": {"train": {"path": "synthetic:20"}}})


def test_a_run_that_continued_an_sft_run_is_compared_with_that_run(tmp_path):
    """SFT, then DPO: the default baseline is the SFT model (its adapter on), labelled as the start."""
    from tunelab.evaluation.runner import baseline_model
    from tunelab.inference.target import Target

    sft = tmp_path / "sft"
    (sft / "final").mkdir(parents=True)
    (sft / "config.yaml").write_text("model:\n  name: tiny:llama-2l\n")
    (sft / "final" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "x", "r": 8}))
    (sft / "final" / "tunelab_model.json").write_text(json.dumps({"kind": "adapter", "base_model": "tiny:llama-2l"}))
    dpo = Target(
        str(tmp_path / "dpo"), base="tiny:llama-2l", adapter=tmp_path / "dpo" / "final", config=_config(str(sft))
    )
    row, load = baseline_model(dpo, None, use_baseline=True)
    assert load is not None and load.adapter == sft / "final" and load.base == "tiny:llama-2l"
    assert row.label.startswith("start (") and row.label.endswith("sft)") and str(sft / "final") in row.spec

    plain = Target("runs/x", base="/cache/tiny", adapter=tmp_path / "x" / "final", config=_config("tiny:llama-2l"))
    row, load = baseline_model(plain, None, use_baseline=True)
    assert load is None and row.label == "base (tiny:llama-2l)" and row.spec.endswith("(adapter disabled)")
    assert baseline_model(plain, None, use_baseline=False) == (None, None)


def test_train_table_shows_preference_accuracy_and_margin(tmp_path):
    from tunelab.cli.main import _preference_rows
    from tunelab.runs.records import Summary

    (tmp_path / "metrics.jsonl").write_text(
        "\n".join(
            json.dumps(m) for m in ({"step": 0, "preference_margin": -0.5}, {"step": 8, "preference_margin": 2.25})
        )
    )
    s = Summary(
        status="completed", run_dir=str(tmp_path), preference_accuracy_before=0.5, preference_accuracy_after=0.875
    )
    assert _preference_rows(s) == [
        ("preference accuracy", "50.0% before -> 87.5% after"),
        ("preference margin", "-0.500 -> 2.250 nats (chosen - rejected, first -> last evaluation)"),
    ]
    assert _preference_rows(Summary(status="completed", run_dir=str(tmp_path))) == []  # SFT: no rows


def _evaluated(name: str, scores: list[float]):
    """A run whose eval.json and eval_samples.jsonl hold these per-prompt exact-match scores."""
    from tunelab.runs.records import EvalModel, EvalRecord

    run = _run(name, scores)
    run.eval = EvalRecord(
        models={"target": EvalModel(metrics={"exact_match": sum(scores) / len(scores)})},
        scorers={"exact_match": "exact_match"},
    )
    return run


def test_report_stars_no_best_run_within_noise():
    """The eval table's star agrees with the verdict: none where the runs' paired interval includes zero."""
    from tunelab.evaluation.report import metrics_tables

    def stars(*runs) -> list[bool]:
        row = next(r for r in metrics_tables(list(runs))[0] if r["key"] == "exact_match")
        return [c["best"] for c in row["cells"]]

    a = [1.0] * 10 + [0.0] * 10
    assert stars(_evaluated("a", a), _evaluated("b", [1.0] * 11 + [0.0] * 9)) == [False, False]  # 1 of 20: noise
    assert stars(_evaluated("a", a), _evaluated("c", [1.0] * 19 + [0.0])) == [False, True]


@pytest.mark.parametrize("runs", [2, 3])
def test_the_report_bootstraps_each_pair_of_runs_once(monkeypatch, runs):
    """The eval table's star and the verdict line weigh the same pair (best against second): one bootstrap."""
    import tunelab.evaluation.report as report

    calls = []
    real = report.paired_interval
    monkeypatch.setattr(report, "paired_interval", lambda a, b: calls.append(1) or real(a, b))
    scores = [[1.0] * 10 + [0.0] * 10, [1.0] * 19 + [0.0], [1.0] * 5 + [0.0] * 15][:runs]
    context = report.build_context([_evaluated(f"r{i}", s) for i, s in enumerate(scores)], max_prompts=3)
    assert context["verdict"].startswith("Best on exact match: r1 (95.0%), +45.0 points against r0 (95 % interval +")
    row = next(r for r in context["eval_rows"] if r["key"] == "exact_match")
    assert [c["best"] for c in row["cells"]][:2] == [False, True]
    assert len(calls) == 1
