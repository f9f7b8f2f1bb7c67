"""The local run index behind `tunelab runs`: run directories read as they are (config.yaml,
summary.json, metrics.jsonl, lineage.json, tracking.json), so it works offline and for any backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tunelab.errors import TunelabError

# differences that say nothing about the experiment
NOT_COMPARED = {"output.name", "output.overwrite", "output.dir", "tracking.run_name", "tracking.dir"}
METRICS = ("status", "steps", "final_train_loss", "final_eval_loss", "samples_exact_match_after", "tokens_per_s",
           "train_tokens", "wall_time_s", "peak_rss_mb")


def find_runs(root: str | Path) -> list[Path]:
    """Run directories under `root` (folders with a config.yaml), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and (p / "config.yaml").is_file()]
    return sorted(runs, key=lambda p: (p / "config.yaml").stat().st_mtime)


def resolve_run(text: str, root: str | Path) -> Path:
    """A run given as a path or as a name under `root`."""
    for p in (Path(text).expanduser(), Path(root) / text):
        if p.is_dir() and (p / "config.yaml").is_file():
            return p
    known = [p.name for p in find_runs(root)]
    raise TunelabError(f"{text}: no run directory of that name under {root}",
                       hint=f"runs there: {', '.join(known[-10:])}" if known else "list them with: tunelab runs list")


def _read(p: Path) -> Any:
    try:
        return json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def status_of(run: Path, summary: dict[str, Any]) -> str:
    if summary.get("status"):
        return summary["status"]
    return "incomplete" if (run / "metrics.jsonl").is_file() else "not started"


def row(run: Path) -> dict[str, Any]:
    """One line of `tunelab runs list`."""
    cfg = _read(run / "config.yaml") or {}
    s = _read(run / "summary.json") or {}
    t, a = cfg.get("training", {}), cfg.get("adapter", {})
    return {
        "name": run.name,
        "status": status_of(run, s),
        "base_model": (cfg.get("model") or {}).get("name"),
        "adapter": f"{a.get('type')} r={a.get('r')}" if a.get("type") == "lora" else a.get("type"),
        "quantization": (cfg.get("quantization") or {}).get("bits"),
        "learning_rate": t.get("learning_rate"),
        "batch": f"{t.get('batch_size')}x{t.get('grad_accum')}",
        "steps": s.get("steps"),
        "final_train_loss": s.get("final_train_loss"),
        "final_eval_loss": s.get("final_eval_loss"),
        "duration_s": s.get("wall_time_s"),
        "path": str(run),
    }


def show(run: Path) -> dict[str, Any]:
    """Everything `tunelab runs show` prints: the row, the summary, what it read and wrote, where its trackers are."""
    s = _read(run / "summary.json") or {}
    lineage = _read(run / "lineage.json") or {"inputs": [], "outputs": []}
    cfg = _read(run / "config.yaml") or {}
    data = cfg.get("data") or {}
    inputs = lineage.get("inputs", [])
    requested = {i.get("requested") for i in inputs}
    reads = [{"ref": i["ref"], "requested": i.get("requested"), "type": i.get("type"), "digest": i.get("digest")} for i in inputs]
    for src in (data.get("train"), data.get("test")):
        if src and src.get("path") not in requested:
            reads.append({"ref": src["path"], "type": "data source"})
    base = (cfg.get("model") or {}).get("name")
    if base and base not in requested:
        reads.append({"ref": base, "type": "base model"})
    files = sorted(p.name + ("/" if p.is_dir() else "") for p in run.iterdir())
    return {
        **row(run),
        "summary": {k: s.get(k) for k in METRICS if k in s},
        "reads": reads,
        "writes": lineage.get("outputs", []),
        "trackers": _read(run / "tracking.json") or {},
        "files": files,
    }


def compare(runs: list[Path]) -> dict[str, Any]:
    """Config keys whose values differ between the runs, and their metrics side by side."""
    if len(runs) < 2:
        raise TunelabError("runs compare: give at least two runs")
    flat = [flatten(_read(r / "config.yaml") or {}) for r in runs]
    keys = sorted(set().union(*flat) - NOT_COMPARED)
    differ = {k: [f.get(k) for f in flat] for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1}
    summaries = [_read(r / "summary.json") or {} for r in runs]
    metrics = {k: [status_of(r, s) if k == "status" else s.get(k) for r, s in zip(runs, summaries, strict=True)] for k in METRICS}
    return {"runs": [r.name for r in runs], "config": differ, "metrics": metrics}
