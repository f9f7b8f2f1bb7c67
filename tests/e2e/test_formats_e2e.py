"""Issue 15 end to end through the real CLI on tiny models: ShareGPT with tool calls, raw text,
mixtures, DPO (QLoRA, resume, after SFT, report), KTO, and the bad inputs (one line, exit 2,
nothing left behind)."""

import json
from pathlib import Path

import pytest

from conftest import FIXTURES, base_config, read_jsonl, run_cli, run_faulty, write_cfg

pytestmark = pytest.mark.slow

FIXTURE = FIXTURES / "sharegpt_tools.json"


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_sharegpt_file_with_tool_calls_trains_end_to_end(tmp_path):
    cfg = base_config(
        FIXTURE,
        tmp_path / "runs",
        model={"name": "tiny:tools-2l"},
        prompt={"format": "messages"},
        training={"max_length": 1024, "batch_size": 2, "grad_accum": 1, "eval_steps": 4, "save_steps": None},
        data={"test_size": 4},
        tracking={"backend": "none"},
    )
    r = run_cli("train", str(write_cfg(tmp_path, cfg)), "output.name=sg")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "24 ShareGPT rows (conversations of from / value turns) read as chat messages" in " ".join(
        (r.stdout + r.stderr).split()
    )
    s = summary(tmp_path / "runs" / "sg")
    assert s["status"] == "completed" and s["data"]["train_examples"] == 20 and s["data"]["test_examples"] == 4
    samples = read_jsonl(tmp_path / "runs" / "sg" / "samples.jsonl")
    assert samples and all(x["prompt"].endswith("<|im_start|>assistant\n") for x in samples)
    assert any("<tools>" in x["prompt"] for x in samples)  # asked with its tools, as it was trained


def test_raw_text_corpus_trains_in_blocks(tmp_path):
    from tunelab.data.synthetic import WORDS

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i:02d}.txt").write_text(
            "\n\n".join(" ".join(WORDS[(i + j) % len(WORDS)] for j in range(k, k + 30)) for k in range(4)) + "\n"
        )
    cfg = base_config(
        corpus,
        tmp_path / "runs",
        prompt={"format": "text", "train_on": "all"},
        data={"test_size": None},
        training={"packing": "blocks", "max_length": 64, "eval_steps": None, "save_steps": None},
        samples={"enabled": False},
        tracking={"backend": "none"},
    )
    cfg["data"]["train"]["documents"] = "blank_lines"
    r = run_cli("train", str(write_cfg(tmp_path, cfg)), "output.name=cpt")
    assert r.returncode == 0, r.stderr[-3000:]
    s = summary(tmp_path / "runs" / "cpt")
    d = s["data"]
    assert s["status"] == "completed" and d["train_rows"] == d["train_examples"] == 48  # 12 files x 4 paragraphs
    assert d["packing_efficiency"] > 0.95  # TRL's wrapped blocks: full rows
    assert d["train_tokens"] - d["train_loss_tokens"] == 48  # every token trained but each document's BOS


def test_mixture_run_records_rows_and_tokens_per_source(tmp_path):
    cfg = base_config(
        "x",
        tmp_path / "runs",
        training={"eval_steps": None, "save_steps": None, "max_steps": 2},
        samples={"enabled": False},
        tracking={"backend": "trackio"},
    )
    cfg["data"] = {
        "train": [
            {"path": "synthetic:500:seed=1", "weight": 0.8},
            {"path": "synthetic:500:seed=2:tasks=add_numbers,count_words", "weight": 0.2},
        ],
        "train_rows": 400,
        "test_size": 8,
    }
    r = run_cli("train", str(write_cfg(tmp_path, cfg)), "output.name=mix")
    assert r.returncode == 0, r.stderr[-3000:]
    d = summary(tmp_path / "runs" / "mix")["data"]
    assert [(x["train_rows"], x["test_rows"]) for x in d["sources"]] == [(320, 8), (80, 8)]
    assert sum(x["train_tokens"] for x in d["sources"]) == d["train_tokens"] and all(
        x["train_tokens"] > 0 for x in d["sources"]
    )
    from tunelab.compat import point_trackio_at

    point_trackio_at(tmp_path / "runs" / ".tracking" / "trackio")
    from trackio.sqlite_storage import SQLiteStorage

    tracked = SQLiteStorage.get_run_config("tunelab", "mix")["tunelab"]["data"]["sources"]
    assert [x["train_rows"] for x in tracked] == [320, 80] and tracked[1]["train_tokens"] == d["sources"][1][
        "train_tokens"
    ]


