"""The data pipeline: read, validate, split, mix, select, render, tokenize (with label masks), cache.

The result is a pair of Arrow datasets with `input_ids` and `labels` (-100 where no loss is taken),
which TRL's SFTTrainer packs as it is (its `wrapped` strategy for `training.packing: blocks`, its
`bfd_split` for `data.too_long: split`: examples then stay whole here), or, for preference methods, `prompt_ids` with
`chosen_ids` / `rejected_ids` (or `completion_ids` / `label`) for TRL's preference collators.
Tokenized data is cached on disk under a key made of the data's content digest, the data / prompt
settings and the tokenizer's fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.cache import cache_root
from tunelab.config.schema import PromptConfig, RunConfig
from tunelab.data.sources import RawRows, read_source
from tunelab.data.templates import render_segments
from tunelab.data.tokens import adds_bos as tokenizer_adds_bos
from tunelab.data.tokens import loss_counter, needs_bos
from tunelab.data.validate import validate_rows
from tunelab.errors import ConfigError, DataError

CACHE_VERSION = "5"


@dataclass(frozen=True)
class TokenSpec:
    """What tokenizing needs from a run config: the prompt format, the length limit and what to do beyond it."""

    prompt: PromptConfig
    max_length: int
    too_long: str = "truncate"
    whole: bool = False  # examples keep their length: TRL's packing cuts them (packing: blocks, too_long: split)
    on_bad_row: str = "error"  # a conversation the chat template refuses: a file:line error, or skipped and counted
    truncate_prompt: str = "none"  # preference pairs: left = a long prompt loses its first tokens, not the pair

    @classmethod
    def of(cls, cfg: RunConfig) -> TokenSpec:
        d = cfg.data
        whole = cfg.training.method == "sft" and (cfg.training.packing == "blocks" or d.too_long == "split")
        return cls(cfg.prompt, cfg.training.max_length, d.too_long, whole, d.on_bad_row, d.truncate_prompt)


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset with input_ids, labels
    test: Any | None
    test_rows: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)
    cache_hit: bool = False
    train_rows: list[dict[str, Any]] = field(default_factory=list)  # training.method grpo: the prompts it samples


def read_validated(src, cfg: RunConfig, home, label: str = "data.train"):
    """One source's rows, read and validated with its own field map and row shape."""
    d = cfg.data
    field_map = src.field_map if src.field_map is not None else d.field_map
    raw = read_source(src, d.on_bad_row, home)
    method = cfg.training.row_method
    return validate_rows(raw, cfg.prompt, field_map, d.on_bad_row, src.path, shape=src, method=method)


def load_splits(cfg: RunConfig, home=None) -> tuple[RawRows, RawRows, dict[str, Any]]:
    """Validated train and test rows (no tokenizer needed: `tunelab validate` uses this too).

    `home` (a `tunelab.artifacts.Home`) is where artifact references among the sources resolve;
    default the config's own tracking directory. Several training sources (or one with `rows`) are
    mixed by `load_mixture`; one source is read exactly as it always was."""
    if home is None:
        from tunelab.artifacts import Home

        home = Home.of(cfg)
    d = cfg.data
    if d.is_mixture:
        return load_mixture(cfg, home)
    src = d.train_sources[0]
    train = read_validated(src, cfg, home)
    rows_read = len(train.rows) + sum(train.skipped.values())
    notes = list(train.notes)
    if not train.rows:
        raise DataError(no_rows_message(src.path, train), hint=_no_rows_hint(train))
    if d.test is not None:
        test = read_validated(d.test, cfg, home, "data.test")
        notes += test.notes
        rows_read += len(test.rows) + sum(test.skipped.values())
        if not test.rows:
            raise DataError(no_rows_message(d.test.path, test, "data.test"), hint=_no_rows_hint(test))
    elif d.test_size is not None:
        n_test = test_count(d.test_size, train, src, "data.test_size")
        order = list(range(len(train.rows)))
        random.Random(d.seed).shuffle(order)
        test = _subset(train, sorted(order[:n_test]))
        train = _subset(train, sorted(order[n_test:]), skipped=train.skipped)
    else:
        test = RawRows()
    if d.shuffle:
        order = list(range(len(train.rows)))
        random.Random(d.seed).shuffle(order)
        train = _subset(train, order, skipped=train.skipped)
    if d.train_rows is not None:
        train = _subset(train, range(min(d.train_rows, len(train.rows))), skipped=train.skipped)
    if d.test_rows is not None:
        test = _subset(test, range(min(d.test_rows, len(test.rows))), skipped=test.skipped)
    if not train.rows:
        raise DataError(f"{src.path}: no usable training rows (skipped: {dict(train.skipped) or 'none'})")
    skipped = train.skipped + test.skipped
    stats = {
        "rows_read": rows_read,
        "rows_skipped": dict(skipped),
        "train_rows": len(train.rows),
        "test_rows": len(test.rows),
    }
    if notes:
        stats["format_notes"] = notes
    return train, test, stats


