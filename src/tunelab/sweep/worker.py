"""A worker: takes trials from the study one at a time and runs each as an ordinary tunelab run.

A trial is claimed by an exclusive lock on `claims/NNN.lock` in the sweep folder, held for as
long as the worker runs it. The kernel drops the lock when the worker dies, so a trial that is
still RUNNING in the study while nobody holds its claim was left by a killed or interrupted
worker: the next worker on this machine takes it over and continues its run directory from the
newest checkpoint (train's resume), or reads the result if the run had finished. New trials are
asked for under `.ask.lock`, so workers on one machine never ask beyond the trial budget; a
worker elsewhere that does anyway (its trial number is past the budget) gives its trial back
marked surplus. For a grid, trial N is grid point N, so every point runs exactly once.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from transformers import TrainerCallback

from tunelab.compat import optuna_running_trial
from tunelab.sweep import gateway, space
from tunelab.sweep.resolved import Sweep
from tunelab.sweep.study import quiet_optuna

HOST = platform.node()
ORPHAN_AFTER_S = 60  # a RUNNING trial no worker has claimed yet, older than this, was left by a dead one


@dataclass
class Claim:
    trial: Any  # optuna.trial.Trial
    fd: int
    reclaimed: bool

    @property
    def number(self) -> int:
        return self.trial.number

    def release(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)


def claim_path(sweep: Sweep, number: int) -> Path:
    return sweep.claims_dir / f"{number:03d}.lock"


def _lock(path: Path, block: bool, tries: int = 1, holder: bool = True) -> int | None:
    """An exclusive flock on `path` (its fd), or None when another process holds it. `holder`: write
    this process's PID and host into the file, for people looking at it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    for i in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
            break
        except BlockingIOError:
            if i == tries - 1:
                os.close(fd)
                return None
            time.sleep(0.1)  # a probe (is_claimed) holds it for an instant, a worker for the whole trial
    if holder:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": HOST}).encode())
    return fd


def is_claimed(sweep: Sweep, number: int) -> bool:
    """Whether a live process on this machine holds the trial's claim."""
    fd = _lock(claim_path(sweep, number), block=False, holder=False)
    if fd is None:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    return False


def orphaned(sweep: Sweep, frozen) -> bool:
    """A RUNNING trial whose worker is gone (checked on this machine only)."""
    host = frozen.user_attrs.get("host")
    if host not in (None, HOST) or frozen.user_attrs.get("surplus"):
        return False
    if host is None and frozen.datetime_start is not None:
        age = time.time() - frozen.datetime_start.timestamp()
        if age < ORPHAN_AFTER_S:
            return False  # another worker may be between ask() and its claim
    return not is_claimed(sweep, frozen.number)


@contextmanager
def _ask_lock(sweep: Sweep):
    fd = _lock(sweep.folder / ".ask.lock", block=True)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def next_trial(sweep: Sweep, study) -> Claim | None:
    """The next trial this worker runs: one a dead worker left, else a new one; None when the
    sweep has all its trials."""
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if frozen.number >= sweep.budget or not orphaned(sweep, frozen):
            continue
        fd = _lock(claim_path(sweep, frozen.number), block=False, tries=3)
        if fd is None:
            continue
        still = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number == frozen.number]
        if not still:  # finished between the two looks
            os.close(fd)
            continue
        trial = optuna_running_trial(study, still[0])
        trial.set_user_attr("host", HOST)
        trial.set_user_attr("pid", os.getpid())
        return Claim(trial, fd, reclaimed=True)
    with _ask_lock(sweep):
        if len(study.get_trials(deepcopy=False)) >= sweep.budget:
            return None
        trial = study.ask()
        if trial.number >= sweep.budget:  # a worker on another machine asked at the same moment
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.FAIL)
            return None
        # blocking: a driver may be probing this claim for an instant (is_claimed)
        fd = _lock(claim_path(sweep, trial.number), block=True)
        trial.set_user_attr("host", HOST)
        trial.set_user_attr("pid", os.getpid())
        return Claim(trial, fd, reclaimed=False)


def pruned_reason(pruner: str, step: int, metric: str | None = None, value: float | None = None) -> str:
    """The reason a pruned trial's summary gives; the metric's value only where the worker that stopped it saw it."""
    seen = f" ({metric} {value:.4g})" if metric is not None and value is not None else ""
    return f"pruned by the {pruner} pruner at step {step}{seen}"


