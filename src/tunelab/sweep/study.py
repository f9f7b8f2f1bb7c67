"""Optuna, configured in one place: storages, the study and its fingerprint, samplers and pruners
(re-attaching a trial a killed worker left running reads an Optuna private, so it is
`tunelab.compat.optuna_running_trial`).

Optuna does the searching (samplers), the stopping of bad trials (pruners) and the coordination
of workers (its storages); this module only configures it. Two things are ours:

- Samplers draw trial N with a seed made of the sweep's seed and N, so a sweep resumed in a new
  process, or spread over several workers, proposes the same settings as one uninterrupted
  process would (one seeded sampler per process would propose trial 0's settings again).
- A study remembers the search space it was made with; a sweep file whose space, objective or
  base config differ is refused instead of mixing two experiments in one study.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from tunelab.sweep.gateway import ConfigError, redact

FINGERPRINT = "tunelab_sweep"  # study user attr: what the study searches


def quiet_optuna() -> None:
    """Optuna's own INFO lines (trial N finished ...) and experimental warnings off: the sweep prints its own."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


# --- storage ----------------------------------------------------------------------------------------------


def storage_target(storage: str | None, sweep_dir: Path) -> tuple[str, str]:
    """(kind, where): ("journal", file path) or ("rdb", database URL) for the sweep's `storage`."""
    if storage in (None, "journal"):
        return "journal", str(sweep_dir / "study.journal")
    if storage == "sqlite":
        return "rdb", f"sqlite:///{sweep_dir / 'study.db'}"
    if "://" in storage:
        return "rdb", storage
    raise ConfigError(
        [f"storage: {storage!r} is not journal, sqlite or a database URL (postgresql://USER@HOST/DB, sqlite:///PATH)"]
    )


def shown(url: str) -> str:
    """A storage URL with its password hidden."""
    return redact(url)


def check_reachable(storage: str | None, sweep_dir: Path, timeout_s: int = 5) -> None:
    """A database URL connects (or a one-line error naming `storage`), before anything is written.
    The journal file and SQLite in the sweep folder are created when the sweep starts."""
    kind, where = storage_target(storage, sweep_dir)
    if kind != "rdb" or storage in (None, "sqlite"):
        return
    import sqlalchemy
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    try:
        engine = sqlalchemy.create_engine(where, **_engine_kwargs(where, timeout_s))
    except (NoSuchModuleError, ArgumentError) as e:
        raise ConfigError([f"storage: {shown(where)} is no database URL SQLAlchemy knows ({_first_line(e)})"]) from None
    except ModuleNotFoundError as e:
        raise ConfigError(
            [
                (
                    f"storage: the Python driver for {shown(where).split(':', 1)[0]} is not installed ({e.name}; "
                    "for PostgreSQL: pip install 'psycopg[binary]')"
                )
            ]
        ) from None
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as e:
        raise ConfigError([f"storage: cannot connect to {shown(where)} ({_first_line(e.orig or e)})"]) from None
    finally:
        engine.dispose()


def _engine_kwargs(url: str, timeout_s: int) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}  # wait for another worker's write instead of failing
    if url.startswith(("postgresql", "mysql")):
        return {"connect_args": {"connect_timeout": timeout_s}, "pool_pre_ping": True}
    return {}


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def open_storage(storage: str | None, sweep_dir: Path):
    """The Optuna storage object for the sweep (the sweep folder must exist for the default ones)."""
    kind, where = storage_target(storage, sweep_dir)
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(where))
    return _retrying(lambda: optuna.storages.RDBStorage(where, engine_kwargs=_engine_kwargs(where, 10)))


def _retrying(make: Callable[[], Any], tries: int = 5):
    """Workers started together on a new database each create its tables (and the study): one wins, the
    others fail on what the winner just made; a moment later they find it there."""
    import random
    import time

    from sqlalchemy.exc import SQLAlchemyError

    for i in range(tries):
        try:
            return make()
        except (SQLAlchemyError, optuna.exceptions.DuplicatedStudyError):
            if i == tries - 1:
                raise
            time.sleep(0.2 + random.random() * (i + 1))
    raise AssertionError("unreachable")


# --- the study --------------------------------------------------------------------------------------------


def study_fingerprint(method: str, axes, objectives: list[tuple[str, str]], base: dict[str, Any]) -> dict[str, Any]:
    """What a study searches: method, each parameter's distribution, the objective(s), and the
    base config's settings (its output and tracking sections aside: they name, not define, runs)."""
    from optuna.distributions import distribution_to_json

    return json.loads(
        json.dumps(
            {  # as the storage will give it back
                "method": method,
                "space": {a.name: json.loads(distribution_to_json(a.distribution())) for a in axes},
                "objective": [list(o) for o in objectives],
                "base": {k: v for k, v in base.items() if not k.startswith(("output.", "tracking."))},
            },
            default=str,
        )
    )


