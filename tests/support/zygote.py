"""Run CLI commands in processes forked from one that has already imported the heavy libraries.

The fault battery runs hundreds of short commands (most fail in validation within a second); a fresh
`python -m tunelab.cli.main` spends seconds importing torch and transformers first. The zygote imports
them once, then forks one child per command: each child is a new process (its own memory, working
folder, environment, output and exit code, killed with its process group on timeout) that starts
where a fresh interpreter would be after its imports. Nothing has run in the zygote (no threads, no
computation) before it forks.

Libraries read some environment variables when they are imported (HF_HUB_OFFLINE, WANDB_*, ...), so a
command whose environment differs from the zygote's in anything but TUNELAB_* variables is refused
here (`Zygote.can_run`); the battery then starts a real interpreter for it.

    python tests/support/zygote.py   # the zygote itself: JSON requests on stdin, JSON answers on stdout
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
PRELOAD = ("torch", "numpy", "pyarrow", "transformers", "datasets", "peft", "trl", "tunelab.cli.main")
# TUNELAB_*: read by tunelab when a command runs; PYTEST_CURRENT_TEST: pytest names each test in it (no library
# reads it at import), so under pytest every test but the first would otherwise start a fresh interpreter
SAFE_PREFIXES = ("TUNELAB_", "PYTEST_CURRENT_TEST")


class Zygote:
    """The test side: starts the zygote, sends it commands, reads their output."""

    def __init__(self, env: dict[str, str]):
        self.env = dict(env)
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self.env,
            text=True,
            cwd=str(HERE),
        )
        ready = self.proc.stdout.readline()
        if not ready.startswith("ready"):
            raise RuntimeError(f"the zygote did not start: {ready!r}")

    def can_run(self, env: dict[str, str]) -> bool:
        keys = set(env) | set(self.env)
        return self.alive and all(env.get(k) == self.env.get(k) for k in keys if not k.startswith(SAFE_PREFIXES))

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(
        self, argv: list[str], cwd: Path, env: dict[str, str], timeout: float, fault: str | None, out: Path
    ) -> tuple[int | None, str, bool]:
        """(exit code, stdout + stderr, timed out) of one command."""
        request = {"argv": argv, "cwd": str(cwd), "env": env, "timeout": timeout, "fault": fault, "out": str(out)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        text = out.read_text(encoding="utf-8", errors="replace") if out.is_file() else ""
        out.unlink(missing_ok=True)
        return (None if answer["timed_out"] else answer["rc"]), text, answer["timed_out"]

    def close(self) -> None:
        if self.alive:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _die_with(parent: int) -> None:
    from tunelab.procs import follow

    follow(parent, signal.SIGKILL)


def _child(request: dict) -> None:
    """In the forked child: become the command, as `python -m tunelab.cli.main ARGS` would run it."""
    os.setpgid(0, 0)  # its own group: a timeout kills what it started too
    _die_with(os.getppid())
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    fd = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - fd 0 lives as long as the process
    code = 1
    try:
        if request["fault"]:
            sys.path.insert(0, str(HERE))
            sys.argv = ["fault_inject.py", request["fault"], "--", *request["argv"]]
            import fault_inject

            fault_inject.main()
        else:
            from tunelab.cli.main import main

            sys.argv = ["tunelab", *request["argv"]]
            main()
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - what the interpreter would print for an uncaught exception
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
    os._exit(code)


def _wait(pid: int, timeout: float) -> tuple[int | None, bool]:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        if time.monotonic() > deadline:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return None, True
        time.sleep(0.02)


def serve() -> None:
    _die_with(os.getppid())
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        rc, timed_out = _wait(pid, request["timeout"])
        # a negative code is a signal's, as subprocess reports it
        print(json.dumps({"rc": rc, "timed_out": timed_out}), flush=True)


if __name__ == "__main__":
    serve()