DPO = {
    "method": "dpo",
    "max_steps": 6,
    "batch_size": 4,
    "grad_accum": 1,
    "learning_rate": 2e-3,
    "eval_steps": 3,
    "save_steps": 2,
    "logging_steps": 1,
}


def test_dpo_qlora_run_logs_rewards_and_preference_accuracy_everywhere(tmp_path):
    cfg = base_config(
        "synthetic:200:seed=3:kind=preference",
        tmp_path / "runs",
        quantization={"bits": 4},
        training=DPO,
        tracking={"backend": "trackio"},
        samples={"num_prompts": 4, "max_new_tokens": 6},
        preference={"beta": 0.2, "eval_pairs": 16},
    )
    r = run_cli("train", str(write_cfg(tmp_path, cfg)), "output.name=dpo")
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "dpo"
    s = summary(run)
    assert s["status"] == "completed" and s["steps"] == 6 and s["quantization"] == 4
    assert s["data"]["train_examples"] == 184 and 0 <= s["preference_accuracy_before"] <= 1
    metrics = read_jsonl(run / "metrics.jsonl")
    train = [m for m in metrics if "loss" in m]
    assert all({"rewards/margins", "rewards/accuracies", "logps/chosen"} <= set(m) for m in train)
    assert train[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy == reference before the first step
    assert [m["step"] for m in metrics if "preference_accuracy" in m] == [0, 3, 6]
    assert [m["step"] for m in metrics if "eval_rewards/accuracies" in m] == [3, 6]
    assert (run / "final" / "adapter_model.safetensors").is_file() and not (run / "final" / "ref").exists()
    assert {x["step"] for x in read_jsonl(run / "samples.jsonl")} == {3, 6}
    from tunelab.compat import point_trackio_at

    point_trackio_at(tmp_path / "runs" / ".tracking" / "trackio")
    from trackio.sqlite_storage import SQLiteStorage

    logs = SQLiteStorage.get_logs("tunelab", "dpo")
    assert any("rewards/margins" in x for x in logs) and any("preference_accuracy" in x for x in logs)

    ev = run_cli("eval", str(run))
    assert ev.returncode == 0, ev.stderr[-3000:]
    result = json.loads((run / "eval.json").read_text())
    assert 0 <= result["models"]["target"]["metrics"]["preference_accuracy"] <= 1
    rep = run_cli("report", str(run), "-o", str(tmp_path / "report.html"))
    assert rep.returncode == 0, rep.stderr[-3000:]
    html = (tmp_path / "report.html").read_text()
    assert "held-out preference accuracy" in html and "reward margin (training batches)" in html


def test_dpo_resume_after_a_crash_reaches_the_same_losses(tmp_path):
    cfg = base_config(
        "synthetic:200:seed=3:kind=preference",
        tmp_path / "runs",
        quantization={"bits": 4},
        training={**DPO, "eval_steps": None},
        samples={"enabled": False},
        tracking={"backend": "none"},
        preference={"eval_pairs": 0},
    )
    path = write_cfg(tmp_path, cfg)
    assert run_cli("train", str(path), "output.name=straight").returncode == 0
    r = run_faulty("crash_after_save:4", "train", str(path), "output.name=crashed")
    assert r.returncode == 75
    r = run_cli("train", str(path), "output.name=crashed", "--resume")
    assert r.returncode == 0, r.stderr[-3000:]

    def losses(run):
        return {m["step"]: m["loss"] for m in read_jsonl(run / "metrics.jsonl") if "loss" in m}

    straight, resumed = losses(tmp_path / "runs" / "straight"), losses(tmp_path / "runs" / "crashed")
    assert sorted(resumed) == list(range(1, 7))
    for step in (5, 6):
        assert resumed[step] == pytest.approx(straight[step], abs=1e-4)
    assert summary(tmp_path / "runs" / "crashed")["resumed_from"].endswith("step-000004")


def test_sft_then_dpo_from_the_run_directory(tmp_path):
    sft = base_config(
        "synthetic:200:seed=3",
        tmp_path / "runs",
        training={"eval_steps": None, "save_steps": None, "max_steps": 8, "learning_rate": 5e-3},
        samples={"enabled": False},
        tracking={"backend": "none"},
    )
    assert run_cli("train", str(write_cfg(tmp_path, sft, "sft.yaml")), "output.name=sft").returncode == 0

    def dpo_from(name: str, model: str) -> dict:
        cfg = base_config(
            "synthetic:200:seed=4:kind=preference",
            tmp_path / "runs",
            model={"name": model},
            training={**DPO, "max_steps": 1, "eval_steps": None, "save_steps": None},
            samples={"enabled": False},
            tracking={"backend": "none"},
            preference={"eval_pairs": 0},
        )
        r = run_cli("train", str(write_cfg(tmp_path, cfg, f"{name}.yaml")), f"output.name={name}")
        assert r.returncode == 0, r.stderr[-3000:]
        return next(m for m in read_jsonl(tmp_path / "runs" / name / "metrics.jsonl") if "loss" in m)

    after_sft = dpo_from("dpo", str(tmp_path / "runs" / "sft"))
    from_base = dpo_from("dpo-base", "tiny:llama-2l")
    # the reference is the SFT model (TRL's frozen copy of the continued adapter): before a step, policy == reference
    assert after_sft["loss"] == pytest.approx(0.6931, abs=1e-3) and after_sft["rewards/margins"] == pytest.approx(
        0, abs=1e-4
    )
    # and the policy started from the SFT adapter, not a fresh one: the SFT'd answers are likelier
    assert after_sft["logps/chosen"] > from_base["logps/chosen"] + 0.5
    meta = json.loads((tmp_path / "runs" / "dpo" / "final" / "tunelab_model.json").read_text())
    assert Path(meta["base_model_path"]).name.startswith("llama-2l")  # the SFT run's base, not the SFT run
    assert summary(tmp_path / "runs" / "dpo")["status"] == "completed"


def test_kto_trains_on_unpaired_rows_from_pairs(tmp_path):
    cfg = base_config(
        "synthetic:120:seed=3:kind=preference",
        tmp_path / "runs",
        training={**DPO, "method": "kto", "max_steps": 2, "eval_steps": 2, "save_steps": None},
        samples={"enabled": False},
        tracking={"backend": "none"},
        preference={"eval_pairs": 8},
    )
    r = run_cli("train", str(write_cfg(tmp_path, cfg)), "output.name=kto")
    assert r.returncode == 0, r.stderr[-3000:]
    s = summary(tmp_path / "runs" / "kto")
    assert s["status"] == "completed" and s["data"]["train_examples"] == 2 * 104  # each pair: desirable + undesirable
    assert any("kl" in m for m in read_jsonl(tmp_path / "runs" / "kto" / "metrics.jsonl"))


def test_bad_inputs_exit_2_with_one_line_and_leave_nothing(tmp_path, synth_file):
    bad_sg = tmp_path / "bad_sg.jsonl"
    bad_sg.write_text(
        json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "yo"}]}) + "\n"
    )
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"instruction": "a", "chosen": "b"}) + "\n")
    empty_txt = tmp_path / "empty.txt"
    empty_txt.write_text("\n")
    runs = tmp_path / "runs"
    unfinished = tmp_path / "old" / "sft"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "config.yaml").write_text("model: {name: tiny:llama-2l}\n")
    cases = [
        (
            base_config(bad_sg, runs, prompt={"format": "messages"}),
            "bad_sg.jsonl:1: conversations[1].from: unknown role 'bot'",
        ),
        (base_config(FIXTURE, runs, prompt={"format": "messages"}), "cannot render tool calls"),
        (
            base_config(synth_file, runs, training={"method": "orpo"}),
            "training.method: orpo is not in TRL's stable API",
        ),
        (base_config(pairs, runs, training={"method": "dpo"}), "pairs.jsonl:1: missing field 'rejected'"),
        (base_config(empty_txt, runs, prompt={"format": "text"}), "empty.txt: the file holds only blank lines"),
        (
            {
                **base_config(synth_file, runs),
                "data": {"train": [{"path": str(synth_file), "weight": 1}, {"path": str(synth_file)}]},
            },
            "give every source a weight or rows",
        ),
        (base_config(synth_file, runs, model={"name": str(unfinished)}), "is a run that has not finished (no final/)"),
    ]
    for i, (cfg, expected) in enumerate(cases):
        r = run_cli("train", str(write_cfg(tmp_path, cfg, f"bad{i}.yaml")), f"output.name=bad{i}")
        assert r.returncode == 2, (expected, r.stdout[-1500:], r.stderr[-1500:])
        out = " ".join((r.stdout + r.stderr).split())
        assert expected in out, (expected, out[-1500:])
        assert "Traceback" not in r.stderr
        assert not (runs / f"bad{i}").exists()
