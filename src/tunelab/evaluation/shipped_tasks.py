"""The benchmark tasks tunelab ships in lm-eval's YAML format (`evaluation/tasks/`), and the generator of
their data, so `tunelab eval RUN --tasks tunelab_synthetic` runs offline and in CI.

`tunelab_synthetic` asks tunelab's synthetic tasks (`data.synthetic`) in the Alpaca template, as the
quickstart trains on them, and scores by loglikelihood: the right answer against the plausible wrong
ones `synthetic.wrong_answer` makes (a sum off by one, the words unsorted, the wrong word). No row's
prompt is one the quickstart trained on. The data file is committed; regenerate it (byte for byte the
same) with:

    python -m tunelab.evaluation.shipped_tasks
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tunelab.data.synthetic import TASKS, generate, wrong_answer
from tunelab.data.templates import alpaca_prompt
from tunelab.outputs import write_text
from tunelab.refs import parse_synthetic

TASKS_DIR = Path(__file__).parent / "tasks"
SYNTHETIC_TASK = "tunelab_synthetic"
SYNTHETIC_DATA = TASKS_DIR / SYNTHETIC_TASK / f"{SYNTHETIC_TASK}.jsonl"
# examples/quickstart.yaml's training data (a test holds the two equal): no benchmark prompt is among it
QUICKSTART_DATA = "synthetic:2400:seed=7:tasks=first_word,repeat_word,uppercase,count_words,add_numbers,sort_digits"
ROWS, SEED, MAX_CHOICES = 150, 2023, 3


def synthetic_rows(n: int = ROWS, seed: int = SEED) -> list[dict]:
    """`n` multiple-choice rows over the quickstart's task kinds whose prompts the quickstart never
    saw: `prompt` (Alpaca), `choices` (the right answer and up to two wrong ones, in a seeded order)
    and `label` (the right one's index). Fully determined by `seed`."""
    spec = parse_synthetic(QUICKSTART_DATA, tuple(TASKS))
    trained = {(r["instruction"], r["input"]) for r in generate(spec.n, spec.seed, list(spec.tasks or ()))}
    rng = random.Random(seed)
    rows = []
    for row in generate(n * 20, seed, list(spec.tasks or ())):
        if (row["instruction"], row["input"]) in trained:
            continue
        choices = [row["output"], *_wrong_answers(row, rng)]
        rng.shuffle(choices)
        prompt = alpaca_prompt(row["instruction"], row["input"])
        rows.append({"prompt": prompt, "choices": choices, "label": choices.index(row["output"])})
        if len(rows) == n:
            break
    return rows


def _wrong_answers(row: dict, rng: random.Random) -> list[str]:
    """Distinct wrong answers to `row`, at most MAX_CHOICES - 1, in the order first drawn."""
    found: dict[str, None] = {}
    for _ in range(20):
        found.setdefault(wrong_answer(row, rng))
    return [w for w in found if w != row["output"]][: MAX_CHOICES - 1]


def write_synthetic_data(path: Path = SYNTHETIC_DATA) -> Path:
    """The rows of `synthetic_rows` as JSON Lines at `path` (written under a temporary name and renamed)."""
    return write_text(path, "".join(json.dumps(r) + "\n" for r in synthetic_rows()))


if __name__ == "__main__":
    print(write_synthetic_data())
