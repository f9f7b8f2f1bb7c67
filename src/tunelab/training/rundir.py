"""Run directories: `runs/<name>/` with config.yaml, checkpoints/step-NNNNNN/, final/, metrics.jsonl,
samples.jsonl and summary.json. Everything that must not be half-written is written to a temporary
name and renamed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

STEP_PREFIX = "step-"


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
    summary = property(lambda self: self.path / "summary.json")

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
        return (self.final / "tunelab_final.json").is_file()

    def append_jsonl(self, path: Path, record: dict[str, Any]) -> None:
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")

    def write_json(self, path: Path, data: dict[str, Any]) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=_jsonable), encoding="utf-8")
        tmp.replace(path)

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary.read_text()) if self.summary.is_file() else {}


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def check_run_dir(root: str | Path, name: str, resume: bool, overwrite: bool) -> RunDir:
    """The run directory to use, or a user error; touches nothing (so it can run before slow setup)."""
    run = RunDir(Path(root) / name)
    if run.path.exists() and not resume and not overwrite:
        raise TunelabError(
            f"run directory {run.path} already exists",
            hint="resume it with --resume, replace it with output.overwrite=true, or pick output.name=NEW",
        )
    if resume and not run.path.exists():
        raise TunelabError(f"nothing to resume: {run.path} does not exist")
    return run


def prepare_run_dir(root: str | Path, name: str, resume: bool, overwrite: bool) -> RunDir:
    """Create the run directory: reuse it to resume, replace it with overwrite, else refuse to clobber."""
    run = check_run_dir(root, name, resume, overwrite)
    if run.path.exists() and not resume:
        shutil.rmtree(run.path)
    run.path.mkdir(parents=True, exist_ok=True)
    return run


def rotate_checkpoints(run: RunDir, keep: int | None) -> None:
    if keep is None:
        return
    for old in run.checkpoint_list()[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
