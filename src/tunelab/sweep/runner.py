"""Every place a sweep touches the rest of tunelab, in one module.

Building a trial's run config (base config + overrides + sampled settings), checking a config the
way `tunelab validate` does without the hub, running one trial through `train()`, and reading
what a run wrote (metrics.jsonl, summary.json, eval.json, config.yaml) all go through here. The
other sweep modules import tunelab's core only from this file, so a change in the core (the run
directory's owner, the summary record, train's signature) is fixed in one place.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

from tunelab.config import RunConfig, build_config, config_to_dict, redact
from tunelab.config.load import (
    anchor_paths,
    apply_overrides,
    format_validation_error,
    parse_override,
    read_yaml,
)
from tunelab.config.schema import check_name
from tunelab.errors import ConfigError, Interrupted, TunelabError, as_user_error
from tunelab.evaluation.metrics import direction
from tunelab.runs import RunDir, Summary
from tunelab.runs.files import flatten, read_json, read_jsonl

__all__ = [
    "ConfigError",
    "Interrupted",
    "RunConfig",
    "TunelabError",
    "apply_overrides",
    "as_user_error",
    "check_name",
    "format_validation_error",
    "parse_override",
    "read_yaml",
    "redact",
]

# Keys the sweep sets itself on every trial: a search space or a pairing may not set them.
RESERVED = ("output.", "training.resume", "tracking.run_name", "tracking.dir", "tracking.model_artifact")

# What a run writes, by where it writes it. metrics.jsonl keys logged at evaluations can be
# reported to a pruner step by step; summary.json and eval.json values exist once, at the end.
LOGGED_AT_EVAL = (
    "eval_loss",
    "samples_exact_match",
    "samples_normalized_exact_match",
    "samples_rougeL",
    "samples_bleu",
    "samples_chrf",
    "samples_answer_words",
)
LOGGED = ("loss", *LOGGED_AT_EVAL)
SUMMARY = (
    "final_train_loss",
    "final_eval_loss",
    "samples_exact_match_after",
    "tokens_per_s",
    "achieved_tflops",
    "peak_rss_mb",
    "peak_gpu_mb",
    "wall_time_s",
    "train_time_s",
)
EVAL = tuple(
    f"eval.{k}"
    for k in ("exact_match", "normalized_exact_match", "rougeL", "bleu", "chrf", "loss", "perplexity", "answer_words")
)
METRICS = (*LOGGED, *SUMMARY, *EVAL)


# --- config -----------------------------------------------------------------------------------------------


def base_data(path: Path, overrides: list[str]) -> dict[str, Any]:
    """The base run config as data: its YAML with the sweep's overrides applied, nothing anchored yet."""
    return apply_overrides(read_yaml(path), list(overrides))


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    *parents, last = key.split(".")
    for k in parents:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[last] = value


def build(base: dict[str, Any], settings: dict[str, Any], base_path: Path, source: str) -> RunConfig:
    """A run config from the base data and a trial's settings (dotted key -> value), validated,
    with relative paths anchored as `load_config` anchors them (working directory, then the base
    config's folder)."""
    import copy

    data = copy.deepcopy(base)
    for key, value in settings.items():
        set_dotted(data, key, copy.deepcopy(value))
    cfg = build_config(data, source=source)
    anchor_paths(cfg, base_path.resolve().parent)
    return cfg


def validate_config(data: dict[str, Any], source: str) -> RunConfig:
    """A run config from plain data, checked as `tunelab train` checks it."""
    return build_config(data, source=source)


def default_name(path: Path) -> str:
    """A file's stem as a folder name (what `tunelab train` names a run after its config file)."""
    from tunelab.config.load import default_run_name

    return default_run_name(path)


def trial_config(
    base: dict[str, Any],
    settings: dict[str, Any],
    base_path: Path,
    *,
    sweep: str,
    trials_dir: Path,
    run_name: str,
    tracking_dir: Path | None,
) -> RunConfig:
    """The run config of one trial: base + settings, written into `trials_dir/run_name`, tracked
    with the sweep's name as a tag and a group (and in the run's name, so trackers show the sweep's
    runs together). The trackers keep the base config's tracking directory: artifact references in the
    base config resolve there, and the dashboard shows the sweep beside the user's other runs."""
    cfg = build(base, settings, base_path, source=f"trial {run_name}")
    cfg.output.dir, cfg.output.name, cfg.output.overwrite = str(trials_dir), run_name, False
    t = cfg.tracking
    if t.dir is None and tracking_dir is not None:
        t.dir = str(tracking_dir)
    t.tags = [*t.tags, f"sweep:{sweep}"]
    t.group = t.group or sweep  # the trackers' own grouping (W&B group, trackio group, MLflow tag)
    t.run_name = f"{sweep}-{run_name}"
    t.model_artifact = t.model_artifact or f"{sweep}-{run_name}-model"
    return cfg


