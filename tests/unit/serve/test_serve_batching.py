"""Continuous batching in tunelab serve (issue 16): rows of a padded KV cache join and leave, concurrent
requests really share forward passes, every request keeps its own settings and adapter, streaming
works through the openai client, and --max-batch 1 is the one-at-a-time engine."""

from __future__ import annotations

import asyncio
import threading
import time
import types
from pathlib import Path

import openai
import pytest
import torch

from inference_support import fresh_adapter, one_torch_thread, running_server  # noqa: F401 (autouse fixture)

PROMPTS = [
    "Below is an instruction.\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:\n",
    "cat dog sun",
    "Reverse the order of the words: one two three four five six seven eight nine ten",
    "Q: uppercase the word apple\nA:",
    "hello",
    "The quick brown fox jumps over the lazy dog. " * 4,
]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: fresh_adapter(root / name, tiny_model_dir, seed) for seed, name in enumerate(["a", "b"])}


@pytest.fixture(scope="module")
def engine(adapters):
    """Adapters a and b over the tiny base (served too, under its folder path), batched."""
    from tunelab.serve.engine import load_engine

    eng = load_engine(str(adapters["a"]), [f"b={adapters['b']}"], name="a", max_batch=8)
    yield eng
    eng.close()


def base_id(engine) -> str:
    return next(m.id for m in engine.models.values() if m.adapter is None)


def alone(target: str, prompt: str, settings, stop=()) -> str:
    """The answer of the model loaded on its own, one `generate` call (today's single-request path)."""
    from tunelab.inference.generate import encode_prompt, generate_one
    from tunelab.inference.target import load_target, resolve_target

    key = (target, prompt, repr(settings), tuple(stop))
    if key not in _ALONE:
        if target not in _MODELS:
            _MODELS[target] = load_target(resolve_target(target))
        model, tok = _MODELS[target]
        _ALONE[key] = generate_one(model, tok, encode_prompt(tok, prompt), settings, stop=stop)
    return _ALONE[key]


_MODELS: dict = {}
_ALONE: dict = {}


def settings(max_new: int = 12, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0):
    from tunelab.inference.generate import GenerationSettings

    return GenerationSettings(
        max_new_tokens=max_new,
        do_sample=temperature > 0,
        temperature=temperature or 1.0,
        top_p=top_p,
        batch_size=1,
        seed=seed,
    )


