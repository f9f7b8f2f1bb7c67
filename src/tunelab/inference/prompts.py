"""Inference prompts in the format a model was trained on: from an instruction, a data row or a chat.

Everything goes through `tunelab.data.templates.render_prompt`, the function that rendered the
training examples, so generate, chat and serve ask the question the way training did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.config.schema import PromptConfig
from tunelab.data.templates import render_prompt, template_fields
from tunelab.errors import DataError, TunelabError


def instruction_row(instruction: str, input: str, cfg: PromptConfig) -> dict[str, Any]:
    """A data row asking `instruction` (with optional `input`) in the run's format."""
    if cfg.format == "alpaca":
        return {"instruction": instruction, "input": input}
    if cfg.format == "messages":
        content = f"{instruction}\n\n{input}" if input else instruction
        return {"messages": [{"role": "user", "content": content}]}
    if cfg.format == "text":
        return {cfg.text_field: f"{instruction}\n{input}" if input else instruction}
    fields = template_fields(cfg.template or "")
    if "instruction" in fields or len(fields) == 1:
        row = {f: "" for f in fields}
        row["instruction" if "instruction" in fields else fields[0]] = instruction
        if input:
            if "input" not in fields:
                raise TunelabError(
                    "--input: the run's prompt template has no {input} field", hint=f"its fields: {', '.join(fields)}"
                )
            row["input"] = input
        return row
    raise TunelabError(
        f"the run's prompt template needs the fields {', '.join(fields)}; one instruction cannot fill them",
        hint="put one JSON object per line with those fields in a file and pass it with --file",
    )


def prompt_text(row: dict[str, Any], cfg: PromptConfig, tokenizer: Any) -> str:
    """The rendered prompt for a row; `text`-format models continue the row's text as it is."""
    if cfg.format == "text":
        return row[cfg.text_field]
    return render_prompt(row, cfg, tokenizer)


def read_prompt_rows(path: Path, cfg: PromptConfig) -> list[dict[str, Any]]:
    """Rows of a prompts file, read and checked by the reader `train` and `eval --data` use (the same
    row shapes: ShareGPT, OpenAI messages with `tools` as a list or its JSON text, Alpaca), except that
    a prompt needs no answer. JSON Lines, or .json / .csv / .parquet by the file's suffix; `file:line` errors."""
    return read_prompt_file(path, cfg)[0]


def read_prompt_file(path: Path, cfg: PromptConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`read_prompt_rows`, and each row as the file wrote it (what `generate --file` writes back beside
    its answer: the user's own row, not tunelab's normalised form)."""
    if path.is_dir():
        raise DataError(f"{path}: a folder; --file takes one prompts file (JSONL, .json, .csv or .parquet)")
    if not path.is_file():
        raise DataError(f"{path}: prompts file not found")
    from tunelab.config.schema import SourceConfig
    from tunelab.data.sources import BAD_ROW_HINT, RawRows, read_jsonl, read_source
    from tunelab.data.validate import validate_rows

    try:
        if path.suffix in (".json", ".csv", ".parquet"):
            raw = read_source(SourceConfig(path=str(path)), "error")
        else:
            raw = RawRows()
            read_jsonl(path, raw, on_bad_row="error")
        valid = validate_rows(raw, cfg, {}, "error", str(path), prompt_only=True)
    except DataError as e:
        if e.hint != BAD_ROW_HINT:
            raise
        raise DataError(e.message) from None  # data.on_bad_row is a training setting; here the row is to fix
    if not valid.rows:
        raise DataError(f"{path}: no prompts in the file")
    written = dict(zip(raw.where, raw.rows, strict=True))
    return valid.rows, [written[w] for w in valid.where]


def chat_prompt(
    messages: list[dict[str, Any]], cfg: PromptConfig | None, tokenizer: Any, tools: list[dict] | None = None
) -> str:
    """The prompt for a conversation (and the tools it may call).

    Models trained on `messages` and base models (cfg None) get the tokenizer's chat template over
    the whole conversation, with `tools` as the template takes them. Models trained on single
    instructions (alpaca, custom, text) never saw a conversation: the last user message is asked
    through their template on its own, and they take no tools.
    """
    if cfg is None or cfg.format == "messages":
        if not getattr(tokenizer, "chat_template", None):
            raise TunelabError(
                "the model's tokenizer has no chat template", hint="send raw text to the completions endpoint instead"
            )
        if tools:
            from tunelab.data.tools import check_tool_template

            _first_problem(check_tool_template, tokenizer)
        from tunelab.data.templates import apply_chat_template

        return _first_problem(apply_chat_template, tokenizer, messages, tools, add_generation_prompt=True)
    if tools:
        raise TunelabError(
            f"tools: this model was trained on {cfg.format} prompts, which hold no tools; only chat "
            "(prompt.format messages) models take them"
        )
    if not messages or messages[-1]["role"] != "user":
        raise TunelabError("the last message must be the user's")
    return prompt_text(instruction_row(messages[-1]["content"], "", cfg), cfg, tokenizer)


def _first_problem(fn, *args, **kwargs):
    """`fn(...)`, with a ConfigError from the templates turned into its one-line problem."""
    from tunelab.errors import ConfigError

    try:
        return fn(*args, **kwargs)
    except ConfigError as e:
        raise TunelabError(e.problems[0].removeprefix("prompt.format: ").removeprefix("model.name: ")) from None
