"""A newcomer with public data (issue 21): a chat template named by the run, LLaMA-Factory's and TRL's
preference and KTO rows read as they are, raw text kept whole, truncation said where it matters, and
`generate --file` reading what `train` reads. Fast: tokenizers only, except one end-to-end run."""

import json
from pathlib import Path

import pytest
import yaml

from conftest import FIXTURES, base_config, data_config, read_jsonl, run_cli, write_json
from tunelab.config.load import build_config
from tunelab.config.schema import ModelConfig, PromptConfig
from tunelab.data.prepare import data_notes, load_splits, prepare_data
from tunelab.errors import ConfigError, DataError


def cfg(path, tmp_path, **sections):
    return data_config(path, tmp_path, max_length=256, **sections)


def tok_with(template):
    from tunelab.model.loading import load_tokenizer

    return load_tokenizer(ModelConfig(name="tiny:llama-2l"), chat_template=template)


# --- 1. a chat template named by the run -------------------------------------------------------


def test_a_template_without_tools_names_the_setting_and_the_offline_model_that_work(tmp_path, tokenizer):
    c = cfg(FIXTURES / "sharegpt_tools.json", tmp_path, prompt={"format": "messages"})
    with pytest.raises(ConfigError) as e:
        prepare_data(c, tokenizer)
    msg = e.value.problems[0]
    assert msg.startswith("model.name: the chat template of tiny:llama-2l cannot render tool calls")
    assert "prompt.chat_template: hermes" in msg and "tiny:tools-2l" in msg
    c = cfg(FIXTURES / "sharegpt_tools.json", tmp_path, prompt={"format": "messages", "chat_template": "chatml"})
    with pytest.raises(ConfigError, match="prompt.chat_template: the chat template of chatml cannot render tool"):
        prepare_data(c, tok_with("chatml"))


@pytest.mark.parametrize("name", ["hermes", "llama3"])
def test_builtin_tool_templates_train_tool_rows_on_a_model_without_one(tmp_path, name):
    from tunelab.data.chat_templates import BUILTIN
    from tunelab.data.tools import parse_tool_calls, tool_format

    tok = tok_with(name)
    assert tok.chat_template == BUILTIN[name]
    c = cfg(
        FIXTURES / "sharegpt_tools.json",
        tmp_path,
        prompt={"format": "messages", "chat_template": name},
        training={"max_length": 2048},
    )
    data = prepare_data(c, tok)
    assert data.stats["train_examples"] == 24
    labels = data.train[0]["labels"]
    assert any(v == -100 for v in labels) and any(v != -100 for v in labels)  # the answer alone is learnt
    fmt = tool_format(tok)  # the server reads calls back in the template's own convention
    text = fmt.opener + '{"name": "get_weather", "arguments": {"city": "Oslo"}}' + fmt.closer
    assert parse_tool_calls(text, fmt)[1][0]["function"]["name"] == "get_weather"


def test_a_jinja_file_is_a_template_too_and_a_wrong_name_is_one_line(tmp_path):
    from tunelab.config.load import load_config

    (tmp_path / "mine.jinja").write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    p = tmp_path / "c.yaml"
    doc = base_config(FIXTURES / "lf_kto_demo.json", tmp_path / "runs", prompt={"format": "messages"})
    doc["prompt"]["chat_template"] = "mine.jinja"
    p.write_text(yaml.safe_dump(doc))
    loaded = load_config(p)
    assert loaded.prompt.chat_template == str(tmp_path / "mine.jinja")  # anchored like the data paths
    assert (
        tok_with(loaded.prompt.chat_template).apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
        == "[user] hi\n"
    )
    with pytest.raises(ConfigError, match="prompt.chat_template: 'chatlm' is neither a built-in template"):
        tok_with("chatlm")
    with pytest.raises(ConfigError, match="prompt.chat_template: only prompt.format messages"):
        build_config({"model": {"name": "tiny:llama-2l"}, "data": {"train": {"path": "x.json"}}, **_chatml_alpaca()})


def _chatml_alpaca():
    return {"prompt": {"format": "alpaca", "chat_template": "chatml"}}


def test_a_tokenizer_with_no_template_says_how_to_name_one(tokenizer):
    from tunelab.data.templates import apply_chat_template

    bare = tok_with(None)
    bare.chat_template = None
    with pytest.raises(ConfigError, match="has none; name one with prompt.chat_template: chatml"):
        apply_chat_template(bare, [{"role": "user", "content": "hi"}])


