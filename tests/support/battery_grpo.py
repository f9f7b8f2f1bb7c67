"""Battery cases for online RL (training.method grpo): a bad reward is refused in one line naming its
`grpo.rewards` entry before anything loads or is written, and a user's reward that raises is a counted,
logged failure, never a traceback or a silent zero."""

from __future__ import annotations

import json

from battery import Context, Outcome, case, expect

GRPO = {"method": "grpo", "max_steps": 2, "save_steps": None}


@case("bad input")
def case_grpo_with_a_reward_that_is_no_scorer(ctx: Context) -> Outcome:
    cfg = ctx.config("grpo-typo.yaml", training=GRPO, grpo={"rewards": [{"exact_macth": {"weight": 1}}]})
    o = expect(ctx, ["train", str(cfg), "output.name=grpo-typo"], "grpo.rewards[0]: unknown scorer 'exact_macth'")
    if (ctx.tmp / "runs" / "grpo-typo").exists():
        o.lost = "a run directory was created for a config that was refused"
    return o


@case("bad input")
def case_grpo_with_a_reward_weight_that_is_no_number(ctx: Context) -> Outcome:
    cfg = ctx.config("grpo-weight.yaml", training=GRPO, grpo={"rewards": [{"regex": {"pattern": "x", "weight": "hi"}}]})
    return expect(ctx, ["validate", str(cfg)], "grpo.rewards[0]: weight 'hi' is not a number")


@case("fault")
def case_grpo_with_a_reward_that_raises(ctx: Context) -> Outcome:
    ctx.path("raising_rewards.py").write_text("def score(prompt, answer, reference, row):\n    raise KeyError('x')\n")
    grpo = {
        "num_generations": 2,
        "max_completion_length": 4,
        "rewards": ["exact_match", {"python": "raising_rewards:score"}],
    }
    cfg = ctx.config("grpo-raise.yaml", training=GRPO, grpo=grpo)
    o = expect(ctx, ["train", str(cfg), "output.name=grpo-raise"], "warning: reward score", rc=0)
    summary = ctx.tmp / "runs" / "grpo-raise" / "summary.json"
    if o.rc == 0 and (not summary.is_file() or not json.loads(summary.read_text())["reward_failures"]["score"]):
        o.lost = "the reward's failures were not counted in summary.json"
    return o
