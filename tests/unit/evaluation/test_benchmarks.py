"""`tunelab eval --tasks`: the shipped lm-eval task and its data, how task names, folders and files are
found, the one-line errors, and lm-eval's results read into scores (no model runs here)."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from tunelab.errors import TunelabError
from tunelab.evaluation.benchmarks import load_benchmarks, parse_task_list, task_scores
from tunelab.evaluation.shipped_tasks import (
    QUICKSTART_DATA,
    SYNTHETIC_DATA,
    SYNTHETIC_TASK,
    TASKS_DIR,
    synthetic_rows,
)


def test_the_committed_task_data_is_what_the_generator_writes():
    lines = SYNTHETIC_DATA.read_text().splitlines()
    assert [json.loads(line) for line in lines] == synthetic_rows()
    assert len(lines) == 150


def test_no_benchmark_prompt_is_one_the_quickstart_trained_on():
    from tunelab.data.synthetic import generate
    from tunelab.data.templates import alpaca_prompt

    quickstart = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    assert quickstart["data"]["train"]["path"] == QUICKSTART_DATA  # the generator excludes the right rows
    trained = {
        alpaca_prompt(r["instruction"], r["input"])
        for r in generate(2400, 7, QUICKSTART_DATA.split("tasks=")[1].split(","))
    }
    rows = synthetic_rows()
    assert not {r["prompt"] for r in rows} & trained
    assert all(r["choices"][r["label"]] not in r["choices"][: r["label"]] for r in rows)  # the right answer once
    assert all(2 <= len(r["choices"]) <= 3 for r in rows)


def test_task_lists_split_on_commas_and_refuse_empty_names():
    assert parse_task_list(["a,b", " c ", "a"]) == ["a", "b", "c"]
    with pytest.raises(TunelabError, match="empty task name"):
        parse_task_list(["a,,b"])


def test_the_shipped_task_loads_offline_by_name(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    benchmarks = load_benchmarks([SYNTHETIC_TASK])
    assert benchmarks.specs == [SYNTHETIC_TASK] and benchmarks.names == [SYNTHETIC_TASK]
    assert {p.name for p in (TASKS_DIR / SYNTHETIC_TASK).iterdir()} >= {
        "tunelab_synthetic.yaml",
        "tunelab_synthetic.jsonl",
        "tunelab_synthetic_rows.py",
    }


def test_a_task_folder_or_yaml_file_loads_by_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "my_tasks"
    shutil.copytree(TASKS_DIR / SYNTHETIC_TASK, folder / "mine")
    task_yaml = folder / "mine" / "tunelab_synthetic.yaml"
    task_yaml.write_text(task_yaml.read_text().replace("task: tunelab_synthetic", "task: my_copy"))
    assert load_benchmarks([str(folder)]).names == ["my_copy"]
    assert load_benchmarks([str(task_yaml)]).names == ["my_copy"]


def test_a_folder_without_tasks_or_a_task_without_data_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TunelabError, match="no lm-eval task YAML"):
        load_benchmarks([str(tmp_path / "empty")])
    broken = tmp_path / "broken"
    shutil.copytree(TASKS_DIR / SYNTHETIC_TASK, broken)
    (broken / "tunelab_synthetic.yaml").write_text(
        (broken / "tunelab_synthetic.yaml").read_text().replace("task: tunelab_synthetic", "task: broken")
    )
    (broken / "tunelab_synthetic.jsonl").unlink()
    with pytest.raises(TunelabError, match="cannot load it offline.*tunelab_synthetic.jsonl"):
        load_benchmarks([str(broken / "tunelab_synthetic.yaml")])


@pytest.mark.slow  # indexes lm-eval's whole registry (thousands of YAML files, ~10 s)
def test_an_unknown_name_is_one_line_with_the_close_names(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TunelabError, match="--tasks tunelab_synthetc: no such lm-eval task") as e:
        load_benchmarks(["tunelab_synthetc"])
    assert "did you mean tunelab_synthetic" in e.value.message


def test_lm_evals_results_become_one_score_per_task_with_its_standard_error():
    results = {
        "results": {
            "mc": {"alias": "mc", "acc,none": 0.75, "acc_stderr,none": 0.03, "acc_norm,none": 0.7},
            "gen": {"alias": "gen", "exact_match,strict": 0.2, "exact_match_stderr,strict": "N/A"},
            "broken": {"alias": "broken", "acc,none": "N/A"},
        },
        "higher_is_better": {"mc": {"acc": True, "acc_norm": True}, "gen": {"exact_match": False}},
        "n-samples": {"mc": {"original": 150, "effective": 150}},
    }
    scores = task_scores(results)
    assert set(scores) == {"mc", "gen"}
    assert (scores["mc"].metric, scores["mc"].value, scores["mc"].stderr, scores["mc"].examples) == (
        "acc",
        0.75,
        0.03,
        150,
    )
    assert scores["gen"].stderr is None and scores["gen"].higher_is_better is False


def test_the_task_files_ship_in_the_wheel():
    config = (ROOT / "pyproject.toml").read_text()
    assert '"evaluation/tasks/*/*"' in config
    assert Path(SYNTHETIC_DATA).is_relative_to(ROOT / "src" / "tunelab")


EVAL_WITH_BENCHMARKS = {
    "target": "runs/r1",
    "models": {"target": {"metrics": {"exact_match": 0.9}}, "baseline": {"metrics": {"exact_match": 0.1}}},
    "benchmarks": {
        "tunelab_synthetic": {
            "metric": "acc",
            "tuned": 0.8133,
            "tuned_stderr": 0.0319,
            "baseline": 0.5067,
            "baseline_stderr": 0.041,
            "diff": 0.3066,
            "examples": 150,
        }
    },
}


def test_benchmark_scores_go_through_the_record_the_metric_table_and_runs_compare(tmp_path):
    from tunelab.evaluation.report import benchmark_rows
    from tunelab.runs.contents import RunData
    from tunelab.runs.index import metrics_of, row
    from tunelab.runs.metric_table import TABLE, benchmark_row
    from tunelab.runs.records import EvalRecord

    record = EvalRecord.lenient(EVAL_WITH_BENCHMARKS)
    assert record.benchmarks["tunelab_synthetic"].tuned_stderr == 0.0319
    assert "benchmarks" not in EvalRecord(target="x").to_dict()  # absent, not null, without --tasks
    row_ = benchmark_row("tunelab_synthetic")
    assert row_.key == "bench.tunelab_synthetic" and row_.field == "tunelab_synthetic"
    assert row_.key not in TABLE and TABLE.find(row_.key) is None  # not a sweep objective (eval.json's metrics are)
    assert row_.direction == 1 and row_.format(0.8133) == "0.8133" and row_.label == "tunelab_synthetic (acc)"

    run = tmp_path / "r1"
    run.mkdir()
    (run / "config.yaml").write_text("model: {name: tiny:llama-2l}\n")
    (run / "eval.json").write_text(json.dumps(EVAL_WITH_BENCHMARKS))
    metrics = metrics_of(run)
    assert (metrics["bench_tunelab_synthetic"], metrics["bench_tunelab_synthetic_stderr"]) == (0.8133, 0.0319)
    assert (metrics["bench_baseline_tunelab_synthetic"], metrics["bench_baseline_tunelab_synthetic_stderr"]) == (
        0.5067,
        0.041,
    )
    assert row(run)["benchmarks"] == "tunelab_synthetic 0.813 (+0.307)"
    (run / "eval.json").write_text("[1, 2]")  # damaged: the run is still listed, without benchmarks
    assert row(run)["benchmarks"] is None

    shown = benchmark_rows([RunData(run, "r1", eval=record)])
    assert shown == [
        {
            "run": "r1",
            "task": "tunelab_synthetic",
            "metric": "acc",
            "tuned": "0.8133 ± 0.0319",
            "baseline": "0.5067 ± 0.0410",
            "diff": "+0.3066",
            "examples": 150,
        }
    ]
