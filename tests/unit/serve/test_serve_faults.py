"""tunelab serve under the fault battery of issue 10: huge bodies, slow tokenization, request shapes
that used to be 500s, HEAD probes, and what the request log says about each."""

from __future__ import annotations

import json
import logging
import threading
import time

import httpx
import pytest

from inference_support import one_torch_thread, running_server  # noqa: F401 (autouse fixture)

BASE_ID = "tiny:llama-2l"


@pytest.fixture(scope="module")
def base_engine(tiny_model_dir):
    from tunelab.serve.engine import load_engine

    eng = load_engine(BASE_ID)
    yield eng
    eng.close()


class HealthWatch:
    """Polls /health from a thread for as long as the block runs; the slowest answer it saw."""

    def __init__(self, url: str):
        self.url, self.worst, self.answers, self._stop = url, 0.0, 0, threading.Event()

    def __enter__(self):
        def poll():
            with httpx.Client(timeout=30) as http:
                while not self._stop.is_set():
                    t0 = time.perf_counter()
                    assert http.get(f"{self.url}/health").status_code == 200
                    self.worst = max(self.worst, time.perf_counter() - t0)
                    self.answers += 1
                    time.sleep(0.02)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        time.sleep(0.1)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=30)


def _chunks(body: bytes, size: int = 1 << 16):
    for i in range(0, len(body), size):
        yield body[i : i + size]


def test_a_huge_body_gets_413_at_once_and_health_stays_fast(base_engine, caplog):
    body = b'{"model": "' + BASE_ID.encode() + b'", "prompt": "' + b"a " * (10 * 2**20) + b'"}'  # 20 MB
    with (
        caplog.at_level(logging.INFO, logger="tunelab.serve"),
        running_server(base_engine, max_body_bytes=2**20) as url,
    ):
        with HealthWatch(url) as watch:
            for content in (body, _chunks(body)):  # Content-Length declared / chunked upload, counted while read
                t0 = time.perf_counter()
                r = httpx.post(
                    f"{url}/v1/completions", content=content, headers={"content-type": "application/json"}, timeout=60
                )
                assert r.status_code == 413, r.text
                assert time.perf_counter() - t0 < 5
                err = r.json()["error"]
                assert set(err) == {"message", "type", "param", "code"} and err["code"] == "request_too_large"
                assert "1 MB" in err["message"]
        assert watch.answers > 0 and watch.worst < 1.0
        ok = httpx.post(f"{url}/v1/completions", json={"model": BASE_ID, "prompt": "hi " * 1000, "max_tokens": 2})
        assert ok.status_code == 200  # under the limit: answered
    assert caplog.text.count("POST /v1/completions 413 error=request_too_large") == 2
    assert "client_disconnected" not in caplog.text


def test_tokenizing_runs_off_the_event_loop(base_engine, monkeypatch):
    """A prompt that takes seconds to tokenize (a long one, a slow tokenizer) must not stall /health."""
    encode = base_engine.encode

    def slow_encode(prompt):
        time.sleep(2.0)  # holds a thread, as a multi-megabyte prompt does in the tokenizer
        return encode(prompt)

    monkeypatch.setattr(base_engine, "encode", slow_encode)
    with running_server(base_engine) as url, HealthWatch(url) as watch:
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/v1/completions", json={"model": BASE_ID, "prompt": "hi", "max_tokens": 2}, timeout=60)
        assert r.status_code == 200 and time.perf_counter() - t0 >= 2.0
    assert watch.answers >= 5 and watch.worst < 1.0


def test_a_prompt_longer_than_any_context_is_refused_without_tokenizing(base_engine, monkeypatch):
    monkeypatch.setattr(base_engine, "encode", lambda prompt: pytest.fail("tokenized a hopeless prompt"))
    with running_server(base_engine) as url:
        r = httpx.post(
            f"{url}/v1/completions", json={"model": BASE_ID, "prompt": "x" * (base_engine.prompt_char_limit + 1)}
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text


def _nested(depth: int) -> bytes:
    return b'{"model": "' + BASE_ID.encode() + b'", "prompt": "hi", "extra": ' + b"[" * depth + b"]" * depth + b"}"


CLIENT_FAULTS = [  # (path, raw body, param) that were 500s: RecursionError in json.loads, TypeError in the tokenizer
    ("/v1/completions", _nested(100_000), None),
    ("/v1/chat/completions", b'{"model": "x", "messages": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}", None),
    ("/v1/completions", json.dumps({"model": BASE_ID, "prompt": "a\ud800b"}).encode(), "prompt"),
    ("/v1/completions", json.dumps({"model": BASE_ID, "prompt": ["fine", "a\udfffb"]}).encode(), "prompt.1"),
    (
        "/v1/chat/completions",
        json.dumps({"model": BASE_ID, "messages": [{"role": "user", "content": "a\ud800b"}]}).encode(),
        "messages.0.content",
    ),
    (
        "/v1/chat/completions",
        json.dumps(
            {"model": BASE_ID, "messages": [{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}]}
        ).encode(),
        "messages.0.content.0.text",
    ),
    ("/v1/completions", json.dumps({"model": BASE_ID, "prompt": "hi", "stop": "\ud800"}).encode(), "stop"),
]


def test_client_faults_are_400s_and_logged_as_such(base_engine, caplog):
    with caplog.at_level(logging.INFO, logger="tunelab.serve"), running_server(base_engine) as url:
        for path, body, param in CLIENT_FAULTS:
            r = httpx.post(url + path, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400, (path, body[:80], r.text)
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["param"] == param, err
            assert err["code"] == ("invalid_json" if param is None else "invalid_value")
        # a valid surrogate pair is text, not a fault
        r = httpx.post(
            f"{url}/v1/completions",
            content=json.dumps({"model": BASE_ID, "prompt": "a\U0001f600b", "max_tokens": 2}).encode(),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 200, r.text
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    lines = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("POST ")]
    assert len(lines) == len(CLIENT_FAULTS) + 1
    assert all(" 400 " in ln for ln in lines[:-1]) and not any(
        "client_disconnected" in ln or "server_error" in ln for ln in lines
    )
    assert "Traceback" not in caplog.text


def test_head_health_for_load_balancers(base_engine):
    with running_server(base_engine, api_key="sk-anything") as url:
        r = httpx.head(f"{url}/health")
        assert r.status_code == 200 and r.content == b""
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}


def test_a_bug_is_logged_as_a_server_error_not_a_disconnect(base_engine, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(base_engine, "encode", broken)
    with caplog.at_level(logging.INFO, logger="tunelab.serve"), running_server(base_engine) as url:
        r = httpx.post(f"{url}/v1/completions", json={"model": BASE_ID, "prompt": "hi"})
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert "POST /v1/completions 500 model=tiny:llama-2l error=server_error" in caplog.text
    assert "client_disconnected" not in caplog.text
