"""`tunelab eval` on a GRPO run scores with the run's rewards (`evaluation.runner.eval_scorers`): the held-out
reward is re-scored by the scorers training summed, without their weights, beside eval's own scorers."""

from __future__ import annotations

import pytest

from tunelab.config import build_config
from tunelab.evaluation.runner import eval_scorers
from tunelab.inference.target import Target
from tunelab.scoring import DEFAULT_SCORERS, cli_scorers

pytestmark = pytest.mark.timeout(60)

ONE_LINE = {"regex": {"pattern": "[^\n]+", "mode": "fullmatch", "weight": 0.2, "name": "one_line"}}


def target(tmp_path, method: str = "grpo", **sections) -> Target:
    cfg = build_config(
        {
            "model": {"name": "tiny:llama-2l"},
            "data": {"train": {"path": "synthetic:64"}},
            "training": {"method": method, "batch_size": 4, "grad_accum": 1},
            "tracking": {"backend": "none"},
            "output": {"dir": str(tmp_path / "runs")},
            **sections,
        }
    )
    return Target(text="runs/x", base="tiny:llama-2l", config=cfg)


def keys(scorers) -> list[str]:
    return [s.key for s in scorers]


def test_a_grpo_run_adds_its_rewards_to_the_default_scorers(tmp_path):
    t = target(tmp_path, grpo={"rewards": [{"exact_match": {"weight": 1.0}}, ONE_LINE]})
    chosen = eval_scorers(t, None)
    assert sorted(keys(chosen)) == sorted([*DEFAULT_SCORERS, "one_line"])  # exact_match once: the same scorer
    (one_line,) = [s for s in chosen if s.key == "one_line"]
    assert one_line.score("p", "42", "42", {}) == 1.0 and one_line.score("p", "4\n2", "42", {}) == 0.0


def test_an_sft_run_keeps_the_default_scorers(tmp_path):
    assert keys(eval_scorers(target(tmp_path, method="sft"), None)) == list(DEFAULT_SCORERS)


def test_a_reward_replaces_an_eval_scorer_of_its_name_and_scorer_flags_replace_both(tmp_path):
    t = target(
        tmp_path,
        eval={"scorers": ["exact_match", {"contains": {"strings": ["zzz"], "name": "one_line"}}]},
        grpo={"rewards": [ONE_LINE]},
    )
    chosen = eval_scorers(t, None)
    assert keys(chosen) == ["exact_match", "one_line"]
    assert chosen[1].kind.name == "regex"  # the reward's scorer, as training scored the held-out answers
    flagged = eval_scorers(t, cli_scorers(['length_penalty:{"name": "one_line", "max_words": 5}']))
    assert keys(flagged) == ["exact_match", "one_line"] and flagged[1].kind.name == "length_penalty"


def test_an_answer_a_reward_cannot_score_is_missing_as_in_training_not_an_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "picky_rewards.py").write_text(
        "def picky(prompt, answer, reference, row):\n"
        "    if 'word' in prompt:\n"
        "        raise ValueError('cannot score words')\n"
        "    return float('nan') if answer == 'nan' else 1.0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    chosen = eval_scorers(target(tmp_path, grpo={"rewards": [{"python": "picky_rewards:picky"}]}), None)
    (picky,) = [s for s in chosen if s.key == "picky"]
    assert picky.score("add numbers", "5", "5", {}) == 1.0
    assert picky.score("first word", "a", "a", {}) is None and picky.score("add", "nan", "5", {}) is None
    err = capsys.readouterr().err
    assert err.count("warning: reward picky") == 1 and "cannot score words" in err


def test_eval_of_a_grpo_run_compares_with_its_reference_column(tmp_path):
    import json

    from tunelab.errors import DataError
    from tunelab.evaluation.heldout import load_eval_rows

    rows = [{"instruction": f"q{i}", "input": "", "output": f"long answer {i}", "gold": i} for i in range(3)]
    data = tmp_path / "gold.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = target(tmp_path, grpo={"rewards": ["exact_match"], "reference_column": "gold"})
    assert load_eval_rows(t, data=str(data)).references() == ["0", "1", "2"]  # as the rewards compared in training
    assert load_eval_rows(target(tmp_path), data=str(data)).references()[0] == "long answer 0"  # no column: the answer
    data.write_text("".join(json.dumps({**r, "gold": "" if r["gold"] == 1 else r["gold"]}) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"gold.jsonl:2: no reference answer \(column 'gold'"):
        load_eval_rows(t, data=str(data))
