"""Values past what Python or the libraries take, refused in one line naming the file, line or field
(issue 21): seeds outside numpy's range, infinite mixture weights, folder names past the file system's
limit, integers of thousands of digits and YAML / JSON nested past the recursion limit in a config, an
override, a served request or a tool call's arguments."""

from __future__ import annotations

import json

import pytest
import yaml

from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.serve.openai_api import ApiError, ChatRequest, CompletionRequest, ToolCall, parse_request

HUGE = "9" * 5000  # past Python's 4,300-digit limit for int()
DEEP = "[" * 100_000 + "]" * 100_000


def _cfg(tmp_path, text: str | None = None, **sections):
    p = tmp_path / "c.yaml"
    p.write_text(text if text is not None else yaml.safe_dump({"model": {"name": "tiny:llama-2l"}, **sections}))
    return p


def _problems(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path, list(overrides))
    return str(e.value)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("training.seed=-1", "training.seed: Input should be greater than or equal to 0"),
        ("training.seed=4294967296", "training.seed: Input should be less than or equal to 4294967295"),
        ("data.seed=-7", "data.seed: Input should be greater than or equal to 0"),
        ("samples.seed=18446744073709551616", "samples.seed: Input should be less than or equal to 4294967295"),
    ],
)
def test_seeds_outside_numpys_range_are_config_errors(tmp_path, override, field):
    assert field in _problems(_cfg(tmp_path, data={"train": {"path": "synthetic:40"}}), [override])


def test_the_largest_seed_is_accepted(tmp_path):
    cfg = load_config(_cfg(tmp_path, data={"train": {"path": "synthetic:40"}}), ["training.seed=4294967295"])
    assert cfg.training.seed == 2**32 - 1


@pytest.mark.parametrize(
    ("weight", "message"),
    [
        (".inf", "Input should be a finite number"),
        ("-.inf", "Input should be a finite number"),
        (".nan", "Input should be a finite number"),
        ("0", "Input should be greater than 0"),
        ("-1", "Input should be greater than 0"),
    ],
)
def test_a_mixture_weight_must_be_finite_and_positive(tmp_path, weight, message):
    text = (
        "model: {name: 'tiny:llama-2l'}\ndata:\n  train:\n"
        f"    - {{path: 'synthetic:40:seed=1', weight: {weight}}}\n"
        "    - {path: 'synthetic:40:seed=2', weight: 1}\n"
    )
    problems = _problems(_cfg(tmp_path, text))
    assert f"data.train.0.weight: {message}" in problems
    assert "SourceConfig" not in problems  # the union member that lost is not a problem of its own


def test_a_run_name_past_the_file_systems_limit(tmp_path):
    problems = _problems(_cfg(tmp_path, data={"train": {"path": "synthetic:40"}}), ["output.name=" + "x" * 300])
    assert "output.name: must be at most 200 characters" in problems
    assert "x" * 60 not in problems  # the value is shortened, not printed whole
    load_config(_cfg(tmp_path, data={"train": {"path": "synthetic:40"}}), ["output.name=" + "x" * 200])


def test_an_integer_of_thousands_of_digits_in_a_config_names_its_line(tmp_path):
    p = _cfg(tmp_path, f"model: {{name: 'tiny:llama-2l'}}\ntraining:\n  seed: {HUGE}\n")
    assert f"{p}:3: a number of more than 4,300 digits" in _problems(p)


def test_an_integer_of_thousands_of_digits_in_an_override(tmp_path):
    p = _cfg(tmp_path, data={"train": {"path": "synthetic:40"}})
    assert "override training.max_steps: a number of more than 4,300 digits" in _problems(
        p, [f"training.max_steps={HUGE}"]
    )


def test_yaml_nested_past_the_recursion_limit(tmp_path):
    p = _cfg(tmp_path, "model: " + DEEP + "\n")
    assert f"{p}: nested too deeply to read" in _problems(p)
    q = _cfg(tmp_path, data={"train": {"path": "synthetic:40"}})
    assert "override training.seed: nested too deeply to read" in _problems(q, ["training.seed=" + "[" * 5000])


def test_an_override_that_is_not_yaml_stays_text():
    from tunelab.config.load import parse_override

    assert parse_override("prompt.template=Q: {instruction") == (["prompt", "template"], "Q: {instruction")


def _api_error(fn) -> ApiError:
    with pytest.raises(ApiError) as e:
        fn()
    assert e.value.status == 400
    return e.value


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"model": "m", "prompt": "hi", "max_tokens": ' + HUGE + "}", "holds an integer of more than 4,300 digits"),
        ('{"model": "m", "prompt": ' + DEEP + "}", "is nested too deeply"),
        ('{"model": "m", "prompt": "hi"', "is not valid JSON"),
    ],
)
def test_request_bodies_past_the_limits_are_400s(body, message):
    err = _api_error(lambda: parse_request(body.encode(), CompletionRequest))
    assert err.body()["error"]["code"] == "invalid_json" and message in err.body()["error"]["message"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ('{"n": ' + HUGE + "}", "holds an integer of more than 4,300 digits"),
        ('{"a": ' + DEEP + "}", "is nested too deeply"),
        ('{"a": ', "is not valid JSON"),
    ],
)
def test_tool_call_arguments_past_the_limits_are_400s(arguments, message):
    call = ToolCall.model_validate({"id": "c1", "function": {"name": "add", "arguments": arguments}})
    err = _api_error(call.for_template).body()["error"]
    assert err["param"] == "messages" and err["code"] == "invalid_value"
    assert err["message"].startswith("tool_calls: arguments of 'add' ") and message in err["message"]


def test_a_chat_request_with_such_arguments_parses_then_fails_on_rendering():
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "add"},
            {
                "role": "assistant",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": "[" * 5000}}],
            },
        ],
    }
    req = parse_request(json.dumps(body).encode(), ChatRequest)
    assert "nested too deeply" in _api_error(lambda: [m.for_template() for m in req.messages]).message


def test_serve_answers_400_to_numbers_and_nesting_past_the_limits(tiny_model_dir):
    import httpx

    from inference_support import running_server
    from tunelab.serve.engine import load_engine

    def chat_with_arguments(arguments: str) -> dict:
        call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": arguments}}
        return {
            "model": "tiny:llama-2l",
            "max_tokens": 2,
            "messages": [
                {"role": "user", "content": "add"},
                {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "3"},
            ],
        }

    bodies = [
        ("/v1/completions", '{"model": "tiny:llama-2l", "prompt": "hi", "max_tokens": ' + HUGE + "}"),
        ("/v1/chat/completions", json.dumps(chat_with_arguments('{"n": ' + HUGE + "}"))),
        ("/v1/chat/completions", json.dumps(chat_with_arguments("[" * 5000))),
    ]
    engine = load_engine("tiny:llama-2l")
    try:
        with running_server(engine) as url:
            for path, body in bodies:
                r = httpx.post(url + path, content=body.encode(), headers={"content-type": "application/json"})
                assert r.status_code == 400, (path, r.text[:300])
                assert "digits" in r.text or "nested too deeply" in r.text
            assert httpx.get(f"{url}/health").status_code == 200
    finally:
        engine.close()
