"""MLflow: a local `sqlite:///<tracking dir>/mlflow.db` store (artifacts beside it) by default, or a
tracking server at `tracking.uri`. Model artifacts become versions of a registered model (MLflow
numbers them from 1 and keeps `latest` implicit); datasets are recorded as run inputs."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.tracking.artifacts import ArtifactRef, ArtifactVersion, unknown
from tunelab.tracking.base import ArtifactSpec, Sink
from tunelab.tracking.trackio_backend import SAMPLE_COLUMNS, sample_rows, scalars


def default_uri(tracking_dir: Path) -> str:
    return f"sqlite:///{(Path(tracking_dir) / 'mlflow.db').resolve()}"


def client(tracking_dir: Path, uri: str | None):
    import logging

    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its database set-up is chatty at INFO

    uri = uri or default_uri(tracking_dir)
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def experiment_id(c, tracking_dir: Path, uri: str, project: str) -> str:
    exp = c.get_experiment_by_name(project)
    if exp is not None:
        return exp.experiment_id
    # with the local store, artifacts live beside the database instead of ./mlruns
    location = (Path(tracking_dir) / "mlflow-artifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
    return c.create_experiment(project, artifact_location=location)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> MLflow params (`training.learning_rate` = "0.0002")."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list | dict) else str(v)
    return out


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
        tags = {"mlflow.runName": self.run_name, "job_type": self.tcfg.job_type, "tunelab.tags": ", ".join(info["tags"])}
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
        params = [Param(k[:250], v[:6000]) for k, v in flatten(info["config"]).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100], tags=[RunTag(k, v) for k, v in tags.items()] if i == 0 else [])
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
        self.client.log_table(self.run_id, {c: [r[i] for r in rows] for i, c in enumerate(SAMPLE_COLUMNS)},
                              artifact_file="samples.json")

    def log_artifact(self, spec: ArtifactSpec) -> dict[str, Any]:
        return log_artifact(self.client, self.run_id, spec)

    def use_artifact(self, ref: dict[str, Any]) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        if ref.get("type") != "dataset":
            self.client.set_tag(self.run_id, f"tunelab.input.{ref['name']}", ref["ref"])
            return
        ds = Dataset(name=ref["name"], digest=(ref.get("digest") or "")[:36], source_type=ref["store"],
                     source=json.dumps({"ref": ref["ref"]}))
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(ds, tags=[InputTag("mlflow.data.context", "train")])])

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
        self.client.set_terminated(self.run_id, "FINISHED" if summary.get("status") == "completed" else "FAILED")


def _number(v: str):
    try:
        return float(v)
    except ValueError:
        return v


def log_artifact(c, run_id: str, spec: ArtifactSpec) -> dict[str, Any]:
    """Files under the run's artifacts; a model is also registered, with its aliases and digest as tags."""
    path = f"{spec.type}/{spec.name}"
    (c.log_artifacts if spec.path.is_dir() else c.log_artifact)(run_id, str(spec.path), path)
    meta = {**spec.metadata, "tunelab_digest": spec.digest}
    c.log_dict(run_id, meta, f"{path}-metadata.json")
    if spec.type != "model":
        return {"store": "mlflow", "name": spec.name, "version": None, "aliases": [], "native_digest": None}
    try:
        c.get_registered_model(spec.name)
    except Exception:  # noqa: BLE001 - MlflowException RESOURCE_DOES_NOT_EXIST
        c.create_registered_model(spec.name, tags={"tunelab.type": spec.type})
    tags = {"tunelab.digest": spec.digest, "tunelab.type": spec.type, "tunelab.run_id": run_id}
    for key in ("base_model", "best_metric", "final_eval_loss", "final_train_loss", "step", "run_name"):
        if meta.get(key) is not None:
            tags[f"tunelab.{key}"] = str(meta[key])
    mv = c.create_model_version(spec.name, f"runs:/{run_id}/{path}", run_id=run_id, tags=tags,
                                description=json.dumps({k: v for k, v in meta.items() if k != "config"})[:5000])
    aliases = [a for a in spec.aliases if a != "latest"]  # MLflow keeps `latest` itself and forbids it as an alias
    for a in aliases:
        c.set_registered_model_alias(spec.name, a, mv.version)
    return {"store": "mlflow", "name": spec.name, "version": str(mv.version), "aliases": ["latest", *aliases], "native_digest": None}


