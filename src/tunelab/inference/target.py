"""TARGET resolution, shared by eval / generate / chat / merge / export / serve.

A target is a run directory (its final/ or newest checkpoint, with the run's prompt format), a model
folder (full model or PEFT adapter), a hub id, or anything a registered resolver turns into one of
those (model artifact references). It is resolved the same way everywhere, so a model is always
prompted the way it was trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config.schema import ModelConfig, PromptConfig, QuantizationConfig, RunConfig
from tunelab.errors import TunelabError
from tunelab.runs import MODEL_META, ModelMeta, RunDir  # noqa: F401 (MODEL_META: the metadata file merge/export write)


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


def source_folders(target: Target) -> list[Path]:
    """Every local folder the target's model is read from: its run, its adapter, a local base model."""
    return [target.run_dir, *model_folders(target)] if target.run_dir is not None else model_folders(target)


def model_folders(target: Target) -> list[Path]:
    """The local model folders the target loads (its adapter, a base model folder), without its run directory."""
    found = [target.adapter]
    for name in (target.base, target.text):
        p = Path(name).expanduser()
        if p.is_dir() and (target.run_dir is None or p.resolve() != target.run_dir.resolve()):
            found.append(p)
    return [p for p in found if p is not None]


def base_model_id(target: Target) -> str:
    """The base model as the user named it (hub id, tiny preset or folder)."""
    if target.config is not None:
        return target.config.model.name
    meta = ModelMeta.read(target.adapter or Path(target.base))
    return (meta.base_model if meta is not None and meta.base_model else None) or target.base


def resolve_target(text: str, trust_remote_code: bool = False, home=None) -> Target:
    """The model a TARGET names: its base, its adapter if any, and the prompt format it was trained with.

    `trust_remote_code` is the command's own permission (its --trust-remote-code flag); `home` (a
    `tunelab.artifacts.Home`) is where an artifact reference resolves (default: $TUNELAB_TRACKING_DIR,
    else ./runs/.tracking)."""
    from tunelab.artifacts.models import check_adapter_folder

    target = _resolve(text, home)
    target.trust_remote_code = trust_remote_code
    if target.adapter is not None:
        check_adapter_folder(target.adapter)
    return target


def _resolve(text: str, home) -> Target:
    from tunelab.refs import RefError, parse_model

    p = Path(text).expanduser()
    if p.is_dir() and (p / "config.yaml").is_file() and ((p / "final").is_dir() or (p / "checkpoints").is_dir()):
        return _from_run(text, p)
    try:
        ref = parse_model(text)
    except RefError:
        raise TunelabError(f"{text}: not a run directory, a model folder, an adapter folder or a hub id") from None
    if ref.kind == "artifact":  # a model artifact: base, adapter and config from its metadata
        from tunelab.artifacts import Home

        return target_from_artifact(text, home or Home.default())
    if ref.kind == "local":
        if p.is_dir() and any((p / n).is_file() for n in ("adapter_config.json", "adapter_model.safetensors")):
            return _from_adapter_folder(text, p)
        if p.is_dir() and (p / "config.json").is_file():
            prompt = _folder_prompt(p)
            return Target(text, base=str(p), prompt=prompt or PromptConfig(), prompt_known=prompt is not None)
        raise TunelabError(f"{text}: not a run directory, a model folder or an adapter folder")
    return Target(text, base=text, prompt_known=False)  # a tiny: preset or a hub id


def _from_adapter_folder(text: str, p: Path) -> Target:
    from tunelab.artifacts.models import check_adapter_folder
    from tunelab.runs.damage import read_json_record

    check_adapter_folder(p)  # before reading its config: a damaged folder is one line, not a JSON traceback
    base = (read_json_record(p / "adapter_config.json") or {}).get("base_model_name_or_path")
    meta = ModelMeta.read(p)
    if meta is not None and meta.base_model_path:
        base = meta.base_model_path
    if not base:
        raise TunelabError(f"{p}: adapter_config.json names no base model")
    prompt = _folder_prompt(p)
    return Target(text, base=base, adapter=p, prompt=prompt or PromptConfig(), prompt_known=prompt is not None)


def _from_run(text: str, run: Path) -> Target:
    from tunelab.config import load_config

    cfg = load_config(run / "config.yaml")
    rd = RunDir(run)
    weights = rd.weights()
    if weights is None:
        raise TunelabError(f"{run}: the run has no final/ model and no checkpoint yet")
    meta = ModelMeta.read(rd.final)
    base = meta.base_model_path if meta is not None and meta.base_model_path else cfg.model.name
    if cfg.adapter.type == "none":
        return Target(text, base=str(weights), prompt=cfg.prompt, run_dir=run, config=cfg)
    return Target(text, base=base, adapter=weights, prompt=cfg.prompt, run_dir=run, config=cfg)


def target_from_artifact(ref: str, home) -> Target:
    """A TARGET for a model artifact reference: base, adapter and prompt format from its metadata."""
    from tunelab.artifacts.models import model_from_artifact
    from tunelab.config.load import build_config
    from tunelab.errors import ConfigError

    art = model_from_artifact(ref, home)
    cfg = None
    if art.config:
        try:
            cfg = build_config(art.config)
        except ConfigError:
            cfg = None  # recorded by another tunelab version: fall back to the recorded prompt format
    if cfg is not None:
        return Target(ref, base=art.base, adapter=art.adapter, prompt=cfg.prompt, config=cfg)
    fmt = art.resolved.version.metadata.get("prompt_format")
    known = fmt in ("alpaca", "messages", "text")
    # nothing else says how it was trained: let inference pick a format when unknown
    return Target(
        ref,
        base=art.base,
        adapter=art.adapter,
        prompt=PromptConfig(format=fmt) if known else PromptConfig(),
        prompt_known=known,
    )


def _folder_prompt(folder: Path) -> PromptConfig | None:
    """The prompt format a model or adapter folder was trained with, or None when nothing says.

    Sources, first found wins: its tunelab_model.json (a run's final/, merge / export output), the
    config.yaml of the run the folder sits in (checkpoints/step-N/).
    """
    meta = ModelMeta.read(folder)
    if meta is not None and meta.prompt:
        try:
            return PromptConfig.model_validate(meta.prompt)
        except ValueError:
            pass
    run = (
        folder.parent
        if folder.name == "final"
        else folder.parent.parent
        if folder.parent.name == "checkpoints"
        else None
    )
    if run is not None and (run / "config.yaml").is_file():
        from tunelab.config import load_config

        return load_config(run / "config.yaml").prompt
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
    from tunelab.model.loading import load_model, load_tokenizer
    from tunelab.model.resolve import resolve_model_path

    mcfg = target.model_cfg
    if device is not None:
        mcfg = mcfg.model_copy(update={"device": device})
    if dtype is not None:
        mcfg = mcfg.model_copy(update={"dtype": dtype})
    qcfg = target.quantization if quantize in (None, True) else QuantizationConfig()
    tok_path = (
        str(target.adapter)
        if target.adapter is not None and (target.adapter / "tokenizer_config.json").is_file()
        else None
    )
    tokenizer = load_tokenizer(mcfg, tok_path or resolve_model_path(target.base))
    model = load_model(mcfg, qcfg, tokenizer, resolve_model_path(target.base))
    if target.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(target.adapter), adapter_name=adapter_name)
    model.eval()
    return model, tokenizer
