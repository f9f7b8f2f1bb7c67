"""Battery cases for full disks and read-only places the other area files leave out: `train` on a disk full
before it starts and at its final save, `export --format hf`, a sweep's results, `artifacts push` into a
full tracking store and `artifacts pull` onto a full disk, `eval` and `generate --file` writing beside
their input by default, and `train --resume` of a run on a read-only disk.

Each is one line naming what could not be written (exit 2), removes its temporary files, and changes
nothing that was there before. The disks are small tmpfs mounts (root only; skipped elsewhere).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from battery import Context, Skip, case, expect, lost_files, read_only, small_disk, snapshot
from battery_outputs import VERBS


def _fill(folder: Path) -> None:
    """Fill the file system `folder` is on to the last byte, unbuffered (a buffered file's close can
    itself fail on the full disk)."""
    for name, chunk in (("filler.bin", 65536), ("filler-tail.bin", 1)):
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            while os.write(fd, b"\0" * chunk):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)


def _temporaries(folder: Path) -> list[str]:
    """Files a failed write left looking like output: staging names and half-written checkpoints."""
    if not folder.exists():
        return []
    return [
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if ".tmp" in p.name or ".old" in p.name or p.name.startswith("checkpoint-")
    ]


def _failed_summary(run: Path) -> str | None:
    """Why the run's summary.json does not say it failed for want of space (None when it does)."""
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else None
    if summary is None:
        return None  # the disk was too full to write even that; nothing claims the run completed
    if summary.get("status") != "failed" or "disk" not in str(summary.get("reason")):
        return f"summary.json does not say failed (out of space): {summary}"
    return None


@case("fault")
def case_train_on_a_disk_full_before_it_starts(ctx):
    with small_disk(ctx.tmp / "disk-train-start", "4m") as disk:
        _fill(disk)
        cfg = ctx.config("full-start.yaml", output={"dir": str(disk / "runs"), "name": "full-start"})
        o = expect(ctx, ["train", str(cfg)], f"out of disk space writing {disk}")
        run = disk / "runs" / "full-start"
        left = _temporaries(disk)
        if left or (run / "final").exists():
            o.lost = f"half-written files left: {left[:3]} final={(run / 'final').exists()}"
        else:
            o.lost = _failed_summary(run)
        return o


@case("fault")
def case_train_on_a_disk_full_at_the_final_save(ctx):
    with small_disk(ctx.tmp / "disk-train-final") as disk:
        cfg = ctx.config(
            "full-final.yaml",
            training={"max_steps": 3, "save_steps": None},
            output={"dir": str(disk / "runs"), "name": "full-final"},
        )
        run = disk / "runs" / "full-final"
        # the message names the run's folder (a library's "I/O error" once named "/O")
        o = expect(ctx, ["train", str(cfg)], f"out of disk space writing {run}", fault="fill_disk_at:3:12288")
        left = _temporaries(run)
        if left or (run / "final").exists():
            o.lost = f"half-written files left: {left[:3]} final={(run / 'final').exists()}"
        else:
            o.lost = _failed_summary(run)
        return o


@case("fault")
def case_export_hf_on_a_full_disk(ctx):
    with small_disk(ctx.tmp / "disk-export-hf", "4m") as disk:
        _fill(disk)
        o = expect(ctx, VERBS["export_hf"](ctx, disk / "out"), "out of disk space writing")
        left = [p.name for p in disk.iterdir() if not p.name.startswith("filler")]
        if left:
            o.lost = f"half-written output left on the full disk: {left[:3]}"
        return o


@case("fault")
def case_export_hf_into_a_read_only_folder(ctx):
    with read_only(ctx.tmp / "ro-export-hf") as ro:
        return expect(ctx, VERBS["export_hf"](ctx, ro / "out"), "cannot write")


def _sweep_spec(ctx: Context, folder: Path, name: str) -> Path:
    spec = ctx.path(f"sweep-{name}.yaml")
    spec.write_text(
        f"name: {name}\nbase:\n  config: {ctx.config('sweep-disk-base.yaml')}\nmethod: grid\n"
        f"space:\n  training.learning_rate: [0.001]\nobjective: final_train_loss\ndir: {folder}\n"
    )
    return spec


@case("fault")
def case_sweep_on_a_full_disk(ctx):
    with small_disk(ctx.tmp / "disk-sweep", "4m") as disk:
        _fill(disk)
        o = expect(ctx, ["sweep", str(_sweep_spec(ctx, disk / "sweeps", "full"))], "out of disk space")
        left = _temporaries(disk)
        if left:
            o.lost = f"half-written files left: {left[:3]}"
        return o


def _pushed(ctx: Context, tracking: Path, name: str) -> None:
    code, out, _ = ctx.cli(
        "artifacts", "push", str(ctx.data()), "--name", name, "--type", "dataset", "--dir", str(tracking)
    )
    assert code == 0, out[-1000:]


