"""Experiment tracking: trackio (default, local), W&B, MLflow and TensorBoard sinks, the run's
tracking session (what it logs, lineage, system metrics) and the trackers' dashboards."""

from tunelab.tracking.session import Tracking, build_sinks

__all__ = ["Tracking", "build_sinks"]
