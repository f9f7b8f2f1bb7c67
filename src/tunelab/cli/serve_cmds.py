"""CLI verb `tunelab serve`: an OpenAI-compatible server for a tuned model and its adapters."""

from __future__ import annotations

from typing import Annotated

import typer

from tunelab.cli.common import user_errors
from tunelab.cli.model_options import Device, TargetArg, Trust


@user_errors
def serve(
    target: TargetArg,
    host: Annotated[
        str,
        typer.Option(help="Address to bind; anything but 127.0.0.1 / localhost exposes the server to the network."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="TUNELAB_API_KEY",
            show_envvar=True,
            help="Require `Authorization: Bearer KEY` "
            "(prefer the env var: the command line is visible to other users).",
        ),
    ] = None,
    adapter: Annotated[
        list[str] | None,
        typer.Option("--adapter", help="Another LoRA adapter over the same base, NAME=PATH; repeatable."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Model id of TARGET (default: the run's or folder's name).")] = None,
    max_tokens_limit: Annotated[
        int, typer.Option("--max-tokens-limit", help="Most tokens one request may ask to generate.")
    ] = 1024,
    max_batch: Annotated[
        int,
        typer.Option(
            "--max-batch",
            help="Most sequences decoding at once (continuous batching; bounds the KV-cache "
            "memory). 1: one request at a time, the exact answers of `tunelab generate`.",
        ),
    ] = 16,
    max_body_mb: Annotated[
        float,
        typer.Option("--max-body-mb", help="Largest request body in MB; larger ones get a 413 before they are read."),
    ] = 4.0,
    backend: Annotated[
        str,
        typer.Option(
            help="tunelab: this process serves the model; vllm: start vLLM's OpenAI server on it "
            "(base + LoRA modules, same model ids; needs vLLM installed)."
        ),
    ] = "tunelab",
    device: Device = None,
    trust_remote_code: Trust = False,
):
    """An OpenAI-compatible server (/v1/completions, /v1/chat/completions, streaming) for TARGET and its
    adapters."""
    from tunelab.cli.common import _quiet_libraries, console
    from tunelab.serve.engine import load_engine

    adapters = adapter or []
    _check_args(port, max_tokens_limit, max_batch, max_body_mb, backend, api_key, adapters)
    if backend == "vllm":
        from tunelab.serve.vllm_backend import serve_vllm

        code = serve_vllm(
            target, adapters, name, host, port, api_key, max_batch, say=_say, trust_remote_code=trust_remote_code
        )
        raise typer.Exit(code)
    _quiet_libraries()
    engine = load_engine(
        target, adapters, name=name, device=device, max_batch=max_batch, trust_remote_code=trust_remote_code
    )
    from tunelab.serve.request_log import configure_logging
    from tunelab.serve.server import run_server

    configure_logging()
    _announce(engine, host, port, api_key, max_tokens_limit)
    run_server(engine, host, port, api_key, max_tokens_limit, max_body_bytes=int(max_body_mb * 2**20))
    console.print("server stopped")


def register(app: typer.Typer) -> None:
    """Add `serve` to the app."""
    app.command()(serve)


def _say(line: str) -> None:
    from tunelab.cli.common import console

    console.print(line, highlight=False, markup=False, soft_wrap=True)


def _check_args(
    port: int,
    max_tokens_limit: int,
    max_batch: int,
    max_body_mb: float,
    backend: str,
    api_key: str | None,
    adapters: list[str],
) -> None:
    """Every option checked before any weights load."""
    from tunelab.errors import TunelabError
    from tunelab.serve.engine import parse_adapter_spec

    if not 0 < port < 65536:
        raise TunelabError(f"--port: {port} is not a port number")
    if max_tokens_limit <= 0:
        raise TunelabError("--max-tokens-limit: must be positive")
    if max_batch < 1:
        raise TunelabError("--max-batch: must be at least 1")
    if not max_body_mb > 0:
        raise TunelabError("--max-body-mb: must be positive")
    if backend not in ("tunelab", "vllm"):
        raise TunelabError(f"--backend: {backend!r} is not tunelab or vllm")
    if api_key is not None and not api_key.strip():
        raise TunelabError("--api-key: empty")
    for spec in adapters:
        parse_adapter_spec(spec)


def _announce(engine, host: str, port: int, api_key: str | None, max_tokens_limit: int) -> None:
    """What is served where, with which limits; a warning when the port is open to the network without a key."""
    from tunelab.cli.common import console

    auth = "API key required" if api_key else "no API key"
    batching = f"batches of up to {engine.max_batch}" if engine.max_batch > 1 else "one request at a time"
    console.print(
        f"serving {', '.join(engine.models)} on http://{host}:{port}/v1 ({auth}, "
        f"context {engine.context_length} tokens, max_tokens <= {max_tokens_limit}, {batching}); Ctrl-C stops",
        highlight=False,
    )
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        console.print(
            f"[yellow]warning:[/] bound to {host} without an API key: anyone who can reach this port can use the model"
        )
