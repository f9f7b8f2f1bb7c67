"""Held-out preference accuracy: the share of pairs whose chosen answer the model finds likelier
than the rejected one (summed log-probabilities of the answer tokens given the prompt), and the
mean margin between the two. Unlike TRL's `rewards/accuracies` (which compares log-ratios to the
reference model, so it starts at 0 before any step), this is a property of the model alone: a
model that knows nothing scores about 50 %.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


def completion_logps(
    model, tokenizer, examples: list[tuple[list[int], list[int]]], batch_size: int = 16
) -> list[float]:
    """Sum of log p(answer token | everything before it) for each (prompt_ids, answer_ids)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    out: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            width = max(len(p) + len(a) for p, a in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            answer = torch.zeros((len(chunk), width), dtype=torch.bool)
            for i, (p, a) in enumerate(chunk):
                ids[i, : len(p) + len(a)] = torch.tensor(p + a)
                mask[i, : len(p) + len(a)] = 1
                answer[i, len(p) : len(p) + len(a)] = True
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            logp = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
            out += (logp * answer[:, 1:].to(device)).sum(-1).tolist()
    return out


def preference_scores(
    model, tokenizer, pairs: list[tuple[list[int], list[int], list[int]]], batch_size: int = 16
) -> dict[str, float]:
    """preference_accuracy and preference_margin (mean chosen - rejected log-probability) of
    (prompt, chosen, rejected) pairs."""
    if not pairs:
        return {}
    chosen = completion_logps(model, tokenizer, [(p, c) for p, c, _ in pairs], batch_size)
    rejected = completion_logps(model, tokenizer, [(p, r) for p, _, r in pairs], batch_size)
    wins = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    return {
        "preference_accuracy": wins / len(pairs),
        "preference_margin": sum(c - r for c, r in zip(chosen, rejected, strict=True)) / len(pairs),
    }


def tokenized_pairs(raw, spec, tokenizer) -> list[tuple[list[int], list[int], list[int]]]:
    """The (prompt, chosen, rejected) token ids of every row that holds a pair, tokenized as DPO training does."""
    from tunelab.data.preference_rows import iter_pairs
    from tunelab.data.sources import RawRows

    paired = RawRows()
    for row, where in zip(raw.rows, raw.where or [""] * len(raw.rows), strict=True):
        if "chosen" in row and "rejected" in row:
            paired.add(row, where)
    out = []
    for batch in iter_pairs(paired, spec, tokenizer, Counter(), "dpo"):
        out += list(zip(batch["prompt_ids"], batch["chosen_ids"], batch["rejected_ids"], strict=True))
    return out


def has_pairs(rows: list[dict[str, Any]]) -> bool:
    return any("chosen" in r and "rejected" in r for r in rows)
