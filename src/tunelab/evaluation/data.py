"""What `tunelab eval` asks: held-out rows, rendered prompts and reference answers.

By default the rows are the run's own test split, read with the run's saved config exactly as
training read it; `--data` reads any other source with the run's prompt format and field map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.config.schema import DataConfig, ModelConfig, PromptConfig, RunConfig, SourceConfig
from tunelab.data.prepare import load_splits
from tunelab.data.sources import RawRows, read_source
from tunelab.data.templates import reference, render_prompt
from tunelab.data.validate import validate_rows
from tunelab.errors import DataError, TunelabError
from tunelab.inference.target import Target


@dataclass
class EvalRows:
    """Rows to evaluate, each with where it came from, plus the config used to tokenize them for the loss."""

    raw: RawRows
    cfg: RunConfig  # the run's config, or a stand-in carrying the prompt format (for tokenize_rows)
    source: str
    split: str

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.raw.rows

    def prompts(self, tokenizer: Any) -> list[str]:
        return [render_prompt(r, self.cfg.prompt, tokenizer) for r in self.rows]

    def references(self) -> list[str]:
        return [reference(r, self.cfg.prompt) for r in self.rows]


def check_args(target: Target, data: str | None, split: str) -> None:
    """Refuse impossible requests before any weights are loaded."""
    if target.prompt.format == "text":
        raise TunelabError(
            f"{target.text}: prompt.format is text, so rows have no prompt/answer split to generate and score",
            hint="tunelab eval scores alpaca, messages and custom prompt formats",
        )
    if data is None and target.config is None:
        raise TunelabError(
            f"{target.text}: not a run directory, so it has no test split of its own",
            hint="pass --data FILE | HUB_ID | synthetic:N[:seed=S]",
        )
    if data is None and split not in ("test", "train"):
        raise TunelabError(f"--split {split}: a run has a test and a train split", hint="other splits: pass --data HUB_ID --split NAME")


def load_eval_rows(target: Target, data: str | None = None, split: str = "test", limit: int | None = None) -> EvalRows:
    """The rows to evaluate: validated, with a non-empty reference each, the first `limit` of them."""
    check_args(target, data, split)
    if data is None:
        cfg = target.config
        train, test, _ = load_splits(cfg)
        raw, source = (test if split == "test" else train), f"{target.text} ({split} split)"
        if not raw.rows:
            hint = "pass --data SOURCE, or train with data.test or data.test_size set" if split == "test" else None
            raise DataError(f"{target.text}: the run's {split} split is empty", hint=hint)
    else:
        cfg = target.config or RunConfig(
            model=ModelConfig(name=target.base), data=DataConfig(train=SourceConfig(path=data)), prompt=target.prompt
        )
        src = SourceConfig(path=data, split=split)
        raw = validate_rows(read_source(src, "error"), cfg.prompt, cfg.data.field_map, "error")
        source = data
        if not raw.rows:
            raise DataError(f"{data}: no rows to evaluate")
    if limit is not None:
        if limit <= 0:
            raise TunelabError(f"--limit {limit}: must be a positive number of examples")
        raw = RawRows(rows=raw.rows[:limit], where=raw.where[:limit], fingerprint=raw.fingerprint)
    for row, where in zip(raw.rows, raw.where, strict=True):
        if not reference(row, cfg.prompt).strip():
            raise DataError(f"{where}: no reference answer (the last message is not an assistant turn)")
    return EvalRows(raw=raw, cfg=cfg, source=source, split=split)
