"""The `tunelab` command line: one verb per job."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from tunelab.cli.common import (  # re-exported: the area modules may import them from here
    ConfigArg,
    OverridesArg,
    _quiet_libraries,
    console,
    out,
    user_errors,
)
from tunelab.errors import TunelabError

app = typer.Typer(
    name="tunelab",
    help="Instruction fine-tuning of causal LMs with LoRA / QLoRA from one config file. Offline by default.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
@user_errors
def train(
    config: ConfigArg,
    overrides: OverridesArg = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run from its newest checkpoint.")] = False,
):
    """Fine-tune a model as the config says; writes runs/<name>/."""
    from tunelab.config import load_config

    cfg = load_config(config, overrides)
    _quiet_libraries()
    from tunelab.training.run import train as run_training

    import shlex

    command = shlex.join(["tunelab", "train", str(config), *(overrides or [])])
    s = run_training(cfg, config_path=config, resume=resume, console=console, command=command)
    _print_summary(s, cfg)


def _print_summary(s, cfg) -> None:
    from rich.table import Table

    t = Table(title=f"run {Path(s.run_dir).name}: {s.status}", show_header=False, title_justify="left")
    t.add_row("steps", str(s.steps))
    t.add_row("final train loss", _fmt(s.final_train_loss))
    t.add_row("final eval loss", _fmt(s.final_eval_loss))
    t.add_row("train tokens/s", f"{s.tokens_per_s:,.0f}")
    t.add_row("wall time", f"{s.wall_time_s:.1f} s (samples {s.sample_time_s:.1f} s)")
    t.add_row("peak memory", f"{s.peak_rss_mb:,.0f} MB RSS" + (f", {s.peak_gpu_mb:,.0f} MB GPU" if s.peak_gpu_mb else ""))
    if s.samples_exact_match_after is not None:
        before = s.samples_exact_match_before
        t.add_row("sample exact match", (f"{before:.1%} before -> " if before is not None else "") + f"{s.samples_exact_match_after:.1%} after")
    rd = s.run_dir
    t.add_row("written", f"{rd}/final (model + tokenizer), config.yaml, metrics.jsonl, samples.jsonl, summary.json")
    out.print(t)
    hint = try_it_command(rd, cfg)
    if hint:
        # a command is printed whole, never wrapped: it must paste back as it is
        out.print(Text.assemble("try it: ", (hint, "bold")), soft_wrap=True)


def try_it_command(run_dir: str, cfg) -> str | None:
    """A `tunelab generate` command for one of the run's own held-out prompts, in its prompt format."""
    import shlex

    from tunelab.data.prepare import load_splits

    try:
        train, test, _ = load_splits(cfg)
    except TunelabError:
        return None
    rows = test.rows or train.rows
    if not rows:
        return None
    row = rows[0]
    fmt = cfg.prompt.format
    if fmt == "alpaca":
        args = [row["instruction"], *(["--input", row["input"]] if row.get("input") else [])]
    elif fmt == "messages":
        users = [m for m in row["messages"] if m.get("role") == "user"]
        if not users:
            return None
        args = [users[-1]["content"]]
    elif fmt == "text":
        words = row[cfg.prompt.text_field].split()
        args = [" ".join(words[: min(8, max(1, len(words) // 2))])]
    else:
        return f"tunelab generate {shlex.quote(run_dir)} --file PROMPTS.jsonl   # rows with {cfg.prompt.template!r}'s fields"
    return shlex.join(["tunelab", "generate", run_dir, *args])


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


@app.command()
@user_errors
def validate(config: ConfigArg, overrides: OverridesArg = None):
    """Check a config and its data without loading any weights."""
    from tunelab.config import load_config
    from tunelab.data.prepare import load_splits
    from tunelab.model.tiny import PRESETS

    cfg = load_config(config, overrides)
    name = cfg.model.name
    if name.startswith("tiny:") and name.removeprefix("tiny:") not in PRESETS:
        raise TunelabError(f"model.name: unknown tiny preset {name!r} (known: {', '.join('tiny:' + p for p in PRESETS)})")
    if not name.startswith("tiny:") and (name.startswith((".", "/", "~")) or Path(name).exists()):
        from tunelab.model.loading import resolve_model_path

        resolve_model_path(name)
    _, _, stats = load_splits(cfg)
    skipped = f", skipped {stats['rows_skipped']}" if stats["rows_skipped"] else ""
    out.print(f"[green]ok[/] {config}: {stats['train_rows']} train rows, {stats['test_rows']} test rows{skipped}")


@app.command()
@user_errors
def tiny(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the model to.")],
    preset: Annotated[str, typer.Option(help="llama-2l, llama-4l or quickstart-base.")] = "llama-2l",
):
    """Build a tiny Llama model and tokenizer locally (safetensors, Hugging Face layout)."""
    from tunelab.model.tiny import PRESETS, build_tiny

    if preset not in PRESETS:
        raise TunelabError(f"--preset: unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    _quiet_libraries()
    build_tiny(out_dir, PRESETS[preset])
    out.print(f"wrote {out_dir} ({preset})")


@app.command()
@user_errors
def synth(
    out_file: Annotated[Path, typer.Option("--out", help="JSONL file to write.")],
    n: Annotated[int, typer.Option(help="Number of rows.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
):
    """Write seeded synthetic Alpaca-format tasks with exact answers."""
    from tunelab.data.synthetic import generate, write_jsonl

    if n <= 0:
        raise TunelabError("--n: must be positive")
    write_jsonl(generate(n, seed), out_file)
    out.print(f"wrote {n} rows to {out_file}")


from tunelab.cli import evaluate_cmds, inference_cmds, perf_cmds, sweep_cmds, tracking_cmds  # noqa: E402

for _area in (tracking_cmds, evaluate_cmds, inference_cmds, perf_cmds, sweep_cmds):
    _area.register(app)


def main() -> None:
    app(prog_name="tunelab")


if __name__ == "__main__":
    sys.exit(main())
