"""Scorers that compare an answer's text with the reference: exact and normalized match, ROUGE-L,
BLEU, chrF, and the answer's length.

ROUGE-L comes from Google's `rouge-score`, BLEU and chrF from `sacrebleu` (the reference
implementations the literature reports); only the exact-match folding is ours.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from tunelab.scoring.registry import Kind, register


def normalize_answer(text: str) -> str:
    """Case folded, punctuation removed, whitespace runs collapsed to one space, ends stripped."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return re.sub(r"\s+", " ", text).strip()


def exact_match(answer: str, reference: str) -> float:
    """1.0 when the answer equals the reference up to surrounding whitespace (the training-time rule)."""
    return float(answer.strip() == reference.strip())


def normalized_exact_match(answer: str, reference: str) -> float:
    """1.0 when the answers are equal after `normalize_answer` (case, punctuation, whitespace)."""
    return float(normalize_answer(answer) == normalize_answer(reference))


@lru_cache(maxsize=1)
def library_scorers():
    """Built once: sacrebleu's metric objects set up their tokenizers on construction."""
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU, CHRF

    # effective order: answers shorter than 4 tokens are scored on the n-gram orders they have, not given 0
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False), BLEU(effective_order=True), CHRF()


def rouge_l(answer: str, reference: str) -> float:
    return library_scorers()[0].score(reference, answer)["rougeL"].fmeasure


def sentence_bleu(answer: str, reference: str) -> float:
    return library_scorers()[1].sentence_score(answer, [reference]).score


def corpus_bleu(answers: list[str], references: list[str]) -> float:
    """Effective order: standard corpus BLEU whenever some answer has 4 tokens; for corpora of shorter
    answers (one-word tasks) a score over the n-gram orders that exist, where standard BLEU is 0."""
    return library_scorers()[1].corpus_score(answers, [references]).score


def sentence_chrf(answer: str, reference: str) -> float:
    return library_scorers()[2].sentence_score(answer, [reference]).score


def corpus_chrf(answers: list[str], references: list[str]) -> float:
    return library_scorers()[2].corpus_score(answers, [references]).score


def answer_words(answer: str) -> float:
    return float(len(answer.split()))


def _against_reference(fn):
    """A (prompt, answer, reference, row) scorer of a two-argument comparison."""
    return lambda params: lambda prompt, answer, reference, row: fn(answer, reference)


def _answer_words(params):
    return lambda prompt, answer, reference, row: answer_words(answer)


register(
    Kind(
        "exact_match",
        1,
        "1 when the answer equals the reference up to surrounding whitespace, else 0.",
        _against_reference(exact_match),
        needs_reference=True,
        label="exact match",
        fmt="pct",
    )
)
register(
    Kind(
        "normalized_exact_match",
        1,
        "Exact match after folding case, punctuation and whitespace.",
        _against_reference(normalized_exact_match),
        needs_reference=True,
        label="normalized exact match",
        fmt="pct",
    )
)
register(
    Kind(
        "rougeL",
        1,
        "ROUGE-L F1 (rouge-score), 0-1.",
        _against_reference(rouge_l),
        needs_reference=True,
        label="ROUGE-L F1",
    )
)
register(
    Kind(
        "bleu",
        1,
        "BLEU (sacrebleu, effective order), 0-100; corpus-level over a set of answers.",
        _against_reference(sentence_bleu),
        needs_reference=True,
        corpus=corpus_bleu,
        label="BLEU",
        fmt="{:.1f}",
    )
)
register(
    Kind(
        "chrf",
        1,
        "chrF (sacrebleu), 0-100; corpus-level over a set of answers.",
        _against_reference(sentence_chrf),
        needs_reference=True,
        corpus=corpus_chrf,
        label="chrF",
        fmt="{:.1f}",
    )
)
register(
    Kind("answer_words", 0, "The answer's length in words.", _answer_words, label="answer length (words)", fmt="{:.2f}")
)
