"""Preference rows (training.method dpo | kto): checked, normalised, and tokenized into the columns
TRL's preference collators take.

A pair is a prompt in the run's format (Alpaca fields, a custom template's fields, or chat
messages) with a `chosen` and a `rejected` answer; KTO also takes single answers (`completion`
and a boolean `label`). Normalised rows keep the SFT shape with the preferred answer as the
response (`output`, the template's response field, or the last assistant turn), so samples, eval
and inference ask and judge them exactly like an SFT row.

Tokenizing renders `prompt + answer` with the same templates and the same BOS rule as SFT and
splits it where the answer starts: `prompt_ids` and `chosen_ids` / `rejected_ids` (DPO) or
`completion_ids` and `label` (KTO; a pair gives one desirable and one undesirable example, as
TRL's `unpair_preference_dataset` does).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tunelab.config.schema import PromptConfig
from tunelab.data.conversations import RowProblem, normalize_messages
from tunelab.data.templates import render_segments
from tunelab.data.tokens import adds_bos as tokenizer_adds_bos
from tunelab.data.tokens import loss_counter, needs_bos


def _answer_text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise RowProblem(f"field {name!r} should be a string, got {type(value).__name__}", f"bad_type_{name}")
    if not value.strip():
        raise RowProblem(f"empty field {name!r}", f"empty_{name}")
    return value


def _answer_turn(value: Any, name: str) -> tuple[list[dict] | None, dict]:
    """A chat answer given as text, one assistant message, or a whole conversation ending in one
    (its earlier turns are the prompt): (those earlier turns or None, the assistant message)."""
    if isinstance(value, str):
        return None, {"role": "assistant", "content": _answer_text(value, name)}
    msgs = value if isinstance(value, list) else [value]
    msgs, _ = normalize_messages(msgs, None, name)
    if msgs[-1]["role"] != "assistant":
        raise RowProblem(f"field {name!r}: the last turn should be the assistant's answer", f"bad_{name}")
    return (msgs[:-1] or None), msgs[-1]


def preference_row(row: dict[str, Any], cfg: PromptConfig, method: str) -> dict[str, Any]:
    """The normalised row, or RowProblem."""
    if method == "kto" and "label" in row and not any(k in row for k in ("completion", "chosen", "rejected")):
        row = _answer_as_completion(row, cfg)
    unpaired = method == "kto" and "completion" in row
    names = ("completion",) if unpaired else ("chosen", "rejected")
    for n in names:
        if row.get(n) is None:
            raise RowProblem(f"missing field {n!r}", f"missing_{n}")
    if unpaired:
        label = row.get("label")
        if not isinstance(label, bool) and label not in (0, 1):
            raise RowProblem("field 'label' should be true (desirable) or false (undesirable)", "bad_label")
        row = {**row, "label": bool(label)}
    if cfg.format == "messages":
        return _chat_row(row, names)
    answers = {n: _answer_text(row[n], n) for n in names}
    key = "output" if cfg.format == "alpaca" else cfg.response_field
    return {**row, key: answers[names[0]]}


def _answer_as_completion(row: dict[str, Any], cfg: PromptConfig) -> dict[str, Any]:
    """A KTO row that holds its answer where an SFT row does (LLaMA-Factory's `messages` + `label`: the
    last assistant turn; an Alpaca row's `output`) with that answer as its `completion`."""
    if cfg.format != "messages":
        key = "output" if cfg.format == "alpaca" else cfg.response_field
        return {**{k: v for k, v in row.items() if k != key}, "completion": row.get(key)}
    msgs = row.get("prompt", row.get("messages"))
    if not isinstance(msgs, list) or not msgs or not isinstance(msgs[-1], dict) or msgs[-1].get("role") != "assistant":
        raise RowProblem(
            "a KTO row (label) needs a completion: a 'completion' field, or messages ending in the assistant's answer",
            "missing_completion",
        )
    rest = {k: v for k, v in row.items() if k not in ("prompt", "messages")}
    return {**rest, "prompt": msgs[:-1], "completion": msgs[-1]}


def _chat_row(row: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    prompt = row.get("prompt", row.get("messages"))
    turns = {n: _answer_turn(row[n], n) for n in names}
    prefixes = [p for p, _ in turns.values() if p is not None]
    if prefixes and any(p != prefixes[0] for p in prefixes):
        raise RowProblem(f"fields {' and '.join(map(repr, names))} continue different conversations", "bad_pair")
    if prompt is None:
        prompt = prefixes[0] if prefixes else None
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise RowProblem("missing field 'prompt' (a string or a list of chat messages)", "missing_prompt")
    first = turns[names[0]][1]
    msgs, tools = normalize_messages([*prompt, first], row.get("tools"), "prompt")
    out = {k: v for k, v in row.items() if k != "prompt"}
    out.update({"messages": msgs, **{n: t for n, (_, t) in turns.items()}})
    if tools:
        out["tools"] = tools
    return out


def with_answer(row: dict[str, Any], cfg: PromptConfig, answer: Any) -> dict[str, Any]:
    """The row as an SFT row whose response is `answer` (text, or an assistant message for chat)."""
    if cfg.format == "messages":
        return {**row, "messages": [*row["messages"][:-1], answer]}
    return {**row, ("output" if cfg.format == "alpaca" else cfg.response_field): answer}


def _answers(row: dict[str, Any], method: str) -> list[tuple[str, Any, bool]]:
    """(column, answer, label) of the examples one row gives."""
    if "completion" in row and "chosen" not in row:
        return [("completion", row["completion"], row["label"])]
    if method == "kto":
        return [("completion", row["chosen"], True), ("completion", row["rejected"], False)]
    return [("chosen_ids", row["chosen"], True), ("rejected_ids", row["rejected"], False)]


def iter_pairs(raw, spec, tokenizer, counts: Counter, method: str, chunk: int = 500, by_source=None):
    """Yield batches of tokenized preference examples: {prompt_ids, chosen_ids, rejected_ids} (dpo)
    or {prompt_ids, completion_ids, label} (kto), with `origin` (the row's source) alongside.

    Every answer ends with EOS. A prompt that fills max_length leaves no answer token and is dropped
    (`no_response_tokens`), unless data.truncate_prompt is left: then the prompt keeps its last tokens
    (at least half of max_length, the rest for the longest answer; `prompt_truncated_left`). A longer
    prompt + answer is truncated (or dropped with data.too_long: drop). `counts` and `by_source` (per
    training source) count each, and the answer tokens truncation cut (`too_long_tokens_cut`).
    """

    max_len, eos = spec.max_length, tokenizer.eos_token_id
    cfg = spec.prompt.model_copy(update={"train_on": "response"})
    adds = tokenizer_adds_bos(tokenizer)
    for start in range(0, len(raw.rows), chunk):
        rows = raw.rows[start : start + chunk]
        examples = []  # (origin, prompt segments, [(column, answer text, label)])
        for i, row in enumerate(rows):
            prompt, answers = None, []
            for column, answer, label in _answers(row, method):
                segs = render_segments(with_answer(row, cfg, answer), cfg, tokenizer)
                if prompt is None:
                    prompt = segs[:-1]
                answers.append((column, segs[-1][0], label))
            origin = raw.origin[start + i] if raw.origin else 0
            examples.append((origin, prompt or [], answers))
        texts = [t for _, p, a in examples for t in [*(s for s, _ in p), *(x for _, x, _ in a)]]
        enc = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
        out: dict[str, list] = {"origin": [], "prompt_ids": []}
        for origin, prompt, answers in examples:
            p_ids = [tokenizer.bos_token_id] if prompt and needs_bos(tokenizer, prompt[0][0], adds) else []
            for _ in prompt:
                p_ids += next(enc)
            done = [(column, next(enc), label) for column, _, label in answers]
            done = [(c, ids if ids and ids[-1] == eos else [*ids, eos], label) for c, ids, label in done]
            lose = loss_counter(counts, by_source, origin)
            longest = max(len(ids) for _, ids, _ in done)
            if spec.truncate_prompt == "left" and len(p_ids) + longest > max_len:
                keep = max(max_len // 2, max_len - longest)
                if len(p_ids) > keep:
                    lose("prompt_truncated_left")
                    p_ids = _prompt_tail(p_ids, keep, tokenizer.bos_token_id)
            if len(p_ids) >= max_len:
                lose("no_response_tokens")
                continue
            room = max_len - len(p_ids)
            if any(len(ids) > room for _, ids, _ in done):
                if spec.too_long == "drop":
                    lose("too_long_dropped")
                    continue
                lose("too_long_truncated")
                lose("too_long_tokens_cut", sum(max(0, len(ids) - room) for _, ids, _ in done))
                done = [(c, ids[:room], label) for c, ids, label in done]
            if method == "kto":
                for _, ids, label in done:
                    for k, v in (("origin", origin), ("prompt_ids", p_ids), ("completion_ids", ids), ("label", label)):
                        out.setdefault(k, []).append(v)
            else:
                for k, v in (("origin", origin), ("prompt_ids", p_ids), *((c, ids) for c, ids, _ in done)):
                    out.setdefault(k, []).append(v)
        if out["prompt_ids"]:
            yield out


def _prompt_tail(p_ids: list[int], keep: int, bos: int | None) -> list[int]:
    """The last `keep` tokens of a prompt, behind its BOS when it starts with one (TRL's keep_end)."""
    if bos is not None and p_ids[:1] == [bos]:
        return [bos, *p_ids[len(p_ids) - keep + 1 :]]
    return p_ids[len(p_ids) - keep :]


def example_tokens(batch: dict[str, list], i: int) -> tuple[int, int]:
    """(tokens forwarded, answer tokens) of example i of a batch: the prompt goes in with every answer."""
    answers = [batch[c][i] for c in ("chosen_ids", "rejected_ids", "completion_ids") if c in batch]
    p = len(batch["prompt_ids"][i])
    return sum(p + len(a) for a in answers), sum(len(a) for a in answers)
