"""Battery cases for processes: `--nproc` against the machine's cores and memory, the launcher's
variables set by hand, and the workers of a launcher killed with SIGKILL.

No case starts more than 2 worker processes: counts above the cores go through `validate --nproc`,
counts beyond the memory are refused before any process starts.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from battery import Context, Outcome, Skip, case, expect

LAUNCHED = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999", "RANK": "0", "LOCAL_RANK": "0"}


@contextlib.contextmanager
def env_of(ctx: Context, **variables: str):
    """`variables` in the CLI's environment for the duration (the context is shared by every case)."""
    before = dict(ctx.env)
    ctx.env.update(variables)
    try:
        yield
    finally:
        ctx.env.clear()
        ctx.env.update(before)


def _alive(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _workers_of(launcher: int) -> list:
    """The `tunelab train` processes the launcher started (not the short-lived helpers it may run)."""
    import psutil

    found = []
    for child in psutil.Process(launcher).children():
        try:
            if "train" in child.cmdline():
                found.append(child)
        except psutil.Error:  # gone, or a zombie not reaped yet
            continue
    return found


@dataclass
class Killed:
    """What became of a `--nproc 2` launcher killed with SIGKILL and of its workers."""

    output: str
    workers: list[int] = field(default_factory=list)  # the PIDs seen before the kill
    survivors: list[int] = field(default_factory=list)  # those still running `grace_s` after it
    gone_after_s: float | None = None


def kill_launcher(args: list[str], cwd: Path, ready: Callable[[], bool], grace_s: float = 20) -> Killed:
    """Start `tunelab ARGS` (a `--nproc 2` train), SIGKILL it once both workers run and `ready()` says so,
    and watch the workers for `grace_s`; any still running then are killed here (and reported)."""
    import psutil

    log_path = cwd / f"launcher-{time.monotonic_ns()}.log"
    with open(log_path, "w") as log:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "tunelab.cli.main", *args],
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"},
        )
    workers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and launcher.poll() is None:
            workers = _workers_of(launcher.pid)
            if len(workers) == 2 and ready():
                break
            time.sleep(0.2)
        if launcher.poll() is not None or len(workers) != 2:
            return Killed(log_path.read_text() + f"\nno two workers up (launcher rc {launcher.poll()})")
        launcher.kill()
        launcher.wait()
        t0 = time.monotonic()
        while any(_alive(w) for w in workers) and time.monotonic() - t0 < grace_s:
            time.sleep(0.1)
        gone = time.monotonic() - t0
        survivors = [w.pid for w in workers if _alive(w)]
        return Killed(log_path.read_text(), [w.pid for w in workers], survivors, None if survivors else round(gone, 2))
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for w in workers:  # never leave an orphan behind, whatever the outcome
            if _alive(w):
                w.kill()


@dataclass
class Watched:
    rc: int | None
    output: str
    children: set[int]  # every process it started while it ran
    seconds: float


def run_watched(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 60) -> Watched:
    """`tunelab ARGS`, noting every process it starts; the first one seen ends it, children and all (a
    regression of the `--nproc` check must not start 64 workers on a small machine)."""
    import psutil

    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunelab.cli.main", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {}), "COLUMNS": "200"},
    )
    seen: set[int] = set()
    me = psutil.Process(proc.pid)
    while proc.poll() is None and time.monotonic() - t0 < timeout:
        try:
            children = me.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        if children:
            seen |= {c.pid for c in children}
            for c in [*children, me]:
                with contextlib.suppress(psutil.Error):
                    c.kill()
            break
        time.sleep(0.01)
    if proc.poll() is None and time.monotonic() - t0 >= timeout:
        proc.kill()
    output, _ = proc.communicate()
    return Watched(proc.returncode, output, seen, time.monotonic() - t0)


def _refused_in(ctx: Context, args: list[str], text: str, seconds: float) -> Outcome:
    """`expect`, and refused within `seconds` without starting any process."""
    w = run_watched(args, ctx.tmp, ctx.env)
    o = Outcome(w.rc, w.output, text)
    if w.children or w.seconds > seconds:
        o.output += f"\ntook {w.seconds:.1f} s, started {len(w.children)} processes"
        o.expect = f"refused within {seconds} s, no process started"
    return o


@case("bad input")
def case_nproc_zero(ctx):
    return expect(ctx, ["train", str(ctx.config("np0.yaml")), "--nproc", "0"], "--nproc: 0 processes; give at least 1")


