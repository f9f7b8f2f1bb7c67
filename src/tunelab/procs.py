"""Processes tunelab starts die with the process that started them.

A launcher killed by `timeout`, a scheduler's SIGKILL or an OOM killer cannot forward anything to
its children; left alone, they run on as orphans holding memory (and a GPU). So every process
tunelab starts (the `--nproc` workers, a sweep's workers, the servers tests and benchmarks start)
gets SIGTERM when its parent dies: the same stop as a scheduler's, so a training worker finishes
its step and saves a checkpoint, then exits.

The parent says who it is in `PARENT_ENV` (`child_env`); the child arranges its own death at start
(`die_with_parent`, called by the CLI's entry point), so one mechanism serves every way a process is
started, torch's elastic launcher included, which starts its workers in sessions of their own.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Mapping

PARENT_ENV = "TUNELAB_PARENT_PID"  # set for a process tunelab starts: the PID it dies with
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_INTERVAL_S = 0.5


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a tunelab command this process starts, so that it dies with this process.

    On Linux the child follows the *thread* that starts it (PR_SET_PDEATHSIG): start it from a thread
    that outlives it, the main thread as a rule."""
    return {**(os.environ if base is None else base), PARENT_ENV: str(os.getpid())}


def exec_dies_with_parent(sig: int = signal.SIGTERM):
    """A `preexec_fn` for a program that is not tunelab (vLLM's server, MLflow's UI): on Linux it sets the
    parent-death signal in the forked child before it execs (the signal survives exec), so the program
    stops with this process; None elsewhere, where the caller's own stop path is what ends it."""
    if not sys.platform.startswith("linux"):
        return None

    def arrange() -> None:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig))

    return arrange


def die_with_parent(env: dict[str, str] | os._Environ | None = None) -> bool:
    """Arrange SIGTERM for this process when the process it follows exits; False when that one is
    already gone (the caller exits then).

    It follows the PID in `PARENT_ENV` (taken out of the environment: this process's own children
    follow this process, not their grandparent), else, in a worker torch's elastic launcher started
    (torchrun, `accelerate launch`: TORCHELASTIC_RUN_ID), that launcher; any other process follows
    nothing."""
    env = os.environ if env is None else env
    named = env.pop(PARENT_ENV, None)
    if named is not None and named.strip().isdigit():
        return follow(int(named))
    if env.get("TORCHELASTIC_RUN_ID"):
        parent = os.getppid()
        return parent != 1 and follow(parent)
    return True


def follow(parent: int, sig: int = signal.SIGTERM) -> bool:
    """`sig` to this process when `parent` exits: the kernel's parent-death signal on Linux, a watching
    thread elsewhere. False when `parent` is not (or no longer) this process's parent."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig))
    else:
        watch(parent, sig)
    # checked after the prctl: the parent may have died between our start and it
    return os.getppid() == parent


def watch(parent: int, sig: int = signal.SIGTERM, interval_s: float = WATCH_INTERVAL_S) -> threading.Thread:
    """The portable fallback (macOS has no parent-death signal): a daemon thread that sends `sig` to this
    process once its parent is no longer `parent` (an orphan is re-parented to PID 1 or a subreaper)."""

    def run() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os.kill(os.getpid(), sig)

    t = threading.Thread(target=run, name="tunelab-parent-watch", daemon=True)
    t.start()
    return t
