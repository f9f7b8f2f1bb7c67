"""Run directories: `runs/<name>/` with config.yaml, checkpoints/step-NNNNNN/, final/, metrics.jsonl,
samples.jsonl, summary.json and the files the trackers and `tunelab eval` add. `RunDir` is the one
reader and writer of that layout. Everything that must not be half-written is written to a
temporary name and renamed.

Two rules keep a user's files safe. A run directory is marked as tunelab's (`tunelab_run.json`),
and `output.overwrite` only ever replaces a marked directory. And one process at a time writes a
run: `RunLock` holds an exclusive lock for the life of the run.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError, os_error
from tunelab.runs.records import EvalRecord, ModelMeta, Summary

STEP_PREFIX = "step-"
MARKER = "tunelab_run.json"


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:06d}"


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    checkpoints = property(lambda self: self.path / "checkpoints")
    final = property(lambda self: self.path / "final")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    samples = property(lambda self: self.path / "samples.jsonl")
    rollouts = property(lambda self: self.path / "rollouts.jsonl")  # grpo: sampled completions, rewards, advantages
    summary = property(lambda self: self.path / "summary.json")
    marker = property(lambda self: self.path / MARKER)
    lineage = property(lambda self: self.path / "lineage.json")
    tracking = property(lambda self: self.path / "tracking.json")
    system = property(lambda self: self.path / "system.jsonl")
    eval_results = property(lambda self: self.path / "eval.json")
    eval_samples = property(lambda self: self.path / "eval_samples.jsonl")

    def checkpoint_list(self) -> list[Path]:
        """Complete checkpoints, oldest first (a checkpoint is complete once renamed to step-*)."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.glob(f"{STEP_PREFIX}*") if (p / "trainer_state.json").is_file()]
        return sorted(found, key=lambda p: int(p.name.removeprefix(STEP_PREFIX)))

    def latest_checkpoint(self) -> Path | None:
        ckpts = self.checkpoint_list()
        return ckpts[-1] if ckpts else None

    def is_complete(self) -> bool:
        """final/ exists only complete (written to final.tmp and renamed), with its metadata."""
        return ModelMeta.present(self.final)

    def weights(self) -> Path | None:
        """The run's model: final/ when complete, else its newest checkpoint, else None."""
        return self.final if self.is_complete() else self.latest_checkpoint()

    def is_tunelab_run(self) -> bool:
        """Whether tunelab made this directory: its marker, or (runs from before the marker) a
        config.yaml that is a tunelab run config beside tunelab's own files."""
        if self.marker.is_file():
            return True
        if not self.config.is_file():
            return False
        try:
            import yaml

            cfg = yaml.safe_load(self.config.read_text(encoding="utf-8"))
        except Exception:  # noqa: BLE001 - an unreadable or foreign file is not a tunelab run config
            return False
        own = any((self.path / n).exists() for n in ("summary.json", "metrics.jsonl", "checkpoints", "final"))
        return isinstance(cfg, dict) and {"model", "data", "training", "output"} <= set(cfg) and own

    def write_marker(self) -> None:
        self.write_json(
            self.marker, {"tool": "tunelab", "created": time.time(), "host": platform.node(), "pid": os.getpid()}
        )

    def append_jsonl(self, path: Path, record: dict[str, Any]) -> None:
        try:
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, default=_jsonable) + "\n")
        except OSError as e:
            raise os_error(e, path) from None

    def write_json(self, path: Path, data: dict[str, Any]) -> None:
        self._write_text(path, json.dumps(data, indent=2, default=_jsonable))

    @staticmethod
    def _write_text(path: Path, text: str) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise os_error(e, path) from None

    def read_summary(self) -> Summary | None:
        return Summary.read(self.summary)

    def write_summary(self, summary: Summary) -> None:
        self.write_json(self.summary, summary.to_dict())

    def read_eval(self) -> EvalRecord | None:
        """`tunelab eval`'s results; None when it has not run here; `DamagedRun` when eval.json is not JSON."""
        return EvalRecord.read(self.eval_results)

    def write_eval(
        self, record: EvalRecord, samples: list[dict[str, Any]], write_text: Callable[[Path, str], Any] | None = None
    ) -> None:
        """eval_samples.jsonl (one line per example), then eval.json, each under a temporary name and
        renamed: a reader that finds eval.json finds both whole. `write_text(path, text)` stages a
        file (`tunelab.outputs.write_text` for a folder the user named); default: this directory's writer."""
        write = write_text or self._write_text
        write(self.eval_samples, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in samples))
        write(self.eval_results, json.dumps(record.to_dict(), indent=2))

    def status(self) -> str:
        """completed / failed / interrupted / pruned from the summary; incomplete (training, or
        killed) when metrics exist without one; not started otherwise."""
        s = self.read_summary()
        if s is not None:
            return s.status
        return "incomplete" if self.metrics.is_file() else "not started"

    def truncate_logs(self, step: int) -> dict[str, int]:
        """Drop the records past `step` from the JSONL logs (a resume re-runs those steps); counts dropped."""
        dropped = {}
        for path in (self.metrics, self.samples, self.rollouts, self.system):
            if not path.is_file():
                continue
            keep, n = [], 0
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a half-written last line from the kill
                    n += 1
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] > step:
                    n += 1
                    continue
                keep.append(line)
            if n:
                tmp = path.with_suffix(path.suffix + ".tmp")
                tmp.write_text("".join(x + "\n" for x in keep), encoding="utf-8")
                tmp.replace(path)
                dropped[path.name] = n
        return dropped

    def remove_partial_files(self) -> None:
        """Temporary files a failed write left behind (`*.tmp`, unrenamed trainer checkpoints, final.tmp)."""
        for p in list(self.path.glob("*.tmp")) + list(self.checkpoints.glob("checkpoint-*")):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        shutil.rmtree(self.path / "final.tmp", ignore_errors=True)


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    return str(x)


