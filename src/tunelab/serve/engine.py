"""The model behind `tunelab serve`: one base, any number of LoRA adapters, batched generation.

One worker thread is the only code that touches the model, so no request ever runs with another's
adapter or sees another's tokens. With `max_batch` > 1 (the default) it is the continuous-batching
scheduler of `tunelab.serve.batching`: concurrent requests decode together, up to `max_batch`
sequences at once. Batched greedy answers can differ from single-request ones in rare near-ties
(a batch of rows runs other matmul shapes and left padding, which round differently in the last
digits). `max_batch` 1 keeps the one-at-a-time queue: each request is one `generate` call, exactly
the answers `tunelab generate` gives.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from tunelab.config.schema import PromptConfig
from tunelab.errors import TunelabError
from tunelab.inference.generate import Generation, GenerationSettings, context_length, encode_prompt, generate_one
from tunelab.inference.target import Target, base_model_id, load_target, resolve_target
from tunelab.model.dense import generation_weights, generation_weights_fit

log = logging.getLogger("tunelab.serve")
DEFAULT_MAX_BATCH = 16


@dataclass
class ServedModel:
    """One id in /v1/models."""

    id: str
    adapter: str | None  # PEFT adapter name; None: the base weights (adapters disabled)
    prompt: PromptConfig | None  # the run's prompt format; None: chat template / raw text
    source: str
    created: int = field(default_factory=lambda: int(time.time()))


class Engine:
    """`max_batch`: the most sequences decoding at once (1: one `generate` call at a time).

    A model whose KV cache cannot be padded and stacked (sliding-window or linear-attention layers)
    is served one at a time, with a warning; `batching_off` says why."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        models: list[ServedModel],
        max_context: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ):
        from tunelab.serve.batch_cache import batching_unsupported
        from tunelab.serve.batching import BatchScheduler

        if max_batch < 1:
            raise TunelabError(f"--max-batch: {max_batch} must be at least 1")
        self.model = model
        self.tokenizer = tokenizer
        self.models = {m.id: m for m in models}
        self.context_length = max_context or context_length(model)
        # No token covers more characters than the longest vocabulary entry, so a prompt longer than
        # this cannot fit the context: the server refuses it without spending seconds tokenizing it.
        self.prompt_char_limit = self.context_length * max(map(len, tokenizer.get_vocab()), default=1)
        self._running: set[threading.Event] = set()
        # dense, LoRA-merged weights for the engine's lifetime (built once, not per request), when they fit
        self._weights = ExitStack()
        # (each served adapter may keep its own merged copy, so they share the memory allowance)
        adapters = sum(m.adapter is not None for m in models)
        self._weights.enter_context(
            generation_weights(model, generation_weights_fit(model, share=0.25 / max(1, adapters)))
        )
        self.batching_off = batching_unsupported(model) if max_batch > 1 else None
        if self.batching_off:
            log.warning("serving one request at a time: %s", self.batching_off)
        self.max_batch = 1 if self.batching_off else max_batch
        self._executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunelab-engine") if self.max_batch == 1 else None
        )
        self.scheduler = BatchScheduler(model, tokenizer, self.max_batch, self._adapter) if self.max_batch > 1 else None

    def encode(self, prompt: str) -> list[int]:
        return encode_prompt(self.tokenizer, prompt)

    async def generate(
        self,
        served: ServedModel,
        input_ids: Sequence[int],
        settings: GenerationSettings,
        stop: Sequence[str] = (),
        streamer: Any = None,
        cancel: threading.Event | None = None,
    ) -> Generation:
        """Queue one generation and wait for it; cancelling the wait stops it at the next token."""
        cancel = cancel or threading.Event()
        if self.scheduler is not None:
            job = asyncio.wrap_future(
                self.scheduler.submit(served.adapter, input_ids, settings, stop, streamer, cancel)
            )
        else:
            job = asyncio.get_running_loop().run_in_executor(
                self._executor, self._generate, served, input_ids, settings, stop, streamer, cancel
            )
        try:
            return await job
        except asyncio.CancelledError:
            cancel.set()
            raise

    def _generate(self, served, input_ids, settings, stop, streamer, cancel) -> Generation:
        # runs on the worker thread, one job at a time
        self._running.add(cancel)
        try:
            with self._adapter(served.adapter):
                return generate_one(
                    self.model,
                    self.tokenizer,
                    input_ids,
                    settings,
                    stop=stop,
                    streamer=streamer,
                    cancel=cancel,
                    dense_weights=False,
                )  # the engine's own dense weights are already in place
        except BaseException:
            if streamer is not None:
                streamer.end()  # a consumer waiting on the stream must not hang
            raise
        finally:
            self._running.discard(cancel)

    @contextmanager
    def _adapter(self, adapter: str | None):
        """`adapter` active for the block (None: the base, adapters disabled); runs on the worker thread only."""
        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            yield
        elif adapter is None:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(adapter)
            yield

    def close(self) -> None:
        """Stop the generations in progress at their next token, drop queued ones, wait for the worker."""
        if self.scheduler is not None:
            self.scheduler.close()
        else:
            for cancel in list(self._running):
                cancel.set()
            self._executor.shutdown(wait=True, cancel_futures=True)
        self._weights.close()


