"""Row validation: required fields present, of the right type, not empty."""

from __future__ import annotations

from typing import Any

from tunelab.config.schema import PromptConfig
from tunelab.data.sources import RawRows, _bad
from tunelab.data.templates import required_fields

ROLES = {"system", "user", "assistant", "tool"}


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


def row_problem(row: dict[str, Any], cfg: PromptConfig) -> tuple[str, str] | None:
    """(message, reason) for the first problem of a row, or None when it is usable."""
    for key, value in row.items():
        bad = _bad_text(value, str(key))
        if bad:
            return f"field {bad} holds invalid Unicode (a lone surrogate such as \\ud800)", "invalid_unicode"
    for name in required_fields(cfg):
        if name not in row or row[name] is None:
            return f"missing field {name!r}", f"missing_{name}"
        if name == "messages":
            return _messages_problem(row[name])
        if not isinstance(row[name], str):
            return f"field {name!r} should be a string, got {type(row[name]).__name__}", f"bad_type_{name}"
        if not row[name].strip():
            what = "empty output" if name in ("output", cfg.response_field) else f"empty field {name!r}"
            return what, f"empty_{name}"
    if cfg.format == "alpaca" and row.get("input") is not None and not isinstance(row["input"], str):
        return f"field 'input' should be a string, got {type(row['input']).__name__}", "bad_type_input"
    return None


def _messages_problem(msgs: Any) -> tuple[str, str] | None:
    if not isinstance(msgs, list) or not msgs:
        return "field 'messages' should be a non-empty list of {role, content}", "bad_messages"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            return f"messages[{i}] should be {{role: system|user|assistant|tool, content: str}}", "bad_messages"
    if not any(m["role"] == "assistant" and m["content"].strip() for m in msgs):
        return "conversation has no assistant turn to learn from", "no_assistant_turn"
    return None


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
        raise DataError(f"data.field_map: {', '.join(repr(k) for k in unused)} matches no field of any row in {source} "
                        f"(its fields: {fields})")


def validate_rows(raw: RawRows, cfg: PromptConfig, field_map: dict[str, str], on_bad_row: str, source: str = "the data") -> RawRows:
    """Rename fields, check each row, and keep the good ones (or stop at the first bad one)."""
    check_field_map(raw, field_map, source)
    out = RawRows(skipped=raw.skipped.copy(), fingerprint=raw.fingerprint, empty=list(raw.empty))
    for row, where in zip(raw.rows, raw.where, strict=True):
        if field_map:
            row = {field_map.get(k, k): v for k, v in row.items()}
        problem = row_problem(row, cfg)
        if problem:
            _bad(f"{where}: {problem[0]}", problem[1], out, on_bad_row)
            continue
        if cfg.format == "alpaca":
            row = {**row, "input": row.get("input") or ""}
        out.add(row, where)
    return out
