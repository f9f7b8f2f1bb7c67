"""Seeded, verifiable Alpaca-format tasks: every row has one exact answer.

Used by the quickstart, the tests and the benchmarks: a model that learned the tasks scores high on
exact match, one that did not scores near zero. Payloads draw from a small word list and single
digits so that a tiny model with a small tokenizer can learn them in minutes on a CPU.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

WORDS = (
    "cat dog sun moon tree fish bird star rain snow lake hill road book door milk rice salt gold iron "
    "red blue green pink gray lamp ring ship frog wolf bear duck kite leaf rose sand wind fire ice"
).split()

Task = Callable[[random.Random], dict[str, str]]


def _words(rng: random.Random, lo: int = 3, hi: int = 5) -> list[str]:
    return rng.sample(WORDS, rng.randint(lo, hi))


def reverse_words(rng: random.Random) -> dict[str, str]:
    w = _words(rng)
    return {"instruction": "Reverse the order of the words.", "input": " ".join(w), "output": " ".join(w[::-1])}


def sort_words(rng: random.Random) -> dict[str, str]:
    w = _words(rng)
    return {"instruction": "Sort the words alphabetically.", "input": " ".join(w), "output": " ".join(sorted(w))}


def sort_digits(rng: random.Random) -> dict[str, str]:
    d = [str(rng.randint(0, 9)) for _ in range(rng.randint(3, 6))]
    return {"instruction": "Sort the digits from smallest to largest.", "input": " ".join(d), "output": " ".join(sorted(d))}


def uppercase(rng: random.Random) -> dict[str, str]:
    w = _words(rng, 2, 4)
    return {"instruction": "Write the words in upper case.", "input": " ".join(w), "output": " ".join(w).upper()}


def add_numbers(rng: random.Random) -> dict[str, str]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return {"instruction": f"What is {a} plus {b}?", "input": "", "output": str(a + b)}


def count_words(rng: random.Random) -> dict[str, str]:
    w = [rng.choice(WORDS) for _ in range(rng.randint(1, 7))]
    return {"instruction": "How many words are there?", "input": " ".join(w), "output": str(len(w))}


def first_word(rng: random.Random) -> dict[str, str]:
    w = _words(rng)
    return {"instruction": "Which word comes first?", "input": " ".join(w), "output": w[0]}


def repeat_word(rng: random.Random) -> dict[str, str]:
    w, n = rng.choice(WORDS), rng.randint(2, 4)
    return {"instruction": f"Repeat the word {w} {n} times.", "input": "", "output": " ".join([w] * n)}


TASKS: dict[str, Task] = {
    f.__name__: f for f in (reverse_words, sort_words, sort_digits, uppercase, add_numbers, count_words, first_word, repeat_word)
}


def generate(n: int, seed: int = 0, tasks: list[str] | None = None, unique: bool = True) -> list[dict[str, str]]:
    """`n` tasks, cycling through the task kinds, fully determined by `seed`.

    With `unique`, no (instruction, input) pair repeats, so a test split carved from the rows holds
    only prompts the model never trained on; a kind whose small space is used up is left out.
    """
    rng = random.Random(seed)
    kinds = [TASKS[t] for t in (tasks or list(TASKS))]
    rows: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    i = 0
    while len(rows) < n and kinds:
        kind = kinds[i % len(kinds)]
        for _ in range(100 if unique else 1):
            row = kind(rng)
            key = (row["instruction"], row["input"])
            if not unique or key not in seen:
                seen.add(key)
                rows.append(row)
                i += 1
                break
        else:
            kinds.remove(kind)
    return rows


def write_jsonl(rows: list[dict[str, str]], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(p)
    return p