def load_mixture(cfg: RunConfig, home) -> tuple[RawRows, RawRows, dict[str, Any]]:
    """Training rows drawn from several sources: `rows: N` exactly N from a source, `weight`s share
    data.train_rows (or, without it, the largest total no source has to repeat a row for) in
    proportion, counted exactly (largest remainders); sources without either give all their rows.

    Each source's test rows are carved from it first (its `test_size`, else data.test_size); rows
    are drawn from the rest without replacement, seeded, repeating a source only when it has fewer
    rows than asked. Every row remembers its source (`origin`), so tokens are counted per source."""
    d = cfg.data
    srcs = d.train_sources
    parts, notes, per_source, prints = [], [], [], []
    skipped: Counter = Counter()
    for i, src in enumerate(srcs):
        label = f"data.train[{i}]"
        raw = read_validated(src, cfg, home, label)
        notes += raw.notes
        skipped += raw.skipped
        dropped = sum(raw.skipped.values())
        read = len(raw.rows) + dropped
        if not raw.rows:
            raise DataError(no_rows_message(src.path, raw, label), hint=_no_rows_hint(raw))
        test_size = src.test_size if src.test_size is not None else d.test_size
        test = RawRows()
        if test_size is not None:
            field = f"{label}.test_size" if src.test_size is not None else "data.test_size"
            n_test = test_count(test_size, raw, src, field, f" in {src.path}")
            order = list(range(len(raw.rows)))
            random.Random(d.seed + i).shuffle(order)
            test = _subset(raw, sorted(order[:n_test]), origin=i)
            raw = _subset(raw, sorted(order[n_test:]), origin=i)
        parts.append((raw, test))
        prints.append(raw.fingerprint)
        per_source.append(
            {"path": src.path, "weight": src.weight, "rows": src.rows, "rows_read": read, "rows_skipped": dropped}
        )
    counts = mixture_counts([len(r.rows) for r, _ in parts], srcs, d.train_rows)
    digest = hashlib.sha256("|".join(prints).encode()).hexdigest()  # the selection itself follows from the config
    train, test = RawRows(skipped=skipped, fingerprint=digest), RawRows(fingerprint=digest)
    for i, ((raw, held), n) in enumerate(zip(parts, counts, strict=True)):
        order = list(range(len(raw.rows)))
        random.Random(d.seed + 1000 + i).shuffle(order)
        for k in range(n):
            j = order[k % len(order)]
            train.add(raw.rows[j], raw.where[j], i)
        for row, where in zip(held.rows, held.where, strict=True):
            test.add(row, where, i)
        per_source[i].update(train_rows=n, test_rows=len(held.rows), repeated_rows=max(0, n - len(raw.rows)))
        if n > len(raw.rows):
            notes.append(
                f"data.train[{i}]: {srcs[i].path} has {len(raw.rows)} training rows; {n} were asked, so "
                f"{n - len(raw.rows)} repeat"
            )
    test_read = 0
    if d.test is not None:
        held = read_validated(d.test, cfg, home, "data.test")
        notes += held.notes
        skipped += held.skipped
        test_read = len(held.rows) + sum(held.skipped.values())
        test.fingerprint = hashlib.sha256(f"{digest}|{held.fingerprint}".encode()).hexdigest()
        if not held.rows:
            raise DataError(no_rows_message(d.test.path, held, "data.test"), hint=_no_rows_hint(held))
        for row, where in zip(held.rows, held.where, strict=True):
            test.add(row, where, -1)
    if d.shuffle:
        for raw, seed in ((train, d.seed), (test, d.seed + 1)):
            order = list(range(len(raw.rows)))
            random.Random(seed).shuffle(order)
            shuffled = _subset(raw, order, skipped=raw.skipped)
            raw.rows, raw.where, raw.origin = shuffled.rows, shuffled.where, shuffled.origin
    weighted = any(s.weight is not None for s in srcs)
    if d.train_rows is not None and not weighted:
        train = _subset(train, range(min(d.train_rows, len(train.rows))), skipped=train.skipped)
    if d.test_rows is not None:
        test = _subset(test, range(min(d.test_rows, len(test.rows))))
    if not train.rows:
        raise DataError(f"data.train: no usable training rows (skipped: {dict(skipped) or 'none'})")
    for i, info in enumerate(per_source):  # what was kept after data.train_rows / data.test_rows
        info["train_rows"] = train.origin.count(i)
        info["test_rows"] = test.origin.count(i)
    stats = {
        "rows_read": sum(s["rows_read"] for s in per_source) + test_read,
        "rows_skipped": dict(skipped),
        "train_rows": len(train.rows),
        "test_rows": len(test.rows),
        "sources": per_source,
    }
    if notes:
        stats["format_notes"] = notes
    return train, test, stats


