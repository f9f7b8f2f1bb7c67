"""Read what a run directory holds for the report: config, metrics, samples, summary, evaluation.

Every file is optional (a run may still be training, or may never have been evaluated): what is
missing is recorded as a gap for the report to show, never raised. Only a path that is not a run
directory at all is a user error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunelab.errors import TunelabError


@dataclass
class RunData:
    path: Path
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    eval_samples: list[dict[str, Any]] = field(default_factory=list)
    lineage: dict[str, Any] = field(default_factory=dict)
    gaps: list[str] = field(default_factory=list)

    @property
    def has_anything(self) -> bool:
        return bool(self.metrics or self.summary.get("status") == "completed" or self.eval)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metrics.jsonl key, in logging order, non-numbers skipped."""
        pts = [(r["step"], r[key]) for r in self.metrics if isinstance(r.get(key), int | float) and isinstance(r.get("step"), int)]
        return [s for s, _ in pts], [float(v) for _, v in pts]

    def last(self, key: str) -> float | None:
        _, values = self.series(key)
        return values[-1] if values else None


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of a JSON Lines file and how many lines were unreadable (a run still writing may
    leave a partial last line)."""
    if not path.is_file():
        return [], 0
    out, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            out.append(rec)
        else:
            bad += 1
    return out, bad


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def load_run(path: str | Path) -> RunData:
    """A run's files, with a note for each one that is missing or unreadable."""
    p = Path(path)
    if not p.is_dir():
        raise TunelabError(f"{p}: no such run directory")
    known = ("config.yaml", "metrics.jsonl", "summary.json", "eval.json")
    if not any((p / name).is_file() for name in known):
        raise TunelabError(f"{p}: not a run directory (it holds none of {', '.join(known)})")
    run = RunData(path=p, name=p.resolve().name)
    if (p / "config.yaml").is_file():
        try:
            loaded = yaml.safe_load((p / "config.yaml").read_text(encoding="utf-8"))
            run.config = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError:
            run.gaps.append("config.yaml is unreadable")
    else:
        run.gaps.append("no config.yaml")
    run.metrics, bad = _read_jsonl(p / "metrics.jsonl")
    if not run.metrics:
        run.gaps.append("no metrics yet")
    if bad:
        run.gaps.append(f"{bad} unreadable line(s) in metrics.jsonl")
    run.samples, _ = _read_jsonl(p / "samples.jsonl")
    run.summary = _read_json(p / "summary.json") or {}
    if not run.summary:
        run.gaps.append("no summary.json (not finished)")
    elif run.summary.get("status") != "completed":
        run.gaps.append(f"status {run.summary.get('status', 'unknown')}")
    run.eval = _read_json(p / "eval.json") or {}
    if not run.eval:
        run.gaps.append(f"not evaluated (run: tunelab eval {p})")
    run.eval_samples, _ = _read_jsonl(p / "eval_samples.jsonl")
    run.lineage = _read_json(p / "lineage.json") or {}  # dataset artifact versions, when tracked
    return run


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
        raise TunelabError(f"nothing to compare: {listed} ha{'s' if len(runs) == 1 else 've'} no metrics yet",
                           hint="report runs once training has logged a step")
    return runs
