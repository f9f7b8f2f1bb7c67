"""`tunelab train CONFIG --nproc N`: the same command in N processes per machine, started by torch's
elastic launcher (what `torchrun` runs) in this process.

Everything that can be refused is refused here first, in one line, before any process starts or
anything is written: the flags and a rendezvous port that is taken, then the rules every rank would
apply (`training.rules`: more processes than this machine holds, the strategy, the run directory, a
resume from a checkpoint written by another number of processes, ...). The
workers are `python -m tunelab train CONFIG ...`, the command a user would give torchrun or
`accelerate launch` themselves; each finds its rank in the environment (`training.distributed.World`)
and dies with this process (`tunelab.procs`), which torch's launcher alone does not arrange.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tunelab.errors import TunelabError
from tunelab.procs import PARENT_ENV
from tunelab.training import distributed as dist

if TYPE_CHECKING:
    from tunelab.config import RunConfig

# Seconds the launcher gives the workers to finish their step and write a checkpoint after Ctrl-C /
# SIGTERM before it kills them (torchrun's own default, 30 s, is shorter than one step of a large model).
SHUTDOWN_TIMEOUT_S = 900
DEFAULT_PORT = 29500


@dataclass(frozen=True)
class Launch:
    """Where the processes of a job run: `nproc` on each of `nnodes` machines."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes

    def check(self) -> None:
        from tunelab.training.rules import check_nproc

        check_nproc(self.nproc)
        if self.nnodes < 1:
            raise TunelabError(f"--nnodes: {self.nnodes} machines; give at least 1")
        if not 0 <= self.node_rank < self.nnodes:
            raise TunelabError(
                f"--node-rank: {self.node_rank} is not in 0..{self.nnodes - 1} (one number per machine, 0 on the "
                "machine at --master-addr)"
            )
        if self.nnodes > 1 and not self.master_addr:
            raise TunelabError(
                "--master-addr: needed with --nnodes > 1: the address the other machines reach the one with "
                "--node-rank 0 at"
            )
        if self.master_port is not None and not 0 < self.master_port < 65536:
            raise TunelabError(f"--master-port: {self.master_port} is no TCP port (1-65535)")


