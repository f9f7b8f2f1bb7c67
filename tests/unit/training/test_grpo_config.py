"""training.method grpo: the config section, the rules before a run (`training.rules.grpo`, `grpo_rows`),
the rewards built from the scorers and adapted to TRL's reward-function signature, failures counted."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from tunelab.config import build_config
from tunelab.errors import ConfigError
from tunelab.scoring.weighted import split_weight
from tunelab.training import rules
from tunelab.training.rewards import (
    RewardFunction,
    build_rewards,
    reference_problem,
    row_reference,
    trl_prompt,
    weighted_reward,
)

pytestmark = pytest.mark.timeout(60)


def grpo_config(tmp_path, training=None, **sections):
    return build_config(
        {
            "model": {"name": "tiny:llama-2l"},
            "data": {"train": {"path": "synthetic:64"}},
            "training": {"method": "grpo", "batch_size": 4, "grad_accum": 1, **(training or {})},
            "tracking": {"backend": "none"},
            "output": {"dir": str(tmp_path / "runs")},
            **sections,
        }
    )


def problem_lines(found) -> list[str]:
    return [f.line() for f in rules.problems(found)]


# --- the config ----------------------------------------------------------------------------------------------


def test_grpo_section_defaults_to_trl_settings_and_exact_match(tmp_path):
    cfg = grpo_config(tmp_path)
    assert cfg.grpo.rewards == ["exact_match"]
    assert cfg.grpo.loss_type is None and cfg.grpo.beta == 0.0
    assert cfg.training.row_method == "sft" and not cfg.training.is_preference


def test_packing_set_for_grpo_is_refused(tmp_path):
    with pytest.raises(Exception, match="training.packing: grpo"):
        grpo_config(tmp_path, training={"packing": True})


def test_unknown_loss_type_is_refused(tmp_path):
    with pytest.raises(Exception, match="grpo.loss_type: 'dpoo' is not a grpo loss"):
        grpo_config(tmp_path, grpo={"loss_type": "dpoo"})


def test_group_of_one_is_refused(tmp_path):
    with pytest.raises(Exception, match="num_generations"):
        grpo_config(tmp_path, grpo={"num_generations": 1})


def test_pinned_losses_hold_trls_default():
    from trl import GRPOConfig

    from tunelab.compat import grpo_losses

    default = next(f.default for f in GRPOConfig.__dataclass_fields__.values() if f.name == "loss_type")
    assert default in grpo_losses()


# --- the rules before a run ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rewards", "fragment"),
    [
        (["exact_mach"], "grpo.rewards[0]: unknown scorer 'exact_mach'; did you mean 'exact_match'?"),
        ([{"regex": {"pattern": "(", "weight": 1}}], "grpo.rewards[0]: regex: pattern: not a regular expression"),
        (["exact_match", {"python": "no_such_module_xyz:score"}], "grpo.rewards[1]: python: cannot import"),
        ([{"exact_match": {"weight": "high"}}], "grpo.rewards[0]: weight 'high' is not a number"),
    ],
)
def test_bad_rewards_are_one_line_each_naming_the_entry(tmp_path, rewards, fragment):
    cfg = grpo_config(tmp_path, grpo={"rewards": rewards})
    lines = problem_lines(rules.grpo(cfg))
    assert len(lines) == 1 and fragment in lines[0], lines


def test_every_bad_reward_is_listed(tmp_path):
    cfg = grpo_config(tmp_path, grpo={"rewards": ["nope", {"regex": "("}]})
    assert [line.split(":")[0] for line in problem_lines(rules.grpo(cfg))] == ["grpo.rewards[0]", "grpo.rewards[1]"]


def test_batch_must_hold_whole_groups(tmp_path):
    cfg = grpo_config(tmp_path, training={"batch_size": 3, "grad_accum": 2}, grpo={"num_generations": 4})
    (line,) = problem_lines(rules.grpo(cfg))
    assert line.startswith("training.batch_size:") and "6 completions per step is not a multiple" in line
    assert not problem_lines(rules.grpo(cfg, processes=2))  # 3 x 2 x 2 = 12 holds three groups


def test_grpo_rules_are_in_what_train_and_validate_ask(tmp_path):
    cfg = grpo_config(tmp_path, grpo={"rewards": ["nope"]})
    assert any("grpo.rewards[0]" in line for line in problem_lines(rules.before_load(cfg, rules.Situation())))


def test_vllm_without_a_gpu_is_a_note_not_a_problem(tmp_path):
    cfg = grpo_config(tmp_path, grpo={"vllm_mode": "colocate"})
    found = rules.grpo(cfg, device="cpu")
    assert not rules.problems(found)
    assert any(f.severity == "note" and "generated with transformers" in f.message for f in found)
    assert not rules.vllm_rollouts(cfg, "cpu")


def test_a_reward_needing_a_reference_refuses_rows_without_one(tmp_path):
    cfg = grpo_config(tmp_path, grpo={"reference_column": "answer", "rewards": ["exact_match", "answer_words"]})
    rows = [{"instruction": "a", "output": "b", "answer": "1"}, {"instruction": "c", "output": "d"}]
    (finding,) = rules.grpo_rows(cfg, rows)
    assert finding.field == "grpo.reference_column" and "1 of 2 rows have no column 'answer'" in finding.message
    assert reference_problem(rows[:1], cfg, build_rewards(cfg.grpo.rewards)) is None
    regex_only = grpo_config(tmp_path, grpo={"reference_column": "answer", "rewards": [{"regex": "x"}]})
    assert rules.grpo_rows(regex_only, rows) == []  # no reward needs one


def test_reference_is_the_answer_or_the_named_column(tmp_path):
    row = {"instruction": "a", "input": "", "output": "b", "gold": 7}
    assert row_reference(row, grpo_config(tmp_path)) == "b"
    assert row_reference(row, grpo_config(tmp_path, grpo={"reference_column": "gold"})) == "7"


# --- the rewards ---------------------------------------------------------------------------------------------


def test_weights_are_split_from_the_scorer_declaration():
    assert split_weight({"exact_match": {"weight": 2}}) == ("exact_match", 2)
    assert split_weight({"regex": {"pattern": "x", "weight": 0.2}}) == ({"regex": {"pattern": "x"}}, 0.2)
    assert split_weight({"python": "m:f"}) == ({"python": "m:f"}, 1.0)
    rewards = build_rewards([{"exact_match": {"weight": 2}}, {"regex": {"pattern": "^\\d+$", "weight": 0.5}}])
    assert [(r.name, r.weight) for r in rewards] == [("exact_match", 2.0), ("regex", 0.5)]


def test_reward_function_is_named_after_its_scorer_and_scores_each_completion():
    (reward,) = build_rewards(["exact_match"])
    fn = RewardFunction(reward, Counter())
    assert fn.__name__ == "exact_match"  # TRL logs rewards/exact_match/mean
    out = fn(prompts=["p", "p"], completions=["4", "5"], reference=["4", "4"], row=['{"a": 1}', '{"a": 1}'])
    assert out == [1.0, 0.0]


@pytest.fixture
def user_rewards(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def boom(prompt, answer, reference, row):\n"
        "    raise ValueError('bad row')\n"
        "def nan(prompt, answer, reference, row):\n"
        "    return float('nan')\n"
        "def none(prompt, answer, reference, row):\n"
        "    return None\n"
        "def by_row(prompt, answer, reference, row):\n"
        "    return row['bonus'] + len(answer)\n"
    )
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("function", ["boom", "nan", "none"])
def test_a_python_reward_that_fails_is_counted_and_said_once_never_a_traceback(user_rewards, function):
    from rich.console import Console

    (reward,) = build_rewards([{"python": f"my_rewards:{function}"}])
    failures, console = Counter(), Console(record=True, width=300)
    fn = RewardFunction(reward, failures, console)
    assert fn(prompts=["p"] * 3, completions=["a", "b", "c"], reference=["x"] * 3, row=["{}"] * 3) == [None] * 3
    assert failures == {function: 3}
    said = console.export_text()
    assert said.count("warning: reward") == 1 and f"reward_failures/{function}" in said


def test_a_python_reward_gets_the_row(user_rewards):
    (reward,) = build_rewards([{"python": "my_rewards:by_row"}])
    fn = RewardFunction(reward, Counter())
    assert fn(prompts=["p"], completions=["abc"], reference=[None], row=['{"bonus": 10}']) == [13.0]


def test_weighted_reward_sums_as_trl_does():
    rewards = build_rewards([{"exact_match": {"weight": 1}}, {"regex": {"pattern": "x", "weight": 0.5}}])
    assert weighted_reward(rewards, {"exact_match": 1.0, "regex": 1.0}) == 1.5
    assert weighted_reward(rewards, {"exact_match": None, "regex": 1.0}) == 0.5  # an unscored one adds nothing
    assert weighted_reward(rewards, {"exact_match": None, "regex": None}) is None
    assert not math.isnan(weighted_reward(rewards, {"exact_match": 0.0, "regex": 0.0}))


def test_bad_rewards_raise_one_config_error():
    with pytest.raises(ConfigError) as e:
        build_rewards(["nope", {"exact_match": {"weight": True}}])
    assert len(e.value.problems) == 2


def test_prompt_text_gives_tunelabs_prompt_ids(tokenizer):
    from tunelab.data.tokens import prompt_ids

    for text in ["### Instruction:\nadd 1 and 2\n\n### Response:\n", f"{tokenizer.bos_token}hello"]:
        assert tokenizer(trl_prompt(text, tokenizer))["input_ids"] == prompt_ids(tokenizer, text)


# --- the memory plan -----------------------------------------------------------------------------------------


def test_plan_counts_rollouts_and_a_reference_copy_for_full_tuning(tmp_path, tiny_model_dir):
    from tunelab.model.resolve import resolve_model
    from tunelab.perf.plan import estimate

    def plan(**sections):
        cfg = grpo_config(tmp_path, **sections)
        return estimate(cfg, resolve_model(cfg), "cpu", checkpointing=True)

    small = plan(grpo={"max_completion_length": 8})
    # the KV cache of the generation batch (batch_size x grad_accum rows) beyond one micro-batch's activations
    long = plan(grpo={"max_completion_length": 512}, training={"grad_accum": 64})
    assert "rollout_kv_cache" in small.parts and "reference_model" not in small.parts
    assert long.parts["rollout_kv_cache"] > small.parts["rollout_kv_cache"]
    assert long.tokens_per_microbatch == 4 * (1024 + 512)  # prompt up to max_length, plus the completion
    full = plan(adapter={"type": "none"}, grpo={"beta": 0.04})
    assert full.parts["reference_model"] == full.parts["weights"]  # LoRA's reference is the base, no copy


# --- the rollouts table --------------------------------------------------------------------------------------


def test_trl_keeps_the_rollouts_where_compat_reads_them():
    import inspect

    from trl import GRPOTrainer

    from tunelab import compat

    source = inspect.getsource(GRPOTrainer)
    assert f"self.{compat.GRPO_ROLLOUT_LOG} = {{" in source
    for key in ("prompt", "completion", "rewards", "advantages"):
        assert f'self.{compat.GRPO_ROLLOUT_LOG}["{key}"]' in source, key


def test_rollouts_are_one_record_per_completion_with_none_for_no_reward():
    from types import SimpleNamespace

    from tunelab.compat import grpo_rollouts

    trainer = SimpleNamespace(
        _logs={
            "prompt": ["p", "p"],
            "completion": ["a", "b"],
            "rewards": {"exact_match": [1.0, float("nan")]},
            "advantages": [0.7, -0.7],
        }
    )
    assert grpo_rollouts(trainer) == [
        {"prompt": "p", "completion": "a", "rewards": {"exact_match": 1.0}, "advantage": 0.7},
        {"prompt": "p", "completion": "b", "rewards": {"exact_match": None}, "advantage": -0.7},
    ]
