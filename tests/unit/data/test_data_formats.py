"""The data people have (issue 15): ShareGPT and tool-call conversations, raw .txt text, weighted
mixtures, preference pairs. Fast: tokenizers only, no training."""

import json
import re
from collections import Counter

import pytest

from conftest import FIXTURES, data_config, write_json
from tunelab.config.load import build_config
from tunelab.data.prepare import TokenSpec, load_splits, prepare_data, tokenize_rows
from tunelab.errors import ConfigError, DataError

FIXTURE = FIXTURES / "sharegpt_tools.json"


def cfg(path, tmp_path, model="tiny:llama-2l", **sections):
    return data_config(path, tmp_path, model=model, **sections)


@pytest.fixture(scope="module")
def tools_tokenizer():
    from transformers import AutoTokenizer

    from tunelab.model.resolve import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("tiny:tools-2l"))


# --- ShareGPT ---------------------------------------------------------------------------------


def test_sharegpt_rows_are_detected_and_become_chat_turns_with_tool_calls(tmp_path):
    c = cfg(FIXTURE, tmp_path, prompt={"format": "messages"})
    train, _, stats = load_splits(c)
    assert len(train.rows) == 24
    assert stats["format_notes"] == [
        f"{FIXTURE}: 24 ShareGPT rows (conversations of from / value turns) read as chat messages"
    ]
    row = train.rows[0]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant", "tool", "assistant"]
    call = row["messages"][1]["tool_calls"][0]["function"]
    assert call["name"] == "get_weather" and isinstance(call["arguments"], dict)  # the JSON text became an object
    assert row["tools"][0] == {
        "type": "function",
        "function": json.loads(json.loads(FIXTURE.read_text())[0]["tools"])[0],
    }
    finance = train.rows[1]
    assert finance["messages"][0] == {"role": "system", "content": "You are a concise finance assistant."}
    assert "tools" not in train.rows[3]  # an empty tools list ("[]") is no tools


def test_sharegpt_label_mask_covers_exactly_the_assistant_turns(tmp_path, tools_tokenizer):
    """Every token of every assistant turn (its text and its tool calls, through <|im_end|>) is trained, and
    nothing else but the final EOS: not the system prompt, the tools list, the user or the tool results."""
    tok = tools_tokenizer
    c = cfg(FIXTURE, tmp_path, "tiny:tools-2l", prompt={"format": "messages"}, training={"max_length": 1024})
    train, _, _ = load_splits(c)
    cols, counts = tokenize_rows(train, TokenSpec.of(c), tok)
    assert not counts and len(cols["input_ids"]) == 24
    for row, ids, labels in zip(train.rows, cols["input_ids"], cols["labels"], strict=True):
        text = tok.apply_chat_template(row["messages"], tools=row.get("tools"), tokenize=False)
        assert tok.decode(ids) == tok.bos_token + text + tok.eos_token  # the template's own text, BOS and EOS added
        head = "<|im_start|>assistant\n"
        spans = [part.split("<|im_end|>\n", 1)[0] + "<|im_end|>\n" for part in text.split(head)[1:]]
        trained = [t for t, lab in zip(ids, labels, strict=True) if lab != -100]
        assert trained == [t for s in spans for t in tok(s, add_special_tokens=False).input_ids] + [tok.eos_token_id]
        n_calls = sum(len(m.get("tool_calls") or []) for m in row["messages"])
        assert tok.decode(trained).count("<tool_call>") == n_calls  # the calls are learnt...
        assert "<tool_response>" not in tok.decode(trained) and "<tools>" not in tok.decode(
            trained
        )  # ...the results are not


