"""Continuous batching for `tunelab serve`: concurrent requests decode together, one forward pass a step.

One worker thread owns the model. Requests wait in arrival order; between decoding steps the oldest
join (each prefilled on its own, as a batch of one) while fewer than `max_batch` sequences are in
flight, and finished or cancelled ones leave at once, so a short answer never waits for a long one.

Sequences are grouped by adapter: PEFT switches the adapter for the whole model, and the dense
merged weights (`tunelab.model.dense`) are one copy per adapter, so a forward pass runs one
adapter's rows. Steps go round-robin over the groups with work and joining is first come, first
served across groups, so no adapter starves another.

Every sequence keeps its own settings: greedy or sampled through the logits processors `generate`
builds from the same settings, its own seeded generator (a request with a seed samples what it would
alone), its own end-of-sequence ids, max_tokens, stop strings, streamer and cancel flag.

Why not transformers' own continuous batching (`generate_batch` / `ContinuousBatchingManager`)? It
runs on the CPU, but one manager has one `do_sample` and one seed for all requests, one active
adapter, no stop strings, and by default sizes its paged cache from free memory (60 % of the host's
on the CPU, allocated on the first batch); docs/performance.md has the measurements.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from tunelab.inference.generate import (
    GenerationSettings,
    finish_generation,
    generate_kwargs,
    stop_token_ids,
)
from tunelab.serve.batch_cache import Rows

log = logging.getLogger("tunelab.serve")


@dataclass
class BatchStats:
    """What the scheduler did: forward passes by the number of sequences in them."""

    rows: Counter = field(default_factory=Counter)  # decoding steps
    prefill_rows: Counter = field(default_factory=Counter)  # prompt forward passes
    adapter_steps: Counter = field(default_factory=Counter)  # decoding steps by adapter (None: the base)

    @property
    def steps(self) -> int:
        return sum(self.rows.values())

    @property
    def max_rows(self) -> int:
        return max(self.rows, default=0)


@dataclass
class _Seq:
    adapter: str | None
    prompt: list[int]
    settings: GenerationSettings
    stops: list[str]
    streamer: Any
    cancel: threading.Event
    future: Future
    processors: Any = None  # transformers LogitsProcessorList (empty for plain greedy)
    generator: Any = None  # torch.Generator, sampling only
    new: list[int] = field(default_factory=list)  # generated ids; the last is fed at the next step


@dataclass
class _Group:
    """The sequences of one adapter that decode together."""

    rows: Rows
    seqs: list[_Seq]


class BatchScheduler:
    """Runs generations submitted from any thread, batched, on its own worker thread.

    `activate(adapter)`: a context manager that makes `adapter` (None: the base) the model's active
    one for a forward pass.
    """

    def __init__(
        self, model: Any, tokenizer: Any, max_batch: int, activate: Callable[[str | None], AbstractContextManager]
    ):
        self.model, self.tokenizer, self.max_batch, self.activate = model, tokenizer, max_batch, activate
        self.stats = BatchStats()
        self._eos = set(stop_token_ids(model, tokenizer))
        self._device = next(model.parameters()).device
        params = _forward_params(model)
        self._logits_to_keep = "logits_to_keep" in params
        # transformers 5.x renamed the forward's `past_key_values` to `cache` (the old name warns)
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._lock = threading.Condition()
        self._incoming: deque[_Seq] = deque()
        self._waiting: deque[_Seq] = deque()
        self._groups: dict[str | None, _Group] = {}
        self._turn = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tunelab-batcher", daemon=True)
        self._thread.start()

    def submit(
        self,
        adapter: str | None,
        input_ids: Sequence[int],
        settings: GenerationSettings,
        stop: Sequence[str] = (),
        streamer: Any = None,
        cancel: threading.Event | None = None,
    ) -> Future:
        """Queue one generation; the future gets its `Generation` (or the error that ended it)."""
        seq = _Seq(
            adapter, list(input_ids), settings, [s for s in stop if s], streamer, cancel or threading.Event(), Future()
        )
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._incoming.append(seq)
            self._lock.notify()
        return seq.future

    def close(self) -> None:
        """Stop: running sequences end at their next token (answered with what they have), queued ones are cancelled."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join()

    # --- the worker thread -------------------------------------------------------------------------

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self._lock:
                    while not (self._incoming or self._waiting or self._groups or self._closed):
                        self._lock.wait()
                    self._waiting.extend(self._incoming)
                    self._incoming.clear()
                    closed = self._closed
                if closed:
                    break
                try:
                    self._admit()
                    group = self._next_group()
                    if group is not None:
                        self._step(*group)
                except Exception as e:  # a bug here must fail the requests in flight, not hang them
                    log.exception("the batching loop failed")
                    for group in self._groups.values():
                        for seq in group.seqs:
                            self._fail(seq, e)
                    self._groups.clear()
        for seq in self._waiting:
            seq.future.cancel()
            _end(seq.streamer)
        for group in self._groups.values():
            for seq in group.seqs:
                self._finish(seq, cancelled=True)
        self._groups.clear()

    def in_flight(self) -> int:
        """Sequences being decoded now (waiting ones not counted)."""
        return sum(len(g.seqs) for g in list(self._groups.values()))

    def _admit(self) -> None:
        """Prefill the oldest waiting requests while there is room; they join their adapter's group."""
        admitted: list[_Seq] = []
        while self._waiting and self.in_flight() + len(admitted) < self.max_batch:
            seq = self._waiting.popleft()
            if seq.future.set_running_or_notify_cancel():
                admitted.append(seq)
            else:  # the client went away while it waited
                _end(seq.streamer)
        for adapter in dict.fromkeys(s.adapter for s in admitted):
            for chunk in _prefill_chunks([s for s in admitted if s.adapter == adapter]):
                try:
                    rows = self._prefill(adapter, chunk)
                except Exception as e:  # these requests' forward pass failed; the others go on
                    for seq in chunk:
                        self._fail(seq, e)
                    continue
                if rows is None:
                    continue
                rows, seqs = rows
                group = self._groups.get(adapter)
                if group is None:
                    self._groups[adapter] = _Group(rows, seqs)
                else:
                    group.rows.join(rows)
                    group.seqs += seqs

    def _prefill(self, adapter: str | None, seqs: list[_Seq]) -> tuple[Rows, list[_Seq]] | None:
        """The prompts' forward pass (left-padded to the longest) and first tokens; the cache rows of
        those not done yet, or None when all are."""
        import torch
        from transformers import DynamicCache

        for seq in seqs:
            self._prepare(seq)
        width = max(len(s.prompt) for s in seqs)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (width - len(s.prompt)) + s.prompt for s in seqs], device=self._device)
        mask = torch.tensor([[0] * (width - len(s.prompt)) + [1] * len(s.prompt) for s in seqs], device=self._device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # as `generate` numbers a left-padded batch
        cache = DynamicCache(config=self.model.config)
        kwargs = {self._cache_arg: cache, **({"logits_to_keep": 1} if self._logits_to_keep else {})}
        with self.activate(adapter):
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)
        self.stats.prefill_rows[len(seqs)] += 1
        logits = out.logits[:, -1]
        stay = []
        for i, seq in enumerate(seqs):
            if seq.streamer is not None:
                seq.streamer.put(
                    torch.tensor([seq.prompt])
                )  # as `generate` does: the prompt first (skip_prompt drops it)
            if self._advance(seq, self._choose(seq, logits[i : i + 1])):
                self._finish(seq)
            else:
                stay.append(i)
        if not stay:
            return None
        rows = Rows(cache, mask)  # (the forward pass filled the cache in place)
        if len(stay) < len(seqs):
            rows.keep(stay)
        return rows, [seqs[i] for i in stay]

    def _prepare(self, seq: _Seq) -> None:
        import torch

        kwargs = generate_kwargs(self.model, self.tokenizer, seq.settings)
        seq.processors = logits_processors(self.model, kwargs, len(seq.prompt), self._device)
        if seq.settings.do_sample:
            seq.generator = torch.Generator(device=self._device).manual_seed(seq.settings.seed)

    def _next_group(self) -> tuple[str | None, _Group] | None:
        if not self._groups:
            return None
        keys = list(self._groups)
        self._turn = (self._turn + 1) % len(keys)
        key = keys[self._turn]
        return key, self._groups[key]

    def _step(self, adapter: str | None, group: _Group) -> None:
        """One decoding step for `group`: every sequence gets its next token; finished ones leave."""
        import torch

        self._leave(adapter, group, [i for i, s in enumerate(group.seqs) if not s.cancel.is_set()])
        if adapter not in self._groups:
            return
        rows = group.rows
        ids = torch.tensor([[s.new[-1]] for s in group.seqs], device=self._device)
        positions = rows.positions()
        mask = rows.grow()
        try:
            with self.activate(adapter):
                out = self.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=True,
                    **{self._cache_arg: rows.cache},
                )
        except Exception as e:  # a failed step fails its group, not the server
            del self._groups[adapter]
            for seq in group.seqs:
                self._fail(seq, e)
            return
        self.stats.rows[len(group.seqs)] += 1
        self.stats.adapter_steps[adapter] += 1
        logits = out.logits[:, -1]
        greedy = torch.argmax(logits.float(), dim=-1).tolist()  # one argmax for the plain greedy rows
        stay = [
            i
            for i, seq in enumerate(group.seqs)
            if not self._advance(
                seq,
                self._choose(seq, logits[i : i + 1]) if seq.processors or seq.settings.do_sample else greedy[i],
            )
        ]
        for i, seq in enumerate(group.seqs):
            if i not in stay:
                self._finish(seq)
        self._leave(adapter, group, stay)

    def _leave(self, adapter: str | None, group: _Group, stay: list[int]) -> None:
        """Keep only the `stay` rows of the group (cancelled sequences not in it are answered as they are)."""
        if len(stay) == len(group.seqs):
            return
        for i, seq in enumerate(group.seqs):
            if i not in stay and not seq.future.done():
                self._finish(seq, cancelled=True)
        if not stay:
            del self._groups[adapter]
            return
        group.seqs = [group.seqs[i] for i in stay]
        group.rows.keep(stay)

    def _choose(self, seq: _Seq, logits: Any) -> int:
        """The next token from one row of logits ([1, vocab]), as `generate` picks it."""
        import torch

        scores = logits.to(copy=True, dtype=torch.float32)
        if seq.processors:
            scores = seq.processors(torch.tensor([seq.prompt + seq.new], device=self._device), scores)
        if seq.settings.do_sample:
            probs = torch.nn.functional.softmax(scores, dim=-1)
            return int(torch.multinomial(probs, num_samples=1, generator=seq.generator))
        return int(torch.argmax(scores, dim=-1))

    def _advance(self, seq: _Seq, token: int) -> bool:
        """Append `token`; whether the sequence is done (EOS, max_tokens, a stop string, cancelled)."""
        import torch

        seq.new.append(token)
        if seq.streamer is not None:
            seq.streamer.put(torch.tensor([token]))
        if token in self._eos or len(seq.new) >= seq.settings.max_new_tokens or seq.cancel.is_set():
            return True
        if seq.stops:
            text = self.tokenizer.decode(seq.new, skip_special_tokens=True)
            return any(s in text for s in seq.stops)
        return False

    def _finish(self, seq: _Seq, cancelled: bool = False) -> None:
        """Answer the sequence with the rules of `generate_one`: text cut before the first stop string,
        finish_reason "stop" for EOS / a stop string / a cancel, "length" at max_tokens."""
        answer = finish_generation(
            self.tokenizer, seq.new, self._eos, seq.stops, len(seq.prompt), seq.settings.max_new_tokens, cancelled
        )
        _end(seq.streamer)
        _resolve(seq.future, answer)

    def _fail(self, seq: _Seq, error: BaseException) -> None:
        _end(seq.streamer)
        try:
            seq.future.set_exception(error)
        except InvalidStateError:
            pass


