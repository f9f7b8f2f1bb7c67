"""End to end through the real CLI on the tiny model: files written, numbers reported, resume, bad input."""

import json
from pathlib import Path

import pytest
import yaml

from conftest import base_config, read_jsonl, run_cli, run_faulty, write_cfg

pytestmark = pytest.mark.slow


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r}


@pytest.mark.parametrize("bits", [None, 4], ids=["lora", "qlora"])
def test_train_writes_a_complete_run_directory(tmp_path, synth_file, bits):
    cfg = base_config(synth_file, tmp_path / "runs", quantization={"bits": bits})
    r = run_cli("train", str(write_cfg(tmp_path, cfg)), "output.name=r1")
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "r1"
    assert {p.name for p in run.iterdir()} >= {
        "config.yaml",
        "checkpoints",
        "final",
        "metrics.jsonl",
        "samples.jsonl",
        "summary.json",
    }
    assert [p.name for p in sorted((run / "checkpoints").glob("step-*"))] == ["step-000002", "step-000004"]
    assert (run / "final" / "adapter_model.safetensors").is_file() and (run / "final" / "tokenizer.json").is_file()
    assert not list(run.rglob("*.bin")) or all("checkpoints" in str(p) for p in run.rglob("*.bin"))
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "completed" and s["steps"] == 4 and s["quantization"] == bits
    assert s["train_tokens"] > 0 and s["tokens_per_s"] > 0 and s["peak_rss_mb"] > 0
    assert s["final_train_loss"] == pytest.approx(losses(run)[4])
    assert s["final_eval_loss"] is not None and s["data"]["train_examples"] == 184
    assert 0 < s["data"]["packing_efficiency"] <= 1
    assert s["parameters"]["trainable"] > 0 and s["parameters"]["trainable"] < s["parameters"]["total"]
    samples = read_jsonl(run / "samples.jsonl")
    assert {x["step"] for x in samples} == {2, 4} and len(samples) == 8
    assert set(samples[0]) == {"step", "prompt", "generation", "reference", "settings"}
    assert samples[0]["prompt"].endswith("### Response:\n")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["output"]["name"] == "r1" and saved["quantization"]["bits"] == bits
    assert f"{run}/final" in "".join(r.stdout.split())  # the summary names the saved model (rich may wrap it)


def test_resume_after_a_crash_reaches_the_same_losses(tmp_path, synth_file):
    cfg = base_config(synth_file, tmp_path / "runs", training={"max_steps": 6, "save_steps": 2, "eval_steps": None})
    cfg["adapter"]["dropout"] = 0.1  # dropout makes the RNG state part of what resume must restore
    path = write_cfg(tmp_path, cfg)
    assert run_cli("train", str(path), "output.name=straight").returncode == 0

    r = run_faulty("crash_after_save:4", "train", str(path), "output.name=crashed")
    assert r.returncode == 75
    crashed = tmp_path / "runs" / "crashed"
    assert not (crashed / "final").exists()
    assert (crashed / "checkpoints" / "step-000004").is_dir()

    r = run_cli("train", str(path), "output.name=crashed", "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    straight, resumed = losses(tmp_path / "runs" / "straight"), losses(crashed)
    assert sorted(straight) == list(range(1, 7))
    for step in (5, 6):
        assert resumed[step] == pytest.approx(straight[step], abs=1e-4)
    s = json.loads((crashed / "summary.json").read_text())
    assert s["status"] == "completed" and s["resumed_from"].endswith("step-000004")


def test_bad_inputs_exit_2_with_one_line_and_no_traceback(tmp_path, synth_file):
    bad_rows = tmp_path / "bad.jsonl"
    bad_rows.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": ""}\n')
    cases = [
        (base_config(tmp_path / "missing.jsonl", tmp_path / "runs"), [], "data file not found"),
        (base_config(bad_rows, tmp_path / "runs"), [], f"{bad_rows}:2: empty output"),
        (
            base_config(synth_file, tmp_path / "runs"),
            ["adapter.rr=3"],
            "adapter.rr: unknown key; did you mean adapter.r?",
        ),
        (base_config(synth_file, tmp_path / "runs"), ["adapter.r=0"], "adapter.r: Input should be greater than 0"),
        (base_config(synth_file, tmp_path / "runs"), ["training.learning_rate=-1"], "training.learning_rate"),
        (base_config(synth_file, tmp_path / "runs", model={"name": str(tmp_path)}), [], "no config.json"),
        (
            base_config(synth_file, tmp_path / "runs"),
            ["training.kernels=liger"],
            "training.kernels: liger: Liger's kernels are Triton, which needs a CUDA GPU",
        ),
    ]
    for i, (cfg, overrides, expected) in enumerate(cases):
        path = write_cfg(tmp_path, cfg, f"c{i}.yaml")
        for verb in ("validate", "train"):
            r = run_cli(verb, str(path), *overrides)
            assert r.returncode == 2, (verb, expected, r.stderr[-2000:])
            assert expected in r.stderr, (verb, r.stderr)
            assert "Traceback" not in r.stderr + r.stdout
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("final"))


def test_validate_passes_on_good_config(tmp_path, synth_file):
    r = run_cli("validate", str(write_cfg(tmp_path, base_config(synth_file, tmp_path / "runs"))))
    assert r.returncode == 0 and "184 train rows, 16 test rows" in r.stdout


def test_existing_run_dir_is_not_clobbered(tmp_path, synth_file):
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    r = run_cli("train", str(write_cfg(tmp_path, base_config(synth_file, tmp_path / "runs"))), "output.name=taken")
    assert r.returncode == 2 and "already exists" in r.stderr
