"""Prompt formats: turn a validated row into text segments, each marked trainable or not.

The same functions render training examples (prompt + response) and inference prompts (the prompt
alone), so a tuned model is always asked in the format it was trained on.
"""

from __future__ import annotations

import string
from typing import Any

from tunelab.config.schema import PromptConfig
from tunelab.errors import ConfigError

# The Alpaca template, byte for byte as the tutorial (and the Stanford Alpaca repo) wrote it.
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)

Segments = list[tuple[str, bool]]  # (text, trainable)


def alpaca_prompt(instruction: str, input: str = "") -> str:
    tpl = ALPACA_WITH_INPUT if input else ALPACA_NO_INPUT
    return tpl.format(instruction=instruction, input=input)


def template_fields(template: str) -> list[str]:
    names = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    for n in names:
        if not n.isidentifier():
            raise ConfigError([f"prompt.template: placeholder {{{n}}} is not a plain field name"])
    return names


def required_fields(cfg: PromptConfig) -> list[str]:
    """Fields every row must have (as non-empty strings, except alpaca's optional `input`)."""
    if cfg.format == "alpaca":
        return ["instruction", "output"]
    if cfg.format == "text":
        return [cfg.text_field]
    if cfg.format == "messages":
        return ["messages"]
    return [*template_fields(cfg.template or ""), cfg.response_field]


def render_prompt(row: dict[str, Any], cfg: PromptConfig, tokenizer: Any = None) -> str:
    """The prompt alone (what a model is asked at inference), without the answer."""
    if cfg.format == "alpaca":
        return alpaca_prompt(row["instruction"], row.get("input") or "")
    if cfg.format == "custom":
        return (cfg.template or "").format(**row)
    if cfg.format == "messages":
        msgs = row["messages"]
        if msgs and msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]
        return apply_chat_template(tokenizer, msgs, add_generation_prompt=True, tools=row.get("tools"))
    return ""


def apply_chat_template(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict] | None = None, **kwargs: Any
) -> str:
    """The tokenizer's chat template rendered as text (`tools`: the function definitions, passed on
    only when there are some); a template that raises (its own `raise_exception`, or the sandbox
    refusing an escape) is a user error, not a traceback."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            [
                "prompt.format: messages needs a chat template and this tokenizer has none; name one with "
                "prompt.chat_template: chatml (hermes or llama3 also render tools, or a Jinja file)"
            ]
        )
    if tools:
        kwargs["tools"] = tools
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception as e:  # noqa: BLE001 - jinja2's TemplateError / SecurityError, or what the template raised
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(
            [f"prompt.format: the model's chat template failed on a conversation ({type(e).__name__}: {first})"]
        ) from None


def reference(row: dict[str, Any], cfg: PromptConfig) -> str:
    """The expected answer of a row."""
    if cfg.format == "alpaca":
        return row["output"]
    if cfg.format == "custom":
        return row[cfg.response_field]
    if cfg.format == "messages":
        last = row["messages"][-1]
        return last["content"] if last["role"] == "assistant" else ""
    return row[cfg.text_field]


def reference_in(row: dict[str, Any], cfg: PromptConfig, column: str | None = None) -> str:
    """The answer a row is scored against: `column`'s value when one is named (grpo.reference_column: training's
    rewards and `tunelab eval` of that run read the same column), else the row's answer; "" when it has none."""
    if column is None:
        return reference(row, cfg)
    value = row.get(column)
    return "" if value is None else str(value)


def render_segments(row: dict[str, Any], cfg: PromptConfig, tokenizer: Any = None) -> Segments:
    """A training example as segments; with train_on=all every segment is trainable."""
    if cfg.format == "text":
        segs: Segments = [(row[cfg.text_field], True)]
    elif cfg.format == "messages":
        segs = _chat_segments(row["messages"], tokenizer, row.get("tools"))
    else:
        segs = [(render_prompt(row, cfg), False), (reference(row, cfg), True)]
    if cfg.train_on == "all":
        segs = [(t, True) for t, _ in segs]
    return [(t, m) for t, m in segs if t]


def _chat_segments(messages: list[dict[str, Any]], tokenizer: Any, tools: list[dict] | None = None) -> Segments:
    """Every assistant turn (its text and its tool calls) is trainable; the rest (system, user, tool
    results, template glue) is not.

    Renders the conversation up to each assistant turn (with the generation prompt) and through it
    with the tokenizer's own chat template, and takes the differences, so any template works
    without generation markers. Only these boundaries need to render incrementally: templates that
    merge consecutive tool results into one turn (Qwen's) still split cleanly.
    """
    segs: Segments = []
    done = ""
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = apply_chat_template(tokenizer, messages[:i], tools, add_generation_prompt=True) if i else ""
        if before.startswith(done) and before != done:
            segs.append((before[len(done) :], False))
            done = before
        upto = apply_chat_template(tokenizer, messages[: i + 1], tools)
        if not upto.startswith(done):
            raise ConfigError(
                ["prompt.format: the tokenizer's chat template does not render conversations incrementally"]
            )
        segs.append((upto[len(done) :], True))
        done = upto
    if messages[-1]["role"] != "assistant":
        full = apply_chat_template(tokenizer, messages, tools)
        if not full.startswith(done):
            raise ConfigError(
                ["prompt.format: the tokenizer's chat template does not render conversations incrementally"]
            )
        segs.append((full[len(done) :], False))
    return segs