def fingerprint_difference(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
    """A short description of how two fingerprints differ, or None when they match."""
    if stored == current:
        return None
    for part, label in (("method", "method"), ("objective", "objective")):
        if stored.get(part) != current.get(part):
            return f"{label} {stored.get(part)} there, {current.get(part)} here"
    for part, label in (("space", "search space"), ("base", "base config")):
        a, b = stored.get(part) or {}, current.get(part) or {}
        keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        if keys:
            shown_keys = "; ".join(f"{k}: {_brief(a.get(k))} there, {_brief(b.get(k))} here" for k in keys[:3])
            return f"a different {label} ({shown_keys}{'; ...' if len(keys) > 3 else ''})"
    return "different settings"


def _brief(value: Any) -> str:
    if isinstance(value, dict) and "attributes" in value:  # an Optuna distribution
        attrs = value["attributes"]
        return json.dumps(attrs.get("choices", [attrs.get("low"), attrs.get("high")]))
    return "(not set)" if value is None else json.dumps(value)[:80]


def open_study(storage, name: str, print_: dict[str, Any], directions: list[str], sampler, pruner, create: bool):
    """The sweep's study: loaded (refused when it searches something else), or created when
    `create`. Workers that start at the same time may all create it: Optuna makes one."""
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        if not create:
            return None
        study = _retrying(
            lambda: optuna.create_study(
                study_name=name,
                storage=storage,
                sampler=sampler,
                pruner=pruner,
                directions=directions,
                load_if_exists=True,
            )
        )
    stored = study.user_attrs.get(FINGERPRINT)
    if stored is None:
        study.set_user_attr(FINGERPRINT, print_)
        stored = study.user_attrs.get(FINGERPRINT, print_)
    if [d.name.lower() for d in study.directions] != directions:
        stored = {**stored, "objective": "(other directions)"}
    diff = fingerprint_difference(stored, print_)
    if diff:
        raise ConfigError(
            [
                (
                    f"storage: it holds a study named {name!r} with {diff}; a sweep does not mix two "
                    "experiments (give this one another name:, or another storage)"
                )
            ]
        )
    return study


# --- samplers and pruners ---------------------------------------------------------------------------------


def trial_seed(seed: int, number: int) -> int:
    return (seed * 1_000_003 + number * 7919 + 17) % 2**32


def make_sampler(method: str, grid: dict[str, list] | None, seed: int):
    if method == "grid":
        return _GridNoStop(grid, seed=seed)
    if method == "random":
        return PerTrialSeed(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    # constant_liar: with several workers, running trials count as bad ones, so two workers do
    # not both sample the same promising region
    return PerTrialSeed(lambda s: optuna.samplers.TPESampler(seed=s, constant_liar=True), seed)


class _GridNoStop(optuna.samplers.GridSampler):
    """GridSampler without its `after_trial`, whose only job is `study.stop()` when the grid is used
    up; that raises outside `study.optimize()`, and the sweep stops by its own trial count. Trial
    N < grid size gets grid point N (Optuna's mapping), so workers never run a point twice."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


class PerTrialSeed(optuna.samplers.BaseSampler):
    """An Optuna sampler built afresh for each trial, seeded by the sweep's seed and the trial number."""

    def __init__(self, build: Callable[[int], Any], seed: int):
        self._build, self._seed = build, seed
        self._inner = build(seed)

    def before_trial(self, study, trial) -> None:
        self._inner = self._build(trial_seed(self._seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        return None  # the seed of every trial is fixed by its number


def make_pruner(
    name: str,
    startup_trials: int | None,
    warmup_steps: int | None,
    min_steps: int | None,
    reduction_factor: int | None,
    max_steps: int | None,
):
    p = optuna.pruners
    if name == "median":
        return p.MedianPruner(
            n_startup_trials=5 if startup_trials is None else startup_trials, n_warmup_steps=warmup_steps or 0
        )
    if name == "hyperband":
        return p.HyperbandPruner(
            min_resource=min_steps or 1, max_resource=max_steps or "auto", reduction_factor=reduction_factor or 3
        )
    if name == "successive_halving":
        return p.SuccessiveHalvingPruner(min_resource=min_steps or "auto", reduction_factor=reduction_factor or 4)
    return p.NopPruner()
