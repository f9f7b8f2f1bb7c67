"""Pieces every CLI area shares: consoles, argument types, the user-error wrapper, quiet libraries."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from tunelab.errors import TunelabError

# emoji off: user text such as `synthetic:100:...` must print as written, not as an emoji code
console = Console(stderr=True, emoji=False)
out = Console(emoji=False)

ConfigArg = Annotated[Path, typer.Argument(help="Run config (YAML).", show_default=False)]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="Dotted overrides, e.g. adapter.r=16 training.learning_rate=1e-4.", show_default=False),
]


def print_table(columns: list[str], rows: list[list], title: str | None = None) -> None:
    """A table on stdout: boxed in a terminal; outside one (a file, a pipe, grep) tab-separated with
    every value whole, one row per line, so nothing is squeezed into `qui…`."""
    cells = [["-" if v is None else str(v) for v in row] for row in rows]
    if not out.is_terminal:
        import sys

        sys.stdout.write("\t".join(columns) + "\n")
        for row in cells:
            sys.stdout.write("\t".join(c.replace("\t", " ").replace("\n", " ") for c in row) + "\n")
        sys.stdout.flush()
        return
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold")
    for row in cells:
        t.add_row(*(Text(c) for c in row))  # values shown as they are: `[x]` is not markup
    out.print(t)


def user_errors(fn):
    """Turn user errors into one red line (plus hint) and exit code 2; bugs keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TunelabError as e:
            # user text (paths, data values) may hold rich markup or emoji codes: print it as it is
            # soft_wrap: a message (and the command in a hint) is never broken across lines
            console.print(Text.assemble(("error:", "bold red"), " ", e.message), highlight=False, soft_wrap=True)
            if e.hint:
                console.print(Text(f"hint: {e.hint}", style="dim"), highlight=False, soft_wrap=True)
            raise typer.Exit(getattr(e, "exit_code", 2)) from None

    return wrapper


# Modules whose warnings tunelab's output leaves out (they speak to library authors, not users).
LIBRARY_MODULES = (
    r"(transformers|trl|peft|bitsandbytes|torch|datasets|accelerate|huggingface_hub|tokenizers|trackio|"
    r"wandb|mlflow|gradio|gradio_client|pydantic|tensorboard|evaluate|rouge_score|sacrebleu|matplotlib)(\.|$)"
)


def _quiet_libraries() -> None:
    """Keep the terminal for tunelab's own output: library progress bars and info logs off."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging
    import warnings

    # bitsandbytes tries to fetch a CPU kernel from the hub at import and warns when it cannot
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    logging.getLogger("trl").setLevel(logging.ERROR)
    # the libraries' own deprecation and advice warnings, by module: tunelab's own warnings still show
    for category in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=LIBRARY_MODULES)
