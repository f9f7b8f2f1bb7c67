"""The OpenAI API shapes the server speaks: request models, the error body, response chunks.

Requests are validated strictly (a string where a number belongs is an error, as with OpenAI), and
every problem becomes a 4xx with `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import json
import re
import sys
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# Parameters this server does not implement: accepted only at their "off" values, else a 400 (a
# client asking for them must not silently get something else).
UNSUPPORTED_UNLESS = {
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "functions": (None, []),  # the legacy form of `tools`
    "function_call": (None, "none", "auto"),
    "parallel_tool_calls": (None, True),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "response_format": (None, {"type": "text"}),
}


class ApiError(Exception):
    """An error answered to the client in the OpenAI shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    user: str | None = None
    ignore_eos: bool = False  # vLLM's extension: keep generating past EOS up to max_tokens (benchmarks)

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise ApiError(400, "stop: at most 4 stop sequences", param="stop")
        return [s for s in stops if s]


class CompletionRequest(_Sampling):
    prompt: str | list[str]


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class CalledFunction(_Strict):
    name: str = Field(min_length=1)
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(_Strict):
    id: str | None = None
    type: Literal["function"] = "function"
    function: CalledFunction

    def for_template(self) -> dict[str, Any]:
        """The call as chat templates take it: arguments as a JSON object."""
        what = f"tool_calls: arguments of {self.function.name!r}"
        args = client_json(self.function.arguments, what, param="messages") if self.function.arguments.strip() else {}
        if not isinstance(args, dict):
            raise ApiError(
                400,
                f"tool_calls: arguments of {self.function.name!r} must be a JSON object",
                param="messages",
                code="invalid_value",
            )
        out = {"type": "function", "function": {"name": self.function.name, "arguments": args}}
        return {**out, "id": self.id} if self.id else out


class FunctionDef(_Strict):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(_Strict):
    type: Literal["function"]
    function: FunctionDef


class ChatMessage(_Strict):
    # validated in this order: `content` is checked against the role and the tool calls before it
    role: Literal["system", "developer", "user", "assistant", "tool"]
    tool_calls: list[ToolCall] | None = None
    content: str | list[TextPart] | None = Field(None, validate_default=True)
    name: str | None = None
    tool_call_id: str | None = None

    @field_validator("tool_calls")
    @classmethod
    def _calls_are_the_assistants(cls, v, info):
        if v and info.data.get("role") != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return v

    @field_validator("content", mode="after")
    @classmethod
    def _content_needed(cls, v, info):
        if v is None and not (info.data.get("role") == "assistant" and info.data.get("tool_calls")):
            raise ValueError("required (only an assistant message with tool_calls may leave it out)")
        return v

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def for_template(self) -> dict[str, Any]:
        """The message as the tokenizer's chat template takes it."""
        msg: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.tool_calls:
            msg["tool_calls"] = [c.for_template() for c in self.tool_calls]
        if self.tool_call_id:
            msg["tool_call_id"] = self.tool_call_id
        if self.name and self.role == "tool":
            msg["name"] = self.name
        return msg


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto"] | None = None  # "required" and a named function are not supported

    def tool_list(self) -> list[dict[str, Any]] | None:
        """The tools the model is told about (none when tool_choice is none)."""
        if not self.tools or self.tool_choice == "none":
            return None
        return [t.model_dump(exclude_none=True) for t in self.tools]


def parse_request(body: bytes, model: type[_Sampling]) -> Any:
    """The validated request, or an ApiError naming the first bad field (all of them in the message)."""
    data = client_json(body, "the request body")
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    _check_unicode(body, data)
    for key, allowed in UNSUPPORTED_UNLESS.items():
        if data.get(key) not in allowed:
            raise ApiError(400, f"{key}: not supported by this server", param=key, code="unsupported_parameter")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems, first = [], None
        for err in e.errors():
            # drop pydantic's union-member labels ('str', 'list[str]', ...) from the location
            loc = [
                str(p)
                for p in err["loc"]
                if not (isinstance(p, str) and (p in ("str", "int", "float", "bool") or "[" in p))
            ]
            param = ".".join(loc) or None
            first = first or param
            msg = "required" if err["type"] == "missing" else err["msg"]
            problems.append(f"{param}: {msg}" if param else msg)
        raise ApiError(400, "; ".join(dict.fromkeys(problems)), param=first, code="invalid_value") from None


def client_json(text: str | bytes, what: str, param: str | None = None) -> Any:
    """JSON a client sent (the body, or a JSON string inside it), or the 400 that says why it is not:
    not JSON, nested past Python's recursion limit, or an integer past its digit limit for int().
    A body's problems are `invalid_json`; a value's inside it, `invalid_value` naming `param`."""
    code = "invalid_json" if param is None else "invalid_value"
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        problem = f"is not valid JSON ({getattr(e, 'msg', None) or e})"
    except RecursionError:  # json's C scanner gives up past Python's recursion limit (~1000 levels)
        problem = "is nested too deeply"
    except ValueError:
        problem = f"holds an integer of more than {sys.get_int_max_str_digits():,} digits"
    raise ApiError(400, f"{what} {problem}", param=param, code=code)


def _check_unicode(body: bytes, data: Any) -> None:
    """A 400 for the first string (value or key) holding a lone surrogate.

    JSON's `\\ud800` escapes decode to one; it is not text, and tokenizers (and the UTF-8 encoding of
    a response quoting it) fail on it. Only such an escape can make one (raw bytes that are not UTF-8
    fail to parse), so bodies without one skip the walk; the walk is iterative, so a deep body
    cannot make it recurse.
    """
    if not _SURROGATE_ESCAPE.search(body):
        return
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            _check_text(path, value)
        elif isinstance(value, dict):
            for k, v in value.items():
                _check_text(path, k)
                stack.append((f"{path}.{k}" if path else k, v))
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), v) for i, v in enumerate(value))


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _check_text(path: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(
            400,
            f"{path or 'body'}: not valid Unicode (a lone surrogate {text[e.start]!r} at character {e.start})",
            param=path or None,
            code="invalid_value",
        ) from None


class StopTrimmer:
    """Streams text while holding back what could be the start of a stop sequence.

    `feed` returns the text that is safe to send; once a stop sequence appears, the text before
    it is returned and everything after is dropped.
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.buffer = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self.buffer += text
        cut = min((i for i in (self.buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.buffer, self.stopped = self.buffer[:cut], "", True
            return out
        hold = max(
            (
                k
                for s in self.stops
                for k in range(min(len(s) - 1, len(self.buffer)), 0, -1)
                if self.buffer.endswith(s[:k])
            ),
            default=0,
        )
        out = self.buffer[: len(self.buffer) - hold]
        self.buffer = self.buffer[len(self.buffer) - hold :]
        return out

    def flush(self) -> str:
        out, self.buffer = ("" if self.stopped else self.buffer), ""
        return out


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(obj: Any) -> str:
    """One server-sent event carrying a JSON object (or the literal [DONE])."""
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


def now() -> int:
    return int(time.time())