class MlflowStore:
    """Registered models in MLflow's registry: `mlflow:NAME[:N|:ALIAS]`."""

    store = "mlflow"

    def __init__(self, tracking_dir: Path, uri: str | None = None):
        self.dir = Path(tracking_dir)
        self.client, self.uri = client(self.dir, uri)

    def get(self, ref: ArtifactRef) -> ArtifactVersion:
        c, spec = self.client, ref.version
        names = [m.name for m in c.search_registered_models()]
        if ref.name not in names:
            raise unknown(ref, names, None)
        try:
            if spec is None or spec == "latest":
                newest = max(c.search_model_versions(f"name='{ref.name}'"), key=lambda m: int(m.version))
                mv = c.get_model_version(ref.name, newest.version)
            elif spec.lstrip("v").isdigit():
                mv = c.get_model_version(ref.name, spec.lstrip("v"))
            else:
                mv = c.get_model_version_by_alias(ref.name, spec)
        except Exception:  # noqa: BLE001 - MlflowException for an unknown version or alias
            all_versions = [c.get_model_version(ref.name, m.version) for m in c.search_model_versions(f"name='{ref.name}'")]
            raise unknown(ref, names, [f"{m.version}" + (f" ({', '.join(m.aliases)})" if m.aliases else "")
                                       for m in sorted(all_versions, key=lambda m: int(m.version))]) from None
        return self._version(mv)

    def _version(self, mv) -> ArtifactVersion:
        meta = {}
        try:
            meta = json.loads(mv.description or "{}")
        except ValueError:
            pass
        latest = max(int(m.version) for m in self.client.search_model_versions(f"name='{mv.name}'"))
        return ArtifactVersion(store="mlflow", project="", name=mv.name, type=mv.tags.get("tunelab.type", "model"),
                               version=str(mv.version), aliases=(["latest"] if int(mv.version) == latest else []) + list(mv.aliases),
                               digest=mv.tags.get("tunelab.digest"), metadata=meta, producer_run=mv.run_id,
                               created_at=str(mv.creation_timestamp))

    def versions(self, project: str | None = None) -> list[ArtifactVersion]:
        # search results leave aliases out; get_model_version has them
        return [self._version(self.client.get_model_version(m.name, mv.version)) for m in self.client.search_registered_models()
                for mv in sorted(self.client.search_model_versions(f"name='{m.name}'"), key=lambda v: -int(v.version))]

    def download(self, version: ArtifactVersion, dest: Path) -> None:
        import tempfile

        mv = self.client.get_model_version(version.name, version.version)
        path = mv.source.split(f"runs:/{mv.run_id}/", 1)[-1]
        with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
            got = Path(self.client.download_artifacts(mv.run_id, path, tmp))
            # MLflow keeps the artifact's folder name; the cache wants the files at its top
            for child in got.iterdir():
                child.rename(dest / child.name)

    def push(self, spec: ArtifactSpec, project: str) -> ArtifactVersion:
        if spec.type != "model":
            raise TunelabError("MLflow's registry holds models only", hint="push datasets to trackio (the default) or W&B")
        exp = experiment_id(self.client, self.dir, self.uri, project)
        run_id = self.client.create_run(exp, run_name=f"upload-{spec.name}", tags={"job_type": "upload"}).info.run_id
        try:
            rec = log_artifact(self.client, run_id, spec)
        finally:
            self.client.set_terminated(run_id)
        return self.get(ArtifactRef("mlflow", "", spec.name, rec["version"], text=f"mlflow:{spec.name}:{rec['version']}"))