@case("fault")
def case_artifacts_push_into_a_full_store(ctx):
    with small_disk(ctx.tmp / "disk-store", "4m") as disk:
        tracking = disk / "tracking"
        _pushed(ctx, tracking, "first")
        before = snapshot(tracking)
        _fill(disk)
        o = expect(
            ctx,
            ["artifacts", "push", str(ctx.data()), "--name", "second", "--type", "dataset", "--dir", str(tracking)],
            f"out of disk space writing {tracking}",
        )
        o.lost = _kept(before, tracking)
        return o


def _kept(before: dict[str, bytes], tracking: Path) -> str | None:
    """What an earlier push lost, or half-written files left in the store (a database may grow its journal)."""
    after = snapshot(tracking)
    gone = [k for k in before if k not in after and not k.endswith(("-journal", "-wal", "-shm"))]
    left = _temporaries(tracking)
    if gone or left:
        return f"store lost {gone[:3]}, left {left[:3]}"
    return None


@case("fault")
def case_artifacts_pull_onto_a_full_disk(ctx):
    tracking = ctx.tmp / "runs" / ".tracking"
    _pushed(ctx, tracking, "pull-full")
    with small_disk(ctx.tmp / "disk-pull", "4m") as disk:
        _fill(disk)
        o = expect(
            ctx,
            ["artifacts", "pull", "trackio:tunelab/pull-full", "--out", str(disk / "x"), "--dir", str(tracking)],
            "out of disk space",
        )
        left = [p.name for p in disk.iterdir() if not p.name.startswith("filler")]
        if left:
            o.lost = f"half-written output left on the full disk: {left[:3]}"
        return o


def _run_on(ctx: Context, disk: Path, name: str) -> Path:
    """A copy of the trained run on `disk` (its config still points at data and base outside)."""
    return Path(shutil.copytree(ctx.trained_run(), disk / "runs" / name))


@case("fault")
def case_eval_into_its_run_on_a_full_disk(ctx):
    with small_disk(ctx.tmp / "disk-eval-home", "16m") as disk:
        run = _run_on(ctx, disk, "evaluated")
        before = snapshot(run)
        _fill(disk)
        o = expect(
            ctx, ["eval", str(run), "--no-baseline", "--limit", "1", "--max-new-tokens", "1"], "out of disk space"
        )
        o.lost = lost_files(before, run) or (
            f"half-written results left: {_temporaries(run)[:3]}" if _temporaries(run) else None
        )
        if not o.lost and (run / "eval.json").exists():
            o.lost = "an eval.json was left although the write failed"
        return o


@contextmanager
def read_only_copy(ctx: Context, name: str, unfinished: bool = False) -> Iterator[Path]:
    """A copy of the trained run (`unfinished`: stopped after its last checkpoint) on a tmpfs remounted
    read-only (root only; skipped elsewhere)."""
    with small_disk(ctx.tmp / f"ro-disk-{name}", "16m") as disk:
        run = _run_on(ctx, disk, name)
        if unfinished:
            shutil.rmtree(run / "final")
        r = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True)
        if r.returncode != 0:
            raise Skip(f"cannot remount read-only ({r.stderr.decode().strip()[:80]})")
        yield run


@case("fault")
def case_eval_into_its_run_on_a_read_only_disk(ctx):
    with read_only_copy(ctx, "ro-evaluated") as run:
        before = snapshot(run)
        o = expect(ctx, ["eval", str(run), "--no-baseline", "--limit", "1", "--max-new-tokens", "1"], "cannot write")
        o.lost = lost_files(before, run)
        return o


@case("fault")
def case_generate_beside_its_prompts_on_a_full_disk(ctx):
    with small_disk(ctx.tmp / "disk-gen-home", "4m") as disk:
        prompts = disk / "prompts.jsonl"
        prompts.write_text('{"instruction": "Reverse the order of the words.", "input": "cat dog"}\n')
        _fill(disk)
        o = expect(
            ctx,
            ["generate", str(ctx.trained_run()), "--file", str(prompts), "--max-new-tokens", "1"],
            "out of disk space writing",
        )
        left = [p.name for p in disk.iterdir() if not p.name.startswith("filler") and p.name != "prompts.jsonl"]
        if left:
            o.lost = f"half-written output left on the full disk: {left[:3]}"
        return o


@case("fault")
def case_resume_a_run_on_a_read_only_disk(ctx):
    with read_only_copy(ctx, "ro-resume", unfinished=True) as run:
        before = snapshot(run)
        cfg = ctx.config("ro-resume.yaml", output={"dir": str(run.parent), "name": "ro-resume"})
        o = expect(ctx, ["train", str(cfg), "--resume"], "cannot write")
        o.lost = lost_files(before, run)
        return o
