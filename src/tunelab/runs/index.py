"""The local run index behind `tunelab runs`: run directories read as they are (config.yaml,
summary.json, eval.json, lineage.json, tracking.json), so it works offline and for any backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.runs.damage import DamagedRun, read_config_record
from tunelab.runs.dir import RunDir
from tunelab.runs.metric_table import FINAL_EVAL_LOSS, FINAL_TRAIN_LOSS, TABLE
from tunelab.runs.reading import NOT_COMPARED, flatten, read_json
from tunelab.runs.records import EvalRecord

# What `runs show` and `runs compare` take from summary.json: the run's facts, then every summary metric.
SUMMARY_KEYS = ("status", "steps", "train_tokens", *(m.key for m in TABLE.at("summary")))
# `runs compare`'s names for eval.json's metrics of each model
EVAL_ROLES = (("target", "eval_"), ("baseline", "eval_baseline_"))
EVAL_INTERVAL_PREFIX = "eval_vs_baseline_"  # the 95 % interval of target - baseline and its verdict
# `runs compare`'s names for the lm-eval tasks' scores of each model (`tunelab eval --tasks`); each has a _stderr beside
BENCH_ROLES = (("tuned", "bench_"), ("baseline", "bench_baseline_"))


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
    raise TunelabError(
        f"{text}: no run directory of that name under {root}",
        hint=f"runs there: {', '.join(known[-10:])}" if known else "list them with: tunelab runs list",
    )


def rows(root: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The lines of `tunelab runs list`, and a note for each damaged run left out of them."""
    out, notes = [], []
    for run in find_runs(root):
        try:
            out.append(row(run))
        except DamagedRun as e:
            notes.append(f"skipped {run.name}: {e.message}")
    return out, notes


def row(run: Path) -> dict[str, Any]:
    """One line of `tunelab runs list` (`DamagedRun` when its config or summary is damaged)."""
    rd = RunDir(run)
    cfg = read_config_record(rd.config) or {}
    s = rd.read_summary()
    t, a = cfg.get("training") or {}, cfg.get("adapter") or {}
    return {
        "name": run.name,
        "status": rd.status(),
        "method": t.get("method") or "sft",
        "base_model": (cfg.get("model") or {}).get("name"),
        "adapter": f"{a.get('type')} r={a.get('r')}" if a.get("type") == "lora" else a.get("type"),
        "quantization": (cfg.get("quantization") or {}).get("bits"),
        "learning_rate": t.get("learning_rate"),
        "batch": f"{t.get('batch_size')}x{t.get('grad_accum')}",
        "steps": s.steps if s else None,
        FINAL_TRAIN_LOSS: s.final_train_loss if s else None,
        FINAL_EVAL_LOSS: s.final_eval_loss if s else None,
        "duration_s": s.wall_time_s if s else None,
        "benchmarks": benchmarks_cell(rd),
        "path": str(run),
    }


def benchmarks_cell(rd: RunDir) -> str | None:
    """`runs list`'s short account of `tunelab eval --tasks`: each task's tuned score and its difference.
    A damaged eval.json leaves it empty: the run is still listed (`runs compare` names the damage)."""
    try:
        ev = rd.read_eval()
    except DamagedRun:
        return None
    parts = [
        f"{task} {b.tuned:.3f}" + (f" ({b.diff:+.3f})" if b.diff is not None else "")
        for task, b in ((ev.benchmarks if ev is not None else None) or {}).items()
    ]
    return ", ".join(parts) or None