@pytest.mark.parametrize(
    "turns, message",
    [
        (
            [{"from": "human", "value": "hi"}, {"from": "bot", "value": "hello"}],
            "conversations[1].from: unknown role 'bot'",
        ),
        ([{"from": "human", "value": "hi"}], "conversation has no assistant turn"),
        (
            [{"from": "human", "value": "hi"}, {"from": "gpt", "value": 3}],
            "conversations[1].value should be a string, got int",
        ),
        (
            [{"from": "human", "value": "hi"}, {"from": "function_call", "value": "{name: f}"}],
            "conversations[1].value: a function call that is not valid JSON",
        ),
    ],
)
def test_bad_sharegpt_rows_are_file_line_errors_or_counted_skips(tmp_path, turns, message):
    p = tmp_path / "sg.jsonl"
    good = {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}
    p.write_text(json.dumps(good) + "\n" + json.dumps({"conversations": turns}) + "\n")
    with pytest.raises(DataError, match=re.escape(f"sg.jsonl:2: {message}")):
        load_splits(cfg(p, tmp_path, prompt={"format": "messages"}))
    train, _, stats = load_splits(cfg(p, tmp_path, prompt={"format": "messages"}, data={"on_bad_row": "skip"}))
    assert len(train.rows) == 1 and sum(stats["rows_skipped"].values()) == 1


def test_sharegpt_keys_and_role_names_are_configurable(tmp_path):
    p = write_json(
        tmp_path / "custom.json",
        [{"dialog": [{"speaker": "person", "text": "2+2?"}, {"speaker": "bot", "text": "4"}], "persona": "Be brief."}],
    )
    c = cfg(
        p,
        tmp_path,
        prompt={"format": "messages"},
        data={
            "train": {
                "path": str(p),
                "format": "sharegpt",
                "sharegpt": {
                    "conversations": "dialog",
                    "role": "speaker",
                    "content": "text",
                    "system": "persona",
                    "roles": {"person": "user", "bot": "assistant"},
                },
            }
        },
    )
    train, _, stats = load_splits(c)
    assert train.rows[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    assert "format_notes" not in stats  # said explicitly: nothing to note


def test_a_sharegpt_file_under_the_alpaca_format_says_what_to_set(tmp_path):
    with pytest.raises(
        DataError,
        match=r"sharegpt_tools.json:\d+: missing field 'instruction' \(a chat row: set prompt.format: messages\)",
    ):
        load_splits(cfg(FIXTURE, tmp_path))
    with pytest.raises(ConfigError, match="prompt.format: ShareGPT rows are chat"):
        cfg(FIXTURE, tmp_path, prompt={"format": "sharegpt"})


# --- tool calls -------------------------------------------------------------------------------


def test_openai_tool_call_rows_are_checked_and_normalised(tmp_path):
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}],
    }
    good = {
        "messages": [
            {"role": "user", "content": "1+2?"},
            call,
            {"role": "tool", "tool_call_id": "c1", "content": "3"},
            {"role": "assistant", "content": "3"},
        ],
        "tools": [{"name": "add", "parameters": {}}],
    }
    bad = json.loads(json.dumps(good))
    bad["messages"][1]["tool_calls"][0]["function"]["arguments"] = '{"a": 1,'
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"t.jsonl:2: messages\[1\].tool_calls\[0\].arguments: not valid JSON"):
        load_splits(cfg(p, tmp_path, prompt={"format": "messages"}))
    train, _, _ = load_splits(cfg(p, tmp_path, prompt={"format": "messages"}, data={"on_bad_row": "skip"}))
    m = train.rows[0]["messages"][1]
    assert m["content"] == "" and m["tool_calls"][0] == {
        "id": "c1",
        "type": "function",
        "function": {"name": "add", "arguments": {"a": 1, "b": 2}},
    }
    assert train.rows[0]["tools"] == [{"type": "function", "function": {"name": "add", "parameters": {}}}]


