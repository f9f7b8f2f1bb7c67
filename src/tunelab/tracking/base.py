"""The sink protocol every tracker backend implements, and the guard that keeps a failing tracker
from costing the training.

A sink receives the run's start record, metric records, sample tables, artifacts and the final
summary. `GuardedSink` runs each call on the sink's own daemon thread with a deadline: an exception
or a missed deadline prints one warning and turns that sink off for the rest of the run, while the
run directory keeps everything. A hung tracker therefore costs at most `timeout_s` once.
"""

from __future__ import annotations

import contextlib
import io
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout  # builtin TimeoutError only from Python 3.11
from typing import Any

from tunelab.artifacts.core import ArtifactSpec
from tunelab.config.load import redact


class Sink:
    """A tracker backend. Every method is optional; the default does nothing."""

    name = "sink"

    def start(self, info: dict[str, Any]) -> None:
        """Open the tracker run and log the start record (config, versions, git, parameters, data, system)."""

    def log_metrics(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record: `step` plus numbers (loss, learning_rate, grad_norm, tokens_per_s,
        eval_loss, ...)."""

    def log_system(self, step: int, metrics: dict[str, float]) -> None:
        """System metrics (CPU / GPU memory and utilisation) sampled at `step`."""

    def log_samples(self, step: int, table: list[dict[str, Any]]) -> None:
        """Sample generations at `step`: rows of step, prompt, generation, reference, settings."""

    def log_artifact(self, spec: ArtifactSpec) -> dict[str, Any] | None:
        """Log an output artifact; returns what the backend recorded (version, aliases, digest) or None."""
        return None

    def use_artifact(self, ref: dict[str, Any]) -> None:
        """Record a resolved input artifact (see tunelab.artifacts.Resolved.as_record) as used by this run."""

    def finish(self, summary: dict[str, Any]) -> None:
        """Log the final summary and close the tracker run."""


class _Worker:
    """One daemon thread per sink: calls run in order, and a hung call cannot block process exit."""

    def __init__(self, name: str):
        self.jobs: queue.Queue = queue.Queue()
        threading.Thread(target=self._loop, name=f"tunelab-tracker-{name}", daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn, args, fut = self.jobs.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                # Trackers print banners and hints to stdout; the training's own output stays readable.
                with contextlib.redirect_stdout(io.StringIO()):
                    fut.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to the caller, which decides
                fut.set_exception(e)

    def call(self, fn: Callable, args: tuple, timeout: float) -> Any:
        fut: Future = Future()
        stdout = sys.stdout
        self.jobs.put((fn, args, fut))
        try:
            return fut.result(timeout=timeout)
        except FutureTimeout:
            sys.stdout = stdout  # the hung call still holds the redirect; the run's own output must not vanish
            raise


class GuardedSink:
    """Wraps a sink: bounded calls, one warning on the first failure, then off for the rest of the run."""

    def __init__(self, sink: Sink, timeout_s: float, warn: Callable[[str], None]):
        self.sink = sink
        self.name = getattr(sink, "name", type(sink).__name__)
        self.timeout_s = timeout_s
        self.warn = warn
        self.disabled = False
        self.seconds = 0.0  # wall time the training waited on this tracker
        self._worker: _Worker | None = None

    def call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        """Call `sink.method(*args)`; returns its result, or None when the sink is (or just got) disabled."""
        if self.disabled:
            return None
        fn = getattr(self.sink, method, None)
        if fn is None:
            return None
        if self._worker is None:
            self._worker = _Worker(self.name)
        limit = timeout_s or self.timeout_s
        t0 = time.perf_counter()
        try:
            return self._worker.call(fn, args, limit)
        except FutureTimeout:
            self._fail(method, f"no answer within {limit:g} s")
        except Exception as e:  # noqa: BLE001 - any tracker error must not stop the training
            first = (str(e).strip().splitlines() or [""])[0][:300]
            self._fail(method, f"{type(e).__name__}: {first}")
        finally:
            self.seconds += time.perf_counter() - t0
        return None

    def _fail(self, method: str, why: str) -> None:
        self.disabled = True
        self.warn(
            redact(
                f"tracking: {self.name} failed in {method} ({why}); it is off for the rest of this run, "
                "the run directory keeps everything"
            )
        )
