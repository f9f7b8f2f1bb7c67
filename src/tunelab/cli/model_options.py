"""The arguments every verb that uses a tuned model shares (generate, chat, merge, export, serve).

TARGET is the same everywhere: a run directory, a model or adapter folder, a hub id (or a
reference a registered resolver understands), resolved by `tunelab.inference.target`.
"""

from __future__ import annotations

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
