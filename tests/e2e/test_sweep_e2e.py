"""`tunelab sweep` end to end through the real CLI on the tiny model: a sweep that prunes, fails a trial and
goes on; best.yaml trained again; Ctrl-C and kill -9 then --resume giving the uninterrupted table; two
workers on one storage (journal, SQLite, a real PostgreSQL) running every grid point exactly once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import run_cli

pytestmark = pytest.mark.slow

BASE = {
    "model": {"name": "tiny:llama-2l"},
    "adapter": {"r": 8, "alpha": 16, "dropout": 0.1},  # dropout: the RNG state is part of what resume restores
    "data": {"train": {"path": "synthetic:96:seed=3"}, "test_size": 16},
    "training": {
        "max_steps": 24,
        "batch_size": 4,
        "grad_accum": 1,
        "max_length": 256,
        "eval_steps": 8,
        "save_steps": 4,
        "gradient_checkpointing": False,
    },
    "samples": {"num_prompts": 4, "max_new_tokens": 4},
    "tracking": {"backend": "none"},
    "output": {"dir": "runs"},
}
# r=1024 is above the tiny model's full rank: the model rejects it when the trial loads (a failed trial)
SWEEP = {
    "base": {"config": "base.yaml"},
    "method": "grid",
    "space": {"adapter.r": [4, 8, 1024], "training.learning_rate": [1.0e-3, 0.5]},
    "objective": "eval_loss",
    "pruner": {"name": "median", "startup_trials": 1},
}

# Faults at a chosen trial and step, like a user's Ctrl-C or a kill -9:
# `python faults.py NNN:int:STEP,NNN:kill:STEP -- sweep ...`
FAULTS = """
import os, signal, sys
from transformers import TrainerCallback
import tunelab.sweep.gateway as gateway

faults = dict((p.split(":")[0], (p.split(":")[1], int(p.split(":")[2]))) for p in sys.argv[1].split(","))

class Fault(TrainerCallback):
    def __init__(self, kind, step):
        self.kind, self.step = kind, step
    def on_save(self, args, state, control, **kw):  # the checkpoint of this step is complete on disk
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL if self.kind == "kill" else signal.SIGINT)

original = gateway.train_trial
def train_trial(cfg, *, callbacks, **kw):
    f = faults.get(cfg.output.name[:3])
    return original(cfg, callbacks=[*callbacks, *([Fault(*f)] if f else [])], **kw)
gateway.train_trial = train_trial

