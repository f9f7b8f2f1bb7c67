"""The data pipeline: read, validate, split, select, render, tokenize (with label masks), cache.

The result is a pair of Arrow datasets with `input_ids` and `labels` (-100 where no loss is taken),
which TRL's SFTTrainer packs as it is. Tokenized data is cached on disk under a key made of the
data's content digest, the data / prompt settings and the tokenizer's fingerprint.
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
from tunelab.data.tokens import needs_bos
from tunelab.data.validate import validate_rows
from tunelab.errors import DataError

CACHE_VERSION = "3"


@dataclass(frozen=True)
class TokenSpec:
    """What tokenizing needs from a run config: the prompt format, the length limit and what to do beyond it."""

    prompt: PromptConfig
    max_length: int
    too_long: str = "truncate"

    @classmethod
    def of(cls, cfg: RunConfig) -> TokenSpec:
        return cls(cfg.prompt, cfg.training.max_length, cfg.data.too_long)


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset with input_ids, labels
    test: Any | None
    test_rows: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)
    cache_hit: bool = False


def load_splits(cfg: RunConfig, home=None) -> tuple[RawRows, RawRows, dict[str, Any]]:
    """Validated train and test rows (no tokenizer needed: `tunelab validate` uses this too).

    `home` (a `tunelab.artifacts.Home`) is where artifact references among the sources resolve;
    default the config's own tracking directory."""
    if home is None:
        from tunelab.artifacts import Home

        home = Home.of(cfg)
    d = cfg.data
    train = validate_rows(read_source(d.train, d.on_bad_row, home), cfg.prompt, d.field_map, d.on_bad_row, d.train.path)
    rows_read = len(train.rows) + sum(train.skipped.values())
    if not train.rows:
        raise DataError(no_rows_message(d.train.path, train), hint=_no_rows_hint(train))
    if d.test is not None:
        test = validate_rows(read_source(d.test, d.on_bad_row, home), cfg.prompt, d.field_map, d.on_bad_row, d.test.path)
        rows_read += len(test.rows) + sum(test.skipped.values())
        if not test.rows:
            raise DataError(no_rows_message(d.test.path, test, "data.test"), hint=_no_rows_hint(test))
    elif d.test_size is not None:
        n_test = int(round(d.test_size * len(train.rows))) if d.test_size < 1 else int(d.test_size)
        if not 0 < n_test < len(train.rows):
            raise DataError(f"data.test_size: {d.test_size} leaves no train or no test rows out of {len(train.rows)}")
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
        raise DataError(f"{d.train.path}: no usable training rows (skipped: {dict(train.skipped) or 'none'})")
    skipped = train.skipped + test.skipped
    stats = {"rows_read": rows_read, "rows_skipped": dict(skipped), "train_rows": len(train.rows), "test_rows": len(test.rows)}
    return train, test, stats


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


def _subset(raw: RawRows, idx, skipped: Counter | None = None) -> RawRows:
    out = RawRows(skipped=(skipped or Counter()).copy(), fingerprint=raw.fingerprint)
    for i in idx:
        out.add(raw.rows[i], raw.where[i])
    return out


def tokenizer_fingerprint(tokenizer: Any) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else repr(tokenizer.get_vocab())).encode())
    h.update(repr(sorted(tokenizer.special_tokens_map.items())).encode())
    h.update(str(getattr(tokenizer, "chat_template", "") or "").encode())
    return h.hexdigest()


def iter_tokenized(raw: RawRows, spec: TokenSpec, tokenizer: Any, counts: Counter, chunk: int = 1000):
    """Yield batches {input_ids, labels} of rendered, tokenized rows; EOS ends every example.

    Works a chunk of rows at a time (the tokenizer's Rust batch call), so memory stays bounded by
    the chunk, not the data set. `counts` collects truncated / dropped examples by reason.
    """
    max_len = spec.max_length
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id
    adds_bos = tokenizer_adds_bos(tokenizer)
    for start in range(0, len(raw.rows), chunk):
        rows = raw.rows[start : start + chunk]
        segs = [render_segments(r, spec.prompt, tokenizer) for r in rows]
        flat = [t for s in segs for t, _ in s]
        enc = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
        ids_out, labels_out = [], []
        k = 0
        for s in segs:
            ids: list[int] = []
            labels: list[int] = []
            if s and needs_bos(tokenizer, s[0][0], adds_bos):
                ids.append(bos)
                labels.append(-100)
            for _, trainable in s:
                piece = enc[k]
                k += 1
                ids.extend(piece)
                labels.extend(piece if trainable else [-100] * len(piece))
            if not ids or ids[-1] != eos:
                ids.append(eos)
                labels.append(eos)
            if len(ids) > max_len:
                if spec.too_long == "drop":
                    counts["too_long_dropped"] += 1
                    continue
                counts["too_long_truncated"] += 1
                ids, labels = ids[:max_len], labels[:max_len]
            if all(lab == -100 for lab in labels):
                counts["no_response_tokens"] += 1
                continue
            ids_out.append(ids)
            labels_out.append(labels)
        if ids_out:
            yield {"input_ids": ids_out, "labels": labels_out}


