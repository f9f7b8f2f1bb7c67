"""A left-padded batch of KV-cached sequences that rows can join and leave between decoding steps.

transformers' `DynamicCache` holds one `[batch, heads, tokens, head_dim]` tensor pair per layer; a
batch of sequences of different lengths is left-padded along `tokens`, with a 2-D attention mask
saying which columns are real (as `generate` does for a padded batch). Joining stacks a new row's
cache under the others after padding the shorter side on the left; leaving selects the rows that
stay and drops the columns no row needs any more. Keys carry their rotary position from when they
were computed, so padding never moves a token: each row's next position is its count of real tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def batching_unsupported(model: Any) -> str | None:
    """Why the model's cache cannot be batched this way (sliding-window, linear-attention or
    quantized layers), or None when every layer is a plain `DynamicLayer`."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    config = getattr(model, "config", None)
    try:
        layers = DynamicCache(config=config).layers if config is not None else []
    except Exception as e:  # noqa: BLE001 - a config transformers cannot build a cache for
        return f"no dynamic cache for this model ({type(e).__name__}: {e})"
    odd = sorted({type(layer).__name__ for layer in layers if type(layer) is not DynamicLayer})
    return f"cache layers {', '.join(odd)} cannot be padded and stacked" if odd else None


@dataclass
class Rows:
    """KV cache + attention mask of the sequences decoding together (row i of each is sequence i)."""

    cache: Any  # transformers.DynamicCache
    mask: Any  # LongTensor [rows, tokens]: 1 for a real token, 0 for left padding

    def __len__(self) -> int:
        return int(self.mask.shape[0])

    def positions(self) -> Any:
        """[rows, 1]: the position of each row's next token (its real tokens so far)."""
        return self.mask.sum(dim=1, keepdim=True)

    def grow(self) -> Any:
        """The mask for one more token in every row (what the next forward pass attends over)."""
        import torch

        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self), 1))], dim=1)
        return self.mask

    def keep(self, rows: list[int]) -> None:
        """Only `rows` stay, in that order; columns that are padding in all of them are dropped."""
        import torch

        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        self.mask = self.mask.index_select(0, index)
        layers = [(k.index_select(0, index), v.index_select(0, index)) for k, v in _layers(self.cache)]
        used = torch.nonzero(self.mask.any(dim=0)).flatten()
        first = int(used[0]) if len(used) else self.mask.shape[1]
        if first:
            self.mask = self.mask[:, first:]
            layers = [(k[..., first:, :], v[..., first:, :]) for k, v in layers]
        self.cache = _cache(layers)

    def join(self, other: Rows) -> None:
        """Append `other`'s rows after these (the shorter side is left-padded to the longer)."""
        import torch

        width = max(self.mask.shape[1], other.mask.shape[1])
        mine, theirs = _layers(self.cache), _layers(other.cache)
        layers = [
            (torch.cat([_pad(k, width), _pad(k2, width)]), torch.cat([_pad(v, width), _pad(v2, width)]))
            for (k, v), (k2, v2) in zip(mine, theirs, strict=True)
        ]
        self.mask = torch.cat([_pad(self.mask, width), _pad(other.mask, width)])
        self.cache = _cache(layers)


def _layers(cache: Any) -> list[tuple[Any, Any]]:
    # DynamicCache iterates as (keys, values, sliding-window tensor) per layer
    return [(k, v) for k, v, *_ in cache]


def _cache(layers: list[tuple[Any, Any]]) -> Any:
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=layers)


def _pad(t: Any, width: int) -> Any:
    """`t` left-padded with zeros to `width` along its token axis (the last for a mask, -2 for keys/values)."""
    import torch.nn.functional as F

    axis_from_end = 1 if t.dim() == 2 else 2
    missing = width - t.shape[-axis_from_end]
    if missing == 0:
        return t
    pad = (missing, 0) if axis_from_end == 1 else (0, 0, missing, 0)
    return F.pad(t, pad)
