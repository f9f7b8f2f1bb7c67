"""`tunelab sweep`: start or continue a study, run its workers, show the table, write the results.

With `parallel: 1` the trials run in this process. With N > 1, N `tunelab sweep --worker`
processes run them (the same command a machine that shares the storage runs), each in its own
process group so that one Ctrl-C reaches each worker once (forwarded by this process), each
stopped by the kernel if this process dies, each with its share of the CPU threads or its own
GPU. When they are done, or stopped: the ranked table, `best.yaml`, `results.json`, `report.html`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from tunelab.procs import child_env
from tunelab.sweep import gateway, results
from tunelab.sweep.gateway import ConfigError, Interrupted, TunelabError
from tunelab.sweep.live import Display
from tunelab.sweep.resolved import Sweep
from tunelab.sweep.study import quiet_optuna

INTERRUPTED_CODES = (130, 143, -signal.SIGINT, -signal.SIGTERM)


def _folders(sweep: Sweep) -> None:
    for d in (sweep.folder, sweep.trials_dir, sweep.claims_dir, sweep.logs_dir):
        d.mkdir(parents=True, exist_ok=True)
    text = sweep.file.read_text(encoding="utf-8")
    head = f"# copied from {sweep.file.resolve()}" + (f" with {' '.join(sweep.overrides)}" if sweep.overrides else "")
    results.write_text(sweep.folder / "sweep.yaml", head + "\n" + text)  # atomic: every worker writes it


def open_existing(sweep: Sweep):
    """The study of a sweep that has been started, or a user error."""
    if not sweep.folder.is_dir() and sweep.spec.storage in (None, "journal", "sqlite"):
        raise TunelabError(
            f"nothing to resume: {sweep.folder} does not exist", hint=f"start it with: {sweep.command()}"
        )
    study = sweep.study(create=False)
    if study is None:
        raise TunelabError(
            f"nothing to resume: {sweep.storage_shown()} holds no study named {sweep.name!r}",
            hint=f"start it with: {sweep.command()}",
        )
    return study


def status(sweep: Sweep, console, out) -> int:
    """`--status`: the ranked table and the files, from the study as it is now; runs nothing."""
    quiet_optuna()
    study = open_existing(sweep)
    finish(sweep, study, console, out)
    return 0


def run(sweep: Sweep, console, out, resume: bool) -> int:
    """Run the sweep to its end (or until stopped); the exit code."""
    quiet_optuna()
    envs = worker_env(sweep, sweep.spec.parallel) if sweep.spec.parallel > 1 else []
    if resume:
        study = open_existing(sweep)
        _folders(sweep)
    else:
        _folders(sweep)
        study = sweep.study(create=True)
    rows = results.collect(sweep, study)
    left = sweep.budget - len(rows)
    unfinished = [r for r in rows if r.state in ("running", "interrupted", "killed")]
    finished = [r for r in rows if r.state in results.FINISHED]
    if finished or unfinished:
        console.print(
            f"continuing sweep {sweep.name}: {len(finished)} of {sweep.budget} trials finished"
            + (f", {len(unfinished)} to continue" if unfinished else ""),
            highlight=False,
        )
    if left <= 0 and not [r for r in unfinished if r.resumable]:
        if not unfinished:
            console.print(f"sweep {sweep.name} is complete: all {sweep.budget} trials finished", highlight=False)
        finish(sweep, study, console, out)
        return 0
    console.print(
        f"sweep {sweep.name}: {sweep.spec.method}, {sweep.budget} trials, {sweep.spec.parallel} worker"
        f"{'s' if sweep.spec.parallel > 1 else ''}; storage {sweep.storage_shown()}; "
        f"trial logs in {sweep.logs_dir}",
        highlight=False,
    )
    deadline = time.time() + sweep.spec.timeout if sweep.spec.timeout else None
    code = 1
    try:
        if sweep.spec.parallel == 1:
            code = _in_process(sweep, study, console, deadline)
        else:
            code = _workers(sweep, study, console, deadline, envs)
    finally:
        rows = finish(sweep, study, console, out)
    done = sum(r.state in results.FINISHED for r in rows)
    if code:
        console.print(
            f"[yellow]sweep stopped[/]; continue it with: [bold]{sweep.command('--resume')}[/]", soft_wrap=True
        )
    elif deadline is not None and time.time() >= deadline and done < sweep.budget:
        console.print(
            f"[yellow]timeout[/] ({sweep.spec.timeout:g} s): {done} of {sweep.budget} trials finished; "
            f"continue with: [bold]{sweep.command('--resume')}[/]",
            soft_wrap=True,
        )
    return code


def _in_process(sweep: Sweep, study, console, deadline: float | None) -> int:
    from rich.console import Console

    from tunelab.sweep.worker import work

    with open(sweep.logs_dir / "worker-0.log", "a", encoding="utf-8") as log:
        log_console = Console(file=log, width=160, force_terminal=False)
        with Display(sweep, study, console) as display:
            try:
                work(
                    sweep,
                    log_console,
                    say=lambda line: log_console.print(line, highlight=False),
                    deadline=deadline,
                    progress=display.refresh,
                    study=study,
                )
            except Interrupted as e:
                log_console.print(f"interrupted: {e.message}")
                return e.exit_code
            except KeyboardInterrupt:  # between two trials, outside the worker's own handling
                return 130
    return 0


def worker_env(sweep: Sweep, n: int) -> list[dict[str, str]]:
    """Each worker's environment: one GPU each on a GPU machine, else an equal share of the CPU threads."""
    gpus = _visible_gpus() if sweep.device != "cpu" else []
    if gpus:
        if n > len(gpus):
            raise ConfigError(
                [
                    (
                        f"parallel: {n} workers but {len(gpus)} GPU{'s' if len(gpus) != 1 else ''} "
                        "visible; one trial runs per GPU"
                    )
                ]
            )
        if sweep.device.startswith("cuda:") and sweep.device != "cuda:0":
            raise ConfigError(
                [f"model.device: {sweep.device}; each worker sees its one GPU as cuda:0 (use auto or cuda)"]
            )
        return [{"CUDA_VISIBLE_DEVICES": gpus[i]} for i in range(n)]
    threads = str(max(1, cpu_count() // n))
    return [
        {
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "TUNELAB_SWEEP_THREADS": threads,
            "CUDA_VISIBLE_DEVICES": "",
        }
        for _ in range(n)
    ]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except ImportError:
        return []


def _workers(sweep: Sweep, study, console, deadline: float | None, envs: list[dict[str, str]]) -> int:
    gateway.build_local_models(sweep.models)  # once here, not once per worker at the same time
    procs: list[subprocess.Popen] = []
    stops = 0

    def forward(signum, frame):
        nonlocal stops
        stops += 1
        if stops == 1:
            console.print(
                "[yellow]stopping: each worker saves a checkpoint after its current step[/] "
                "(Ctrl-C again to stop them at once)"
            )
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ExitStack() as logs:
            for i, extra in enumerate(envs):
                cmd = [sys.executable, "-m", "tunelab.cli.main", "sweep", str(sweep.file), *sweep.overrides, "--worker"]
                if deadline is not None:
                    cmd += ["--deadline", str(deadline)]
                log = logs.enter_context(open(sweep.logs_dir / f"worker-{i}.log", "a", encoding="utf-8"))
                # its own session: a Ctrl-C at the terminal reaches this process only, which forwards it once
                procs.append(
                    subprocess.Popen(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        # SIGTERM when this process dies (a kill -9 of it leaves no worker training on its
                        # own: the worker saves a checkpoint and marks its trial interrupted)
                        env=child_env({**os.environ, **extra, "COLUMNS": "160"}),
                    )
                )
            with Display(sweep, study, console) as display:
                while any(p.poll() is None for p in procs):
                    time.sleep(0.5)
                    display.refresh()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    codes = [p.returncode for p in procs]
    for i, c in enumerate(codes):
        if c not in (0, *INTERRUPTED_CODES):
            how = f"was killed by signal {-c}" if c < 0 else f"exited with code {c}"
            console.print(
                f"[yellow]worker {i} {how}[/] (see {sweep.logs_dir / f'worker-{i}.log'}); "
                "its trial continues when the sweep does",
                highlight=False,
            )
    if stops or any(c in INTERRUPTED_CODES for c in codes):
        return 130
    return 0 if all(c == 0 for c in codes) else 1


def finish(sweep: Sweep, study, console, out) -> list[results.Row]:
    """The ranked table, then results.json, best.yaml and report.html (each written atomically)."""
    from tunelab.sweep.report import write_report

    rows = results.collect(sweep, study)
    c = results.counts(rows)
    title = (
        f"sweep {sweep.name}: " + ", ".join(f"{n} {s}" for s, n in sorted(c.items())) + f" of {sweep.budget}"
        if rows
        else f"sweep {sweep.name}: no trials yet"
    )
    _wide(out).print(results.table(sweep, rows, title=title))
    for line in results.reasons(rows):
        out.print(line, highlight=False, soft_wrap=True)
    if not rows:
        return rows
    sweep.folder.mkdir(parents=True, exist_ok=True)
    results.write_results(sweep, rows)
    best_file = report = None
    try:
        best_file = results.write_best(sweep, rows)
        report = write_report(sweep, study, rows)
    except TunelabError as e:
        console.print(f"[yellow]not written[/]: {e.message}", highlight=False)
    written = [str(sweep.results_file)] + [str(p) for p in (best_file, report) if p is not None]
    out.print(f"wrote {', '.join(written)}", highlight=False, soft_wrap=True)
    if best_file is not None:
        out.print(f"train the best config again: tunelab train {_short(best_file)}", highlight=False, soft_wrap=True)
    return rows


def _wide(out):
    """A log or a pipe is no 80-column terminal: the table is printed whole there, not squeezed."""
    if out.is_terminal:
        return out
    from rich.console import Console

    return Console(file=out.file, width=max(out.width, 220), highlight=False)


def _short(p: Path) -> str:
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def worker_main(sweep: Sweep, console, deadline: float | None) -> int:
    """`tunelab sweep SWEEP --worker`: run trials of the sweep's study until it has them all.

    Started by `tunelab sweep` for `parallel: N`, or by hand on any machine that reaches the
    storage (then the sweep folder on that machine holds the trials it runs)."""
    from tunelab.sweep.worker import work

    quiet_optuna()
    threads = os.environ.get("TUNELAB_SWEEP_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    _folders(sweep)
    study = sweep.study(create=True)
    console.print(f"worker {os.getpid()}: sweep {sweep.name}, storage {sweep.storage_shown()}", highlight=False)
    try:
        outcomes = work(
            sweep,
            console,
            say=lambda line: console.print(line, highlight=False, soft_wrap=True),
            deadline=deadline,
            study=study,
        )
    except Interrupted as e:
        console.print(f"interrupted: {e.message}", highlight=False)
        return e.exit_code
    console.print(
        f"worker {os.getpid()}: done after {len(outcomes)} trial{'s' if len(outcomes) != 1 else ''}", highlight=False
    )
    return 0
