"""GRPO rewards (training.method grpo): `grpo.rewards` declarations built into scorers from the one
registry (`tunelab.scoring`), each with a weight, and adapted to TRL's reward-function signature.

TRL calls every reward function with `prompts`, `completions` and each dataset column as a keyword
(lists, one entry per completion) and takes one float, or None, per completion. TRL names a reward's
metrics (`rewards/<name>/mean`, `/std`) after the function, so each function carries its scorer's key.

A completion a reward cannot score (the user's function raised, returned NaN or None, or the row has
no reference for a scorer that needs one) gets None: TRL turns it into NaN, leaves it out of that
reward's mean and adds nothing for it to the weighted sum (a completion no reward could score gets
advantage 0). It is never a silent zero: each such completion is counted per reward, said once on
stderr, and the counts go to metrics.jsonl (`reward_failures/<name>`) and summary.json.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from tunelab.config import RunConfig
from tunelab.data.templates import reference_in, render_prompt
from tunelab.errors import TunelabError
from tunelab.scoring import Scorer
from tunelab.scoring.weighted import weighted_scorers


@dataclass(frozen=True)
class Reward:
    """One declared reward: its scorer, its weight in the sum, and where it was declared."""

    scorer: Scorer
    weight: float

    @property
    def name(self) -> str:
        return self.scorer.key


def build_rewards(declared: list[Any], source: str | None = None) -> list[Reward]:
    """The rewards of `grpo.rewards` (`scoring.weighted` reads the declarations); every bad one is a line of
    one ConfigError naming `grpo.rewards[i]`."""
    return [Reward(s, w) for s, w in weighted_scorers(declared, source)]


def needing_reference(rewards: list[Reward]) -> list[Reward]:
    return [r for r in rewards if r.scorer.kind.needs_reference]


def row_reference(row: dict[str, Any], cfg: RunConfig) -> str | None:
    """The reference answer the rewards compare with: `grpo.reference_column`, else the row's answer."""
    value = reference_in(row, cfg.prompt, cfg.grpo.reference_column)
    return value if value.strip() else None  # blank is none, as `tunelab eval` reads it


def reference_problem(rows: list[dict[str, Any]], cfg: RunConfig, rewards: list[Reward]) -> str | None:
    """A line when a reward needs a reference and some row has none; None when every row has one."""
    needy = needing_reference(rewards)
    if not needy or not rows:
        return None
    missing = sum(1 for r in rows if row_reference(r, cfg) is None)
    if not missing:
        return None
    names = ", ".join(r.name for r in needy)
    where = f"column {cfg.grpo.reference_column!r}" if cfg.grpo.reference_column else "an answer"
    return f"{names} need a reference answer; {missing} of {len(rows)} rows have no {where}"


def prompt_dataset(rows: list[dict[str, Any]], cfg: RunConfig, tokenizer):
    """The rows as TRL's GRPOTrainer reads them: `prompt` (the template's prompt part, as the text whose
    tokenizer encoding is tunelab's prompt ids), `reference`, and the row itself as JSON (python rewards get it)."""
    import datasets

    return datasets.Dataset.from_dict(
        {
            "prompt": [trl_prompt(render_prompt(r, cfg.prompt, tokenizer), tokenizer) for r in rows],
            "reference": [row_reference(r, cfg) for r in rows],
            "row": [json.dumps(r, ensure_ascii=False) for r in rows],
        }
    )


def trl_prompt(prompt: str, tokenizer) -> str:
    """The prompt text TRL should get: TRL encodes it with `tokenizer(text)` (special tokens added), while
    tunelab's one BOS rule (`data.tokens.prompt_ids`) never doubles a BOS the rendered text already has.
    A leading BOS the tokenizer adds itself is cut from the text, so both give the same ids."""
    from tunelab.data.tokens import adds_bos

    bos = tokenizer.bos_token
    if bos and prompt.startswith(bos) and adds_bos(tokenizer):
        return prompt[len(bos) :]
    return prompt


class RewardFunction:
    """One reward as TRL calls it: (prompts, completions, reference=[...], row=[...], **columns) -> scores."""

    def __init__(self, reward: Reward, failures: Counter, console=None):
        self.reward, self.failures, self.console = reward, failures, console
        self.__name__ = reward.name  # TRL's metric names: rewards/<name>/mean
        self.said = False

    def __call__(self, prompts, completions, reference=None, row=None, **_columns) -> list[float | None]:
        n = len(completions)
        references = reference if reference is not None else [None] * n
        rows = [json.loads(r) if isinstance(r, str) else (r or {}) for r in (row or [None] * n)]
        return [self.one(p, c, ref, r) for p, c, ref, r in zip(prompts, completions, references, rows, strict=True)]

    def one(self, prompt: str, completion: str, ref: str | None, row: dict) -> float | None:
        scorer = self.reward.scorer
        try:
            value = scorer.score(prompt, completion, ref, row)
        except TunelabError as e:  # the user's function raised or returned NaN / no number
            self._fail(e.message)
            return None
        if value is None:
            why = "no reference answer" if scorer.kind.needs_reference and ref is None else "returned None"
            self._fail(f"{scorer.where}: {why}")
        return value

    def _fail(self, why: str) -> None:
        self.failures[self.reward.name] += 1
        if self.said:
            return
        self.said = True
        if self.console is None:
            from rich.console import Console

            self.console = Console(stderr=True)
        from rich.text import Text

        self.console.print(
            Text(
                f"warning: reward {self.reward.name}: a completion left unscored ({why}); it adds nothing to the "
                f"reward sum. Counted as reward_failures/{self.reward.name} in metrics.jsonl and summary.json",
                style="yellow",
            ),
            soft_wrap=True,
        )


def reward_functions(rewards: list[Reward], failures: Counter, console=None) -> list[RewardFunction]:
    return [RewardFunction(r, failures, console) for r in rewards]


def weighted_reward(rewards: list[Reward], scores: dict[str, float | None]) -> float | None:
    """One answer's reward as TRL sums it: the weighted scores, an unscored one adding nothing; None when
    no reward scored it."""
    got = [(r.weight, scores.get(r.name)) for r in rewards]
    if all(v is None for _, v in got):
        return None
    return sum(w * v for w, v in got if v is not None)
