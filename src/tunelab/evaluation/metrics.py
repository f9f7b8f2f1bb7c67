"""Generation metrics as `tunelab eval` and the training sample tables report them, the metric
table with the scorers' rows filled in, and which way each metric is better.

The scorers themselves (exact match, normalized exact match, ROUGE-L, BLEU, chrF, answer length and
the rest) live in `tunelab.scoring`, their one owner; this module keeps the historical functions
over the default set, so the numbers `tunelab eval` and training report agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from statistics import fmean
from typing import Any

from tunelab.runs.metric_table import TABLE, MetricTable, ScorerMetric
from tunelab.scoring import (
    DEFAULT_SCORERS,
    Scorer,
    aggregate,
    config_scorers,
    declared_metric,
    kind_metrics,
    score_answers,
)
from tunelab.scoring.text import exact_match, normalize_answer, normalized_exact_match

__all__ = [
    "direction",
    "example_scores",
    "exact_match",
    "exact_match_rate",
    "config_metrics",
    "generation_metrics",
    "metric_table",
    "normalize_answer",
    "normalized_exact_match",
]


def exact_match_rate(answers: list[str], references: list[str]) -> float:
    """Share of answers that are exact matches of their references (0.0 for no references)."""
    if not references:
        return 0.0
    return fmean(exact_match(a, r) for a, r in zip(answers, references, strict=True))


@cache
def _default_scorers() -> tuple:
    return tuple(config_scorers(list(DEFAULT_SCORERS)))


def example_scores(answer: str, reference: str) -> dict[str, float]:
    """Scores of one answer: exact/normalized match (0/1), ROUGE-L F1 (0-1), sentence BLEU and chrF (0-100), words."""
    return score_answers(list(_default_scorers()), [""], [answer], [reference], [{}])[0]


def generation_metrics(
    answers: list[str], references: list[str], per_example: list[dict] | None = None
) -> dict[str, float]:
    """Aggregates over a set of answers: means of the per-example scores, except BLEU and chrF,
    which are corpus-level as sacrebleu computes them. Empty input gives an empty dict."""
    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers for {len(references)} references")
    if not references:
        return {}
    scorers = list(_default_scorers())
    if per_example is None:
        per_example = score_answers(scorers, [""] * len(answers), answers, references, [{}] * len(answers))
    return aggregate(scorers, answers, references, per_example)


def metric_table(scorers: Iterable[Scorer] = (), declared: Iterable[Any] = ()) -> MetricTable:
    """The metric table with a row pair for each of `scorers`, for each declaration in `declared` (a
    config's eval.scorers entries, eval.json's `scorers` values; one this tunelab cannot read is left
    out), and for every registered kind under its own name."""
    rows = [s.metric for s in scorers] + [m for d in declared if (m := declared_metric(d)) is not None]
    return _table(tuple(rows))


def config_metrics(declared: list[Any] | None) -> list[ScorerMetric]:
    """The rows of a config's eval.scorers (None: the default set), without building the scorers."""
    items = list(DEFAULT_SCORERS) if declared is None else declared
    return [m for d in items if (m := declared_metric(d)) is not None]


@cache
def _table(declared: tuple[ScorerMetric, ...]) -> MetricTable:
    return TABLE.with_scorers([*declared, *kind_metrics()])  # a declared one wins over its kind's default


def direction(metric: str) -> int:
    """+1 when higher is better, -1 when lower is better, 0 when neither (answer length, timings).

    Prefixed names as they appear in metrics.jsonl and trackers (`samples_rougeL`, `eval_loss`,
    `eval/baseline/bleu`) get the direction of the metric they name; a scorer's comes from the
    registry."""
    return metric_table().direction(metric)
