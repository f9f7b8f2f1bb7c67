"""Everything a run directory holds, read for the report and the sweep views: config, metrics,
samples, summary, evaluation, lineage.

Every file is optional (a run may still be training, or may never have been evaluated): what is
missing is recorded as a gap for the report to show, never raised. Only a path that is not a run
directory at all is a user error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.runs.damage import DamagedRun, read_config_record
from tunelab.runs.dir import RunDir
from tunelab.runs.metric_table import Metric
from tunelab.runs.reading import read_json, read_jsonl
from tunelab.runs.records import EvalRecord, Summary


@dataclass
class RunData:
    path: Path
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    summary: Summary | None = None
    eval: EvalRecord | None = None
    eval_samples: list[dict[str, Any]] = field(default_factory=list)
    lineage: dict[str, Any] = field(default_factory=dict)
    gaps: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # "damaged run: FILE: what is wrong", one per file

    @property
    def has_anything(self) -> bool:
        completed = self.summary is not None and self.summary.status == "completed"
        return bool(self.metrics or completed or self.eval is not None)

    @property
    def method(self) -> str:
        """sft, dpo or kto: losses of different methods measure different objectives."""
        return str((self.config.get("training") or {}).get("method") or "sft")

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metrics.jsonl key, in logging order; non-numbers and NaN or
        infinite values (a diverged step) skipped."""
        pts = [
            (r["step"], r[key])
            for r in self.metrics
            if isinstance(r.get(key), int | float) and math.isfinite(r[key]) and isinstance(r.get("step"), int)
        ]
        return [s for s, _ in pts], [float(v) for _, v in pts]

    def last(self, key: str) -> float | None:
        _, values = self.series(key)
        return values[-1] if values else None

    def final(self, summary_key: str, metrics_key: str | None = None) -> Any:
        """A summary value, else (a run still training, or killed) the last logged `metrics_key`."""
        value = getattr(self.summary, summary_key, None) if self.summary is not None else None
        return value if value is not None or metrics_key is None else self.last(metrics_key)

    def value(self, metric: Metric, role: str = "target") -> Any:
        """The run's value of a metric-table row, from the file the row says: the summary's (else the
        last logged value of the series that stands in for it), the last logged one, or eval.json's
        for `role` (target or baseline)."""
        if metric.where == "summary":
            return self.final(metric.key, metric.logged_as)
        if metric.where == "eval":
            return self.eval.metrics(role).get(metric.field) if self.eval is not None else None
        return self.last(metric.key)


def load_run(path: str | Path) -> RunData:
    """A run's files, with a note for each one that is missing or unreadable."""
    p = Path(path)
    if not p.is_dir():
        raise TunelabError(f"{p}: no such run directory")
    rd = RunDir(p)
    known = (rd.config, rd.metrics, rd.summary, rd.eval_results)
    if not any(f.is_file() for f in known):
        raise TunelabError(f"{p}: not a run directory (it holds none of {', '.join(f.name for f in known)})")
    run = RunData(path=p, name=p.resolve().name)
    run.config = _readable(run, read_config_record, rd.config) or {}
    if not rd.config.is_file():
        run.gaps.append("no config.yaml")
    run.metrics, bad = read_jsonl(rd.metrics)
    if not run.metrics:
        run.gaps.append("no metrics yet")
    if bad:
        run.gaps.append(f"{bad} unreadable line(s) in metrics.jsonl")
    run.samples, _ = read_jsonl(rd.samples)
    run.summary = _readable(run, Summary.read, rd.summary)
    if run.summary is None and not rd.summary.is_file():
        run.gaps.append("no summary.json (not finished)")
    elif run.summary is not None and run.summary.status != "completed":
        run.gaps.append(f"status {run.summary.status}")
    run.eval = _readable(run, EvalRecord.read, rd.eval_results)
    if not rd.eval_results.is_file():
        run.gaps.append(f"not evaluated (run: tunelab eval {p})")
    run.eval_samples, _ = read_jsonl(rd.eval_samples)
    run.lineage = read_json(rd.lineage) or {}  # dataset artifact versions, when tracked
    return run


def _readable(run: RunData, read, path: Path):
    """What `read` makes of `path`; None, with the damage noted as a gap, when the file is damaged."""
    try:
        return read(path)
    except DamagedRun as e:
        run.gaps.append(e.message)
        run.damaged.append(e.message)
        return None


def load_runs(paths: list[str | Path]) -> list[RunData]:
    """Runs in the order given; names made unique (parent folder added) when two share one."""
    if not paths:
        raise TunelabError("no runs given", hint="tunelab report runs/a runs/b -o report.html")
    runs = [load_run(p) for p in paths]
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = f"{r.path.resolve().parent.name}/{r.name}"
    if not any(r.has_anything for r in runs):
        listed = ", ".join(str(r.path) for r in runs)
        raise TunelabError(
            f"nothing to compare: {listed} ha{'s' if len(runs) == 1 else 've'} no metrics yet",
            hint="report runs once training has logged a step",
        )
    return runs
