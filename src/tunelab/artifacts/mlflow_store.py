"""MLflow's model registry as an artifact store (`mlflow:NAME[:N|:ALIAS]`), and the MLflow client
helpers the MLflow sink (tunelab.tracking) shares."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.artifacts.core import ArtifactSpec, ArtifactVersion, unknown
from tunelab.errors import TunelabError
from tunelab.refs import ArtifactRef
from tunelab.runs.metric_table import FINAL_EVAL_LOSS, FINAL_TRAIN_LOSS


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
    for key in ("base_model", "best_metric", FINAL_EVAL_LOSS, FINAL_TRAIN_LOSS, "step", "run_name"):
        if meta.get(key) is not None:
            tags[f"tunelab.{key}"] = str(meta[key])
    mv = c.create_model_version(
        spec.name,
        f"runs:/{run_id}/{path}",
        run_id=run_id,
        tags=tags,
        description=json.dumps({k: v for k, v in meta.items() if k != "config"})[:5000],
    )
    aliases = [a for a in spec.aliases if a != "latest"]  # MLflow keeps `latest` itself and forbids it as an alias
    for a in aliases:
        c.set_registered_model_alias(spec.name, a, mv.version)
    return {
        "store": "mlflow",
        "name": spec.name,
        "version": str(mv.version),
        "aliases": ["latest", *aliases],
        "native_digest": None,
    }


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
            all_versions = [
                c.get_model_version(ref.name, m.version) for m in c.search_model_versions(f"name='{ref.name}'")
            ]
            raise unknown(
                ref,
                names,
                [
                    f"{m.version}" + (f" ({', '.join(m.aliases)})" if m.aliases else "")
                    for m in sorted(all_versions, key=lambda m: int(m.version))
                ],
            ) from None
        return self._version(mv)

    def _version(self, mv) -> ArtifactVersion:
        meta = {}
        try:
            meta = json.loads(mv.description or "{}")
        except ValueError:
            pass
        latest = max(int(m.version) for m in self.client.search_model_versions(f"name='{mv.name}'"))
        return ArtifactVersion(
            store="mlflow",
            project="",
            name=mv.name,
            type=mv.tags.get("tunelab.type", "model"),
            version=str(mv.version),
            aliases=(["latest"] if int(mv.version) == latest else []) + list(mv.aliases),
            digest=mv.tags.get("tunelab.digest"),
            metadata=meta,
            producer_run=mv.run_id,
            created_at=str(mv.creation_timestamp),
        )

    def versions(self, project: str | None = None) -> list[ArtifactVersion]:
        # search results leave aliases out; get_model_version has them
        return [
            self._version(self.client.get_model_version(m.name, mv.version))
            for m in self.client.search_registered_models()
            for mv in sorted(self.client.search_model_versions(f"name='{m.name}'"), key=lambda v: -int(v.version))
        ]

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
            raise TunelabError(
                "MLflow's registry holds models only", hint="push datasets to trackio (the default) or W&B"
            )
        exp = experiment_id(self.client, self.dir, self.uri, project)
        run_id = self.client.create_run(exp, run_name=f"upload-{spec.name}", tags={"job_type": "upload"}).info.run_id
        try:
            rec = log_artifact(self.client, run_id, spec)
        finally:
            self.client.set_terminated(run_id)
        return self.get(
            ArtifactRef("mlflow", "", spec.name, rec["version"], text=f"mlflow:{spec.name}:{rec['version']}")
        )
