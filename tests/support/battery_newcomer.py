"""Battery cases: a newcomer's public data (issue 21). Each refusal names the setting that fixes it;
LLaMA-Factory's preference and KTO files validate as they are."""

from __future__ import annotations

from pathlib import Path

from battery import Context, Outcome, case, expect

FIXTURES = Path(__file__).parent / "fixtures"


def _validate(
    ctx: Context, name: str, data: dict, text: str, rc: int = 2, verb: str = "validate", **sections
) -> Outcome:
    cfg = ctx.config(f"{name}.yaml", data={"test_size": None, **data}, **sections)
    return expect(ctx, [verb, str(cfg)], text, rc=rc)


@case("bad input")
def case_tool_rows_on_a_template_without_tools_name_the_setting(ctx):
    return _validate(
        ctx,
        "tools",
        {"train": {"path": str(FIXTURES / "sharegpt_tools.json")}},
        "set prompt.chat_template: hermes",
        verb="train",  # validate builds no tiny: model; train stops here, before any weights load
        prompt={"format": "messages"},
    )


@case("bad input")
def case_an_unknown_chat_template_name(ctx):
    return _validate(
        ctx,
        "chatlm",
        {"train": {"path": str(FIXTURES / "sharegpt_tools.json")}},
        "prompt.chat_template: 'chatlm' is neither a built-in template",
        verb="train",
        prompt={"format": "messages", "chat_template": "chatlm"},
    )


@case("bad input")
def case_trl_pairs_under_sft_say_which_method(ctx):
    return _validate(
        ctx,
        "trl",
        {"train": {"path": str(FIXTURES / "trl_pairs.jsonl")}},
        "under training.method sft: set training.method: dpo",
    )


@case("bad input")
def case_one_txt_document_with_a_test_size_says_how_to_cut_it(ctx):
    return _validate(
        ctx,
        "wiki",
        {"train": {"path": str(FIXTURES / "wiki_demo.txt")}, "test_size": 0.1},
        "set data.train.documents: lines",
        prompt={"format": "text"},
    )


@case("bad input")
def case_llama_factory_dpo_rows_validate(ctx):
    return _validate(
        ctx,
        "lf-dpo",
        {"train": {"path": str(FIXTURES / "lf_dpo_demo.json")}},
        "6 train rows",
        rc=0,
        prompt={"format": "messages"},
        training={"method": "dpo", "max_steps": 4, "batch_size": 2, "max_length": 128},
    )


@case("bad input")
def case_llama_factory_kto_rows_validate(ctx):
    return _validate(
        ctx,
        "lf-kto",
        {"train": {"path": str(FIXTURES / "lf_kto_demo.json")}},
        "6 train rows",
        rc=0,
        prompt={"format": "messages"},
        training={"method": "kto", "max_steps": 4, "batch_size": 2, "max_length": 128},
    )


@case("bad input")
def case_generate_file_reads_like_train_and_names_the_bad_row(ctx):
    prompts = ctx.path("prompts.json")
    prompts.write_text('[\n  {"instruction": "say hi"},\n  {"question": "no instruction"}\n]\n')
    return expect(
        ctx, ["generate", str(ctx.trained_run()), "--file", str(prompts)], "prompts.json:3: missing field 'instruction'"
    )
