"""The `tool_call` scorer: is the answer a valid call of a tool the row offered?

Calls are read with the server's parser (`tunelab.data.tools.parse_tool_calls`) in its
convention-free form, which finds a `{"name", "arguments"}` JSON object anywhere in the text, so a
Hermes `<tool_call>` block and a bare Llama 3.1 object both count. The row's `tools` field is the
OpenAI list of function definitions; each call's arguments must be valid under its tool's
`parameters` schema.
"""

from __future__ import annotations

import json
from typing import Any

from tunelab.data.tools import ToolFormat, parse_tool_calls
from tunelab.scoring.checks import schema_validator
from tunelab.scoring.registry import Kind, register

ANY_CONVENTION = ToolFormat(opener="", closer="", nested=False)


def offered_tools(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """name -> parameters schema of the functions in the row's `tools` list."""
    offered = {}
    for tool in row.get("tools") or ():
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            params = fn.get("parameters")
            offered[fn["name"]] = params if isinstance(params, dict) else {"type": "object"}
    return offered


def valid_call(call: dict[str, Any], offered: dict[str, dict[str, Any]]) -> bool:
    fn = call["function"]
    if fn["name"] not in offered:
        return False
    return schema_validator(offered[fn["name"]]).is_valid(json.loads(fn["arguments"]))


def tool_call_score(answer: str, row: dict[str, Any]) -> float | None:
    """1 when the answer makes at least one call and every call is valid; None when the row offers no tools."""
    offered = offered_tools(row)
    if not offered:
        return None
    _, calls = parse_tool_calls(answer, ANY_CONVENTION)
    return float(bool(calls) and all(valid_call(c, offered) for c in calls))


register(
    Kind(
        "tool_call",
        1,
        "1 when the answer calls a tool the row offers (its `tools` field) with arguments valid under its schema.",
        lambda p: lambda prompt, answer, reference, row: tool_call_score(answer, row),
    )
)
