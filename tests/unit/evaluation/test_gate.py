"""The no-regression gate of `tunelab eval` (`--max-drop`, `--min-win-rate`): parsing, the up-front
checks, and the pass / fail lines on a written record."""

import math

import pytest

from tunelab.errors import TunelabError
from tunelab.evaluation.gate import (
    Gates,
    MaxDrop,
    Measured,
    check_gates,
    failures,
    parse_gates,
    record_failures,
)
from tunelab.evaluation.metrics import metric_table
from tunelab.runs.records import EvalRecord

DIRECTIONS = {"exact_match": 1, "loss": -1, "answer_words": 0}


def test_max_drop_takes_repeated_and_comma_separated_limits():
    gates = parse_gates(["tunelab_synthetic=0.02, exact_match=0.1", "loss=0"], 0.5)
    assert gates.max_drops == (
        MaxDrop("tunelab_synthetic", 0.02),
        MaxDrop("exact_match", 0.1),
        MaxDrop("loss", 0.0),
    )
    assert gates.min_win_rate == 0.5 and gates
    assert not parse_gates(None, None)


@pytest.mark.parametrize("bad", ["exact_match", "exact_match=", "=0.1", "exact_match=two", "loss=-0.1", "x=nan"])
def test_a_malformed_max_drop_is_one_line_naming_it(bad):
    with pytest.raises(TunelabError, match="--max-drop") as e:
        parse_gates([bad], None)
    assert "NAME=LIMIT" in e.value.message


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_a_win_rate_outside_zero_to_one_is_refused(rate):
    with pytest.raises(TunelabError, match="--min-win-rate"):
        parse_gates(None, rate)


def test_unknown_names_and_impossible_gates_are_refused_before_anything_loads():
    gates = parse_gates(["tunelab_synthetic=0.02,exact_match=0.1"], None)
    check_gates(gates, ["tunelab_synthetic"], DIRECTIONS, baseline=True, judging=False)  # all known: passes
    with pytest.raises(TunelabError, match="neither a --tasks task nor an eval metric") as e:
        check_gates(parse_gates(["hellaswag=0.1"], None), ["tunelab_synthetic"], DIRECTIONS, True, False)
    assert "tunelab_synthetic" in e.value.hint and "exact_match" in e.value.hint
    with pytest.raises(TunelabError, match="no better direction"):
        check_gates(parse_gates(["answer_words=1"], None), [], DIRECTIONS, True, False)
    with pytest.raises(TunelabError, match="--no-baseline"):
        check_gates(gates, ["tunelab_synthetic"], DIRECTIONS, baseline=False, judging=False)
    with pytest.raises(TunelabError, match="--min-win-rate needs the judge") as e:
        check_gates(parse_gates(None, 0.5), [], DIRECTIONS, baseline=True, judging=False)
    assert "--judge" in e.value.hint
    check_gates(parse_gates(None, 0.5), [], DIRECTIONS, baseline=True, judging=True)


def test_a_drop_beyond_the_limit_fails_by_the_metrics_direction():
    gates = Gates((MaxDrop("acc", 0.02), MaxDrop("loss", 0.1)))
    ok = {"acc": Measured(0.80, 0.81, 1), "loss": Measured(1.05, 1.0, -1)}  # 1 point down, loss up 0.05
    assert failures(gates, ok, None) == []
    bad = {"acc": Measured(0.70, 0.81, 1), "loss": Measured(1.3, 1.0, -1)}
    lines = failures(gates, bad, None)
    assert lines == [
        "acc: tuned 0.7000 vs baseline 0.8100, a drop of 0.1100 > --max-drop 0.02",
        "loss: tuned 1.3000 vs baseline 1.0000, a drop of 0.3000 > --max-drop 0.1",
    ]
    # a better tuned model never fails, however large the change; the limit itself passes
    assert failures(gates, {"acc": Measured(0.99, 0.5, 1), "loss": Measured(0.5, 1.0, -1)}, None) == []
    assert failures(Gates((MaxDrop("acc", 0.5),)), {"acc": Measured(0.25, 0.75, 1)}, None) == []


def test_a_gate_that_cannot_be_checked_fails():
    gates = Gates((MaxDrop("acc", 0.02),), min_win_rate=0.5)
    lines = failures(gates, {"acc": Measured(math.nan, 0.8, 1)}, None)
    assert len(lines) == 2 and lines[0].startswith("acc: tuned nan") and "not measured" in lines[1]
    assert "not measured" in failures(gates, {}, 0.9)[0]
    assert failures(Gates(min_win_rate=0.5), {}, 0.49) == ["judge win rate: 0.490 < --min-win-rate 0.5"]
    assert failures(Gates(min_win_rate=0.5), {}, 0.5) == []


def test_the_record_gives_benchmark_scores_metrics_and_the_judge_win_rate():
    record = EvalRecord.lenient(
        {
            "models": {
                "target": {"metrics": {"exact_match": 0.5, "loss": 0.9}},
                "baseline": {"metrics": {"exact_match": 0.6, "loss": 1.2}},
            },
            "benchmarks": {"tunelab_synthetic": {"metric": "acc", "tuned": 0.6, "baseline": 0.8, "diff": -0.2}},
        }
    )
    gates = parse_gates(["tunelab_synthetic=0.1,exact_match=0.2,loss=0"], None)
    assert record_failures(gates, record, metric_table()) == [
        "tunelab_synthetic: tuned 0.6000 vs baseline 0.8000, a drop of 0.2000 > --max-drop 0.1"
    ]
    record.judge = type("Judge", (), {"win_rate": 0.3})()  # the judge's result, as `--judge` leaves it
    assert record_failures(Gates(min_win_rate=0.25), record, metric_table()) == []
    assert record_failures(Gates(min_win_rate=0.35), record, metric_table())[0].startswith("judge win rate: 0.300")
