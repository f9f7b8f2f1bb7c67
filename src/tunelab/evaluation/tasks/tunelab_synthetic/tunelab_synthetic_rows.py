"""The rows of the `tunelab_synthetic` lm-eval task, read from the JSON Lines file beside this one
(lm-eval imports this file by its path: `custom_dataset: !function tunelab_synthetic_rows.load`)."""

from __future__ import annotations

import json
from pathlib import Path

ROWS = Path(__file__).with_name("tunelab_synthetic.jsonl")


def load(**_metadata):
    """The test split, built in memory: nothing is downloaded or written to the datasets cache."""
    import datasets

    lines = ROWS.read_text(encoding="utf-8").splitlines()
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([json.loads(line) for line in lines if line])})