def test_a_template_without_tool_support_is_a_config_error_before_weights_load(tmp_path, tokenizer):
    c = cfg(FIXTURE, tmp_path, prompt={"format": "messages"})
    with pytest.raises(
        ConfigError,
        match=r"model.name: the chat template of tiny:llama-2l cannot render tool calls "
        r"\(a probe conversation lost the tools list, the tool call\)",
    ):
        prepare_data(c, tokenizer)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_tool_call_format_is_read_off_the_template_and_parses_generations(tools_tokenizer):
    from tunelab.data.tools import parse_tool_calls, tool_format

    fmt = tool_format(tools_tokenizer)
    assert (fmt.opener, fmt.closer) == ("<tool_call>", "</tool_call>")
    text, calls = parse_tool_calls(
        'Let me check. <tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>', fmt
    )
    assert text == "Let me check." and [c["function"] for c in calls] == [
        {"name": "add", "arguments": '{"a": 2, "b": 3}'}
    ]
    assert calls[0]["id"].startswith("call_") and calls[0]["type"] == "function"
    text, calls = parse_tool_calls('<tool_call>{"name": "add", "argu', fmt)  # cut off: stays text
    assert calls == [] and text.startswith("<tool_call>")
    assert parse_tool_calls("5", fmt) == ("5", [])


# --- raw text ---------------------------------------------------------------------------------


