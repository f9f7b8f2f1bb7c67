"""`tunelab serve` with tools, through the official `openai` client: a tiny model fully fine-tuned on
synthetic tool-calling conversations (the `tiny:tools-2l` preset's Hermes-style chat template) gets
`tools`, answers with `tool_calls` read back with its template's own convention, and takes the
tool's result in the next request. A model whose template has no tools is refused in one line."""

import json

import openai
import pytest
import yaml

from conftest import run_cli
from inference_support import one_torch_thread, running_server  # noqa: F401 (autouse fixture)
from tunelab.data.synthetic import TOOLS  # the tools the synthetic tool-call rows (the training data) offer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tool_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tools")
    cfg = {
        "model": {"name": "tiny:tools-2l"},
        "adapter": {"type": "none"},
        "prompt": {"format": "messages"},
        "data": {"train": {"path": "synthetic:400:seed=1:kind=tools"}, "test_size": 8},
        "training": {
            "max_steps": 120,
            "batch_size": 8,
            "grad_accum": 1,
            "max_length": 384,
            "learning_rate": 2e-3,
            "gradient_checkpointing": False,
            "logging_steps": 10,
        },
        "samples": {"enabled": False},
        "tracking": {"backend": "none"},
        "output": {"dir": str(root / "runs"), "name": "tools"},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    r = run_cli("train", str(root / "run.yaml"))
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "runs" / "tools"


@pytest.fixture(scope="module")
def url(tool_run):
    from tunelab.serve.engine import load_engine

    engine = load_engine(str(tool_run), [])
    with running_server(engine) as u:
        yield u
    engine.close()


def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_the_openai_client_gets_tool_calls_back_and_sends_the_result(url):
    c = client(url)
    ask = [{"role": "user", "content": "What is 3 plus 4?"}]
    r = c.chat.completions.create(model="tools", messages=ask, tools=TOOLS, temperature=0, max_tokens=40)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "add" and call.id.startswith("call_")
    assert set(json.loads(call.function.arguments)) == {"a", "b"}  # valid JSON with the tool's parameters
    # the tool's result goes back as the next turn; the model answers in text
    follow = ask + [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "7"},
    ]
    r2 = c.chat.completions.create(model="tools", messages=follow, tools=TOOLS, temperature=0, max_tokens=8)
    assert r2.choices[0].finish_reason == "stop" and not r2.choices[0].message.tool_calls
    assert r2.choices[0].message.content.strip()  # a text answer (this tiny model's arithmetic is not the point)
    # streamed: the same call arrives as tool_calls deltas, then finish_reason tool_calls
    chunks = list(
        c.chat.completions.create(model="tools", messages=ask, tools=TOOLS, temperature=0, max_tokens=40, stream=True)
    )
    deltas = [ch.choices[0].delta.tool_calls for ch in chunks if ch.choices and ch.choices[0].delta.tool_calls]
    assert deltas and deltas[0][0].function.name == "add" and chunks[-1].choices[0].finish_reason == "tool_calls"
    # without tools the same model just writes text
    plain = c.chat.completions.create(model="tools", messages=ask, temperature=0, max_tokens=40)
    assert plain.choices[0].message.tool_calls is None


def test_tools_for_a_model_whose_template_cannot_render_them_is_a_400(tiny_model_dir):
    from tunelab.serve.engine import load_engine

    engine = load_engine("tiny:llama-2l", [])
    try:
        with running_server(engine) as u:
            with pytest.raises(openai.BadRequestError) as e:
                client(u).chat.completions.create(
                    model="tiny:llama-2l", messages=[{"role": "user", "content": "hi"}], tools=TOOLS, max_tokens=4
                )
            assert "cannot render tool calls" in str(e.value)
            with pytest.raises(openai.BadRequestError, match="tool_choice"):
                client(u).chat.completions.create(
                    model="tiny:llama-2l",
                    messages=[{"role": "user", "content": "hi"}],
                    tools=TOOLS,
                    tool_choice="required",
                    max_tokens=4,
                )
    finally:
        engine.close()
