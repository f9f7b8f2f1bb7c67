"""Conversation rows in the shape the tokenizer's chat template takes: OpenAI-style `messages` (with
assistant `tool_calls`, `tool` results and a row-level `tools` list), converted from ShareGPT rows
(`conversations` of `from` / `value` turns) and from Alpaca rows when a mixture renders them as chat.

Every function returns a new, normalised row or raises `RowProblem` (message, reason), which
validation turns into a `file:line` error or a counted skip.
"""

from __future__ import annotations

import json
from typing import Any

from tunelab.config.schema import ShareGPTConfig

ROLES = ("system", "user", "assistant", "tool")
# JSON that parses as syntax but not as Python values: an integer past int()'s digit limit, or nesting
# deeper than the recursion limit
UNREADABLE_JSON = "JSON holding a number too long or nesting too deep to read"


class RowProblem(Exception):
    """A row tunelab cannot use: what is wrong, the reason it is counted under, and (when skipping such
    rows would skip them all, as for a whole file of another shape) what to set instead."""

    def __init__(self, message: str, reason: str, hint: str | None = None):
        super().__init__(message)
        self.message, self.reason, self.hint = message, reason, hint


def normalize_messages(
    msgs: Any, tools: Any = None, field: str = "messages", answered: bool = True
) -> tuple[list[dict], list[dict] | None]:
    """Checked copies of a conversation and its tools list: tool-call arguments as JSON objects (not
    strings), every tool definition in the OpenAI shape {type: function, function: {...}}.
    `answered`: the conversation must hold an assistant turn to learn from (not so for a prompt)."""
    if not isinstance(msgs, list) or not msgs:
        raise RowProblem(f"field {field!r} should be a non-empty list of {{role, content}}", "bad_messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise RowProblem(
                f"{field}[{i}] should be {{role: system|user|assistant|tool, content: str}}", "bad_messages"
            )
        m = dict(m)
        if m.get("tool_calls"):
            if m["role"] != "assistant":
                raise RowProblem(f"{field}[{i}].tool_calls: only assistant turns call tools", "bad_tool_calls")
            m["tool_calls"] = [
                _tool_call(c, f"{field}[{i}].tool_calls[{j}]") for j, c in enumerate(_as_list(m["tool_calls"]))
            ]
            if m.get("content") is None:
                m["content"] = ""
        else:
            m.pop("tool_calls", None)
        if not isinstance(m.get("content"), str):
            raise RowProblem(
                f"{field}[{i}].content should be a string, got {type(m.get('content')).__name__}", "bad_messages"
            )
        out.append(m)
    if answered and not any(m["role"] == "assistant" and (m["content"].strip() or m.get("tool_calls")) for m in out):
        raise RowProblem("conversation has no assistant turn to learn from", "no_assistant_turn")
    return out, normalize_tools(tools)


