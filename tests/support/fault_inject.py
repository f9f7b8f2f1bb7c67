"""Run the real `tunelab` CLI with faults injected as trainer callbacks (test support, not shipped).

    python tests/support/fault_inject.py FAULT -- train run.yaml key=value ...

FAULT is one of:
  crash_after_save:N[:RANK]
                       die like a killed process (os._exit) right after checkpoint N is saved (only
                       the process of that rank when several are launched, e.g. by torchrun)
  fill_disk_at:N:FREE  after optimizer step N, fill the output folder's file system so that only
                       FREE bytes are left (the next checkpoint write fails with ENOSPC)
  signal_at:N:SIG      send this process SIGTERM or SIGINT after optimizer step N
  pause_at:N:SECONDS   sleep after optimizer step N (holds the run open for a second process)

`tunelab.training.run.train` takes extra callbacks; this wrapper passes them and then hands over
to the CLI exactly as `tunelab` would run.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path

from transformers import TrainerCallback


class CrashAfterSave(TrainerCallback):
    def __init__(self, step: int, rank: int | None = None):
        self.step, self.rank = step, rank

    def on_save(self, args, state, control, **kw):
        if state.global_step == self.step and self.rank in (None, int(os.environ.get("RANK", "0"))):
            os._exit(75)


class FillDisk(TrainerCallback):
    def __init__(self, step: int, free: int):
        self.step, self.free = step, free

    def on_step_end(self, args, state, control, **kw):
        if state.global_step != self.step:
            return
        import shutil

        folder = Path(args.output_dir)
        left = shutil.disk_usage(folder).free - self.free
        with (folder.parent.parent / "filler.bin").open("wb") as f:
            while left > 0:
                n = min(left, 1 << 20)
                try:
                    f.write(b"\0" * n)
                    f.flush()
                except OSError:
                    break
                left -= n


class SignalAt(TrainerCallback):
    def __init__(self, step: int, sig: int):
        self.step, self.sig = step, sig

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            os.kill(os.getpid(), self.sig)


class PauseAt(TrainerCallback):
    def __init__(self, step: int, seconds: float):
        self.step, self.seconds = step, seconds

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            import time

            time.sleep(self.seconds)


def callbacks_for(fault: str) -> list[TrainerCallback]:
    kind, *args = fault.split(":")
    if kind == "crash_after_save":
        return [CrashAfterSave(int(args[0]), int(args[1]) if len(args) > 1 else None)]
    if kind == "fill_disk_at":
        return [FillDisk(int(args[0]), int(args[1]))]
    if kind == "pause_at":
        return [PauseAt(int(args[0]), float(args[1]))]
    if kind == "signal_at":
        return [SignalAt(int(args[0]), getattr(signal, args[1]))]
    raise SystemExit(f"unknown fault {fault!r}")


def main() -> None:
    fault, sep, *cli_args = sys.argv[1:]
    assert sep == "--", "usage: fault_inject.py FAULT -- ARGS..."
    import tunelab.training.run as run

    run.train = functools.partial(run.train, callbacks=callbacks_for(fault))
    from tunelab.cli.main import app

    sys.argv = ["tunelab", *cli_args]
    app(prog_name="tunelab")


if __name__ == "__main__":
    main()
