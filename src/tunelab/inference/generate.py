"""Generation with a KV cache: batched (left padding), one prompt with details, or streamed.

One module serves the training sample table, evaluation, the CLI and the server, so every answer a
user sees was produced the same way: prompts are tokenized as training tokenized them (BOS once, no
EOS), and generation stops at every end-of-sequence id the tokenizer and the model's generation
config name. Each function leaves the model as it found it: train/eval mode, the `use_cache`
setting and the global RNG state are all restored.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tunelab.config.schema import GenerationSettings  # noqa: F401 (the one settings model; imported from here too)
from tunelab.data.tokens import prompt_ids


@dataclass
class Generation:
    """One answer: its text (cut before any stop string) and what the OpenAI API reports about it."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop": EOS or a stop string; "length": max_new_tokens reached


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


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of a rendered prompt exactly as training tokenized its prompt part (`tunelab.data.tokens`)."""
    return prompt_ids(tokenizer, prompt)


def stop_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS plus the generation config's (chat models often end a turn with another id)."""
    ids = [tokenizer.eos_token_id]
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for i in gen_eos if isinstance(gen_eos, list) else [gen_eos]:
        if i is not None and i not in ids:
            ids.append(i)
    return ids


def context_length(model) -> int:
    """Tokens the model attends over (prompt + answer)."""
    config = getattr(model, "config", None)
    return int(getattr(config, "max_position_embeddings", None) or 2048)


def generate_kwargs(model, tokenizer, settings: GenerationSettings) -> dict[str, Any]:
    """The keyword arguments `model.generate` gets for `settings` (stop ids, greedy or sampling)."""
    kwargs: dict[str, Any] = dict(
        max_new_tokens=settings.max_new_tokens,
        do_sample=settings.do_sample,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop_token_ids(model, tokenizer),
        use_cache=True,
    )
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=None)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if settings.ignore_eos:  # EOS suppressed until the limit: every answer is max_new_tokens long
        kwargs["min_new_tokens"] = settings.max_new_tokens
    return kwargs


def _dense(model, dense_weights: bool | None) -> bool:
    """`dense_weights` None: use dense, LoRA-merged weight copies when they fit a quarter of free memory."""
    if dense_weights is None:
        from tunelab.model.dense import generation_weights_fit

        return generation_weights_fit(model)
    return dense_weights


def generate_batch(
    model, tokenizer, prompts: list[str], settings: GenerationSettings, on_batch=None, dense_weights: bool | None = None
) -> list[str]:
    """Answers for `prompts` (already rendered with the prompt template), in order.

    `dense_weights`: generate with dense, LoRA-merged copies of the weights
    (`tunelab.model.dense.generation_weights`; same answers, faster); None decides by free memory.
    """
    import torch

    from tunelab.model.dense import generation_weights

    if not prompts:
        return []
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    # Longest first: batches of similar length waste less compute on padding.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    kwargs = generate_kwargs(model, tokenizer, settings)
    try:
        with inference_mode(model), generation_weights(model, _dense(model, dense_weights)):
            torch.manual_seed(settings.seed)
            for start in range(0, len(order), settings.batch_size):
                idx = order[start : start + settings.batch_size]
                ids = [encode_prompt(tokenizer, prompts[i]) for i in idx]
                enc = tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt").to(device)
                gen = model.generate(**enc, **kwargs)
                new = gen[:, enc["input_ids"].shape[1] :]
                for i, row in zip(idx, new, strict=True):
                    out[i] = tokenizer.decode(row, skip_special_tokens=True)
                if on_batch is not None:
                    on_batch(len(idx))
    finally:
        tokenizer.padding_side = side
    return out


def generate_one(
    model,
    tokenizer,
    input_ids: Sequence[int],
    settings: GenerationSettings,
    *,
    stop: Sequence[str] = (),
    streamer=None,
    cancel: threading.Event | None = None,
    dense_weights: bool | None = None,
) -> Generation:
    """The answer to one tokenized prompt, with token counts and the reason it ended.

    `stop` strings end generation (the text is cut before the first one); `streamer` (a
    transformers streamer) receives the tokens as they come; setting `cancel` ends generation at
    the next token. If generation raises, the streamer is not ended: the caller does that, so a
    consumer waiting on it is never left hanging. `dense_weights` as in `generate_batch`.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    from tunelab.model.dense import generation_weights

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full(
                (input_ids.shape[0],), cancel is not None and cancel.is_set(), dtype=torch.bool, device=input_ids.device
            )

    device = next(model.parameters()).device
    kwargs = generate_kwargs(model, tokenizer, settings)
    stops = [s for s in stop if s]
    if stops:
        kwargs.update(stop_strings=stops, tokenizer=tokenizer)
    ids = torch.tensor([list(input_ids)], device=device)
    with inference_mode(model), generation_weights(model, _dense(model, dense_weights)):
        torch.manual_seed(settings.seed)
        gen = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_Cancelled()]),
            **kwargs,
        )
    new = gen[0, ids.shape[1] :].tolist()
    return finish_generation(
        tokenizer, new, set(kwargs["eos_token_id"]), stops, len(input_ids), settings.max_new_tokens
    )


def finish_generation(
    tokenizer,
    new: Sequence[int],
    eos: set[int],
    stops: Sequence[str],
    prompt_tokens: int,
    max_new_tokens: int,
    cancelled: bool = False,
) -> Generation:
    """The answer for generated ids `new`: text cut before the first stop string; finish_reason
    "stop" for EOS, a stop string or a cancel, "length" when max_new_tokens ran out. One rule for
    every generation path (one prompt, the server's batches)."""
    text = tokenizer.decode(list(new), skip_special_tokens=True)
    finish = "stop" if new and new[-1] in eos else "length"
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    if cut >= 0:
        text, finish = text[:cut], "stop"
    elif finish == "length" and (cancelled or len(new) < max_new_tokens):
        finish = "stop"  # cancelled before the limit
    return Generation(text=text, prompt_tokens=prompt_tokens, completion_tokens=len(new), finish_reason=finish)


def stream_generate(
    model, tokenizer, input_ids: Sequence[int], settings: GenerationSettings, dense_weights: bool | None = None
) -> Iterator[str]:
    """Yield the answer's text as it is generated (TextIteratorStreamer fed from a worker thread).

    Stopping early (Ctrl-C, breaking out of the loop) cancels generation at the next token; an
    error in generation is raised here once the text generated so far has been yielded.
    `dense_weights` as in `generate_batch`.
    """
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    cancel = threading.Event()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            generate_one(
                model, tokenizer, input_ids, settings, streamer=streamer, cancel=cancel, dense_weights=dense_weights
            )
        except BaseException as e:  # handed to the consumer thread, which re-raises it
            failure.append(e)
            streamer.end()

    worker = threading.Thread(target=work, name="tunelab-generate", daemon=True)
    worker.start()
    try:
        yield from streamer
    finally:
        cancel.set()
        worker.join()
    if failure:
        raise failure[0]
