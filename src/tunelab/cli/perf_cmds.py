"""CLI verbs for performance: `tunelab plan`."""

import json
from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.common import OverridesArg, out, user_errors


@user_errors
def plan(
    config: Annotated[Path, typer.Argument(help="Run config (YAML).", show_default=False)],
    overrides: OverridesArg = None,
    memory: Annotated[str | None, typer.Option(help="Memory to plan for, e.g. 24GB (default: this machine's).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: the config's device).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
):
    """Estimate a run's peak memory from the model config alone (no weights are loaded)."""
    from rich.table import Table

    from tunelab.cli.common import _quiet_libraries
    from tunelab.config import load_config
    from tunelab.perf.plan import GIB, advise, available_memory, describe, estimate, parse_memory, plan_to_json

    cfg = load_config(config, overrides)
    _quiet_libraries()
    dev = device or ("cuda" if cfg.model.device.startswith("cuda") else "cpu")
    if cfg.model.device == "auto" and device is None:
        import torch

        dev = "cuda" if torch.cuda.is_available() else "cpu"
    budget = parse_memory(memory) if memory else available_memory(dev)
    ck = cfg.training.gradient_checkpointing
    the_plan = estimate(cfg, dev, checkpointing=None if ck != "auto" else False)
    advice = advise(cfg, dev, budget)
    if ck == "auto" and advice["checkpointing_needed"]:
        the_plan = estimate(cfg, dev, checkpointing=True)
    if as_json:
        out.print_json(json.dumps({**plan_to_json(the_plan), "budget_bytes": int(budget), **advice}))
        return
    t = Table(title=f"memory plan: {cfg.model.name} on {dev}, micro-batch {cfg.training.batch_size} x "
                    f"{cfg.training.max_length} tokens, checkpointing {'on' if the_plan.checkpointing else 'off'}",
              title_justify="left")
    t.add_column("part")
    t.add_column("estimate", justify="right")
    for name, value in describe(the_plan):
        t.add_row(name, value)
    out.print(t)
    fits = the_plan.total <= budget
    out.print(f"{'[green]fits[/]' if fits else '[red]does not fit[/]'} in {budget / GIB:,.1f} GiB; "
              f"checkpointing {'needed' if advice['checkpointing_needed'] else 'not needed'}; largest micro-batch: "
              f"{advice['largest_micro_batch']['without_checkpointing']} without checkpointing, "
              f"{advice['largest_micro_batch']['with_checkpointing']} with it")





def register(app: typer.Typer) -> None:
    """Add `plan` to the app."""
    app.command()(plan)
