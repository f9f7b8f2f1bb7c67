"""Helpers shared by the inference tests: one tiny trained run per session, an in-process server."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

from conftest import base_config, run_cli

RUN_NAME = "tl"


def trained_run(tmp_path_factory) -> Path:
    """A 4-step LoRA run on tiny:llama-2l through the real CLI, built once per session.

    lr 3e-3 is chosen so the step-2 checkpoint, the final adapter and the base answer the test
    prompts differently (so a test can tell which one answered), and none answers empty.
    """
    root = tmp_path_factory.getbasetemp() / "inference-run"
    run = root / "runs" / RUN_NAME
    if (run / "final" / "tunelab_model.json").is_file():
        return run
    root.mkdir(parents=True, exist_ok=True)
    from tunelab.data.synthetic import generate, write_jsonl

    data = write_jsonl(generate(200, seed=3), root / "synth.jsonl")
    cfg = base_config(
        data,
        root / "runs",
        training={"learning_rate": 3e-3, "eval_steps": None},
        samples={"enabled": False},
        data={"test_size": None},
    )
    cfg_path = root / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    r = run_cli("train", str(cfg_path), f"output.name={RUN_NAME}")
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def fresh_adapter(folder: Path, base: Path, seed: int) -> Path:
    """A LoRA adapter on the tiny model with random A and B (not PEFT's zero B), so it changes the answers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if not (folder / "adapter_model.safetensors").is_file():
        torch.manual_seed(seed)
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base),
            LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False),
        )
        model.save_pretrained(folder)
    return folder


@contextmanager
def running_server(engine, **app_kwargs):
    """Serve `engine` on a free port of 127.0.0.1 in a thread; yields the base URL; stops the server on exit."""
    import uvicorn

    from tunelab.serve.app import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(engine, **app_kwargs), lifespan="off", access_log=False, log_level="warning")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive(), "server did not stop"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine: intra-op threads only add contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
