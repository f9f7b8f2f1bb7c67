"""tunelab serve --backend vllm: the vLLM command for a model and its adapters (a pure function, built
from `tunelab export` folders), the API key kept off the command line, and a one-line error where
vLLM is not installed (as here)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from inference_support import fresh_adapter


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vllm-adapters")
    return {name: fresh_adapter(root / name, tiny_model_dir, seed) for seed, name in enumerate(["a", "b"])}


def test_without_vllm_serve_fails_in_one_line_before_loading_anything(adapters):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    r = run_cli("serve", str(adapters["a"]), "--backend", "vllm", timeout=120)
    assert r.returncode == 2, r.stderr
    assert "error: --backend vllm: vLLM is not installed" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_bad_serve_flags_are_user_errors(adapters):
    for flags, message in [
        (["--max-batch", "0"], "--max-batch: must be at least 1"),
        (["--backend", "tgi"], "--backend: 'tgi' is not tunelab or vllm"),
        (["--max-body-mb", "0"], "--max-body-mb: must be positive"),
    ]:
        r = run_cli("serve", str(adapters["a"]), *flags, timeout=120)
        assert r.returncode == 2 and message in r.stdout + r.stderr, (flags, r.stdout, r.stderr)


def test_the_vllm_command_serves_the_ids_tunelab_would(adapters, tiny_model_dir, tmp_path):
    from tunelab.serve.engine import plan_models
    from tunelab.serve.vllm_backend import VLLM_SERVER, prepare_vllm, vllm_command

    plan = plan_models(str(adapters["a"]), [f"b={adapters['b']}"], name="support")
    serve = prepare_vllm(plan, tmp_path)
    cmd = vllm_command(serve, "127.0.0.1", 8001, max_batch=32, python="python")
    base = str(tiny_model_dir)
    assert cmd == [
        "python",
        "-m",
        VLLM_SERVER,
        "--model",
        base,
        "--served-model-name",
        base,
        "--host",
        "127.0.0.1",
        "--port",
        "8001",
        "--max-num-seqs",
        "32",
        "--enable-lora",
        "--lora-modules",
        f"support={tmp_path / 'support'}",
        f"b={tmp_path / 'b'}",
        "--max-loras",
        "2",
    ]
    assert [m.id for m in plan.models] == [base, "support", "b"]  # the ids tunelab's own server lists
    for name in ("support", "b"):  # written by `tunelab export --format adapter`, readable by vLLM as they are
        folder = tmp_path / name
        assert (folder / "adapter_model.safetensors").is_file() and (folder / "tunelab_model.json").is_file()
        assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == base


def test_high_rank_adapters_get_a_max_lora_rank_vllm_accepts(tmp_path):
    from tunelab.serve.vllm_backend import VllmServe, vllm_command

    serve = VllmServe("org/base", "org/base", [("r1", tmp_path / "r1", 8), ("r2", tmp_path / "r2", 48)])
    cmd = vllm_command(serve, "0.0.0.0", 9000, python="python")
    assert cmd[cmd.index("--max-lora-rank") + 1] == "64"
    assert "--max-num-seqs" not in cmd
    full = vllm_command(VllmServe("/models/r1-hf", "r1"), "127.0.0.1", 8000, python="python")
    assert full == [
        "python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "/models/r1-hf",
        "--served-model-name",
        "r1",
        "--host",
        "127.0.0.1",
        "--port",
        "8000",
    ]


def test_serve_vllm_passes_the_key_in_the_environment_and_returns_vllms_exit_code(adapters, monkeypatch):
    from tunelab.serve import vllm_backend

    seen = {}

    class FakeVllm:
        def __init__(self, cmd, env, **kwargs):  # preexec_fn: the parent-death signal
            seen["cmd"], seen["env"] = cmd, env
            module = cmd[cmd.index("--lora-modules") + 1]
            seen["exported"] = (Path(module.split("=", 1)[1]) / "adapter_model.safetensors").is_file()

        def wait(self):
            return 3

        def send_signal(self, signum):  # pragma: no cover - only on a signal
            pass

    monkeypatch.setattr(vllm_backend, "require_vllm", lambda: None)
    monkeypatch.setattr(vllm_backend.subprocess, "Popen", FakeVllm)
    lines: list[str] = []
    code = vllm_backend.serve_vllm(str(adapters["a"]), [], "a", "127.0.0.1", 8002, "sk-secret", 8, say=lines.append)
    assert code == 3 and seen["exported"]
    assert "sk-secret" not in " ".join(seen["cmd"]) and seen["env"]["VLLM_API_KEY"] == "sk-secret"
    assert seen["cmd"][:2] == [sys.executable, "-m"] and "--max-num-seqs" in seen["cmd"]
    assert any(line.startswith("serving ") and ", a with vLLM: " in line for line in lines)
