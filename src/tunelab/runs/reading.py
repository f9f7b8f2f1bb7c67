"""Reading what runs write: JSON and JSON Lines that may be missing or half-written, and nested
config dicts flattened to dotted keys (the form `runs compare`, the report and resume compare)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Config keys that name or place a run rather than describe the experiment: never "a difference".
NOT_COMPARED = frozenset(
    {"output.name", "output.overwrite", "output.dir", "tracking.run_name", "tracking.dir", "training.resume"}
)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`; None when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The records of a JSON Lines file and how many lines were unreadable (a run still writing,
    or killed, may leave a partial last line). A missing file has no records."""
    p = Path(path)
    if not p.is_file():
        return [], 0
    out, bad = [], 0
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            out.append(rec)
        else:
            bad += 1
    return out, bad


def flatten(d: dict[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; empty dicts stay values."""
    out: dict[str, Any] = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
