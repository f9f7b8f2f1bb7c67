"""Scorer declarations with a weight, as `grpo.rewards` holds them: a scorer as `eval.scorers` declares one
plus an optional `weight` (`{exact_match: {weight: 1}}`, `{regex: {pattern: '...', weight: 0.2}}`).

Training sums the weighted scores (`training.rewards`); `tunelab eval` re-scores a GRPO run's held-out
answers with the same scorers, weights aside. Both read the declarations here, so they cannot disagree on
what a reward is. An answer a reward cannot score leaves that reward unscored in both, never stops them.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any

from tunelab.errors import ConfigError, TunelabError
from tunelab.scoring.registry import Scorer, build_scorers

FIELD = "grpo.rewards"  # where the declarations live in a run config; errors name `grpo.rewards[i]`


def split_weight(item: Any) -> tuple[Any, Any]:
    """(the scorer declaration without `weight`, the weight as declared, default 1)."""
    if isinstance(item, dict) and len(item) == 1:
        ((name, params),) = item.items()
        if isinstance(params, dict) and "weight" in params:
            rest = {k: v for k, v in params.items() if k != "weight"}
            return {name: rest or None} if rest else name, params["weight"]
    return item, 1.0


def _weight_problem(weight: Any) -> str | None:
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
        return f"weight {weight!r} is not a number"
    return None


def weighted_scorers(declared: list[Any], source: str | None = None, field: str = FIELD) -> list[tuple[Scorer, float]]:
    """(scorer, weight) of each declaration; every bad one (unknown scorer, bad parameter, a regex that does
    not compile, a python function that cannot be imported, a weight that is no number) is a line of one
    ConfigError naming `field[i]`."""
    problems, scorers_in, weights = [], [], []
    for i, item in enumerate(declared):
        where = f"{field}[{i}]"
        decl, weight = split_weight(item)
        bad = _weight_problem(weight)
        if bad:
            problems.append(f"{where}: {bad}")
            continue
        scorers_in.append((where, decl))
        weights.append(float(weight))
    try:
        scorers = build_scorers(scorers_in, source)
    except ConfigError as e:
        problems += e.problems
        scorers = []
    if problems:
        raise ConfigError(problems, source=source)
    return list(zip(scorers, weights, strict=True))


def unscored_as_missing(scorer: Scorer) -> Scorer:
    """`scorer` for `tunelab eval` re-scoring a reward: an answer it cannot score (its function raised, returned
    NaN or no number) scores None, as in training, so it is null in eval_samples.jsonl and left out of the
    reward's mean, and said once on stderr; eval goes on instead of stopping at the first such answer."""
    said = False

    def fn(prompt: str, answer: str, reference: str | None, row: dict) -> float | None:
        nonlocal said
        try:
            return scorer.score(prompt, answer, reference, row)
        except TunelabError as e:
            if not said:
                said = True
                print(
                    f"warning: reward {scorer.key}: an answer left unscored ({e.message}); it is null in "
                    f"eval_samples.jsonl and left out of {scorer.key}",
                    file=sys.stderr,
                )
            return None

    return dataclasses.replace(scorer, fn=fn)
