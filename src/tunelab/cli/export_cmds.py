"""CLI verbs that hand a tuned model to others: `tunelab merge` and `tunelab export` (hf, adapter, gguf)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.common import user_errors
from tunelab.cli.model_options import Device, Overwrite, TargetArg, Trust


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
    from tunelab.export.formats import hf_commands
    from tunelab.export.merge import merge_target
    from tunelab.inference.target import resolve_target

    t = resolve_target(target, trust_remote_code)
    _quiet_libraries()
    folder = out_dir.expanduser().absolute()  # check_output follows links (and names a loop)
    check = merge_target(t, folder, dtype, overwrite, device, usage=hf_commands(folder, t.name))
    out.print(f"[green]ok[/] {check.describe()}", highlight=False)
    out.print(f"wrote {folder} (safetensors, tokenizer, generation config, README.md model card)", highlight=False)


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
    from tunelab.cli.common import _quiet_libraries
    from tunelab.export.formats import check_format, export_target, hub_token
    from tunelab.export.formats import push_to_hub as push
    from tunelab.inference.target import resolve_target

    check_format(fmt, quant)
    if push_to_hub:
        hub_token()  # before loading weights: an upload without a token would fail after the export
    t = resolve_target(target, trust_remote_code)
    _quiet_libraries()
    result = export_target(t, out_dir, fmt, dtype, overwrite, quant)
    _print_result(result, fmt)
    if push_to_hub:
        from tunelab.cli.common import out

        out.print(f"pushed to {push(result.folder, push_to_hub, private=not public)}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `merge` and `export` to the app."""
    app.command()(merge)
    app.command()(export)


def _print_result(result, fmt: str) -> None:
    """The checks passed, what was written, notes, and the commands that serve or run it."""
    from rich.markup import escape

    from tunelab.cli.common import out

    for line in ([result.check.describe()] if result.check is not None else []) + result.checks:
        out.print("[green]ok[/] " + escape(line), highlight=False)
    out.print(f"wrote {result.folder} ({escape(result.wrote)})", highlight=False)
    for note in result.notes:
        out.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    out.print("serve it with one of:" if fmt != "gguf" else "run it with one of:", highlight=False)
    for cmd in result.usage:
        out.print(f"  {cmd}", highlight=False, markup=False, soft_wrap=True)
