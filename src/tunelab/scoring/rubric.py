"""The `rubric` scorer: an LLM grades each answer 1-10 against a rubric (pointwise; the pairwise judge is
`tunelab eval --judge`). It asks through the same client as the pairwise judge (`scoring.judge_client`):
retried within a bound, and an answer whose grade never comes is one the scorer cannot score (None),
so the aggregate is the mean over the answers that were graded. The score is the raw grade, 1-10.
"""

from __future__ import annotations

import threading

from pydantic import Field, field_validator

from tunelab.scoring.judge_client import (
    DEFAULT_KEY_ENV,
    JudgeClient,
    api_key,
    check_url,
    fill_template,
    labelled_value,
    last_value,
)
from tunelab.scoring.registry import Kind, Params, register

LOW, HIGH = 1, 10
_SCORE = labelled_value("score", r"\d+(?:\.\d+)?")

RUBRIC_TEMPLATE = """Grade the answer to the instruction below against this rubric:
{rubric}

[Instruction]
{instruction}

[Reference answer, if any]
{reference}

[Answer]
{answer}

Explain your grade in one or two sentences. Then end with a last line `Score: N`, N a whole number from 1 (fails \
the rubric) to 10 (meets it fully).
"""


class RubricParams(Params):
    url: str = Field(description="Base URL of an OpenAI-compatible API, e.g. http://localhost:11434/v1.")
    model: str = Field(description="The grading model's id.")
    rubric: str = Field(
        "Is the answer correct, helpful and clear?", min_length=1, description="What a good answer does."
    )
    api_key_env: str = Field(
        DEFAULT_KEY_ENV, description="Name of the environment variable holding the API key (never written)."
    )
    timeout_s: float = Field(60.0, gt=0, description="Seconds one request may take.")
    max_retries: int = Field(3, ge=0, description="Attempts after the first (timeouts, 429s, 5xx, unparsable grades).")

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        from tunelab.errors import TunelabError

        try:
            return check_url(v, "url")
        except TunelabError as e:
            raise ValueError(e.message) from None


def parse_score(text: str) -> float | None:
    """The grade from the reply's last `Score: N` line, when it is within 1-10."""
    found = last_value(_SCORE, text)
    if found is None:
        return None
    value = float(found)
    return value if LOW <= value <= HIGH else None


def _rubric(p: RubricParams):
    client: list[JudgeClient] = []  # made at the first answer: building the scorer (validate) sends nothing
    lock = threading.Lock()

    def score(prompt: str, answer: str, reference: str | None, row: dict) -> float | None:
        with lock:
            if not client:
                client.append(JudgeClient(p.url, p.model, api_key(p.api_key_env), p.timeout_s, p.max_retries))
        values = {"rubric": p.rubric, "instruction": prompt, "reference": reference or "(none)", "answer": answer}
        grade, _ = client[0].ask(fill_template(RUBRIC_TEMPLATE, values), parse_score)
        return grade

    return score


register(
    Kind(
        "rubric",
        1,
        "An LLM's grade of the answer against `rubric`, 1-10 (raw), over an OpenAI-compatible `url`; "
        "an answer it never grades is left out of the mean.",
        _rubric,
        RubricParams,
        fmt="{:.2f}",
    )
)