def normalize_tools(tools: Any, field: str = "tools") -> list[dict] | None:
    """A tools list (or its JSON text) as OpenAI function definitions; None when there is none."""
    if tools is None or tools == "" or tools == []:
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            raise RowProblem(f"field {field!r}: not valid JSON ({e.msg})", "bad_tools") from None
        except (ValueError, RecursionError):
            raise RowProblem(f"field {field!r}: {UNREADABLE_JSON}", "bad_tools") from None
    if not isinstance(tools, list):
        raise RowProblem(f"field {field!r} should be a list of tool definitions", "bad_tools")
    out = []
    for i, t in enumerate(tools):
        fn = t.get("function", t) if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise RowProblem(f"{field}[{i}] should be a function definition with a name", "bad_tools")
        out.append({"type": "function", "function": fn})
    return out


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _tool_call(call: Any, where: str) -> dict:
    """{type: function, function: {name, arguments: dict}} from the OpenAI shape or a flat {name, arguments}."""
    fn = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise RowProblem(f"{where} should be {{function: {{name, arguments}}}}", "bad_tool_calls")
    args = fn.get("arguments", fn.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise RowProblem(f"{where}.arguments: not valid JSON ({e.msg})", "bad_tool_calls") from None
        except (ValueError, RecursionError):
            raise RowProblem(f"{where}.arguments: {UNREADABLE_JSON}", "bad_tool_calls") from None
    if not isinstance(args, dict):
        raise RowProblem(f"{where}.arguments should be a JSON object", "bad_tool_calls")
    out = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
    if isinstance(call, dict) and call.get("id"):
        out["id"] = call["id"]
    return out


def is_sharegpt(row: dict[str, Any], sg: ShareGPTConfig) -> bool:
    """A row that holds ShareGPT turns and no OpenAI `messages`."""
    turns = row.get(sg.conversations)
    return (
        "messages" not in row
        and isinstance(turns, list)
        and bool(turns)
        and isinstance(turns[0], dict)
        and sg.role in turns[0]
    )


def from_sharegpt(row: dict[str, Any], sg: ShareGPTConfig, answered: bool = True) -> dict[str, Any]:
    """A ShareGPT row as {messages, tools}: function_call turns become assistant tool calls (consecutive
    ones one turn with several calls), observation turns tool results, the system field a system turn.
    `answered` False: a prompt, which need not hold an assistant turn yet."""
    turns = row.get(sg.conversations)
    if not isinstance(turns, list) or not turns:
        raise RowProblem(
            f"field {sg.conversations!r} should be a non-empty list of turns", f"missing_{sg.conversations}"
        )
    msgs: list[dict[str, Any]] = []
    system = row.get(sg.system)
    if system is not None and not isinstance(system, str):
        raise RowProblem(f"field {sg.system!r} should be a string, got {type(system).__name__}", "bad_sharegpt")
    if system and system.strip():
        msgs.append({"role": "system", "content": system})
    _add_turns(msgs, turns, sg, sg.conversations)
    out = {k: v for k, v in row.items() if k not in (sg.conversations, sg.system, sg.tools)}
    out["messages"], tools = normalize_messages(msgs, row.get(sg.tools), sg.conversations, answered)
    if tools:
        out["tools"] = tools
    return out


def sharegpt_preference(row: dict[str, Any], sg: ShareGPTConfig) -> dict[str, Any]:
    """A ShareGPT preference row (LLaMA-Factory's: `conversations` the prompt, `chosen` / `rejected`
    one `{from, value}` turn each, or a list of them) with OpenAI-shaped `prompt` and answers."""
    out = from_sharegpt(row, sg, answered=False)
    out["prompt"] = out.pop("messages")
    for name in ("chosen", "rejected", "completion"):
        value = row.get(name)
        if isinstance(value, dict | list):
            answer: list[dict[str, Any]] = []
            _add_turns(answer, _as_list(value), sg, name)
            out[name] = answer[0] if isinstance(value, dict) and len(answer) == 1 else answer
    return out


def _add_turns(msgs: list[dict[str, Any]], turns: list, sg: ShareGPTConfig, field: str) -> None:
    """ShareGPT turns appended to `msgs` as OpenAI messages (a function call joins the assistant's call turn)."""
    roles = sg.role_map()
    for i, turn in enumerate(turns):
        where = f"{field}[{i}]" if len(turns) > 1 or field == sg.conversations else field
        if not isinstance(turn, dict):
            raise RowProblem(f"{where} should be an object with {sg.role!r} and {sg.content!r}", "bad_sharegpt")
        name, value = turn.get(sg.role), turn.get(sg.content)
        if name not in roles:
            known = ", ".join(sorted(roles))
            raise RowProblem(
                f"{where}.{sg.role}: unknown role {name!r} (known: {known}; add yours under data.train.sharegpt.roles)",
                "unknown_role",
            )
        if not isinstance(value, str):
            raise RowProblem(f"{where}.{sg.content} should be a string, got {type(value).__name__}", "bad_sharegpt")
        role = roles[name]
        if role == "tool_call":
            try:
                calls = json.loads(value)
            except json.JSONDecodeError as e:
                raise RowProblem(
                    f"{where}.{sg.content}: a function call that is not valid JSON ({e.msg})", "bad_tool_calls"
                ) from None
            except (ValueError, RecursionError):
                raise RowProblem(f"{where}.{sg.content}: {UNREADABLE_JSON}", "bad_tool_calls") from None
            calls = [_tool_call(c, f"{where}.{sg.content}") for c in _as_list(calls)]
            if msgs and msgs[-1]["role"] == "assistant" and msgs[-1].get("tool_calls"):
                msgs[-1]["tool_calls"] += calls
            else:
                msgs.append({"role": "assistant", "content": "", "tool_calls": calls})
        elif role == "system" and not msgs:
            msgs.append({"role": "system", "content": value})
        else:
            msgs.append({"role": role, "content": value})


def from_alpaca(row: dict[str, Any]) -> dict[str, Any]:
    """An Alpaca row as a two-turn chat: instruction (and input) from the user, output from the assistant."""
    inst, inp, output = row.get("instruction"), row.get("input") or "", row.get("output")
    for name, value in (("instruction", inst), ("output", output)):
        if not isinstance(value, str) or not value.strip():
            raise RowProblem(
                f"missing field {name!r}" if value is None else f"field {name!r} should be a non-empty string",
                f"missing_{name}",
            )
    user = f"{inst}\n\n{inp}" if isinstance(inp, str) and inp else inst
    rest = {k: v for k, v in row.items() if k not in ("instruction", "input", "output")}
    return {**rest, "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": output}]}