def show(run: Path) -> dict[str, Any]:
    """Everything `tunelab runs show` prints: the row, the summary, what it read and wrote, where its trackers are."""
    rd = RunDir(run)
    s = rd.read_summary()
    lineage = read_json(rd.lineage) or {"inputs": [], "outputs": []}
    cfg = read_config_record(rd.config) or {}
    inputs = [i for i in _list(lineage.get("inputs")) if isinstance(i, dict) and "ref" in i]
    requested = {i.get("requested") for i in inputs}
    reads = [
        {"ref": i["ref"], "requested": i.get("requested"), "type": i.get("type"), "digest": i.get("digest")}
        for i in inputs
    ]
    for path in source_paths(cfg):
        if path not in requested:
            reads.append({"ref": path, "type": "data source"})
    base = (cfg.get("model") or {}).get("name")
    if base and base not in requested:
        reads.append({"ref": base, "type": "base model"})
    files = sorted(p.name + ("/" if p.is_dir() else "") for p in run.iterdir())
    summary = s.to_dict() if s else {}
    return {
        **row(run),
        "summary": {k: summary.get(k) for k in SUMMARY_KEYS if k in summary},
        "reads": reads,
        "writes": [w for w in _list(lineage.get("outputs")) if isinstance(w, dict)],
        "trackers": {k: v for k, v in (read_json(rd.tracking) or {}).items() if isinstance(v, dict)},
        "files": files,
    }


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def source_paths(cfg: dict[str, Any]) -> list[str]:
    """The data paths a saved run config names: every training source of a mixture, and the test source."""
    data = cfg.get("data") or {}
    train = data.get("train")
    sources = [*(train if isinstance(train, list) else [train]), data.get("test")]
    return [str(s["path"]) for s in sources if isinstance(s, dict) and s.get("path")]


def metrics_of(run: Path) -> dict[str, Any]:
    """The numbers `runs compare` sets side by side: the summary's, the parameter counts, and
    `tunelab eval`'s results for the model and its baseline (every metric eval.json holds, a
    declared scorer's included), with each difference's interval and verdict where recorded."""
    rd = RunDir(run)
    s = rd.read_summary()
    d = s.to_dict() if s else {}
    out: dict[str, Any] = {k: d.get(k) for k in SUMMARY_KEYS}
    out["status"] = rd.status()
    params = d.get("parameters") or {}
    out["parameters"], out["trainable_parameters"] = params.get("total"), params.get("trainable")
    ev = rd.read_eval() or EvalRecord()
    for role, prefix in EVAL_ROLES:
        out.update({prefix + k: v for k, v in ev.metrics(role).items()})
    for k, interval in (ev.intervals or {}).items():  # how sure each difference from the baseline is
        out[EVAL_INTERVAL_PREFIX + k] = f"{interval.low:+.3g}..{interval.high:+.3g}: {interval.verdict()}"
    for task, b in (ev.benchmarks or {}).items():
        for role, prefix in BENCH_ROLES:
            out[prefix + task], out[f"{prefix}{task}_stderr"] = getattr(b, role), getattr(b, f"{role}_stderr")
    return out


def compare(runs: list[Path]) -> dict[str, Any]:
    """Config keys whose values differ between the runs, and their metrics side by side (rows
    that no run has are left out). A damaged run is left out with a note in `notes`."""
    if len(runs) < 2:
        raise TunelabError("runs compare: give at least two runs")
    kept, flat, per_run, notes = [], [], [], []
    for r in runs:
        try:
            cfg, metrics = read_config_record(RunDir(r).config) or {}, metrics_of(r)
        except DamagedRun as e:
            notes.append(f"skipped {r.name}: {e.message}")
            continue
        kept.append(r)
        flat.append(flatten(cfg))
        per_run.append(metrics)
    if len(kept) < 2:
        raise TunelabError(f"runs compare: fewer than two readable runs; {'; '.join(notes)}")
    keys = sorted(set().union(*flat) - NOT_COMPARED)
    differ = {
        k: [f.get(k) for f in flat] for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1
    }
    names = dict.fromkeys(k for m in per_run for k in m)  # a metric only a later run has is compared too
    metrics = {k: [m.get(k) for m in per_run] for k in names if any(m.get(k) is not None for m in per_run)}
    methods = sorted({f.get("training.method") or "sft" for f in flat})
    if len(methods) > 1:  # the report stars losses only within a method; here the reader is told
        notes.append(f"note: these runs mix {', '.join(methods)}: their losses measure different objectives")
    return {"runs": [r.name for r in kept], "config": differ, "metrics": metrics, "notes": notes}
