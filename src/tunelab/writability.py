"""Checks before writing: whether a folder can be written, asked before anything slow starts.

A permission bit is not enough (root ignores it, a read-only mount does not), so the probe makes
and removes a file where the writes would go.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tunelab.errors import TunelabError


def unwritable(path: str | Path) -> str | None:
    """Why files cannot be written at `path` (a folder, created if missing), or None when they can.

    Nothing is left behind: the probe file is removed, and missing folders are not created.
    """
    p = Path(path).expanduser().absolute()
    probe = p
    while not probe.exists():
        if probe == probe.parent:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    try:
        fd, name = tempfile.mkstemp(prefix=".tunelab-probe-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        return f"{probe} is not writable ({(e.strerror or str(e)).lower()})"
    return None


def check_writable(path: str | Path, what: str) -> None:
    """Fail now, naming the field, when `path` (a folder to create or use) cannot be written."""
    why = unwritable(path)
    if why is not None:
        p = Path(path).expanduser().absolute()
        raise TunelabError(f"{what}: cannot write {p}: {why}")