def test_txt_files_are_one_document_each_or_split_on_blank_lines(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("First para line one.\nline two.\n\n\nSecond para.\n")
    (folder / "b.txt").write_text("\ufeffOnly one.\n")
    (folder / "empty.txt").write_text("\n\n")
    train, _, _ = load_splits(cfg(folder, tmp_path, prompt={"format": "text", "train_on": "all"}))
    assert [r["text"] for r in train.rows] == ["First para line one.\nline two.\n\n\nSecond para.\n", "Only one.\n"]
    assert train.where == [f"{folder / 'a.txt'}:1", f"{folder / 'b.txt'}:1"]
    c = cfg(
        folder,
        tmp_path,
        prompt={"format": "text", "train_on": "all"},
        data={"train": {"path": str(folder), "documents": "blank_lines"}},
    )
    train, _, _ = load_splits(c)
    assert [r["text"] for r in train.rows] == ["First para line one.\nline two.", "Second para.", "Only one."]
    assert train.where == [f"{folder / 'a.txt'}:1", f"{folder / 'a.txt'}:5", f"{folder / 'b.txt'}:1"]


def test_blocks_and_split_keep_documents_whole_for_trls_packing(tmp_path, tokenizer):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": " ".join(["cat dog sun"] * n)}) + "\n" for n in (3, 20, 5)))
    base = {"prompt": {"format": "text", "train_on": "all"}}
    for extra, counted in (
        ({"training": {"packing": "blocks", "max_length": 16}}, Counter()),
        ({"training": {"max_length": 16}, "data": {"too_long": "split"}}, Counter(too_long_split=2)),
    ):
        c = cfg(docs, tmp_path, **base, **extra)
        assert TokenSpec.of(c).whole
        cols, counts = tokenize_rows(load_splits(c)[0], TokenSpec.of(c), tokenizer)
        assert counts == counted and [x[-1] for x in cols["input_ids"]] == [tokenizer.eos_token_id] * 3
        assert max(len(x) for x in cols["input_ids"]) > 16  # cut by TRL's packing (wrapped / bfd_split), not here
    with pytest.raises(ConfigError, match="data.too_long: split cuts long examples into packed pieces"):
        cfg(docs, tmp_path, **base, data={"too_long": "split"}, training={"packing": False})


# --- mixtures ---------------------------------------------------------------------------------


def test_weighted_mixture_takes_exact_counts_and_records_each_source(tmp_path, tokenizer):
    srcs = [{"path": "synthetic:1000:seed=1", "weight": 0.8}, {"path": "synthetic:1000:seed=2", "weight": 0.2}]
    c = cfg(srcs, tmp_path, data={"train_rows": 1000, "test_size": 16, "shuffle": True})
    train, test, stats = load_splits(c)
    assert Counter(train.origin) == {0: 800, 1: 200} and len(train.rows) == 1000
    assert Counter(test.origin) == {0: 16, 1: 16}  # each source's own test rows
    assert [(s["train_rows"], s["test_rows"], s["repeated_rows"]) for s in stats["sources"]] == [
        (800, 16, 0),
        (200, 16, 0),
    ]
    assert set(train.origin[:50]) == {0, 1}  # mixed, not one source after the other
    assert not set(test.where) & set(train.where)  # a source's test rows are not among its training rows
    again, _, _ = load_splits(c)
    assert again.rows == train.rows  # seeded
    data = prepare_data(c, tokenizer)
    per = data.stats["sources"]
    assert [s["train_examples"] for s in per] == [800, 200]
    assert (
        sum(s["train_tokens"] for s in per) == data.stats["train_tokens"]
        and per[0]["train_tokens"] > 3 * per[1]["train_tokens"]
    )


def test_mixture_without_a_total_is_the_largest_that_repeats_nothing_and_rows_repeat_a_small_source(tmp_path):
    srcs = [{"path": "synthetic:1000:seed=1", "weight": 3}, {"path": "synthetic:100:seed=2", "weight": 1}]
    train, _, _ = load_splits(cfg(srcs, tmp_path))
    assert Counter(train.origin) == {0: 300, 1: 100}
    srcs = [{"path": "synthetic:50:seed=1", "rows": 120}, {"path": "synthetic:100:seed=2", "rows": 30}]
    train, _, stats = load_splits(cfg(srcs, tmp_path))
    assert Counter(train.origin) == {0: 120, 1: 30} and stats["sources"][0]["repeated_rows"] == 70
    assert (
        "data.train[0]: synthetic:50:seed=1 has 50 training rows; 120 were asked, so 70 repeat" in stats["format_notes"]
    )


def test_mixture_sources_keep_their_own_shape(tmp_path):
    """An Alpaca source and a ShareGPT source mixed under the chat format: both become chat messages."""
    srcs = [{"path": "synthetic:20:seed=1", "format": "alpaca", "rows": 10}, {"path": str(FIXTURE), "rows": 10}]
    train, _, _ = load_splits(cfg(srcs, tmp_path, prompt={"format": "messages"}))
    alpaca = [r for r, o in zip(train.rows, train.origin, strict=True) if o == 0]
    assert alpaca[0]["messages"][0]["role"] == "user" and alpaca[0]["messages"][1]["role"] == "assistant"


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"train": {"path": "x.jsonl", "weight": 1.0}},
            "data.train.weight: a weight shares rows among several sources",
        ),
        ({"train": [{"path": "x.jsonl", "weight": 1.0}, {"path": "y.jsonl"}]}, "give every source a weight or rows"),
        (
            {"train": [{"path": "x.jsonl", "weight": 1.0}, {"path": "y.jsonl", "rows": 5}]},
            "data.train_rows: sources with rows",
        ),
        (
            {"train": [{"path": "x.jsonl", "format": "sharegpt"}]},
            r"data.train\[0\].format: sharegpt rows cannot be rendered as prompt.format alpaca",
        ),
        ({"train": [], "test_size": 2}, "empty list of sources"),
    ],
)
def test_bad_mixtures_are_config_errors(tmp_path, data, message):
    with pytest.raises(ConfigError, match=message):
        build_config({"model": {"name": "tiny:llama-2l"}, "data": data})


# --- preference pairs -------------------------------------------------------------------------


