"""Row validation: required fields present, of the right type, not empty; rows of another shape
(ShareGPT, Alpaca under a chat format) converted; preference rows checked for their answers."""

from __future__ import annotations

from typing import Any

from tunelab.config.schema import PromptConfig, ShareGPTConfig, SourceConfig
from tunelab.data.conversations import (  # noqa: F401 (ROLES: imported from here too)
    ROLES,
    RowProblem,
    from_alpaca,
    from_sharegpt,
    is_sharegpt,
    normalize_messages,
    sharegpt_preference,
)
from tunelab.data.sources import RawRows, _bad
from tunelab.data.templates import required_fields


def _bad_text(value: Any, where: str) -> str | None:
    """The first place in `value` holding a string that is not valid Unicode (a lone surrogate from a
    `\\ud800` escape: no tokenizer can encode it), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where
        return None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        found = _bad_text(v, f"{where}[{k!r}]" if isinstance(k, str) else f"{where}[{k}]")
        if found:
            return found
    return None


def check_row(
    row: dict[str, Any],
    cfg: PromptConfig,
    shape: SourceConfig | None = None,
    method: str = "sft",
    prompt_only: bool = False,
) -> dict[str, Any]:
    """The row, converted to the prompt format's shape and normalised, or RowProblem.

    `shape` is the source it came from (its `format` and ShareGPT keys); `method` a preference
    method when the rows are pairs (or KTO completions) rather than single answers; `prompt_only`:
    the row is a question to answer (generate --file), so it needs no answer of its own."""
    for key, value in row.items():
        bad = _bad_text(value, str(key))
        if bad:
            raise RowProblem(f"field {bad} holds invalid Unicode (a lone surrogate such as \\ud800)", "invalid_unicode")
    fmt = shape.format if shape is not None else "auto"
    answered = method == "sft" and not prompt_only
    if cfg.format == "messages":
        sg = shape.sharegpt if shape is not None else ShareGPTConfig()
        if fmt == "sharegpt" or (fmt == "auto" and is_sharegpt(row, sg)):
            row = from_sharegpt(row, sg, answered) if method == "sft" else sharegpt_preference(row, sg)
        elif fmt == "alpaca":
            row = from_alpaca(row) if method == "sft" else _alpaca_prompt(row)
    row = _trl_pair_as_alpaca(row, cfg, method, prompt_only)
    answer = "output" if cfg.format == "alpaca" else cfg.response_field if cfg.format == "custom" else None
    for name in required_fields(cfg):
        if not answered and name == answer:
            continue  # preference rows hold their answers as chosen / rejected (or completion); prompts none
        if method != "sft" and name == "messages":
            continue
        if name not in row or row[name] is None:
            chat = cfg.format == "alpaca" and ("conversations" in row or "messages" in row)
            raise RowProblem(
                f"missing field {name!r}" + (" (a chat row: set prompt.format: messages)" if chat else ""),
                f"missing_{name}",
                hint=SHAPE_HINT if chat else None,
            )
        if name == "messages":
            msgs, tools = normalize_messages(row["messages"], row.get("tools"), answered=answered)
            row = {**row, "messages": msgs}
            if tools:
                row["tools"] = tools
            else:
                row.pop("tools", None)
            continue
        if not isinstance(row[name], str):
            raise RowProblem(f"field {name!r} should be a string, got {type(row[name]).__name__}", f"bad_type_{name}")
        if not row[name].strip():
            raise RowProblem("empty output" if name == answer else f"empty field {name!r}", f"empty_{name}")
    if cfg.format == "alpaca" and row.get("input") is not None and not isinstance(row["input"], str):
        raise RowProblem(f"field 'input' should be a string, got {type(row['input']).__name__}", "bad_type_input")
    if method != "sft":
        from tunelab.data.preference_rows import preference_row

        row = preference_row(row, cfg, method)
    if cfg.format == "alpaca":
        row = {**row, "input": row.get("input") or ""}
    return row


# A whole file of another row shape: skipping its rows (data.on_bad_row: skip) would skip them all.
SHAPE_HINT = "a file of chat rows needs prompt.format: messages (skipping such rows would skip them all)"


def _trl_pair_as_alpaca(row: dict[str, Any], cfg: PromptConfig, method: str, prompt_only: bool) -> dict[str, Any]:
    """TRL's preference rows ({prompt, chosen, rejected}, or {prompt, completion, label}; a prompt file's
    bare {prompt}) under the Alpaca format: a text prompt is the instruction; a chat prompt, or pairs
    under sft, say what to set."""
    answers = [k for k in ("chosen", "rejected", "completion") if k in row]
    if cfg.format != "alpaca" or "instruction" in row or "prompt" not in row or not (answers or prompt_only):
        return row
    shape = f"a preference row ({', '.join(['prompt', *answers])})"
    pairs = "training.method: dpo (kto for completion + label)"
    if not isinstance(row["prompt"], str):
        raise RowProblem(
            f"{shape} whose prompt is a conversation: set prompt.format: messages",
            "chat_preference_row",
            hint=f"and {pairs} to learn from the pairs" if method == "sft" else SHAPE_HINT,
        )
    if method == "sft" and not prompt_only:
        raise RowProblem(
            f"{shape} under training.method sft: set {pairs} to learn from the pairs",
            "preference_row",
            hint="or data.field_map: {prompt: instruction, chosen: output} to fine-tune on the chosen answers",
        )
    return {"instruction": row["prompt"], **{k: v for k, v in row.items() if k != "prompt"}}


def _alpaca_prompt(row: dict[str, Any]) -> dict[str, Any]:
    """An Alpaca preference row's instruction (and input) as a chat prompt."""
    inst, inp = row.get("instruction"), row.get("input") or ""
    if not isinstance(inst, str) or not inst.strip():
        raise RowProblem("missing field 'instruction'", "missing_instruction")
    rest = {k: v for k, v in row.items() if k not in ("instruction", "input")}
    return {**rest, "prompt": f"{inst}\n\n{inp}" if isinstance(inp, str) and inp else inst}


