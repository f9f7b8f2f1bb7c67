"""Generation metrics as `tunelab eval` and the training sample tables report them, and which way
each metric is better.

The scorers themselves (exact match, normalized exact match, ROUGE-L, BLEU, chrF, answer length and
the rest) live in `tunelab.scoring`, their one owner; this module keeps the historical functions
over the default set, so the numbers `tunelab eval` and training report agree.
"""

from __future__ import annotations

from functools import cache
from statistics import fmean

from tunelab.scoring import DEFAULT_SCORERS, aggregate, config_scorers, kind_of, score_answers
from tunelab.scoring.text import exact_match, normalize_answer, normalized_exact_match

__all__ = [
    "direction",
    "example_scores",
    "exact_match",
    "exact_match_rate",
    "generation_metrics",
    "normalize_answer",
    "normalized_exact_match",
]

# Metrics that are no scorer: measured on the reference answers (loss) or on preference pairs.
OTHER_DIRECTIONS = {
    "loss": -1,
    "perplexity": -1,
    "preference_accuracy": 1,
    "preference_margin": 1,
    "preference_accuracy_after": 1,
}


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


def direction(metric: str) -> int:
    """+1 when higher is better, -1 when lower is better, 0 when neither (answer length, timings).

    Prefixed names as they appear in metrics.jsonl and trackers (`samples_rougeL`, `eval_loss`,
    `eval/baseline/bleu`) get the direction of the metric they name; a scorer's comes from the
    registry."""
    name = metric.rsplit("/", 1)[-1].removeprefix("samples_").removeprefix("final_")
    if name in OTHER_DIRECTIONS:
        return OTHER_DIRECTIONS[name]
    kind = kind_of(name)
    if kind is not None:
        return kind.direction
    return -1 if name.endswith("loss") else 0
