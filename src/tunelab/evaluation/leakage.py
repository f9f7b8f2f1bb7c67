"""Held-out prompts that the model may have trained on: counted and flagged before anything is scored.

A prompt's text is what the row asks (Alpaca's instruction and input, a custom template's fields,
the turns of a conversation before its answer), not the template around it, whose boilerplate every
prompt shares. Two checks, over text folded as `normalize_answer` folds answers (case, punctuation,
whitespace):

- exact: the folded held-out prompt equals a folded training prompt;
- near-duplicate: a training prompt whose word 3-grams overlap the held-out prompt's with a Jaccard
  index of at least `NEAR_THRESHOLD` (0.8: shared / all distinct 3-grams of the two), for held-out
  prompts of at least `NEAR_MIN_WORDS` (10) words. Shorter prompts are checked exactly only: on
  templated data ("How many words are there? road" vs "... road sun") a short prompt one word
  apart is another question, and containment or Jaccard flagged a quarter of the quickstart's
  held-out prompts that way.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from tunelab.config.schema import PromptConfig
from tunelab.data.templates import template_fields
from tunelab.runs.records import EvalLeakage
from tunelab.scoring.text import normalize_answer

NGRAM = 3
NEAR_THRESHOLD = 0.8
NEAR_MIN_WORDS = 10
EXAMPLES = 5  # flagged prompts named in the record


def prompt_text(row: dict[str, Any], prompt: PromptConfig) -> str:
    """What a row asks, without the template around it ("" for raw text, which asks nothing)."""
    if prompt.format == "alpaca":
        return f"{row.get('instruction', '')}\n{row.get('input') or ''}"
    if prompt.format == "messages":
        turns = row.get("messages") or []
        if turns and turns[-1].get("role") == "assistant":
            turns = turns[:-1]
        return "\n".join(str(t.get("content") or "") for t in turns)
    if prompt.format == "custom":
        return "\n".join(str(row.get(k, "")) for k in template_fields(prompt.template or ""))
    return ""


def _ngrams(words: list[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1)}


def count_leakage(held_out: Sequence[str], training: Sequence[str]) -> EvalLeakage:
    """How many `held_out` prompt texts occur in `training` exactly or as near-duplicates (see the module)."""
    folded_train = [normalize_answer(t) for t in training]
    exact_set = set(folded_train)
    index: dict[tuple[str, ...], set[int]] = defaultdict(set)  # n-gram -> training prompts holding it
    sizes = []  # distinct n-grams of each training prompt
    for i, text in enumerate(folded_train):
        grams = _ngrams(text.split())
        sizes.append(len(grams))
        for gram in grams:
            index[gram].add(i)
    exact = near = 0
    flagged: list[int] = []
    for j, text in enumerate(normalize_answer(t) for t in held_out):
        if text and text in exact_set:
            exact += 1
            flagged.append(j)
        elif len(text.split()) >= NEAR_MIN_WORDS and _near_duplicate(_ngrams(text.split()), index, sizes):
            near += 1
            flagged.append(j)
    return EvalLeakage(
        checked=len(held_out),
        training_rows=len(training),
        exact=exact,
        near=near,
        ngram=NGRAM,
        threshold=NEAR_THRESHOLD,
        examples=flagged[:EXAMPLES],
    )


def _near_duplicate(grams: set[tuple[str, ...]], index: dict[tuple[str, ...], set[int]], sizes: list[int]) -> bool:
    """Whether one training prompt's n-grams have a Jaccard index >= NEAR_THRESHOLD with `grams`."""
    shared: Counter[int] = Counter()
    for gram in grams:
        shared.update(index.get(gram, ()))
    return any(n / (len(grams) + sizes[i] - n) >= NEAR_THRESHOLD for i, n in shared.items())


def rows_leakage(held_out: list[dict[str, Any]], training: list[dict[str, Any]], prompt: PromptConfig) -> EvalLeakage:
    """`count_leakage` over rows of one prompt format."""
    return count_leakage([prompt_text(r, prompt) for r in held_out], [prompt_text(r, prompt) for r in training])


def warning(leak: EvalLeakage) -> str | None:
    """The console's one line when any held-out prompt was found in the training rows, else None."""
    if not (leak.exact or leak.near):
        return None
    return (
        f"leakage: {leak.exact} of {leak.checked} held-out prompts occur in the training rows exactly and "
        f"{leak.near} more as near-duplicates ({leak.ngram}-gram Jaccard >= {leak.threshold}); their scores "
        f"flatter the model (eval.json: leakage)"
    )
