"""Battery cases for hostile requests to `tunelab serve`: bodies that are not JSON or not objects, wrong
content types, missing or mistyped fields, numbers out of range, unknown model ids, empty or badly shaped
messages, prompts past the context, unknown routes and methods.

One server (the real CLI, on the trained run, bound to 127.0.0.1) is started by the first case and
reused; the last case stops it with SIGTERM, as a scheduler would, and checks that it exits cleanly.
Each request is one bounded call (30 s). A case is clean when the answer is the expected 4xx with an
OpenAI-style error naming the problem, the server logged no traceback, and `/health` still answers.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from battery import CASES, Context, Outcome, Skip, case

MODEL = "trained"  # the run's model id
_SERVER: dict = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop() -> int | None:
    """SIGTERM the server and wait for it; its exit code (None if it had to be killed)."""
    proc = _SERVER.pop("proc", None)
    if proc is None:
        return None
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None
    finally:
        _SERVER["log_file"].close()


def _server(ctx: Context) -> str:
    """The base URL of the one server, started on first use."""
    proc = _SERVER.get("proc")
    if proc is not None and proc.poll() is None:
        return _SERVER["url"]
    from tunelab.procs import child_env

    port = _free_port()
    log = ctx.tmp / "serve.log"
    _SERVER["log"], _SERVER["seen"] = log, 0
    _SERVER["log_file"] = log_file = open(log, "w")  # noqa: SIM115 - open for the server's whole life
    args = [sys.executable, "-m", "tunelab.cli.main", "serve", str(ctx.trained_run()), "--port", str(port)]
    _SERVER["proc"] = proc = subprocess.Popen(
        [*args, "--max-tokens-limit", "64", "--max-batch", "2", "--max-body-mb", "1"],
        cwd=ctx.tmp,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=child_env({**os.environ, **ctx.env, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}),
    )
    atexit.register(_stop)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    _SERVER["url"] = url
                    return url
        except OSError:
            time.sleep(0.3)
    _stop()
    raise Skip(f"the server did not start: {log.read_text()[-300:]}")


def _new_log() -> str:
    text = Path(_SERVER["log"]).read_text(errors="replace")
    new, _SERVER["seen"] = text[_SERVER["seen"] :], len(text)
    return new


def _request(
    url: str,
    path: str,
    body: bytes | None,
    content_type: str = "application/json",
    method: str = "POST",
    declared: int | None = None,
) -> tuple[int | None, str, bool]:
    """(status, body, timed out) of one request; `declared`: a Content-Length announced but never sent
    (the server must answer from the headers alone)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest(method, path)
        conn.putheader("content-type", content_type)
        conn.putheader("content-length", str(declared if declared is not None else len(body or b"")))
        conn.endheaders()
        if body and declared is None:
            conn.send(body)
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace"), False
    except TimeoutError:
        return None, "", True
    except (ConnectionError, http.client.HTTPException) as e:
        return None, f"no answer: {e!r}", False
    finally:
        conn.close()


def _answered(ctx: Context, path: str, body: bytes | dict | None, status: int, text: str, **kw) -> Outcome:
    """The server answers `status` with an error holding `text`, logs no traceback and stays healthy."""
    url = _server(ctx)
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    code, answer, hung = _request(url, path, raw, **kw)
    o = Outcome(code, answer + "\n" + _new_log(), text, status, timed_out=hung)
    if not hung and status >= 400:
        try:
            error = json.loads(answer)["error"]
            if not {"message", "type"} <= set(error):
                o.expect = "an OpenAI-style error object"
        except (ValueError, KeyError, TypeError):
            o.expect = "an OpenAI-style error object"
    health, _, _ = _request(url, "/health", None, method="GET")
    if health != 200:
        o.lost = f"/health answered {health} after the request: the server is down"
    return o


def _completion(**fields) -> dict:
    return {"model": MODEL, "prompt": "hi", "max_tokens": 2, **fields}


def _chat(messages, **fields) -> dict:
    return {"model": MODEL, "messages": messages, "max_tokens": 2, **fields}