def tokenize_rows(raw: RawRows, spec: TokenSpec, tokenizer: Any) -> tuple[dict[str, list], Counter]:
    """All rows tokenized in memory (evaluation, tests); `prepare_data` streams to disk instead."""
    counts: Counter = Counter()
    cols: dict[str, list] = {"input_ids": [], "labels": []}
    for batch in iter_tokenized(raw, spec, tokenizer, counts):
        cols["input_ids"] += batch["input_ids"]
        cols["labels"] += batch["labels"]
    return cols, counts


def write_arrow(raw: RawRows, spec: TokenSpec, tokenizer: Any, path: Path, counts: Counter) -> dict[str, int]:
    """Tokenize `raw` into an Arrow file at `path`; returns examples, tokens and loss tokens written."""
    from datasets.arrow_writer import ArrowWriter
    from datasets.features import Features, Sequence, Value

    features = Features({"input_ids": Sequence(Value("int32")), "labels": Sequence(Value("int32"))})
    n = tokens = loss_tokens = 0
    with ArrowWriter(features=features, path=str(path)) as writer:
        for batch in iter_tokenized(raw, spec, tokenizer, counts):
            writer.write_batch(batch)
            n += len(batch["input_ids"])
            tokens += sum(len(x) for x in batch["input_ids"])
            loss_tokens += sum(sum(1 for v in lab if v != -100) for lab in batch["labels"])
        writer.finalize()
    return {"examples": n, "tokens": tokens, "loss_tokens": loss_tokens}


def cache_key(cfg: RunConfig, train: RawRows, test: RawRows, tokenizer: Any) -> str:
    relevant = {
        "v": CACHE_VERSION,
        "data": cfg.data.model_dump(mode="json", exclude={"cache_dir"}),
        "prompt": cfg.prompt.model_dump(mode="json"),
        "max_length": cfg.training.max_length,
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
    cache_dir = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else cache_root("data")
    entry = cache_dir / cache_key(cfg, train, test, tokenizer)
    hit = (entry / "stats.json").is_file()
    if hit:
        problem = _entry_problem(entry)
        if problem:
            if console is not None:
                console.print(f"[yellow]note:[/] tokenized-data cache entry {entry.name} {problem}; rebuilding it", highlight=False)
            _discard(entry)
            hit = False
    if not hit:
        hit = _build_entry(entry, cfg, tokenizer, train, test, stats)
    cached = json.loads((entry / "stats.json").read_text())
    cached.pop("files", None)
    train_ds = datasets.Dataset.from_file(str(entry / "train.arrow"))
    test_ds = datasets.Dataset.from_file(str(entry / "test.arrow")) if cached["test_examples"] else None
    return PreparedData(train_ds, test_ds, test.rows, cached, cache_hit=hit)


def _build_entry(entry: Path, cfg: RunConfig, tokenizer: Any, train: RawRows, test: RawRows, stats: dict) -> bool:
    """Tokenize into a temporary folder and rename it to `entry`; True when another process won the race."""
    from tunelab.errors import os_error

    tmp = entry.with_name(entry.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        counts: Counter = Counter()
        spec = TokenSpec.of(cfg)
        tr = write_arrow(train, spec, tokenizer, tmp / "train.arrow", counts)
        if not tr["examples"]:
            raise DataError(_all_dropped(cfg, len(train.rows), counts))
        te = write_arrow(test, spec, tokenizer, tmp / "test.arrow", counts)
        stats = {**stats, "train_examples": tr["examples"], "test_examples": te["examples"], "train_tokens": tr["tokens"],
                 "train_loss_tokens": tr["loss_tokens"], **dict(counts),
                 "files": {n: _sha256(tmp / n) for n in ("train.arrow", "test.arrow")}}
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
        return (f"training.max_length: {n} tokens leave no answer tokens in any of the {rows} training rows "
                f"({counts['no_response_tokens']} lost their answer to truncation)")
    return f"{cfg.data.train.path}: every training example was dropped ({dict(counts)})"


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
