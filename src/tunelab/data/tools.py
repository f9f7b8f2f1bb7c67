"""Tool calls through the tokenizer's own chat template: whether it can render them, and how a
model trained with it writes a call (so the server can read calls back out of generated text).

Both come from rendering one probe conversation: a user turn, an assistant turn that calls
`probe_fn` with one argument, the tool's result, all with a one-tool `tools` list. A template that
drops any of the three (the call, the result, the tool definition) cannot train or serve tools.
The text around the call's JSON in the rendered assistant turn is the template's convention
(Hermes / Qwen: `<tool_call>\\n{...}\\n</tool_call>`; Llama 3.1: the bare JSON object).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from tunelab.errors import ConfigError

PROBE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "probe_fn",
            "description": "probe-tool-description",
            "parameters": {
                "type": "object",
                "properties": {"probe_arg": {"type": "integer"}},
                "required": ["probe_arg"],
            },
        },
    }
]
PROBE_CALL = {"type": "function", "function": {"name": "probe_fn", "arguments": {"probe_arg": 7}}}
_USER = {"role": "user", "content": "probe-question"}


def _render(tokenizer: Any, messages: list[dict], **kwargs) -> str:
    from tunelab.data.templates import apply_chat_template

    return apply_chat_template(tokenizer, messages, PROBE_TOOLS, **kwargs)


def check_tool_template(tokenizer: Any, name: str = "the model", field: str = "model.name") -> None:
    """ConfigError unless the chat template renders a tool definition, a tool call and a tool result
    (`field`, `name`: the config field that chose the template and what it names)."""
    text = _render(
        tokenizer,
        [
            _USER,
            {"role": "assistant", "content": "", "tool_calls": [PROBE_CALL]},
            {"role": "tool", "content": "probe-result-31"},
        ],
    )
    listed = "probe-tool-description" in text
    missing = [
        what
        for what, ok in (
            ("the tools list", listed),
            ("the tool call", text.count("probe_fn") >= (2 if listed else 1)),
            ("the tool result", "probe-result-31" in text),
        )
        if not ok
    ]
    if missing:
        raise ConfigError(
            [
                f"{field}: the chat template of {name} cannot render tool calls (a probe conversation "
                f"lost {', '.join(missing)}); set prompt.chat_template: hermes (or llama3, or a Jinja file "
                "that takes tools=), use a model whose template does (Qwen2.5, Llama 3.1, Hermes, Mistral; "
                "offline: tiny:tools-2l), or drop the tool_calls and tools fields"
            ]
        )


def check_run_tools(cfg: Any, tokenizer: Any, *splits: list[dict[str, Any]]) -> None:
    """A run's chat template must render tools when any of its rows hold some (ConfigError naming the
    field that chose the template: prompt.chat_template, else model.name)."""
    if cfg.prompt.format != "messages" or not any(needs_tools(rows) for rows in splits):
        return
    chosen = cfg.prompt.chat_template
    check_tool_template(tokenizer, chosen or cfg.model.name, "prompt.chat_template" if chosen else "model.name")


def needs_tools(rows: list[dict[str, Any]]) -> bool:
    return any(
        r.get("tools") or any(isinstance(m, dict) and m.get("tool_calls") for m in r.get("messages") or ())
        for r in rows
    )


@dataclass(frozen=True)
class ToolFormat:
    """How the template writes one call: `opener` + JSON object + `closer` (either may be empty)."""

    opener: str
    closer: str
    nested: bool  # the JSON is {"type": "function", "function": {...}} rather than {"name", "arguments"}


def tool_format(tokenizer: Any) -> ToolFormat:
    """The call convention of the tokenizer's chat template, read off a rendered probe call."""
    prompt = _render(tokenizer, [_USER], add_generation_prompt=True)
    called = _render(tokenizer, [_USER, {"role": "assistant", "content": "", "tool_calls": [PROBE_CALL]}])
    said = _render(tokenizer, [_USER, {"role": "assistant", "content": "probe-text"}])
    if not called.startswith(prompt) or not said.startswith(prompt) or "probe-text" not in said:
        raise ConfigError(
            ["model.name: the chat template does not render an assistant turn after its generation prompt"]
        )
    turn = called[len(prompt) :]
    end = said[len(prompt) :].split("probe-text", 1)[1]  # what closes an assistant turn
    if end and turn.endswith(end):
        turn = turn[: len(turn) - len(end)]
    start, stop, nested = _find_call(turn)
    return ToolFormat(turn[:start], turn[stop:], nested)


def _find_call(text: str) -> tuple[int, int, bool]:
    """(start, end, nested) of the outermost JSON object in `text` that holds the probe call."""
    dec = json.JSONDecoder()
    best = None
    for i, ch in enumerate(text):
        if ch != "{":
            continue
        try:
            obj, end = dec.raw_decode(text, i)
        except (ValueError, RecursionError):  # JSONDecodeError, or a number / nesting past Python's limits
            continue
        if isinstance(obj, dict) and _call_of(obj) is not None and (best is None or end - i > best[1] - best[0]):
            best = (i, end, "function" in obj)
    if best is None:
        raise ConfigError(
            [
                "model.name: the chat template writes tool calls in a form tunelab cannot read back "
                "(no JSON object with the call's name and arguments)"
            ]
        )
    return best


def _call_of(obj: dict) -> tuple[str, dict] | None:
    fn = obj.get("function", obj)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        return None
    args = fn.get("arguments", fn.get("parameters"))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            return None
    return (fn["name"], args) if isinstance(args, dict) else None


def parse_tool_calls(text: str, fmt: ToolFormat) -> tuple[str, list[dict[str, Any]]]:
    """(the text outside calls, the calls in OpenAI's response shape) of a generated answer.

    A call is `opener`, a JSON object with a name and arguments, and `closer` (whitespace around them
    is not significant). Text that does not parse stays text: the client sees what the model wrote.
    """
    dec = json.JSONDecoder()
    opener, closer = fmt.opener.strip(), fmt.closer.strip()
    calls, kept, pos = [], [], 0
    while pos < len(text):
        at = text.find(opener, pos) if opener else _next_brace(text, pos)
        if at < 0:
            break
        body = at + len(opener)
        while body < len(text) and text[body].isspace():
            body += 1
        try:
            obj, end = dec.raw_decode(text, body)
        except (ValueError, RecursionError):
            obj, end = None, body
        call = _call_of(obj) if isinstance(obj, dict) else None
        if call is None:  # not a call: keep the text and look further on
            step = at + max(len(opener), 1)
            kept.append(text[pos:step])
            pos = step
            continue
        tail = end
        while tail < len(text) and text[tail].isspace():
            tail += 1
        if closer and text.startswith(closer, tail):
            tail += len(closer)
        kept.append(text[pos:at])
        calls.append(
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": call[0], "arguments": json.dumps(call[1], ensure_ascii=False)},
            }
        )
        pos = tail
    kept.append(text[pos:])
    return "".join(kept).strip(), calls


def _next_brace(text: str, pos: int) -> int:
    return text.find("{", pos)
