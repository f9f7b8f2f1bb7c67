"""trackio: the default tracker. Local SQLite under `<tracking dir>/trackio/`, a W&B-style API,
content-addressed artifacts with versions, aliases and lineage, and its own web dashboard."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tunelab.tracking.artifacts import ArtifactRef, ArtifactVersion, unknown
from tunelab.tracking.base import ArtifactSpec, Sink
from tunelab.tracking.env import point_trackio_at

SAMPLE_COLUMNS = ["step", "prompt", "generation", "reference", "settings"]


def sample_rows(table: list[dict[str, Any]]) -> list[list[Any]]:
    """Sample-table rows in SAMPLE_COLUMNS order; the settings dict as JSON so every cell is a scalar."""
    return [[r["step"], r["prompt"], r["generation"], r["reference"], json.dumps(r["settings"], sort_keys=True)] for r in table]


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric fields of a metrics record, without its step."""
    return {k: v for k, v in record.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)}


class TrackioSink(Sink):
    name = "trackio"

    def __init__(self, tracking_dir: Path, project: str, run_name: str, resume: bool = False):
        self.dir = tracking_dir / "trackio"
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
        self.run = trackio.init(project=self.project, name=self.run_name, config=config,
                                resume="allow" if self.resume else "never", embed=False,
                                auto_log_cpu=False, auto_log_gpu=False)  # tunelab samples the system itself

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
        art = _log(self.run, spec)
        return {"store": "trackio", "project": self.project, "name": art.name, "version": art.version,
                "aliases": list(art.aliases), "native_digest": art.digest}

    def use_artifact(self, ref: dict[str, Any]) -> None:
        if ref.get("store") == "trackio" and ref.get("project") == self.project:
            self.run.use_artifact(f"{ref['name']}:{ref['version']}")  # trackio's own lineage: this run read it

    def current_best(self, name: str) -> dict[str, Any] | None:
        from trackio.sqlite_storage import SQLiteStorage

        rec = SQLiteStorage.get_artifact_manifest(self.project, name, "best")
        return (rec or {}).get("metadata")

    def finish(self, summary: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.finish()


def _log(run, spec: ArtifactSpec):
    import trackio

    art = trackio.Artifact(spec.name, type=spec.type, metadata={**spec.metadata, "tunelab_digest": spec.digest})
    (art.add_dir if spec.path.is_dir() else art.add_file)(spec.path)
    return run.log_artifact(art, aliases=[a for a in spec.aliases if a != "latest"])


class TrackioStore:
    """trackio's artifact store in `<tracking dir>/trackio/`: push, list, get, download."""

    store = "trackio"

    def __init__(self, tracking_dir: Path):
        self.dir = point_trackio_at(Path(tracking_dir) / "trackio")

    def projects(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.db"))

    def push(self, spec: ArtifactSpec, project: str) -> ArtifactVersion:
        """Log `spec` from a short `upload` run, as W&B does: every version has a producer run."""
        import contextlib
        import io

        import trackio

        with contextlib.redirect_stdout(io.StringIO()):
            run = trackio.init(project=project, name=f"upload-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                               config={"job_type": "upload", "source": spec.path.name}, embed=False,
                               auto_log_cpu=False, auto_log_gpu=False)
            try:
                art = _log(run, spec)
            finally:
                trackio.finish()  # also forgets the run, so trackio's exit hook does not finish it again
        return self.get(ArtifactRef("trackio", project, spec.name, f"v{art._version}", text=spec.name))

    def get(self, ref: ArtifactRef) -> ArtifactVersion:
        from trackio.sqlite_storage import SQLiteStorage

        rec = SQLiteStorage.get_artifact_manifest(ref.project, ref.name, ref.version)
        if rec is None:
            arts = {a["name"]: a for a in SQLiteStorage.list_artifacts(ref.project)}
            if ref.name not in arts:
                raise unknown(ref, list(arts), None)
            versions = [f"v{v['version']}" + (f" ({', '.join(v['aliases'])})" if v["aliases"] else "")
                        for v in arts[ref.name]["versions"]]
            raise unknown(ref, list(arts), versions)
        return self._version(ref.project, rec)

    def _version(self, project: str, rec: dict[str, Any]) -> ArtifactVersion:
        meta = dict(rec.get("metadata") or {})
        return ArtifactVersion(
            store="trackio", project=project, name=rec["name"], type=rec["type"], version=f"v{rec['version']}",
            aliases=sorted(rec["aliases"]), digest=meta.get("tunelab_digest"), native_digest=rec["manifest_digest"],
            size_bytes=rec["size_bytes"], metadata=meta, producer_run=rec.get("producer_run_name"),
            created_at=rec.get("created_at"),
        )

    def versions(self, project: str | None = None) -> list[ArtifactVersion]:
        """Every version of every artifact (newest first per artifact), in one project or all of them."""
        from trackio.sqlite_storage import SQLiteStorage

        out = []
        for proj in [project] if project else self.projects():
            for art in SQLiteStorage.list_artifacts(proj):
                for v in art["versions"]:
                    rec = SQLiteStorage.get_artifact_manifest(proj, art["name"], f"v{v['version']}")
                    if rec is not None:
                        out.append(self._version(proj, rec))
        return out

    def download(self, version: ArtifactVersion, dest: Path) -> None:
        import trackio
        from trackio.sqlite_storage import SQLiteStorage

        rec = SQLiteStorage.get_artifact_manifest(version.project, version.name, version.version)
        art = trackio.Artifact(rec["name"], type=rec["type"])
        # trackio hands out hydrated artifacts only from inside a run (use_artifact); hydrate one the same way
        art._hydrate_from_db(project=version.project, version=rec["version"], aliases=rec["aliases"],
                             manifest=rec["manifest"], manifest_digest=rec["manifest_digest"],
                             size_bytes=rec["size_bytes"], metadata=rec["metadata"])
        art.download(root=dest)

    def lineage(self, version: ArtifactVersion) -> dict[str, Any]:
        """The run that produced this version, what that run read, and the runs that read this version."""
        from trackio.sqlite_storage import SQLiteStorage

        rec = SQLiteStorage.get_artifact_manifest(version.project, version.name, version.version)
        producer = rec.get("producer_run_name")
        inputs = []
        if producer:
            links = SQLiteStorage.get_run_artifacts(version.project, producer, rec.get("producer_run_id"))
            inputs = [f"trackio:{i['project']}/{i['name']}:v{i['version']}" for i in links.get("input", [])]
        consumers = [c.get("run_name") or c.get("name") for c in SQLiteStorage.get_artifact_consumers(version.project, rec["version_id"])]
        return {"producer_run": producer, "producer_inputs": inputs, "consumers": [c for c in consumers if c]}
