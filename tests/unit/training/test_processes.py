"""Processes: `--nproc` checked against the machine's cores and memory before any process starts, and
every process tunelab starts dies with its parent (`tunelab.procs`).

Nothing here starts more than 2 worker processes: larger counts are refused before any starts, or go
through the rule with a made-up machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import base_config, write_cfg
from tunelab.errors import TunelabError
from tunelab.perf.machine import Machine, processes_fit
from tunelab.procs import PARENT_ENV
from tunelab.training.distributed import (
    FLOOR_NEED,
    check_launch_env,
    process_fit,
    require_fit,
)

GIB = 2**30
SMALL = Machine(cores=2, memory=22 * GIB)  # this project's CI machine, roughly


@pytest.fixture
def cfg(tmp_path, synth_file):
    from tunelab.config import load_config

    return load_config(write_cfg(tmp_path, base_config(synth_file, tmp_path / "runs")))


# --- the rule, on a made-up machine ---------------------------------------------------------------


def test_more_processes_than_the_memory_holds_are_refused_with_what_would_fit():
    fit = processes_fit(64, 0.9 * GIB, SMALL, FLOOR_NEED)
    assert fit.kind == "problem" and fit.fits == 24
    assert "64 processes: every process needs at least 0.90 GiB" in fit.message
    assert "64 x 0.90 = 57.6 GiB exceeds the 22.0 GiB this machine has available; at most 24 fit" in fit.message
    assert fit.hint == "use --nproc 2"  # what fits the memory and the cores


def test_more_processes_than_cores_is_a_warning_when_the_memory_holds_them():
    fit = processes_fit(3, 0.9 * GIB, SMALL, FLOOR_NEED)
    assert fit.kind == "note" and "3 processes on 2 usable cores" in fit.message and "--nproc 2" in fit.message
    assert processes_fit(2, 0.9 * GIB, SMALL, FLOOR_NEED).kind == "ok"
    assert processes_fit(24, 0.9 * GIB, SMALL, FLOOR_NEED).kind == "note"
    assert processes_fit(25, 0.9 * GIB, SMALL, FLOOR_NEED).kind == "problem"


def test_when_not_one_process_fits_the_hint_says_to_free_memory():
    fit = processes_fit(2, 4 * GIB, Machine(cores=8, memory=3 * GIB), FLOOR_NEED)
    assert fit.kind == "problem" and "at most 0 fit" in fit.message and fit.hint == "free memory on this machine first"


def test_the_floor_refuses_without_loading_a_library_and_the_plan_refines_it(cfg):
    floor = process_fit(cfg, 64, machine=SMALL, planned=False)
    assert floor.kind == "problem" and "every process needs at least" in floor.message
    tight = Machine(cores=2, memory=2 * 0.88 * GIB)  # two floors, but less than two planned runs
    planned = process_fit(cfg, 2, machine=tight)
    assert planned.kind == "problem" and "a CPU run of this config needs about" in planned.message
    assert process_fit(cfg, 2, machine=SMALL).kind == "ok"


def test_a_gpu_run_takes_one_process_per_gpu(cfg, monkeypatch):
    import torch

    from tunelab.training import distributed

    monkeypatch.setattr(distributed, "runs_on_cpu", lambda cfg: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    fit = process_fit(cfg, 2, machine=SMALL)
    assert fit.kind == "problem" and fit.message == "2 processes but this machine has 1 GPU"
    assert fit.hint.startswith("one process per GPU: --nproc 1")
    assert process_fit(cfg, 64, machine=SMALL).message.startswith("64 processes: every process needs at least")
    cfg.distributed.backend = "gloo"  # processes sharing a GPU, for tests
    assert process_fit(cfg, 2, machine=SMALL).kind == "ok"


def test_a_refusal_is_one_user_error_naming_the_flag_and_a_warning_a_line():
    with pytest.raises(TunelabError, match=r"^--nproc: 64 processes: .* at most 24 fit") as e:
        require_fit(processes_fit(64, 0.9 * GIB, SMALL, FLOOR_NEED))
    assert e.value.message.endswith("at most 24 fit") and e.value.hint == "use --nproc 2"
    warning = require_fit(processes_fit(3, 0.9 * GIB, SMALL, FLOOR_NEED, "--nproc-per-node"), "LOCAL_WORLD_SIZE")
    assert warning.startswith("LOCAL_WORLD_SIZE: 3 processes on 2 usable cores")
    assert require_fit(processes_fit(2, 0.9 * GIB, SMALL, FLOOR_NEED)) is None


TORCHRUN = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "RANK": "1", "LOCAL_RANK": "1"}


@pytest.mark.parametrize(
    "env, message",
    [
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 but RANK, MASTER_ADDR, MASTER_PORT not set"),
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE=two: not a number"),
        ({"WORLD_SIZE": "-1"}, "WORLD_SIZE=-1: not a number"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0, LOCAL_WORLD_SIZE=0: give at least 1"),
        ({**TORCHRUN, "WORLD_SIZE": "2", "RANK": "2"}, r"RANK=2 is not in 0..1"),
        ({**TORCHRUN, "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "4"}, "LOCAL_RANK=1, LOCAL_WORLD_SIZE=4"),
    ],
)
def test_launcher_variables_that_make_no_sense_are_one_line(env, message):
    with pytest.raises(TunelabError, match=message):
        check_launch_env(env)


def test_what_torchrun_sets_and_one_process_pass():
    check_launch_env({**TORCHRUN, "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"})
    check_launch_env({})
    check_launch_env({"WORLD_SIZE": "1"})


# --- the CLI: refused before any process starts -------------------------------------------------


def test_nproc_64_exits_2_in_under_5_s_and_starts_no_process(tmp_path, synth_file):
    import psutil

    if 64 * 0.9 * GIB < psutil.virtual_memory().available:
        pytest.skip("this machine holds 64 processes of the tiny run")
    from battery_processes import run_watched

    config = write_cfg(tmp_path, base_config(synth_file, tmp_path / "runs"))
    r = run_watched(["train", str(config), "--nproc", "64"], tmp_path)
    assert not r.children, f"started processes {r.children}"
    assert r.rc == 2, r.output
    assert "error: --nproc: 64 processes:" in r.output and "at most" in r.output and "Traceback" not in r.output
    assert "hint: use --nproc" in r.output
    assert r.seconds < 5, f"took {r.seconds:.1f} s"
    assert not (tmp_path / "runs").exists()


def test_validate_reports_the_same_rule(tmp_path, synth_file):
    from conftest import run_cli

    config = write_cfg(tmp_path, base_config(synth_file, tmp_path / "runs"))
    r = run_cli("validate", str(config), "--nproc", "1000", cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "problem --nproc: 1000 processes:" in r.stderr and "at most" in r.stderr, r.stderr


# --- children die with their parent ---------------------------------------------------------------

PARENT = textwrap.dedent(
    """
    import os, subprocess, sys
    from tunelab.procs import child_env
    env = child_env() if sys.argv[2] == "child_env" else dict(os.environ)
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=env)
    print(child.pid, flush=True)
    child.wait()
    """
)
FOLLOWS = {
    "child_env": "from tunelab.procs import die_with_parent\nassert die_with_parent()",
    "torchrun": "from tunelab.procs import die_with_parent\nassert die_with_parent()",
    "watch": "import os\nfrom tunelab.procs import watch\nwatch(os.getppid(), interval_s=0.1)",
}


def _gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("how", list(FOLLOWS))
def test_a_child_dies_when_its_parent_is_killed(how):
    """PR_SET_PDEATHSIG for a child started with `child_env` (the sweep's workers, test servers), for a
    worker torch's elastic launcher started (TORCHELASTIC_RUN_ID), and the watching thread (macOS)."""
    child = FOLLOWS[how] + "\nprint('ready', flush=True)\nimport time\ntime.sleep(60)"
    env = {**os.environ, **({"TORCHELASTIC_RUN_ID": "test"} if how == "torchrun" else {})}
    env.pop(PARENT_ENV, None)
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, child, "child_env" if how == "child_env" else "plain"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    pid = int(parent.stdout.readline())
    try:
        assert parent.stdout.readline().strip() == "ready"
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(pid), f"{how}: the child outlived its parent"
    finally:
        parent.stdout.close()
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_cli_started_for_a_parent_that_is_gone_stops_at_once():
    env = {**os.environ, PARENT_ENV: "1"}  # not this process's parent: it has exited before the child began
    r = subprocess.run(
        [sys.executable, "-m", "tunelab.cli.main", "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert r.returncode == 143 and "has exited; stopping" in r.stderr and "Usage" not in r.stdout


def test_a_signal_during_the_ranks_agreement_is_kept_for_the_next_step():
    """All ranks get their dead launcher's SIGTERM at once, mostly while they wait in the step's all-reduce:
    the signal must survive that all-reduce's result, or no rank ever stops."""
    from types import SimpleNamespace

    from tunelab.training.callbacks import GracefulStop

    stop = GracefulStop()

    def all_reduce_interrupted(mine):
        stop._handle(signal.SIGTERM, None)  # what Python runs as the all-reduce returns
        return mine

    control = SimpleNamespace(should_save=False, should_training_stop=False, should_evaluate=True)
    stop.agree = all_reduce_interrupted
    stop.on_step_end(None, None, control)
    assert not control.should_training_stop and stop.signal == signal.SIGTERM  # no rank knew yet: not this step
    stop.agree = lambda mine: mine
    stop.on_step_end(None, None, control)
    assert control.should_training_stop and control.should_save and stop.signal == signal.SIGTERM


@pytest.mark.slow
def test_killing_the_launcher_stops_its_workers_with_a_checkpoint(tmp_path, synth_file):
    """`train --nproc 2` killed with SIGKILL (`timeout -s KILL`, a scheduler) while its workers train:
    they get SIGTERM, save a checkpoint after their step and exit, instead of training on as orphans."""
    from battery_processes import kill_launcher

    cfg = base_config(
        synth_file,
        tmp_path / "runs",
        training={"max_steps": 400, "eval_steps": None, "save_steps": None},
        samples={"enabled": False},
        tracking={"backend": "none"},
        output={"name": "killed"},
    )
    config = write_cfg(tmp_path, cfg, name=f"killed-{os.getpid()}.yaml")
    metrics = tmp_path / "runs" / "killed" / "metrics.jsonl"
    k = kill_launcher(
        ["train", str(config), "--nproc", "2"],
        tmp_path,
        ready=lambda: metrics.is_file() and bool(metrics.read_text().strip()),
    )
    assert len(k.workers) == 2, k.output[-3000:]
    assert not k.survivors, f"workers {k.survivors} outlived the launcher\n{k.output[-3000:]}"
    assert k.gone_after_s is not None and k.gone_after_s < 20
    summary = json.loads((tmp_path / "runs" / "killed" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["reason"], summary
    assert (tmp_path / "runs" / "killed" / "checkpoints" / f"step-{summary['steps']:06d}").is_dir()
    print(f"workers gone {k.gone_after_s} s after the launcher's SIGKILL")


def test_a_sweep_starts_its_workers_to_die_with_it(tmp_path, monkeypatch):
    """The sweep's workers get `child_env` (the mechanism the test above kills a parent of)."""
    import contextlib
    from types import SimpleNamespace

    from tunelab.sweep import driver

    started: list[dict[str, str]] = []

    class Worker:
        returncode = 0

        def __init__(self, cmd, env, **kw):
            started.append(env)

        def poll(self):
            return 0

    monkeypatch.setattr(driver.subprocess, "Popen", Worker)
    monkeypatch.setattr(driver.gateway, "build_local_models", lambda models: None)
    monkeypatch.setattr(driver, "Display", lambda *a: contextlib.nullcontext(SimpleNamespace(refresh=lambda: None)))
    sweep = SimpleNamespace(file=tmp_path / "s.yaml", overrides=[], logs_dir=tmp_path, models=[])
    assert driver._workers(sweep, None, None, None, [{}, {}]) == 0
    assert [env[PARENT_ENV] for env in started] == [str(os.getpid())] * 2


EXEC_PARENT = textwrap.dedent(
    """
    import subprocess, sys
    from tunelab.procs import exec_dies_with_parent
    child = subprocess.Popen(["sleep", "60"], preexec_fn=exec_dies_with_parent())
    print(child.pid, flush=True)
    child.wait()
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_program_that_is_not_tunelab_dies_with_its_parent():
    """vLLM's server and MLflow's UI are started through `exec_dies_with_parent`: the signal survives exec."""
    parent = subprocess.Popen([sys.executable, "-c", EXEC_PARENT], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    try:
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(pid), "sleep outlived the process that started it"
    finally:
        parent.stdout.close()
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)
