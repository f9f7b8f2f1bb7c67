"""Names that point at things, parsed once into typed values.

A model name (`model.name`, a TARGET) is a `tiny:` preset, a local folder, an artifact reference
or a hub id; a data source (`data.train.path`) is `synthetic:N...`, a local file or folder, an
artifact reference or a hub dataset id. `parse_model` and `parse_data` decide which, with one rule
each, and every consumer switches on `.kind` instead of looking at the string again.

This module is pure (no library imports, no I/O beyond asking whether a path exists), so the
config schema can parse and check names when it validates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")
STORES = ("trackio", "wandb", "mlflow")
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


class RefError(ValueError):
    """A name that cannot be parsed (the schema turns it into a config error naming the field)."""


def _valid_name(name: str) -> bool:
    # artifact names become folder and file names in the stores (MLflow's registry included)
    return bool(name) and bool(_NAME.match(name)) and not name.startswith(".")


@dataclass(frozen=True)
class ArtifactRef:
    """`trackio:PROJECT/NAME[:V]`, `wandb:[ENTITY/]PROJECT/NAME[:V]` or `mlflow:NAME[:V]`; no V means latest.

    `project` is None when the reference leaves it out: it is then the tracking home's project.
    """

    store: str
    project: str | None
    name: str
    version: str | None = None  # vN, an alias, or None for latest
    entity: str | None = None
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> ArtifactRef:
        store, _, rest = text.partition(":")
        if store not in STORES or not rest:
            raise RefError(
                f"{text}: not an artifact reference (use trackio:PROJECT/NAME:VERSION, "
                "wandb:ENTITY/PROJECT/NAME:VERSION or mlflow:NAME:VERSION)"
            )
        path, _, version = rest.partition(":")
        parts = path.split("/")
        project = entity = None
        if store == "wandb" and len(parts) == 3:
            entity, project, name = parts
        elif store in ("wandb", "trackio") and len(parts) == 2:
            project, name = parts
        elif len(parts) == 1:
            name = parts[0]
        else:
            raise RefError(
                f"{text}: expected {store}:{'[ENTITY/]' if store == 'wandb' else ''}"
                f"{'' if store == 'mlflow' else 'PROJECT/'}NAME[:VERSION]"
            )
        if not _valid_name(name) or (version and not _valid_name(version)):
            raise RefError(
                f"{text}: artifact names and versions use letters, digits, '.', '_' and '-' "
                "(not '.' or '..', and not starting with '.')"
            )
        return cls(store, project, name, version or None, entity, text)

    def in_project(self, default: str) -> ArtifactRef:
        """This reference with the project filled in (the tracking home's) when it names none."""
        if self.project is not None:
            return self
        return ArtifactRef(self.store, default, self.name, self.version, self.entity, self.text)


def is_artifact_ref(text: str | None) -> bool:
    return bool(text) and ":" in text and text.split(":", 1)[0] in STORES


@dataclass(frozen=True)
class ModelRef:
    kind: Literal["tiny", "local", "artifact", "hub"]
    text: str
    artifact: ArtifactRef | None = None

    @property
    def preset(self) -> str:
        return self.text.removeprefix("tiny:")


def parse_model(text: str) -> ModelRef:
    """What a model name names. A path that exists, or that is written as one (`./x`, `/x`, `~/x`), is local."""
    if not text or not text.strip():
        raise RefError("empty model name")
    if text.startswith("tiny:"):
        if not text.removeprefix("tiny:"):
            raise RefError(f"{text}: expected tiny:PRESET")
        return ModelRef("tiny", text)
    if is_artifact_ref(text):
        return ModelRef("artifact", text, ArtifactRef.parse(text))
    if text.startswith((".", "/", "~")) or Path(text).expanduser().exists():
        return ModelRef("local", text)
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", text):
        raise RefError(f"{text}: not a local folder, a tiny: preset, an artifact reference or a hub id (ORG/NAME)")
    return ModelRef("hub", text)


SYNTHETIC_KINDS = ("alpaca", "preference", "tools")


@dataclass(frozen=True)
class SyntheticSpec:
    n: int
    seed: int = 0
    tasks: tuple[str, ...] | None = None
    kind: str = "alpaca"  # alpaca rows, preference pairs (chosen / rejected), or chat rows with tool calls


@dataclass(frozen=True)
class DataRef:
    kind: Literal["synthetic", "local", "artifact", "hub"]
    text: str
    artifact: ArtifactRef | None = None
    synthetic: SyntheticSpec | None = None


# Synthetic rows are made in memory (about 8 s and 1 GB a million): more is a typo that would only hang.
SYNTHETIC_MAX_ROWS = 1_000_000


def synthetic_rows_problem(n: int) -> str | None:
    """Why `n` cannot be the row count of synthetic data (`synthetic:N`, `tunelab synth --n`), or None."""
    if n <= 0:
        return "the row count must be positive"
    if n > SYNTHETIC_MAX_ROWS:
        return f"{n} rows is above the most synthetic data holds ({SYNTHETIC_MAX_ROWS:,})"
    return None


def parse_synthetic(text: str, known_tasks: tuple[str, ...] | None = None) -> SyntheticSpec:
    """`synthetic:N[:seed=S][:tasks=a,b][:kind=alpaca|preference|tools]`."""
    parts = text.split(":")[1:]
    try:
        n = int(parts[0])
        opts = dict(p.split("=", 1) for p in parts[1:])
        seed = int(opts.pop("seed", 0))
        tasks = tuple(opts.pop("tasks").split(",")) if "tasks" in opts else None
        kind = opts.pop("kind", "alpaca")
    except (ValueError, IndexError, KeyError):
        raise RefError(f"{text}: expected synthetic:N[:seed=S][:tasks=a,b][:kind=K]") from None
    if opts:
        raise RefError(f"{text}: unknown option {', '.join(opts)} (expected synthetic:N[:seed=S][:tasks=a,b][:kind=K])")
    if kind not in SYNTHETIC_KINDS:
        raise RefError(f"{text}: unknown kind {kind!r} (kinds: {', '.join(SYNTHETIC_KINDS)})")
    problem = synthetic_rows_problem(n)
    if problem:
        raise RefError(f"{text}: {problem}")
    unknown = [t for t in tasks or () if known_tasks is not None and t not in known_tasks]
    if unknown:
        raise RefError(f"{text}: unknown task {', '.join(unknown)} (tasks: {', '.join(known_tasks or ())})")
    return SyntheticSpec(n, seed, tasks, kind)


def parse_data(text: str, known_tasks: tuple[str, ...] | None = None) -> DataRef:
    """What a data source names. Files with a data suffix, existing paths and paths written as
    paths are local; `ORG/NAME` (or a bare name) that is none of those is a hub dataset id."""
    if not text or not text.strip():
        raise RefError("empty data source")
    if text.startswith("synthetic:"):
        return DataRef("synthetic", text, synthetic=parse_synthetic(text, known_tasks))
    if is_artifact_ref(text):
        return DataRef("artifact", text, ArtifactRef.parse(text))
    p = Path(text).expanduser()
    if text.startswith((".", "/", "~")) or p.suffix in DATA_SUFFIXES or p.exists():
        return DataRef("local", text)
    return DataRef("hub", text)