class RunLock:
    """An exclusive lock on one run directory, held for the life of a run (train, resume).

    The lock is a file next to the run directory (`.<name>.lock`, so replacing the directory never
    drops it) held with `flock`; it records the holder's PID and host. The kernel releases a flock
    when its process dies, so a lock file left by a killed process is stale: the next run takes it
    over and says so.
    """

    def __init__(self, run_path: Path):
        self.run_path = run_path
        self.path = run_path.parent / f".{run_path.name}.lock"
        self.fd: int | None = None
        self.took_over: dict[str, Any] | None = None

    def acquire(self) -> RunLock:
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise os_error(e, self.path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(fd)
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                who = f"PID {holder.get('pid', '?')} on {holder.get('host', '?')}" if holder else "another process"
                raise TunelabError(
                    f"run directory {self.run_path} is in use by {who}",
                    hint="wait for that run to finish, or pick another output.name",
                ) from None
            raise os_error(e, self.path) from None
        previous = _read_holder(fd)
        if previous:
            self.took_over = previous  # written by a process that died without releasing it
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": platform.node(), "since": time.time()}).encode())
        except OSError as e:  # a full disk: the lock file is made but its holder cannot be written
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise os_error(e, self.path) from None
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        import fcntl

        try:
            os.ftruncate(self.fd, 0)
            self.path.unlink(missing_ok=True)
        except OSError:
            pass  # a full or read-only disk must not hide the run's own outcome
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 4096)
        return json.loads(raw) if raw.strip() else {}
    except (OSError, ValueError):
        return {}


def check_run_dir(root: str | Path, name: str, resume: bool, overwrite: bool) -> RunDir:
    """The run directory to use, or a user error; touches nothing (so it can run before slow setup)."""
    run = RunDir(Path(root) / name)
    if run.path.is_symlink() or (run.path.exists() and not run.path.is_dir()):
        raise TunelabError(
            f"{run.path} exists and is not a run directory (a file or a link)",
            hint="pick another output.name or output.dir",
        )
    if run.path.exists() and not resume:
        if not overwrite:
            raise TunelabError(
                f"run directory {run.path} already exists",
                hint="resume it with --resume, replace it with output.overwrite=true, or pick output.name=NEW",
            )
        if not run.is_tunelab_run():
            raise TunelabError(
                f"output.overwrite: {run.path} was not made by tunelab (no {MARKER} or run config in it); "
                "tunelab only ever replaces its own run directories",
                hint="pick another output.name or output.dir",
            )
    if resume and not run.path.exists():
        raise TunelabError(f"nothing to resume: {run.path} does not exist")
    return run


def prepare_run_dir(root: str | Path, name: str, resume: bool, overwrite: bool) -> RunDir:
    """Create the run directory: reuse it to resume, replace it with overwrite (tunelab's own only)."""
    run = check_run_dir(root, name, resume, overwrite)
    try:
        if run.path.exists() and not resume:
            shutil.rmtree(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
        if not run.marker.is_file():
            run.write_marker()
    except OSError as e:
        raise os_error(e, run.path) from None
    return run


def rotate_checkpoints(run: RunDir, keep: int | None) -> None:
    if keep is None:
        return
    for old in run.checkpoint_list()[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