def default_tracking_dir(cfg: RunConfig) -> Path:
    """Where a run of this config keeps its tracker files (`tracking.dir`, default <output.dir>/.tracking)."""
    from tunelab.artifacts import tracking_dir

    return tracking_dir(cfg).absolute()


def config_key_problem(key: str) -> str | None:
    """Why `key` (dotted) names no setting of the run config, or None when it does."""
    from tunelab.config.load import key_problem

    return key_problem(key)


def check_config(cfg: RunConfig) -> list[str]:
    """The checks `tunelab validate` makes that need neither weights nor the hub: a tiny preset
    exists, a local model folder is a model. Hub ids and artifact references are left alone."""
    from tunelab.model.tiny import PRESETS

    ref = cfg.model.ref
    if ref.kind == "tiny" and ref.preset not in PRESETS:
        return [f"model.name: unknown tiny preset {ref.text!r} (known: {', '.join('tiny:' + p for p in PRESETS)})"]
    if ref.kind == "local":
        from tunelab.model.loading import resolve_model_path

        try:
            resolve_model_path(ref.text)
        except TunelabError as e:
            return [f"model.name: {e.message}"]
    return []


def build_local_models(names: set[str]) -> None:
    """Build (and cache) the `tiny:` models these names ask for, once, before several workers would each
    build the same one; models from the hub or a folder are left to the trials."""
    from tunelab.model.loading import resolve_model_path
    from tunelab.refs import parse_model

    for name in sorted(names):
        if parse_model(name).kind == "tiny":
            resolve_model_path(name)


def check_data(cfg: RunConfig) -> str | None:
    """Read the data as `tunelab validate` does, when it is local or synthetic (no hub): None when it
    loads, else the one-line reason."""
    if any(src.ref.kind not in ("local", "synthetic") for src in cfg.data.sources):
        return None
    from tunelab.data.prepare import load_splits

    try:
        load_splits(cfg)
    except TunelabError as e:
        return e.message
    return None


def has_test_split(cfg: RunConfig) -> bool:
    return cfg.data.test is not None or cfg.data.test_size is not None


def unknown_metric(metric: str) -> str | None:
    """Why `metric` is no metric any run writes, or None."""
    if metric in METRICS:
        return None
    close = difflib.get_close_matches(metric, METRICS, n=1, cutoff=0.6)
    if close:
        return f"no metric a run writes; did you mean {close[0]}?"
    return f"no metric a run writes (known: {', '.join(METRICS)})"


def metric_problem(metric: str, cfg: RunConfig, pruning: bool) -> str | None:
    """Why a run of `cfg` would not write `metric` (or, with `pruning`, not at each evaluation)."""
    if unknown_metric(metric):
        return unknown_metric(metric)
    name = metric.removeprefix("eval.").removeprefix("final_")
    needs_test = metric.startswith(("eval", "final_eval", "samples_"))
    if needs_test and not has_test_split(cfg):
        return f"{metric}: the run has no test split (set data.test or data.test_size)"
    if metric.startswith("samples_") and not (cfg.samples.enabled and cfg.samples.num_prompts):
        return f"{metric}: the run generates no samples (samples.enabled, samples.num_prompts)"
    if (
        metric.startswith("samples_")
        and metric not in ("samples_exact_match", "samples_exact_match_after")
        and not cfg.eval.generation_metrics
    ):
        return f"{metric}: the run scores no sample metrics but exact match (eval.generation_metrics is off)"
    if name == "peak_gpu_mb" and cfg.model.device == "cpu":
        return f"{metric}: a CPU run has no GPU peak"
    if pruning:
        if metric not in LOGGED:
            return (
                f"{metric} is written once, at the end; "
                f"a pruner needs a metric logged at every evaluation ({', '.join(LOGGED)})"
            )
        if cfg.training.eval_steps is None or not has_test_split(cfg):
            return "a pruner needs evaluations during training: set training.eval_steps and a test split"
    return None


def metric_direction(metric: str) -> str | None:
    """minimize / maximize for a metric with a natural direction (a loss, a score), else None."""
    d = direction(metric.removeprefix("eval."))
    return {1: "maximize", -1: "minimize"}.get(d)


