"""Generation metrics: exact match, normalized exact match, ROUGE-L, BLEU, chrF and answer length.

ROUGE-L comes from Google's `rouge-score`, BLEU and chrF from `sacrebleu` (the reference
implementations the literature reports); only the exact-match folding is ours. The same functions
score `tunelab eval` and the sample generations logged during training, so the numbers agree.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from statistics import fmean

# Higher is better for these; loss and perplexity are lower-is-better; answer length has no direction.
HIGHER_IS_BETTER = (
    "exact_match",
    "normalized_exact_match",
    "rougeL",
    "bleu",
    "chrf",
    "preference_accuracy",
    "preference_margin",
    "preference_accuracy_after",
)
LOWER_IS_BETTER = ("loss", "perplexity")


def normalize_answer(text: str) -> str:
    """Case folded, punctuation removed, whitespace runs collapsed to one space, ends stripped."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return re.sub(r"\s+", " ", text).strip()


def exact_match(answer: str, reference: str) -> float:
    """1.0 when the answer equals the reference up to surrounding whitespace (the training-time rule)."""
    return float(answer.strip() == reference.strip())


def exact_match_rate(answers: list[str], references: list[str]) -> float:
    """Share of answers that are exact matches of their references (0.0 for no references)."""
    if not references:
        return 0.0
    return fmean(exact_match(a, r) for a, r in zip(answers, references, strict=True))


def normalized_exact_match(answer: str, reference: str) -> float:
    """1.0 when the answers are equal after `normalize_answer` (case, punctuation, whitespace)."""
    return float(normalize_answer(answer) == normalize_answer(reference))


@lru_cache(maxsize=1)
def _scorers():
    """Built once: sacrebleu's metric objects set up their tokenizers on construction."""
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU, CHRF

    # effective order: answers shorter than 4 tokens are scored on the n-gram orders they have, not given 0
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False), BLEU(effective_order=True), CHRF()


def example_scores(answer: str, reference: str) -> dict[str, float]:
    """Scores of one answer: exact/normalized match (0/1), ROUGE-L F1 (0-1), sentence BLEU and chrF (0-100), words."""
    rouge, bleu, chrf = _scorers()
    return {
        "exact_match": exact_match(answer, reference),
        "normalized_exact_match": normalized_exact_match(answer, reference),
        "rougeL": rouge.score(reference, answer)["rougeL"].fmeasure,
        "bleu": bleu.sentence_score(answer, [reference]).score,
        "chrf": chrf.sentence_score(answer, [reference]).score,
        "answer_words": float(len(answer.split())),
    }


def generation_metrics(
    answers: list[str], references: list[str], per_example: list[dict] | None = None
) -> dict[str, float]:
    """Aggregates over a set of answers: means of the per-example scores, except BLEU and chrF,
    which are corpus-level as sacrebleu computes them. Empty input gives an empty dict.

    BLEU uses effective order: the same number as standard corpus BLEU whenever some answer has 4
    tokens, and for corpora of shorter answers (one-word tasks) a score over the n-gram orders that
    exist, where standard BLEU would be 0 even for perfect answers."""
    _, bleu, chrf = _scorers()
    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers for {len(references)} references")
    if not references:
        return {}
    scores = (
        per_example
        if per_example is not None
        else [example_scores(a, r) for a, r in zip(answers, references, strict=True)]
    )
    return {
        "exact_match": fmean(s["exact_match"] for s in scores),
        "normalized_exact_match": fmean(s["normalized_exact_match"] for s in scores),
        "rougeL": fmean(s["rougeL"] for s in scores),
        "bleu": bleu.corpus_score(answers, [references]).score,
        "chrf": chrf.corpus_score(answers, [references]).score,
        "answer_words": fmean(s["answer_words"] for s in scores),
    }


def direction(metric: str) -> int:
    """+1 when higher is better, -1 when lower is better, 0 when neither (answer length, timings).

    Prefixed names as they appear in metrics.jsonl and trackers (`samples_rougeL`, `eval_loss`,
    `eval/baseline/bleu`) get the direction of the metric they name."""
    name = metric.rsplit("/", 1)[-1].removeprefix("samples_").removeprefix("final_")
    if name in HIGHER_IS_BETTER:
        return 1
    if name in LOWER_IS_BETTER or name.endswith("loss"):
        return -1
    return 0
