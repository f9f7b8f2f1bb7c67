"""`tunelab validate`: every rule a run must pass, all at once, without loading weights.

The rules that need nothing loaded are `training.rules` (the ones `train` raises before anything
loads); this module adds the rules that read the model folder, the tokenizer and every data row,
which `train` meets as it loads them, through the same functions (`continued_model`,
`check_adapter_fits`, `resolve_model_path`, `load_tokenizer`, `load_splits`, `check_run_tools`).
Every problem is reported, not only the first; what could not be checked (a hub model while
offline) is a note. Nothing is written, except a `tiny:` model built into its cache when the data's
tool calls need its tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config.schema import RunConfig
from tunelab.errors import TunelabError
from tunelab.training.rules import (
    Finding,
    Situation,
    before_load,
    findings_of,
    grpo_rows,
    problems_of,
    tiny_preset,
)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "problem"]

    @property
    def notes(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "note"]


def preflight(cfg: RunConfig, resume: bool = False, nproc: int = 1) -> Report:
    """Every rule `tunelab validate` applies, collected (never raising for a user error); `nproc` as for
    `train --nproc`."""
    from tunelab import hub

    uses_hub = cfg.model.ref.kind == "hub" or any(s.ref.kind == "hub" for s in cfg.data.sources)
    offline = hub.ensure_offline_if_unreachable() if uses_hub else False
    sit = Situation(resume=resume, processes=nproc, fit=nproc != 1, hub=not offline)
    report = Report(before_load(cfg, sit))
    model, tokenizer = model_findings(cfg, sit)
    report.findings += model
    data, stats = data_findings(cfg, sit, tokenizer)
    report.findings += data
    report.stats.update(stats)
    return report


# --- the model ---------------------------------------------------------------------------------------------


def model_findings(cfg: RunConfig, sit: Situation) -> tuple[list[Finding], Callable[[], Any] | None]:
    """The model as train will meet it, without its weights: a continued run or adapter (and whether the
    config's adapter fits it), a local folder, a hub id. Returns the findings and a way to the tokenizer
    (None when it cannot be had cheaply)."""
    ref = cfg.model.ref
    name = cfg.model.name
    if ref.kind == "hub":
        return _hub_model(cfg, sit), None
    if ref.kind == "tiny":
        if tiny_preset(cfg):
            return [], None  # `before_load` said it
        return [Finding("ok", "model.name", f"{name} (built locally on first use)")], lambda: _tokenizer(cfg, name)
    if ref.kind == "artifact" and not sit.hub:
        return [Finding("note", "model.name", f"{name}: model artifact not checked here")], None
    try:
        from tunelab.artifacts import Home
        from tunelab.artifacts.models import check_adapter_fits, continued_model
        from tunelab.model.resolve import check_remote_code, resolve_model_path

        init = continued_model(name, Home.of(cfg))  # an artifact, run or adapter folder: continued (SFT, then DPO)
        if init is not None:
            check_adapter_fits(init, cfg.adapter)
            shown = f"{name}: base {init.base}" + (f", continues its adapter {init.adapter}" if init.adapter else "")
            return [Finding("ok", "model.name", shown)], lambda: _tokenizer(cfg, init.base)
        path = resolve_model_path(name)
        check_remote_code(path, cfg.model.trust_remote_code)
    except TunelabError as e:
        return findings_of(e, "model.name"), None
    if not any((Path(path) / f).is_file() for f in TOKENIZER_FILES):
        return [Finding("problem", "model.name", f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES)})")], None
    return [Finding("ok", "model.name", f"{path}: config and safetensors weights present")], lambda: _tokenizer(
        cfg, name
    )


def _tokenizer(cfg: RunConfig, base: str):
    """The tokenizer train would load for `base` (a tiny: model is built into its cache first)."""
    from tunelab.model.loading import load_tokenizer
    from tunelab.model.resolve import resolve_model_path

    return load_tokenizer(cfg.model, resolve_model_path(base), cfg.prompt.chat_template)


def _hub_model(cfg: RunConfig, sit: Situation) -> list[Finding]:
    from huggingface_hub import try_to_load_from_cache

    name, revision = cfg.model.name, cfg.model.revision
    cached = {f: try_to_load_from_cache(name, f, revision=revision) for f in ("config.json", "tokenizer_config.json")}
    have = [f for f, p in cached.items() if isinstance(p, str)]
    if not sit.hub:
        if len(have) == len(cached):
            return [
                Finding(
                    "ok", "model.name", f"{name}: config and tokenizer in the local hub cache (weights not checked)"
                )
            ]
        return [
            Finding(
                "note",
                "model.name",
                f"{name}: not checked (offline, and not in the local hub cache); "
                "training needs the hub or a local folder",
            )
        ]
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=cfg.model.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - any hub failure is the user's to fix: say what it was
        first = (str(e).splitlines() or [type(e).__name__])[0]
        return [Finding("problem", "model.name", f"cannot read the config of {name!r} from the hub: {first[:200]}")]
    return [Finding("ok", "model.name", f"{name}: reachable on the hub (weights not checked)")]


# --- the data ----------------------------------------------------------------------------------------------


def data_findings(
    cfg: RunConfig, sit: Situation, tokenizer: Callable[[], Any] | None
) -> tuple[list[Finding], dict[str, Any]]:
    """Every row read and validated as train reads it, split as train splits it; with the tokenizer, tool
    calls the chat template must render and the first rows rendered. Returns the findings and the row counts."""
    from tunelab.data.prepare import load_splits
    from tunelab.hub import offline_by_setting

    hub_sources = [s for s in cfg.data.sources if s.ref.kind == "hub"]
    unchecked = (
        [
            Finding(
                "note",
                "data.train.path",
                f"{hub_sources[0].path}: not checked (the hub is not asked, and it is not in the local datasets cache)",
            )
        ]
        if hub_sources
        else []
    )
    if unchecked and not sit.hub and not offline_by_setting():
        return unchecked, {}  # online, the datasets library would ask the hub: a sweep's checks never do
    try:
        train, test, stats = load_splits(cfg)
    except TunelabError as e:
        return (unchecked if unchecked and not sit.hub else findings_of(e, "data.train.path")), {}
    skipped = f", skipped {stats['rows_skipped']}" if stats["rows_skipped"] else ""
    found = [Finding("ok", "data", f"{stats['train_rows']} train rows, {stats['test_rows']} test rows{skipped}")]
    found += grpo_rows(cfg, train.rows)
    if tokenizer is not None and cfg.prompt.format == "messages":
        found += problems_of(lambda: _render_chats(cfg, tokenizer, train.rows, test.rows), "prompt.format")
    return found, stats


def _render_chats(cfg: RunConfig, tokenizer: Callable[[], Any], train: list[dict], test: list[dict]) -> None:
    """What train checks of chat rows once it has the tokenizer: tool calls the template renders, and a row of
    each split rendered."""
    from tunelab.data.templates import render_segments
    from tunelab.data.tools import check_run_tools, needs_tools

    if cfg.model.ref.kind == "tiny" and not (needs_tools(train) or needs_tools(test)):
        return  # building a tiny: model to render plain chats costs more than it could find
    tok = tokenizer()
    check_run_tools(cfg, tok, train, test)
    for row in train[:1] + test[:1]:
        render_segments(row, cfg.prompt, tok)
