"""CLI verb for hyper-parameter sweeps: `tunelab sweep SWEEP.yaml [--resume | --status | --worker]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.common import user_errors


@user_errors
def sweep(
    sweep_file: Annotated[
        Path,
        typer.Argument(help="Sweep file (YAML): base config, search space, method, objective.", show_default=False),
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="Overrides of the sweep file's own keys, e.g. parallel=2 trials=20 'space.adapter.r=[8,16]'.",
            show_default=False,
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the sweep's study (running it again does too; --resume also insists that it exists).",
        ),
    ] = False,
    status: Annotated[
        bool,
        typer.Option(
            "--status",
            help="Print the ranked trial table and write best.yaml, "
            "results.json and report.html from the study as it is; train nothing.",
        ),
    ] = False,
    worker: Annotated[
        bool,
        typer.Option(
            "--worker",
            help="Be one worker of the sweep: run its trials until it has "
            "them all. Start one per machine that reaches the same storage URL.",
        ),
    ] = False,
    validate_only: Annotated[
        bool, typer.Option("--validate", help="Check the sweep file and every config it can produce, then stop.")
    ] = False,
    deadline: Annotated[float | None, typer.Option("--deadline", hidden=True)] = None,
):
    """Search hyper-parameters with Optuna: every trial a run under sweeps/<name>/trials/, then a ranked table,
    best.yaml and report.html.

    Interrupt with Ctrl-C (trials save a checkpoint) and continue with --resume; a trial killed mid-run
    continues from its newest checkpoint.
    """
    from tunelab.cli.common import _quiet_libraries, console, out
    from tunelab.errors import TunelabError

    if sum([resume, status, worker, validate_only]) > 1:
        raise TunelabError("--resume, --status, --worker and --validate exclude each other")
    _quiet_libraries()
    from tunelab.sweep.resolved import prepare

    resolved = prepare(sweep_file, overrides, check_data=not (status or worker))
    if validate_only:
        out.print(
            f"[green]ok[/] {sweep_file}: sweep {resolved.name}, {resolved.spec.method}, {resolved.budget} trials over "
            f"{', '.join(a.name for a in resolved.axes)}",
            highlight=False,
        )
        return
    from tunelab.sweep import driver

    if status:
        code = driver.status(resolved, console, out)
    elif worker:
        code = driver.worker_main(resolved, console, deadline)
    else:
        code = driver.run(resolved, console, out, resume=resume)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add `sweep` to the app."""
    app.command()(sweep)
