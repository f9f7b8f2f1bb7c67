"""The serve app's steps called directly (`ServeApp`), and its routes over a stand-in engine: no model, no server."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from tunelab.errors import TunelabError
from tunelab.inference.generate import Generation
from tunelab.serve.app import DEFAULT_COMPLETION_TOKENS, ServeApp, create_app
from tunelab.serve.engine import ServedModel
from tunelab.serve.openai_api import ApiError, CompletionRequest


class FakeEngine:
    """What the app asks of an `Engine`: one token per character, answers that say what they were asked."""

    def __init__(self, context_length: int = 64):
        self.models = {
            "base": ServedModel("base", None, None, "tiny:llama-2l"),
            "r1": ServedModel("r1", "default", None, "runs/r1"),
        }
        self.context_length = context_length
        self.prompt_char_limit = 4 * context_length
        self.tokenizer = object()
        self.encoded = 0

    def encode(self, prompt: str) -> list[int]:
        self.encoded += 1
        return [ord(c) for c in prompt]

    async def generate(self, served, ids, settings, stop=(), streamer=None, cancel=None) -> Generation:
        return Generation(f"{served.id}:{len(ids)}", len(ids), settings.max_new_tokens, "length")


def request(**fields) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "base", "prompt": "hi", **fields})


def test_authorize_wants_the_bearer_key_only_when_one_is_set():
    ServeApp(FakeEngine()).authorize("")
    app = ServeApp(FakeEngine(), api_key="sekrit")
    app.authorize("Bearer sekrit")
    app.authorize("bearer sekrit ")
    for header in ("", "Bearer wrong", "Basic sekrit", "sekrit"):
        with pytest.raises(ApiError) as e:
            app.authorize(header)
        assert (e.value.status, e.value.code) == (401, "invalid_api_key")
        assert "sekrit" not in e.value.message


def test_lookup_names_the_models_that_are_served():
    app = ServeApp(FakeEngine())
    assert app.lookup("r1").adapter == "default"
    with pytest.raises(ApiError) as e:
        app.lookup("other")
    assert (e.value.status, e.value.code, e.value.param) == (404, "model_not_found", "model")
    assert "available: base, r1" in e.value.message


def test_plan_defaults_to_what_fits_and_refuses_what_does_not():
    engine = FakeEngine(context_length=64)
    app = ServeApp(engine, max_tokens_limit=20)
    assert app.plan("a" * 10, None, DEFAULT_COMPLETION_TOKENS, "prompt") == ([97] * 10, 16)
    assert app.plan("a" * 10, None, 1000, "prompt")[1] == 20  # the server's limit
    assert app.plan("a" * 50, None, 1000, "prompt")[1] == 14  # the room left in the context
    assert app.plan("a" * 10, 5, 1000, "prompt")[1] == 5
    cases = [("a" * 10, 21, "max_tokens_exceeded"), ("a" * 60, 10, "context_length_exceeded")]
    cases.append(("a" * 64, None, "context_length_exceeded"))
    for prompt, asked, code in cases:
        with pytest.raises(ApiError) as e:
            app.plan(prompt, asked, 16, "prompt")
        assert (e.value.status, e.value.code) == (400, code)


def test_plan_refuses_a_prompt_too_long_to_fit_before_tokenizing_it():
    engine = FakeEngine(context_length=64)
    with pytest.raises(ApiError) as e:
        ServeApp(engine).plan("a" * (engine.prompt_char_limit + 1), None, 16, "messages")
    assert (e.value.code, e.value.param) == ("context_length_exceeded", "messages")
    assert engine.encoded == 0


def test_completion_jobs_one_per_prompt_with_the_requests_sampling():
    app = ServeApp(FakeEngine())
    served = app.lookup("base")
    jobs = app.completion_jobs(request(prompt=["ab", "abc"], max_tokens=3, temperature=0.0, seed=7), served)
    assert [ids for ids, _ in jobs] == [[97, 98], [97, 98, 99]]
    settings = jobs[0][1]
    assert (settings.max_new_tokens, settings.do_sample, settings.seed) == (3, False, 7)
    sampled = app.completion_jobs(request(temperature=0.7), served)[0][1]
    assert sampled.do_sample and sampled.temperature == 0.7
    with pytest.raises(ApiError, match="prompt: must not be empty"):
        app.completion_jobs(request(prompt=[]), served)


def test_the_tool_call_convention_is_read_once_and_a_bad_template_is_a_400(monkeypatch):
    import tunelab.data.tools as tools

    probes = []
    monkeypatch.setattr(tools, "tool_format", lambda tokenizer: probes.append(tokenizer) or "the format")
    app = ServeApp(FakeEngine())
    assert app.call_format() == app.call_format() == "the format"
    assert len(probes) == 1

    def refuse(tokenizer):
        raise TunelabError("model.name: the chat template cannot write tool calls")

    monkeypatch.setattr(tools, "tool_format", refuse)
    with pytest.raises(ApiError) as e:
        ServeApp(FakeEngine()).call_format()
    assert (e.value.status, e.value.param) == (400, "tools")
    assert "cannot write tool calls" in e.value.message


def test_model_card_names_the_base_an_adapter_is_served_over():
    app = ServeApp(FakeEngine(context_length=128))
    base, adapter = app.model_card(app.lookup("base")), app.model_card(app.lookup("r1"))
    assert (base["parent"], adapter["parent"]) == (None, "base")
    assert (adapter["root"], adapter["max_model_len"]) == ("runs/r1", 128)


def test_the_routes_answer_through_the_app():
    client = TestClient(create_app(FakeEngine(), api_key="k", max_body_bytes=1000))
    auth = {"Authorization": "Bearer k"}
    assert client.head("/health").status_code == 200
    assert client.get("/v1/models").json()["error"]["code"] == "invalid_api_key"
    assert [m["id"] for m in client.get("/v1/models", headers=auth).json()["data"]] == ["base", "r1"]
    assert client.get("/v1/models/r1", headers=auth).json()["parent"] == "base"
    body = {"model": "r1", "prompt": ["ab", "abcd"], "max_tokens": 2}
    answer = client.post("/v1/completions", headers=auth, json=body).json()
    assert [c["text"] for c in answer["choices"]] == ["r1:2", "r1:4"]
    assert answer["usage"] == {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}
    too_big = client.post("/v1/completions", headers=auth, content=json.dumps({**body, "prompt": "a" * 2000}))
    assert (too_big.status_code, too_big.json()["error"]["code"]) == (413, "request_too_large")
