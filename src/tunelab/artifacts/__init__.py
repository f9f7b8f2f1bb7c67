"""Versioned datasets and models in the trackers' stores: references resolved in an explicit
`Home` (no module state), downloaded into a digest-checked cache, and model artifacts as models."""

from tunelab.artifacts.core import (
    ArtifactSpec,
    ArtifactVersion,
    Home,
    Resolved,
    content_digest,
    parse,
    tracking_dir,
    unknown,
)
from tunelab.artifacts.resolve import fetch, resolve, store_for
from tunelab.refs import ArtifactRef, is_artifact_ref

__all__ = [
    "ArtifactRef",
    "ArtifactSpec",
    "ArtifactVersion",
    "Home",
    "Resolved",
    "content_digest",
    "fetch",
    "is_artifact_ref",
    "parse",
    "resolve",
    "store_for",
    "tracking_dir",
    "unknown",
]
