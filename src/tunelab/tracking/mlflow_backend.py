"""MLflow: a local `sqlite:///<tracking dir>/mlflow.db` store (artifacts beside it) by default, or a
tracking server at `tracking.uri`. Model artifacts become versions of a registered model (MLflow
numbers them from 1 and keeps `latest` implicit); datasets are recorded as run inputs."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from tunelab.artifacts.core import ArtifactSpec
from tunelab.artifacts.mlflow_store import client, default_uri, experiment_id, log_artifact
from tunelab.runs.reading import flatten
from tunelab.tracking.base import Sink
from tunelab.tracking.trackio_backend import SAMPLE_COLUMNS, sample_rows, scalars


def mlflow_params(d: dict[str, Any]) -> dict[str, str]:
    """Nested config -> MLflow params (`training.learning_rate` = "0.0002")."""
    return {k: json.dumps(v) if isinstance(v, list | dict) else str(v) for k, v in flatten(d).items()}


class MlflowSink(Sink):
    name = "mlflow"

    def __init__(self, tracking_dir: Path, tcfg, run_name: str, resume_id: str | None = None):
        self.dir = tracking_dir
        self.tcfg = tcfg
        self.run_name = run_name
        self.run_id = resume_id
        self.client = None

    def store_paths(self) -> list[Path]:
        uri = self.tcfg.uri or default_uri(self.dir)
        if uri.startswith("sqlite:///"):
            db = Path(uri.removeprefix("sqlite:///"))
            return [db.parent, db]
        return []  # a server keeps its own store

    def start(self, info: dict[str, Any]) -> None:
        from mlflow.entities import Param, RunTag

        self.client, self.uri = client(self.dir, self.tcfg.uri)
        exp = experiment_id(self.client, self.dir, self.uri, self.tcfg.project)
        tags = {
            "mlflow.runName": self.run_name,
            "job_type": self.tcfg.job_type,
            "tunelab.tags": ", ".join(info["tags"]),
        }
        if self.tcfg.group:
            tags["tunelab.group"] = self.tcfg.group  # MLflow's UI groups and filters runs by tags
        for t in info["tags"]:  # each tag also as a key, as MLflow's UI filters them; keys allow few characters
            key = re.sub(r"[^A-Za-z0-9_\-. :/]", "_", t)
            if key.strip("_"):
                tags[key] = "true"
        if info["notes"]:
            tags["mlflow.note.content"] = info["notes"]
        if self.run_id is None:
            self.run_id = self.client.create_run(exp, run_name=self.run_name, tags=tags).info.run_id
        else:
            self.client.update_run(self.run_id, status="RUNNING")
        params = [Param(k[:250], v[:6000]) for k, v in mlflow_params(info["config"]).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(
                self.run_id, params=params[i : i + 100], tags=[RunTag(k, v) for k, v in tags.items()] if i == 0 else []
            )
        self.client.log_dict(self.run_id, info["config"], "tunelab/config.json")
        self.client.log_dict(self.run_id, {k: v for k, v in info.items() if k != "config"}, "tunelab/run.json")

    def where(self) -> dict[str, Any]:
        from tunelab.config.load import redact

        return {"run_id": self.run_id, "uri": redact(self.uri)}

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def log_metrics(self, record: dict[str, Any]) -> None:
        values = scalars(record)
        if values:
            self._metrics(values, record["step"])

    def log_system(self, step: int, metrics: dict[str, float]) -> None:
        self._metrics(metrics, step)

    def log_samples(self, step: int, table: list[dict[str, Any]]) -> None:
        rows = sample_rows(table)
        # log_table appends to an existing samples.json: one table, a step column, every evaluation
        self.client.log_table(
            self.run_id, {c: [r[i] for r in rows] for i, c in enumerate(SAMPLE_COLUMNS)}, artifact_file="samples.json"
        )

    def log_artifact(self, spec: ArtifactSpec) -> dict[str, Any]:
        return log_artifact(self.client, self.run_id, spec)

    def use_artifact(self, ref: dict[str, Any]) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        if ref.get("type") != "dataset":
            self.client.set_tag(self.run_id, f"tunelab.input.{ref['name']}", ref["ref"])
            return
        ds = Dataset(
            name=ref["name"],
            digest=(ref.get("digest") or "")[:36],
            source_type=ref["store"],
            source=json.dumps({"ref": ref["ref"]}),
        )
        self.client.log_inputs(
            self.run_id, datasets=[DatasetInput(ds, tags=[InputTag("mlflow.data.context", "train")])]
        )

    def current_best(self, name: str) -> dict[str, Any] | None:
        try:
            mv = self.client.get_model_version_by_alias(name, "best")
        except Exception:  # noqa: BLE001 - no such model or alias yet
            return None
        return {k.removeprefix("tunelab."): _number(v) for k, v in mv.tags.items()}

    def finish(self, summary: dict[str, Any]) -> None:
        if self.client is None:
            return
        finals = {k: v for k, v in summary.items() if k.startswith("final_") and isinstance(v, int | float)}
        if finals:
            self._metrics(finals, int(summary.get("steps") or 0))
        status = {"completed": "FINISHED", "pruned": "KILLED", "interrupted": "KILLED"}.get(
            summary.get("status"), "FAILED"
        )
        self.client.set_terminated(self.run_id, status)


def _number(v: str):
    try:
        return float(v)
    except ValueError:
        return v
