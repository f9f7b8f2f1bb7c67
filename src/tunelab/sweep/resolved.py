"""A sweep file resolved and checked before anything runs: the `Sweep` every other module works on.

`prepare` reads the sweep file, finds its base config, builds the run config of every point the
search space can produce (for ranges, their two ends) and checks each the way `tunelab train`
and `tunelab validate` would, checks that every trial writes the objective, and that a storage
URL connects. Every problem is one line naming its key; nothing is written until all pass.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.sweep import gateway, space
from tunelab.sweep.gateway import ConfigError
from tunelab.sweep.spec import SweepSpec, load_spec
from tunelab.sweep.study import (
    check_reachable,
    make_pruner,
    make_sampler,
    open_storage,
    open_study,
    shown,
    storage_target,
    study_fingerprint,
)
from tunelab.writability import unwritable

MAX_PROBLEMS = 12


@dataclass
class Sweep:
    file: Path  # the sweep file
    overrides: list[str]  # its KEY=VALUE overrides from the command line
    spec: SweepSpec
    name: str
    folder: Path  # <dir>/<name>, absolute
    base_path: Path  # the base run config
    base: dict[str, Any]  # its data, with the sweep's overrides applied
    axes: list[space.Axis]
    budget: int  # trials in all
    objectives: list[tuple[str, str]]  # (metric, minimize | maximize)
    base_output_dir: Path  # where the base config's own runs go (best.yaml trains there)
    tracking_dir: Path  # the base config's tracking directory, which the trials keep
    max_steps: int | None
    device: str  # model.device of the trials: cpu, auto, cuda, cuda:N
    models: set[str] = field(default_factory=set)  # every model.name a trial can have
    fingerprint: dict[str, Any] = field(default_factory=dict)

    trials_dir = property(lambda self: self.folder / "trials")
    claims_dir = property(lambda self: self.folder / "claims")
    logs_dir = property(lambda self: self.folder / "logs")
    best_file = property(lambda self: self.folder / "best.yaml")
    report_file = property(lambda self: self.folder / "report.html")
    results_file = property(lambda self: self.folder / "results.json")

    @property
    def metric(self) -> str:
        return self.objectives[0][0]

    @property
    def pruning(self) -> bool:
        return self.spec.pruner.name != "none"

    def command(self, *extra: str) -> str:
        """The command line that runs this sweep (with its overrides), plus `extra` flags."""
        return shlex.join(["tunelab", "sweep", str(self.file), *self.overrides, *extra])

    def storage(self):
        return open_storage(self.spec.storage, self.folder)

    def storage_shown(self) -> str:
        kind, where = storage_target(self.spec.storage, self.folder)
        return f"journal file {where}" if kind == "journal" else shown(where)

    def study(self, create: bool):
        """The sweep's Optuna study (None when it does not exist and `create` is false)."""
        p = self.spec.pruner
        sampler = make_sampler(self.spec.method, space.grid(self.axes), self.spec.seed)
        pruner = make_pruner(p.name, p.startup_trials, p.warmup_steps, p.min_steps, p.reduction_factor, self.max_steps)
        return open_study(
            self.storage(), self.name, self.fingerprint, [d for _, d in self.objectives], sampler, pruner, create=create
        )

    def settings_config(self, settings: dict[str, Any], run_name: str):
        """The run config of the trial with these settings."""
        return gateway.trial_config(
            self.base,
            settings,
            self.base_path,
            sweep=self.name,
            trials_dir=self.trials_dir,
            run_name=run_name,
            tracking_dir=self.tracking_dir,
        )


def find_base(text: str, sweep_file: Path) -> Path:
    """The base config: from the working directory, else from the sweep file's folder."""
    p = Path(text).expanduser()
    for candidate in [p] if p.is_absolute() else [Path.cwd() / p, sweep_file.resolve().parent / p]:
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(
        [f"base.config: {text} not found (looked in the working directory and next to {sweep_file})"],
        source=str(sweep_file),
    )


def prepare(file: Path, overrides: list[str] | None = None, check_data: bool = True) -> Sweep:
    """Read and check the whole sweep: every problem at once, one line each, nothing written."""
    overrides = list(overrides or [])
    spec = load_spec(file, overrides)
    base_path = find_base(spec.base.config, file)
    try:
        base = gateway.base_data(base_path, spec.base.overrides)
    except ConfigError as e:
        raise ConfigError([f"base.config: {p}" for p in e.problems], source=str(file)) from None
    all_axes = space.axes(spec)
    problems: list[str] = []
    objectives = []
    for i, o in enumerate(spec.objective):
        d = o.direction or gateway.metric_direction(o.metric, base)
        if d is None and gateway.known_metric(o.metric, base):
            problems.append(f"objective.{i}.direction: required for {o.metric} (it has no natural direction)")
        objectives.append((o.metric, d or "minimize"))

    points = space.check_points(all_axes)
    first_cfg = None
    models: set[str] = set()
    seen: set[str] = set()
    data_checked: set[str] = set()

    def add(line: str, key: str | None = None) -> None:
        if (key or line) not in seen:
            seen.add(key or line)
            problems.append(line)

    for settings in points:
        where = ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in settings.items())
        try:
            cfg = gateway.build(base, settings, base_path, source=str(file))
        except ConfigError as e:
            for p in e.problems:
                add(f"space {where}: {p}", key=p)
            continue
        first_cfg = first_cfg or cfg
        models.add(cfg.model.name)
        for p in gateway.check_config(cfg):
            add(f"space {where}: {p}", key=p)
        for i, (metric, _) in enumerate(objectives):
            p = gateway.metric_problem(metric, cfg, pruning=spec.pruner.name != "none")
            if p:
                add(f"objective.{i}.metric: {p}")
        data_key = json.dumps([cfg.data.model_dump(mode="json"), cfg.prompt.model_dump(mode="json")], sort_keys=True)
        if check_data and data_key not in data_checked:
            data_checked.add(data_key)
            p = gateway.check_data(cfg)
            if p:
                add(f"space {where}: {p}", key=p)
    name = spec.name or gateway.default_name(file)
    folder = (Path(spec.dir).expanduser() / name).absolute()
    try:
        check_reachable(spec.storage, folder)
    except ConfigError as e:
        problems += e.problems
    why = unwritable(folder)
    if why is not None:
        problems.append(f"dir: cannot write the sweep folder {folder}: {why}")
    if problems:
        more = len(problems) - MAX_PROBLEMS
        raise ConfigError(problems[:MAX_PROBLEMS] + ([f"... and {more} more"] if more > 0 else []), source=str(file))

    size = space.grid_size(all_axes)
    budget = spec.trials if spec.method != "grid" else min(spec.trials or size, size)
    max_steps = first_cfg.training.max_steps if first_cfg.training.max_steps > 0 else None
    sweep = Sweep(
        file=file,
        overrides=overrides,
        spec=spec,
        name=name,
        folder=folder,
        base_path=base_path,
        base=base,
        axes=all_axes,
        budget=budget,
        objectives=objectives,
        base_output_dir=Path(first_cfg.output.dir),
        tracking_dir=gateway.default_tracking_dir(first_cfg),
        max_steps=max_steps,
        device=first_cfg.model.device,
        models=models,
    )
    sweep.fingerprint = study_fingerprint(spec.method, all_axes, objectives, gateway.flat(gateway.redact(base)))
    return sweep
