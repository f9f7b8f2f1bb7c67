"""Versioned artifacts (datasets, models) in the trackers' own stores, addressed by references.

A reference names the store, the project, the artifact and a version or alias:

    trackio:PROJECT/NAME[:vN|:ALIAS]           trackio's local store in the tracking directory
    wandb:[ENTITY/]PROJECT/NAME[:vN|:ALIAS]    W&B (resolving needs W&B online)
    mlflow:NAME[:N|:ALIAS]                     an MLflow registered model (versions count from 1)

No version means `latest`. `fetch` resolves a reference, downloads the files once into
`<tracking dir>/artifact-cache/<name>-<digest>/` (the rename is the commit point) and checks the
content digest. Every artifact tunelab writes carries `tunelab_digest` in its metadata: a SHA-256
over the sorted relative paths and file digests, the same whichever tracker stores it.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

STORES = ("trackio", "wandb", "mlflow")
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_home: dict[str, Any] = {"dir": None, "project": "tunelab", "mlflow_uri": None}


def _valid_name(name: str) -> bool:
    # names become folder and file names in the stores (MLflow's registry included): no '..' escapes
    return bool(name) and bool(_NAME.match(name)) and not name.startswith(".")


def is_artifact_ref(text: str | None) -> bool:
    return bool(text) and text.split(":", 1)[0] in STORES and ":" in text


@dataclass(frozen=True)
class ArtifactRef:
    store: str
    project: str
    name: str
    version: str | None = None  # vN, an alias, or None for latest
    entity: str | None = None
    text: str = ""

    @classmethod
    def parse(cls, text: str, default_project: str | None = None) -> ArtifactRef:
        """Parse a reference; a malformed one is a one-line user error."""
        store, _, rest = text.partition(":")
        if store not in STORES or not rest:
            raise TunelabError(f"{text}: not an artifact reference (use trackio:PROJECT/NAME:VERSION, "
                               "wandb:ENTITY/PROJECT/NAME:VERSION or mlflow:NAME:VERSION)")
        path, _, version = rest.partition(":")
        parts = path.split("/")
        project = default_project or _home["project"]
        entity = None
        if store == "wandb" and len(parts) == 3:
            entity, project, name = parts
        elif store in ("wandb", "trackio") and len(parts) == 2:
            project, name = parts
        elif len(parts) == 1:
            name = parts[0]
        else:
            raise TunelabError(f"{text}: expected {store}:{'[ENTITY/]' if store == 'wandb' else ''}"
                               f"{'' if store == 'mlflow' else 'PROJECT/'}NAME[:VERSION]")
        if not _valid_name(name) or (version and not _valid_name(version)):
            raise TunelabError(f"{text}: artifact names and versions use letters, digits, '.', '_' and '-' "
                               "(not '.' or '..', and not starting with '.')")
        return cls(store, project, name, version or None, entity, text)


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

    def as_record(self) -> dict[str, Any]:
        return {**self.version.as_record(), "requested": self.requested, "local_path": str(self.path)}


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


def configure(home: str | Path | None, project: str | None = None, mlflow_uri: str | None = None) -> None:
    """Set where references without an explicit store location resolve (the run's tracking dir and project)."""
    _home["dir"] = Path(home) if home is not None else None
    if project:
        _home["project"] = project
    _home["mlflow_uri"] = mlflow_uri


def configure_for(cfg) -> None:
    """`configure` from a run config: its tracking dir, project and MLflow URI."""
    from tunelab.tracking.env import tracking_dir

    configure(tracking_dir(cfg), cfg.tracking.project, cfg.tracking.uri)


def home() -> Path:
    from tunelab.tracking.env import default_tracking_dir

    return Path(_home["dir"] or default_tracking_dir())


def store_for(store: str, tracking_dir: str | Path | None = None, mlflow_uri: str | None = None):
    """The artifact store of one backend, rooted in `tracking_dir` (default: the configured home)."""
    from tunelab.tracking.env import isolate

    d = isolate(tracking_dir or home())
    if store == "trackio":
        from tunelab.tracking.trackio_backend import TrackioStore

        return TrackioStore(d)
    if store == "wandb":
        from tunelab.tracking.wandb_backend import WandbStore

        return WandbStore(d)
    if store == "mlflow":
        from tunelab.tracking.mlflow_backend import MlflowStore

        return MlflowStore(d, mlflow_uri or _home["mlflow_uri"])
    raise TunelabError(f"{store}: has no artifact store (artifact stores: {', '.join(STORES)})")


def resolve(text: str, expected_type: str | None = None) -> tuple[Any, ArtifactVersion]:
    """(store, version) for a reference; unknown names, versions, aliases and wrong types are user errors."""
    ref = ArtifactRef.parse(text)
    store = store_for(ref.store)
    version = store.get(ref)
    if expected_type and version.type != expected_type:
        raise TunelabError(f"{text}: is a {version.type} artifact, not a {expected_type}")
    return store, version


def fetch(text: str, expected_type: str | None = None) -> Resolved:
    """Resolve a reference and return its files, downloaded once and cached by content digest.

    The cached copy is checked against the version's digest every time it is used (cheap next to
    training on it): a copy edited or truncated since it was downloaded is fetched again, so what a
    run reads, and records in lineage.json, is what the store holds.
    """
    store, v = resolve(text, expected_type)
    key = (v.digest or v.native_digest or f"{v.store}-{v.project}-{v.version}")[:16]
    cache = home().resolve() / "artifact-cache" / f"{v.name}-{key}"
    if cache.is_dir() and v.digest and content_digest(cache) != v.digest:
        stale = cache.with_name(cache.name + ".stale")
        shutil.rmtree(stale, ignore_errors=True)
        cache.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    if not cache.is_dir():
        tmp = cache.with_name(cache.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            store.download(v, tmp)
        except TunelabError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except Exception as e:  # noqa: BLE001 - the store lost its copy, or the disk is full
            shutil.rmtree(tmp, ignore_errors=True)
            from tunelab.errors import as_user_error

            err = as_user_error(e)
            raise err or TunelabError(f"{text}: the store could not hand out its files ({type(e).__name__}: "
                                      f"{(str(e).splitlines() or [''])[0][:200]})") from None
        if v.digest and content_digest(tmp) != v.digest:
            shutil.rmtree(tmp, ignore_errors=True)
            raise TunelabError(f"{text}: the store's files do not match the recorded digest {v.digest[:12]}",
                               hint="the stored copy was changed after it was logged; push the data again")
        tmp.rename(cache)
    return Resolved(v, cache, text)


def unknown(ref: ArtifactRef, names: list[str], versions: list[str] | None) -> TunelabError:
    """The one-line error for a name, version or alias the store does not hold."""
    where = f"{ref.store} project {ref.project!r}" if ref.store != "mlflow" else "the MLflow registry"
    if versions is None:
        known = f"known: {', '.join(sorted(names)[:12])}" if names else "it holds no artifacts"
        return TunelabError(f"{ref.text}: no artifact {ref.name!r} in {where} ({known})",
                            hint="list them with: tunelab artifacts list")
    return TunelabError(f"{ref.text}: {ref.name!r} has no version or alias {ref.version!r} "
                        f"(has: {', '.join(versions)})")