def test_count(test_size: float | int, raw: RawRows, src, field: str, where: str = "") -> int:
    """How many of a source's rows `test_size` (a fraction or a count) carves for testing; a DataError
    when that leaves no train or no test row (for whole .txt files, saying how to cut them into documents)."""
    n = len(raw.rows)
    n_test = int(round(test_size * n)) if test_size < 1 else int(test_size)
    if 0 < n_test < n:
        return n_test
    whole_files = src.documents == "file" and all(".txt:" in w for w in raw.where)
    cut = " (each .txt file is one document: set data.train.documents: lines or blank_lines)" if whole_files else ""
    raise DataError(
        f"{field}: {test_size} leaves no train or no test rows out of {n}{where}{cut}",
        hint="or name a test file in data.test" if whole_files else None,
    )


def mixture_counts(available: list[int], srcs, total: int | None) -> list[int]:
    """Training rows to draw from each source (see `load_mixture`)."""
    counts = [
        s.rows if s.rows is not None else (n if s.weight is None else 0) for s, n in zip(srcs, available, strict=True)
    ]
    weighted = [i for i, s in enumerate(srcs) if s.weight is not None]
    if not weighted:
        return counts
    w = sum(srcs[i].weight for i in weighted)
    share = {i: srcs[i].weight / w for i in weighted}
    if total is not None:
        pool = total - sum(c for i, c in enumerate(counts) if i not in share)
        if pool <= 0:
            raise DataError(
                f"data.train_rows: {total} leaves no rows for the weighted sources after those with rows: N"
            )
    else:  # the largest mixture in these proportions that repeats no row
        pool = min(int(available[i] / share[i] + 1e-9) for i in weighted)
    exact = {i: pool * share[i] for i in weighted}
    for i in weighted:
        counts[i] = int(exact[i])
    left = pool - sum(counts[i] for i in weighted)
    for i in sorted(weighted, key=lambda i: (-(exact[i] - int(exact[i])), i))[:left]:
        counts[i] += 1
    return counts


def no_rows_message(path: str, raw: RawRows, field: str = "data.train") -> str:
    """Why a source gave no usable rows: empty files, or every row skipped (with the reasons)."""
    skipped = sum(raw.skipped.values())
    if skipped:
        reasons = ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in raw.skipped.most_common(4))
        return f"{field}: all {skipped} rows of {path} were skipped ({reasons})"
    if raw.empty:
        return f"{field}: no rows: " + "; ".join(raw.empty[:3])
    return f"{field}: {path} holds no rows"


def _no_rows_hint(raw: RawRows) -> str | None:
    if raw.skipped:
        return "data.on_bad_row: error stops at the first bad row with its file:line"
    return None


def _subset(raw: RawRows, idx, skipped: Counter | None = None, origin: int | None = None) -> RawRows:
    out = RawRows(skipped=(skipped or Counter()).copy(), fingerprint=raw.fingerprint)
    for i in idx:
        out.add(raw.rows[i], raw.where[i], raw.origin[i] if origin is None and raw.origin else origin or 0)
    return out


def tokenizer_fingerprint(tokenizer: Any) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else repr(tokenizer.get_vocab())).encode())
    h.update(repr(sorted(tokenizer.special_tokens_map.items())).encode())
    h.update(str(getattr(tokenizer, "chat_template", "") or "").encode())
    return h.hexdigest()


