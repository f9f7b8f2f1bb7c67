"""The `rubric` scorer over a stub grader: the grade parsed, an ungraded answer left out, bad parameters refused."""

from __future__ import annotations

import pytest

from judge_stub import StubJudge, grade
from tunelab.errors import ConfigError
from tunelab.scoring import build_scorers, score_set
from tunelab.scoring.judge_client import fill_template, labelled_value, last_value
from tunelab.scoring.rubric import parse_score

pytestmark = pytest.mark.timeout(60)


def test_rubric_grades_each_answer_and_leaves_out_what_it_cannot():
    answers = ["one two three", "a b c d e f g h i j k l", "NOGRADE"]
    with StubJudge() as stub:
        declared = {"rubric": {"url": stub.url, "model": "g", "rubric": "Be brief {answer}.", "max_retries": 1}}
        (scorer,) = build_scorers([("eval.scorers[0]", declared)])
        per_answer, aggregate = score_set([scorer], ["q1", "q2", "q3"], answers, ["r", None, "r"], [{}, {}, {}])
    assert [s["rubric"] for s in per_answer] == [grade(answers[0]), grade(answers[1]), None] == [3.0, 10.0, None]
    assert aggregate["rubric"] == pytest.approx(6.5)
    assert len(stub.requests) == 4  # the ungraded answer asked twice (one retry)
    # the rubric's own braces are not placeholders: the answer appears once, where it belongs
    first = next(r["prompt"] for r in stub.requests if "one two three" in r["prompt"])
    assert first.count("one two three") == 1 and "Be brief {answer}." in first
    assert scorer.direction == 1


def test_rubric_parameters_are_checked():
    with pytest.raises(ConfigError, match="parameter 'model' is required"):
        build_scorers([("eval.scorers[0]", {"rubric": {"url": "http://localhost:1/v1"}})])
    with pytest.raises(ConfigError, match="not an http"):
        build_scorers([("eval.scorers[0]", {"rubric": {"url": "localhost:1", "model": "m"}})])


@pytest.mark.parametrize(
    ("text", "score"), [("Score: 7", 7.0), ("**Score:** 9.5", 9.5), ("Score: 11", None), ("", None)]
)
def test_parse_score(text, score):
    assert parse_score(text) == score


def test_both_judges_fill_and_read_through_one_owner():
    assert fill_template('{"a": 1} {x} {y}', {"x": "{y}", "y": "2"}) == '{"a": 1} {y} 2'  # filled once, left to right
    verdict = labelled_value("verdict", r"(?:A|B|tie)\b")
    assert last_value(verdict, "Verdict: B\n**Verdict:** [[A]]") == "A"
    assert last_value(verdict, "Verdict: Alpha") is None and last_value(verdict, None) is None
