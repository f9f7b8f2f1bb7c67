"""`training.kernels`: Liger's fused Triton kernels for the decoder's norms, SwiGLU and RoPE on CUDA.

Liger Kernel (the `liger-kernel` package) replaces a Llama-family model's RMSNorm, SwiGLU MLP and
rotary embedding with fused Triton kernels, which saves the element-wise passes (and their
activations) between the matmuls. tunelab applies them through Liger's own per-architecture
functions on the loaded base model, before the adapter wraps it. Liger's cross-entropy kernels
stay off: TRL's SFT trainer computes the loss through its own fused LM head (a Triton kernel on
CUDA), and refuses Liger's fused linear cross-entropy.

`auto` uses Liger where it can run (a CUDA device, the package installed, an architecture it
covers) and nothing elsewhere; `liger` insists and says why it cannot; `none` keeps the model's
own modules. Triton does not run on the CPU, so CPU runs never use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.errors import ConfigError

# what Liger replaces; its cross-entropy kernels stay off (see the module docstring)
LIGER_PARTS = dict(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)


@dataclass(frozen=True)
class Kernels:
    name: str  # liger | none
    why: str  # one line: why this choice (printed with the run's plan)


def _liger_functions():
    """Liger's map from a transformers model_type to the function that patches it, or None if not installed."""
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError:
        return None
    return MODEL_TYPE_TO_APPLY_LIGER_FN


def resolve_kernels(setting: str, device: str, model_type: str | None) -> Kernels:
    """What `training.kernels` means for this device and architecture; `liger` that cannot run is a ConfigError."""
    if setting == "none":
        return Kernels("none", "training.kernels: none")
    problem = None
    if not device.startswith("cuda"):
        problem = f"Liger's kernels are Triton, which needs a CUDA GPU (this run is on {device})"
    elif (functions := _liger_functions()) is None:
        problem = "the liger-kernel package is not installed (pip install liger-kernel)"
    elif model_type is not None and model_type not in functions:  # None: not known yet (checked again once loaded)
        problem = f"Liger has no kernels for model_type {model_type!r}"
    if problem is None:
        return Kernels("liger", "Liger's fused RMSNorm, SwiGLU and RoPE")
    if setting == "liger":
        raise ConfigError([f"training.kernels: liger: {problem}; use auto or none"])
    return Kernels("none", f"no fused kernels: {problem}")


def apply_kernels(model, kernels: Kernels) -> None:
    """Patch the (not yet adapted) base model in place with the resolved kernels."""
    if kernels.name != "liger":
        return
    functions = _liger_functions()
    functions[model.config.model_type](model=model, **LIGER_PARTS)
