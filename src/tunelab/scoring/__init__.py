"""Scorers, one registry: what scores `tunelab eval`, the sample tables during training and sweep
objectives (and, later, rewards). `tunelab scorers` lists them."""

from tunelab.scoring import checks, python, rubric, text, tool_call  # noqa: F401 (each registers its kinds)
from tunelab.scoring.aggregate import aggregate, score_answers, score_set
from tunelab.scoring.registry import (
    DEFAULT_SCORERS,
    REGISTRY,
    Kind,
    Params,
    Scorer,
    build_scorers,
    cli_scorers,
    config_scorers,
    declared_metric,
    kind_metrics,
    kind_of,
    merged,
)

__all__ = [
    "DEFAULT_SCORERS",
    "REGISTRY",
    "Kind",
    "Params",
    "Scorer",
    "aggregate",
    "build_scorers",
    "cli_scorers",
    "config_scorers",
    "declared_metric",
    "kind_metrics",
    "kind_of",
    "merged",
    "score_answers",
    "score_set",
]
