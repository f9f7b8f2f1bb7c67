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
not HFU). MFU = achieved model FLOP/s / peak matmul FLOP/s measured in the same process: the best of
several timed runs after a warm-up, with the same thread count as training (`measure_peak`).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

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


@dataclass(frozen=True)
class PeakMeasurement:
    """Square-matmul FLOP/s of one dtype on one device. `best` is the peak (MFU's denominator); the
    median and min show how steady the machine was while measuring (a loaded machine spreads them)."""

    dtype: str
    device: str
    n: int
    threads: int  # torch's intra-op threads, as the training in this process uses them
    runs: int
    best: float
    median: float
    min: float

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "best_tflops": round(self.best / 1e12, 4),
            "median_tflops": round(self.median / 1e12, 4),
            "min_tflops": round(self.min / 1e12, 4),
        }

    def summary(self) -> str:
        return (
            f"{self.dtype} {self.best / 1e12:.3f} TFLOP/s best "
            f"(median {self.median / 1e12:.3f}, min {self.min / 1e12:.3f}; "
            f"{self.runs} runs of {self.n}x{self.n} on {self.device}, {self.threads} threads)"
        )


def measure_peak(
    dtype_name: str = "bf16",
    device: str = "cpu",
    n: int = 2048,
    seconds: float = 1.0,
    max_runs: int = 20,
    min_runs: int = 3,
) -> PeakMeasurement:
    """Time n x n matmuls after a warm-up: up to `max_runs` runs spread over about `seconds`, at least
    `min_runs` even when one matmul takes longer than that. Uses this process's current thread count."""
    import torch

    from tunelab.dtypes import torch_dtype

    dtype = torch_dtype(dtype_name)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)  # one output, written again and again: the kernel's rate,
    # not the allocator's (a fresh 16 MiB output per call can cost a page fault per 4 KiB page on the CPU)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    t_end = time.perf_counter() + seconds
    # the first calls pay for kernel selection (oneDNN / cuBLAS heuristics) and first-touch page faults
    for _ in range(3):
        t0 = time.perf_counter()
        torch.matmul(a, b, out=c)
        sync()
        per_call = time.perf_counter() - t0
    # a run of several calls when one is short (a GPU does 4096^3 in a fraction of a millisecond), so
    # timer and launch overheads do not count
    reps = max(1, round(seconds / max_runs / max(per_call, 1e-9)))
    rates: list[float] = []
    while len(rates) < max_runs and (len(rates) < min_runs or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b, out=c)
        sync()
        rates.append(reps * 2 * n**3 / (time.perf_counter() - t0))
    return PeakMeasurement(
        dtype_name, device, n, torch.get_num_threads(), len(rates), max(rates), statistics.median(rates), min(rates)
    )


def measure_peak_matmul(dtype_name: str = "bf16", device: str = "cpu", n: int = 2048, seconds: float = 2.0) -> float:
    """Best sustained FLOP/s of square n x n matmuls in this process (FLOP/s, not TFLOP/s); see `measure_peak`."""
    return measure_peak(dtype_name, device, n=n, seconds=seconds).best
