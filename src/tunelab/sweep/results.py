"""A sweep's results: one row per trial (from the study and the trial's run directory), ranked;
the table people read, `results.json` for scripts, and `best.yaml`.

A row's numbers come from the run directory when it is on this machine, else from what the
worker stored with the trial in the study (so a driver shows trials other machines ran).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from optuna.trial import TrialState

from tunelab.outputs import write_text as write_whole
from tunelab.sweep import gateway, space
from tunelab.sweep.resolved import Sweep

FINISHED = ("completed", "pruned", "failed")


@dataclass
class Row:
    number: int
    name: str | None  # the run directory under trials/
    settings: dict[str, Any]
    state: str  # completed | pruned | failed | running | interrupted | killed | waiting
    values: list[float | None] = field(
        default_factory=list
    )  # final (completed), at the stop (pruned), so far (running)
    step: int | None = None
    duration_s: float | None = None
    tokens_per_s: float | None = None
    peak_mb: float | None = None
    reason: str | None = None
    pareto: bool = False
    rank: int | None = None

    @property
    def resumable(self) -> bool:
        return self.state in ("interrupted", "killed")


def collect(sweep: Sweep, study) -> list[Row]:
    """Every trial of the study as a row, in trial order (surplus trials left out)."""
    from tunelab.sweep.worker import HOST, is_claimed

    rows = []
    pareto = set()
    if len(sweep.objectives) > 1:
        try:
            pareto = {t.number for t in study.best_trials}
        except ValueError:
            pareto = set()
    now = time.time()
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        if attrs.get("surplus"):
            continue
        settings = attrs.get("settings") or _settings_from_params(sweep, t.params)
        name = attrs.get("run_dir")
        path = sweep.trials_dir / name if name else None
        local = path is not None and path.is_dir()
        summary = (gateway.read_summary(path) if local else None) or attrs.get("summary") or {}
        state = {
            TrialState.COMPLETE: "completed",
            TrialState.PRUNED: "pruned",
            TrialState.FAIL: "failed",
            TrialState.WAITING: "waiting",
        }.get(t.state, "running")
        if state == "running":
            if attrs.get("state") == "interrupted":
                state = "interrupted"
            elif attrs.get("host") == HOST and not is_claimed(sweep, t.number):
                state = "killed"
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.values:
            values = list(t.values)
        elif t.intermediate_values:
            values = [t.intermediate_values[max(t.intermediate_values)]]
        else:
            values = []
        step = gateway.last_step(path) if local and state not in FINISHED else summary.get("steps")
        if step is None and t.intermediate_values:
            step = max(t.intermediate_values)
        if summary.get("wall_time_s") is not None and state in FINISHED:
            duration = summary["wall_time_s"]
        elif t.datetime_start is not None:
            end = t.datetime_complete.timestamp() if t.datetime_complete else now
            duration = end - t.datetime_start.timestamp() if state in FINISHED or state == "running" else None
        else:
            duration = None
        peak = summary.get("peak_gpu_mb") or summary.get("peak_rss_mb")
        rows.append(
            Row(
                t.number,
                name,
                settings,
                state,
                values,
                step,
                _round(duration),
                summary.get("tokens_per_s"),
                peak,
                attrs.get("reason") if state != "completed" else None,
                t.number in pareto,
            )
        )
    return rank(sweep, rows)


def _settings_from_params(sweep: Sweep, params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in sweep.axes:
        if a.name not in params:
            continue
        if a.finite and params[a.name] in a.labels:
            out.update(a.options[a.labels.index(params[a.name])])
        else:
            out[a.name] = params[a.name]
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def rank(sweep: Sweep, rows: list[Row]) -> list[Row]:
    """Best first: completed trials by the (first) objective, the Pareto front ahead with several;
    then pruned trials by the value they stopped at; then running ones; failed last."""
    sign = 1 if sweep.objectives[0][1] == "minimize" else -1

    def value(r: Row) -> float:
        v = r.values[0] if r.values else None
        return math.inf if v is None or math.isnan(v) else sign * v

    order = {"completed": 0, "pruned": 1, "running": 2, "interrupted": 2, "killed": 2, "waiting": 3, "failed": 4}
    ranked = sorted(rows, key=lambda r: (order.get(r.state, 3), not r.pareto, value(r), r.number))
    n = 0
    for r in ranked:
        r.rank = None
        if r.state == "completed":
            n += 1
            r.rank = n
    return ranked


def best(rows: list[Row]) -> Row | None:
    return next((r for r in rows if r.rank == 1), None)


def counts(rows: list[Row]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r.state] = out.get(r.state, 0) + 1
    return out


def total_steps(rows: list[Row]) -> int:
    return sum(r.step or 0 for r in rows)


# --- shown ------------------------------------------------------------------------------------------------


def fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, list):
        return ",".join(fmt(v) for v in x)
    return str(x)


def headers(sweep: Sweep) -> list[str]:
    """Column names of the settings: the last part of each dotted key, unless two share it."""
    keys = [k for a in sweep.axes for k in a.keys]
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return [s if last.count(s) == 1 else k for k, s in zip(keys, last, strict=True)]


def table(sweep: Sweep, rows: list[Row], title: str | None = None, live: bool = False):
    """The ranked trial table (rich), or while running the live one (trial, settings, step, objective so far, state)."""
    from rich.table import Table
    from rich.text import Text

    keys = [k for a in sweep.axes for k in a.keys]
    t = Table(title=title, title_justify="left")
    if not live:
        t.add_column("rank", justify="right")
    t.add_column("trial")
    for h in headers(sweep):
        t.add_column(h, justify="right")
    for metric, d in sweep.objectives:
        t.add_column(f"{metric} ({'min' if d == 'minimize' else 'max'})" + (" so far" if live else ""), justify="right")
    t.add_column("state")
    t.add_column("steps", justify="right")
    if not live:
        for col in ("time s", "tokens/s", "peak MB"):
            t.add_column(col, justify="right")
    shown = sorted(rows, key=lambda r: r.number) if live else rows
    for r in shown:
        values = r.values + [None] * (len(sweep.objectives) - len(r.values))
        cells = (
            [] if live else [str(r.rank) + ("*" if r.pareto and len(sweep.objectives) > 1 else "") if r.rank else "-"]
        )
        cells += [
            r.name or f"{r.number:03d}",
            *(fmt(r.settings.get(k)) for k in keys),
            *(fmt(v) for v in values),
            r.state,
            fmt(r.step),
        ]
        if not live:
            cells += [
                fmt(r.duration_s),
                f"{r.tokens_per_s:,.0f}" if r.tokens_per_s else "-",
                f"{r.peak_mb:,.0f}" if r.peak_mb else "-",
            ]
        t.add_row(*(Text(c) for c in cells), style="bold" if r.rank == 1 else "dim" if r.state == "failed" else None)
    return t


def reasons(rows: list[Row]) -> list[str]:
    """One line per trial that failed or was stopped, saying why."""
    return [
        f"{r.name or r.number}: {r.state}: {r.reason}"
        for r in sorted(rows, key=lambda r: r.number)
        if r.reason and r.state in ("failed", "interrupted")
    ]


# --- written ----------------------------------------------------------------------------------------------


def write_results(sweep: Sweep, rows: list[Row]) -> Path:
    """results.json: the ranked rows and the sweep's totals (what bench/ and scripts read)."""
    b = best(rows)
    data = {
        "sweep": sweep.name,
        "method": sweep.spec.method,
        "pruner": sweep.spec.pruner.name,
        "objectives": [{"metric": m, "direction": d} for m, d in sweep.objectives],
        "budget": sweep.budget,
        "counts": counts(rows),
        "optimizer_steps": total_steps(rows),
        "best": None if b is None else {"trial": b.number, "name": b.name, "settings": b.settings, "values": b.values},
        "trials": [asdict(r) for r in rows],
    }
    return write_text(sweep.results_file, json.dumps(data, indent=2, default=str) + "\n")


