"""CLI verbs for performance: `tunelab plan`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tunelab.cli.common import OverridesArg, out, user_errors

if TYPE_CHECKING:
    from tunelab.config import RunConfig


@user_errors
def plan(
    config: Annotated[Path, typer.Argument(help="Run config (YAML).", show_default=False)],
    overrides: OverridesArg = None,
    memory: Annotated[str | None, typer.Option(help="Memory to plan for, e.g. 24GB (default: this machine's).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: the config's device).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            help="Processes per machine (as for train --nproc): plan one rank's memory "
            "under the config's distributed.strategy.",
        ),
    ] = 1,
    nnodes: Annotated[int, typer.Option("--nnodes", help="Machines (as for train --nnodes).")] = 1,
    model_config: Annotated[
        Path | None,
        typer.Option(
            "--model-config",
            help="Plan with this config.json (or a folder holding "
            "one) instead of model.name's: a hub model while offline.",
            show_default=False,
        ),
    ] = None,
):
    """Estimate a run's peak memory from the model config alone (no weights are loaded); with --nproc,
    the memory of each rank."""
    from tunelab.cli.common import _quiet_libraries
    from tunelab.config import load_config
    from tunelab.errors import TunelabError

    cfg = load_config(config, overrides)
    shown = cfg.model.name
    if nproc < 1 or nnodes < 1:
        raise TunelabError(f"--{'nproc' if nproc < 1 else 'nnodes'}: give at least 1")
    if model_config is not None:
        cfg.model.name = _model_config_folder(model_config)
    _quiet_libraries()
    dev = _plan_device(cfg, device)
    world = nproc * nnodes
    planned = _memory_plan(cfg, dev, nproc, world, memory)
    if as_json:
        out.print_json(json.dumps(planned.as_json()))
        return
    _print_plan(cfg, shown, dev, world, planned)


class _Planned:
    """One rank's plan, the budget it is held against, the advice, and what `train` would refuse."""

    def __init__(self, the_plan, budget: float, advice: dict, strategy: str, world: int, refused: str | None):
        self.plan, self.budget, self.advice = the_plan, budget, advice
        self.strategy, self.world, self.refused = strategy, world, refused

    def as_json(self) -> dict:
        from tunelab.perf.plan import plan_to_json
        from tunelab.perf.sharding import plan_summary

        return {
            **plan_to_json(self.plan),
            "budget_bytes": int(self.budget),
            **self.advice,
            **plan_summary(self.strategy, self.world),
            "refused": self.refused,
        }


def _model_config_folder(model_config: Path) -> str:
    from tunelab.errors import TunelabError

    folder = model_config.parent if model_config.name == "config.json" else model_config
    if not (folder / "config.json").is_file():
        raise TunelabError(f"--model-config: {model_config} is no config.json (nor a folder holding one)")
    return str(folder.resolve())


def _plan_device(cfg: RunConfig, device: str | None) -> str:
    dev = device or ("cuda" if cfg.model.device.startswith("cuda") else "cpu")
    if cfg.model.device == "auto" and device is None:
        import torch

        dev = "cuda" if torch.cuda.is_available() else "cpu"
    return dev


def _memory_plan(cfg: RunConfig, dev: str, nproc: int, world: int, memory: str | None) -> _Planned:
    from tunelab.errors import TunelabError
    from tunelab.model.resolve import ResolvedOnce, resolve_model
    from tunelab.perf.plan import advise, available_memory, parse_memory
    from tunelab.perf.sharding import rank_estimator
    from tunelab.training.distributed import check_strategy, resolve_strategy

    resolved = resolve_model(cfg)  # once: every estimate below plans from it
    strategy = resolve_strategy(cfg, world, dev, nproc, ResolvedOnce(cfg, resolved))
    refused = None
    try:
        check_strategy(cfg, strategy, dev == "cpu")
    except TunelabError as e:
        refused = e.message
    budget = parse_memory(memory) if memory else available_memory(dev) / (1 if dev.startswith("cuda") else nproc)
    estimate = rank_estimator(strategy, world)
    ck = cfg.training.gradient_checkpointing
    the_plan = estimate(cfg, resolved, dev, checkpointing=None if ck != "auto" else False)
    advice = advise(cfg, resolved, dev, budget, estimator=estimate)
    if ck == "auto" and advice["checkpointing_needed"]:
        the_plan = estimate(cfg, resolved, dev, checkpointing=True)
    return _Planned(the_plan, budget, advice, strategy, world, refused)


def _print_plan(cfg: RunConfig, shown: str, dev: str, world: int, planned: _Planned) -> None:
    from rich.table import Table
    from rich.text import Text

    from tunelab.perf.plan import GIB, describe

    the_plan, advice, budget = planned.plan, planned.advice, planned.budget
    ranks = f", per rank of {world} ({planned.strategy})" if world > 1 else ""
    t = Table(
        title=f"memory plan: {shown} on {dev}{ranks}, micro-batch {cfg.training.batch_size} x "
        f"{cfg.training.max_length} tokens, checkpointing {'on' if the_plan.checkpointing else 'off'}",
        title_justify="left",
    )
    t.add_column("part")
    t.add_column("estimate", justify="right")
    for name, value in describe(the_plan):
        t.add_row(name, value)
    out.print(t)
    fits = the_plan.total <= budget
    out.print(
        f"{'[green]fits[/]' if fits else '[red]does not fit[/]'} in {budget / GIB:,.1f} GiB; "
        f"checkpointing {'needed' if advice['checkpointing_needed'] else 'not needed'}; largest micro-batch: "
        f"{advice['largest_micro_batch']['without_checkpointing']} without checkpointing, "
        f"{advice['largest_micro_batch']['with_checkpointing']} with it"
    )
    if world > 1:
        from tunelab.training.distributed import batch_note

        out.print(
            f"each of the {world} ranks needs {the_plan.total / GIB:,.2f} GiB; {batch_note(cfg, world)}",
            highlight=False,
        )
    if planned.refused:
        out.print(Text(f"note: tunelab train would refuse this: {planned.refused}", style="yellow"), soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add `plan` to the app."""
    app.command()(plan)
