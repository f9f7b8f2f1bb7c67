"""Where tunelab keeps what it can rebuild: $TUNELAB_CACHE, else $XDG_CACHE_HOME/tunelab (~/.cache/tunelab)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(part: str) -> Path:
    """The cache folder for one kind of entry (`data`, `tiny`)."""
    root = os.environ.get("TUNELAB_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tunelab"
    return Path(root) / part