def best_config(sweep: Sweep, row: Row) -> dict[str, Any] | None:
    """The best trial's full run config (its config.yaml, as it ran), made a fresh run of the base
    config's own: the base's output and tracking settings, the run name `<sweep>-best`."""
    saved = gateway.saved_config(sweep.trials_dir / row.name) if row.name else None
    if saved is None:
        return None
    base = gateway.resolved_dict(gateway.build(sweep.base, row.settings, sweep.base_path, source=str(sweep.file)))
    cfg = dict(saved)
    cfg["output"] = {**base["output"], "name": f"{sweep.name}-best", "overwrite": False}
    cfg["tracking"] = base["tracking"]
    cfg["training"] = {**saved.get("training", {}), "resume": False}
    gateway.validate_config(cfg, source=str(sweep.best_file))  # what `tunelab train best.yaml` will accept
    return cfg


def write_best(sweep: Sweep, rows: list[Row]) -> Path | None:
    """best.yaml: `tunelab train sweeps/<name>/best.yaml` trains the best trial's config again."""
    b = best(rows)
    cfg = best_config(sweep, b) if b is not None else None
    if cfg is None:
        return None
    shown = ", ".join(f"{k}={space.short_value(v)}" for k, v in b.settings.items())
    values = ", ".join(f"{m} {fmt(v)}" for (m, _), v in zip(sweep.objectives, b.values, strict=False))
    header = (
        f"# tunelab train {rel(sweep.best_file)}\n"
        f"# The best trial of sweep {sweep.name}: trial {b.number} ({shown}), {values}.\n"
        f"# Its run config as it ran ({rel(sweep.trials_dir / b.name)}/config.yaml), as a new run "
        f"{sweep.name}-best in {sweep.base_output_dir}.\n"
    )
    return write_text(sweep.best_file, header + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))


def rel(p: Path) -> str:
    """A path from the working directory when it is below it (as a user would type it)."""
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def write_text(path: Path, text: str) -> Path:
    """Write a file whole or not at all (a temporary name, then renamed; a failed write is one line)."""
    return write_whole(path, text)
