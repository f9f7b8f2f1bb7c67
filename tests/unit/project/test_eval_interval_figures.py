"""The README's and docs' paired-interval figures are the ones bench/results/eval-intervals.json recorded
(`python bench/eval_intervals.py`): a re-measurement that changes them fails here until the text follows."""

from __future__ import annotations

import json

from conftest import ROOT

RESULT = json.loads((ROOT / "bench" / "results" / "eval-intervals.json").read_text())


def _points(low: float, high: float) -> str:
    return f"{100 * low:+.1f}..{100 * high:+.1f}"


def test_the_quoted_intervals_and_verdict_are_the_recorded_ones():
    readme, docs = (" ".join((ROOT / f).read_text().split()) for f in ("README.md", "docs/architecture.md"))
    first = RESULT["runs"][0]["metrics"]
    em, rouge = first["exact_match"], first["rougeL"]
    assert f"exact match {100 * em['diff']:+.1f} points (95 % interval {_points(*em['interval'])})" in readme
    assert f"ROUGE-L {rouge['diff']:+.3f} ({rouge['interval'][0]:+.3f}..{rouge['interval'][1]:+.3f})" in readme
    pair = RESULT["report"]["exact_match_pair"]
    assert RESULT["report"]["verdict_says_not_distinguishable"] and not pair["distinguishes"]
    assert f"the paired interval of that gap is {_points(*pair['interval'])} points" in readme
    assert RESULT["report"]["verdict"].startswith(
        "seed-43 and seed-42 are not distinguishable on exact match on 96 prompts"
    )
    assert f"{_points(*em['interval'])} points for tuned vs base" in docs
    assert f"{_points(*pair['interval'])} between two seeds" in docs
