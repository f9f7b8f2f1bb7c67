"""What an export wrote: the record `tunelab export` prints, shared by every format's writer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunelab.export.merge import LogitCheck


@dataclass
class ExportResult:
    folder: Path
    kind: str  # merged | full | adapter | gguf
    check: LogitCheck | None
    usage: list[str]
    notes: list[str] = field(default_factory=list)
    checks: list[str] = field(
        default_factory=list
    )  # further checks passed, one line each (gguf: the file's own logits)
    wrote: str = ""  # what the folder holds, for the CLI's "wrote" line
