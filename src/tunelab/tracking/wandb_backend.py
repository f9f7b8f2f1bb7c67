"""Weights & Biases. Offline by default (the run is written under `<tracking dir>/wandb/` and
uploaded later with `wandb sync`); online when `tracking.mode` or `$WANDB_MODE` says so.

W&B's machine metadata (command line, environment, git remote), console capture, code saving and its
own system monitor are off: the command line may carry a token, and tunelab samples the system itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from tunelab.artifacts.core import ArtifactSpec
from tunelab.artifacts.wandb_store import has_api_key, preflight, settings, wandb_mode  # noqa: F401 (re-exported)
from tunelab.tracking.base import Sink
from tunelab.tracking.trackio_backend import SAMPLE_COLUMNS, sample_rows, scalars


class WandbSink(Sink):
    name = "wandb"

    def __init__(self, tracking_dir: Path, tcfg, run_name: str, run_key: str, resume_id: str | None = None):
        self.dir = tracking_dir
        self.tcfg = tcfg
        self.mode = wandb_mode(tcfg.mode)
        self.run_name = run_name
        # a fresh id per run directory incarnation; a resumed run continues the id it had
        self.run_id = resume_id or hashlib.sha1(run_key.encode()).hexdigest()[:12]
        self.run = None

    def store_paths(self) -> list[Path]:
        return [self.dir / "wandb"]

    def start(self, info: dict[str, Any]) -> None:
        import wandb

        t = self.tcfg
        self.run = wandb.init(
            project=t.project,
            entity=t.entity,
            name=self.run_name,
            id=self.run_id,
            resume="allow",
            group=t.group,
            tags=info["tags"],
            job_type=t.job_type,
            notes=info["notes"],
            dir=str(self.dir),
            config={
                **info["config"],
                "tunelab": {k: v for k, v in info.items() if k not in ("config", "tags", "notes")},
            },
            settings=settings(self.mode, t.timeout_s),
            reinit="create_new",
        )

    def where(self) -> dict[str, Any]:
        return {"id": self.run_id, "mode": self.mode, "dir": str(getattr(self.run.settings, "sync_dir", self.dir))}

    def log_metrics(self, record: dict[str, Any]) -> None:
        values = scalars(record)
        if values:
            self.run.log(values, step=record["step"])

    def log_system(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def log_samples(self, step: int, table: list[dict[str, Any]]) -> None:
        import wandb

        self.run.log({"samples": wandb.Table(columns=SAMPLE_COLUMNS, data=sample_rows(table))}, step=step)

    def log_artifact(self, spec: ArtifactSpec) -> dict[str, Any]:
        import wandb

        art = wandb.Artifact(spec.name, type=spec.type, metadata={**spec.metadata, "tunelab_digest": spec.digest})
        (art.add_dir if spec.path.is_dir() else art.add_file)(str(spec.path))
        self.run.log_artifact(art, aliases=list(dict.fromkeys(["latest", *spec.aliases])))
        # offline, W&B numbers the version when the run is synced
        return {
            "store": "wandb",
            "project": self.tcfg.project,
            "name": spec.name,
            "version": None,
            "aliases": list(dict.fromkeys(["latest", *spec.aliases])),
            "native_digest": art.digest,
        }

    def use_artifact(self, ref: dict[str, Any]) -> None:
        if ref.get("store") == "wandb" and self.mode == "online":
            self.run.use_artifact(ref["ref"].removeprefix("wandb:"))

    def finish(self, summary: dict[str, Any]) -> None:
        if self.run is None:
            return
        self.run.summary.update(
            {k: v for k, v in summary.items() if isinstance(v, int | float | str) and v is not None}
        )
        self.run.finish(exit_code=0 if summary.get("status") == "completed" else 1)
        import wandb

        wandb.teardown()  # wait until the service has written everything; the run is over
