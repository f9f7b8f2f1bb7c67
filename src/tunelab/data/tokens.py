"""The one BOS rule: how a rendered prompt becomes token ids, the same in training and inference.

Training adds the tokenizer's BOS once in front of every example (unless the rendered text already
starts with it, as some chat templates do) and tokenizes the text without special tokens;
`tokenizer(prompt)` would double such a BOS. Inference asks with exactly the prompt part of that.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer's own post-processing puts BOS in front (so training does too)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def needs_bos(tokenizer: Any, text: str, adds: bool | None = None) -> bool:
    """Whether BOS goes in front of `text` (the first segment of an example or a whole prompt)."""
    adds = adds_bos(tokenizer) if adds is None else adds
    return adds and not text.startswith(tokenizer.bos_token or "\0")


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a rendered prompt exactly as training tokenized its prompt part."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return [tokenizer.bos_token_id, *ids] if needs_bos(tokenizer, prompt) else ids


def loss_counter(counts: Counter, by_source: dict[int, Counter] | None, origin: int):
    """`lose(key, n)`: add n to `counts` and to the example's source's own counter."""

    def lose(key: str, n: int = 1) -> None:
        if n:
            counts[key] += n
            if by_source is not None:
                by_source.setdefault(origin, Counter())[key] += n

    return lose
