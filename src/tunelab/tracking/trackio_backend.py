"""trackio: the default tracker. Local SQLite under `<tracking dir>/trackio/`, a W&B-style API,
content-addressed artifacts with versions, aliases and lineage, and its own web dashboard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.artifacts.core import ArtifactSpec
from tunelab.artifacts.trackio_store import log_to_run
from tunelab.compat import point_trackio_at, trackio_storage
from tunelab.tracking.base import Sink

SAMPLE_COLUMNS = ["step", "prompt", "generation", "reference", "settings"]


def sample_rows(table: list[dict[str, Any]]) -> list[list[Any]]:
    """Sample-table rows in SAMPLE_COLUMNS order; the settings dict as JSON so every cell is a scalar."""
    return [
        [r["step"], r["prompt"], r["generation"], r["reference"], json.dumps(r["settings"], sort_keys=True)]
        for r in table
    ]


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric fields of a metrics record, without its step."""
    return {k: v for k, v in record.items() if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)}


class TrackioSink(Sink):
    name = "trackio"

    def __init__(self, tracking_dir: Path, project: str, run_name: str, resume: bool = False, group: str | None = None):
        self.dir = tracking_dir / "trackio"
        self.group = group
        self.project = project
        self.run_name = run_name
        self.resume = resume
        self.run = None

    def store_paths(self) -> list[Path]:
        """Where this tracker writes (probed before training: a read-only store turns it off up front)."""
        return [self.dir, self.dir / f"{self.project}.db"]

    def start(self, info: dict[str, Any]) -> None:
        point_trackio_at(self.dir)
        import trackio

        config = {**info["config"], "tunelab": {k: v for k, v in info.items() if k != "config"}}
        self.run = trackio.init(
            project=self.project,
            name=self.run_name,
            group=self.group,
            config=config,
            resume="allow" if self.resume else "never",
            embed=False,
            auto_log_cpu=False,
            auto_log_gpu=False,
        )  # tunelab samples the system itself

    def where(self) -> dict[str, Any]:
        return {"project": self.project, "run": self.run.name, "dir": str(self.dir)}

    def log_metrics(self, record: dict[str, Any]) -> None:
        values = scalars(record)
        if values:
            self.run.log(values, step=record["step"])

    def log_system(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log_system(metrics)

    def log_samples(self, step: int, table: list[dict[str, Any]]) -> None:
        import trackio

        self.run.log({"samples": trackio.Table(columns=SAMPLE_COLUMNS, data=sample_rows(table))}, step=step)

    def log_artifact(self, spec: ArtifactSpec) -> dict[str, Any]:
        art = log_to_run(self.run, spec)
        return {
            "store": "trackio",
            "project": self.project,
            "name": art.name,
            "version": art.version,
            "aliases": list(art.aliases),
            "native_digest": art.digest,
        }

    def use_artifact(self, ref: dict[str, Any]) -> None:
        if ref.get("store") == "trackio" and ref.get("project") == self.project:
            self.run.use_artifact(f"{ref['name']}:{ref['version']}")  # trackio's own lineage: this run read it

    def current_best(self, name: str) -> dict[str, Any] | None:
        rec = trackio_storage().get_artifact_manifest(self.project, name, "best")
        return (rec or {}).get("metadata")

    def finish(self, summary: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.finish()
