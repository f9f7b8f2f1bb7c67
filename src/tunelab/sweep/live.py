"""The table shown while a sweep runs: trial, settings, step, objective so far, state.

On a terminal it is redrawn in place; elsewhere (a log, CI) each change of a trial's state is one
line, so the output stays readable as a file.
"""

from __future__ import annotations

import time

from tunelab.sweep.resolved import Sweep
from tunelab.sweep.results import Row, collect, fmt, table


class Display:
    def __init__(self, sweep: Sweep, study, console, every_s: float = 1.0):
        self.sweep, self.study, self.console, self.every_s = sweep, study, console, every_s
        self.tty = console.is_terminal
        self.live = None
        self.last = 0.0
        self.seen: dict[int, str] = {}

    def __enter__(self):
        if self.tty:
            from rich.live import Live

            self.live = Live(console=self.console, auto_refresh=False, transient=False)
            self.live.start()
        self.refresh(force=True)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.refresh(force=True)
        finally:
            if self.live is not None:
                self.live.stop()

    def refresh(self, force: bool = False) -> list[Row] | None:
        now = time.monotonic()
        if not force and now - self.last < self.every_s:
            return None
        self.last = now
        rows = collect(self.sweep, self.study)
        if self.live is not None:
            done = sum(r.state in ("completed", "pruned", "failed") for r in rows)
            title = f"sweep {self.sweep.name}: {done} of {self.sweep.budget} trials finished"
            self.live.update(table(self.sweep, rows, title=title, live=True), refresh=True)
        else:
            for r in sorted(rows, key=lambda r: r.number):
                if self.seen.get(r.number) != r.state:
                    self.seen[r.number] = r.state
                    self.console.print(self.line(r), highlight=False, soft_wrap=True)
        return rows

    def line(self, r: Row) -> str:
        text = f"trial {r.name or r.number}: {r.state}"
        if r.values and r.state in ("completed", "pruned"):
            text += ", " + ", ".join(
                f"{m} {fmt(v)}" for (m, _), v in zip(self.sweep.objectives, r.values, strict=False)
            )
        if r.state == "pruned" and r.step is not None:
            text += f" at step {r.step}"
        if r.reason and r.state == "failed":
            text += f": {r.reason}"
        if r.duration_s is not None and r.state in ("completed", "pruned", "failed"):
            text += f" ({r.duration_s:.1f} s)"
        return text
