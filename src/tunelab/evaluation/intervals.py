"""How sure a difference is: a paired bootstrap 95 % interval of target minus baseline, per metric.

Both models answered the same prompts, so each resample draws prompts (with replacement) and takes
both models' scores on those same prompts: what varies between resamples is which prompts were
asked, not the pairing. The percentile interval of 1000 seeded resamples is reproducible.

A metric averaged over answers (exact match, ROUGE-L, a check's pass rate, answer length) is
resampled from its per-example scores, over the prompts where both models have a score. A corpus
metric (BLEU, chrF as sacrebleu computes them) is not a mean of per-answer scores, so each resample
recomputes the corpus score of both models on the drawn prompts. The loss, perplexity and
preference accuracy are computed over the whole set without per-example values kept: they get no
interval, and the tables say so by showing none.
"""

from __future__ import annotations

from collections.abc import Sequence

from tunelab.runs.records import EvalInterval
from tunelab.scoring import Scorer

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95


def paired_interval(
    target: Sequence[float], baseline: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED
) -> EvalInterval:
    """The bootstrap interval of mean(target) - mean(baseline) over paired per-prompt scores."""
    import numpy as np

    diffs = np.asarray(target, dtype=float) - np.asarray(baseline, dtype=float)
    draws = np.random.default_rng(seed).integers(0, len(diffs), size=(resamples, len(diffs)))
    return _interval(diffs[draws].mean(axis=1), len(diffs), resamples, seed)


def corpus_interval(
    scorer: Scorer,
    target_answers: Sequence[str],
    baseline_answers: Sequence[str],
    references: Sequence[str],
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> EvalInterval:
    """The bootstrap interval of a corpus score's difference: both corpora rescored on each resample of prompts."""
    import numpy as np

    corpus = scorer.kind.corpus
    n = len(references)
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    diffs = [
        corpus([target_answers[i] for i in idx], [references[i] for i in idx])
        - corpus([baseline_answers[i] for i in idx], [references[i] for i in idx])
        for idx in draws
    ]
    return _interval(np.asarray(diffs), n, resamples, seed)


def _interval(diffs, prompts: int, resamples: int, seed: int) -> EvalInterval:
    import numpy as np

    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return EvalInterval(low=float(low), high=float(high), prompts=prompts, resamples=resamples, seed=seed, level=LEVEL)


def score_intervals(
    scorers: list[Scorer],
    references: Sequence,
    target_answers: Sequence[str],
    target_scores: Sequence[dict[str, float | None]],
    baseline_answers: Sequence[str],
    baseline_scores: Sequence[dict[str, float | None]],
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict[str, EvalInterval]:
    """{metric key: interval of target - baseline} for every scorer both models were scored by."""
    out: dict[str, EvalInterval] = {}
    for s in scorers:
        if s.kind.corpus is not None:
            keep = [i for i, r in enumerate(references) if r is not None]
            if keep:
                out[s.key] = corpus_interval(
                    s,
                    [target_answers[i] for i in keep],
                    [baseline_answers[i] for i in keep],
                    [references[i] for i in keep],
                    resamples,
                    seed,
                )
            continue
        pairs = [
            (a[s.key], b[s.key])
            for a, b in zip(target_scores, baseline_scores, strict=True)
            if a.get(s.key) is not None and b.get(s.key) is not None
        ]
        if pairs:
            out[s.key] = paired_interval([a for a, _ in pairs], [b for _, b in pairs], resamples, seed)
    for s in scorers:
        if s.key in out:
            out[s.key].direction = s.metric.direction  # so readers below the scorers (runs compare) can judge it
    return out
