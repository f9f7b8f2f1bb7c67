"""Where a model loads from, found once per run: a `tiny:` preset, a local folder, the base of a model
artifact or run it continues, or a hub id; the refusal of a model that ships its own code; and the
`ResolvedModel` that the rest of a run (the memory planner, the loaders) takes instead of resolving again."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.errors import TunelabError
from tunelab.hub import unreachable_message

if TYPE_CHECKING:
    from tunelab.config import RunConfig

CONFIG_HINT = "point model.name at a local folder that holds the model's config.json"


@dataclass(frozen=True, eq=False)
class ResolvedModel:
    """A run's base model, resolved: `name` as configured, `path` the folder or hub id it loads from,
    `config` its config.json as transformers reads it (no weights)."""

    name: str
    path: str
    config: Any  # transformers.PretrainedConfig

    @property
    def model_type(self) -> str:
        return self.config.model_type

    @cached_property
    def meta_model(self) -> Any:
        """The model's modules and parameter shapes on the meta device (no memory, no weights), built once:
        the memory planner asks for them once per estimate, up to 20 times per `tunelab plan`."""
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(self.config)


def resolve_model(cfg: RunConfig, path: str | None = None, home=None) -> ResolvedModel:
    """The run's base model with its config (`path`: where it was already found to load from, else found
    here without needing weights, as planning does; `home`: where an artifact resolves)."""
    path = path or base_model_source(cfg, home, weights=False)
    return ResolvedModel(cfg.model.name, path, read_model_config(cfg, path))


class ResolvedOnce:
    """One process's asks for a run's model, answered from one resolution: the plans made before the run
    loads it (how many processes fit, the strategy; asked by rules and launcher alike) and the run itself
    share it, so config.json is read once however many ask."""

    def __init__(self, cfg: RunConfig, resolved: ResolvedModel | None = None):
        self.cfg = cfg
        self._resolved = resolved
        self._unplannable = False  # planning asked and no config.json could be had

    def for_planning(self) -> ResolvedModel | None:
        """The model to plan from, found without needing weights; None when no config.json can be had (a hub
        model while offline): the planners then choose what is safe."""
        if self._resolved is None and not self._unplannable:
            try:
                self._resolved = resolve_model(self.cfg)
            except TunelabError:
                self._unplannable = True
        return self._resolved

    def at(self, path: str) -> ResolvedModel:
        """The run's model loading from `path` (found with its weights checked): the one planned from when
        it was found there, else resolved now."""
        if self._resolved is None or self._resolved.path != path:
            self._resolved = resolve_model(self.cfg, path)
        return self._resolved


def read_model_config(cfg: RunConfig, path: str) -> Any:
    """config.json of the model at `path` (from the local hub cache when the hub is unreachable)."""
    from transformers import AutoConfig

    check_remote_code(path, cfg.model.trust_remote_code)
    offline = hub_offline(path)
    try:
        return AutoConfig.from_pretrained(
            path, revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code
        )
    except (OSError, ValueError) as e:
        if offline:
            raise TunelabError(unreachable_message("model.name", path), hint=CONFIG_HINT) from None
        raise TunelabError(
            f"model.name: cannot read the config of {cfg.model.name!r}: {str(e).splitlines()[0][:200]}",
            hint=CONFIG_HINT,
        ) from None


def resolve_model_path(name: str, weights: bool = True) -> str:
    """A local folder for `tiny:` presets and local paths (checked; `weights=False`: a config.json is
    enough, as for planning); hub ids are returned as they are. Model artifacts resolve to their base
    first (`base_model_source`)."""
    from tunelab.refs import RefError, parse_model

    try:
        ref = parse_model(name)
    except RefError as e:
        raise TunelabError(f"model.name: {e}") from None
    if ref.kind == "tiny":
        from tunelab.model.tiny import resolve_tiny

        return str(resolve_tiny(name))
    if ref.kind == "artifact":
        raise TunelabError(
            f"model.name: {name} is a model artifact; its base model is resolved from the artifact first"
        )
    if ref.kind == "local":
        p = Path(name).expanduser()
        if not p.is_dir():
            raise TunelabError(f"model.name: {name} is not a model folder")
        if not (p / "config.json").is_file():
            raise TunelabError(f"model.name: {p} has no config.json (not a Hugging Face model folder)")
        if weights and not any(p.glob("*.safetensors")) and not (p / "adapter_config.json").is_file():
            raise TunelabError(
                f"model.name: {p} holds no *.safetensors weights",
                hint="tunelab loads safetensors only; convert .bin weights with transformers' save_pretrained",
            )
        return str(p)
    return name


def base_model_source(cfg: RunConfig, home=None, weights: bool = True) -> str:
    """Where a run config's base model loads from: its folder or hub id, through a model artifact's
    metadata when `model.name` is one, or the base of a run directory or adapter folder it continues
    (`home`: where an artifact resolves, default the config's own)."""
    name = cfg.model.name
    if cfg.model.ref.kind in ("artifact", "local"):
        from tunelab.artifacts import Home
        from tunelab.artifacts.models import continued_model

        init = continued_model(name, home or Home.of(cfg))
        if init is not None:
            name = init.base
    return resolve_model_path(name, weights)


def hub_offline(path: str) -> bool:
    """For a hub id: switch the hub clients offline when the hub is unreachable (fast failure); True if so."""
    from tunelab.hub import ensure_offline_if_unreachable
    from tunelab.refs import RefError, parse_model

    try:
        is_hub = parse_model(path).kind == "hub"
    except RefError:
        return False
    return ensure_offline_if_unreachable() if is_hub else False


def remote_code_files(path: str) -> list[str]:
    """Files of a local model folder that make transformers run the model's own code (`auto_map`)."""
    p = Path(path)
    if not p.is_dir():
        return []
    found = []
    for name in ("config.json", "tokenizer_config.json", "adapter_config.json"):
        f = p / name
        try:
            data = json.loads(f.read_text()) if f.is_file() else {}
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("auto_map"):
            found.append(str(f))
    return found


def check_remote_code(path: str, trusted: bool, flag: str = "model.trust_remote_code: true") -> None:
    """Refuse, in one line naming the file, a local model that ships code when its running was not asked for."""
    if trusted:
        return
    files = remote_code_files(path)
    if files:
        raise TunelabError(
            f"{files[0]} makes the model run its own Python code (auto_map), which is off by default",
            hint=f"if you trust that code, allow it with {flag}",
        )
