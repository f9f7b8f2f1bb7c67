"""Model FLOPs per training token (LoRA-aware) and the machine's measured peak matmul rate.

Per token, with N_f frozen matmul weights and N_t trainable weights:
    forward                     2 * (N_f + N_t)
    backward, activation grads  2 * (N_f + N_t)
    backward, weight grads      2 * N_t
    => 4 * N_f + 6 * N_t, plus attention: per layer 4 * d * c forward (QK^T and AV over c attended
       positions) and twice that backward, i.e. 12 * d * c, with c the mean attended context
       (causal, per packed example: (len + 1) / 2 on average).
Embedding lookups are not matmuls and are left out; the LM head is a matmul and counts.
Gradient-checkpointing recomputation is hardware work, not model work, so it is not counted (MFU,
not HFU). MFU = achieved model FLOP/s / peak matmul FLOP/s measured in the same process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tunelab.model.adapters import true_numel


@dataclass
class FlopsBreakdown:
    frozen_matmul_params: int
    trainable_params: int
    attention_per_token: float
    per_token: float


def flops_per_token(model, mean_context: float) -> FlopsBreakdown:
    """Model FLOPs for one training token of `model` (a PEFT or plain causal LM)."""
    import torch

    embeds = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    frozen = trainable = 0
    for p in model.parameters():
        if id(p) in embeds and not p.requires_grad:
            continue
        if p.requires_grad:
            trainable += true_numel(p)
        elif p.dim() >= 2 or getattr(p, "quant_state", None) is not None:
            frozen += true_numel(p)
    cfg = model.config
    layers, d = cfg.num_hidden_layers, cfg.hidden_size
    attn = 12.0 * layers * d * mean_context
    return FlopsBreakdown(frozen, trainable, attn, 4.0 * frozen + 6.0 * trainable + attn)


def mean_attended_context(lengths: list[int]) -> float:
    """Average number of positions a token attends to, for causal attention within each example."""
    total = sum(lengths)
    return sum(n * (n + 1) / 2 for n in lengths) / total if total else 0.0


def measure_peak_matmul(dtype_name: str = "bf16", device: str = "cpu", n: int = 2048, seconds: float = 2.0) -> float:
    """Best sustained FLOP/s of square n x n matmuls in this process (FLOP/s, not TFLOP/s)."""
    import torch

    from tunelab.dtypes import torch_dtype

    dtype = torch_dtype(dtype_name)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        sync()
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0))
    return best
