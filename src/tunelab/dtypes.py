"""The one map between tunelab's dtype names (fp32, bf16, fp16) and torch's."""

from __future__ import annotations

from typing import Any

TORCH_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def torch_dtype(name: str) -> Any:
    """`bf16` -> torch.bfloat16 (and fp16, fp32)."""
    import torch

    return getattr(torch, TORCH_NAMES[name])


def short_name(dtype: Any) -> str:
    """torch.bfloat16, "bfloat16" or "torch.bfloat16" -> "bf16"; anything unknown counts as fp32."""
    text = str(dtype).removeprefix("torch.")
    return next((k for k, v in TORCH_NAMES.items() if v == text), "fp32")


def dtype_bytes(name: str) -> int:
    return BYTES[name]