def _render(raw: RawRows, start: int, rows: list[dict[str, Any]], spec: TokenSpec, tokenizer: Any, counts: Counter):
    """(row index, segments) of each row the template renders; a conversation it refuses (roles out of
    order, say) is a `file:line` error, or skipped and counted (`template_refused`) under on_bad_row: skip."""
    out = []
    for i, r in enumerate(rows):
        try:
            out.append((start + i, render_segments(r, spec.prompt, tokenizer)))
        except ConfigError as e:
            where = raw.where[start + i] if raw.where else f"row {start + i + 1}"
            if spec.on_bad_row == "error":
                raise DataError(f"{where}: {e.problems[0]}") from None
            counts["template_refused"] += 1
    return out


def iter_tokenized(
    raw: RawRows,
    spec: TokenSpec,
    tokenizer: Any,
    counts: Counter,
    chunk: int = 1000,
    by_source: dict[int, Counter] | None = None,
):
    """Yield batches {input_ids, labels, origin} of rendered, tokenized rows; EOS ends every example.

    Works a chunk of rows at a time (the tokenizer's Rust batch call), so memory stays bounded by
    the chunk, not the data set. `counts` (and `by_source`, per training source) collects truncated /
    dropped examples by reason, the tokens truncation cut (`too_long_tokens_cut`) and the assistant
    tool calls it cut or dropped (`tool_calls_lost`); `origin` is each example's
    training source. With `spec.whole` examples keep their full length (TRL's packing cuts them:
    `wrapped` blocks, or `bfd_split` pieces, counted as `too_long_split`).
    """
    max_len = spec.max_length
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id
    adds_bos = tokenizer_adds_bos(tokenizer)
    for start in range(0, len(raw.rows), chunk):
        rows = raw.rows[start : start + chunk]
        rendered = _render(raw, start, rows, spec, tokenizer, counts)
        segs = [s for _, s in rendered]
        flat = [t for s in segs for t, _ in s]
        enc = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
        ids_out, labels_out, origin_out = [], [], []
        k = 0
        for index, s in rendered:
            origin = raw.origin[index] if raw.origin else 0
            lose = loss_counter(counts, by_source, origin)
            calls = _calls_per_answer(raw.rows[index], spec.prompt)
            ids: list[int] = []
            labels: list[int] = []
            ends: list[int] = []  # where each trainable segment (an assistant turn) ends
            cut = False
            if s and needs_bos(tokenizer, s[0][0], adds_bos):
                ids.append(bos)
                labels.append(-100)
            for _, trainable in s:
                piece = enc[k]
                k += 1
                ids.extend(piece)
                labels.extend(piece if trainable else [-100] * len(piece))
                if trainable:
                    ends.append(len(ids))
            if not ids or ids[-1] != eos:
                ids.append(eos)
                labels.append(eos)
            if len(ids) > max_len and spec.whole:
                if spec.too_long == "split":
                    lose("too_long_split")
            elif len(ids) > max_len:
                if spec.too_long == "drop":
                    lose("too_long_dropped")
                    lose("tool_calls_lost", sum(calls))
                    continue
                lose("too_long_truncated")
                lose("too_long_tokens_cut", len(ids) - max_len)
                cut = True
                lose("tool_calls_lost", sum(n for n, end in zip(calls, ends, strict=False) if end > max_len))
                ids, labels = ids[:max_len], labels[:max_len]
            if all(lab == -100 for lab in labels):
                lose("no_response_tokens")
                if cut:  # every token of the row is lost, not only those past the limit
                    lose("too_long_tokens_cut", len(ids))
                else:  # (a truncated row counted its lost calls above)
                    lose("tool_calls_lost", sum(calls))
                continue
            ids_out.append(ids)
            labels_out.append(labels)
            origin_out.append(origin)
        if ids_out:
            yield {"input_ids": ids_out, "labels": labels_out, "origin": origin_out}


def _calls_per_answer(row: dict[str, Any], prompt: PromptConfig) -> list[int]:
    """Tool calls in each trainable segment of a chat row (its assistant turns, in order); none to
    count when every segment is trainable (train_on: all) or the row is no chat."""
    if prompt.format != "messages" or prompt.train_on != "response":
        return []
    return [len(m.get("tool_calls") or ()) for m in row["messages"] if m["role"] == "assistant"]


