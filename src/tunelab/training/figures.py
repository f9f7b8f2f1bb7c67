"""What a run measures about itself: row lengths, packing efficiency, peak memory."""

from __future__ import annotations

import resource

from tunelab.training.preference_trainer import sequence_lengths


def peak_memory_mb(device: str) -> dict[str, float]:
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"peak_rss_mb": round(rss, 1)}
    if device.startswith("cuda"):
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def row_lengths(dataset) -> list[int]:
    """Token count of every row, read from the Arrow column (no token lists built in Python)."""
    import pyarrow.compute as pc

    if "input_ids" not in dataset.column_names:
        return sequence_lengths(dataset)  # preference pairs: prompt + each answer
    return pc.list_value_length(dataset.data.column("input_ids")).to_pylist()


def packing_efficiency(dataset, max_length: int) -> float | None:
    if dataset is None or len(dataset) == 0:
        return None
    lengths = row_lengths(dataset)
    return round(sum(lengths) / (len(lengths) * max_length), 4)
