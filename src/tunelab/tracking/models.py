"""Model artifacts as models: `model.name: trackio:PROJECT/NAME:ALIAS` (and every TARGET argument)
loads the artifact's base model and its adapter, as the artifact's metadata says (the tutorial's
`load_model_from_artifact`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.tracking import artifacts


@dataclass
class ModelArtifact:
    ref: str
    base: str  # what resolve_model_path takes: a tiny: preset, a hub id or a local folder
    adapter: Path | None  # the adapter folder, or None when the artifact is a whole model
    config: dict[str, Any] | None  # the producing run's config (redacted), when recorded
    resolved: artifacts.Resolved


def model_from_artifact(ref: str) -> ModelArtifact:
    """Resolve and download a model artifact; unknown or non-model references fail here, before any weights load."""
    got = artifacts.fetch(ref, expected_type="model")
    folder, meta = got.path, got.version.metadata
    if (folder / "adapter_config.json").is_file():
        base = meta.get("base_model")
        marker = folder / "tunelab_final.json"
        if marker.is_file():
            local = json.loads(marker.read_text()).get("base_model_path")
            # the producer's local base folder when it exists here; else the name it was loaded by
            if local and Path(local).is_dir() and not str(base or "").startswith("tiny:"):
                base = local
        if not base:
            base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise TunelabError(f"{ref}: the artifact names no base model (metadata base_model)")
        return ModelArtifact(ref, base, folder, meta.get("config"), got)
    if (folder / "config.json").is_file():
        return ModelArtifact(ref, str(folder), None, meta.get("config"), got)
    raise TunelabError(f"{ref}: the artifact holds neither an adapter (adapter_config.json) nor a model (config.json)")


def check_adapter_fits(art: ModelArtifact, adapter_cfg) -> None:
    """Training from an adapter artifact continues that adapter: the config's adapter must have its shape."""
    if art.adapter is None:
        return
    if adapter_cfg.type != "lora":
        raise TunelabError(f"model.name: {art.ref} is a LoRA adapter; continuing it needs adapter.type: lora")
    saved = json.loads((art.adapter / "adapter_config.json").read_text())
    targets = adapter_cfg.target_modules
    mismatch = []
    if saved.get("r") != adapter_cfg.r:
        mismatch.append(f"adapter.r is {adapter_cfg.r}, the artifact's is {saved.get('r')}")
    if targets != "all-linear" and sorted(saved.get("target_modules") or []) != sorted(targets):
        mismatch.append(f"adapter.target_modules is {targets}, the artifact's is {sorted(saved.get('target_modules') or [])}")
    if mismatch:
        raise TunelabError(f"model.name: {art.ref} cannot be continued: " + "; ".join(mismatch))


def load_adapter_weights(model, adapter_dir: Path) -> None:
    """Start the freshly applied LoRA from the artifact's weights."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    from tunelab.inference.target import check_adapter_folder

    check_adapter_folder(adapter_dir)
    result = set_peft_model_state_dict(model, load_peft_weights(str(adapter_dir)))
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise TunelabError(f"{adapter_dir}: {len(unexpected)} adapter weights do not fit the model (e.g. {unexpected[0]})")


def target_from_artifact(ref: str):
    """A TARGET (tunelab.inference.target.Target) for a model artifact reference."""
    from tunelab.config.load import build_config
    from tunelab.config.schema import PromptConfig
    from tunelab.errors import ConfigError
    from tunelab.inference.target import Target

    art = model_from_artifact(ref)
    cfg = None
    if art.config:
        try:
            cfg = build_config(art.config)
        except ConfigError:
            cfg = None  # recorded by another tunelab version: fall back to the default prompt format
    if cfg is not None:
        return Target(ref, base=art.base, adapter=art.adapter, prompt=cfg.prompt, config=cfg)
    fmt = art.resolved.version.metadata.get("prompt_format")
    known = fmt in ("alpaca", "messages", "text")
    target = Target(ref, base=art.base, adapter=art.adapter, prompt=PromptConfig(format=fmt) if known else PromptConfig())
    target.prompt_known = known  # nothing else says how it was trained: let inference pick a format when unknown
    return target
