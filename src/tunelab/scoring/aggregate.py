"""Scores of a set of answers: one dict per answer, and one number per scorer over the set.

Over a set, a scorer with a library-defined corpus score (BLEU, chrF as sacrebleu computes them)
gives that; every other gives the mean of the rows it could score, None ignored.
"""

from __future__ import annotations

from statistics import fmean

from tunelab.scoring.registry import Scorer


def score_answers(
    scorers: list[Scorer], prompts: list[str], answers: list[str], references: list, rows: list[dict]
) -> list[dict[str, float | None]]:
    """One {key: score or None} per answer."""
    return [
        {s.key: s.score(p, a, r, row) for s in scorers}
        for p, a, r, row in zip(prompts, answers, references, rows, strict=True)
    ]


def aggregate(
    scorers: list[Scorer], answers: list[str], references: list, per_example: list[dict[str, float | None]]
) -> dict[str, float]:
    """{key: value over the set}; a scorer that scored no answer is left out."""
    out = {}
    for s in scorers:
        if s.kind.corpus is not None:
            pairs = [(a, r) for a, r in zip(answers, references, strict=True) if r is not None]
            if pairs:
                out[s.key] = s.kind.corpus([a for a, _ in pairs], [r for _, r in pairs])
            continue
        values = [e[s.key] for e in per_example if e.get(s.key) is not None]
        if values:
            out[s.key] = fmean(values)
    return out


def score_set(
    scorers: list[Scorer], prompts: list[str], answers: list[str], references: list, rows: list[dict]
) -> tuple[list[dict[str, float | None]], dict[str, float]]:
    """(per-answer scores, aggregates) of a set of answers."""
    per_example = score_answers(scorers, prompts, answers, references, rows)
    return per_example, aggregate(scorers, answers, references, per_example)