def tokenize_rows(raw: RawRows, spec: TokenSpec, tokenizer: Any) -> tuple[dict[str, list], Counter]:
    """All rows tokenized in memory (evaluation, tests); `prepare_data` streams to disk instead."""
    counts: Counter = Counter()
    cols: dict[str, list] = {"input_ids": [], "labels": []}
    for batch in iter_tokenized(raw, spec, tokenizer, counts):
        cols["input_ids"] += batch["input_ids"]
        cols["labels"] += batch["labels"]
    return cols, counts


def write_arrow(
    raw: RawRows,
    spec: TokenSpec,
    tokenizer: Any,
    path: Path,
    counts: Counter,
    method: str = "sft",
    per_source: dict[int, Counter] | None = None,
) -> dict[str, int]:
    """Tokenize `raw` into an Arrow file at `path`; returns examples, tokens and loss tokens written.

    `method` dpo / kto writes preference columns (`tunelab.data.preference_rows`); `per_source`, when
    given, collects examples and tokens by training source."""
    from datasets.arrow_writer import ArrowWriter
    from datasets.features import Features, Sequence, Value

    ids = Sequence(Value("int32"))
    if method == "sft":
        features = Features({"input_ids": ids, "labels": ids})
        batches = iter_tokenized(raw, spec, tokenizer, counts, by_source=per_source)
    else:
        from tunelab.data.preference_rows import iter_pairs

        answer = (
            {"completion_ids": ids, "label": Value("bool")}
            if method == "kto"
            else {"chosen_ids": ids, "rejected_ids": ids}
        )
        features = Features({"prompt_ids": ids, **answer})
        batches = iter_pairs(raw, spec, tokenizer, counts, method, by_source=per_source)
    n = tokens = loss_tokens = 0
    with ArrowWriter(features=features, path=str(path)) as writer:
        for batch in batches:
            origins = batch.pop("origin")
            writer.write_batch(batch)
            for i, o in enumerate(origins):
                t, lt = _example_tokens(batch, i, method)
                n, tokens, loss_tokens = n + 1, tokens + t, loss_tokens + lt
                if per_source is not None:
                    per_source.setdefault(o, Counter()).update(examples=1, tokens=t)
        writer.finalize()
    return {"examples": n, "tokens": tokens, "loss_tokens": loss_tokens}


def _example_tokens(batch: dict[str, list], i: int, method: str) -> tuple[int, int]:
    if method != "sft":
        from tunelab.data.preference_rows import example_tokens

        return example_tokens(batch, i)
    return len(batch["input_ids"][i]), sum(1 for v in batch["labels"][i] if v != -100)


def cache_key(cfg: RunConfig, train: RawRows, test: RawRows, tokenizer: Any) -> str:
    relevant = {
        "v": CACHE_VERSION,
        "data": cfg.data.model_dump(mode="json", exclude={"cache_dir"}),
        "prompt": cfg.prompt.model_dump(mode="json"),
        "max_length": cfg.training.max_length,
        **({"method": cfg.training.row_method} if cfg.training.row_method != "sft" else {}),
        **({"whole": True} if TokenSpec.of(cfg).whole else {}),
        "train": train.fingerprint,
        "test": test.fingerprint,
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:20]


def prepare_data(cfg: RunConfig, tokenizer: Any, console=None, home=None) -> PreparedData:
    """Validated, tokenized train/test datasets plus statistics, from the cache when possible.

    The tokenized splits are Arrow files, written a chunk at a time and memory-mapped on load. A
    cache entry records the SHA-256 of its files and is checked each time it is used: an entry
    whose files were truncated or edited is rebuilt, never trained on.
    """
    import datasets

    train, test, stats = load_splits(cfg, home)
    if console is not None:
        for line in stats.get("format_notes", []):
            console.print(f"[bold]note[/]: {line}", highlight=False, soft_wrap=True)
    from tunelab.data.tools import check_run_tools

    check_run_tools(cfg, tokenizer, train.rows, test.rows)  # before any weights load
    cache_dir = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else cache_root("data")
    entry = cache_dir / cache_key(cfg, train, test, tokenizer)
    hit = (entry / "stats.json").is_file()
    if hit:
        problem = _entry_problem(entry)
        if problem:
            if console is not None:
                console.print(
                    f"[yellow]note:[/] tokenized-data cache entry {entry.name} {problem}; rebuilding it",
                    highlight=False,
                )
            _discard(entry)
            hit = False
    if not hit:
        hit = _build_entry(entry, cfg, tokenizer, train, test, stats)
    cached = json.loads((entry / "stats.json").read_text())
    cached.pop("files", None)
    train_ds = datasets.Dataset.from_file(str(entry / "train.arrow"))
    test_ds = datasets.Dataset.from_file(str(entry / "test.arrow")) if cached["test_examples"] else None
    train_rows = train.rows if cfg.training.method == "grpo" else []
    return PreparedData(train_ds, test_ds, test.rows, cached, cache_hit=hit, train_rows=train_rows)


