"""tunelab serve through the official `openai` client: completions and chat (streamed and not), adapters
selected by name, concurrent clients, bad requests, API keys, the CLI with SIGTERM."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from inference_support import RUN_NAME, free_port, one_torch_thread, running_server, trained_run  # noqa: F401 (autouse fixture)
from tunelab.procs import child_env

BASE_ID = "tiny:llama-2l"
MODEL_IDS = [BASE_ID, RUN_NAME, "early"]
PROMPT = "Below is an instruction.\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:\n"
MESSAGES = [{"role": "user", "content": "Reverse the order of the words: cat dog sun"}]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def engine(run):
    """The run's adapter, its step-2 checkpoint as a second adapter, and the base, over one model."""
    from tunelab.serve.engine import load_engine

    eng = load_engine(str(run), [f"early={run / 'checkpoints' / 'step-000002'}"])
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def base_engine(tiny_model_dir):
    from tunelab.serve.engine import load_engine

    eng = load_engine(BASE_ID)
    yield eng
    eng.close()


def client_for(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def references(run, tiny_model_dir) -> dict[str, dict[str, str]]:
    """Greedy answers of each model loaded on its own (no server, no other adapter in memory)."""
    from tunelab.inference.generate import GenerationSettings, encode_prompt, generate_one
    from tunelab.inference.prompts import chat_prompt
    from tunelab.inference.target import load_target, resolve_target

    sources = {BASE_ID: tiny_model_dir, RUN_NAME: run, "early": run / "checkpoints" / "step-000002"}
    out = {}
    for model_id, src in sources.items():
        t = resolve_target(str(src))
        model, tok = load_target(t)
        settings = GenerationSettings(max_new_tokens=8)
        chat = chat_prompt(MESSAGES, t.prompt if t.prompt_known else None, tok)
        out[model_id] = {
            "completion": generate_one(model, tok, encode_prompt(tok, PROMPT), settings).text,
            "chat": generate_one(model, tok, encode_prompt(tok, chat), settings).text,
            "prompt_tokens": len(encode_prompt(tok, PROMPT)),
        }
    return out


@pytest.mark.slow
def test_completions_and_chat_through_the_openai_client(engine, run, tiny_model_dir):
    ref = references(run, tiny_model_dir)
    assert (
        len({r["chat"] for r in ref.values()}) == 3 and len({r["completion"] for r in ref.values()}) == 3
    )  # so selection shows
    with running_server(engine) as url:
        client = client_for(url)
        assert [m.id for m in client.models.list()] == MODEL_IDS
        assert client.models.retrieve("early").id == "early"
        for model_id in MODEL_IDS:
            c = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=8, temperature=0)
            assert c.model == model_id and c.choices[0].text == ref[model_id]["completion"]
            assert c.usage.prompt_tokens == ref[model_id]["prompt_tokens"] and 0 < c.usage.completion_tokens <= 8
            assert c.choices[0].finish_reason == ("length" if c.usage.completion_tokens == 8 else "stop")
            chunks = list(
                client.completions.create(model=model_id, prompt=PROMPT, max_tokens=8, temperature=0, stream=True)
            )
            assert "".join(ch.choices[0].text for ch in chunks) == c.choices[0].text
            assert chunks[-1].choices[0].finish_reason == c.choices[0].finish_reason

            m = client.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=8, temperature=0)
            assert m.choices[0].message.role == "assistant" and m.choices[0].message.content == ref[model_id]["chat"]
            chunks = list(
                client.chat.completions.create(
                    model=model_id,
                    messages=MESSAGES,
                    max_tokens=8,
                    temperature=0,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            assert (
                "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
                == m.choices[0].message.content
            )
            assert chunks[0].choices[0].delta.role == "assistant"
            assert chunks[-1].usage.model_dump() == m.usage.model_dump() and not chunks[-1].choices

        # a stop sequence cuts the answer before it, streamed or not
        answer = ref[RUN_NAME]["completion"]
        stop = answer[3:6]
        cut = answer[: answer.find(stop)]
        c = client.completions.create(model=RUN_NAME, prompt=PROMPT, max_tokens=8, temperature=0, stop=[stop])
        assert c.choices[0].text == cut and c.choices[0].finish_reason == "stop"
        chunks = client.completions.create(
            model=RUN_NAME, prompt=PROMPT, max_tokens=8, temperature=0, stop=stop, stream=True
        )
        assert "".join(ch.choices[0].text for ch in chunks) == cut

        # sampling with a seed is reproducible; two prompts in one request come back in order
        a = client.completions.create(model=RUN_NAME, prompt=PROMPT, max_tokens=8, temperature=1.0, seed=7)
        b = client.completions.create(model=RUN_NAME, prompt=PROMPT, max_tokens=8, temperature=1.0, seed=7)
        assert a.choices[0].text == b.choices[0].text
        two = client.completions.create(model=RUN_NAME, prompt=["cat dog", PROMPT], max_tokens=8, temperature=0)
        assert [ch.index for ch in two.choices] == [0, 1] and two.choices[1].text == answer


@pytest.mark.slow
def test_concurrent_clients_each_get_their_own_answer(engine):
    jobs = [(f"What is {i} plus {i + 1}? Answer with a number.", MODEL_IDS[i % 3], i % 2 == 1) for i in range(8)]

    def ask(client, question, model_id, stream):
        kwargs = dict(model=model_id, messages=[{"role": "user", "content": question}], max_tokens=8, temperature=0)
        if stream:
            return "".join(
                ch.choices[0].delta.content or "" for ch in client.chat.completions.create(stream=True, **kwargs)
            )
        return client.chat.completions.create(**kwargs).choices[0].message.content

    with running_server(engine) as url:
        client = client_for(url)
        alone = [ask(client, *job) for job in jobs]
        assert len(set(alone)) >= 5  # different prompts and models give different answers, so a mix-up would show
        barrier = threading.Barrier(len(jobs))

        def together(job):
            barrier.wait()
            return ask(client_for(url), *job)

        steps = engine.scheduler.stats.rows.copy()
        with ThreadPoolExecutor(len(jobs)) as pool:
            answers = list(pool.map(together, jobs))
        assert answers == alone
        # they really shared forward passes (continuous batching), each with its own adapter's weights
        ran = engine.scheduler.stats.rows - steps
        assert max(ran) > 1, ran
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}


BAD_REQUESTS = [
    ("/v1/completions", b"{not json", 400, "invalid_json", None),
    ("/v1/completions", b"[1, 2]", 400, "invalid_json", None),
    ("/v1/completions", b"", 400, "invalid_json", None),
    ("/v1/completions", {"model": "nope", "prompt": "hi"}, 404, "model_not_found", "model"),
    ("/v1/completions", {"model": BASE_ID}, 400, "invalid_value", "prompt"),
    ("/v1/completions", {"prompt": "hi"}, 400, "invalid_value", "model"),
    ("/v1/completions", {"model": BASE_ID, "prompt": 42}, 400, "invalid_value", "prompt"),
    ("/v1/completions", {"model": BASE_ID, "prompt": []}, 400, None, "prompt"),
    ("/v1/completions", {"model": BASE_ID, "prompt": "hi", "max_tokens": 33}, 400, "max_tokens_exceeded", "max_tokens"),
    ("/v1/completions", {"model": BASE_ID, "prompt": "hi", "max_tokens": "8"}, 400, "invalid_value", "max_tokens"),
    ("/v1/completions", {"model": BASE_ID, "prompt": "hi", "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
    ("/v1/completions", {"model": BASE_ID, "prompt": "1 " * 1100}, 400, "context_length_exceeded", "prompt"),
    (
        "/v1/completions",
        {"model": BASE_ID, "prompt": "1 " * 1010, "max_tokens": 30},
        400,
        "context_length_exceeded",
        "prompt",
    ),
    ("/v1/completions", {"model": BASE_ID, "prompt": "hi", "temperature": "hot"}, 400, "invalid_value", "temperature"),
    ("/v1/completions", {"model": BASE_ID, "prompt": "hi", "temperature": 5}, 400, "invalid_value", "temperature"),
    ("/v1/completions", {"model": BASE_ID, "prompt": "hi", "stream": "yes"}, 400, "invalid_value", "stream"),
    ("/v1/completions", {"model": BASE_ID, "prompt": "hi", "n": 2}, 400, "invalid_value", "n"),
    ("/v1/completions", {"model": BASE_ID, "prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, 400, None, "stop"),
    ("/v1/completions", {"model": BASE_ID, "prompt": "hi", "logprobs": 3}, 400, "unsupported_parameter", "logprobs"),
    ("/v1/chat/completions", {"model": BASE_ID}, 400, "invalid_value", "messages"),
    ("/v1/chat/completions", {"model": BASE_ID, "messages": []}, 400, "invalid_value", "messages"),
    ("/v1/chat/completions", {"model": BASE_ID, "messages": "hi"}, 400, "invalid_value", "messages"),
    (
        "/v1/chat/completions",
        {"model": BASE_ID, "messages": [{"role": "user", "content": 5}]},
        400,
        "invalid_value",
        "messages.0.content",
    ),
    (
        "/v1/chat/completions",
        {"model": BASE_ID, "messages": [{"role": "robot", "content": "hi"}]},
        400,
        "invalid_value",
        "messages.0.role",
    ),
    (
        "/v1/chat/completions",
        {"model": BASE_ID, "messages": [{"role": "user"}]},
        400,
        "invalid_value",
        "messages.0.content",
    ),
    (
        "/v1/chat/completions",
        {"model": BASE_ID, "messages": [{"role": "user", "content": "x " * 1100}]},
        400,
        "context_length_exceeded",
        "messages",
    ),
    (
        "/v1/chat/completions",
        {"model": BASE_ID, "messages": MESSAGES, "max_completion_tokens": 99},
        400,
        "max_tokens_exceeded",
        "max_tokens",
    ),
    ("/v1/nothing-here", {}, 404, "not_found", None),
]


def test_bad_requests_get_openai_shaped_4xx_and_the_server_stays_healthy(base_engine):
    with running_server(base_engine, max_tokens_limit=32) as url:
        assert base_engine.context_length == 2048
        for path, body, status, code, param in BAD_REQUESTS:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = httpx.post(url + path, content=content, headers={"content-type": "application/json"})
            assert r.status_code == status, (path, body, r.text)
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["message"], r.text
            assert err["param"] == param and (code is None or err["code"] == code), (body, err)
        assert httpx.get(f"{url}/v1/completions").status_code == 405

        # a client that leaves in the middle of a stream does not take the server with it
        body = {"model": BASE_ID, "prompt": PROMPT, "max_tokens": 32, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            first = next(r.iter_lines())
            assert first.startswith("data: {")

        assert httpx.get(f"{url}/health").json() == {"status": "ok"}
        c = client_for(url).completions.create(model=BASE_ID, prompt="hello", max_tokens=4, temperature=0)
        assert c.usage.completion_tokens > 0


def test_api_key_on_and_off(base_engine, caplog):
    key = "sk-test-" + secrets.token_hex(12)
    with caplog.at_level(logging.INFO, logger="tunelab.serve"), running_server(base_engine, api_key=key) as url:
        r = httpx.get(f"{url}/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.post(
            f"{url}/v1/completions", json={"model": BASE_ID, "prompt": "hi"}, headers={"Authorization": "Bearer nope"}
        )
        assert r.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            client_for(url, "wrong-key").completions.create(model=BASE_ID, prompt="hi", max_tokens=2)
        assert httpx.get(f"{url}/health").status_code == 200  # liveness probes need no key
        c = client_for(url, key).chat.completions.create(model=BASE_ID, messages=MESSAGES, max_tokens=3, temperature=0)
        assert c.usage.completion_tokens > 0
    log = caplog.text
    assert key not in log
    assert (
        f"POST /v1/chat/completions 200 model={BASE_ID} prompt_tokens={c.usage.prompt_tokens} "
        f"completion_tokens={c.usage.completion_tokens}" in log
    )
    assert "GET /v1/models 401" in log and "latency_ms=" in log

    with running_server(base_engine) as url:
        assert httpx.get(f"{url}/v1/models").status_code == 200
        assert client_for(url).completions.create(model=BASE_ID, prompt="hi", max_tokens=2).usage.completion_tokens > 0


@pytest.mark.slow
def test_serve_cli_binds_localhost_and_stops_cleanly_on_sigterm(run):
    import psutil

    key = "sk-cli-" + secrets.token_hex(12)
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "tunelab.cli.main",
        "serve",
        str(run),
        "--port",
        str(port),
        "--adapter",
        f"early={run / 'checkpoints' / 'step-000002'}",
        "--max-tokens-limit",
        "16",
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env({**os.environ, "TUNELAB_API_KEY": key, "COLUMNS": "200"}),  # dies with the tests
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "server did not come up"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        listening = [
            c.laddr for c in psutil.Process(proc.pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
        ]
        assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", port)]
        client = client_for(url, key)
        assert [m.id for m in client.models.list()] == MODEL_IDS
        answer = client.chat.completions.create(model="early", messages=MESSAGES, max_tokens=4, temperature=0)
        assert answer.model == "early" and answer.usage.completion_tokens > 0
        assert httpx.get(f"{url}/v1/models").status_code == 401
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    assert f"serving {BASE_ID}, {RUN_NAME}, early on http://127.0.0.1:{port}/v1 (API key required" in err
    assert "POST /v1/chat/completions 200 model=early prompt_tokens=" in err and "server stopped" in err
    assert key not in out + err and "Traceback" not in err
