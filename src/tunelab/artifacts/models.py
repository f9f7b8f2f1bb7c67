"""Model artifacts as models: `model.name: trackio:PROJECT/NAME:ALIAS` (and every TARGET argument)
loads the artifact's base model and its adapter, as the artifact's metadata says (the tutorial's
`load_model_from_artifact`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.artifacts.core import Home, Resolved
from tunelab.artifacts.resolve import fetch
from tunelab.errors import TunelabError
from tunelab.runs.records import ModelMeta


@dataclass
class ModelArtifact:
    ref: str
    base: str  # what resolve_model_path takes: a tiny: preset, a hub id or a local folder
    adapter: Path | None  # the adapter folder, or None when the artifact is a whole model
    config: dict[str, Any] | None  # the producing run's config (redacted), when recorded
    resolved: Resolved | None  # None for a run directory or adapter folder


def model_from_artifact(ref: str, home: Home) -> ModelArtifact:
    """Resolve and download a model artifact; unknown or non-model references fail here, before any weights load."""
    got = fetch(ref, home, expected_type="model")
    folder, meta = got.path, got.version.metadata
    if (folder / "adapter_config.json").is_file():
        base = meta.get("base_model")
        saved = ModelMeta.read(folder)
        if saved is not None:
            local = saved.base_model_path
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


def model_from_folder(path: str) -> ModelArtifact | None:
    """A run directory or an adapter folder as the model a run continues (SFT, then DPO on its
    adapter): its base from the folder's tunelab_model.json (else the adapter's own config), its
    adapter the run's final/ or the folder itself. None for anything else (a plain model folder)."""
    from tunelab.runs import RunDir

    p = Path(path).expanduser()
    if not p.is_dir():
        return None
    config = None
    if (p / "config.yaml").is_file() and ((p / "final").is_dir() or (p / "checkpoints").is_dir()):
        if not RunDir(p).is_complete():
            raise TunelabError(
                f"model.name: {path} is a run that has not finished (no final/)",
                hint="continue a checkpoint instead: model.name: RUN/checkpoints/step-N",
            )
        from tunelab.config.load import read_yaml

        config, p = read_yaml(p / "config.yaml"), RunDir(p).final
    if not (p / "adapter_config.json").is_file():
        return None
    meta = ModelMeta.read(p)
    base = meta.base_model_path if meta is not None else None
    if meta is not None and (not base or ("/" in str(base) and not Path(base).exists())):
        base = meta.base_model  # a folder on another machine (or a rebuilt tiny: cache): the name it was loaded by
    base = base or json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise TunelabError(f"model.name: {path} names no base model (tunelab_model.json, adapter_config.json)")
    inner = model_from_folder(str(base)) if Path(str(base)).expanduser().is_dir() else None
    if inner is not None:  # that run was itself continued from a run: its base, not its adapter, is ours
        base = inner.base
    return ModelArtifact(path, str(base), p, config, None)


def continued_model(name: str, home: Home) -> ModelArtifact | None:
    """What a run continues when `model.name` is not a plain base model: a model artifact, a run
    directory or an adapter folder (base + adapter); None for a base model."""
    from tunelab.refs import parse_model

    kind = parse_model(name).kind
    if kind == "artifact":
        return model_from_artifact(name, home)
    return model_from_folder(name) if kind == "local" else None


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
        mismatch.append(
            f"adapter.target_modules is {targets}, the artifact's is {sorted(saved.get('target_modules') or [])}"
        )
    if mismatch:
        raise TunelabError(f"model.name: {art.ref} cannot be continued: " + "; ".join(mismatch))


def check_adapter_folder(folder: Path) -> None:
    """An adapter folder that loads: safetensors weights whose header reads (a pickled adapter_model.bin
    is never loaded) and an adapter_config.json that is a JSON object. Checked before any loading, so a
    damaged folder is one line naming the file instead of a library's traceback."""
    from tunelab.runs.damage import DamagedRun, read_json_record, safetensors_problem

    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        if (folder / "adapter_model.bin").is_file():
            raise TunelabError(
                f"{folder / 'adapter_model.bin'}: a pickled adapter; tunelab loads safetensors only",
                hint="convert it where you trust the file: PeftModel.from_pretrained(...).save_pretrained(DIR) "
                "writes adapter_model.safetensors",
            )
        raise TunelabError(f"{folder}: holds no adapter_model.safetensors")
    redo = "train or export it again (a run can resume from a checkpoint)"
    problem = safetensors_problem(weights)
    if problem:
        raise TunelabError(f"{weights}: {problem}", hint=redo)
    config = folder / "adapter_config.json"
    try:
        found = read_json_record(config)
    except DamagedRun as e:
        raise TunelabError(f"{config}: {e.problem}", hint=redo) from None
    if found is None:
        raise TunelabError(f"{config}: missing; an adapter folder needs it beside its weights", hint=redo)


def load_adapter_weights(model, adapter_dir: Path) -> None:
    """Start the freshly applied LoRA from the artifact's weights."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    check_adapter_folder(adapter_dir)
    result = set_peft_model_state_dict(model, load_peft_weights(str(adapter_dir)))
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise TunelabError(
            f"{adapter_dir}: {len(unexpected)} adapter weights do not fit the model (e.g. {unexpected[0]})"
        )
