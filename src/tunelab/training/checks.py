"""What `tunelab train` refuses before anything is loaded: output folders that cannot be written, a
run directory that exists (or does not, to resume), a resume point that is no checkpoint.

Light on purpose (no transformers): `tunelab train --nproc` runs these before it starts any process,
and every rank runs them again in `training.run.train`.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.config import RunConfig
from tunelab.errors import TunelabError
from tunelab.files import check_writable
from tunelab.runs import RunDir, check_run_dir


def check_run_dir_for(cfg: RunConfig, run_name: str, resume: bool, explicit: Path | None) -> RunDir:
    """`check_run_dir` for this run: an explicit `training.resume` checkpoint may start a new run directory."""
    if explicit is not None:
        resume = (Path(cfg.output.dir) / run_name).is_dir()
    return check_run_dir(cfg.output.dir, run_name, resume=resume, overwrite=cfg.output.overwrite)


def check_outputs_writable(cfg: RunConfig) -> None:
    """output.dir, the data cache and the tracking dir must be writable before anything is loaded."""
    from tunelab.artifacts import tracking_dir
    from tunelab.cache import cache_root

    check_writable(cfg.output.dir, "output.dir")
    check_writable(Path(cfg.data.cache_dir) if cfg.data.cache_dir else cache_root("data"), "data.cache_dir")
    if cfg.tracking.backends():
        check_writable(tracking_dir(cfg), "tracking.dir")


def explicit_checkpoint(cfg: RunConfig) -> Path | None:
    """`training.resume: PATH`: that checkpoint, checked now; None for `auto` / off."""
    explicit = cfg.training.resume
    if explicit in (False, None, "auto", True):
        return None
    p = Path(str(explicit)).expanduser()
    if not p.exists():
        raise TunelabError(f"training.resume: {p} does not exist")
    if not (p / "trainer_state.json").is_file():
        raise TunelabError(f"training.resume: {p} is not a checkpoint (no trainer_state.json)")
    return p


def resume_point(run: RunDir) -> Path:
    """The newest complete checkpoint of `run`, or a user error saying there is none."""
    ckpt = run.latest_checkpoint()
    if ckpt is None:
        raise TunelabError(
            f"nothing to resume in {run.path}: no complete checkpoint under checkpoints/",
            hint="checkpoints are written every training.save_steps steps",
        )
    return ckpt
