"""Seeded, verifiable Alpaca-format tasks: every row has one exact answer (also as preference pairs, and
as chat rows that call a tool).

Used by the quickstart, the tests and the benchmarks: a model that learned the tasks scores high on
exact match, one that did not scores near zero. Payloads draw from a small word list and single
digits so that a tiny model with a small tokenizer can learn them in minutes on a CPU.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable
from pathlib import Path

from tunelab.outputs import Output, write_text

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
    return {
        "instruction": "Sort the digits from smallest to largest.",
        "input": " ".join(d),
        "output": " ".join(sorted(d)),
    }


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
    f.__name__: f
    for f in (reverse_words, sort_words, sort_digits, uppercase, add_numbers, count_words, first_word, repeat_word)
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


def wrong_answer(row: dict[str, str], rng: random.Random) -> str:
    """A plausible wrong answer to a generated task (never the right one): the words unsorted or
    unreversed, the sum or count off by one, the wrong word, the input not upper-cased."""
    right, inst, words = row["output"], row["instruction"], row["input"].split()
    candidates: list[str] = []
    if inst.startswith(("Reverse", "Sort")):
        candidates = [row["input"], " ".join(sorted(words, reverse=True)), " ".join(words[1:] + words[:1])]
    elif "upper case" in inst:
        candidates = [row["input"], row["input"].title()]
    elif inst.startswith("Which word"):
        candidates = [words[-1], words[1] if len(words) > 1 else words[0] + "s"]
    elif inst.startswith("Repeat"):
        w = right.split()
        candidates = [" ".join(w + w[:1]), " ".join(w[:-1])]
    elif right.isdigit():
        n = int(right)
        candidates = [str(n + 1), str(n - 1) if n > 0 else str(n + 2)]
    wrong = [c for c in candidates if c and c != right]
    return rng.choice(wrong) if wrong else right + " " + right


def preference_pairs(n: int, seed: int = 0, tasks: list[str] | None = None) -> list[dict[str, str]]:
    """`n` tasks as preference pairs: `chosen` is the exact answer, `rejected` a plausible wrong one
    (Alpaca fields instruction / input, so the prompt is asked as an Alpaca prompt)."""
    rng = random.Random(seed + 1)
    return [
        {"instruction": r["instruction"], "input": r["input"], "chosen": r["output"], "rejected": wrong_answer(r, rng)}
        for r in generate(n, seed, tasks)
    ]


# The tools the synthetic tool-calling conversations may call (OpenAI function schemas).
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "upper",
            "description": "Write text in upper case.",
            "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        },
    },
]


def tool_conversations(n: int, seed: int = 0) -> list[dict]:
    """`n` chat rows in the OpenAI shape that call a tool: the user asks, the assistant calls `add` or
    `upper` with the arguments read off the question, the tool answers, the assistant repeats the result."""
    rng = random.Random(seed)
    rows: list[dict] = []
    for i in range(n):
        if i % 2 == 0:
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            ask, call, result = f"What is {a} plus {b}?", ("add", {"a": a, "b": b}), str(a + b)
        else:
            text = " ".join(_words(rng, 1, 3))
            ask, call, result = f"Write in upper case: {text}", ("upper", {"text": text}), text.upper()
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": ask},
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [{"type": "function", "function": {"name": call[0], "arguments": call[1]}}],
                    },
                    {"role": "tool", "content": result},
                    {"role": "assistant", "content": result},
                ],
                "tools": TOOLS,
            }
        )
    return rows


def write_jsonl(rows: list[dict[str, str]], path: str | Path) -> Path:
    """The rows as JSON Lines at `path`, written under a temporary name and renamed."""
    return write_text(Path(path), "".join(json.dumps(r) + "\n" for r in rows))


def is_synthetic_file(path: Path, limit: int = 64 * 2**20) -> bool:
    """Whether `path` holds only rows `generate` writes (every instruction one of the tasks'): what
    `tunelab synth` may replace. A user's own Alpaca data has other instructions and is never replaced."""
    try:
        if path.stat().st_size > limit:
            return False
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        rows = [json.loads(line) for line in lines]
    except (OSError, ValueError):
        return False
    return bool(rows) and all(isinstance(r, dict) and _is_task_row(r) for r in rows)


def _is_task_row(row: dict) -> bool:
    return set(row) == {"instruction", "input", "output"} and row["instruction"] in task_instructions()


@functools.cache
def task_instructions() -> frozenset[str]:
    """Every instruction the tasks ask, drawn from the tasks themselves (their spaces are small, the draws seeded)."""
    return frozenset(task(random.Random(s))["instruction"] for task in TASKS.values() for s in range(3000))


# What `tunelab synth --out` writes; an earlier one is replaced (it is rebuilt exactly from its seed).
SYNTHETIC_DATA = Output("synthetic tasks of `tunelab synth`", is_synthetic_file)
