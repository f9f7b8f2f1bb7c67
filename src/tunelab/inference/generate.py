"""Batched generation with a KV cache and left padding.

One function serves the training sample table, evaluation and the CLI, so every answer a user
sees was produced the same way. It leaves the model as it found it: train/eval mode, the
`use_cache` setting and the global RNG state are all restored.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 16
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def inference_mode(model):
    """eval() + KV cache for the duration, training state and RNG restored afterwards."""
    import torch

    was_training = model.training
    config = getattr(model, "config", None)
    had_cache = getattr(config, "use_cache", None)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        model.eval()
        if config is not None:
            config.use_cache = True
        try:
            with torch.inference_mode():
                yield
        finally:
            if config is not None:
                config.use_cache = had_cache
            model.train(was_training)


def generate_batch(model, tokenizer, prompts: list[str], settings: GenerationSettings, on_batch=None) -> list[str]:
    """Answers for `prompts` (already rendered with the prompt template), in order."""
    import torch

    if not prompts:
        return []
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    # Longest first: batches of similar length waste less compute on padding.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    kwargs: dict[str, Any] = dict(
        max_new_tokens=settings.max_new_tokens,
        do_sample=settings.do_sample,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
    )
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    try:
        with inference_mode(model):
            torch.manual_seed(settings.seed)
            for start in range(0, len(order), settings.batch_size):
                idx = order[start : start + settings.batch_size]
                enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
                gen = model.generate(**enc, **kwargs)
                new = gen[:, enc["input_ids"].shape[1] :]
                for i, row in zip(idx, new, strict=True):
                    out[i] = tokenizer.decode(row, skip_special_tokens=True)
                if on_batch is not None:
                    on_batch(len(idx))
    finally:
        tokenizer.padding_side = side
    return out
