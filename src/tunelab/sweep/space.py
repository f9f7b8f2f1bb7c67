"""The search space: the sweep file's choices, ranges and paired settings as Optuna parameters.

Each axis is one Optuna parameter. A choice or a set of paired settings is categorical: Optuna
stores a label per option (the value itself when it is a plain scalar, else its JSON), and the
option's real settings are looked up from the label. A trial's settings are a flat map of dotted
config keys to values, which is what a trial's run config is built from.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from tunelab.sweep.gateway import ConfigError
from tunelab.sweep.spec import Param, SweepSpec

Label = None | bool | int | float | str


@dataclass(frozen=True)
class Axis:
    name: str  # the Optuna parameter: a dotted config key, or paired keys joined by '+'
    keys: tuple[str, ...]  # the config keys it sets
    param: Param | None = None  # a space entry; None for the paired settings
    options: tuple[dict[str, Any], ...] = ()  # choice / paired: each option's settings
    labels: tuple[Label, ...] = ()  # what Optuna stores for each option

    @property
    def finite(self) -> bool:
        return bool(self.options)

    def distribution(self):
        import optuna.distributions as d

        p = self.param
        if self.finite:
            return d.CategoricalDistribution(list(self.labels))
        low, high = p.bounds
        if p.kind == "int":
            return d.IntDistribution(int(low), int(high), log=p.log, step=int(p.step or 1))
        return d.FloatDistribution(float(low), float(high), log=p.log, step=p.step)

    def suggest(self, trial) -> dict[str, Any]:
        p = self.param
        if self.finite:
            label = trial.suggest_categorical(self.name, list(self.labels))
            return dict(self.options[self.labels.index(label)])
        low, high = p.bounds
        if p.kind == "int":
            value = trial.suggest_int(self.name, int(low), int(high), step=int(p.step or 1), log=p.log)
        else:
            value = trial.suggest_float(self.name, float(low), float(high), step=p.step, log=p.log)
        return {self.name: value}

    def check_points(self) -> list[dict[str, Any]]:
        """Settings to validate for this axis: every option, or a range's two ends."""
        if self.finite:
            return [dict(o) for o in self.options]
        low, high = self.param.bounds
        cast = int if self.param.kind == "int" else float
        return [{self.name: cast(low)}, {self.name: cast(high)}]


def label_of(value: Any) -> Label:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, sort_keys=True)


def axes(spec: SweepSpec) -> list[Axis]:
    """The sweep's axes, space entries first in file order, then the paired settings."""
    out, problems = [], []
    for key, p in spec.space.items():
        if p.kind != "choice":
            out.append(Axis(key, (key,), p))
            continue
        labels = tuple(label_of(v) for v in p.choice)
        if len(set(map(repr, labels))) != len(labels):
            problems.append(f"space.{key}: a value appears twice in the choice list")
        out.append(Axis(key, (key,), p, tuple({key: v} for v in p.choice), labels))
    if spec.paired:
        keys = tuple(spec.paired[0])
        labels = tuple(json.dumps([e[k] for k in keys]) for e in spec.paired)
        if len(set(labels)) != len(labels):
            problems.append("paired: two entries set the same values")
        out.append(Axis("+".join(keys), keys, None, tuple(dict(e) for e in spec.paired), labels))
    if problems:
        raise ConfigError(problems)
    return out


def grid(all_axes: list[Axis]) -> dict[str, list[Label]]:
    """GridSampler's search space: each axis's labels."""
    return {a.name: list(a.labels) for a in all_axes}


def grid_size(all_axes: list[Axis]) -> int | None:
    """Points in the cartesian product; None when a range makes it infinite."""
    if not all(a.finite for a in all_axes):
        return None
    return math.prod(len(a.options) for a in all_axes)


def suggest(trial, all_axes: list[Axis]) -> dict[str, Any]:
    """The trial's settings (dotted key -> value), drawn by the study's sampler (or read back when
    the trial already has them: a resumed trial)."""
    settings: dict[str, Any] = {}
    for a in all_axes:
        settings.update(a.suggest(trial))
    return settings


def check_points(all_axes: list[Axis], limit: int = 512) -> list[dict[str, Any]]:
    """Settings that cover the space for validation: the whole product of every axis's options
    (a range: its two ends) when it has at most `limit` points, else each option alone with the
    other axes at their first one."""
    per_axis = [a.check_points() for a in all_axes]
    if math.prod(len(p) for p in per_axis) <= limit:
        return [{k: v for part in combo for k, v in part.items()} for combo in itertools.product(*per_axis)]
    first = {k: v for p in per_axis for k, v in p[0].items()}
    return [{**first, **option} for p in per_axis for option in p]


_SHORT = {
    "learning_rate": "lr",
    "train_rows": "rows",
    "batch_size": "bs",
    "grad_accum": "ga",
    "max_steps": "steps",
    "dropout": "drop",
    "target_modules": "tm",
    "warmup_ratio": "warmup",
    "weight_decay": "wd",
    "name": "",
}


def short_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, str):
        return re.split(r"[/:]", value.rstrip("/"))[-1]
    if isinstance(value, list | tuple):
        return "-".join(short_value(v) for v in value)
    return str(value)


def describe(settings: dict[str, Any]) -> str:
    """`r16-lr0.002`: the settings as a folder-name part."""
    parts = [_SHORT.get(k.rsplit(".", 1)[-1], k.rsplit(".", 1)[-1]) + short_value(v) for k, v in settings.items()]
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(p for p in parts if p)).strip("-.")
    return text[:60].rstrip("-.") or "trial"


def trial_dir_name(number: int, settings: dict[str, Any]) -> str:
    """`003-r16-lr0.002`: the trial's number, then its settings."""
    return f"{number:03d}-{describe(settings)}"
