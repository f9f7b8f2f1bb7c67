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
from tunelab.evaluation.metrics import config_metrics, metric_table
from tunelab.runs import EvalRecord, RunDir, Summary
from tunelab.runs.metric_table import (
    EVAL_PREFIX,
    JUDGE_WIN_RATE,
    SAMPLES_EXACT_MATCH,
    SAMPLES_EXACT_MATCH_AFTER,
    SAMPLES_EXACT_MATCH_BEFORE,
    SAMPLES_PREFIX,
    TABLE,
    MetricTable,
)
from tunelab.runs.reading import flatten, read_jsonl

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

# An objective is a row of the metric table (tunelab.runs.metric_table), where the row says the run
# writes it: metrics.jsonl ("log", "evaluation": a pruner can follow it step by step), summary.json or
# eval.json (once, at the end). A scorer adds samples_<key> and eval.<key>, its key from eval.scorers.
FOLLOWED = ("log", "evaluation")


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
    """What `tunelab validate` finds wrong with a trial's model and scorers, without the hub (`training.rules`,
    `training.preflight`): a tiny preset that exists, a local folder that is a model, a continued run whose
    adapter fits; one line each, naming the field."""
    from tunelab.training.preflight import model_findings
    from tunelab.training.rules import Situation, problems, scorers, tiny_preset

    found = tiny_preset(cfg) + model_findings(cfg, Situation(hub=False))[0] + scorers(cfg)
    return [f.line() for f in problems(found)]


def build_local_models(names: set[str]) -> None:
    """Build (and cache) the `tiny:` models these names ask for, once, before several workers would each
    build the same one; models from the hub or a folder are left to the trials."""
    from tunelab.model.resolve import resolve_model_path
    from tunelab.refs import parse_model

    for name in sorted(names):
        if parse_model(name).kind == "tiny":
            resolve_model_path(name)


def check_data(cfg: RunConfig) -> str | None:
    """Read the data as `tunelab validate` does, without the hub: None when it loads, else the first problem."""
    from tunelab.training.preflight import data_findings
    from tunelab.training.rules import Situation, problems

    found = problems(data_findings(cfg, Situation(hub=False), None)[0])
    return found[0].line() if found else None


def has_test_split(cfg: RunConfig) -> bool:
    return cfg.data.test is not None or cfg.data.test_size is not None


def run_metrics(cfg: RunConfig | None = None) -> MetricTable:
    """What a run of `cfg` writes: the fixed metrics and its eval.scorers' (without a config: every
    scorer kind's, under its own name)."""
    return metric_table() if cfg is None else TABLE.with_scorers(config_metrics(cfg.eval.scorers))


def _base_scorers(base: dict[str, Any] | None) -> list[Any]:
    """The eval.scorers the base config declares (as data: a sweep reads it before building trials)."""
    section = (base or {}).get("eval")
    scorers = section.get("scorers") if isinstance(section, dict) else None
    return scorers if isinstance(scorers, list) else []


def unknown_metric(metric: str, cfg: RunConfig | None = None) -> str | None:
    """Why `metric` is no metric a run (of `cfg`) writes, or None. Without a config, a scorer's name of
    any spelling passes (`samples_<key>`, `eval.<key>`): each trial's eval.scorers is checked later."""
    table = run_metrics(cfg)
    if metric in table:
        return None
    scorer = table.find(metric) is not None
    if scorer and cfg is None:
        return None
    close = difflib.get_close_matches(metric, table.keys(), n=1, cutoff=0.6)
    guess = f"; did you mean {close[0]}?" if close else ""
    if scorer:
        keys = ", ".join(m.key for m in config_metrics(cfg.eval.scorers)) or "none"
        name = metric.removeprefix(EVAL_PREFIX).removeprefix(SAMPLES_PREFIX)
        return f"{metric}: no scorer of the run reports as {name} (eval.scorers: {keys}){guess}"
    known = ", ".join(table.keys())
    return f"no metric a run writes{guess}" if guess else f"no metric a run writes (known: {known})"


def known_metric(metric: str, base: dict[str, Any] | None = None) -> bool:
    """Whether the table (with the base config's scorers) lists `metric`."""
    return metric in metric_table(declared=_base_scorers(base))


