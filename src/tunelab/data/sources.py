"""Read raw rows from local files, folders or hub datasets, each row tagged with where it came from.

Local JSON / JSONL / CSV rows carry `file:line` so that a bad row can be pointed at; Parquet and hub
rows carry `source:row N`. Malformed records are reported (or skipped and counted) here; field
validation happens in `tunelab.data.validate`.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config.schema import SourceConfig
from tunelab.errors import DataError

SUFFIXES = {".json", ".jsonl", ".csv", ".parquet", ".txt"}


@dataclass
class RawRows:
    """Rows read from one source, with their locations and what was skipped on the way."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    where: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    fingerprint: str = ""
    empty: list[str] = field(default_factory=list)  # "FILE: why it gave no rows", for files that gave none
    origin: list[int] = field(default_factory=list)  # each row's training source (data.train[i]) in a mixture
    notes: list[str] = field(default_factory=list)  # one line each: what was detected while reading

    def add(self, row: dict[str, Any], where: str, origin: int = 0) -> None:
        self.rows.append(row)
        self.where.append(where)
        self.origin.append(origin)


BAD_ROW_HINT = "fix the row, or set data.on_bad_row: skip to skip and count such rows"


def _bad(msg: str, reason: str, out: RawRows, on_bad_row: str, hint: str | None = None) -> None:
    if on_bad_row == "error":
        raise DataError(msg, hint=hint or BAD_ROW_HINT)
    out.skipped[reason] += 1


def read_jsonl(path: Path, out: RawRows, on_bad_row: str) -> None:
    lines = 0
    with path.open("rb") as f:  # decoded line by line, so text that is not UTF-8 is found at its line
        for lineno, raw in enumerate(f, 1):
            try:  # -sig: a byte-order mark (Windows exports) is not data
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start + 1})") from None
            if not line.strip():
                continue
            lines += 1
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                _bad(f"{path}:{lineno}: malformed JSON ({e.msg})", "malformed_json", out, on_bad_row)
                continue
            except RecursionError:
                _bad(f"{path}:{lineno}: JSON nested too deeply to read", "malformed_json", out, on_bad_row)
                continue
            except ValueError as e:  # an integer past Python's digit limit for int()
                _bad(f"{path}:{lineno}: a number too long to read ({e})", "malformed_json", out, on_bad_row)
                continue
            if not isinstance(row, dict):
                _bad(
                    f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}",
                    "not_an_object",
                    out,
                    on_bad_row,
                )
                continue
            out.add(row, f"{path}:{lineno}")
    if not lines:
        out.empty.append(
            f"{path}: the file is empty" if path.stat().st_size == 0 else f"{path}: the file holds only blank lines"
        )


def _read_json(path: Path, out: RawRows, on_bad_row: str) -> None:
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        out.empty.append(f"{path}: the file is empty")
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        # a whole-file syntax error cannot be skipped row by row: the rest of the array is unreadable
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to read") from None
    except ValueError as e:  # an integer past Python's digit limit for int()
        raise DataError(f"{path}: a number too long to read ({e})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}:1: expected a JSON array of objects (or JSON Lines)")
    if not data:
        out.empty.append(f"{path}: an empty JSON array")
        return
    lines = _element_lines(text, len(data))
    for i, row in enumerate(data):
        where = f"{path}:{lines[i]}"
        if not isinstance(row, dict):
            _bad(f"{where}: expected a JSON object, got {type(row).__name__}", "not_an_object", out, on_bad_row)
            continue
        out.add(row, where)


def _element_lines(text: str, n: int) -> list[int]:
    """Line number of the start of each top-level array element (the file parsed once more, cheaply)."""
    dec = json.JSONDecoder()
    start = text.index("[") + 1
    lines, pos, line, last = [], start, 1 + text.count("\n", 0, start), start
    for _ in range(n):
        while text[pos] in " \t\r\n,":
            pos += 1
        line += text.count("\n", last, pos)
        lines.append(line)
        _, end = dec.raw_decode(text, pos)
        line += text.count("\n", pos, end)
        last = pos = end
    return lines


def _read_csv(path: Path, out: RawRows, on_bad_row: str) -> None:
    n = 0
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            n += 1
            where = f"{path}:{reader.line_num}"
            if None in row:
                _bad(f"{where}: more values than header columns", "malformed_csv", out, on_bad_row)
                continue
            out.add({k: ("" if v is None else v) for k, v in row.items()}, where)
        if not n:
            out.empty.append(
                f"{path}: a CSV header with no rows" if reader.fieldnames else f"{path}: the file is empty"
            )


