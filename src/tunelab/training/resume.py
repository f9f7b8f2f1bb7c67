"""Continuing a run: what `--resume` may change, the checkpoint's files checked before they load,
a checkpoint's step, and the command that continues an interrupted run."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.config import RunConfig
from tunelab.config.load import config_to_dict
from tunelab.errors import TunelabError
from tunelab.runs import RunDir

# Settings that `--resume` may change: they do not alter what the optimizer steps compute. Any
# other difference from the run's saved config would silently give a run that is neither.
RESUME_MAY_CHANGE = (
    "training.save_steps",
    "training.eval_steps",
    "training.logging_steps",
    "training.save_total_limit",
    "training.dataloader_workers",
    "training.progress_every_s",
    "training.cpu_allocator",
    "data.max_lost_answers",
    "training.resume",
    "model.device",
    "output.",
    "samples.",
    "eval.",
    "tracking.",
    "distributed.backend",
    "distributed.timeout_s",
)


def resume_command(command: str | None, config_path) -> str:
    if command:
        return command if "--resume" in command.split() else f"{command} --resume"
    return f"tunelab train {config_path or 'CONFIG'} --resume"


def checkpoint_step(checkpoint: Path | None) -> int:
    """The optimizer step a checkpoint was saved at (0 for none)."""
    if checkpoint is None:
        return 0
    try:
        return int(json.loads((checkpoint / "trainer_state.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError):
        return int(checkpoint.name.removeprefix("step-")) if checkpoint.name.removeprefix("step-").isdigit() else 0


def check_resume_settings(cfg: RunConfig, run: RunDir, checkpoint: Path) -> None:
    """Refuse a resume whose config changes what the remaining steps compute (listing each setting)."""
    from tunelab.config.load import read_yaml
    from tunelab.runs.reading import flatten

    saved_file = run.config if run.config.is_file() else checkpoint.parent.parent / "config.yaml"
    if not saved_file.is_file():
        return
    saved = flatten(read_yaml(saved_file))
    now = flatten(config_to_dict(cfg))
    # a setting the saved config predates (the schema grew since) counts as unchanged at its default
    defaults = flatten(
        config_to_dict(RunConfig.model_validate({"model": {"name": "tiny:x"}, "data": {"train": {"path": "x"}}}))
    )
    changed = [
        k
        for k in sorted(set(saved) | set(now))
        if saved.get(k) != now.get(k)
        and not k.startswith(RESUME_MAY_CHANGE)
        and not (k not in saved and k in defaults and now.get(k) == defaults[k])
    ]
    if changed:
        shown = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:6])
        raise TunelabError(
            f"--resume cannot change {', '.join(changed)} ({shown})",
            hint="resume with the run's own settings (runs/<name>/config.yaml), or start a new run; "
            f"resume may change: {', '.join(k.rstrip('.') for k in RESUME_MAY_CHANGE)}",
        )


def check_checkpoint_files(checkpoint: Path) -> None:
    """The checkpoint's optimizer, scheduler and RNG files load as weights-only data (never a pickle of
    code): refuse in one line naming the file, before anything else is loaded."""
    import pickle

    import torch

    from tunelab.compat import checkpoint_safe_globals

    names = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt")
    for f in [checkpoint / n for n in names] + sorted(checkpoint.glob("rng_state_*.pth")):  # one RNG file per rank
        if not f.is_file():
            continue
        try:
            with checkpoint_safe_globals():  # exactly what the trainer will allow when it loads them
                torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise TunelabError(
                f"{f}: not loadable as weights-only data ({first})",
                hint="tunelab never unpickles code; delete that checkpoint to resume from an older one, "
                "or start the run again",
            ) from None
    if not any(checkpoint.glob("*.safetensors")):
        raise TunelabError(
            f"{checkpoint}: holds no *.safetensors weights", hint="tunelab resumes from safetensors checkpoints only"
        )