PREFILL_TOKENS = 4096  # padded prompt tokens prefilled in one forward pass (bounds its activations)


def _prefill_chunks(seqs: list[_Seq]) -> list[list[_Seq]]:
    """Prompts sorted by length, cut into forward passes of at most PREFILL_TOKENS padded tokens."""
    chunks: list[list[_Seq]] = []
    for seq in sorted(seqs, key=lambda s: len(s.prompt)):
        if chunks and (len(chunks[-1]) + 1) * len(seq.prompt) <= PREFILL_TOKENS:
            chunks[-1].append(seq)
        else:
            chunks.append([seq])
    return chunks


def logits_processors(model: Any, generate_kwargs: dict[str, Any], prompt_length: int, device: Any) -> Any:
    """The logits processors `model.generate(**generate_kwargs)` would apply to a prompt of this length.

    Built by transformers itself (pinned in `tunelab.compat.generation_logits_processors`), so batched
    answers follow the same rules as `generate`, including anything the model's generation_config.json
    adds (a repetition penalty, suppressed tokens).
    """
    from tunelab.compat import generation_logits_processors

    return generation_logits_processors(model, generate_kwargs, prompt_length, device)


def _forward_params(model: Any) -> set[str]:
    """The keyword arguments the causal LM's forward takes (under PEFT's wrapper, which passes them on)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(base.forward).parameters)


def _end(streamer: Any) -> None:
    if streamer is not None:
        streamer.end()


def _resolve(future: Future, value: Any) -> None:
    try:
        future.set_result(value)
    except InvalidStateError:  # cancelled by its waiter meanwhile
        pass