def metric_problem(metric: str, cfg: RunConfig, pruning: bool) -> str | None:
    """Why a run of `cfg` would not write `metric` (or, with `pruning`, not at each evaluation)."""
    problem = unknown_metric(metric, cfg)
    if problem:
        return problem
    table = run_metrics(cfg)
    row = table.rows[metric]
    series = table.get(row.logged_as) if row.logged_as else row
    samples = metric.startswith(SAMPLES_PREFIX)
    if (samples or row.where == "eval" or series.where == "evaluation") and not has_test_split(cfg):
        return f"{metric}: the run has no test split (set data.test or data.test_size)"
    if samples and not (cfg.samples.enabled and cfg.samples.num_prompts):
        return f"{metric}: the run generates no samples (samples.enabled, samples.num_prompts)"
    exact_match = (SAMPLES_EXACT_MATCH, SAMPLES_EXACT_MATCH_AFTER, SAMPLES_EXACT_MATCH_BEFORE)
    if samples and metric not in exact_match and not cfg.eval.generation_metrics:
        return f"{metric}: the run scores no sample metrics but exact match (eval.generation_metrics is off)"
    if metric == "peak_gpu_mb" and cfg.model.device == "cpu":
        return f"{metric}: a CPU run has no GPU peak"
    if metric == EVAL_PREFIX + JUDGE_WIN_RATE and not cfg.eval.judge.configured:
        return f"{metric}: the run names no judge (set eval.judge.url or eval.judge.target)"
    if pruning:
        if row.where not in FOLLOWED:
            followed = ", ".join(m.key for m in table.at(*FOLLOWED))
            return (
                f"{metric} is written once, at the end; a pruner needs a metric logged at every evaluation ({followed})"
            )
        if cfg.training.eval_steps is None or not has_test_split(cfg):
            return "a pruner needs evaluations during training: set training.eval_steps and a test split"
    return None


def metric_direction(metric: str, base: dict[str, Any] | None = None) -> str | None:
    """minimize / maximize for a metric with a natural direction (a loss, a score; a scorer the base
    config declares, in its own direction), else None."""
    d = metric_table(declared=_base_scorers(base)).direction(metric)
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
    """`tunelab eval RUN --no-baseline`: the run's own test split; returns eval.json's target metrics. A run
    whose config names a judge (eval.judge) is evaluated against its baseline, which the judge compares with."""
    from tunelab.evaluation.runner import EvalRequest, evaluate

    saved = saved_config(run_path)
    judged = saved is not None and build_config(saved).eval.judge.configured
    result = evaluate(EvalRequest(str(run_path), use_baseline=judged), console=console)
    return dict(result.models[0].metrics)


def _as_dict(summary) -> dict[str, Any]:
    # train() returns a typed Summary; earlier versions returned its dict
    if isinstance(summary, dict):
        return summary
    return summary.to_dict() if hasattr(summary, "to_dict") else summary.model_dump()


def mark_pruned(run_path: Path, step: int, reason: str) -> None:
    """Turn a run's summary into a pruned one: status `pruned`, the reason, the rest kept (a run
    killed before it wrote one gets a short one).

    For a trial whose worker was killed after the pruner stopped it: a run the pruner stops while its
    worker lives is written as pruned by `train()` itself (the sweep's callback sets its stop status)."""
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
    row = metric_table().find(metric)
    if row is None:
        return None
    if row.where in FOLLOWED:
        return metric_at(read_metrics(run_path), metric, step=2**62)
    if row.where == "summary":
        v = (read_summary(run_path) or {}).get(metric)
    else:
        v = (_eval(RunDir(run_path)) or EvalRecord()).metrics().get(row.field)
    return float(v) if isinstance(v, int | float) else None


def _eval(rd: RunDir) -> EvalRecord | None:
    """A trial's eval.json; a damaged one counts as none (its objective is missing, as if not evaluated)."""
    from tunelab.runs.damage import DamagedRun

    try:
        return rd.read_eval()
    except DamagedRun:
        return None


def is_bad(value: float | None) -> bool:
    return value is None or math.isnan(value) or math.isinf(value)


# --- report -----------------------------------------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    rd = RunDir(path)
    return any(f.is_file() for f in (rd.config, rd.metrics, rd.summary))


def report_html(paths: list[Path], max_prompts: int) -> str:
    """The `tunelab report` page over these run directories, as HTML text."""
    from tunelab.evaluation.report import build_context, render
    from tunelab.runs.contents import load_runs

    return render(build_context(load_runs(paths), max_prompts))


def curves(paths: list[Path], keys: list[tuple[str, str, str, bool, bool]]) -> list[tuple[str, str | None]]:
    """(title, PNG data URI or None) of the report's line plots (one line per run) for these runs."""
    from tunelab.evaluation.plots import curve
    from tunelab.runs.contents import load_runs

    runs = load_runs(paths)
    return [(spec[1], curve(runs, *spec).image) for spec in keys]


def curve_colours(n: int) -> list:
    """The report's colours for n lines."""
    from tunelab.evaluation.plots import colours

    return colours(n)


def flat(d: dict[str, Any] | None) -> dict[str, Any]:
    return flatten(d)
