"""`tunelab serve TARGET --backend vllm`: vLLM's OpenAI server on the same models, under the same ids.

A full model (a merged or exported HF folder) is vLLM's model; a LoRA run is its base with each
adapter as a LoRA module (`--enable-lora --lora-modules NAME=PATH`), so `GET /v1/models` lists what
tunelab's own server would. Adapters are written for vLLM by `tunelab export --format adapter`
(`export_target`) into a temporary folder that lives as long as the server. vLLM applies the
tokenizer's chat template to chat requests, not a run's Alpaca template; completions are the same.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.export.formats import VLLM_LORA_RANKS, export_target
from tunelab.serve.engine import ServePlan, plan_models

VLLM_SERVER = "vllm.entrypoints.openai.api_server"


@dataclass
class VllmServe:
    """What vLLM is started with: its model, the id it is served under, the LoRA modules (id, folder, rank)."""

    model: str
    served_name: str
    loras: list[tuple[str, Path, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise TunelabError(
            "--backend vllm: vLLM is not installed in this Python environment",
            hint="pip install vllm (Linux with a CUDA GPU), or serve with the default --backend tunelab",
        )


def vllm_command(
    serve: VllmServe,
    host: str,
    port: int,
    max_batch: int | None = None,
    python: str = sys.executable,
    trust_remote_code: bool = False,
) -> list[str]:
    """The command line that starts vLLM's OpenAI server for `serve` (the API key goes in VLLM_API_KEY,
    not here: a command line is visible to every user of the machine)."""
    cmd = [
        python,
        "-m",
        VLLM_SERVER,
        "--model",
        serve.model,
        "--served-model-name",
        serve.served_name,
        "--host",
        host,
        "--port",
        str(port),
    ]
    if max_batch is not None:
        cmd += ["--max-num-seqs", str(max_batch)]
    if trust_remote_code:  # only when this command was given --trust-remote-code
        cmd.append("--trust-remote-code")
    if serve.loras:
        rank = max(r for _, _, r in serve.loras)
        cmd += [
            "--enable-lora",
            "--lora-modules",
            *(f"{name}={folder}" for name, folder, _ in serve.loras),
            "--max-loras",
            str(len(serve.loras)),
        ]
        if rank > 16:  # vLLM's default --max-lora-rank is 16, and it takes only a few values
            cmd += ["--max-lora-rank", str(next((r for r in VLLM_LORA_RANKS if r >= rank), rank))]
    return cmd


def prepare_vllm(plan: ServePlan, workdir: Path) -> VllmServe:
    """Export each adapter of `plan` for vLLM into `workdir`; the model and modules vLLM serves."""
    from tunelab.model.resolve import resolve_model_path

    target = plan.target
    base = next(m for m in plan.models if m.adapter is None)
    serve = VllmServe(model=resolve_model_path(target.base), served_name=base.id)
    adapters = ([(plan.target_id, target)] if target.adapter is not None else []) + plan.extras
    for model_id, t in adapters:
        result = export_target(t, workdir / model_id, "adapter", overwrite=True)
        if result.notes:  # DoRA, modules_to_save: vLLM cannot serve them as LoRA modules
            raise TunelabError(
                f"--backend vllm: {model_id}: {result.notes[0]}",
                hint=f"tunelab export {t.text} --format hf -o DIR, then tunelab serve DIR --backend vllm",
            )
        rank = int(json.loads((result.folder / "adapter_config.json").read_text()).get("r") or 0)
        serve.loras.append((model_id, result.folder, rank))
    if any(m.prompt is not None and m.prompt.format != "messages" for m in plan.models):
        serve.notes.append(
            "vLLM asks chat requests in the tokenizer's chat template, not the run's prompt template; "
            "send completions in the template (or use --backend tunelab) to ask the model as it was trained"
        )
    return serve


def serve_vllm(
    target_text: str,
    adapters: Sequence[str],
    name: str | None,
    host: str,
    port: int,
    api_key: str | None,
    max_batch: int | None,
    say=print,
    trust_remote_code: bool = False,
) -> int:
    """Run vLLM's server in the foreground until it exits (SIGTERM / Ctrl-C are passed on); its exit code."""
    require_vllm()  # before any export work
    plan = plan_models(target_text, adapters, name, trust_remote_code)
    with tempfile.TemporaryDirectory(prefix="tunelab-vllm-") as tmp:
        serve = prepare_vllm(plan, Path(tmp))
        for note in serve.notes:
            say(f"note: {note}")
        cmd = vllm_command(serve, host, port, max_batch, trust_remote_code=trust_remote_code)
        say(f"serving {', '.join(m.id for m in plan.models)} with vLLM: {' '.join(cmd)}")
        env = {**os.environ, **({"VLLM_API_KEY": api_key} if api_key else {})}
        from tunelab.procs import exec_dies_with_parent

        proc = subprocess.Popen(cmd, env=env, preexec_fn=exec_dies_with_parent())  # stops if we are killed
        forward = lambda signum, _frame: proc.send_signal(signum)  # noqa: E731 - vLLM shuts down on its own terms
        previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            return proc.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
