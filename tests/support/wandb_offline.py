"""Read an offline W&B run back: its `.wandb` transaction log, without a W&B server.

The file is W&B's own format: a 7-byte header (`:W&B`, magic 0xBEE1, version 0), then LevelDB-log
framing (32 KiB blocks; records of CRC32C, length, type FULL/FIRST/MIDDLE/LAST) around protobuf
`wandb.proto.wandb_internal_pb2.Record` messages. wandb itself no longer ships a Python reader (its
core is Go), so this small one lets the tests check what an offline run holds (test support, not shipped).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

_BLOCK = 32 * 1024
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def records(path: str | Path):
    """Yield the protobuf Records of a `.wandb` file in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if not data.startswith(b":W&B"):
        raise ValueError(f"{path}: not a W&B transaction log")
    pos, pending = _HEADER, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer too short for a record header: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            payload = chunk
        elif kind == _FIRST:
            pending = chunk
            continue
        elif kind == _MIDDLE:
            pending += chunk
            continue
        else:
            payload, pending = pending + chunk, b""
        rec = pb.Record()
        rec.ParseFromString(payload)
        yield rec


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """An offline run folder (`.../wandb/offline-run-*`) as plain data: run facts, config, history rows,
    summary, and logged artifacts (name, type, aliases, digest, metadata)."""
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file")
    out: dict[str, Any] = {"run": {}, "config": {}, "history": [], "summary": {}, "artifacts": []}
    for rec in records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out["run"] = {
                "id": r.run_id,
                "project": r.project,
                "name": r.display_name,
                "job_type": r.job_type,
                "notes": r.notes,
                "tags": list(r.tags),
            }
            out["config"].update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in rec.config.update})
        elif kind == "history":
            out["history"].append(
                {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
            )
        elif kind == "summary":
            for u in rec.summary.update:
                out["summary"][u.key or "/".join(u.nested_key)] = json.loads(u.value_json)
        elif kind == "artifact":
            a = rec.artifact
            out["artifacts"].append(
                {
                    "name": a.name,
                    "type": a.type,
                    "aliases": list(a.aliases),
                    "digest": a.digest,
                    "metadata": json.loads(a.metadata) if a.metadata else {},
                    "files": [c.path for c in a.manifest.contents],
                }
            )
    return out


def table_rows(run_dir: str | Path, key: str = "samples") -> list[dict[str, Any]]:
    """Every row of every version of the table logged under `key`, as dicts (the table files W&B wrote)."""
    rows = []
    for f in sorted(
        Path(run_dir).glob(f"files/media/table/{key}_*.table.json"), key=lambda p: int(p.name.split("_")[1])
    ):
        t = json.loads(f.read_text())
        rows += [dict(zip(t["columns"], r, strict=True)) for r in t["data"]]
    return rows
