import json

import pytest

from conftest import write_json
from tunelab.config.schema import PromptConfig, RunConfig
from tunelab.data.prepare import TokenSpec, load_splits, prepare_data, tokenize_rows
from tunelab.data.sources import RawRows
from tunelab.data.templates import ALPACA_NO_INPUT, ALPACA_WITH_INPUT, render_prompt, render_segments
from tunelab.errors import DataError


def cfg_for(path, **data):
    return RunConfig.model_validate(
        {
            "model": {"name": "tiny:llama-2l"},
            "data": {"train": {"path": str(path)}, "shuffle": False, "cache_dir": str(path.parent / "cache"), **data},
            "training": {"max_length": 64},
        }
    )


def test_alpaca_template_is_byte_exact():
    no_input = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\n{instruction}\n\n### Response:\n{output}"
    )
    with_input = (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
        "### Input:\n{input}\n\n### Response:\n{output}"
    )
    cfg = cfg_for(__import__("pathlib").Path("/x.json")).prompt
    row = {"instruction": "Add.", "input": "", "output": "4"}
    assert "".join(t for t, _ in render_segments(row, cfg)) == no_input.format(**row)
    row = {"instruction": "Add.", "input": "2 2", "output": "4"}
    assert "".join(t for t, _ in render_segments(row, cfg)) == with_input.format(**row)
    assert render_prompt(row, cfg) == with_input.format(**{**row, "output": ""})
    assert ALPACA_NO_INPUT.endswith("### Response:\n") and ALPACA_WITH_INPUT.count("### Input:") == 1


def test_jsonl_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"instruction": "a", "output": "b"}\n{"instruction": oops}\n')
    with pytest.raises(DataError, match=rf"{p}:2: malformed JSON"):
        load_splits(cfg_for(p))


def test_json_array_row_problems_point_at_lines(tmp_path):
    rows = [{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c", "input": ""}]
    p = write_json(tmp_path / "d.json", rows)
    line = p.read_text().splitlines().index("  {", 2) + 1
    with pytest.raises(DataError) as e:
        load_splits(cfg_for(p))
    assert e.value.message == f"{p}:{line}: missing field 'output'"


@pytest.mark.parametrize(
    "row, message, reason",
    [
        (
            {"instruction": "a", "input": "", "output": 3},
            "field 'output' should be a string, got int",
            "bad_type_output",
        ),
        ({"instruction": "a", "input": "", "output": "  "}, "empty output", "empty_output"),
        ({"input": "", "output": "x"}, "missing field 'instruction'", "missing_instruction"),
        (
            {"instruction": "a", "input": 5, "output": "x"},
            "field 'input' should be a string, got int",
            "bad_type_input",
        ),
    ],
)
def test_bad_rows_error_or_skip(tmp_path, row, message, reason):
    good = {"instruction": "a", "input": "", "output": "b"}
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [good, row, good]) + "\n")
    with pytest.raises(DataError) as e:
        load_splits(cfg_for(p))
    assert e.value.message == f"{p}:2: {message}"
    train, _, stats = load_splits(cfg_for(p, on_bad_row="skip"))
    assert len(train.rows) == 2 and stats["rows_skipped"] == {reason: 1} and stats["rows_read"] == 3