def parse_adapter_spec(spec: str) -> tuple[str, str]:
    """`name=PATH` -> (name, PATH)."""
    name, sep, path = spec.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise TunelabError(f"--adapter {spec!r}: expected NAME=PATH, e.g. --adapter support=runs/support")
    return name.strip(), path.strip()


@dataclass
class ServePlan:
    """What a server for TARGET and its `--adapter`s serves, before any weights are loaded."""

    target: Target
    target_id: str  # the target's model id (its adapter's name when it is a LoRA adapter)
    extras: list[tuple[str, Target]]  # (model id, adapter target) of each --adapter NAME=PATH
    models: list[ServedModel]


def plan_models(
    target_text: str, adapters: Sequence[str] = (), name: str | None = None, trust_remote_code: bool = False
) -> ServePlan:
    """Resolve TARGET and each `name=PATH` adapter over the same base, and name the models served.

    Model ids: the target under `name` (default: the run's or folder's name); when the target is a
    LoRA adapter, its base too (under the base model's name, adapters disabled); each extra adapter
    under its given name. Both backends (tunelab's engine, vLLM) serve these ids.
    """
    from tunelab.model.resolve import resolve_model_path

    target = resolve_target(target_text, trust_remote_code)
    extras: list[tuple[str, Target]] = []
    for spec in adapters:
        adapter_name, path = parse_adapter_spec(spec)
        t = resolve_target(path, trust_remote_code)
        if t.adapter is None:
            raise TunelabError(
                f"--adapter {adapter_name}={path}: not a LoRA adapter (a full model)",
                hint="serve full models on their own",
            )
        if resolve_model_path(t.base) != resolve_model_path(target.base):
            raise TunelabError(
                f"--adapter {adapter_name}={path}: trained on {t.base}, but the server's base is {target.base}"
            )
        extras.append((adapter_name, t))

    target_id = name or target.name
    models: list[ServedModel] = []
    if target.adapter is not None:
        models.append(ServedModel(base_model_id(target), None, None, target.base))
        models.append(ServedModel(target_id, target_id, _prompt(target), str(target.adapter)))
    else:
        models.append(ServedModel(target_id, None, _prompt(target), target.base))
    models += [ServedModel(n, n, _prompt(t), str(t.adapter)) for n, t in extras]
    ids = [m.id for m in models]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise TunelabError(
            f"two served models are both named {', '.join(dupes)}",
            hint="name them apart with --name and --adapter NAME=PATH",
        )
    return ServePlan(target, target_id, extras, models)


def load_engine(
    target_text: str,
    adapters: Sequence[str] = (),
    name: str | None = None,
    quantize: bool | None = None,
    device: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    trust_remote_code: bool = False,
) -> Engine:
    """Load the models `plan_models` names over one base (each adapter next to the others) for serving."""
    plan = plan_models(target_text, adapters, name, trust_remote_code)
    model, tokenizer = load_target(plan.target, quantize=quantize, device=device, adapter_name=plan.target_id)
    if plan.extras:
        from peft import PeftModel

        for adapter_name, t in plan.extras:
            if isinstance(model, PeftModel):
                model.load_adapter(str(t.adapter), adapter_name=adapter_name)
            else:
                model = PeftModel.from_pretrained(model, str(t.adapter), adapter_name=adapter_name)
        model.eval()
    return Engine(model, tokenizer, plan.models, max_batch=max_batch)


def _prompt(target: Target) -> PromptConfig | None:
    return target.prompt if target.prompt_known else None