from tunelab.cli.main import app
sys.argv = ["tunelab", *sys.argv[3:]]
app(prog_name="tunelab")
"""


def setup(folder: Path, sweep: dict | None = None, base: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(yaml.safe_dump(base or BASE))
    p = folder / "s.yaml"
    p.write_text(yaml.safe_dump(sweep or SWEEP, sort_keys=False))
    return p


def results(folder: Path, name: str = "s") -> dict:
    return json.loads((folder / "sweeps" / name / "results.json").read_text())


def table(folder: Path, name: str = "s") -> dict[int, tuple]:
    """trial -> (settings, state, objective values, steps): what two runs of one sweep must agree on."""
    return {
        t["number"]: (json.dumps(t["settings"], sort_keys=True), t["state"], t["values"], t["step"])
        for t in results(folder, name)["trials"]
    }


def assert_same_table(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for n, (sa, st_a, va, pa) in a.items():
        sb, st_b, vb, pb = b[n]
        assert (sa, st_a, pa) == (sb, st_b, pb), n
        assert va == pytest.approx(vb, abs=1e-4), n


def summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    path = setup(folder)
    r = run_cli("sweep", str(path), cwd=folder, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return folder, r


def test_a_sweep_prunes_goes_on_after_a_failed_trial_and_ranks(finished):
    folder, r = finished
    res = results(folder)
    trials = {t["number"]: t for t in res["trials"]}
    assert len(trials) == 6 and res["budget"] == 6
    failed = [t for t in trials.values() if t["state"] == "failed"]
    assert len(failed) == 2 and all(t["settings"]["adapter.r"] == 1024 for t in failed)
    assert all("adapter.r: 1024 is above the full rank" in t["reason"] for t in failed)
    pruned = [t for t in trials.values() if t["state"] == "pruned"]
    completed = [t for t in trials.values() if t["state"] == "completed"]
    assert pruned and len(completed) >= 2, res["counts"]
    trials_dir = folder / "sweeps" / "s" / "trials"
    for t in pruned:  # stopped cleanly at an evaluation, marked pruned (not failed), keeping what it wrote
        s = summary(trials_dir / t["name"])
        assert s["status"] == "pruned" and s["steps"] < 24 and "median pruner" in s["reason"]
        assert (trials_dir / t["name"] / "final").is_dir() and (trials_dir / t["name"] / "metrics.jsonl").is_file()
    for t in completed:
        assert summary(trials_dir / t["name"])["status"] == "completed" and t["step"] == 24
    best = res["best"]
    assert best["values"][0] == min(t["values"][0] for t in completed)
    assert [t["rank"] for t in res["trials"]][: len(completed)] == list(range(1, len(completed) + 1))
    assert res["trials"][0]["number"] == best["trial"]
    # the ranked table on stdout, the live lines on stderr
    assert "rank" in r.stdout and "eval_loss (min)" in r.stdout and best["name"] in r.stdout
    assert f"trial {pruned[0]['name']}: pruned" in r.stderr
    # params and objective values are the Optuna trials' user attrs too
    import optuna

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / "sweeps" / "s" / "study.journal"))
    )
    frozen = {t.number: t for t in optuna.load_study(study_name="s", storage=storage).trials}
    b = frozen[best["trial"]]
    assert b.user_attrs["settings"] == best["settings"] and b.user_attrs["values"] == {"eval_loss": best["values"][0]}
    assert b.params == {
        "adapter.r": best["settings"]["adapter.r"],
        "training.learning_rate": best["settings"]["training.learning_rate"],
    }


def test_trial_directories_are_ordinary_runs(finished):
    folder, _ = finished
    trials_dir = folder / "sweeps" / "s" / "trials"
    names = sorted(p.name for p in trials_dir.iterdir() if p.is_dir())
    assert len(names) == 4 and all(n[:3].isdigit() and n[3] == "-" for n in names)  # the two failed ones never started
    r = run_cli("runs", "list", "--dir", str(trials_dir), "--json", cwd=folder, timeout=120)
    assert r.returncode == 0, r.stderr
    listed = {row["name"]: row["status"] for row in json.loads(r.stdout)}
    assert set(listed) == set(names) and "pruned" in listed.values()
    r = run_cli(
        "runs", "compare", str(trials_dir / names[0]), str(trials_dir / names[1]), "--json", cwd=folder, timeout=120
    )
    assert r.returncode == 0 and "adapter.r" in json.loads(r.stdout)["config"] or "training.learning_rate" in r.stdout
    saved = yaml.safe_load((trials_dir / names[0] / "config.yaml").read_text())
    assert "sweep:s" in saved["tracking"]["tags"] and saved["tracking"]["run_name"] == f"s-{names[0]}"
    assert saved["tracking"]["group"] == "s"  # the trackers group the sweep's runs
    html = (folder / "sweeps" / "s" / "report.html").read_text()
    assert 'id="sweep-trials"' in html and "<script" not in html
    assert html.count("<img") >= 10 and "parameter importance" in html  # the sweep's views, then the run report's


def test_best_yaml_trains_the_best_trial_again(finished):
    folder, _ = finished
    best = results(folder)["best"]
    text = (folder / "sweeps" / "s" / "best.yaml").read_text()
    assert text.startswith("# tunelab train sweeps/s/best.yaml")
    r = run_cli("train", "sweeps/s/best.yaml", cwd=folder, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    again = summary(folder / "runs" / "s-best")
    original = summary(folder / "sweeps" / "s" / "trials" / best["name"])
    assert again["final_train_loss"] == pytest.approx(original["final_train_loss"], abs=1e-4)
    assert again["final_eval_loss"] == pytest.approx(best["values"][0], abs=1e-4)


def test_running_it_again_reruns_nothing_and_status_shows_the_table(finished):
    folder, _ = finished
    before = table(folder)
    mtimes = {p: p.stat().st_mtime for p in (folder / "sweeps" / "s" / "trials").glob("*/summary.json")}
    r = run_cli("sweep", "s.yaml", cwd=folder, timeout=300)
    assert r.returncode == 0 and "is complete: all 6 trials finished" in r.stderr, r.stderr[-2000:]
    r = run_cli("sweep", "s.yaml", "--status", cwd=folder, timeout=300)
    assert r.returncode == 0 and "rank" in r.stdout
    assert {p: p.stat().st_mtime for p in mtimes} == mtimes
    assert_same_table(table(folder), before)


def test_ctrl_c_then_kill_9_then_resume_gives_the_uninterrupted_table(finished, tmp_path):
    straight, _ = finished
    long_trials = [t for t in results(straight)["trials"] if t["state"] == "completed"]
    first, second = sorted(t["number"] for t in long_trials)[:2]
    path = setup(tmp_path)
    (tmp_path / "faults.py").write_text(FAULTS)

    def faulty(faults: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(tmp_path / "faults.py"), faults, "--", "sweep", str(path), *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "COLUMNS": "200"},
            check=False,
        )

    r = faulty(f"{first:03d}:int:8")  # Ctrl-C in the middle of a trial: a checkpoint, the trial interrupted
    assert r.returncode == 130, r.stderr[-3000:]
    assert "continue it with: tunelab sweep" in r.stderr and "--resume" in r.stderr
    states = {t["number"]: t["state"] for t in results(tmp_path)["trials"]}
    assert states[first] == "interrupted"

    r = faulty(f"{second:03d}:kill:8", "--resume")  # then kill -9 mid-trial: no cleanup at all
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]

    r = run_cli("sweep", str(path), "--resume", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_table(table(tmp_path), table(straight))
    trials_dir = tmp_path / "sweeps" / "s" / "trials"
    for number, step in ((first, 9), (second, 8)):  # continued from their newest checkpoint, not started over
        name = next(t["name"] for t in results(tmp_path)["trials"] if t["number"] == number)
        assert summary(trials_dir / name)["resumed_from"].endswith(f"step-{step:06d}")


GRID6 = {
    "base": {"config": "base.yaml"},
    "method": "grid",
    "objective": "eval_loss",
    "space": {"adapter.r": [2, 4, 8], "training.learning_rate": [1.0e-3, 1.0e-2]},
}


def test_two_workers_ctrl_c_and_resume_run_each_grid_point_once(tmp_path):
    base = {
        **BASE,
        "samples": {"enabled": False},
        "training": {**BASE["training"], "max_steps": 40, "eval_steps": 20, "save_steps": 10},
    }
    path = setup(tmp_path, {**GRID6, "parallel": 2}, base)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunelab.cli.main", "sweep", str(path)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    trials_dir = tmp_path / "sweeps" / "s" / "trials"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(trials_dir.glob("*/checkpoints/step-000010"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: the sweep forwards it to each worker once
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "continue it with: tunelab sweep" in err
    states = results(tmp_path)["counts"]
    interrupted = [t for t in results(tmp_path)["trials"] if t["state"] == "interrupted"]
    assert interrupted and set(states) <= {"completed", "interrupted"}, states

    r = run_cli("sweep", str(path), "--resume", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = results(tmp_path)
    assert res["counts"] == {"completed": 6}
    points = {json.dumps(t["settings"], sort_keys=True) for t in res["trials"]}
    assert len(points) == 6 and len([p for p in trials_dir.iterdir() if p.is_dir()]) == 6
    for t in interrupted:
        assert summary(trials_dir / t["name"])["resumed_from"] is not None
    logs = sorted((tmp_path / "sweeps" / "s" / "logs").glob("worker-*.log"))
    assert [p.name for p in logs] == ["worker-0.log", "worker-1.log"]


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL cluster on 127.0.0.1 (Debian's `postgresql` package), stopped afterwards."""
    bindir = next((Path(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)
    if bindir is None or not (bindir / "initdb").is_file():
        pytest.skip("PostgreSQL binaries not installed (Debian: apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="psycopg (pip install 'psycopg[binary]') is the PostgreSQL driver")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="tunelab-pg-"))
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser to start PostgreSQL as another user")
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = folder / "data"
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "tunelab", "--no-sync"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_user,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(folder / "log"),
            "-w",
            "-o",
            f"-k {folder} -p {port} -h 127.0.0.1 -F",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [*as_user, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "tunelab", "sweeps"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://tunelab@127.0.0.1:{port}/sweeps"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("storage", ["sqlite", "postgresql"])
def test_two_worker_processes_on_one_storage_share_the_grid(tmp_path, storage, request, monkeypatch):
    url = request.getfixturevalue("postgres_url") if storage == "postgresql" else "sqlite"
    base = {**BASE, "samples": {"enabled": False}, "training": {**BASE["training"], "max_steps": 4, "eval_steps": 2}}
    path = setup(tmp_path, GRID6, base)
    # what two machines run against one storage URL (here both on this one, with a thread each)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TUNELAB_SWEEP_THREADS": "1"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tunelab.cli.main", "sweep", str(path), f"storage={url}", "--worker"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    ran = [int(log.rsplit("done after ", 1)[1].split()[0]) for log in logs]
    assert sum(ran) == 6
    from tunelab.sweep.resolved import prepare
    from tunelab.sweep.results import collect

    monkeypatch.chdir(tmp_path)  # what `tunelab sweep s.yaml --status` reads, read here
    sweep = prepare(path, [f"storage={url}"], check_data=False)
    rows = collect(sweep, sweep.study(create=False))
    assert [r.state for r in rows] == ["completed"] * 6
    assert len({json.dumps(r.settings, sort_keys=True) for r in rows}) == 6
    assert sorted(r.number for r in rows) == list(range(6))
