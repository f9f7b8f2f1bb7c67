"""Versioned artifacts (datasets, models) in the trackers' own stores, addressed by references
(`tunelab.refs.ArtifactRef`) and resolved in an explicit `Home`.

    trackio:PROJECT/NAME[:vN|:ALIAS]           trackio's local store in the tracking directory
    wandb:[ENTITY/]PROJECT/NAME[:vN|:ALIAS]    W&B (resolving needs W&B online)
    mlflow:NAME[:N|:ALIAS]                     an MLflow registered model (versions count from 1)

No version means `latest`. This module holds the values (versions, specs, the home) and the
content digest; `tunelab.artifacts.resolve` finds versions in the stores and fetches their files.
Every artifact tunelab writes carries `tunelab_digest` in its metadata: a SHA-256 over the sorted
relative paths and file digests, the same in every store.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.errors import TunelabError
from tunelab.refs import ArtifactRef, RefError

if TYPE_CHECKING:
    from tunelab.config import RunConfig


@dataclass(frozen=True)
class Home:
    """Where references resolve: a tracking directory (trackio's store, the MLflow database, the
    artifact cache), the project a reference without one belongs to, and an MLflow server URI."""

    dir: Path
    project: str = "tunelab"
    mlflow_uri: str | None = None

    @classmethod
    def of(cls, cfg: RunConfig) -> Home:
        """A run config's home: `tracking.dir` (default `<output.dir>/.tracking`), its project and MLflow URI."""
        return cls(tracking_dir(cfg), cfg.tracking.project, cfg.tracking.uri)

    @classmethod
    def default(
        cls, folder: str | Path | None = None, project: str | None = None, mlflow_uri: str | None = None
    ) -> Home:
        """For commands without a config: `folder`, else $TUNELAB_TRACKING_DIR, else ./runs/.tracking."""
        d = Path(folder or os.environ.get("TUNELAB_TRACKING_DIR") or "runs/.tracking").expanduser()
        return cls(d.absolute(), project or "tunelab", mlflow_uri)


def tracking_dir(cfg: RunConfig) -> Path:
    """The run config's tracking directory: `tracking.dir`, default `<output.dir>/.tracking`."""
    return Path(cfg.tracking.dir or Path(cfg.output.dir) / ".tracking").expanduser()


@dataclass
class ArtifactSpec:
    """What to log: a folder (or file) with a name, a type, aliases and metadata."""

    path: Path
    name: str
    type: str
    aliases: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    digest: str = ""  # tunelab's content digest (content_digest)


@dataclass
class ArtifactVersion:
    """One stored version of an artifact, as tunelab reports it whichever store holds it."""

    store: str
    project: str
    name: str
    type: str
    version: str  # "v3" (trackio, W&B) or "3" (MLflow)
    aliases: list[str] = field(default_factory=list)
    digest: str | None = None  # tunelab content digest
    native_digest: str | None = None  # the store's own digest (trackio manifest, W&B, MLflow none)
    size_bytes: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    producer_run: str | None = None
    created_at: str | None = None

    @property
    def ref(self) -> str:
        if self.store == "mlflow":
            return f"mlflow:{self.name}:{self.version}"
        return f"{self.store}:{self.project}/{self.name}:{self.version}"

    def as_record(self) -> dict[str, Any]:
        """The lineage entry written to a run's lineage.json (metadata left out: it holds whole configs)."""
        rec = {k: v for k, v in asdict(self).items() if k != "metadata"}
        return {"ref": self.ref, **rec}


@dataclass
class Resolved:
    version: ArtifactVersion
    path: Path  # the downloaded files (a folder)
    requested: str = ""
    read_digest: str | None = None  # the digest of the files as they were handed out

    def as_record(self) -> dict[str, Any]:
        return {
            **self.version.as_record(),
            "requested": self.requested,
            "local_path": str(self.path),
            "read_digest": self.read_digest,
        }


def parse(text: str) -> ArtifactRef:
    """An artifact reference, or a one-line user error."""
    try:
        return ArtifactRef.parse(text)
    except RefError as e:
        raise TunelabError(str(e)) from None


def content_digest(path: str | Path) -> str:
    """SHA-256 over sorted (relative path, file SHA-256) pairs; a single file counts as a folder of one."""
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    h = hashlib.sha256()
    for f in files:
        rel = f.name if root.is_file() else f.relative_to(root).as_posix()
        fh = hashlib.sha256()
        with f.open("rb") as fp:
            for chunk in iter(lambda: fp.read(1 << 20), b""):
                fh.update(chunk)
        h.update(f"{rel}\0{fh.hexdigest()}\n".encode())
    return h.hexdigest()


def unknown(ref: ArtifactRef, names: list[str], versions: list[str] | None) -> TunelabError:
    """The one-line error for a name, version or alias the store does not hold."""
    where = f"{ref.store} project {ref.project!r}" if ref.store != "mlflow" else "the MLflow registry"
    if versions is None:
        known = f"known: {', '.join(sorted(names)[:12])}" if names else "it holds no artifacts"
        return TunelabError(
            f"{ref.text}: no artifact {ref.name!r} in {where} ({known})", hint="list them with: tunelab artifacts list"
        )
    return TunelabError(
        f"{ref.text}: {ref.name!r} has no version or alias {ref.version!r} (has: {', '.join(versions)})"
    )