def check_field_map(raw: RawRows, field_map: dict[str, str], source: str) -> None:
    """Every `data.field_map` key must be a field of some row: a misspelt one would rename nothing."""
    if not field_map or not raw.rows:
        return
    seen: set[str] = set()
    for row in raw.rows:
        seen.update(row)
    unused = [k for k in field_map if k not in seen]
    if unused:
        from tunelab.errors import DataError

        fields = ", ".join(sorted(seen)[:20])
        raise DataError(
            f"data.field_map: {', '.join(repr(k) for k in unused)} matches no field of any row in {source} "
            f"(its fields: {fields})"
        )


def validate_rows(
    raw: RawRows,
    cfg: PromptConfig,
    field_map: dict[str, str],
    on_bad_row: str,
    source: str = "the data",
    shape: SourceConfig | None = None,
    method: str = "sft",
    prompt_only: bool = False,
) -> RawRows:
    """Rename fields, check (and convert) each row, and keep the good ones (or stop at the first bad one).

    ShareGPT rows read under prompt.format messages with format auto are detected and converted;
    the result's `notes` says so in one line."""
    check_field_map(raw, field_map, source)
    out = RawRows(skipped=raw.skipped.copy(), fingerprint=raw.fingerprint, empty=list(raw.empty))
    sg = shape.sharegpt if shape is not None else ShareGPTConfig()
    detect = cfg.format == "messages" and (shape is None or shape.format == "auto")
    detected = 0
    for row, where in zip(raw.rows, raw.where, strict=True):
        if field_map:
            row = {field_map.get(k, k): v for k, v in row.items()}
        if detect and is_sharegpt(row, sg):
            detected += 1
        try:
            row = check_row(row, cfg, shape, method, prompt_only)
        except RowProblem as e:
            _bad(f"{where}: {e.message}", e.reason, out, on_bad_row, e.hint)
            continue
        out.add(row, where)
    if detected:
        out.notes.append(
            f"{source}: {detected} ShareGPT rows ({sg.conversations} of {sg.role} / {sg.content} turns) "
            "read as chat messages"
        )
    return out