C, CHAT = "/v1/completions", "/v1/chat/completions"
# name: (route, body, status, what the error says)
REQUESTS: dict[str, tuple[str, bytes | dict | None, int, str]] = {
    "body_not_json": (C, b'{"model": "trained", "prompt": "hi",', 400, "not valid JSON"),
    "body_empty": (C, b"", 400, "not valid JSON"),
    "body_a_json_list": (C, b"[1, 2]", 400, "the request body must be a JSON object"),
    "body_a_json_string": (C, b'"just text"', 400, "the request body must be a JSON object"),
    "body_not_utf8": (C, b'{"model": "trained", "prompt": "caf\xe9"}', 400, "invalid_json"),
    "max_tokens_past_the_limit": (C, _completion(max_tokens=100000), 400, "max_tokens: 100000 is above"),
    "max_tokens_zero": (C, _completion(max_tokens=0), 400, "max_tokens: Input should be greater than or equal to 1"),
    "max_tokens_negative": (C, _completion(max_tokens=-1), 400, "max_tokens: Input should be greater"),
    "max_tokens_text": (C, _completion(max_tokens="ten"), 400, "max_tokens: Input should be a valid integer"),
    "max_tokens_of_5000_digits": (
        C,
        b'{"model": "trained", "prompt": "hi", "max_tokens": ' + b"9" * 5000 + b"}",
        400,
        "digits",
    ),
    "temperature_negative": (C, _completion(temperature=-1), 400, "temperature: Input should be greater"),
    "temperature_nan": (C, b'{"model": "trained", "prompt": "hi", "temperature": NaN}', 400, "temperature"),
    "temperature_huge": (C, _completion(temperature=1e308), 400, "temperature: Input should be less than"),
    "top_p_zero": (C, _completion(top_p=0), 400, "top_p: Input should be greater than 0"),
    "top_p_above_one": (C, _completion(top_p=2), 400, "top_p: Input should be less than or equal to 1"),
    "n_above_one": (C, _completion(n=1000), 400, "n: Input should be less than or equal to 1"),
    "stop_a_number": (C, _completion(stop=123), 400, "stop: Input should be a valid"),
    "stop_too_many": (C, _completion(stop=["a", "b", "c", "d", "e"]), 400, "stop: at most 4 stop sequences"),
    "stream_text": (C, _completion(stream="yes"), 400, "stream: Input should be a valid boolean"),
    "logprobs_unsupported": (C, _completion(logprobs=5), 400, "logprobs: not supported"),
    "unknown_model": (C, _completion(model="gpt-4"), 404, "model 'gpt-4' is not served here"),
    "model_missing": (C, {"prompt": "hi", "max_tokens": 2}, 400, "model: required"),
    "prompt_missing": (C, {"model": MODEL, "max_tokens": 2}, 400, "prompt: required"),
    "prompt_null": (C, _completion(prompt=None), 400, "prompt: Input should be a valid string"),
    "prompt_an_empty_list": (C, _completion(prompt=[]), 400, "prompt: must not be empty"),
    "prompt_token_ids": (C, _completion(prompt=[1, 2, 3]), 400, "prompt: Input should be a valid string"),
    "prompt_past_the_context": (C, _completion(prompt="hi " * 3000), 400, "maximum context length is 2048 tokens"),
    "chat_no_messages": (CHAT, _chat([]), 400, "messages: List should have at least 1 item"),
    "chat_messages_a_string": (CHAT, _chat("hello"), 400, "messages: Input should be a valid list"),
    "chat_unknown_role": (CHAT, _chat([{"role": "wizard", "content": "x"}]), 400, "messages.0.role: Input should be"),
    "chat_message_without_content": (CHAT, _chat([{"role": "user"}]), 400, "messages.0.content"),
    "chat_image_content": (
        CHAT,
        _chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        400,
        "messages.0.content",
    ),
    "chat_ending_with_the_assistant": (
        CHAT,
        _chat([{"role": "assistant", "content": "hi"}]),
        400,
        "the last message must be the user's",
    ),
    "chat_tools_a_string": (CHAT, _chat([{"role": "user", "content": "hi"}], tools="x"), 400, "tools: Input should be"),
    "chat_nested_past_the_limit": (
        CHAT,
        b'{"model": "trained", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        400,
        "nested too deeply",
    ),
}

for _name, (_path, _body, _status, _text) in REQUESTS.items():
    if f"serve_{_name}" in CASES:
        raise RuntimeError(f"two battery cases named serve_{_name}")

    def _fn(ctx, p=_path, b=_body, s=_status, t=_text):
        return _answered(ctx, p, b, s, t)

    _fn.__name__ = f"case_serve_{_name}"
    case("bad input")(_fn)


@case("bad input")
def case_serve_negative_seed_is_answered(ctx):
    """OpenAI takes any 64-bit seed; a negative one was a 500 (the generator takes 0..2^32-1)."""
    return _answered(ctx, C, _completion(seed=-5), 200, '"text_completion"')


@case("bad input")
def case_serve_text_plain_content_type(ctx):
    """A client that labels its JSON text/plain (curl -d) is answered: the body decides, not the label."""
    return _answered(ctx, C, json.dumps(_completion()).encode(), 200, '"text_completion"', content_type="text/plain")


@case("bad input")
def case_serve_body_declared_past_the_size_limit(ctx):
    """A 2 MB body announced to a server that takes 1 MB: 413 from the headers, before a byte is read."""
    return _answered(ctx, C, b"{", 413, "request_too_large", declared=2 * 2**20)


@case("bad input")
def case_serve_unknown_route(ctx):
    return _answered(ctx, "/v1/embeddings", {"model": MODEL, "input": "x"}, 404, "Not Found")


@case("bad input")
def case_serve_get_on_a_post_route(ctx):
    return _answered(ctx, C, None, 405, "Method Not Allowed", method="GET")


@case("fault")
def case_serve_stops_cleanly_on_sigterm(ctx):
    """Last: the server these cases share stops on SIGTERM within 30 s, exit 0, no traceback."""
    _server(ctx)
    rc = _stop()
    log = _new_log()
    return Outcome(rc, log + ("\nstopped" if rc is not None else "\nstill running 30 s after SIGTERM"), "stopped", 0)