def resolved_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config as saved in a run directory (every default filled in, secrets redacted)."""
    return config_to_dict(cfg)


# --- one trial --------------------------------------------------------------------------------------------


def train_trial(cfg: RunConfig, *, resume: bool, overwrite: bool, callbacks: list, console, command: str | None):
    """Train one trial: `train()` with the sweep's callbacks; returns the summary as a dict.

    `resume` continues the run directory from its newest checkpoint; `overwrite` replaces a run
    directory that holds no checkpoint to continue from (a trial killed before its first one)."""
    from tunelab.training.run import train

    if overwrite:
        cfg.output.overwrite = True
    summary = train(cfg, resume=resume, console=console, callbacks=callbacks, command=command)
    return _as_dict(summary)


def evaluate_trial(run_path: Path, console) -> dict[str, Any]:
    """`tunelab eval RUN --no-baseline`: the run's own test split; returns eval.json's target metrics."""
    from tunelab.evaluation.runner import evaluate

    result = evaluate(str(run_path), use_baseline=False, console=console)
    return dict(result.models[0].metrics)


def _as_dict(summary) -> dict[str, Any]:
    # train() returns a typed Summary; earlier versions returned its dict
    if isinstance(summary, dict):
        return summary
    return summary.to_dict() if hasattr(summary, "to_dict") else summary.model_dump()


def mark_pruned(run_path: Path, step: int, reason: str) -> None:
    """Turn a run's summary into a pruned one: status `pruned`, the reason, the rest kept (a run
    killed before it wrote one gets a short one).

    A stop-status hook in `train()` would write this in the first place; until it has one, the
    summary it wrote as completed is rewritten (atomically, through the run directory's writer)."""
    rd = RunDir(run_path)
    s = _summary(rd) or Summary(status="pruned", steps=step)
    s.status, s.reason = "pruned", reason
    if s.steps is None:
        s.steps = step
    rd.write_summary(s)


def run_state(run_path: Path) -> str:
    """What a trial's run directory holds: `none` (not created), `completed` / `pruned` (finished:
    read it, do not train again), `checkpoint` (resume from it), or `partial` (started, nothing to
    resume from: start it again)."""
    rd = RunDir(run_path)
    if not rd.path.is_dir():
        return "none"
    s = _summary(rd)
    if s is not None and s.status in ("completed", "pruned") and rd.is_complete():
        return s.status
    if rd.latest_checkpoint() is not None and not rd.is_complete():
        return "checkpoint"
    return "partial"


# --- what runs wrote --------------------------------------------------------------------------------------


def read_summary(run_path: Path) -> dict[str, Any] | None:
    s = _summary(RunDir(run_path))
    return None if s is None else _as_dict(s)


def _summary(rd: RunDir) -> Summary | None:
    """A trial's summary; a damaged one counts as none (the trial is read, resumed or run again as if unfinished)."""
    from tunelab.runs.damage import DamagedRun

    try:
        return rd.read_summary()
    except DamagedRun:
        return None


def read_metrics(run_path: Path) -> list[dict[str, Any]]:
    return read_jsonl(RunDir(run_path).metrics)[0]


def saved_config(run_path: Path) -> dict[str, Any] | None:
    rd = RunDir(run_path)
    return read_yaml(rd.config) if rd.config.is_file() else None


def last_step(run_path: Path) -> int | None:
    steps = [r["step"] for r in read_metrics(run_path) if isinstance(r.get("step"), int)]
    return max(steps) if steps else None


def metric_at(records: list[dict[str, Any]], metric: str, step: int) -> float | None:
    """The newest value of a metrics.jsonl key logged at or before `step`."""
    value = None
    for r in records:
        if metric in r and isinstance(r.get("step"), int) and r["step"] <= step and isinstance(r[metric], int | float):
            value = float(r[metric])
    return value


def objective_value(run_path: Path, metric: str) -> float | None:
    """A finished run's value of `metric`: the last logged value, the summary's, or eval.json's."""
    rd = RunDir(run_path)
    if metric in LOGGED:
        return metric_at(read_metrics(run_path), metric, step=2**62)
    if metric in SUMMARY:
        s = read_summary(run_path) or {}
        v = s.get(metric)
        return float(v) if isinstance(v, int | float) else None
    ev = read_json(rd.eval_results) or {}
    v = (((ev.get("models") or {}).get("target") or {}).get("metrics") or {}).get(metric.removeprefix("eval."))
    return float(v) if isinstance(v, int | float) else None


def is_bad(value: float | None) -> bool:
    return value is None or math.isnan(value) or math.isinf(value)


# --- report -----------------------------------------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    rd = RunDir(path)
    return any(f.is_file() for f in (rd.config, rd.metrics, rd.summary))


def report_html(paths: list[Path], max_prompts: int) -> str:
    """The `tunelab report` page over these run directories, as HTML text."""
    from tunelab.evaluation.report import build_context, render
    from tunelab.runs.data import load_runs

    return render(build_context(load_runs(paths), max_prompts))


def curves(paths: list[Path], keys: list[tuple[str, str, str, bool, bool]]) -> list[tuple[str, str | None]]:
    """(title, PNG data URI or None) of the report's line plots (one line per run) for these runs."""
    from tunelab.evaluation.plots import curve
    from tunelab.runs.data import load_runs

    runs = load_runs(paths)
    return [(spec[1], curve(runs, *spec).image) for spec in keys]


def curve_colours(n: int) -> list:
    """The report's colours for n lines."""
    from tunelab.evaluation.plots import colours

    return colours(n)


def flat(d: dict[str, Any] | None) -> dict[str, Any]:
    return flatten(d)
