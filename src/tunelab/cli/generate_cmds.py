"""CLI verbs that ask a tuned model: `tunelab generate` (one instruction or a file of prompts) and `tunelab chat`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.common import user_errors
from tunelab.cli.model_options import Device, MaxNewTokens, Seed, TargetArg, Temperature, TopP, Trust


@user_errors
def generate(
    target: TargetArg,
    instruction: Annotated[str | None, typer.Argument(help="The instruction to answer.", show_default=False)] = None,
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
    _generate_one(target, instruction or "", input, settings, device, trust_remote_code)


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
    from tunelab.inference.chat_session import ChatSession
    from tunelab.inference.generate import context_length
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
        _chat_loop(session, model, tokenizer, settings)


def register(app: typer.Typer) -> None:
    """Add `generate` and `chat` to the app."""
    app.command()(generate)
    app.command()(chat)


def _settings(max_new_tokens: int, temperature: float, top_p: float, seed: int, batch_size: int = 1):
    from pydantic import ValidationError

    from tunelab.errors import TunelabError
    from tunelab.inference.generate import GenerationSettings

    if max_new_tokens <= 0:
        raise TunelabError("--max-new-tokens: must be positive")
    if not 0 <= temperature < float("inf"):  # NaN too
        raise TunelabError("--temperature: must be 0 (greedy) or positive")
    if not 0 < top_p <= 1:
        raise TunelabError("--top-p: must be in (0, 1]")
    if batch_size <= 0:
        raise TunelabError("--batch-size: must be positive")
    try:
        return GenerationSettings(
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature or 1.0,
            top_p=top_p,
            batch_size=batch_size,
            seed=seed,
        )
    except ValidationError as e:  # the settings' own bounds (the seed's range) say which option is out
        first = e.errors()[0]
        raise TunelabError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None


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


def _generate_one(target: str, instruction: str, input: str, settings, device: str | None, trust: bool) -> None:
    """One answer, streamed to stdout as it is generated."""
    from tunelab.cli.common import console
    from tunelab.inference.generate import encode_prompt, stream_generate
    from tunelab.inference.prompts import instruction_row, prompt_text

    t, model, tokenizer, prompt_cfg = _load(target, device, trust)
    ids = encode_prompt(tokenizer, prompt_text(instruction_row(instruction, input, prompt_cfg), prompt_cfg, tokenizer))
    _check_room(model, len(ids), settings.max_new_tokens)
    console.print(f"[dim]{t.name}: {prompt_cfg.format} prompt, {len(ids)} tokens[/]", highlight=False)
    for piece in stream_generate(model, tokenizer, ids, settings):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def _generate_file(target: str, file: Path, out_file: Path | None, settings, device: str | None, trust: bool) -> None:
    """Answers to every prompt of `file`, written (staged, then renamed) next to it or to `out_file`."""
    import json
    import time

    from rich.progress import Progress

    from tunelab.cli.common import console, out
    from tunelab.inference.generate import generate_batch
    from tunelab.inference.prompts import prompt_text, read_prompt_file
    from tunelab.inference.target import resolve_target, source_folders
    from tunelab.outputs import Output, check_output, staged_file

    resolved = resolve_target(target, trust)
    # before loading weights: where the answers go, and (when the format is known) the prompts themselves
    dest = out_file or file.with_name(file.name.removesuffix(".jsonl") + ".generations.jsonl")
    generations = Output("the answers of `tunelab generate --file`", _is_generations)
    dest = check_output(dest, "--out", generations, [file, *source_folders(resolved)], overwrite=True)
    rows, written = read_prompt_file(file, resolved.prompt) if resolved.prompt_known else (None, None)
    t, model, tokenizer, prompt_cfg = _load(target, device, trust)
    if rows is None:
        rows, written = read_prompt_file(file, prompt_cfg)
    prompts = [prompt_text(r, prompt_cfg, tokenizer) for r in rows]
    start = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("generate", total=len(prompts))
        answers = generate_batch(model, tokenizer, prompts, settings, on_batch=lambda n: progress.advance(task, n))
    with staged_file(dest) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row, answer in zip(written, answers, strict=True):
            f.write(json.dumps({**row, "generation": answer}, ensure_ascii=False) + "\n")
    out.print(
        f"wrote {len(answers)} answers to {dest} ({time.perf_counter() - start:.1f} s, {prompt_cfg.format} prompts)",
        highlight=False,
    )


def _chat_loop(session, model, tokenizer, settings) -> None:
    """Read a line, answer it (streamed), until /exit or end of input."""
    from tunelab.cli.common import console
    from tunelab.errors import TunelabError

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
            console.print(f"[dim]unknown command {line}; /reset clears the history, /exit quits[/]", highlight=False)
            continue
        try:
            ids = session.ask(line)
        except TunelabError as e:
            console.print(f"[red]{e.message}[/]", highlight=False)
            continue
        session.answered(_stream_answer(model, tokenizer, ids, settings))


def _stream_answer(model, tokenizer, ids: list[int], settings) -> str:
    """One chat answer streamed to stdout; Ctrl-C stops this answer, not the chat."""
    from tunelab.cli.common import console
    from tunelab.inference.generate import stream_generate

    pieces: list[str] = []
    try:
        for piece in stream_generate(model, tokenizer, ids, settings, dense_weights=False):
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        console.print(" [dim](interrupted)[/]")
    sys.stdout.write("\n")
    return "".join(pieces)
