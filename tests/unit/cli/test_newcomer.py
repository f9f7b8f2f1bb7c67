"""What a new user meets (issue 12): lost training signal said out loud, offline validation that
finishes and lists everything, the config's own documentation, tables and reports that read right."""

import json
import time

import pytest
import yaml
from typer.testing import CliRunner

from conftest import base_config, run_cli
from tunelab.cli.main import app


def _cfg(tmp_path, data_path, **sections):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(base_config(data_path, tmp_path / "runs", **sections)))
    return p


def test_a_field_map_key_no_row_has_is_an_error(tmp_path, synth_file):
    from tunelab.config.load import build_config
    from tunelab.data.prepare import load_splits
    from tunelab.errors import DataError

    cfg = build_config(
        {
            "model": {"name": "tiny:llama-2l"},
            "data": {"train": {"path": str(synth_file)}, "field_map": {"questoin": "instruction"}},
        }
    )
    with pytest.raises(DataError, match="'questoin' matches no field of any row .* instruction, output"):
        load_splits(cfg)


def test_validate_offline_lists_everything_and_passes_with_a_note(tmp_path, synth_file):
    # conftest sets HF_HUB_OFFLINE=1: the hub model cannot be checked, the rest still counts
    p = _cfg(tmp_path, synth_file, model={"name": "someorg/some-model"})
    r = run_cli("validate", str(p))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "not checked (offline" in r.stderr and "184 train rows, 16 test rows (1 note)" in r.stdout
    r = run_cli("validate", str(p), "--strict")
    assert r.returncode == 2 and "1 problem" in r.stderr
    # every problem at once: device, precision and a missing data file in one run
    p = _cfg(
        tmp_path,
        tmp_path / "nope.jsonl",
        model={"name": "someorg/some-model", "device": "cuda:0"},
        training={"precision": "fp16"},
    )
    r = run_cli("validate", str(p))
    assert r.returncode == 2
    for expected in (
        "model.device: cuda:0 asked for",
        "training.precision: fp16",
        "data file not found",
        "not checked (offline",
    ):
        assert expected in r.stderr, r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_config_command_documents_every_field():
    r = CliRunner().invoke(app, ["config", "training"], prog_name="tunelab")
    assert r.exit_code == 0
    line = next(x for x in r.output.splitlines() if x.startswith("training.learning_rate"))
    assert line.split("\t")[1:] == ["float", "0.0002", "Peak learning rate."]
    r = CliRunner().invoke(app, ["config", "--json"], prog_name="tunelab")
    assert json.loads(r.output)["title"] == "RunConfig"
    r = CliRunner().invoke(app, ["config", "nosuch"], prog_name="tunelab")
    assert r.exit_code == 2 and "no such config section" in r.output


def test_tables_outside_a_terminal_are_whole_tab_separated_rows(tmp_path):
    run = tmp_path / "runs" / "quickstart-with-a-long-name"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "model": {"name": "tiny:llama-2l"},
                "adapter": {"type": "lora", "r": 8},
                "training": {"learning_rate": 1e-3, "batch_size": 2, "grad_accum": 4},
            }
        )
    )
    (run / "summary.json").write_text(json.dumps({"status": "completed", "steps": 4, "final_train_loss": 1.5}))
    r = CliRunner().invoke(app, ["runs", "list", "--dir", str(tmp_path / "runs")], prog_name="tunelab")
    lines = r.output.splitlines()
    assert lines[0].split("\t")[:2] == ["name", "status"]
    assert lines[1].split("\t")[:3] == ["quickstart-with-a-long-name", "completed", "tiny:llama-2l"]


def test_runs_compare_sets_eval_results_and_parameter_counts_side_by_side(tmp_path):
    from tunelab.runs.index import compare

    for name, em in (("a", 0.5), ("b", 0.75)):
        run = tmp_path / name
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump({"training": {"learning_rate": em}}))
        (run / "summary.json").write_text(
            json.dumps({"status": "completed", "parameters": {"total": 100, "trainable": 7}})
        )
        (run / "eval.json").write_text(
            json.dumps(
                {
                    "models": {
                        "target": {"metrics": {"exact_match": em, "perplexity": 3.0}},
                        "baseline": {"metrics": {"exact_match": 0.1}},
                    }
                }
            )
        )
    res = compare([tmp_path / "a", tmp_path / "b"])
    m = res["metrics"]
    assert m["eval_exact_match"] == [0.5, 0.75] and m["eval_baseline_exact_match"] == [0.1, 0.1]
    assert m["eval_perplexity"] == [3.0, 3.0] and m["parameters"] == [100, 100] and m["trainable_parameters"] == [7, 7]


