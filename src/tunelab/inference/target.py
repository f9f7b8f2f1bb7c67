"""TARGET resolution, shared by eval / generate / chat / merge / export / serve.

A target is a run directory (its final/ or newest checkpoint, with the run's prompt format), a model
folder (full model or PEFT adapter), or a hub id. It is resolved the same way everywhere, so a
model is always prompted the way it was trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config.schema import ModelConfig, PromptConfig, QuantizationConfig, RunConfig
from tunelab.errors import TunelabError


@dataclass
class Target:
    text: str
    base: str  # base model: local folder or hub id
    adapter: Path | None = None  # PEFT adapter folder, when there is one
    prompt: PromptConfig = field(default_factory=PromptConfig)
    run_dir: Path | None = None
    config: RunConfig | None = None

    @property
    def model_cfg(self) -> ModelConfig:
        if self.config is not None:
            return self.config.model.model_copy(update={"name": self.base})
        return ModelConfig(name=self.base)

    @property
    def quantization(self) -> QuantizationConfig:
        return self.config.quantization if self.config is not None else QuantizationConfig()


def resolve_target(text: str) -> Target:
    from tunelab.tracking.artifacts import is_artifact_ref

    if is_artifact_ref(text):  # trackio:/wandb:/mlflow: model artifact: base, adapter and config from its metadata
        from tunelab.tracking.models import target_from_artifact

        return target_from_artifact(text)
    p = Path(text).expanduser()
    if p.is_dir() and (p / "config.yaml").is_file() and ((p / "final").is_dir() or (p / "checkpoints").is_dir()):
        return _from_run(text, p)
    if p.is_dir() and (p / "adapter_config.json").is_file():
        base = json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
        marker = p / "tunelab_final.json"
        if marker.is_file():
            base = json.loads(marker.read_text()).get("base_model_path") or base
        if not base:
            raise TunelabError(f"{p}: adapter_config.json names no base model")
        return Target(text, base=base, adapter=p)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise TunelabError(f"{text}: not a run directory, a model folder or an adapter folder")
        return Target(text, base=str(p))
    if text.startswith("tiny:") or (not text.startswith((".", "/", "~")) and text.count("/") == 1):
        return Target(text, base=text)
    raise TunelabError(f"{text}: not a run directory, a model folder, an adapter folder or a hub id")


def _from_run(text: str, run: Path) -> Target:
    from tunelab.config import load_config
    from tunelab.training.rundir import RunDir

    cfg = load_config(run / "config.yaml")
    rd = RunDir(run)
    weights = rd.final if rd.is_complete() else rd.latest_checkpoint()
    if weights is None:
        raise TunelabError(f"{run}: the run has no final/ model and no checkpoint yet")
    marker = rd.final / "tunelab_final.json"
    base = json.loads(marker.read_text())["base_model_path"] if marker.is_file() else cfg.model.name
    if cfg.adapter.type == "none":
        return Target(text, base=str(weights), prompt=cfg.prompt, run_dir=run, config=cfg)
    return Target(text, base=base, adapter=weights, prompt=cfg.prompt, run_dir=run, config=cfg)


def load_target(target: Target, quantize: bool | None = None, device: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) ready for generation. quantize=None: as the run was trained."""
    from tunelab.model.loading import load_model, load_tokenizer, resolve_model_path

    mcfg = target.model_cfg
    if device is not None:
        mcfg = mcfg.model_copy(update={"device": device})
    qcfg = target.quantization if quantize in (None, True) else QuantizationConfig()
    tok_path = str(target.adapter) if target.adapter is not None and (target.adapter / "tokenizer_config.json").is_file() else None
    tokenizer = load_tokenizer(mcfg, tok_path or resolve_model_path(target.base))
    model = load_model(mcfg, qcfg, tokenizer, resolve_model_path(target.base))
    if target.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(target.adapter))
    model.eval()
    return model, tokenizer
