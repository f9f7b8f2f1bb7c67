"""trackio's artifact store in `<tracking dir>/trackio/`: content-addressed versions with aliases,
digests and lineage. `log_to_run` is shared with the trackio sink (tunelab.tracking)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tunelab.artifacts.core import ArtifactSpec, ArtifactVersion, unknown
from tunelab.compat import point_trackio_at, trackio_hydrated_artifact, trackio_storage
from tunelab.refs import ArtifactRef


def log_to_run(run, spec: ArtifactSpec):
    import trackio

    art = trackio.Artifact(spec.name, type=spec.type, metadata={**spec.metadata, "tunelab_digest": spec.digest})
    (art.add_dir if spec.path.is_dir() else art.add_file)(spec.path)
    return run.log_artifact(art, aliases=[a for a in spec.aliases if a != "latest"])


class TrackioStore:
    """trackio's artifact store in `<tracking dir>/trackio/`: push, list, get, download."""

    store = "trackio"

    def __init__(self, tracking_dir: Path):
        self.dir = (Path(tracking_dir) / "trackio").resolve()
        point_trackio_at(self.dir)

    def projects(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.db"))

    def push(self, spec: ArtifactSpec, project: str) -> ArtifactVersion:
        """Log `spec` from a short `upload` run, as W&B does: every version has a producer run."""
        import contextlib
        import io

        import trackio

        with contextlib.redirect_stdout(io.StringIO()):
            run = trackio.init(
                project=project,
                name=f"upload-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                config={"job_type": "upload", "source": spec.path.name},
                embed=False,
                auto_log_cpu=False,
                auto_log_gpu=False,
            )
            try:
                art = log_to_run(run, spec)
            finally:
                trackio.finish()  # also forgets the run, so trackio's exit hook does not finish it again
        return self.get(ArtifactRef("trackio", project, spec.name, art.version, text=spec.name))

    def get(self, ref: ArtifactRef) -> ArtifactVersion:
        SQLiteStorage = trackio_storage()  # noqa: N806 - trackio's class

        rec = SQLiteStorage.get_artifact_manifest(ref.project, ref.name, ref.version)
        if rec is None:
            arts = {a["name"]: a for a in SQLiteStorage.list_artifacts(ref.project)}
            if ref.name not in arts:
                raise unknown(ref, list(arts), None)
            versions = [
                f"v{v['version']}" + (f" ({', '.join(v['aliases'])})" if v["aliases"] else "")
                for v in arts[ref.name]["versions"]
            ]
            raise unknown(ref, list(arts), versions)
        return self._version(ref.project, rec)

    def _version(self, project: str, rec: dict[str, Any]) -> ArtifactVersion:
        meta = dict(rec.get("metadata") or {})
        return ArtifactVersion(
            store="trackio",
            project=project,
            name=rec["name"],
            type=rec["type"],
            version=f"v{rec['version']}",
            aliases=sorted(rec["aliases"]),
            digest=meta.get("tunelab_digest"),
            native_digest=rec["manifest_digest"],
            size_bytes=rec["size_bytes"],
            metadata=meta,
            producer_run=rec.get("producer_run_name"),
            created_at=rec.get("created_at"),
        )

    def versions(self, project: str | None = None) -> list[ArtifactVersion]:
        """Every version of every artifact (newest first per artifact), in one project or all of them."""
        SQLiteStorage = trackio_storage()  # noqa: N806 - trackio's class

        out = []
        for proj in [project] if project else self.projects():
            for art in SQLiteStorage.list_artifacts(proj):
                for v in art["versions"]:
                    rec = SQLiteStorage.get_artifact_manifest(proj, art["name"], f"v{v['version']}")
                    if rec is not None:
                        out.append(self._version(proj, rec))
        return out

    def download(self, version: ArtifactVersion, dest: Path) -> None:
        SQLiteStorage = trackio_storage()  # noqa: N806 - trackio's class

        rec = SQLiteStorage.get_artifact_manifest(version.project, version.name, version.version)
        art = trackio_hydrated_artifact({**rec, "project": version.project})
        art.download(root=dest)

    def lineage(self, version: ArtifactVersion) -> dict[str, Any]:
        """The run that produced this version, what that run read, and the runs that read this version."""
        SQLiteStorage = trackio_storage()  # noqa: N806 - trackio's class

        rec = SQLiteStorage.get_artifact_manifest(version.project, version.name, version.version)
        producer = rec.get("producer_run_name")
        inputs = []
        if producer:
            links = SQLiteStorage.get_run_artifacts(version.project, producer, rec.get("producer_run_id"))
            inputs = [f"trackio:{i['project']}/{i['name']}:v{i['version']}" for i in links.get("input", [])]
        consumers = [
            c.get("run_name") or c.get("name")
            for c in SQLiteStorage.get_artifact_consumers(version.project, rec["version_id"])
        ]
        return {"producer_run": producer, "producer_inputs": inputs, "consumers": [c for c in consumers if c]}