class Reporter(TrainerCallback):
    """Reports the objective to Optuna at every evaluation and stops the trial when `pruner` says so;
    train() then writes the run's summary as pruned, with this callback's `stop_reason`."""

    def __init__(
        self,
        trial,
        metric: str,
        run_path: Path,
        pruner: str | None,
        progress: Callable[[], None] | None = None,
    ):
        self.trial, self.metric, self.run_path, self.pruner = trial, metric, run_path, pruner
        self.progress = progress
        self.pruned_at: int | None = None
        # read by train(): a run this callback stopped ends with this status in its summary and trackers
        self.stop_status: str | None = None
        self.stop_reason: str | None = None

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        step = state.global_step
        # runs after the samples callback, so the sample metrics of this evaluation are in metrics.jsonl
        value = (metrics or {}).get(self.metric)
        if not isinstance(value, int | float):
            value = gateway.metric_at(gateway.read_metrics(self.run_path), self.metric, step)
        if value is None:
            return
        self.trial.report(float(value), step)
        if self.pruner and step < state.max_steps and self.trial.should_prune():
            self.pruned_at = step
            self.trial.set_user_attr("pruned_at", step)  # a worker killed from here on still knows
            self.stop_status = "pruned"
            self.stop_reason = pruned_reason(self.pruner, step, self.metric, float(value))
            control.should_training_stop = True
        if self.progress:
            self.progress()

    def on_log(self, args, state, control, **kw):
        if self.progress:
            self.progress()


@dataclass
class Outcome:
    number: int
    name: str
    settings: dict[str, Any]
    state: str  # completed | pruned | failed
    values: list[float] | None = None
    reason: str | None = None
    seconds: float = 0.0

    def line(self, metrics: list[str]) -> str:
        shown = " ".join(f"{k.rsplit('.', 1)[-1]}={space.short_value(v)}" for k, v in self.settings.items())
        head = f"trial {self.number:03d} ({shown}): {self.state}"
        if self.values:
            head += ", " + ", ".join(f"{m} {v:.4g}" for m, v in zip(metrics, self.values, strict=False))
        if self.reason and self.state != "completed":
            head += f" ({self.reason})"
        return head + f" [{self.seconds:.1f} s]"


def run_trial(sweep: Sweep, study, claim: Claim, console, progress: Callable[[], None] | None = None) -> Outcome:
    """Run (or finish) one claimed trial; the study learns its values, or that it was pruned or failed.

    Ctrl-C / SIGTERM leave it RUNNING and marked interrupted, to be continued (`Interrupted` is raised)."""
    trial = claim.trial
    t0 = time.perf_counter()
    settings = space.suggest(trial, sweep.axes)
    name = space.trial_dir_name(trial.number, settings)
    run_path = sweep.trials_dir / name
    trial.set_user_attr("settings", settings)
    trial.set_user_attr("run_dir", name)
    trial.set_user_attr("state", "running")

    def fail(reason: str) -> Outcome:
        trial.set_user_attr("reason", reason[:500])
        study.tell(trial, state=TrialState.FAIL)
        return Outcome(trial.number, name, settings, "failed", reason=reason, seconds=time.perf_counter() - t0)

    state = gateway.run_state(run_path)
    pruned_at = trial.user_attrs.get("pruned_at") if claim.reclaimed else None
    if pruned_at is not None and state != "pruned":  # killed after the pruner stopped it: it stays stopped there
        gateway.mark_pruned(run_path, pruned_at, pruned_reason(sweep.spec.pruner.name, pruned_at))
        state = "pruned"
    if state not in ("completed", "pruned"):
        try:
            cfg = sweep.settings_config(settings, name)
        except gateway.TunelabError as e:
            return fail(_one_line(e))
        single = len(sweep.objectives) == 1
        pruner = sweep.spec.pruner.name if sweep.pruning and single else None
        reporter = Reporter(trial, sweep.metric, run_path, pruner, progress=progress)
        try:
            gateway.train_trial(
                cfg,
                resume=state == "checkpoint",
                overwrite=state == "partial",
                callbacks=[reporter] if single else [],
                console=console,
                command=sweep.command("--resume"),
            )
        except gateway.Interrupted as e:
            trial.set_user_attr("state", "interrupted")
            trial.set_user_attr("reason", e.message)
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("state", "interrupted")
            raise
        except gateway.TunelabError as e:
            return fail(_one_line(e))
        except Exception as e:  # noqa: BLE001 - one trial's bug or OOM must not end the sweep
            err = gateway.as_user_error(e)
            if err is not None:
                return fail(err.message)
            console.print_exception()  # into the worker's log: a bug keeps its traceback
            return fail(f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}")
        finally:
            _release_memory()
        pruned_at = reporter.pruned_at
    return _finish(
        sweep,
        study,
        trial,
        run_path,
        settings,
        pruned=pruned_at is not None or state == "pruned",
        console=console,
        t0=t0,
        fail=fail,
    )