def test_report_stars_only_a_best_that_shows_and_names_the_winner():
    from tunelab.evaluation.report import metric_row, verdict

    tie = metric_row("sample exact match", "samples_exact_match", [0.0, 0.004, 0.5], "{:.1f}")
    assert [c["best"] for c in tie["cells"]] == [False, False, True]  # 0.5 prints apart: the star is its own
    tie = metric_row("loss", "final_train_loss", [0.04, 0.0, 1.0], "{:.1f}")
    assert not any(c["best"] for c in tie["cells"])  # 0.04 and 0.0 both print 0.0: no star

    class R:  # noqa: D401 - a run's name is all verdict() reads besides the rows
        def __init__(self, name):
            self.name = name

    rows = [metric_row("exact match", "exact_match", [0.625, 0.9], "pct")]
    assert verdict([R("a"), R("b")], rows, []) == (  # no per-prompt scores to pair: no winner named
        "Highest exact match: b (90.0%), +27.5 points against a; no interval: the runs' evaluations share no prompts."
    )


def test_sample_time_is_left_out_of_the_next_tokens_per_s():
    from types import SimpleNamespace

    from tunelab.training.callbacks import MetricsCallback

    class Run:
        metrics = None

        def append_jsonl(self, path, rec):
            self.last = rec

    run = Run()
    cb = MetricsCallback(run)
    state = SimpleNamespace(num_input_tokens_seen=0, global_step=0, epoch=0.0)
    cb.on_train_begin(None, state, None)
    time.sleep(0.05)
    cb.exclude(0.05)  # what the sample table took after an evaluation
    state.num_input_tokens_seen, state.global_step = 1000, 1
    cb.on_log(None, state, None, logs={"loss": 1.0})
    assert run.last["tokens_per_s"] > 1000 / 0.04  # only the ~0 s of training counted


@pytest.mark.slow
def test_lost_answers_are_said_before_training_and_most_lost_is_an_error(tmp_path, synth_file):
    p = _cfg(tmp_path, synth_file, training={"max_length": 70, "max_steps": 2})
    r = run_cli("train", str(p), "output.name=trunc")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "train rows truncated to 70 tokens" in r.stderr
    assert "plan: " in r.stderr and "optimizer steps at batch 4 x grad_accum 2 = 8" in r.stderr
    assert "warning: only 2 optimizer steps" in r.stderr
    summary = json.loads((tmp_path / "runs" / "trunc" / "summary.json").read_text())
    assert any("truncated to 70 tokens" in n for n in summary["data"]["notes"])
    r = run_cli("train", str(p), "training.max_length=45", "output.name=lost")
    assert r.returncode == 2 and "lose every answer token to truncation at 45 tokens" in r.stderr
    assert not (tmp_path / "runs" / "lost").exists()
    r = run_cli(
        "train",
        str(p),
        "training.max_length=45",
        "data.max_lost_answers=1.0",
        "output.name=lost",
        "training.progress_every_s=0.001",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "rows dropped: no answer tokens left after truncation" in r.stderr
    assert "train step 1/2" in r.stderr  # no terminal: plain progress lines
    hint = next(x for x in r.stdout.splitlines() if x.startswith("try it: "))  # one line, never wrapped
    from tunelab.config import load_config
    from tunelab.data.prepare import load_splits

    first = load_splits(load_config(p))[1].rows[0]  # the run's own first held-out prompt
    import shlex

    assert hint == "try it: " + shlex.join(
        [
            "tunelab",
            "generate",
            str(tmp_path / "runs" / "lost"),
            first["instruction"],
            *(["--input", first["input"]] if first["input"] else []),
        ]
    )


@pytest.mark.slow
def test_eval_of_a_raw_text_run_gives_loss_and_perplexity(tmp_path):
    rows = [
        {"text": f"the {w} sat on the mat and looked at the {v}"}
        for w in ("cat", "dog", "fox")
        for v in ("sun", "moon", "star", "tree")
    ] * 3
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = _cfg(
        tmp_path,
        data,
        prompt={"format": "text", "train_on": "all"},
        training={"max_steps": 2},
        data={"test_size": 6},
        samples={"enabled": False},
    )
    r = run_cli("train", str(p), "output.name=text")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("eval", str(tmp_path / "runs" / "text"))
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "runs" / "text" / "eval.json").read_text())
    metrics = res["models"]["target"]["metrics"]
    assert set(metrics) == {"loss", "perplexity"} and metrics["perplexity"] > 1
    assert "baseline" in res["models"] and "exact_match" not in res["models"]["baseline"]["metrics"]