@case("bad input")
def case_nproc_negative(ctx):
    return expect(ctx, ["train", str(ctx.config("npneg.yaml")), "--nproc=-1"], "--nproc: -1 processes")


@case("bad input")
def case_nproc_64_beyond_memory_refused_at_once(ctx):
    import psutil

    if 64 * 0.9 * 2**30 < psutil.virtual_memory().available:
        raise Skip("this machine holds 64 processes of the tiny run")
    o = _refused_in(ctx, ["train", str(ctx.config("np64.yaml")), "--nproc", "64"], "at most", 5)
    if (ctx.tmp / "runs" / "np64").exists():
        o.lost = "a run directory was created for a refused launch"
    return o


@case("bad input")
def case_nproc_1000_beyond_memory_refused_at_once(ctx):
    return _refused_in(
        ctx, ["train", str(ctx.config("np1000.yaml")), "--nproc", "1000"], "this machine has available; at most", 5
    )


@case("bad input")
def case_validate_nproc_beyond_memory(ctx):
    return expect(ctx, ["validate", str(ctx.config("vnp.yaml")), "--nproc", "1000"], "--nproc: 1000 processes")


@case("bad input")
def case_validate_nproc_above_the_cores_is_a_warning(ctx):
    from tunelab.perf.machine import Machine

    n = Machine.here().cores + 1
    if n * 0.9 * 2**30 > Machine.here().memory:
        raise Skip(f"{n} processes do not fit this machine's memory")
    return expect(ctx, ["validate", str(ctx.config("vcores.yaml")), "--nproc", str(n)], "usable core", rc=0)


@case("bad input")
def case_world_size_without_a_launcher(ctx):
    with env_of(ctx, WORLD_SIZE="2"):
        return expect(ctx, ["train", str(ctx.config("ws.yaml"))], "WORLD_SIZE=2 but RANK, MASTER_ADDR, MASTER_PORT")


@case("bad input")
def case_world_size_not_a_number(ctx):
    with env_of(ctx, WORLD_SIZE="two"):
        return expect(ctx, ["train", str(ctx.config("wsn.yaml"))], "WORLD_SIZE=two: not a number")


@case("bad input")
def case_rank_outside_the_world(ctx):
    with env_of(ctx, **{**LAUNCHED, "WORLD_SIZE": "2", "RANK": "5"}):
        return expect(ctx, ["train", str(ctx.config("rank.yaml"))], "RANK=5 is not in 0..1")


@case("bad input")
def case_local_world_larger_than_the_world(ctx):
    with env_of(ctx, **LAUNCHED, WORLD_SIZE="2", LOCAL_WORLD_SIZE="4"):
        return expect(ctx, ["train", str(ctx.config("lws.yaml"))], "LOCAL_WORLD_SIZE=4")


@case("bad input")
def case_torchrun_rank_of_64_on_a_small_machine(ctx):
    """What each of 64 ranks a torchrun started sees first: refused before it loads anything."""
    with env_of(ctx, **LAUNCHED, WORLD_SIZE="64", LOCAL_WORLD_SIZE="64"):
        return _refused_in(ctx, ["train", str(ctx.config("tr64.yaml"))], "LOCAL_WORLD_SIZE: 64 processes", 5)


@case("bad input")
def case_nproc_inside_a_launched_rank(ctx):
    with env_of(ctx, **LAUNCHED, WORLD_SIZE="2"):
        return expect(ctx, ["train", str(ctx.config("nested.yaml")), "--nproc", "2"], "already one of several")


@case("fault")
def case_launcher_sigkill_leaves_no_worker(ctx):
    """`timeout -s KILL` or a scheduler's SIGKILL of `train --nproc 2` while its workers start up."""
    cfg = ctx.config("killed.yaml", training={"max_steps": 400, "save_steps": None}, output={"name": "killed"})
    started = time.monotonic()
    k = kill_launcher(["train", str(cfg), "--nproc", "2"], ctx.tmp, ready=lambda: time.monotonic() - started > 8)
    o = Outcome(0, k.output, "no worker outlived the launcher", 0)
    if not k.workers:
        o.rc = None
    elif not k.survivors:
        o.output += f"\nno worker outlived the launcher (gone {k.gone_after_s} s after it)"
    else:
        o.output += f"\nworkers {k.survivors} still ran 20 s after the launcher was killed"
    return o
