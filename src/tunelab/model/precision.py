"""The device a model runs on and the numbers it trains in: `auto` resolved for a device, the weight
dtype a run loads, and `training.precision` as the trainer's bf16 / fp16 flags."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunelab.errors import ConfigError, TunelabError

if TYPE_CHECKING:
    from tunelab.config import RunConfig
    from tunelab.config.schema import ModelConfig


def device_for(cfg: ModelConfig) -> str:
    import torch

    if cfg.device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError([f"model.device: {cfg.device} asked for, but no CUDA GPU is visible"])
    return "cuda:0" if cfg.device == "cuda" else cfg.device


def bf16_supported(device: str) -> bool:
    """Whether `device` runs bf16 mixed precision; a GPU that is not here (planning) counts as a current one."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported() if torch.cuda.is_available() else True
    return False


def auto_dtype(device: str) -> str:
    """What `auto` means for a dtype or a precision: bf16 on GPUs that have it, fp16 on other GPUs, fp32 on the CPU."""
    if device.startswith("cuda"):
        return "bf16" if bf16_supported(device) else "fp16"
    return "fp32"


def resolve_dtype(name: str, device: str):
    """A dtype name (`auto` resolved for `device`) as a torch dtype."""

    from tunelab.dtypes import torch_dtype

    return torch_dtype(auto_dtype(device) if name == "auto" else name)


def run_precision(cfg: RunConfig, device: str) -> str:
    """`training.precision` with `auto` resolved: bf16, fp16 or fp32 (no mixed precision)."""
    return auto_dtype(device) if cfg.training.precision == "auto" else cfg.training.precision


def precision_flags(cfg: RunConfig, device: str) -> dict[str, bool]:
    """`training.precision` -> SFTConfig bf16 / fp16 flags (auto: bf16 on GPUs that have it, fp16 on others,
    fp32 on CPU)."""
    p = run_precision(cfg, device)
    if p == "fp16" and not device.startswith("cuda"):
        raise TunelabError("training.precision: fp16 mixed precision needs a GPU; use bf16 or fp32 on the CPU")
    return {"bf16": p == "bf16", "fp16": p == "fp16"}


def run_weight_dtype(cfg: RunConfig, device: str) -> str:
    """The weight dtype a training run loads (`model.dtype`, with `auto` resolved for the run).

    `auto` on the CPU is fp32, except under `training.precision: bf16` with a frozen base (LoRA):
    autocast would cast every frozen fp32 weight to bf16 on each forward pass and keep the copies
    for backward, so the base is loaded in bf16 once (the adapter stays fp32, as PEFT keeps it).
    """
    if cfg.model.dtype != "auto":
        return cfg.model.dtype
    if device.startswith("cuda"):
        return auto_dtype(device)
    return "bf16" if run_precision(cfg, device) == "bf16" and cfg.adapter.type == "lora" else "fp32"
