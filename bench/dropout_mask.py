"""LoRA dropout's mask, forward + backward: `F.dropout` against a `uniform_() >= p` mask and a multiply.

    python bench/dropout_mask.py        # best of 30 per shape, this process's torch threads

The W2 profile (bench/profile_w2.py) puts 12 % of a bf16 step in LoRA dropout, almost all of it in
drawing the random mask; this says whether a cheaper mask would help (docs/performance.md).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

P = 0.1
SHAPES = ((2048, 768), (2048, 4096))  # W2's micro-batch x hidden; a 3B model's hidden


def best_ms(fn, n: int = 30) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, p={P}")
    for rows, cols in SHAPES:
        x = torch.randn(rows, cols, requires_grad=True)
        g = torch.randn(rows, cols)
        plain = best_ms(lambda x=x, g=g: F.dropout(x, P, True).backward(g))
        cheap = best_ms(lambda x=x, g=g: (x * (torch.empty_like(x).uniform_() >= P) * (1 / (1 - P))).backward(g))
        print(f"{rows} x {cols}: F.dropout {plain:.2f} ms, uniform_() >= p {cheap:.2f} ms")


if __name__ == "__main__":
    main()
