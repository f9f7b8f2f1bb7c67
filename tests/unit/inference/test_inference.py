"""generate, chat, merge and export: prompt rendering, streaming, merged logits, folders that load back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import run_cli
from inference_support import RUN_NAME, one_torch_thread, trained_run  # noqa: F401 (autouse fixture)
from tunelab.config.schema import PromptConfig
from tunelab.errors import TunelabError


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory)


def _answer(target_text: str, instruction: str, input: str = "", max_new_tokens: int = 12) -> str:
    """What the model answers, computed here through the library (the reference for the CLI)."""
    from tunelab.inference.generate import GenerationSettings, encode_prompt, generate_one
    from tunelab.inference.prompts import instruction_row, prompt_text
    from tunelab.inference.target import inference_prompt, load_target, resolve_target

    t = resolve_target(target_text)
    model, tok = load_target(t)
    cfg = inference_prompt(t, tok)
    ids = encode_prompt(tok, prompt_text(instruction_row(instruction, input, cfg), cfg, tok))
    return generate_one(model, tok, ids, GenerationSettings(max_new_tokens=max_new_tokens)).text


def _logits(model, tok, prompts: list[str]) -> list[torch.Tensor]:
    from tunelab.inference.generate import encode_prompt

    with torch.inference_mode():
        return [model(input_ids=torch.tensor([encode_prompt(tok, p)])).logits[0].float() for p in prompts]


# --- fast: prompts, chat state, tokenization, target resolution ------------------------------------


def test_encode_prompt_tokenizes_like_training(tokenizer):
    from tunelab.config import build_config
    from tunelab.data.prepare import TokenSpec, tokenize_rows
    from tunelab.data.sources import RawRows
    from tunelab.data.templates import render_prompt
    from tunelab.inference.generate import encode_prompt

    row = {"instruction": "Reverse the words.", "input": "cat dog", "output": "dog cat"}
    cfg = build_config({"model": {"name": "tiny:llama-2l"}, "data": {"train": {"path": "x.jsonl"}}})
    raw = RawRows()
    raw.add(row, "x.jsonl:1")
    cols, _ = tokenize_rows(raw, TokenSpec.of(cfg), tokenizer)
    prompt_ids = encode_prompt(tokenizer, render_prompt(row, cfg.prompt))
    labels = cols["labels"][0]
    first_answer = next(i for i, lab in enumerate(labels) if lab != -100)
    assert cols["input_ids"][0][:first_answer] == prompt_ids
    assert prompt_ids[0] == tokenizer.bos_token_id and prompt_ids.count(tokenizer.bos_token_id) == 1


def test_chat_prompt_uses_the_trained_format(tokenizer):
    from tunelab.inference.prompts import chat_prompt, instruction_row, prompt_text

    convo = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "Add 2 and 3."},
    ]
    as_chat = chat_prompt(convo, None, tokenizer)
    assert as_chat == tokenizer.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
    assert as_chat.count("<|im_start|>user") == 2 and as_chat.endswith("<|im_start|>assistant\n")
    assert chat_prompt(convo, PromptConfig(format="messages"), tokenizer) == as_chat
    alpaca = chat_prompt(convo, PromptConfig(), tokenizer)
    assert alpaca.endswith("### Instruction:\nAdd 2 and 3.\n\n### Response:\n") and "hello" not in alpaca
    custom = PromptConfig(format="custom", template="Q: {question}\nA: ", response_field="answer")
    assert chat_prompt(convo, custom, tokenizer) == "Q: Add 2 and 3.\nA: "
    assert (
        prompt_text(instruction_row("Say hi", "", PromptConfig(format="text")), PromptConfig(format="text"), tokenizer)
        == "Say hi"
    )
    with pytest.raises(TunelabError, match="last message"):
        chat_prompt(convo[:2], PromptConfig(), tokenizer)
    with pytest.raises(TunelabError, match="needs the fields"):
        instruction_row("x", "", PromptConfig(format="custom", template="{a} {b}"))
    with pytest.raises(TunelabError, match="no \\{input\\} field"):
        instruction_row("x", "some input", custom)


def test_chat_session_history_reset_and_truncation(tokenizer):
    from tunelab.inference.chat_session import ChatSession
    from tunelab.inference.generate import encode_prompt

    s = ChatSession(tokenizer, PromptConfig(format="messages"), max_prompt_tokens=60, system="Be brief.")
    first = s.ask("one")
    s.answered("uno")
    second = s.ask("two")
    text = tokenizer.decode(second)
    assert "Be brief." in text and "one" in text and "uno" in text and len(second) > len(first)
    s.answered("dos")
    for word in ["three", "four", "five", "six"]:
        ids = s.ask(word)
        assert len(ids) <= 60
        s.answered(word.upper())
    assert "one" not in tokenizer.decode(ids) and "six" in tokenizer.decode(ids)  # oldest turns dropped, system kept
    assert "Be brief." in tokenizer.decode(ids)
    s.reset()
    assert tokenizer.decode(s.ask("seven")).count("<|im_start|>user") == 1
    with pytest.raises(TunelabError, match="tokens"):
        s.ask("word " * 100)

    single = ChatSession(tokenizer, PromptConfig(), max_prompt_tokens=500)
    single.ask("What is 1 plus 1?")
    single.answered("2")
    ids = single.ask("What is 2 plus 2?")
    assert ids == encode_prompt(
        tokenizer,
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nWhat is 2 plus 2?\n\n### Response:\n",
    )


def test_prompt_file_errors_name_file_and_line(tmp_path):
    from tunelab.errors import DataError
    from tunelab.inference.prompts import read_prompt_rows

    f = tmp_path / "p.jsonl"
    f.write_text('{"instruction": "a"}\n{"input": "b"}\n')
    with pytest.raises(DataError, match=f"{f}:2: missing field 'instruction'"):
        read_prompt_rows(f, PromptConfig())
    f.write_text('{"instruction": "a"}\nnot json\n')
    with pytest.raises(DataError, match=f"{f}:2: malformed JSON"):
        read_prompt_rows(f, PromptConfig())
    f.write_text('{"instruction": "a", "input": "b"}\n\n{"instruction": "c"}\n')
    assert [r["instruction"] for r in read_prompt_rows(f, PromptConfig())] == ["a", "c"]


def test_folder_metadata_gives_the_prompt_format(tiny_model_dir, tmp_path):
    from tunelab.inference import target as target_mod

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    plain = target_mod.resolve_target(str(folder))
    assert not plain.prompt_known and plain.name == "model"
    (folder / target_mod.MODEL_META).write_text(json.dumps({"prompt": {"format": "messages"}}))
    t = target_mod.resolve_target(str(folder))
    assert t.base == str(folder) and t.prompt_known and t.prompt.format == "messages"
    with pytest.raises(TunelabError):
        target_mod.resolve_target("not-a-target:demo:v1")


def test_logit_check_fails_when_logits_differ():
    from tunelab.export.merge import compare_logits

    ref = [torch.randn(5, 50) * 4 for _ in range(3)]
    assert compare_logits(ref, [r.clone() for r in ref], "fp32").ok
    off = [r.clone() for r in ref]
    off[1][2, 7] += 0.05
    check = compare_logits(ref, off, "fp32")
    assert not check.ok and "DO NOT match" in check.describe() and check.max_abs_diff == pytest.approx(0.05, rel=1e-3)
    assert compare_logits(ref, off, "bf16").ok  # within bf16's tolerance


# --- slow: the CLI on a tiny trained run ---------------------------------------------------------


@pytest.mark.slow
def test_generate_streams_the_answer_in_the_runs_template(run):
    expected = _answer(str(run), "Reverse the order of the words.", "cat dog sun", max_new_tokens=12)
    assert expected.strip()
    r = run_cli(
        "generate", str(run), "Reverse the order of the words.", "--input", "cat dog sun", "--max-new-tokens", "12"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout == expected + "\n"
    assert f"{RUN_NAME}: alpaca prompt" in r.stderr
    # the step-2 checkpoint is another model: it answers differently (the run's template still applies)
    early = _answer(str(run / "checkpoints" / "step-000002"), "Reverse the order of the words.", "cat dog sun", 12)
    assert early != expected


@pytest.mark.slow
def test_generate_file_writes_one_answer_per_prompt(run, tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli.main import app

    rows = [
        {"instruction": "What is 3 plus 5?"},
        {"instruction": "Sort the digits from smallest to largest.", "input": "7 4 8"},
        {"instruction": "Write the word in upper case.", "input": "river"},
    ]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = CliRunner().invoke(
        app, ["generate", str(run), "--file", str(prompts), "--max-new-tokens", "8", "--batch-size", "2"]
    )
    assert res.exit_code == 0, res.output
    written = [json.loads(line) for line in (tmp_path / "prompts.generations.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in w.items() if k != "generation"} for w in written] == rows
    from tunelab.inference.generate import GenerationSettings, generate_batch
    from tunelab.inference.prompts import prompt_text
    from tunelab.inference.target import load_target, resolve_target

    t = resolve_target(str(run))
    model, tok = load_target(t)
    expected = generate_batch(
        model, tok, [prompt_text(r, t.prompt, tok) for r in rows], GenerationSettings(max_new_tokens=8, batch_size=2)
    )
    assert [w["generation"] for w in written] == expected and any(expected)
    # left-padded batches answer as each prompt alone does (greedy)
    from tunelab.inference.generate import encode_prompt, generate_one

    alone = [
        generate_one(
            model, tok, encode_prompt(tok, prompt_text(r, t.prompt, tok)), GenerationSettings(max_new_tokens=8)
        ).text
        for r in rows
    ]
    assert expected == alone

    bad = CliRunner().invoke(app, ["generate", str(run), "--file", str(tmp_path / "missing.jsonl")])
    assert bad.exit_code == 2 and "prompts file not found" in bad.output
    both = CliRunner().invoke(app, ["generate", str(run)])
    assert both.exit_code == 2 and "INSTRUCTION or --file" in both.output


@pytest.mark.slow
def test_chat_keeps_history_resets_and_exits(run):
    from typer.testing import CliRunner

    from tunelab.cli.main import app

    expected = _answer(str(run), "What is 3 plus 5?", max_new_tokens=8)
    res = CliRunner().invoke(
        app,
        ["chat", str(run), "--max-new-tokens", "8"],
        input="What is 3 plus 5?\n/reset\n/bogus\n/exit\nnever asked\n",
    )
    assert res.exit_code == 0, res.output
    assert "single-turn" in res.output and "history cleared" in res.output and "unknown command /bogus" in res.output
    assert f">>> {expected}\n" in res.output
    assert res.output.count(">>> ") == 4  # the line after /exit is never read


@pytest.mark.slow
def test_merge_writes_a_model_whose_logits_match_the_adapter(run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.inference.target import resolve_target

    out = tmp_path / "merged"
    r = run_cli("merge", str(run), "-o", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "saved logits match the adapter model's on 4 prompts" in r.stdout
    names = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "README.md",
        "tunelab_model.json",
    } <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names) and not any(
        n.startswith("adapter_") for n in names
    )
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["use_cache"] is True
    card = (out / "README.md").read_text()
    assert "tiny:llama-2l" in card and "synth.jsonl" in card and "learning_rate: 0.003" in card and "vllm serve" in card

    # independent check: the merged folder against the run's adapter over its base, and the adapter is not a no-op
    t = resolve_target(str(run))
    tok = AutoTokenizer.from_pretrained(out)
    prompts = [
        "Below is an instruction that describes a task.\n\n### Instruction:\nAdd 4 and 4.\n\n### Response:\n",
        "cat dog sun",
    ]
    merged = _logits(AutoModelForCausalLM.from_pretrained(out), tok, prompts)
    base = AutoModelForCausalLM.from_pretrained(t.base)
    base_logits = _logits(base, tok, prompts)
    adapted = _logits(PeftModel.from_pretrained(base, str(t.adapter)), tok, prompts)
    for m, a, b in zip(merged, adapted, base_logits, strict=True):
        assert torch.allclose(m, a, atol=1e-4)
        assert (a - b).abs().max() > 1e-2

    from typer.testing import CliRunner

    from tunelab.cli.main import app

    again = CliRunner().invoke(app, ["merge", str(run), "-o", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output  # no clobbering without --overwrite


@pytest.mark.slow
def test_merge_of_a_qlora_run_reloads_the_base_unquantized(run, tmp_path):
    from tunelab.export.merge import merge_target
    from tunelab.inference.target import resolve_target

    qrun = tmp_path / "qrun"
    shutil.copytree(run, qrun, ignore=shutil.ignore_patterns("checkpoints"))
    cfg = yaml.safe_load((qrun / "config.yaml").read_text())
    cfg["quantization"]["bits"] = 4
    (qrun / "config.yaml").write_text(yaml.safe_dump(cfg))
    t = resolve_target(str(qrun))
    assert t.quantization.bits == 4
    check = merge_target(t, tmp_path / "merged", dtype="bf16")
    assert check.ok and check.argmax_agreement > 0.95
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    assert "4-bit base" in (tmp_path / "merged" / "README.md").read_text()

    with pytest.raises(TunelabError, match="no adapter to merge"):
        merge_target(resolve_target(str(tmp_path / "merged")), tmp_path / "again")


@pytest.mark.slow
def test_export_folders_load_back_with_transformers_and_peft(run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from typer.testing import CliRunner

    from tunelab.cli.main import app
    from tunelab.inference.target import load_target, resolve_target

    res = CliRunner().invoke(app, ["export", str(run), "--format", "adapter", "-o", str(tmp_path / "adapter")])
    assert res.exit_code == 0, res.output
    assert (
        f"--enable-lora --lora-modules {RUN_NAME}={tmp_path / 'adapter'}" in res.output
        and "LORA_ADAPTERS=" in res.output
    )
    res = CliRunner().invoke(app, ["export", str(run), "--format", "hf", "-o", str(tmp_path / "hf")])
    assert res.exit_code == 0, res.output
    assert f"vllm serve {tmp_path / 'hf'}" in res.output and "text-generation-inference" in res.output

    t = resolve_target(str(run))
    model, tok = load_target(t)
    prompts = ["Below is an instruction that describes a task.\n\n### Instruction:\nSort 3 1 2.\n\n### Response:\n"]
    reference = _logits(model, tok, prompts)

    adapter_dir = tmp_path / "adapter"
    assert {p.name for p in adapter_dir.iterdir()} >= {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "README.md",
    }
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(t.base), str(adapter_dir))
    assert torch.allclose(
        _logits(peft_model, AutoTokenizer.from_pretrained(adapter_dir), prompts)[0], reference[0], atol=1e-5
    )
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert torch.allclose(
        _logits(hf, AutoTokenizer.from_pretrained(tmp_path / "hf"), prompts)[0], reference[0], atol=1e-4
    )

    # exported folders are targets too, prompted as the run was trained
    for folder in ("adapter", "hf"):
        again = resolve_target(str(tmp_path / folder))
        assert again.prompt_known and again.prompt.format == "alpaca"

    res = CliRunner().invoke(app, ["export", str(tmp_path / "hf"), "--format", "adapter", "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "no adapter to export" in res.output


def test_push_to_hub_needs_a_token_from_the_environment(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli.main import app

    monkeypatch.delenv("HF_TOKEN", raising=False)
    res = CliRunner().invoke(
        app, ["export", str(tmp_path), "--format", "hf", "-o", str(tmp_path / "o"), "--push-to-hub", "me/model"]
    )
    assert res.exit_code == 2 and "HF_TOKEN is not set" in res.output