def test_preference_pairs_tokenize_like_sft_and_inference(tmp_path, tokenizer):
    """The prompt of a pair is exactly the inference prompt's tokens, and each answer exactly SFT's
    trained tokens for that answer (EOS included)."""
    from tunelab.data.prepare import write_arrow
    from tunelab.data.templates import render_prompt
    from tunelab.data.tokens import prompt_ids

    c = cfg("synthetic:12:seed=4:kind=preference", tmp_path, training={"method": "dpo"})
    train, _, _ = load_splits(c)
    row = train.rows[0]
    assert row["output"] == row["chosen"] != row["rejected"]  # the SFT shape, the preferred answer as the response
    counts = Counter()
    write_arrow(train, TokenSpec.of(c), tokenizer, tmp_path / "p.arrow", counts, "dpo")
    import datasets

    ds = datasets.Dataset.from_file(str(tmp_path / "p.arrow"))
    assert ds.column_names == ["prompt_ids", "chosen_ids", "rejected_ids"] and len(ds) == 12
    assert ds[0]["prompt_ids"] == prompt_ids(tokenizer, render_prompt(row, c.prompt))
    sft = tokenize_rows(
        train,
        TokenSpec.of(c.model_copy(update={"training": c.training.model_copy(update={"method": "sft"})})),
        tokenizer,
    )[0]
    assert ds[0]["chosen_ids"] == [
        t for t, lab in zip(sft["input_ids"][0], sft["labels"][0], strict=True) if lab != -100
    ]
    assert tokenizer.decode(ds[0]["rejected_ids"]) == row["rejected"] + tokenizer.eos_token


def test_chat_pairs_and_kto_rows(tmp_path, tokenizer):
    p = tmp_path / "pairs.jsonl"
    rows = [
        {
            "prompt": [{"role": "user", "content": "2+2?"}],
            "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": "5",
        },
        {
            "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}],
        },
        {"prompt": "x?", "completion": "y", "label": False},
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = cfg(p, tmp_path, prompt={"format": "messages"}, training={"method": "kto", "batch_size": 2})
    train, _, _ = load_splits(c)
    assert train.rows[1]["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert train.rows[2]["label"] is False and train.rows[2]["messages"][-1]["content"] == "y"
    from tunelab.data.preference_rows import iter_pairs

    out = [b for b in iter_pairs(train, TokenSpec.of(c), tokenizer, Counter(), "kto")]
    assert out[0]["label"] == [
        True,
        False,
        True,
        False,
        False,
    ]  # each pair gives a desirable and an undesirable example
    with pytest.raises(DataError, match=r"pairs.jsonl:3: missing field 'chosen'"):
        load_splits(cfg(p, tmp_path, prompt={"format": "messages"}, training={"method": "dpo"}))


@pytest.mark.parametrize(
    "section, message",
    [
        ({"training": {"method": "orpo"}}, "training.method: orpo is not in TRL's stable API"),
        (
            {"training": {"method": "dpo"}, "preference": {"loss_type": "kto"}},
            "preference.loss_type: 'kto' is not a dpo loss",
        ),
        ({"training": {"method": "kto", "batch_size": 1}}, "training.batch_size: kto's KL term needs at least 2"),
        ({"training": {"method": "dpo"}, "prompt": {"format": "text"}}, "training.method: dpo needs prompts"),
    ],
)
def test_preference_config_errors(section, message):
    with pytest.raises(ConfigError, match=message):
        build_config({"model": {"name": "tiny:llama-2l"}, "data": {"train": {"path": "x.jsonl"}}, **section})


def test_a_bare_json_call_convention_is_read_too(tokenizer):
    """Templates that write a call as a bare JSON object (Llama 3.1's `{"name": ..., "parameters": ...}`)."""
    import copy

    from tunelab.data.tools import check_tool_template, parse_tool_calls, tool_format

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (
        "{% if tools %}<|im_start|>system\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}<|im_end|>\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['tool_calls'] %}{% for c in m['tool_calls'] %}"
        "{\"name\": \"{{ c['function']['name'] }}\", \"parameters\": {{ c['function']['arguments'] | tojson }}}"
        "{% endfor %}{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    check_tool_template(tok)
    fmt = tool_format(tok)
    assert (fmt.opener, fmt.closer) == ("", "")
    text, calls = parse_tool_calls('{"name": "add", "parameters": {"a": 1, "b": 2}}', fmt)
    assert text == "" and calls[0]["function"] == {"name": "add", "arguments": '{"a": 1, "b": 2}'}
    assert parse_tool_calls('{"a": 1} is a dict', fmt) == ('{"a": 1} is a dict', [])