def check_port_free(port: int) -> None:
    """Rank 0's machine hosts the rendezvous on `port`: taken, the launch would fail after a timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free to torch too
        try:
            s.bind(("", port))
        except OSError as e:
            raise TunelabError(
                f"--master-port: port {port} is in use on this machine ({(e.strerror or str(e)).lower()})",
                hint="pick another with --master-port (on one machine, leave it out to get a free one)",
            ) from None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def early_checks(cfg: RunConfig, launch: Launch) -> int:
    """The refusals that need no library loaded (so they come in a second): the flags, the strategy
    as far as the config decides it, and the rendezvous port, which is returned."""
    launch.check()
    dist.require_fit(dist.process_fit(cfg, launch.nproc, planned=False))  # --nproc 64: refused in a second
    if dist.World.from_env().distributed:
        raise TunelabError(
            "--nproc: this process is already one of several started by a launcher (torchrun, accelerate launch)",
            hint="leave out --nproc / --nnodes when a launcher starts the processes",
        )
    from tunelab.training.rules import pinned_device, raise_first, strategy

    raise_first(pinned_device(cfg.model.device, launch.world_size) + strategy(cfg, launch.world_size, None))
    port = launch.master_port or (DEFAULT_PORT if launch.nnodes > 1 else free_port())
    if launch.node_rank == 0 and (launch.master_port is not None or launch.nnodes > 1):
        check_port_free(port)
    return port


def preflight(cfg: RunConfig, launch: Launch, resume: bool) -> tuple[str, str | None]:
    """What every rank would refuse (`training.rules`, as `validate --nproc` lists it), refused once here
    (after `early_checks`); returns the strategy and a warning about the number of processes (None when
    there is none)."""
    from tunelab.model.resolve import ResolvedOnce
    from tunelab.runs import RunLock
    from tunelab.training.rules import Situation, before_load, raise_first, run_dir_for

    device = "cpu" if dist.runs_on_cpu(cfg) else "cuda:0"
    model = ResolvedOnce(cfg)  # the rules' plans and the strategy below read config.json once
    situation = Situation(
        resume=resume, processes=launch.world_size, local_processes=launch.nproc, device=device, fit=True, model=model
    )
    notes = raise_first(before_load(cfg, situation))
    run = run_dir_for(cfg, resume)
    if launch.node_rank == 0 and run.path.parent.is_dir():
        RunLock(run.path).acquire().release()  # in use by another run: said now, not by rank 0 later
    warning = next((note.line() for note in notes if note.field == "--nproc"), None)  # the ranks say the rest
    return dist.resolve_strategy(cfg, launch.world_size, device, launch.nproc, model), warning


def launch_run(
    cfg, config_path: str | Path, overrides: list[str] | None, resume: bool, launch: Launch, port: int, console
) -> int:
    """Start the job's processes on this machine and wait for them (after `early_checks`); returns the
    exit code to leave with (a worker's own: 2 for a user error it printed, 130 / 143 after Ctrl-C / SIGTERM)."""
    from rich.text import Text

    from tunelab import compat

    strategy, warning = preflight(cfg, launch, resume)
    if warning:
        console.print(Text(f"warning: {warning}", style="yellow"), highlight=False, soft_wrap=True)
    addr = launch.master_addr or "127.0.0.1"
    argv = [
        "--nnodes",
        str(launch.nnodes),
        "--nproc-per-node",
        str(launch.nproc),
        "--node-rank",
        str(launch.node_rank),
        "--master-addr",
        addr,
        "--master-port",
        str(port),
        "--max-restarts",
        "0",
        "--shutdown-timeout",
        str(SHUTDOWN_TIMEOUT_S),
        "--module",
        "tunelab",
        "train",
        str(config_path),
        *(overrides or []),
        *(["--resume"] if resume else []),
    ]
    where = f"{launch.nproc} processes on this machine" + (
        f" x {launch.nnodes} machines (this is node {launch.node_rank})" if launch.nnodes > 1 else ""
    )
    console.print(
        Text(
            f"launch: {where}, {strategy}, rendezvous {addr}:{port} (torch.distributed.run); "
            f"{dist.batch_note(cfg, launch.world_size)}",
            style="bold",
        ),
        highlight=False,
        soft_wrap=True,
    )
    return _run_elastic(compat, argv, launch.nproc)


def _run_elastic(compat, argv: list[str], nproc: int) -> int:
    import logging

    import torch.distributed.run  # noqa: F401 - its modules' loggers exist from here on
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # the workers print their own errors (rank 0 one line, the others nothing) and their stop
    # messages; the launcher's log lines and failure report would repeat them as a page of text.
    # Each elastic module sets its logger's own level, so each is quietened (and put back after).
    quiet = {
        name: log
        for name, log in logging.Logger.manager.loggerDict.items()
        if isinstance(log, logging.Logger) and name.startswith(("torch.distributed.elastic", "torch.distributed.run"))
    }
    levels = {name: log.level for name, log in quiet.items()}
    for log in quiet.values():
        log.setLevel(logging.CRITICAL)
    threads = "OMP_NUM_THREADS" not in os.environ
    if threads:  # processes on one machine share its cores (oversubscribed threads slow each other far beyond N x)
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    # the workers die with this process: a launcher killed with SIGKILL leaves no orphan training on its own
    os.environ[PARENT_ENV] = str(os.getpid())
    os.environ[dist.CHECKED_ENV] = "1"
    try:
        compat.torchrun(argv)
        return 0
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = failure.exitcode if failure.exitcode >= 0 else 128 - failure.exitcode
        if code not in (2, 130, 143):  # a user error or a stop was said by the worker itself
            sys.stderr.write(
                f"error: rank {rank} exited with code {code}; the other ranks were stopped "
                "(its traceback, if any, is above)\n"
            )
        return code
    except SignalException as e:
        return 128 + int(e.sigval)
    finally:
        for name, log in quiet.items():
            log.setLevel(levels[name])
        if threads:
            os.environ.pop("OMP_NUM_THREADS", None)
        os.environ.pop(PARENT_ENV, None)
        os.environ.pop(dist.CHECKED_ENV, None)
