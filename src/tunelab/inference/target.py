"""TARGET resolution, shared by eval / generate / chat / merge / export / serve.

A target is a run directory (its final/ or newest checkpoint, with the run's prompt format), a model
folder (full model or PEFT adapter), a hub id, or anything a registered resolver turns into one of
those (model artifact references). It is resolved the same way everywhere, so a model is always
prompted the way it was trained.
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
    prompt_known: bool = True  # False: nothing says how the model was trained; `prompt` is only the default
    # Whether the command being run allows the model's own code (--trust-remote-code). Never taken
    # from a saved config or an artifact's metadata: whoever runs a command must ask for it.
    trust_remote_code: bool = False

    @property
    def model_cfg(self) -> ModelConfig:
        if self.config is not None:
            return self.config.model.model_copy(update={"name": self.base, "trust_remote_code": self.trust_remote_code})
        return ModelConfig(name=self.base, trust_remote_code=self.trust_remote_code)

    @property
    def quantization(self) -> QuantizationConfig:
        return self.config.quantization if self.config is not None else QuantizationConfig()

    @property
    def name(self) -> str:
        """A short name for listings and the server's model ids: the run's name, else the folder's, else the id."""
        if self.run_dir is not None:
            return self.run_dir.name
        p = Path(self.text).expanduser()
        if not p.is_dir():
            return self.text
        p = p.resolve()
        if p.name == "final" and (p.parent / "config.yaml").is_file():
            return p.parent.name  # runs/r1/final -> r1
        if p.parent.name == "checkpoints":
            return f"{p.parent.parent.name}-{p.name}"  # runs/r1/checkpoints/step-000002 -> r1-step-000002
        return p.name


# Written by `tunelab merge` / `tunelab export` next to the weights, so an exported folder is
# prompted the way its run was trained.
MODEL_META = "tunelab_model.json"


def resolve_target(text: str, trust_remote_code: bool = False) -> Target:
    """The model a TARGET names: its base, its adapter if any, and the prompt format it was trained with.

    `trust_remote_code` is the command's own permission (its --trust-remote-code flag)."""
    target = _resolve(text)
    target.trust_remote_code = trust_remote_code
    if target.adapter is not None:
        check_adapter_folder(target.adapter)
    return target


def check_adapter_folder(folder: Path) -> None:
    """An adapter folder must hold safetensors weights: a pickled adapter_model.bin is never loaded."""
    if (folder / "adapter_model.safetensors").is_file():
        return
    if (folder / "adapter_model.bin").is_file():
        raise TunelabError(f"{folder / 'adapter_model.bin'}: a pickled adapter; tunelab loads safetensors only",
                           hint="convert it where you trust the file: PeftModel.from_pretrained(...).save_pretrained(DIR) "
                                "writes adapter_model.safetensors")
    raise TunelabError(f"{folder}: holds no adapter_model.safetensors")


def _resolve(text: str) -> Target:
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
        prompt = _folder_prompt(p)
        return Target(text, base=base, adapter=p, prompt=prompt or PromptConfig(), prompt_known=prompt is not None)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise TunelabError(f"{text}: not a run directory, a model folder or an adapter folder")
        prompt = _folder_prompt(p)
        return Target(text, base=str(p), prompt=prompt or PromptConfig(), prompt_known=prompt is not None)
    if text.startswith("tiny:") or (not text.startswith((".", "/", "~")) and text.count("/") == 1):
        return Target(text, base=text, prompt_known=False)
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


def _folder_prompt(folder: Path) -> PromptConfig | None:
    """The prompt format a model or adapter folder was trained with, or None when nothing says.

    Sources, first found wins: tunelab_model.json (merge / export), the config.yaml of the run the
    folder sits in (final/ or checkpoints/step-N/), tunelab_final.json (format name only).
    """
    meta = folder / MODEL_META
    if meta.is_file():
        prompt = json.loads(meta.read_text()).get("prompt")
        if prompt:
            return PromptConfig.model_validate(prompt)
    run = folder.parent if folder.name == "final" else folder.parent.parent if folder.parent.name == "checkpoints" else None
    if run is not None and (run / "config.yaml").is_file():
        from tunelab.config import load_config

        return load_config(run / "config.yaml").prompt
    marker = folder / "tunelab_final.json"
    if marker.is_file():
        fmt = json.loads(marker.read_text()).get("prompt_format")
        if fmt in ("alpaca", "messages", "text"):
            return PromptConfig(format=fmt)
    return None


def inference_prompt(target: Target, tokenizer: Any) -> PromptConfig:
    """How to ask the target: its training format when known; else its tokenizer's chat template
    (instruct models), else the raw text (base models)."""
    if target.prompt_known:
        return target.prompt
    return PromptConfig(format="messages" if getattr(tokenizer, "chat_template", None) else "text")


def load_target(
    target: Target,
    quantize: bool | None = None,
    device: str | None = None,
    dtype: str | None = None,
    adapter_name: str = "default",
) -> tuple[Any, Any]:
    """(model, tokenizer) ready for generation. quantize=None: as the run was trained.

    `dtype` (bf16 / fp16 / fp32) overrides the run's model.dtype; the adapter, if any, is loaded
    under `adapter_name` (the server loads more adapters next to it).
    """
    from tunelab.model.loading import load_model, load_tokenizer, resolve_model_path

    mcfg = target.model_cfg
    if device is not None:
        mcfg = mcfg.model_copy(update={"device": device})
    if dtype is not None:
        mcfg = mcfg.model_copy(update={"dtype": dtype})
    qcfg = target.quantization if quantize in (None, True) else QuantizationConfig()
    tok_path = str(target.adapter) if target.adapter is not None and (target.adapter / "tokenizer_config.json").is_file() else None
    tokenizer = load_tokenizer(mcfg, tok_path or resolve_model_path(target.base))
    model = load_model(mcfg, qcfg, tokenizer, resolve_model_path(target.base))
    if target.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(target.adapter), adapter_name=adapter_name)
    model.eval()
    return model, tokenizer