def _build_entry(entry: Path, cfg: RunConfig, tokenizer: Any, train: RawRows, test: RawRows, stats: dict) -> bool:
    """Tokenize into a temporary folder and rename it to `entry`; True when another process won the race."""
    from tunelab.errors import os_error

    tmp = entry.with_name(entry.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        counts: Counter = Counter()
        spec = TokenSpec.of(cfg)
        method = cfg.training.row_method
        per_source: dict[int, Counter] = {}
        tr = write_arrow(train, spec, tokenizer, tmp / "train.arrow", counts, method, per_source)
        if not tr["examples"]:
            raise DataError(_all_dropped(cfg, len(train.rows), counts))
        train_counts = {f"train_{k}": v for k, v in counts.items()}
        if counts["tool_calls_lost"]:
            train_counts["train_tool_calls"] = sum(sum(_calls_per_answer(r, cfg.prompt)) for r in train.rows)
        te = write_arrow(test, spec, tokenizer, tmp / "test.arrow", counts, method)
        for i, info in enumerate(stats.get("sources", [])):
            got = per_source.get(i, Counter())
            info.update(train_examples=got.pop("examples", 0), train_tokens=got.pop("tokens", 0), **got)
        stats = {
            **stats,
            "train_examples": tr["examples"],
            "test_examples": te["examples"],
            "train_tokens": tr["tokens"],
            "train_loss_tokens": tr["loss_tokens"],
            **dict(counts),
            **train_counts,
            "files": {n: _sha256(tmp / n) for n in ("train.arrow", "test.arrow")},
        }
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2))
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise os_error(e, entry) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.replace(entry)
        return False
    except OSError:  # another process filled the entry first; ours is identical
        shutil.rmtree(tmp, ignore_errors=True)
        return True


def _all_dropped(cfg: RunConfig, rows: int, counts: Counter) -> str:
    n = cfg.training.max_length
    if counts.get("too_long_dropped") == rows:
        return f"training.max_length: all {rows} training rows are longer than {n} tokens and data.too_long is drop"
    if counts.get("no_response_tokens"):
        return (
            f"training.max_length: {n} tokens leave no answer tokens in any of the {rows} training rows "
            f"({counts['no_response_tokens']} lost their answer to truncation)"
        )
    return f"{', '.join(s.path for s in cfg.data.train_sources)}: every training example was dropped ({dict(counts)})"


LOSSES = ("too_long_truncated", "too_long_dropped", "no_response_tokens")


def data_notes(stats: dict[str, Any], cfg: RunConfig) -> list[str]:
    """One line per non-zero loss of training signal: rows truncated (and the share of tokens and tool
    calls cut), rows dropped (too long, or no answer token left after truncation), prompts shortened
    from the left, for the train split and for the rest; then a line for each mixture source that
    lost more than a tenth of its rows."""
    n, out = cfg.training.max_length, []
    rows = stats.get("train_rows") or 0
    test = {k: stats.get(k, 0) - stats.get(f"train_{k}", 0) for k in LOSSES}
    parts = [("train", {k: stats.get(f"train_{k}", 0) for k in LOSSES}, rows), ("test", test, stats.get("test_rows"))]
    for split, c, total in parts:
        if not total:
            continue
        if c["too_long_truncated"]:
            line = f"{c['too_long_truncated']} of {total} {split} rows truncated to {n} tokens"
            out.append(
                f"{line} ({c['too_long_truncated'] / total:.0%})"
                + (_tokens_cut(stats, cfg) if split == "train" else "")
            )
        if c["too_long_dropped"]:
            out.append(
                f"{c['too_long_dropped']} of {total} {split} rows dropped: longer than {n} tokens (data.too_long: drop)"
            )
        if c["no_response_tokens"]:
            out.append(
                f"{c['no_response_tokens']} of {total} {split} rows dropped: no answer tokens left after truncation "
                f"({c['no_response_tokens'] / total:.0%}); {_lost_answer_hint(cfg)}"
            )
    calls, lost = stats.get("train_tool_calls", 0), stats.get("train_tool_calls_lost", 0)
    if lost:
        out.append(f"{lost} of {calls} tool calls in the train rows ({lost / calls:.0%}) fall past the {n}-token cut")
    if stats.get("train_prompt_truncated_left"):
        out.append(
            f"{stats['train_prompt_truncated_left']} of {rows} train prompts lost their first tokens to fit "
            f"{n} tokens (data.truncate_prompt: left)"
        )
    return out + source_notes(stats)


