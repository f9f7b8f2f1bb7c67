"""Attention for padding-free packed rows that costs sum(len_i^2), not (sum len_i)^2.

TRL's padding-free packing flattens a micro-batch into one row whose position ids restart at every
example. Plain SDPA then attends over the whole row under a block-diagonal mask: on the CPU, where
there is no variable-length flash kernel, that is quadratic in the row length. This kernel splits
the row at the position-id resets and runs causal SDPA per example, which gives the same result
(tests/unit/model/test_model.py checks logits against unpacked examples) with a fraction of the work. Anything
else (batches with padding, generation with a KV cache) goes to transformers' own SDPA.
"""

from __future__ import annotations

NAME = "tunelab_packed_sdpa"
_registered = False


def packed_sdpa(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kwargs
):
    import torch
    import torch.nn.functional as F

    from tunelab.compat import sdpa_pieces

    sdpa_attention_forward, repeat_kv, _ = sdpa_pieces()

    pos = kwargs.get("position_ids")
    if pos is None or query.shape[0] != 1 or query.shape[2] != key.shape[2] or query.shape[2] < 2:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    p = pos[0]
    # a new example starts wherever the position does not follow the previous one (as transformers'
    # find_packed_sequence_indices defines it)
    starts = [0, *torch.nonzero(torch.diff(p) != 1).flatten().add(1).tolist()]
    if len(starts) <= 1:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    bounds = [*starts, query.shape[2]]
    sizes = [e - s for s, e in zip(bounds[:-1], bounds[1:], strict=True)]
    drop = dropout if module.training else 0.0
    # split, not slices: the backward of n slices zero-fills and adds n gradients the size of the whole row
    # (n x the row for q, k and v); split's backward is one concatenation
    outs = [
        F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop, scale=scaling).transpose(1, 2)
        for q, k, v in zip(query.split(sizes, dim=2), key.split(sizes, dim=2), value.split(sizes, dim=2), strict=True)
    ]
    # concatenated straight into [batch, tokens, heads, dim], the layout transformers' SDPA returns: one copy
    return torch.cat(outs, dim=1), None


def register() -> str:
    """Make `attn_implementation=NAME` available to transformers (idempotent); returns the name."""
    global _registered
    if not _registered:
        import torch
        from transformers import AttentionInterface, AttentionMaskInterface

        from tunelab.compat import sdpa_pieces

        sdpa_mask = sdpa_pieces()[2]

        # outside compiled graphs (`training.compile`): traced, the split points would be constants of the graph,
        # one recompile per packed row; the layer's graphs break around it instead (eager: 0.4 us a call)
        AttentionInterface.register(NAME, torch.compiler.disable(packed_sdpa, reason="per-example split points"))
        AttentionMaskInterface.register(NAME, sdpa_mask)
        _registered = True
    return NAME