@pytest.mark.slow
def test_the_named_template_is_saved_with_the_run_and_generate_reads_sharegpt_rows(tmp_path):
    """Train tool rows on tiny:llama-2l (no tool template) with prompt.chat_template: hermes; final/
    keeps the template, `generate --file` asks a ShareGPT row with `tools` as JSON text with it, and
    the merged folder carries it on."""
    from tunelab.data.chat_templates import HERMES

    doc = base_config(
        FIXTURES / "sharegpt_tools.json",
        tmp_path / "runs",
        prompt={"format": "messages", "chat_template": "hermes"},
        training={"max_length": 1024},
    )
    doc["data"].pop("test_size", None)
    doc["training"]["eval_steps"] = None
    doc["tracking"] = {"backend": "none"}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(doc))
    r = run_cli("train", str(p), "output.name=tools", "training.max_steps=1", "samples.enabled=false")
    assert r.returncode == 0, r.stdout + r.stderr
    final = tmp_path / "runs" / "tools" / "final"
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(final)).chat_template == HERMES
    row = json.loads(FIXTURES.joinpath("sharegpt_tools.json").read_text())[0]
    row["conversations"] = row["conversations"][:1]  # the question alone
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps(row) + "\n")
    r = run_cli("generate", str(tmp_path / "runs" / "tools"), "--file", str(prompts), "--max-new-tokens", "4")
    assert r.returncode == 0, r.stdout + r.stderr
    (out,) = read_jsonl(tmp_path / "p.generations.jsonl")
    # the user's own row comes back beside its answer (read as train reads it, written as the user wrote it)
    assert {k: v for k, v in out.items() if k != "generation"} == row and isinstance(out["generation"], str)
    r = run_cli("merge", str(tmp_path / "runs" / "tools"), "-o", str(tmp_path / "merged"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert AutoTokenizer.from_pretrained(str(tmp_path / "merged")).chat_template == HERMES  # exported with it


# --- 2, 3, 5. preference rows as LLaMA-Factory and TRL write them ------------------------------


def test_llama_factory_dpo_rows_are_read_natively(tmp_path, tokenizer):
    c = cfg(FIXTURES / "lf_dpo_demo.json", tmp_path, prompt={"format": "messages"}, training={"method": "dpo"})
    train, _, _ = load_splits(c)
    assert len(train.rows) == 6
    multi = next(r for r in train.rows if len(r["messages"]) == 4)  # a multi-turn prompt, then the chosen answer
    assert [m["role"] for m in multi["messages"]] == ["user", "assistant", "user", "assistant"]
    assert multi["chosen"] == {"role": "assistant", "content": "Chien."}
    assert multi["rejected"] == {"role": "assistant", "content": "Perro."}
    system = next(r for r in train.rows if r["messages"][0]["role"] == "system")
    assert system["messages"][0]["content"] == "Answer briefly."
    data = prepare_data(c, tokenizer)
    assert data.stats["train_examples"] == 6 and set(data.train.column_names) >= {"chosen_ids", "rejected_ids"}
    with pytest.raises(DataError, match="a chat row: set prompt.format: messages") as e:  # the default format
        load_splits(cfg(FIXTURES / "lf_dpo_demo.json", tmp_path, training={"method": "dpo"}))
    assert "on_bad_row" not in e.value.hint


def test_trl_pairs_under_the_default_format_train_with_dpo_and_say_what_to_set_otherwise(tmp_path):
    train, _, _ = load_splits(cfg(FIXTURES / "trl_pairs.jsonl", tmp_path, training={"method": "dpo"}))
    assert train.rows[0]["instruction"] and train.rows[0]["output"] == train.rows[0]["chosen"]
    with pytest.raises(DataError) as e:
        load_splits(cfg(FIXTURES / "trl_pairs.jsonl", tmp_path))
    assert "trl_pairs.jsonl:1: a preference row (prompt, chosen, rejected) under training.method sft: set " in str(
        e.value
    )
    assert "set training.method: dpo" in e.value.message and "on_bad_row" not in e.value.hint
    chat = write_json(tmp_path / "chat.json", [{"prompt": [{"role": "user", "content": "q"}], "chosen": "a"}])
    with pytest.raises(DataError, match="whose prompt is a conversation: set prompt.format: messages"):
        load_splits(cfg(chat, tmp_path, training={"method": "dpo"}))


def test_llama_factory_kto_rows_take_the_last_assistant_turn_as_the_completion(tmp_path, tokenizer):
    c = cfg(FIXTURES / "lf_kto_demo.json", tmp_path, prompt={"format": "messages"}, training={"method": "kto"})
    train, _, _ = load_splits(c)
    multi = train.rows[2]
    assert multi["completion"] == {"content": "Chien.", "role": "assistant"} and multi["label"] is True
    assert [m["content"] for m in multi["messages"]][:3] == ["Translate 'cat' into French.", "Chat.", "And 'dog'?"]
    assert [r["label"] for r in train.rows] == [True, False, True, False, True, False]
    data = prepare_data(c, tokenizer)
    assert data.stats["train_examples"] == 6 and data.train["label"] == [True, False, True, False, True, False]
    alpaca = write_json(tmp_path / "k.json", [{"instruction": "q", "output": "a", "label": False}] * 2)
    row = load_splits(cfg(alpaca, tmp_path, training={"method": "kto"}))[0].rows[0]
    assert row["completion"] == "a" and row["label"] is False
    bad = write_json(tmp_path / "b.json", [{"messages": [{"role": "user", "content": "q"}], "label": True}])
    with pytest.raises(DataError, match="b.json:2: a KTO row .label. needs a completion"):
        load_splits(cfg(bad, tmp_path, prompt={"format": "messages"}, training={"method": "kto"}))


def _long_pairs(tmp_path, n_long: int = 4, n_short: int = 0) -> Path:
    """DPO rows whose multi-turn prompt alone fills 96 tokens (and, after them, short ones)."""
    long = [{"role": "user", "content": "word " * 60}, {"role": "assistant", "content": "ok"}] * 2
    rows = [
        {"prompt": [*long, {"role": "user", "content": f"q{i}"}], "chosen": "yes", "rejected": "no"}
        for i in range(n_long)
    ]
    rows += [{"prompt": f"short {i}", "chosen": "yes", "rejected": "no"} for i in range(n_short)]
    return write_json(tmp_path / "pairs.json", rows)


def test_long_dpo_prompts_lose_the_pair_by_default_and_the_note_says_what_to_set(tmp_path, tokenizer):
    sections = dict(prompt={"format": "messages"}, training={"method": "dpo", "max_length": 96})
    c = cfg(_long_pairs(tmp_path, 2, 2), tmp_path, data={"shuffle": False, "max_lost_answers": 1.0}, **sections)
    data = prepare_data(c, tokenizer)
    assert data.stats["train_examples"] == 2 and data.stats["train_no_response_tokens"] == 2
    assert any("set data.truncate_prompt: left" in n for n in data_notes(data.stats, c))


def test_left_truncated_prompts_keep_their_end_and_every_pair(tmp_path, tokenizer):
    c = cfg(
        _long_pairs(tmp_path),
        tmp_path,
        data={"truncate_prompt": "left", "shuffle": False},
        prompt={"format": "messages"},
        training={"method": "dpo", "max_length": 96},
    )
    data = prepare_data(c, tokenizer)
    assert data.stats["train_examples"] == 4 and data.stats["train_prompt_truncated_left"] == 4
    first = data.train[0]
    longest = max(len(first["chosen_ids"]), len(first["rejected_ids"]))
    assert len(first["prompt_ids"]) + longest == 96 and first["prompt_ids"][0] == tokenizer.bos_token_id
    assert "q0" in tokenizer.decode(first["prompt_ids"])  # the end of the prompt, the question, is kept
    assert "4 of 4 train prompts lost their first tokens" in " ".join(data_notes(data.stats, c))


# --- 4. raw text ---------------------------------------------------------------------------------


def test_text_splits_long_documents_by_default_and_lines_are_documents(tmp_path, tokenizer):
    text = FIXTURES / "wiki_demo.txt"
    c = cfg(text, tmp_path, prompt={"format": "text", "train_on": "all"}, training={"max_length": 64})
    assert c.data.too_long == "split" and c.data.model_dump()["too_long"] == "split"
    data = prepare_data(c, tokenizer)
    assert data.stats["train_rows"] == 1 and data.stats["train_too_long_split"] == 1
    assert not data_notes(data.stats, c)  # TRL's bfd_split keeps every token: nothing to warn about
    lines = cfg(
        [{"path": str(text), "documents": "lines"}],
        tmp_path,
        prompt={"format": "text", "train_on": "all"},
        data={"test_size": 0.25},
    )
    train, test, _ = load_splits(lines)
    assert (len(train.rows), len(test.rows)) == (18, 6)
    assert all(w.startswith(f"{text}:") for w in train.where) and "\n" not in train.rows[0]["text"]


def test_truncated_text_says_the_share_of_tokens_lost_and_a_whole_file_says_how_to_cut_it(tmp_path, tokenizer):
    text = FIXTURES / "wiki_demo.txt"
    c = cfg(
        text,
        tmp_path,
        prompt={"format": "text", "train_on": "all"},
        training={"max_length": 64, "packing": False},
    )
    assert c.data.too_long == "truncate"  # without packing nothing can split
    data = prepare_data(c, tokenizer)
    (note,) = data_notes(data.stats, c)
    cut = data.stats["train_too_long_tokens_cut"]
    assert note.startswith("1 of 1 train rows truncated to 64 tokens (100%), losing ")
    assert f"losing {cut:,} of {cut + 64:,} tokens" in note and "data.too_long: split keeps them" in note
    with pytest.raises(DataError) as e:
        load_splits(cfg(text, tmp_path, prompt={"format": "text"}, data={"test_size": 0.1}))
    assert "leaves no train or no test rows out of 1 (each .txt file is one document: set " in e.value.message
    assert "data.train.documents: lines" in e.value.message


# --- 6. truncation said where it matters --------------------------------------------------------


def test_a_mixture_source_losing_rows_gets_its_own_line_and_lost_tool_calls_are_counted(tmp_path):
    tok = tok_with("hermes")
    c = cfg(
        [
            {"path": "synthetic:80", "format": "alpaca", "weight": 0.8},
            {"path": str(FIXTURES / "sharegpt_tools.json"), "weight": 0.2},
        ],
        tmp_path,
        prompt={"format": "messages", "chat_template": "hermes"},
        data={"max_lost_answers": 1.0},
        training={"max_length": 256},
    )
    data = prepare_data(c, tok)
    notes = data_notes(data.stats, c)
    src = data.stats["sources"][1]
    assert src["train_rows"] == 20 and src["no_response_tokens"] + src["train_examples"] == 20
    line = next(n for n in notes if n.startswith("data.train[1] sharegpt_tools.json: "))
    share = src["train_examples"] / data.stats["train_examples"]
    assert f"it is {share:.0%} of the training examples (its weight asks for 20%)" in line
    lost = data.stats["train_tool_calls_lost"]
    assert lost > 0 and f"{lost} of {data.stats['train_tool_calls']} tool calls in the train rows" in " ".join(notes)
    assert not any(n.startswith("data.train[0]") for n in notes)  # the short alpaca rows lost nothing


def test_tool_calls_before_the_cut_are_not_counted_lost(tmp_path):
    tok = tok_with("hermes")
    call = {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
    row = {
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "1"},
            {"role": "assistant", "content": "late " * 200, "tool_calls": [call, call]},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    }
    c = cfg(write_json(tmp_path / "t.json", [row]), tmp_path, prompt={"format": "messages", "chat_template": "hermes"})
    data = prepare_data(c, tok)
    assert data.stats["train_too_long_truncated"] == 1
    assert (data.stats["train_tool_calls_lost"], data.stats["train_tool_calls"]) == (2, 3)


# --- 7. generate --file reads what train reads ---------------------------------------------------


def test_prompt_files_take_sharegpt_rows_tools_as_json_text_and_every_file_type(tmp_path):
    from tunelab.inference.prompts import prompt_text, read_prompt_rows

    tok = tok_with("hermes")
    chat = PromptConfig(format="messages", chat_template="hermes")
    tools = json.dumps([{"name": "f", "description": "d", "parameters": {}}])
    f = tmp_path / "p.jsonl"
    f.write_text(
        json.dumps({"conversations": [{"from": "human", "value": "hi"}], "tools": tools})
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "yo"}], "tools": tools})
        + "\n"
    )
    rows = read_prompt_rows(f, chat)
    assert rows[0]["messages"] == [{"role": "user", "content": "hi"}]
    assert rows[1]["tools"] == [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {}}}]
    assert "<tools>" in prompt_text(rows[0], chat, tok)
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "yo"}], "tools": "[{bad"}) + "\n")
    with pytest.raises(DataError, match=r"p.jsonl:1: field 'tools': not valid JSON") as e:
        read_prompt_rows(f, chat)
    assert e.value.hint is None  # data.on_bad_row is no setting of generate
    j = write_json(tmp_path / "p.json", [{"instruction": "a"}, {"instruction": "b", "input": "c"}])
    assert [r["input"] for r in read_prompt_rows(j, PromptConfig())] == ["", "c"]
    pairs = read_prompt_rows(FIXTURES / "trl_pairs.jsonl", PromptConfig())  # what a DPO run trained on
    assert pairs[0]["instruction"] == "Name a primary colour."
