"""CLI verbs for using a tuned model: generate, chat, merge, export, serve.

TARGET is the same everywhere: a run directory, a model or adapter folder, a hub id (or a
reference a registered resolver understands), resolved by `tunelab.inference.target`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

TargetArg = Annotated[
    str, typer.Argument(help="A run directory, a model or adapter folder, or a hub id.", show_default=False)
]
MaxNewTokens = Annotated[int, typer.Option("--max-new-tokens", help="Most tokens to generate per answer.")]
Temperature = Annotated[float, typer.Option(help="0: greedy decoding; above 0: sample at this temperature.")]
TopP = Annotated[float, typer.Option("--top-p", help="Nucleus sampling threshold (with --temperature > 0).")]
Seed = Annotated[int, typer.Option(help="Sampling seed.")]
Device = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N (default: the run's model.device).")]
Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Replace an earlier tunelab model folder (never the input or other files).")
]
Trust = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        help="Allow the model's own Python code (auto_map). Off "
        "unless given here: a run's saved config never grants it.",
    ),
]


def _settings(max_new_tokens: int, temperature: float, top_p: float, seed: int, batch_size: int = 1):
    from tunelab.errors import TunelabError
    from tunelab.inference.generate import GenerationSettings

    if max_new_tokens <= 0:
        raise TunelabError("--max-new-tokens: must be positive")
    if temperature < 0:
        raise TunelabError("--temperature: must be 0 (greedy) or positive")
    if not 0 < top_p <= 1:
        raise TunelabError("--top-p: must be in (0, 1]")
    if batch_size <= 0:
        raise TunelabError("--batch-size: must be positive")
    return GenerationSettings(
        max_new_tokens=max_new_tokens,
        do_sample=temperature > 0,
        temperature=temperature or 1.0,
        top_p=top_p,
        batch_size=batch_size,
        seed=seed,
    )


def _load(target_text: str, device: str | None, trust_remote_code: bool = False):
    """Resolve and load TARGET; (target, model, tokenizer, prompt format)."""
    from tunelab.cli.common import _quiet_libraries
    from tunelab.inference.target import inference_prompt, load_target, resolve_target

    target = resolve_target(target_text, trust_remote_code)
    _quiet_libraries()
    model, tokenizer = load_target(target, device=device)
    return target, model, tokenizer, inference_prompt(target, tokenizer)


def _is_generations(path: Path) -> bool:
    """Whether `path` is what `generate --file` writes: JSON Lines whose rows carry a "generation"."""
    import json

    try:
        with path.open(encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        row = json.loads(first)
    except (OSError, ValueError):
        return False
    return isinstance(row, dict) and "generation" in row


def _check_room(model, n_prompt: int, max_new: int) -> None:
    from tunelab.errors import TunelabError
    from tunelab.inference.generate import context_length

    ctx = context_length(model)
    if n_prompt + max_new > ctx:
        raise TunelabError(
            f"the prompt has {n_prompt} tokens; with --max-new-tokens {max_new} "
            f"that exceeds the model's context of {ctx}"
        )


def register(app: typer.Typer) -> None:
    """Add generate, chat, merge, export and serve to the app."""
    from tunelab.cli.common import user_errors

    @app.command()
    @user_errors
    def generate(
        target: TargetArg,
        instruction: Annotated[
            str | None, typer.Argument(help="The instruction to answer.", show_default=False)
        ] = None,
        input: Annotated[
            str, typer.Option("--input", help="Input / context for the instruction (Alpaca's input field).")
        ] = "",
        file: Annotated[
            Path | None, typer.Option("--file", help="JSONL file of prompts (rows in the run's data format).")
        ] = None,
        out_file: Annotated[
            Path | None,
            typer.Option("--out", help="With --file: where to write the answers (default PROMPTS.generations.jsonl)."),
        ] = None,
        max_new_tokens: MaxNewTokens = 256,
        temperature: Temperature = 0.0,
        top_p: TopP = 1.0,
        seed: Seed = 0,
        batch_size: Annotated[int, typer.Option(help="With --file: prompts generated together.")] = 16,
        device: Device = None,
        trust_remote_code: Trust = False,
    ):
        """Answer an instruction (streamed as it is generated) or a file of prompts, in the format the model was
        trained on."""
        from tunelab.errors import TunelabError

        if (instruction is None) == (file is None):
            raise TunelabError(
                "give either an INSTRUCTION or --file PROMPTS.jsonl",
                hint='tunelab generate runs/r1 "Reverse the words." --input "a b c"',
            )
        settings = _settings(max_new_tokens, temperature, top_p, seed, batch_size)
        if file is not None:
            _generate_file(target, file, out_file, settings, device, trust_remote_code)
            return
        from tunelab.cli.common import console
        from tunelab.inference.generate import encode_prompt, stream_generate
        from tunelab.inference.prompts import instruction_row, prompt_text

        t, model, tokenizer, prompt_cfg = _load(target, device, trust_remote_code)
        ids = encode_prompt(
            tokenizer, prompt_text(instruction_row(instruction or "", input, prompt_cfg), prompt_cfg, tokenizer)
        )
        _check_room(model, len(ids), max_new_tokens)
        console.print(f"[dim]{t.name}: {prompt_cfg.format} prompt, {len(ids)} tokens[/]", highlight=False)
        for piece in stream_generate(model, tokenizer, ids, settings):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")

    def _generate_file(
        target: str, file: Path, out_file: Path | None, settings, device: str | None, trust: bool
    ) -> None:
        import json
        import time

        from rich.progress import Progress

        from tunelab.cli.common import console, out
        from tunelab.inference.folder import source_folders
        from tunelab.inference.generate import generate_batch
        from tunelab.inference.prompts import prompt_text, read_prompt_rows
        from tunelab.inference.target import resolve_target
        from tunelab.outputs import Output, check_output, staged_file

        resolved = resolve_target(target, trust)
        # before loading weights: where the answers go, and (when the format is known) the prompts themselves
        dest = out_file or file.with_name(file.name.removesuffix(".jsonl") + ".generations.jsonl")
        generations = Output("the answers of `tunelab generate --file`", _is_generations)
        dest = check_output(dest, "--out", generations, [file, *source_folders(resolved)], overwrite=True)
        rows = read_prompt_rows(file, resolved.prompt) if resolved.prompt_known else None
        t, model, tokenizer, prompt_cfg = _load(target, device, trust)
        rows = rows or read_prompt_rows(file, prompt_cfg)
        prompts = [prompt_text(r, prompt_cfg, tokenizer) for r in rows]
        start = time.perf_counter()
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("generate", total=len(prompts))
            answers = generate_batch(model, tokenizer, prompts, settings, on_batch=lambda n: progress.advance(task, n))
        with staged_file(dest) as tmp, tmp.open("w", encoding="utf-8") as f:
            for row, answer in zip(rows, answers, strict=True):
                f.write(json.dumps({**row, "generation": answer}, ensure_ascii=False) + "\n")
        out.print(
            f"wrote {len(answers)} answers to {dest} "
            f"({time.perf_counter() - start:.1f} s, {prompt_cfg.format} prompts)",
            highlight=False,
        )

    @app.command()
    @user_errors
    def chat(
        target: TargetArg,
        system: Annotated[str | None, typer.Option(help="System message (chat-template models).")] = None,
        max_new_tokens: MaxNewTokens = 256,
        temperature: Temperature = 0.0,
        top_p: TopP = 1.0,
        seed: Seed = 0,
        device: Device = None,
        trust_remote_code: Trust = False,
    ):
        """Talk to a model in the terminal: multi-turn for chat-trained models, one instruction at a time for
        Alpaca-style ones. /reset, /exit."""
        from tunelab.cli.common import console
        from tunelab.errors import TunelabError
        from tunelab.inference.chat import ChatSession
        from tunelab.inference.generate import context_length, stream_generate
        from tunelab.model.dense import generation_weights, generation_weights_fit

        settings = _settings(max_new_tokens, temperature, top_p, seed)
        t, model, tokenizer, prompt_cfg = _load(target, device, trust_remote_code)
        session = ChatSession(tokenizer, prompt_cfg, context_length(model) - max_new_tokens, system)
        mode = (
            "multi-turn (chat template)"
            if session.multi_turn
            else f"single-turn: each message is asked on its own ({prompt_cfg.format} template)"
        )
        console.print(f"chat with [bold]{t.name}[/], {mode}. /reset clears the history, /exit quits.", highlight=False)
        if sys.stdin.isatty():
            import readline  # noqa: F401  (line editing and history for input())
        # dense, LoRA-merged weights for the whole session (built once, not per turn), when they fit
        with generation_weights(model, generation_weights_fit(model)):
            while True:
                try:
                    line = input(">>> ").strip()
                except (EOFError, KeyboardInterrupt):
                    sys.stdout.write("\n")
                    break
                if not line:
                    continue
                if line in ("/exit", "/quit"):
                    break
                if line == "/reset":
                    session.reset()
                    console.print("[dim]history cleared[/]")
                    continue
                if line.startswith("/"):
                    console.print(
                        f"[dim]unknown command {line}; /reset clears the history, /exit quits[/]", highlight=False
                    )
                    continue
                try:
                    ids = session.ask(line)
                except TunelabError as e:
                    console.print(f"[red]{e.message}[/]", highlight=False)
                    continue
                pieces: list[str] = []
                try:
                    for piece in stream_generate(model, tokenizer, ids, settings, dense_weights=False):
                        pieces.append(piece)
                        sys.stdout.write(piece)
                        sys.stdout.flush()
                except KeyboardInterrupt:  # stops this answer, not the chat
                    console.print(" [dim](interrupted)[/]")
                sys.stdout.write("\n")
                session.answered("".join(pieces))

    @app.command()
    @user_errors
    def merge(
        target: TargetArg,
        out_dir: Annotated[
            Path, typer.Option("-o", "--out", help="Folder to write the merged model to.", show_default=False)
        ],
        dtype: Annotated[
            str, typer.Option(help="bf16, fp16 or fp32; auto: the dtype the base model was published in.")
        ] = "auto",
        overwrite: Overwrite = False,
        device: Device = None,
        trust_remote_code: Trust = False,
    ):
        """Merge a LoRA adapter into its base (reloaded unquantized) and check the merged logits match the adapter
        model's."""
        from tunelab.cli.common import _quiet_libraries, out
        from tunelab.inference.export import hf_commands
        from tunelab.inference.merge import merge_target
        from tunelab.inference.target import resolve_target

        t = resolve_target(target, trust_remote_code)
        _quiet_libraries()
        folder = out_dir.expanduser().resolve()
        check = merge_target(t, folder, dtype, overwrite, device, usage=hf_commands(folder, t.name))
        out.print(f"[green]ok[/] {check.describe()}", highlight=False)
        out.print(f"wrote {folder} (safetensors, tokenizer, generation config, README.md model card)", highlight=False)

    @app.command()
    @user_errors
    def export(
        target: TargetArg,
        fmt: Annotated[
            str,
            typer.Option(
                "--format",
                help="hf: a full model folder (LoRA merged); adapter: the PEFT adapter alone; "
                "gguf: one GGUF file (LoRA merged) + an Ollama Modelfile, for llama.cpp, Ollama, LM Studio.",
            ),
        ],
        out_dir: Annotated[Path, typer.Option("-o", "--out", help="Folder to write.", show_default=False)],
        dtype: Annotated[
            str, typer.Option(help="hf, gguf: bf16, fp16 or fp32 for the merge; auto: the base model's dtype.")
        ] = "auto",
        quant: Annotated[
            str | None,
            typer.Option(
                "--quant",
                help="gguf: f16 (default), bf16, q8_0, q5_0, q4_0 or f32. Converted from "
                "the merged unquantized weights; norms stay f32.",
            ),
        ] = None,
        overwrite: Overwrite = False,
        push_to_hub: Annotated[
            str | None, typer.Option("--push-to-hub", help="Also upload to this hub repo (token from env HF_TOKEN).")
        ] = None,
        public: Annotated[
            bool, typer.Option("--public", help="With --push-to-hub: create the repo public (default private).")
        ] = False,
        trust_remote_code: Trust = False,
    ):
        """Write a folder serving engines load as it is (vLLM, TGI, transformers, PEFT, llama.cpp, Ollama) and print
        the commands that serve it."""
        from rich.markup import escape

        from tunelab.cli.common import _quiet_libraries, out
        from tunelab.errors import TunelabError
        from tunelab.inference.export import export_target
        from tunelab.inference.export import push_to_hub as push
        from tunelab.inference.target import resolve_target

        if fmt not in ("hf", "adapter", "gguf"):
            raise TunelabError(f"--format: {fmt!r} is not hf, adapter or gguf")
        if quant is not None:
            from tunelab.inference.gguf import check_quant

            if fmt != "gguf":
                raise TunelabError("--quant: only with --format gguf")
            check_quant(quant)
        if push_to_hub and not os.environ.get("HF_TOKEN"):
            raise TunelabError(
                "--push-to-hub: HF_TOKEN is not set",
                hint="export HF_TOKEN=<a write token>; tunelab reads it from the environment only",
            )
        t = resolve_target(target, trust_remote_code)
        _quiet_libraries()
        result = export_target(t, out_dir, fmt, dtype, overwrite, quant)
        for line in ([result.check.describe()] if result.check is not None else []) + result.checks:
            out.print("[green]ok[/] " + escape(line), highlight=False)
        out.print(f"wrote {result.folder} ({escape(result.wrote)})", highlight=False)
        for note in result.notes:
            out.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
        out.print("serve it with one of:" if fmt != "gguf" else "run it with one of:", highlight=False)
        for cmd in result.usage:
            out.print(f"  {cmd}", highlight=False, markup=False, soft_wrap=True)
        if push_to_hub:
            out.print(f"pushed to {push(result.folder, push_to_hub, private=not public)}", highlight=False)

    @app.command()
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
        name: Annotated[
            str | None, typer.Option(help="Model id of TARGET (default: the run's or folder's name).")
        ] = None,
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
            typer.Option(
                "--max-body-mb", help="Largest request body in MB; larger ones get a 413 before they are read."
            ),
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
        from tunelab.errors import TunelabError
        from tunelab.inference.engine import load_engine, parse_adapter_spec

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
        for spec in adapter or []:
            parse_adapter_spec(spec)  # fail before loading weights
        if backend == "vllm":
            from tunelab.inference.vllm_backend import serve_vllm

            code = serve_vllm(
                target,
                adapter or [],
                name,
                host,
                port,
                api_key,
                max_batch,
                say=lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True),
                trust_remote_code=trust_remote_code,
            )
            raise typer.Exit(code)
        _quiet_libraries()
        engine = load_engine(
            target, adapter or [], name=name, device=device, max_batch=max_batch, trust_remote_code=trust_remote_code
        )
        from tunelab.inference.server import configure_logging, run_server

        configure_logging()
        auth = "API key required" if api_key else "no API key"
        batching = f"batches of up to {engine.max_batch}" if engine.max_batch > 1 else "one request at a time"
        console.print(
            f"serving {', '.join(engine.models)} on http://{host}:{port}/v1 ({auth}, "
            f"context {engine.context_length} tokens, max_tokens <= {max_tokens_limit}, {batching}); Ctrl-C stops",
            highlight=False,
        )
        if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
            console.print(
                f"[yellow]warning:[/] bound to {host} without an API key: "
                "anyone who can reach this port can use the model"
            )
        run_server(engine, host, port, api_key, max_tokens_limit, max_body_bytes=int(max_body_mb * 2**20))
        console.print("server stopped")
