"""What `tunelab eval` asks: held-out rows, rendered prompts and reference answers.

By default the rows are the run's own test split, read with the run's saved config exactly as
training read it; `--data` reads any other source with the run's prompt format and field map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.config.schema import PromptConfig, SourceConfig
from tunelab.data.prepare import TokenSpec, load_splits
from tunelab.data.sources import RawRows, read_source
from tunelab.data.templates import reference_in, render_prompt
from tunelab.data.validate import validate_rows
from tunelab.errors import DataError, TunelabError
from tunelab.inference.target import Target


@dataclass
class EvalRows:
    """Rows to evaluate, each with where it came from, and how to tokenize them for the loss."""

    raw: RawRows
    spec: TokenSpec  # the run's prompt format and length limit (what training tokenized with)
    source: str
    split: str
    column: str | None = None  # a GRPO run's grpo.reference_column: the answers its rewards compared with

    @property
    def prompt(self) -> PromptConfig:
        return self.spec.prompt

    @property
    def generates(self) -> bool:
        """Whether the rows ask something to answer: raw text (continued pre-training) is judged by its loss alone."""
        return self.prompt.format != "text"

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.raw.rows

    def prompts(self, tokenizer: Any) -> list[str]:
        return [render_prompt(r, self.prompt, tokenizer) for r in self.rows]

    def references(self) -> list[str]:
        return [reference_in(r, self.prompt, self.column) for r in self.rows]


def check_args(target: Target, data: str | None, split: str) -> None:
    """Refuse impossible requests before any weights are loaded."""
    if data is None and target.config is None:
        raise TunelabError(
            f"{target.text}: not a run directory, so it has no test split of its own",
            hint="pass --data FILE | HUB_ID | synthetic:N[:seed=S]",
        )
    if data is None and split not in ("test", "train"):
        raise TunelabError(
            f"--split {split}: a run has a test and a train split", hint="other splits: pass --data HUB_ID --split NAME"
        )


def load_eval_rows(target: Target, data: str | None = None, split: str = "test", limit: int | None = None) -> EvalRows:
    """The rows to evaluate: validated, with a non-empty reference each, the first `limit` of them.

    A run's own split is read with its saved config (artifact references resolve in the run's own
    tracking home, wherever the command runs from)."""
    from tunelab.artifacts import Home

    check_args(target, data, split)
    cfg = target.config
    spec = TokenSpec.of(cfg) if cfg is not None else TokenSpec(target.prompt, 2048)
    if data is None:
        train, test, _ = load_splits(cfg, Home.of(cfg))
        raw, source = (test if split == "test" else train), f"{target.text} ({split} split)"
        if not raw.rows:
            hint = "pass --data SOURCE, or train with data.test or data.test_size set" if split == "test" else None
            raise DataError(f"{target.text}: the run's {split} split is empty", hint=hint)
    else:
        src = SourceConfig(path=data, split=split)
        home = Home.of(cfg) if cfg is not None else Home.default()
        raw = validate_rows(
            read_source(src, "error", home),
            spec.prompt,
            cfg.data.field_map if cfg else {},
            "error",
            data,
            method=cfg.training.row_method if cfg else "sft",
        )
        source = data
        if not raw.rows:
            raise DataError(f"{data}: no rows to evaluate")
    if any(r.get("label", True) is False for r in raw.rows):  # KTO: an undesirable completion is no reference
        keep = [i for i, r in enumerate(raw.rows) if r.get("label", True) is not False]
        raw = RawRows(rows=[raw.rows[i] for i in keep], where=[raw.where[i] for i in keep], fingerprint=raw.fingerprint)
    if limit is not None:
        if limit <= 0:
            raise TunelabError(f"--limit {limit}: must be a positive number of examples")
        raw = RawRows(rows=raw.rows[:limit], where=raw.where[:limit], fingerprint=raw.fingerprint)
    column = cfg.grpo.reference_column if cfg is not None and cfg.training.method == "grpo" else None
    for row, where in zip(raw.rows, raw.where, strict=True):
        if not reference_in(row, spec.prompt, column).strip():
            why = "the last message is not an assistant turn"
            if column:
                why = f"column {column!r} (grpo.reference_column) is empty"
            raise DataError(f"{where}: no reference answer ({why})")
    return EvalRows(raw=raw, spec=spec, source=source, split=split, column=column)