def read_text_documents(path: Path, out: RawRows, documents: str = "file") -> None:
    """A .txt file as rows {text}: the whole file as one document, (`blank_lines`) each block of lines
    between blank lines, or (`lines`) each non-blank line, located by the line it starts on."""
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        out.empty.append(f"{path}: the file is empty" if not text else f"{path}: the file holds only blank lines")
        return
    if documents == "file":
        out.add({"text": text}, f"{path}:1")
        return
    if documents == "lines":
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                out.add({"text": line}, f"{path}:{lineno}")
        return
    block: list[str] = []
    start = 0
    for lineno, line in enumerate([*text.splitlines(), ""], 1):
        if line.strip():
            if not block:
                start = lineno
            block.append(line)
        elif block:
            out.add({"text": "\n".join(block)}, f"{path}:{start}")
            block = []


def _read_parquet(path: Path, out: RawRows) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({(str(e).splitlines() or ['?'])[0][:160]})") from None
    if not rows:
        out.empty.append(f"{path}: a Parquet file with no rows")
    for i, row in enumerate(rows):
        out.add(row, f"{path}:row {i + 1}")


def _file_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p.name).encode())
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def local_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"{path}: folder holds no .json, .jsonl, .csv, .parquet or .txt files")
        return files
    if path.suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (use .json, .jsonl, .csv, .parquet or .txt)")
    return [path]


def read_source(src: SourceConfig, on_bad_row: str, home=None) -> RawRows:
    """Read every row of a source (relative paths were anchored when the config was loaded).

    `home` (a `tunelab.artifacts.Home`) is where a dataset artifact reference resolves."""
    from tunelab.refs import parse_data

    out = RawRows()
    ref = parse_data(src.path)
    if ref.kind == "artifact":
        from tunelab.artifacts import Home, fetch

        # a dataset artifact: resolved, downloaded once (cached by digest), then read as a local folder
        local = fetch(src.path, home or Home.default(), expected_type="dataset").path
        return read_source(src.model_copy(update={"path": str(local)}), on_bad_row, home)
    if ref.kind == "synthetic":
        return _read_synthetic(ref.synthetic, src.path, out)
    if ref.kind == "local":
        path = Path(src.path).expanduser()
        if not path.exists():
            raise DataError(
                f"data file not found: {src.path}",
                hint="relative paths are looked up from the working directory, then from the config file's folder",
            )
        files = local_files(path)
        for f in files:
            try:
                if f.suffix == ".jsonl":
                    read_jsonl(f, out, on_bad_row)
                elif f.suffix == ".json":
                    _read_json(f, out, on_bad_row)
                elif f.suffix == ".csv":
                    _read_csv(f, out, on_bad_row)
                elif f.suffix == ".txt":
                    read_text_documents(f, out, src.documents)
                else:
                    _read_parquet(f, out)
            except UnicodeDecodeError as e:
                raise DataError(f"{f}: not UTF-8 text ({e.reason})") from None
        out.fingerprint = _file_digest(files)
        return out
    return _read_hub(src, out)


def _read_synthetic(spec, text: str, out: RawRows) -> RawRows:
    """`synthetic:N[:seed=S][:tasks=a,b][:kind=K]` (parsed by tunelab.refs): seeded rows from
    `tunelab.data.synthetic`."""
    from tunelab.data.synthetic import TASKS, generate, preference_pairs, tool_conversations

    unknown = [t for t in spec.tasks or () if t not in TASKS]
    if unknown:
        raise DataError(f"data source {text!r}: unknown task {', '.join(unknown)} (tasks: {', '.join(TASKS)})")
    tasks = list(spec.tasks) if spec.tasks else None
    rows = (
        preference_pairs(spec.n, spec.seed, tasks)
        if spec.kind == "preference"
        else tool_conversations(spec.n, spec.seed)
        if spec.kind == "tools"
        else generate(spec.n, spec.seed, tasks)
    )
    for i, row in enumerate(rows):
        out.add(row, f"{text}:row {i + 1}")
    out.fingerprint = hashlib.sha256(text.encode()).hexdigest()
    return out


def _read_hub(src: SourceConfig, out: RawRows) -> RawRows:
    from tunelab.hub import ensure_offline_if_unreachable, unreachable_message

    offline = ensure_offline_if_unreachable()  # before datasets reads its offline flag
    import datasets

    try:
        ds = datasets.load_dataset(src.path, src.subset, split=src.split, revision=src.revision)
    except Exception as e:  # the hub client raises many types; all mean "could not get it"
        if offline:
            raise DataError(
                unreachable_message("data.train.path", src.path).replace("hub cache", "datasets cache")
            ) from None
        raise DataError(
            f"cannot load dataset {src.path!r} (split {src.split!r}): {str(e).splitlines()[0][:200]}",
            hint="check the id and split; offline machines need a local file or a cached dataset",
        ) from None
    for i, row in enumerate(ds):
        out.add(dict(row), f"{src.path}[{src.split}]:row {i + 1}")
    from tunelab.compat import dataset_fingerprint

    out.fingerprint = hashlib.sha256(
        f"{src.path}|{src.subset}|{src.split}|{dataset_fingerprint(ds)}".encode()
    ).hexdigest()
    return out