def middle_stop(text: str) -> str:
    """Two printable ASCII characters from the middle of `text`, first occurring there. (transformers'
    token-level stop strings miss a stop that holds a byte-fallback "\ufffd"; the batcher matches the
    decoded text, so it would stop earlier and count fewer tokens.)"""
    for i in range(len(text) // 3, len(text) - 1):
        stop = text[i : i + 2]
        if stop.isascii() and stop.isprintable() and text.find(stop) == i:
            return stop
    pytest.fail(f"no stop string to take from {text!r}")


async def together(engine, jobs):
    """All jobs (served id, prompt, settings, stop) submitted at once; their Generations in order."""
    return await asyncio.gather(
        *[engine.generate(engine.models[mid], engine.encode(p), s, stop) for mid, p, s, stop in jobs]
    )


# --- the padded cache -----------------------------------------------------------------------------------


def test_rows_that_join_and_leave_decode_as_they_would_alone(tiny_model_dir):
    from transformers import AutoModelForCausalLM, DynamicCache

    from tunelab.serve.batch_cache import Rows

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts = [[1, 5, 9, 200, 31], [1, 77], [1, 300, 301, 302, 303, 304, 305, 306]]

    def prefill(ids):
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
        return Rows(cache, torch.ones(1, len(ids), dtype=torch.long)), int(out.logits[0, -1].argmax())

    def step(rows, tokens):
        pos = rows.positions()
        mask = rows.grow()
        with torch.inference_mode():
            return model(
                input_ids=torch.tensor(tokens)[:, None],
                attention_mask=mask,
                position_ids=pos,
                cache=rows.cache,
                use_cache=True,
            ).logits[:, -1]

    singles = [prefill(p) for p in prompts]
    alone = [step(*prefill(p)[:1], [tok]) for p, (_, tok) in zip(prompts, singles, strict=True)]
    rows = singles[0][0]
    rows.join(singles[1][0])
    rows.join(singles[2][0])
    assert rows.mask.shape == (3, 8) and rows.mask.sum(dim=1).tolist() == [5, 2, 8]
    assert rows.positions().flatten().tolist() == [5, 2, 8]
    batched = step(rows, [tok for _, tok in singles])
    for i in range(3):
        torch.testing.assert_close(batched[i], alone[i][0], rtol=1e-4, atol=1e-4)
    # the longest row leaves: the columns only it used are dropped, the others keep their tokens
    rows.keep([0, 1])
    assert rows.mask.shape == (2, 6) and rows.mask.sum(dim=1).tolist() == [6, 3]
    assert all(k.shape[0] == 2 and k.shape[-2] == 6 for k, _v, *_ in rows.cache)


def test_models_whose_cache_cannot_be_stacked_are_served_one_at_a_time():
    from transformers import LlamaConfig, MistralConfig

    from tunelab.serve.batch_cache import batching_unsupported

    shape = dict(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    assert batching_unsupported(types.SimpleNamespace(config=LlamaConfig(**shape))) is None
    reason = batching_unsupported(types.SimpleNamespace(config=MistralConfig(sliding_window=16, **shape)))
    assert reason and "DynamicSlidingWindowLayer" in reason


def test_logits_processors_are_the_ones_generate_builds(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer, TemperatureLogitsWarper, TopPLogitsWarper

    from tunelab.inference.generate import generate_kwargs
    from tunelab.serve.batching import logits_processors

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert len(logits_processors(model, generate_kwargs(model, tok, settings()), 5, "cpu")) == 0
    sampled = logits_processors(model, generate_kwargs(model, tok, settings(temperature=0.7, top_p=0.9)), 5, "cpu")
    assert [type(p) for p in sampled] == [TemperatureLogitsWarper, TopPLogitsWarper]
    assert sampled[0].temperature == 0.7 and sampled[1].top_p == 0.9
    fixed = logits_processors(
        model, generate_kwargs(model, tok, settings().model_copy(update={"ignore_eos": True})), 5, "cpu"
    )
    assert [type(p).__name__ for p in fixed] == ["MinNewTokensLengthLogitsProcessor"]  # generate's EOS suppression


# --- the scheduler ----------------------------------------------------------------------------------------


def test_concurrent_requests_share_forward_passes_and_keep_their_settings(engine, adapters):
    base = base_id(engine)
    jobs = [("a", p, settings(), ()) for p in PROMPTS]
    jobs += [
        ("a", PROMPTS[0], settings(max_new=3), ()),  # max_tokens
        ("a", PROMPTS[2], settings(temperature=0.9, top_p=0.8, seed=7), ()),  # sampled, seeded
        ("a", PROMPTS[2], settings(temperature=0.9, top_p=0.8, seed=7), ()),  # the same seed in the same batch
        ("a", PROMPTS[2], settings(temperature=1.3, seed=8), ()),
    ]
    reference = [alone(str(adapters["a"]), p, s, stop) for _, p, s, stop in jobs]
    # a stop string taken from the middle of a greedy answer
    text = reference[2].text
    stop = middle_stop(text)
    jobs.append(("a", PROMPTS[2], settings(), (stop,)))
    reference.append(alone(str(adapters["a"]), PROMPTS[2], settings(), (stop,)))
    jobs.append((base, PROMPTS[1], settings(), ()))
    reference.append(alone(_base_dir(adapters), PROMPTS[1], settings()))

    before = engine.scheduler.stats.steps
    answers = asyncio.run(together(engine, jobs))
    stats = engine.scheduler.stats
    assert stats.steps > before and 1 < stats.max_rows <= 8  # batched, never above --max-batch
    assert max(stats.prefill_rows) > 1  # prompts prefilled together
    same = [a == r for a, r in zip(answers, reference, strict=True)]
    print(f"identical to single-request answers: {sum(same)}/{len(same)}")
    # a batch computes other matmul shapes than a lone request; on this model none flipped a token (12/12),
    # one is allowed for CPUs whose kernels round differently
    assert sum(same) >= len(jobs) - 1, [
        (j[1][:20], a, r) for j, a, r, ok in zip(jobs, answers, reference, same, strict=True) if not ok
    ]
    assert answers[6].completion_tokens == 3 and answers[6].finish_reason == "length"
    assert answers[7].text == answers[8].text  # a seed is per request
    assert answers[10].text == text[: text.find(stop)] and answers[10].finish_reason == "stop"
    assert len({a.text for a in answers[:6]}) >= 4


def test_ignore_eos_generates_max_tokens_past_an_end_token(engine, adapters, monkeypatch):
    """vLLM's ignore_eos (the serving benchmark's fixed-length answers): the scheduler's processors are
    `generate`'s own, min_new_tokens' EOS suppression included. The greedy first token is made an end token here,
    so without the setting every answer stops at once and with it each runs to max_tokens."""
    import torch

    from tunelab.inference.generate import encode_prompt

    target = str(adapters["a"])
    alone(target, PROMPTS[0], settings(max_new=1))  # loads the model on its own
    model, tok = _MODELS[target]
    with torch.no_grad():
        first = int(model(torch.tensor([encode_prompt(tok, PROMPTS[0])])).logits[0, -1].argmax())
    from tunelab.inference import generate

    stops = [*engine.scheduler._eos, first]
    monkeypatch.setattr(engine.scheduler, "_eos", set(stops))
    monkeypatch.setattr(generate, "stop_token_ids", lambda model, tokenizer: stops)  # what generate_kwargs passes
    plain = settings(max_new=10)
    forced = plain.model_copy(update={"ignore_eos": True})
    stopped, *full = asyncio.run(
        together(engine, [("a", PROMPTS[0], plain, ()), ("a", PROMPTS[0], forced, ()), ("a", PROMPTS[1], forced, ())])
    )
    assert stopped.finish_reason == "stop" and stopped.completion_tokens <= 1
    assert all(a.completion_tokens == 10 and a.finish_reason == "length" for a in full), full


def _base_dir(adapters) -> str:
    import json

    return json.loads((adapters["a"] / "adapter_config.json").read_text())["base_model_name_or_path"]


def test_adapters_in_flight_at_once_each_answer_with_their_own(engine, adapters):
    base = base_id(engine)
    targets = {"a": str(adapters["a"]), "b": str(adapters["b"]), base: _base_dir(adapters)}
    jobs = [(mid, p, settings(), ()) for p in PROMPTS[:4] for mid in targets]
    reference = [alone(targets[mid], p, s) for mid, p, s, _ in jobs]
    assert len({(r.text) for r in reference[:3]}) == 3  # the three models answer differently, so a mix-up shows
    steps = dict(engine.scheduler.stats.adapter_steps)
    answers = asyncio.run(together(engine, jobs))
    after = engine.scheduler.stats.adapter_steps
    assert all(after[a] > steps.get(a, 0) for a in ("a", "b", None))  # every adapter decoded, each in its own steps
    same = sum(a == r for a, r in zip(answers, reference, strict=True))
    print(f"identical to single-request answers: {same}/{len(jobs)}")
    assert same >= len(jobs) - 1, (answers, reference)


def test_no_adapter_starves_another(adapters):
    """--max-batch 2. A request for b that finds a's request decoding runs next to it (steps alternate
    between adapters), and one that finds the batch full is admitted before a's requests that came
    after it (first come, first served across adapters)."""
    from tunelab.serve.engine import load_engine

    eng = load_engine(str(adapters["a"]), [f"b={adapters['b']}"], name="a", max_batch=2)
    done: list[tuple[str, int]] = []

    async def one(label, mid, max_new):
        gen = await eng.generate(eng.models[mid], eng.encode(PROMPTS[3]), settings(max_new=max_new))
        done.append((label, gen.completion_tokens))

    async def started(n):
        while eng.scheduler.in_flight() < n:
            await asyncio.sleep(0.005)

    async def run():
        long = asyncio.create_task(one("a-long", "a", 300))
        await started(1)
        await one("b-next-to-it", "b", 8)
        assert done == [("b-next-to-it", 8)]  # finished while a's 300 tokens were still going
        tasks = [long, asyncio.create_task(one("a-second", "a", 300))]
        await started(2)
        tasks.append(asyncio.create_task(one("b-queued", "b", 8)))
        await asyncio.sleep(0.01)
        tasks += [asyncio.create_task(one(f"a-later{i}", "a", 8)) for i in range(3)]
        await asyncio.gather(*tasks)

    try:
        asyncio.run(run())
    finally:
        eng.close()
    assert eng.scheduler.stats.max_rows <= 2
    order = [label for label, _ in done]
    assert dict(done)["a-long"] == 300, done  # the premise: a's request really was long
    assert order.index("b-queued") < min(order.index(f"a-later{i}") for i in range(3)), order


def test_max_batch_1_is_the_one_at_a_time_engine(adapters):
    from tunelab.serve.engine import load_engine

    eng = load_engine(str(adapters["a"]), name="a", max_batch=1)
    try:
        assert eng.scheduler is None and eng.max_batch == 1
        jobs = [("a", p, settings(), ()) for p in PROMPTS] + [("a", PROMPTS[2], settings(temperature=0.9, seed=3), ())]
        answers = asyncio.run(together(eng, jobs))
    finally:
        eng.close()
    assert answers == [alone(str(adapters["a"]), p, s) for _, p, s, _ in jobs]  # exactly today's answers


def test_close_answers_running_requests_and_cancels_queued_ones(adapters):
    from tunelab.serve.engine import load_engine

    eng = load_engine(str(adapters["a"]), name="a", max_batch=2)

    async def run():
        tasks = [
            asyncio.create_task(eng.generate(eng.models["a"], eng.encode(PROMPTS[3]), settings(max_new=400)))
            for _ in range(3)
        ]
        while eng.scheduler.in_flight() < 2:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(eng.close)
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(run())
    assert [r.finish_reason for r in results[:2]] == ["stop", "stop"] and all(
        0 < r.completion_tokens < 400 for r in results[:2]
    )
    assert isinstance(results[2], asyncio.CancelledError)


# --- through the server ------------------------------------------------------------------------------------


def test_streaming_under_batching_through_the_openai_client(engine):
    with running_server(engine) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        whole = {
            (mid, p): client.completions.create(model=mid, prompt=p, max_tokens=12, temperature=0).choices[0].text
            for mid in ("a", "b")
            for p in PROMPTS[:3]
        }
        text = whole[("a", PROMPTS[2])]
        stop = middle_stop(text)
        results: dict = {}
        barrier = threading.Barrier(len(whole))

        def ask(key, stop=None):
            c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
            barrier.wait()
            chunks = c.completions.create(
                model=key[0], prompt=key[1], max_tokens=12, temperature=0, stream=True, stop=stop
            )
            results[key if stop is None else "stop"] = "".join(ch.choices[0].text for ch in chunks)

        threads = [threading.Thread(target=ask, args=(k,)) for k in whole]
        steps = engine.scheduler.stats.rows.copy()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert {k: results[k] for k in whole} == whole
        assert max((n for n in engine.scheduler.stats.rows if engine.scheduler.stats.rows[n] > steps[n]), default=0) > 1

        # stop-string holdback still works while batched
        chunks = client.completions.create(
            model="a", prompt=PROMPTS[2], max_tokens=12, temperature=0, stream=True, stop=[stop]
        )
        assert "".join(ch.choices[0].text for ch in chunks) == text[: text.find(stop)]

        # a client that leaves mid-stream frees its row
        import httpx

        with httpx.stream(
            "POST",
            f"{url}/v1/completions",
            json={"model": "a", "prompt": PROMPTS[3], "max_tokens": 400, "temperature": 0, "stream": True},
        ) as r:
            assert next(r.iter_lines()).startswith("data: {")
        deadline = time.monotonic() + 10
        while engine.scheduler.in_flight() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.scheduler.in_flight() == 0


def test_a_failed_forward_pass_fails_its_requests_and_the_server_goes_on(adapters, monkeypatch):
    from tunelab.serve import batching
    from tunelab.serve.engine import load_engine

    eng = load_engine(str(adapters["a"]), name="a", max_batch=4)
    real_step = batching.BatchScheduler._step
    calls = {"n": 0}

    def flaky_step(self, adapter, group):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom in the loop")
        return real_step(self, adapter, group)

    monkeypatch.setattr(batching.BatchScheduler, "_step", flaky_step)
    try:
        first = asyncio.run(together(eng, [("a", p, settings(max_new=20), ()) for p in PROMPTS[:3]]))
    except RuntimeError as e:
        assert "boom in the loop" in str(e)
    else:
        pytest.fail(f"the failure was not passed on: {first}")
    again = asyncio.run(together(eng, [("a", PROMPTS[0], settings(), ())]))
    eng.close()
    assert again[0] == alone(str(adapters["a"]), PROMPTS[0], settings())
