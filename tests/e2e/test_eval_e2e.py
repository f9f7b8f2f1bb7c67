"""`tunelab eval` and `tunelab report` through the real CLI on a QLoRA run trained once for the module.

The run is the quickstart (tiny:quickstart-base, 4-bit, LoRA on all linear layers) cut to 150 steps
(conftest.quickstart_run, shared with the benchmark tests).
Measured with this fixture on this machine (2 CPU cores): exact match 65.6 % tuned vs 4.2 % base on
the 96 held-out prompts, response loss 0.69 vs 2.70, chrF 55.8 vs 6.1 (63.5 % vs 4.2 % with
evaluations every 50 steps instead of 75). The margins below leave room for other CPUs' kernels.
"""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import QUICKSTART_STEPS as STEPS
from conftest import read_jsonl, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def run_dir(quickstart_run) -> Path:
    return quickstart_run


def test_training_logs_generation_metrics_at_every_evaluation(run_dir):
    quality = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "samples_exact_match" in m]
    assert [m["step"] for m in quality] == [75, 150]
    for m in quality:
        assert {
            "samples_normalized_exact_match",
            "samples_rougeL",
            "samples_bleu",
            "samples_chrf",
            "samples_answer_words",
        } <= set(m)
        assert 0 <= m["samples_rougeL"] <= 1 and 0 <= m["samples_chrf"] <= 100


def test_eval_writes_both_files_and_the_tuned_model_beats_its_base(run_dir):
    r = run_cli("eval", str(run_dir), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "exact match" in r.stdout and "difference" in r.stdout and "base (tiny:quickstart-base)" in r.stdout
    assert "96/96" in r.stderr  # the progress bar counted the examples
    ev = json.loads((run_dir / "eval.json").read_text())
    assert ev["step"] == STEPS and ev["data"]["examples"] == 96 and ev["data"]["split"] == "test"
    assert ev["models"]["baseline"]["model"].endswith("(adapter disabled)")
    tuned, base = ev["models"]["target"]["metrics"], ev["models"]["baseline"]["metrics"]
    # a real learning signal: measured 65.6 % vs 4.2 % exact match, loss 0.69 vs 2.70
    assert tuned["exact_match"] >= 0.40 and base["exact_match"] <= 0.15
    assert tuned["exact_match"] - base["exact_match"] >= 0.30
    assert tuned["loss"] < base["loss"] - 1.0 and tuned["chrf"] > base["chrf"] + 20
    assert ev["difference"]["exact_match"] == pytest.approx(tuned["exact_match"] - base["exact_match"])

    samples = read_jsonl(run_dir / "eval_samples.jsonl")
    assert len(samples) == 96
    assert set(samples[0]) == {"index", "prompt", "reference", "answers", "scores"}
    assert set(samples[0]["answers"]) == {"target", "baseline"} and "### Response:" in samples[0]["prompt"]
    # the aggregates are the per-example scores, averaged
    for role, metrics in (("target", tuned), ("baseline", base)):
        em = sum(s["scores"][role]["exact_match"] for s in samples) / len(samples)
        assert metrics["exact_match"] == pytest.approx(em)
        assert em == pytest.approx(
            sum(s["answers"][role].strip() == s["reference"].strip() for s in samples) / len(samples)
        )


def test_eval_other_data_baseline_and_out(run_dir, tmp_path):
    out = tmp_path / "eval-out"
    r = run_cli(
        "eval",
        str(run_dir),
        "--data",
        "synthetic:40:seed=5:tasks=add_numbers,first_word",
        "--limit",
        "8",
        "--baseline",
        "tiny:llama-2l",
        "--out",
        str(out),
        "--max-new-tokens",
        "6",
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ev = json.loads((out / "eval.json").read_text())
    assert ev["data"]["examples"] == 8 and ev["data"]["source"].startswith("synthetic:40")
    assert ev["generation"]["max_new_tokens"] == 6
    assert (
        "llama-2l" in ev["models"]["baseline"]["model"]
        and "(adapter disabled)" not in ev["models"]["baseline"]["model"]
    )
    assert len(read_jsonl(out / "eval_samples.jsonl")) == 8
    assert not list(out.glob("*.tmp*"))


class RecordingSink:
    def __init__(self):
        self.metrics, self.samples = [], []

    def log_metrics(self, record):
        self.metrics.append(record)

    def log_samples(self, step, table):
        self.samples.append((step, table))


def test_eval_logs_to_tracker_sinks(run_dir, tmp_path):
    from tunelab.evaluation.runner import EvalRequest, evaluate

    sink = RecordingSink()
    result = evaluate(EvalRequest(str(run_dir), limit=4, out_dir=tmp_path), sinks=[sink])
    [record] = sink.metrics
    assert record["step"] == STEPS
    assert record["eval/exact_match"] == result.record.metrics("target")["exact_match"]
    assert "eval/baseline/chrf" in record and "eval/baseline/loss" in record
    [(step, table)] = sink.samples
    assert step == STEPS and len(table) == 8  # 4 examples x (tuned, base)
    assert set(table[0]) == {"step", "prompt", "generation", "reference", "settings"}
    assert {row["settings"]["model"] for row in table} == {"qs", "base (tiny:quickstart-base)"}


def test_eval_bad_inputs_exit_2_with_one_line(run_dir, tmp_path):
    no_output = tmp_path / "no_output.jsonl"
    no_output.write_text('{"instruction": "What is 1 plus 1?"}\n')
    no_test = tmp_path / "no-test"  # the run without a test split: config edited, weights shared
    shutil.copytree(run_dir, no_test, ignore=shutil.ignore_patterns("checkpoints", "*.jsonl", "eval.json"))
    cfg = yaml.safe_load((no_test / "config.yaml").read_text())
    cfg["data"].update(test_size=None, test_rows=None)
    (no_test / "config.yaml").write_text(yaml.safe_dump(cfg))
    cases = [
        ([str(tmp_path / "nothing-here")], "not a run directory, a model folder"),
        (["tiny:llama-2l"], "has no test split of its own"),
        (["tiny:llama-2l", "--data", "synthetic:4"], "pass --out DIR"),
        ([str(run_dir), "--data", str(no_output)], f"{no_output}:1: missing field 'output'"),
        ([str(no_test)], "the run's test split is empty"),
        ([str(run_dir), "--limit", "0"], "--limit 0"),
    ]
    for args, expected in cases:
        r = run_cli("eval", *args)
        assert r.returncode == 2, (args, r.stderr[-2000:])
        assert expected in r.stderr and "Traceback" not in r.stderr + r.stdout, (args, r.stderr)


def test_report_on_the_trained_run(run_dir):
    if not (run_dir / "eval.json").exists():
        assert run_cli("eval", str(run_dir), "--limit", "16").returncode == 0
    out = run_dir / "report.html"
    r = run_cli("report", str(run_dir), "-o", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    html = out.read_text()
    assert html.count('<img src="data:image/png;base64,') == 6  # loss, eval loss, lr, tokens/s, 2 quality curves
    assert 'id="eval-metrics"' in html and "base " in html and ">step 150<" in html
    assert "tiny:quickstart-base" in html and "MB RSS" in html
