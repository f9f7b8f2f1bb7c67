"""Experiment tracking: trackio (default, local), W&B, MLflow and TensorBoard sinks, versioned artifacts,
lineage, and the local run index (`tunelab runs`)."""

from tunelab.tracking.artifacts import is_artifact_ref
from tunelab.tracking.session import Tracking, build_sinks

__all__ = ["Tracking", "build_sinks", "is_artifact_ref"]