def _finish(sweep: Sweep, study, trial, run_path: Path, settings, pruned: bool, console, t0: float, fail) -> Outcome:
    name = run_path.name
    summary = gateway.read_summary(run_path) or {}
    trial.set_user_attr(
        "summary",
        {
            k: summary.get(k)
            for k in ("steps", "wall_time_s", "train_tokens", "tokens_per_s", "peak_rss_mb", "peak_gpu_mb", "device")
        },
    )
    if pruned:
        trial.set_user_attr("state", "pruned")
        frozen = study.tell(trial, state=TrialState.PRUNED)
        return Outcome(
            trial.number,
            name,
            settings,
            "pruned",
            values=frozen.values,
            reason=summary.get("reason"),
            seconds=time.perf_counter() - t0,
        )
    if any(m.startswith("eval.") for m, _ in sweep.objectives):
        try:
            gateway.evaluate_trial(run_path, console)
        except gateway.TunelabError as e:
            return fail(f"tunelab eval: {e.message}")
    values = [gateway.objective_value(run_path, m) for m, _ in sweep.objectives]
    bad = [(m, v) for (m, _), v in zip(sweep.objectives, values, strict=True) if gateway.is_bad(v)]
    if bad:
        m, v = bad[0]
        return fail(f"{m} is {v} (the run wrote no value)" if v is None else f"{m} is {v} (the training diverged)")
    trial.set_user_attr("values", dict(zip([m for m, _ in sweep.objectives], values, strict=True)))
    trial.set_user_attr("state", "completed")
    study.tell(trial, values)
    return Outcome(trial.number, name, settings, "completed", values=values, seconds=time.perf_counter() - t0)


def _one_line(e) -> str:
    """A user error's message on one line (a config error lists its problems)."""
    problems = getattr(e, "problems", None)
    return "; ".join(problems) if problems else e.message.replace("\n", " ")


def _release_memory() -> None:
    """What one trial's model held (above all GPU memory after an out-of-memory error) is freed before the next."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM outside training (between trials, while loading) stops the worker like Ctrl-C, so
    its trial is marked interrupted; train() installs its own handlers while it trains."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def work(
    sweep: Sweep,
    console,
    say: Callable[[str], None],
    deadline: float | None = None,
    progress: Callable[[], None] | None = None,
    study=None,
) -> list[Outcome]:
    """Run trials until the sweep has its trials (or `deadline`, epoch seconds, passes); the outcomes.

    Ctrl-C / SIGTERM: the running trial saves a checkpoint, is marked interrupted, and
    `gateway.Interrupted` is raised."""
    quiet_optuna()
    study = study or sweep.study(create=True)
    outcomes: list[Outcome] = []
    hint = f"continue with: {sweep.command('--resume')}"
    with sigterm_as_interrupt():
        while deadline is None or time.time() < deadline:
            claim = None
            try:
                claim = next_trial(sweep, study)
                if claim is None:
                    break
                if claim.reclaimed:
                    say(f"trial {claim.number:03d}: taken over from a worker that stopped; continuing it")
                outcome = run_trial(sweep, study, claim, console, progress)
                outcomes.append(outcome)
                say(outcome.line([m for m, _ in sweep.objectives]))
                if progress:
                    progress()
            except KeyboardInterrupt:
                if claim is not None:
                    _mark_interrupted(claim.trial)
                raise gateway.Interrupted("stopped by Ctrl-C", hint=hint) from None
            except gateway.Interrupted as e:
                raise gateway.Interrupted(e.message, hint=hint, exit_code=e.exit_code) from None
            finally:
                if claim is not None:
                    claim.release()
    return outcomes


def _mark_interrupted(trial) -> None:
    try:
        trial.set_user_attr("state", "interrupted")
    except (RuntimeError, ValueError, optuna.exceptions.OptunaError):
        pass  # it had finished
