"""The metric table (tunelab.runs.metric_table) and the eval record (eval.json, `runs.EvalRecord`): every row
complete, each scorer's rows in its direction, metric names spelled once in src/, eval.json read and written
through the run directory (old files, damaged files), and the readers that show a declared scorer's values:
`runs compare`, the report, sweep objectives."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import get_args

import pytest
import yaml

from conftest import ROOT
from report_runs import make_run
from tunelab.evaluation.metrics import direction, metric_table
from tunelab.runs import DamagedRun, EvalRecord, RunDir
from tunelab.runs.metric_table import (
    FINAL_EVAL_LOSS,
    FINAL_TRAIN_LOSS,
    FIXED,
    SAMPLES_EXACT_MATCH_AFTER,
    SAMPLES_EXACT_MATCH_BEFORE,
    TABLE,
    Where,
    benchmark_row,
)
from tunelab.scoring import REGISTRY, config_scorers, declared_metric

SRC = ROOT / "src" / "tunelab"
# A cost scorer reported under a name of its own: lower is better.
COST = {"length_penalty": {"max_words": 2, "name": "cost"}}
# eval.json as `tunelab eval` wrote it before the record existed (no scorers key, a baseline, a difference)
OLD_EVAL = {
    "target": "runs/quick",
    "step": 40,
    "created": "2026-11-30T10:00:00+00:00",
    "data": {"source": "test split", "split": "test", "examples": 3, "prompt_format": "alpaca", "reference_words": 1.3},
    "generation": {"max_new_tokens": 32, "temperature": 0.0},
    "models": {
        "target": {"label": "quick", "model": "runs/quick/final", "metrics": {"exact_match": 0.5, "loss": 0.9}},
        "baseline": {"label": "base", "model": "tiny (adapter disabled)", "metrics": {"exact_match": 0.0, "loss": 3.0}},
    },
    "time_s": 4.2,
    "difference": {"exact_match": 0.5, "loss": -2.1},
}


def test_every_row_has_a_label_a_format_and_a_direction():
    assert len({m.key for m in FIXED}) == len(FIXED)
    for m in metric_table().rows.values():
        assert m.label and m.direction in (-1, 0, 1) and m.where in get_args(Where), m
        assert m.format(0.25) and m.format(None) == "" and m.format(float("nan")) == "nan", m
        assert m.key.startswith("eval.") == (m.where == "eval"), m


def test_a_score_with_its_standard_error_reads_the_same_everywhere():
    row = benchmark_row("arc_easy", "acc_norm")
    assert row.format_with_stderr(0.8133, 0.0319) == "0.8133 ± 0.0319"
    assert row.format_with_stderr(0.8133, None) == "0.8133"
    assert row.format_with_stderr(None, 0.0319) == "-"


def test_every_scorer_kind_adds_a_sample_row_and_an_eval_row_in_its_direction():
    table = metric_table()
    for kind in REGISTRY.values():
        for key in (f"samples_{kind.name}", f"eval.{kind.name}"):
            assert table.get(key).direction == kind.direction, key
    assert table.get("eval.bleu").field == "bleu" and table.get("eval.exact_match").format(0.5) == "50.0%"


def test_a_declared_scorer_reports_under_its_name_in_its_direction():
    table = metric_table(declared=[COST])
    assert table.get("eval.cost").direction == table.get("samples_cost").direction == -1
    assert direction("eval/baseline/cost") == 0  # not declared here: no direction to guess
    for scorer in config_scorers(["exact_match", COST, {"chrf": {"name": "similarity"}}]):
        assert declared_metric(scorer.declaration()) == scorer.metric  # eval.json's record says the same
    assert declared_metric({"no_such_kind": {}}) is None and declared_metric(["x"]) is None


def _string_constants(path: Path) -> set[str]:
    return {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)}


def test_metric_names_are_spelled_once():
    """The summary's result keys only in the table; a scorer's metrics (samples_<kind>, eval.<kind>) nowhere
    in src/: they come from the registry, so no list of them can miss one."""
    table_keys = {FINAL_TRAIN_LOSS, FINAL_EVAL_LOSS, SAMPLES_EXACT_MATCH_AFTER, SAMPLES_EXACT_MATCH_BEFORE}
    scorer_metrics = {f"{prefix}{k}" for k in REGISTRY for prefix in ("samples_", "eval.")} - {"samples_exact_match"}
    # Left to its area: the report's plots pick the sample chrF curve to draw.
    pending = {"evaluation/plots.py": {"samples_chrf"}}
    found = []
    for path in SRC.rglob("*.py"):
        where = str(path.relative_to(SRC))
        spelled = _string_constants(path) & (table_keys | scorer_metrics) - pending.get(where, set())
        if where != "runs/metric_table.py":
            found += [f"{where}: {k}" for k in sorted(spelled)]
    assert found == []


# --- the eval record ------------------------------------------------------------------------------------


def test_an_eval_record_round_trips_through_the_run_directory(tmp_path):
    run = RunDir(tmp_path)
    record = EvalRecord.model_validate({**OLD_EVAL, "scorers": {"cost": COST}})
    run.write_eval(record, [{"index": 0, "prompt": "p", "reference": "r"}])
    assert run.read_eval() == record
    assert json.loads(run.eval_results.read_text()) == {**OLD_EVAL, "scorers": {"cost": COST}}  # the same JSON
    assert run.eval_samples.read_text() == '{"index": 0, "prompt": "p", "reference": "r"}\n'
    assert not list(tmp_path.glob("*.tmp"))


def test_an_old_eval_json_reads_and_writes_back_unchanged(tmp_path):
    run = RunDir(tmp_path)
    run.eval_results.write_text(json.dumps(OLD_EVAL))
    record = run.read_eval()
    assert record.metrics() == {"exact_match": 0.5, "loss": 0.9} and record.metrics("baseline")["loss"] == 3.0
    assert record.data.examples == 3 and record.step == 40 and record.scorers is None
    assert record.to_dict() == OLD_EVAL  # no null keys added


def test_a_damaged_eval_json_is_a_damaged_run_and_odd_values_are_gaps(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_eval() is None  # not evaluated: no damage
    run.eval_results.write_text('{"models": ')
    with pytest.raises(DamagedRun, match=r"eval\.json: not valid JSON"):
        run.read_eval()
    run.eval_results.write_text("[1, 2]")
    with pytest.raises(DamagedRun, match="holds a JSON list, not an object"):
        run.read_eval()
    odd = {"models": {"target": {"metrics": {"exact_match": "high", "chrf": 40, "bleu": True}}, "baseline": 3}}
    run.eval_results.write_text(json.dumps({**odd, "data": "x", "step": "four"}))
    record = run.read_eval()
    assert record.metrics() == {"chrf": 40.0} and record.metrics("baseline") == {}
    assert record.data is None and record.step is None


# --- the readers show a declared scorer ----------------------------------------------------------------


def _with_cost(run: Path, cost: float) -> Path:
    ev = json.loads((run / "eval.json").read_text())
    ev["models"]["target"]["metrics"]["cost"] = cost
    ev["scorers"] = {"exact_match": {"exact_match": {"name": None}}, "cost": COST}
    (run / "eval.json").write_text(json.dumps(ev))
    return run


def test_runs_compare_and_the_report_show_a_declared_scorer(tmp_path):
    from tunelab.evaluation.report import metrics_tables
    from tunelab.runs.contents import load_runs
    from tunelab.runs.index import compare

    plain = make_run(tmp_path, "plain", 1e-3, None)  # not evaluated: its column is empty
    cheap = _with_cost(make_run(tmp_path, "cheap", 1e-3, 0.5), 0.2)
    dear = _with_cost(make_run(tmp_path, "dear", 2e-3, 0.75), 0.9)
    res = compare([plain, cheap, dear])
    assert res["metrics"]["eval_cost"] == [None, 0.2, 0.9] and res["metrics"]["eval_chrf"] == [None, 50.0, 50.0]
    eval_rows, _ = metrics_tables(load_runs([plain, cheap, dear]))
    cost = next(r for r in eval_rows if r["key"] == "cost")
    assert [c["text"] for c in cost["cells"]] == ["", "0.200", "0.900"]
    assert [c["best"] for c in cost["cells"]] == [False, True, False]  # lower is better: its kind says so


def test_the_report_shows_every_sample_scorer_a_run_logged(tmp_path):
    from tunelab.evaluation.report import metrics_tables
    from tunelab.runs.contents import load_runs

    runs = [make_run(tmp_path, n, 1e-3, None) for n in ("a", "b")]
    for run, cost in zip(runs, (0.4, 0.1), strict=True):
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "eval": {"scorers": ["exact_match", COST]}}))
        with (run / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"step": 40, "samples_cost": cost}) + "\n")
    _, train_rows = metrics_tables(load_runs(runs))
    by_key = {r["key"]: r for r in train_rows}
    assert by_key["samples_cost"]["label"] == "sample cost, last evaluation"
    assert [c["best"] for c in by_key["samples_cost"]["cells"]] == [False, True]
    assert by_key["samples_chrf"]["label"] == "sample chrF, last evaluation"
    before = by_key[SAMPLES_EXACT_MATCH_BEFORE]
    assert not any(c["best"] for c in before["cells"])  # a starting point: never starred


# --- sweep objectives -------------------------------------------------------------------------------------

BASE = {
    "model": {"name": "tiny:llama-2l"},
    "data": {"train": {"path": "synthetic:64:seed=3"}, "test_size": 8},
    "training": {"max_steps": 4, "batch_size": 4, "eval_steps": 2},
    "samples": {"num_prompts": 2},
    "eval": {"scorers": ["exact_match", COST, {"chrf": {"name": "similarity"}}]},
    "tracking": {"backend": "none"},
    "output": {"dir": "runs"},
}


def _prepare(tmp_path: Path, objective, pruner: str = "none"):
    from tunelab.sweep.resolved import prepare

    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    sweep = {"base": {"config": "base.yaml"}, "space": {"adapter.r": [4, 8]}, "objective": objective}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({**sweep, "pruner": pruner}))
    return prepare(tmp_path / "s.yaml", check_data=False)


def test_a_declared_scorer_is_a_sweep_objective_in_its_direction(tmp_path, monkeypatch):
    from tunelab.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    sweep = _prepare(tmp_path, ["samples_similarity", "eval.cost", "eval.exact_match"])
    assert sweep.objectives == [
        ("samples_similarity", "maximize"),
        ("eval.cost", "minimize"),
        ("eval.exact_match", "maximize"),
    ]
    assert _prepare(tmp_path, "samples_cost", pruner="median").objectives == [("samples_cost", "minimize")]
    with pytest.raises(ConfigError) as e:
        _prepare(tmp_path, ["samples_simlarity", "eval.numeric"])
    assert e.value.problems == [
        "objective.0.metric: samples_simlarity: no scorer of the run reports as simlarity "
        "(eval.scorers: exact_match, cost, similarity); did you mean samples_similarity?",
        "objective.1.metric: eval.numeric: no scorer of the run reports as numeric "
        "(eval.scorers: exact_match, cost, similarity)",
    ]
    with pytest.raises(ConfigError) as e:
        _prepare(tmp_path, "eval.cost", pruner="median")
    assert "eval.cost is written once, at the end" in e.value.problems[0]


def test_an_objective_value_is_read_from_the_file_its_row_names(tmp_path):
    from tunelab.sweep.gateway import objective_value

    run = _with_cost(make_run(tmp_path, "r", 1e-3, 0.5), 0.3)
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 40, "samples_similarity": 61.0}) + "\n")
    assert objective_value(run, "eval.cost") == 0.3 and objective_value(run, "eval.exact_match") == 0.5
    assert objective_value(run, "samples_similarity") == 61.0 and objective_value(run, "samples_chrf") == 80.0
    assert objective_value(run, FINAL_TRAIN_LOSS) == pytest.approx(3 * 2.718281828 ** (-1.0))
    (run / "eval.json").write_text("{cut")
    assert objective_value(run, "eval.cost") is None  # damaged: the trial has no value (and is not ranked)
    assert TABLE.find("no_such_metric") is None and objective_value(run, "no_such_metric") is None