def test_csv_and_folder_sources_and_field_map(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.csv").write_text("question,answer\nWhat is 1+1?,2\nWhat is 2+2?,4\n")
    (folder / "b.jsonl").write_text(json.dumps({"question": "Say hi", "answer": "hi"}) + "\n")
    cfg = cfg_for(folder, field_map={"question": "instruction", "answer": "output"})
    train, test, stats = load_splits(cfg)
    assert [r["instruction"] for r in train.rows] == ["What is 1+1?", "What is 2+2?", "Say hi"]
    assert train.where[1] == f"{folder / 'a.csv'}:3"
    assert stats["train_rows"] == 3 and not test.rows


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load_splits(cfg_for(tmp_path / "nope.jsonl"))


def test_test_size_carving_is_seeded_and_disjoint(synth_file):
    a_train, a_test, _ = load_splits(cfg_for(synth_file, test_size=0.25, shuffle=True, train_rows=50, test_rows=10))
    b_train, b_test, _ = load_splits(cfg_for(synth_file, test_size=0.25, shuffle=True, train_rows=50, test_rows=10))
    assert a_test.where == b_test.where and a_train.where == b_train.where
    assert len(a_train.rows) == 50 and len(a_test.rows) == 10
    full_train, full_test, _ = load_splits(cfg_for(synth_file, test_size=0.25))
    assert not set(full_train.where) & set(full_test.where)
    assert len(full_test.rows) == 50
    c_train, _, _ = load_splits(cfg_for(synth_file, test_size=0.25, shuffle=True, seed=7, train_rows=50))
    assert c_train.where != a_train.where


def test_labels_mask_the_prompt_and_eos_ends_every_example(tmp_path, tokenizer):
    p = write_json(tmp_path / "d.json", [{"instruction": "Say hi.", "input": "", "output": "hi there"}])
    cfg = cfg_for(p)
    raw = RawRows()
    raw.add({"instruction": "Say hi.", "input": "", "output": "hi there"}, "x:1")
    cols, _ = tokenize_rows(raw, TokenSpec.of(cfg), tokenizer)
    ids, labels = cols["input_ids"][0], cols["labels"][0]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    trained = [t for t, lab in zip(ids, labels, strict=True) if lab != -100]
    assert tokenizer.decode(trained) == "hi there" + tokenizer.eos_token
    prompt_len = len(ids) - len(trained)
    assert tokenizer.decode(ids[1:prompt_len]) == ALPACA_NO_INPUT.format(instruction="Say hi.")
    cfg.prompt.train_on = "all"
    cols, _ = tokenize_rows(raw, TokenSpec.of(cfg), tokenizer)
    assert cols["labels"][0][1:] == cols["input_ids"][0][1:]


def test_pad_token_is_not_eos(tiny_model_dir, tmp_path):
    import shutil

    from tunelab.config.schema import ModelConfig
    from tunelab.model.loading import load_tokenizer

    tok = load_tokenizer(ModelConfig(name=str(tiny_model_dir)))
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    # a tokenizer that pads with EOS (common in released models) gets a distinct pad token
    copy = tmp_path / "m"
    shutil.copytree(tiny_model_dir, copy)
    cfg_file = copy / "tokenizer_config.json"
    tc = json.loads(cfg_file.read_text())
    tc["pad_token"] = "</s>"
    cfg_file.write_text(json.dumps(tc))
    tok = load_tokenizer(ModelConfig(name=str(copy)))
    assert tok.pad_token_id != tok.eos_token_id


def test_too_long_examples_truncate_or_drop(tmp_path, tokenizer):
    long = {"instruction": "Repeat.", "input": "", "output": " ".join(["cat"] * 200)}
    short = {"instruction": "Say hi.", "input": "", "output": "hi"}
    raw = RawRows()
    raw.add(long, "x:1")
    raw.add(short, "x:2")
    cfg = cfg_for(tmp_path / "d.json")
    cols, counts = tokenize_rows(raw, TokenSpec.of(cfg), tokenizer)
    assert counts == {"too_long_truncated": 1, "too_long_tokens_cut": 170} and len(cols["input_ids"][0]) == 64
    cfg.data.too_long = "drop"
    cols, counts = tokenize_rows(raw, TokenSpec.of(cfg), tokenizer)
    assert counts == {"too_long_dropped": 1} and len(cols["input_ids"]) == 1


def test_tokenized_data_is_cached_by_content(synth_file, tokenizer):
    cfg = cfg_for(synth_file, test_size=10)
    first = prepare_data(cfg, tokenizer)
    again = prepare_data(cfg, tokenizer)
    assert not first.cache_hit and again.cache_hit
    assert again.train["input_ids"] == first.train["input_ids"]
    cfg.prompt.train_on = "all"
    assert not prepare_data(cfg, tokenizer).cache_hit
    with synth_file.open("a") as f:
        f.write(json.dumps({"instruction": "New.", "input": "", "output": "row"}) + "\n")
    cfg.prompt.train_on = "response"
    assert not prepare_data(cfg, tokenizer).cache_hit


def test_messages_format_trains_on_assistant_turns_only(tmp_path, tokenizer):
    convo = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"},
            {"role": "assistant", "content": "ciao"},
        ]
    }
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps(convo) + "\n")
    cfg = cfg_for(p)
    cfg.prompt.format = "messages"
    train, _, _ = load_splits(cfg)
    cols, _ = tokenize_rows(train, TokenSpec.of(cfg), tokenizer)
    ids, labels = cols["input_ids"][0], cols["labels"][0]
    trained = tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100])
    assert "hello" in trained and "ciao" in trained and "hi" not in trained.replace("ciao", "") and "bye" not in trained
    rendered = tokenizer.apply_chat_template(convo["messages"], tokenize=False)
    assert tokenizer.decode(ids) == tokenizer.bos_token + rendered + tokenizer.eos_token


def test_custom_template_and_text_formats(tmp_path, tokenizer):
    p = tmp_path / "q.jsonl"
    p.write_text(json.dumps({"q": "2+2", "a": "4", "text": "raw words"}) + "\n")
    cfg = cfg_for(p)
    cfg.prompt = PromptConfig(format="custom", template="Q: {q}\nA: ", response_field="a")
    train, _, _ = load_splits(cfg)
    assert render_segments(train.rows[0], cfg.prompt) == [("Q: 2+2\nA: ", False), ("4", True)]
    cfg.prompt.format = "text"
    train, _, _ = load_splits(cfg)
    assert render_segments(train.rows[0], cfg.prompt) == [("raw words", True)]


def test_relative_data_paths_follow_the_config_file_and_survive_saving(tmp_path, monkeypatch):
    """A path next to the config loads from any working directory, and the saved run config still finds it."""
    from tunelab.config import load_config, save_config

    proj = tmp_path / "proj"
    proj.mkdir()
    write_json(proj / "d.json", [{"instruction": "Say hi.", "input": "", "output": "hi"}] * 3)
    (proj / "cfg.yaml").write_text("model: {name: tiny:llama-2l}\ndata: {train: {path: d.json}}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(proj / "cfg.yaml")
    assert cfg.data.train.path == str((proj / "d.json").resolve()) and cfg.model.name == "tiny:llama-2l"
    assert len(load_splits(cfg)[0].rows) == 3
    (tmp_path / "run").mkdir()
    save_config(cfg, tmp_path / "run" / "config.yaml")
    monkeypatch.chdir(tmp_path)
    assert len(load_splits(load_config(tmp_path / "run" / "config.yaml"))[0].rows) == 3
    # a path missing everywhere stays as written and fails with the file named
    (proj / "bad.yaml").write_text("model: {name: tiny:llama-2l}\ndata: {train: {path: nope.json}}\n")
    with pytest.raises(DataError, match="nope.json"):
        load_splits(load_config(proj / "bad.yaml"))
