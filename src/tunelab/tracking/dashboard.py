"""`tunelab dashboard`: each backend's own UI on 127.0.0.1 over the local tracking directory."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tunelab.artifacts.env import isolated
from tunelab.errors import TunelabError

DEFAULT_PORTS = {"trackio": 7860, "mlflow": 5000, "tensorboard": 6006}


def _wait_for_port(port: int, proc: subprocess.Popen | None, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise TunelabError(f"the dashboard exited at start (code {proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise TunelabError(f"the dashboard did not answer on 127.0.0.1:{port} within {timeout_s:.0f} s")


def start(
    backend: str, tracking_dir: Path, project: str | None, port: int | None, uri: str | None = None
) -> tuple[str, Callable[[], None]]:
    """Start the UI, the trackers pointed at `tracking_dir` until it stops; returns (url, stop)."""
    from contextlib import ExitStack

    stack = ExitStack()
    d = stack.enter_context(isolated(tracking_dir))
    try:
        url, stop = _start(backend, d, project, port, uri)
    except BaseException:
        stack.close()
        raise

    def stop_all() -> None:
        try:
            stop()
        finally:
            stack.close()

    return url, stop_all


def _start(
    backend: str, d: Path, project: str | None, port: int | None, uri: str | None
) -> tuple[str, Callable[[], None]]:
    port = port or DEFAULT_PORTS.get(backend, 0)
    if backend == "trackio":
        import contextlib
        import io

        import trackio

        with contextlib.redirect_stdout(io.StringIO()):  # its banner also prints a write-token URL
            server, url, _share, _full = trackio.show(
                project=project, open_browser=False, block_thread=False, host="127.0.0.1", server_port=port
            )
        if project:
            url = url.rstrip("/") + f"/?project={project}"
        return url, server.close
    if backend == "mlflow":
        from tunelab.artifacts.mlflow_store import default_uri

        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            uri or default_uri(d),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ]
        from tunelab.procs import exec_dies_with_parent

        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=exec_dies_with_parent(),  # a killed `tunelab dashboard` leaves no server behind
        )
        try:
            _wait_for_port(port, proc)
        except TunelabError:
            _stop(proc)
            raise
        return f"http://127.0.0.1:{port}/", lambda: _stop(proc)
    if backend == "tensorboard":
        from tensorboard import program

        logdir = d / "tensorboard"
        logdir.mkdir(parents=True, exist_ok=True)
        tb = program.TensorBoard()
        tb.configure(argv=[None, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)])
        url = tb.launch()  # serves from a daemon thread; stops with the process
        return url, lambda: None
    if backend == "wandb":
        raise TunelabError(
            "W&B has no local dashboard",
            hint=f"upload offline runs with `wandb sync {d / 'wandb'}/offline-run-*` and open wandb.ai",
        )
    raise TunelabError(f"--backend: unknown backend {backend!r} (dashboards: trackio, mlflow, tensorboard)")


def _stop(proc: subprocess.Popen) -> None:
    import os
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers: the group this command started
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