def _tokens_cut(stats: dict[str, Any], cfg: RunConfig) -> str:
    """', losing X of Y tokens (Z %)' for the train split, with how to keep them for raw text."""
    cut = stats.get("train_too_long_tokens_cut", 0)
    if not cut:
        return ""
    total = (stats.get("train_tokens") or 0) + cut
    keep = "; data.too_long: split keeps them" if cfg.prompt.format == "text" else ""
    return f", losing {cut:,} of {total:,} tokens ({cut / total:.1%}){keep}"


def source_notes(stats: dict[str, Any], limit: float = 0.1) -> list[str]:
    """A line for each mixture source whose rows lost more than `limit` of themselves to max_length:
    what was lost, and the source's real share of the training examples next to the share asked for."""
    sources = stats.get("sources") or []
    examples = sum(s.get("train_examples", 0) for s in sources)
    weights = sum(s.get("weight") or 0 for s in sources)
    out = []
    for i, s in enumerate(sources):
        rows = s.get("train_rows") or 0
        dropped = s.get("too_long_dropped", 0) + s.get("no_response_tokens", 0)
        truncated = max(0, s.get("too_long_truncated", 0) - s.get("no_response_tokens", 0))  # and kept
        if not rows or not examples or (dropped + truncated) / rows <= limit:
            continue
        what = [f"{dropped} of {rows} rows dropped"] if dropped else []
        what += [f"{truncated} of {rows} truncated"] if truncated else []
        share = f"{s.get('train_examples', 0) / examples:.0%} of the training examples"
        if s.get("weight") and weights:
            share += f" (its weight asks for {s['weight'] / weights:.0%})"
        out.append(f"data.train[{i}] {Path(s['path']).name}: {', '.join(what)} to max_length; it is {share}")
    return out


def _prompts_may_shorten(cfg: RunConfig) -> bool:
    """Whether data.truncate_prompt: left would keep preference pairs whose prompt fills max_length."""
    return cfg.training.is_preference and cfg.data.truncate_prompt == "none"


def _lost_answer_hint(cfg: RunConfig) -> str:
    if _prompts_may_shorten(cfg):
        return "raise training.max_length, or set data.truncate_prompt: left to shorten long prompts from the left"
    return "raise training.max_length or set data.too_long: drop"


def check_lost_answers(stats: dict[str, Any], cfg: RunConfig) -> None:
    """Losing most rows' answers to truncation is a config mistake unless the user opted in."""
    rows = stats.get("train_rows") or 0
    lost = stats.get("train_no_response_tokens", 0)
    limit = cfg.data.max_lost_answers
    if rows and lost / rows > limit:
        raise DataError(
            f"training.max_length: {lost} of {rows} training rows ({lost / rows:.0%}) lose every answer token to "
            f"truncation at {cfg.training.max_length} tokens (data.max_lost_answers allows {limit:.0%})",
            hint="raise training.max_length"
            + (", set data.truncate_prompt: left" if _prompts_may_shorten(cfg) else "")
            + ", or set data.max_lost_answers: 1.0 to train on what is left",
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _entry_problem(entry: Path) -> str | None:
    """Why a cache entry cannot be used as it is (missing, truncated or edited files), or None."""
    try:
        recorded = json.loads((entry / "stats.json").read_text()).get("files")
    except (OSError, ValueError):
        return "has an unreadable stats.json"
    if not isinstance(recorded, dict):
        return "was written without file digests (an older tunelab)"
    for name, digest in recorded.items():
        f = entry / name
        if not f.is_file():
            return f"lacks {name}"
        if _sha256(f) != digest:
            return f"has a {name} that does not match its recorded digest (truncated or edited)"
    return None


def _discard(entry: Path) -> None:
    stale = entry.with_name(entry.name + f".stale{os.getpid()}")
    try:
        entry.rename(stale)
    except OSError:
        return
    shutil.rmtree(stale, ignore_errors=True)
