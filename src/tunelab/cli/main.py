"""The `tunelab` command line: one verb per job."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from tunelab.cli.common import (
    ConfigArg,
    OverridesArg,
    _quiet_libraries,
    console,
    out,
    print_table,
    user_errors,
)
from tunelab.errors import TunelabError

if TYPE_CHECKING:
    from tunelab.config import RunConfig
    from tunelab.runs import Summary

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
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            help="Processes on this machine, one per GPU, started through torch's "
            "elastic launcher (torchrun); the config's distributed section says how they share the run.",
        ),
    ] = 1,
    nnodes: Annotated[
        int, typer.Option("--nnodes", help="Machines in the job; run this command on each with its --node-rank.")
    ] = 1,
    node_rank: Annotated[
        int, typer.Option("--node-rank", help="This machine's number, 0 to nnodes-1 (0 hosts the rendezvous).")
    ] = 0,
    master_addr: Annotated[
        str | None,
        typer.Option(
            "--master-addr", help="Address of the --node-rank 0 machine (needed with --nnodes > 1).", show_default=False
        ),
    ] = None,
    master_port: Annotated[
        int | None,
        typer.Option(
            "--master-port",
            help="Rendezvous port there (default: a free one on one machine, 29500 across machines).",
            show_default=False,
        ),
    ] = None,
):
    """Fine-tune a model as the config says; writes runs/<name>/.

    With --nproc N (and --nnodes M) the run is N x M processes: DDP for LoRA / QLoRA, FSDP2 for full
    fine-tuning that does not fit one GPU (config: distributed.strategy). `torchrun -m tunelab train ...`
    and `accelerate launch -m tunelab train ...` work the same way. Each step then takes
    batch_size x grad_accum x N x M sequences.
    """
    from tunelab.config import load_config
    from tunelab.training.launch import Launch

    launch = Launch(nproc, nnodes, node_rank, master_addr, master_port)
    launch.check()  # also alone: --node-rank 5 or --master-port 70000 with one machine is a mistake too
    cfg = load_config(config, overrides)
    if (nproc, nnodes) != (1, 1):
        from tunelab.training.launch import early_checks, launch_run

        port = early_checks(cfg, launch)  # the flags, the strategy, the port: refused before any library loads
        raise typer.Exit(launch_run(cfg, config, overrides, resume, launch, port, console))
    from tunelab.training.distributed import World, check_launch_env, check_launched, launch_command

    check_launch_env()  # WORLD_SIZE=2 left in a shell: said by every process (none is a rank of a real job)
    world = World.from_env()  # one of several processes started by a launcher, or alone
    if not world.is_main:
        console.quiet = True  # rank 0 speaks for the job
    warning = check_launched(cfg, world)  # LOCAL_WORLD_SIZE 64 on a small machine: refused before anything loads
    if warning:
        console.print(Text(f"warning: {warning}", style="yellow"), highlight=False, soft_wrap=True)
    _quiet_libraries()
    from tunelab.training.run import train as run_training

    command = launch_command(config, overrides, world)
    s = run_training(cfg, config_path=config, resume=resume, console=console, command=command)
    if world.is_main:
        _print_summary(s, cfg)


def _print_summary(s: Summary, cfg: RunConfig) -> None:
    from rich.table import Table

    t = Table(title=f"run {Path(s.run_dir).name}: {s.status}", show_header=False, title_justify="left")
    t.add_row("steps", str(s.steps))
    t.add_row("final train loss", _fmt(s.final_train_loss))
    t.add_row("final eval loss", _fmt(s.final_eval_loss))
    t.add_row(
        "train tokens/s",
        f"{s.tokens_per_s:,.0f}" + (f" ({s.world_size} processes, {s.strategy})" if (s.world_size or 1) > 1 else ""),
    )
    if s.global_batch:
        t.add_row("global batch", f"{s.global_batch} sequences per step")
    t.add_row("wall time", f"{s.wall_time_s:.1f} s (samples {s.sample_time_s:.1f} s)")
    t.add_row(
        "peak memory",
        f"{s.peak_rss_mb:,.0f} MB RSS"
        + (f", {s.peak_gpu_mb:,.0f} MB GPU" if s.peak_gpu_mb else "")
        + (" (all processes)" if (s.world_size or 1) > 1 else ""),
    )
    if s.mfu is not None:
        t.add_row("MFU", f"{s.mfu:.1%} of {s.peak_tflops:,.2f} TFLOP/s measured")
    if s.samples_exact_match_after is not None:
        before = s.samples_exact_match_before
        t.add_row(
            "sample exact match",
            (f"{before:.1%} before -> " if before is not None else "") + f"{s.samples_exact_match_after:.1%} after",
        )
    for label, text in _preference_rows(s):
        t.add_row(label, text)
    rd = s.run_dir
    t.add_row("written", f"{rd}/final (model + tokenizer), config.yaml, metrics.jsonl, samples.jsonl, summary.json")
    out.print(t)
    hint = try_it_command(rd, cfg)
    if hint:
        # a command is printed whole, never wrapped: it must paste back as it is
        out.print(Text.assemble("try it: ", (hint, "bold")), soft_wrap=True)


def _preference_rows(s) -> list[tuple[str, str]]:
    """A preference run's held-out accuracy (before -> after, from the summary) and its last margin
    (metrics.jsonl: the summary keeps only the accuracy); none for SFT."""
    from tunelab.runs import RunDir
    from tunelab.runs.reading import read_jsonl

    after = getattr(s, "preference_accuracy_after", None)
    if not isinstance(after, int | float):
        return []
    before = getattr(s, "preference_accuracy_before", None)
    rows = [
        (
            "preference accuracy",
            (f"{before:.1%} before -> " if isinstance(before, int | float) else "") + f"{after:.1%} after",
        )
    ]
    logged, _ = read_jsonl(RunDir(Path(s.run_dir)).metrics)
    margins = [m["preference_margin"] for m in logged if isinstance(m.get("preference_margin"), int | float)]
    if margins:
        rows.append(
            (
                "preference margin",
                f"{margins[0]:.3f} -> {margins[-1]:.3f} nats (chosen - rejected, first -> last evaluation)",
            )
        )
    return rows


def try_it_command(run_dir: str, cfg: RunConfig) -> str | None:
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
        return (
            f"tunelab generate {shlex.quote(run_dir)} --file PROMPTS.jsonl   "
            f"# rows with {cfg.prompt.template!r}'s fields"
        )
    return shlex.join(["tunelab", "generate", run_dir, *args])


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


@app.command()
@user_errors
def validate(
    config: ConfigArg,
    overrides: OverridesArg = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Check as for `train --resume` (a checkpoint to continue).")
    ] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 2 on notes too (things that could not be checked, e.g. offline).")
    ] = False,
    nproc: Annotated[
        int,
        typer.Option("--nproc", help="Check as for `train --nproc N`: the strategy, and whether N processes fit here."),
    ] = 1,
):
    """Check everything about a run without loading weights: config, device, precision, model, data, output folders.

    Every problem is reported at once; what cannot be checked here (a hub model while offline) is a
    note, and the rest still counts.
    """
    from tunelab.config import load_config
    from tunelab.training.preflight import preflight

    cfg = load_config(config, overrides)
    report = preflight(cfg, resume=resume, nproc=nproc)
    for f in report.findings:  # diagnostics on stderr; the verdict on stdout
        style = {"problem": "red", "note": "yellow", "ok": "green"}[f.severity]
        hint = f"; {f.hint}" if f.hint and f.severity != "ok" else ""
        console.print(Text.assemble((f"{f.severity:7s} ", style), f.line() + hint), highlight=False, soft_wrap=True)
    problems, notes = report.problems, report.notes
    if problems or (strict and notes):
        n = len(problems) + (len(notes) if strict else 0)
        raise TunelabError(f"{config}: {n} problem{'s' if n != 1 else ''} (listed above)")
    rows = report.stats
    what = f"{rows['train_rows']} train rows, {rows['test_rows']} test rows" if rows else "data not checked"
    skipped = f", skipped {rows['rows_skipped']}" if rows.get("rows_skipped") else ""
    note = f" ({len(notes)} note{'s' if len(notes) != 1 else ''})" if notes else ""
    out.print(Text.assemble(("ok", "green"), f" {config}: {what}{skipped}{note}"), highlight=False, soft_wrap=True)


@app.command("config")
@user_errors
def config_schema(
    section: Annotated[
        str | None, typer.Argument(help="Only this section (model, data, training, ...).", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The JSON schema of the whole config instead.")] = False,
):
    """Every config field: its dotted key, type, default and what it does."""
    import json

    from tunelab.config.describe import describe_fields
    from tunelab.config.schema import RunConfig

    if as_json:
        out.print_json(json.dumps(RunConfig.model_json_schema()))
        return
    rows = describe_fields(RunConfig)
    if section is not None:
        rows = [r for r in rows if r[0].split(".")[0] == section]
        if not rows:
            sections = sorted({r[0].split(".")[0] for r in describe_fields(RunConfig)})
            raise TunelabError(f"{section}: no such config section (sections: {', '.join(sections)})")
    print_table(["key", "type", "default", "description"], rows, title="tunelab run config")


@app.command()
@user_errors
def tiny(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the model to.")],
    preset: Annotated[str, typer.Option(help="llama-2l, llama-4l or quickstart-base.")] = "llama-2l",
):
    """Build a tiny Llama model and tokenizer locally (safetensors, Hugging Face layout)."""
    from tunelab.model.tiny import PRESETS, TINY_MODEL, build_tiny
    from tunelab.outputs import check_output

    if preset not in PRESETS:
        raise TunelabError(f"--preset: unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    folder = check_output(out_dir, "--out", TINY_MODEL, overwrite=True)
    _quiet_libraries()
    build_tiny(folder, PRESETS[preset])
    out.print(f"wrote {out_dir} ({preset})")


@app.command()
@user_errors
def synth(
    out_file: Annotated[Path, typer.Option("--out", help="JSONL file to write.")],
    n: Annotated[int, typer.Option(help="Number of rows.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
):
    """Write seeded synthetic Alpaca-format tasks with exact answers."""
    from tunelab.data.synthetic import SYNTHETIC_DATA, generate, write_jsonl
    from tunelab.outputs import check_output
    from tunelab.refs import synthetic_rows_problem

    problem = synthetic_rows_problem(n)
    if problem:
        raise TunelabError(f"--n: {problem}")
    write_jsonl(generate(n, seed), check_output(out_file, "--out", SYNTHETIC_DATA, overwrite=True))
    out.print(f"wrote {n} rows to {out_file}")


@app.command()
@user_errors
def scorers():
    """List the scorers eval.scorers and `tunelab eval --scorer` take: name, direction, reference, parameters."""
    from rich.table import Table

    from tunelab.scoring import DEFAULT_SCORERS, REGISTRY

    t = Table(title="scorers: eval.scorers takes NAME or {NAME: {PARAM: VALUE}}", title_justify="left")
    for column in ("scorer", "better", "reference", "parameters", "what it scores"):
        t.add_column(column)
    # the default set first, as eval reports it, then the rest by name
    for kind in sorted(REGISTRY.values(), key=lambda k: (k.name not in DEFAULT_SCORERS, _default_rank(k.name))):
        better = {1: "higher", -1: "lower", 0: "-"}[kind.direction]
        t.add_row(kind.name, better, "needed" if kind.needs_reference else "-", _params(kind.params), kind.doc)
    out.print(t)


def _default_rank(name: str):
    from tunelab.scoring import DEFAULT_SCORERS

    return DEFAULT_SCORERS.index(name) if name in DEFAULT_SCORERS else name


def _params(model) -> str:
    """A parameter model's fields as `name=default` (`name` alone when required), its own fields only."""
    from pydantic_core import PydanticUndefined

    shown = []
    for field_name, f in model.model_fields.items():
        if field_name == "name":  # every scorer takes it
            continue
        key = f.alias or field_name
        shown.append(key if f.default is PydanticUndefined else f"{key}={f.default}")
    return ", ".join(shown) or "-"


from tunelab.cli import (  # noqa: E402
    evaluate_cmds,
    export_cmds,
    generate_cmds,
    perf_cmds,
    serve_cmds,
    sweep_cmds,
    tracking_cmds,
)

for _area in (tracking_cmds, evaluate_cmds, generate_cmds, export_cmds, serve_cmds, perf_cmds, sweep_cmds):
    _area.register(app)


def main() -> None:
    from tunelab.procs import die_with_parent

    if not die_with_parent():  # started by a process that is gone already: nothing to run for
        sys.stderr.write("tunelab: the process that started this one has exited; stopping\n")
        sys.exit(143)
    app(prog_name="tunelab")


if __name__ == "__main__":
    sys.exit(main())
