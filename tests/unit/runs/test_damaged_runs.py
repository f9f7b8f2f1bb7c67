"""Damaged run directories and the crashes issue 21's battery found in report / runs / sweep: a damaged
file is one line naming it and what is wrong; listing commands skip such a run with that line; the
report reads mixtures and compares losses only among runs of one method; a sweep plans over a mixture."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from tunelab.errors import TunelabError
from tunelab.runs import EvalRecord, Summary
from tunelab.runs.contents import RunData, load_run, load_runs
from tunelab.runs.damage import DamagedRun, read_config_record, safetensors_problem
from tunelab.runs.index import compare, rows, source_paths

SUMMARY = {"status": "completed", "steps": 4, "final_train_loss": 1.5, "final_eval_loss": 1.7, "wall_time_s": 3.0}


def make_run(root: Path, name: str, summary=SUMMARY, method: str = "sft", train=None) -> Path:
    """A run directory as training leaves it, without training: config.yaml, metrics.jsonl, summary.json."""
    run = root / name
    run.mkdir(parents=True)
    cfg = {
        "model": {"name": "tiny:llama-2l"},
        "adapter": {"type": "lora", "r": 8},
        "data": {"train": train or {"path": "synthetic:40"}},
        "training": {"method": method, "learning_rate": 1e-3, "batch_size": 4, "grad_accum": 1},
        "output": {"dir": str(root), "name": name},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    if summary is not None:
        text = summary if isinstance(summary, str) else json.dumps(summary)
        (run / "summary.json").write_text(text)
    return run


BAD_SUMMARIES = [
    ({**SUMMARY, "steps": [1, 2]}, "steps: Input should be a valid integer"),
    ({**SUMMARY, "steps": "four"}, "steps: Input should be a valid integer"),
    ({**SUMMARY, "final_train_loss": "low"}, "final_train_loss: Input should be a valid number"),
    ({**SUMMARY, "parameters": [1, 2]}, "parameters: Input should be a valid dictionary"),
    ({**SUMMARY, "data": "x"}, "data: Input should be a valid dictionary"),
    ({**SUMMARY, "status": 3}, "no status"),
    ({k: v for k, v in SUMMARY.items() if k != "status"}, "no status"),
    ('{"status": "completed", "steps": 4, "fin', "not valid JSON"),
    ("", "empty"),
    ("[1, 2]", "holds a JSON list, not an object"),
    ('{"status": "completed", "steps": ' + "9" * 5000 + "}", "unreadable number"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
]


@pytest.mark.parametrize(("summary", "problem"), BAD_SUMMARIES, ids=range(len(BAD_SUMMARIES)))
def test_a_damaged_summary_is_one_line_naming_the_file(tmp_path, summary, problem):
    run = make_run(tmp_path, "r", summary)
    with pytest.raises(DamagedRun) as e:
        Summary.read(run / "summary.json")
    assert e.value.message.startswith(f"damaged run: {run / 'summary.json'}: ")
    assert problem in e.value.message and "\n" not in e.value.message


def test_a_missing_summary_is_no_summary_and_nan_losses_are_a_diverged_run(tmp_path):
    assert Summary.read(make_run(tmp_path, "a", None) / "summary.json") is None
    s = Summary.read(make_run(tmp_path, "b", {**SUMMARY, "final_train_loss": float("nan")}) / "summary.json")
    assert math.isnan(s.final_train_loss)


def test_runs_list_skips_a_damaged_run_with_a_note(tmp_path):
    make_run(tmp_path, "good")
    make_run(tmp_path, "dpo", method="dpo")
    make_run(tmp_path, "cut", '{"status": "comp')
    bad_cfg = make_run(tmp_path, "badcfg")
    (bad_cfg / "config.yaml").write_text("training: [1, 2]\n")
    listed, notes = rows(tmp_path)
    assert [(r["name"], r["method"]) for r in listed] == [("good", "sft"), ("dpo", "dpo")]
    assert len(notes) == 2
    assert any(n.startswith("skipped cut: damaged run: ") and "summary.json: not valid JSON" in n for n in notes)
    assert any("config.yaml: training: a list where a mapping of settings belongs" in n for n in notes)


def test_runs_compare_skips_a_damaged_run_and_needs_two_readable_ones(tmp_path):
    a, b = make_run(tmp_path, "a"), make_run(tmp_path, "b", {**SUMMARY, "final_train_loss": float("inf")})
    bad = make_run(tmp_path, "bad", {**SUMMARY, "wall_time_s": {"x": 1}})
    (a / "eval.json").write_text(json.dumps({"models": ["not", "a", "mapping"]}))
    res = compare([a, b, bad])
    assert res["runs"] == ["a", "b"] and res["metrics"]["final_train_loss"] == [1.5, float("inf")]
    assert res["notes"] == [
        f"skipped bad: damaged run: {bad / 'summary.json'}: wall_time_s: Input should be a valid number"
    ]
    with pytest.raises(TunelabError, match="fewer than two readable runs"):
        compare([a, bad])
    mixed = compare([a, make_run(tmp_path, "k", method="kto")])
    assert mixed["notes"] == ["note: these runs mix kto, sft: their losses measure different objectives"]


def test_the_report_notes_damage_and_reads_the_rest_of_the_run(tmp_path):
    run = make_run(tmp_path, "r", {**SUMMARY, "steps": {"a": 1}})
    (run / "eval.json").write_text("{not json")
    data = load_run(run)
    assert data.summary is None and data.metrics and data.config
    assert [d.split(": ")[1] for d in data.damaged] == [str(run / "summary.json"), str(run / "eval.json")]
    assert not any(g.startswith("not evaluated") or g.startswith("no summary") for g in data.gaps)


def test_report_pages_on_damaged_values_mixtures_and_mixed_methods(tmp_path):
    from tunelab.evaluation.report import build_context, metrics_tables, render

    runs = load_runs(
        [
            make_run(tmp_path, "sft", {**SUMMARY, "final_train_loss": 0.2}),
            make_run(tmp_path, "dpo1", {**SUMMARY, "final_train_loss": 0.6}, method="dpo"),
            make_run(tmp_path, "dpo2", {**SUMMARY, "final_train_loss": 0.4}, method="dpo"),
            make_run(tmp_path, "kto", {**SUMMARY, "final_train_loss": float("nan")}, method="kto"),
            make_run(
                tmp_path,
                "mix",
                train=[{"path": "synthetic:40:seed=1", "weight": 2}, {"path": "synthetic:40:seed=2", "weight": 1}],
            ),
        ]
    )
    (runs[0].path / "eval.json").write_text(json.dumps({"models": {"target": {"metrics": {"exact_match": "high"}}}}))
    runs[0].eval = EvalRecord.read(runs[0].path / "eval.json")  # the text value reads as a gap
    _, train_rows = metrics_tables(runs)
    loss = next(r for r in train_rows if r["key"] == "final_train_loss")
    assert loss["label"] == "final train loss (compared within each method)"
    # one star per method with two runs: sft (0.2 beats the mixture's 1.5) and dpo (0.4); kto's NaN never
    assert [c["best"] for c in loss["cells"]] == [True, False, True, False, False]
    assert loss["cells"][3]["text"] == "nan"
    ctx = build_context(runs, 4)
    assert ctx["verdict"] is None or "loss" not in ctx["verdict"]
    html = render(ctx)
    assert "synthetic:40:seed=1 (weight 2) + synthetic:40:seed=2 (weight 1)" in html


def test_one_method_stars_the_lowest_loss_and_never_a_nan(tmp_path):
    from tunelab.evaluation.report import metric_row

    row = metric_row("loss", "final_train_loss", [float("nan"), 0.5, 0.7, None, float("-inf")], "{:.4f}")
    assert [c["best"] for c in row["cells"]] == [False, True, False, False, False]


def test_saved_config_readers_take_mixtures(tmp_path):
    train = [{"path": "a.jsonl", "weight": 1}, {"path": "b.jsonl", "weight": 3}]
    assert source_paths({"data": {"train": train, "test": {"path": "t.jsonl"}}}) == ["a.jsonl", "b.jsonl", "t.jsonl"]
    run = make_run(tmp_path, "mix", train=train)
    assert RunData(path=run, name="mix", config=read_config_record(run / "config.yaml")).method == "sft"


def _adapter(folder: Path) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    save_file({"w": np.zeros((4, 4), dtype=np.float32)}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "tiny:llama-2l"}))
    return folder


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "adapter_model.safetensors").write_bytes(b"\xff" * 4096), "not a safetensors file"),
        (lambda f: (f / "adapter_model.safetensors").write_bytes(b"\x05"), "not a safetensors file"),
        (
            lambda f: (f / "adapter_model.safetensors").write_bytes(
                (f / "adapter_model.safetensors").read_bytes()[:-9]
            ),
            "cut short",
        ),
        (
            lambda f: (f / "adapter_model.safetensors").write_bytes(b"\x04\x00\x00\x00\x00\x00\x00\x00nope"),
            "header is not JSON",
        ),
        (lambda f: (f / "adapter_config.json").unlink(), "adapter_config.json: missing"),
        (lambda f: (f / "adapter_config.json").write_text("{oops"), "adapter_config.json: not valid JSON"),
        (lambda f: (f / "adapter_config.json").write_text("[]"), "adapter_config.json: holds a JSON list"),
    ],
    ids=["garbage", "tiny", "cut", "header", "no-config", "config-not-json", "config-a-list"],
)
def test_a_damaged_adapter_folder_is_refused_before_loading(tmp_path, damage, message):
    from tunelab.inference.target import resolve_target

    folder = _adapter(tmp_path / "adapter")
    assert resolve_target(str(folder)).adapter == folder  # whole, it resolves
    damage(folder)
    with pytest.raises(TunelabError) as e:
        resolve_target(str(folder))
    assert message in e.value.message and "\n" not in e.value.message


def test_safetensors_check_reads_a_whole_file_as_whole(tmp_path):
    assert safetensors_problem(_adapter(tmp_path / "a") / "adapter_model.safetensors") is None


def test_kl_watch_warns_once_into_the_logs_and_the_console():
    from types import SimpleNamespace

    from rich.console import Console

    from tunelab.training.preference_trainer import KL_WARN, KLWatch

    console = Console(record=True, width=300)
    watch = KLWatch(console)
    state = SimpleNamespace(global_step=5)
    calm, wild, wilder = {"kl": 0.3}, {"kl": 474.0}, {"kl": 900.0}
    for logs in (calm, {"kl": float("nan")}, wild, wilder):
        watch.on_log(None, state, None, logs=logs)
    assert "kl_warning" not in calm and wild["kl_warning"] == 474.0 and "kl_warning" not in wilder
    text = console.export_text()
    assert text.count("warning:") == 1 and "474.0 at step 5" in text and f"past {KL_WARN:g}" in text


@pytest.mark.slow
def test_a_sweep_over_a_mixture_plans_and_runs(tmp_path):
    from conftest import run_cli

    base = {
        "model": {"name": "tiny:llama-2l"},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {
            "train": [{"path": "synthetic:40:seed=1", "weight": 2}, {"path": "synthetic:40:seed=2", "weight": 1}],
            "train_rows": 48,
            "test_size": 8,
        },
        "training": {"max_steps": 2, "batch_size": 4, "max_length": 128, "gradient_checkpointing": False},
        "samples": {"enabled": False},
        "tracking": {"backend": "none"},
        "output": {"dir": "runs"},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {
        "base": {"config": "base.yaml"},
        "method": "grid",
        "space": {"training.learning_rate": [1.0e-3, 2.0e-3]},
        "objective": "final_train_loss",
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    r = run_cli("sweep", "s.yaml", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    trials = json.loads((tmp_path / "sweeps" / "s" / "results.json").read_text())["trials"]
    assert [t["state"] for t in trials] == ["completed", "completed"]
    assert all(isinstance(t["values"][0] if isinstance(t["values"], list) else t["values"], float) for t in trials)
