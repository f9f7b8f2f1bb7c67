"""The no-regression gate of `tunelab eval`: `--max-drop NAME=LIMIT` and `--min-win-rate X`, for CI
pipelines that stop a fine-tune that got worse before it ships.

NAME is a benchmark task of `--tasks` (its primary metric: `acc` for a multiple-choice task) or a
metric of eval.json (`exact_match`, `loss`, a scorer's key). A drop is how much worse the tuned model
is than its baseline in the metric's own units, by the metric's direction (a share is 0-1: 0.02 is two
points; for a loss, lower is better, so a drop is a rise). `--min-win-rate` reads the pairwise judge's
win rate of the tuned model. The arguments are parsed and their names checked before any weights
load; the gate itself runs on the written results, and each failing gate is one line.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from tunelab.errors import TunelabError
from tunelab.runs.metric_table import MetricTable
from tunelab.runs.records import EvalRecord

EXIT_CODE = 3  # `tunelab eval` when a gate fails: 2 stays a user error, 1 a crash
MAX_DROP_FORM = "--max-drop NAME=LIMIT (e.g. tunelab_synthetic=0.02 or exact_match=0.05)"


@dataclass(frozen=True)
class MaxDrop:
    name: str
    limit: float


@dataclass(frozen=True)
class Gates:
    max_drops: tuple[MaxDrop, ...] = ()
    min_win_rate: float | None = None

    def __bool__(self) -> bool:
        return bool(self.max_drops) or self.min_win_rate is not None


@dataclass(frozen=True)
class Measured:
    """One gated metric as eval measured it: the tuned and baseline values and which way is better."""

    tuned: float | None
    baseline: float | None
    direction: int  # +1 higher is better, -1 lower


def parse_gates(max_drop: list[str] | None, min_win_rate: float | None) -> Gates:
    """The gate options as typed values; a malformed one is a TunelabError naming it."""
    drops: dict[str, MaxDrop] = {}
    for item in (part.strip() for value in max_drop or [] for part in value.split(",")):
        name, sep, limit = item.partition("=")
        number = _number(limit.strip()) if sep else None
        if not name.strip() or number is None or number < 0:
            raise TunelabError(f"--max-drop {item!r}: expected NAME=LIMIT with LIMIT a number >= 0", hint=MAX_DROP_FORM)
        drops[name.strip()] = MaxDrop(name.strip(), number)
    if min_win_rate is not None and not 0 <= min_win_rate <= 1:
        raise TunelabError(f"--min-win-rate {min_win_rate}: must be between 0 and 1 (a share of the prompts)")
    return Gates(tuple(drops.values()), min_win_rate)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def check_gates(gates: Gates, tasks: Iterable[str], directions: dict[str, int], baseline: bool, judging: bool) -> None:
    """Refuse, before any weights load, a gate that could never be checked: no baseline to drop from,
    `--min-win-rate` without a judge, a name that is neither a `--tasks` task nor an eval metric
    (`directions`: eval metric -> +1 / -1 / 0), or a metric with no better direction."""
    if gates.max_drops and not baseline:
        raise TunelabError("--max-drop compares with the baseline, and --no-baseline drops it", hint="leave one out")
    if gates.min_win_rate is not None and not judging:
        raise TunelabError("--min-win-rate needs the judge's win rate", hint="add --judge URL_OR_TARGET")
    tasks = set(tasks)
    for gate in gates.max_drops:
        if gate.name in tasks:
            continue
        if gate.name not in directions:
            known = sorted(tasks) + sorted(directions)
            raise TunelabError(
                f"--max-drop {gate.name}: neither a --tasks task nor an eval metric",
                hint=f"known here: {', '.join(known)}",
            )
        if not directions[gate.name]:
            raise TunelabError(f"--max-drop {gate.name}: this metric has no better direction, so no drop")


def failures(gates: Gates, measured: dict[str, Measured], win_rate: float | None) -> list[str]:
    """One line per failing gate (none: the tuned model passed). A gated value that was not measured
    fails: a gate that cannot be checked must not pass."""
    lines = []
    for gate in gates.max_drops:
        m = measured.get(gate.name)
        if m is None or m.tuned is None or m.baseline is None:
            lines.append(f"{gate.name}: not measured for both models, so the drop limit {gate.limit:g} is not met")
            continue
        drop = (m.baseline - m.tuned) * m.direction
        if not drop <= gate.limit:  # NaN (a diverged model) fails too
            lines.append(
                f"{gate.name}: tuned {m.tuned:.4f} vs baseline {m.baseline:.4f}, a drop of {drop:.4f} "
                f"> --max-drop {gate.limit:g}"
            )
    if gates.min_win_rate is not None and not (win_rate is not None and win_rate >= gates.min_win_rate):
        shown = "not measured" if win_rate is None else f"{win_rate:.3f}"
        lines.append(f"judge win rate: {shown} < --min-win-rate {gates.min_win_rate:g}")
    return lines


def record_failures(gates: Gates, record: EvalRecord, table: MetricTable) -> list[str]:
    """The gates checked on what eval.json holds: benchmark scores, the target's and baseline's
    metrics (directions from the metric table) and the judge's win rate."""
    measured = {
        name: Measured(b.tuned, b.baseline, 1 if b.higher_is_better else -1)
        for name, b in (record.benchmarks or {}).items()
    }
    tuned, base = record.metrics("target"), record.metrics("baseline")
    for gate in gates.max_drops:
        if gate.name not in measured:
            direction = table.eval_row(gate.name).direction
            measured[gate.name] = Measured(tuned.get(gate.name), base.get(gate.name), direction)
    return failures(gates, measured, record.judge.win_rate if record.judge else None)
