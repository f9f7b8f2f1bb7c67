"""Scorers that check an answer for a property: a number equal to the reference's, a pattern, JSON
(valid, or valid under a schema), strings it must or must not contain, a length limit.

These are the checkers of verifiable answers that online RL rewards with; each returns 0-1 except
`length_penalty` (lower is better).
"""

from __future__ import annotations

import json
import math
import re
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from tunelab.errors import TunelabError
from tunelab.scoring.registry import Kind, Params, register

# a decimal number as people write it: sign, thousands commas, fraction, exponent
NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?")
FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n(.*?)\n?```$", re.DOTALL)


# --- numeric -------------------------------------------------------------------------------------------


class NumericParams(Params):
    tolerance: float = Field(1e-6, ge=0, description="Largest absolute difference that still counts as equal.")


def last_number(text: str) -> float | None:
    """The last plain number in `text` (`The answer is 1,234.5.` -> 1234.5), or None."""
    found = NUMBER.findall(text)
    if not found:
        return None
    value = float(found[-1].replace(",", ""))
    return value if math.isfinite(value) else None


def _math_value(parsed: list) -> float | None:
    """The numeric value of what math-verify parsed (a sympy number), if it is one."""
    for expr in parsed:
        if getattr(expr, "is_number", False):
            try:
                value = float(expr)
            except (TypeError, ValueError):
                continue
            if math.isfinite(value):
                return value
    return None


def numeric_match(answer: str, reference: str, tolerance: float) -> float | None:
    """1 when the answer's value equals the reference's: symbolically (math-verify: fractions, LaTeX,
    \\boxed{}), or as numbers within `tolerance`; None when the reference holds no number."""
    from math_verify import parse, verify

    # math-verify bounds sympy's time with signal.alarm, which only the main thread may set
    main = threading.current_thread() is threading.main_thread()
    limit = 5 if main else None
    gold, said = parse(reference, parsing_timeout=limit), parse(answer, parsing_timeout=limit)
    if gold and said and verify(gold, said, timeout_seconds=limit):
        return 1.0
    expected = _math_value(gold) if gold else None
    expected = last_number(reference) if expected is None else expected
    if expected is None:
        return None
    got = _math_value(said) if said else None
    got = last_number(answer) if got is None else got
    return float(got is not None and abs(got - expected) <= tolerance)


register(
    Kind(
        "numeric",
        1,
        "1 when the answer's number (or math expression, via math-verify) equals the reference's within tolerance.",
        lambda p: lambda prompt, answer, reference, row: numeric_match(answer, reference, p.tolerance),
        NumericParams,
        needs_reference=True,
        shorthand="tolerance",
    )
)


# --- regex ---------------------------------------------------------------------------------------------


class RegexParams(Params):
    pattern: str = Field(description="A Python regular expression.")
    mode: Literal["search", "fullmatch"] = Field("search", description="Found anywhere, or the whole answer.")
    ignore_case: bool = Field(False, description="Match regardless of case.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"not a regular expression ({e})") from None
        return v


def _regex(p: RegexParams):
    rx = re.compile(p.pattern, re.IGNORECASE if p.ignore_case else 0)
    match = rx.fullmatch if p.mode == "fullmatch" else rx.search
    return lambda prompt, answer, reference, row: float(match(answer.strip()) is not None)


register(
    Kind(
        "regex",
        1,
        "1 when the answer matches `pattern` (search, or fullmatch), else 0.",
        _regex,
        RegexParams,
        shorthand="pattern",
    )
)


# --- JSON ----------------------------------------------------------------------------------------------


def json_of(answer: str) -> tuple[bool, Any]:
    """(parsed, value) of an answer that is one JSON value, bare or in a ``` fence."""
    text = answer.strip()
    fenced = FENCE.match(text)
    try:
        return True, json.loads(fenced.group(1) if fenced else text)
    except (json.JSONDecodeError, RecursionError):
        return False, None


register(
    Kind(
        "valid_json",
        1,
        "1 when the answer is one JSON value (bare or in a ``` fence), else 0.",
        lambda p: lambda prompt, answer, reference, row: float(json_of(answer)[0]),
    )
)


class SchemaParams(Params):
    schema_: dict[str, Any] | str = Field(
        alias="schema", description="A JSON schema: inline, or the path of a .json file holding one."
    )


def load_schema(schema: dict[str, Any] | str) -> dict[str, Any]:
    """The schema itself, checked against its meta-schema; a path is read (TunelabError naming it)."""
    from jsonschema import SchemaError
    from jsonschema.validators import validator_for

    if isinstance(schema, str):
        path = Path(schema).expanduser()
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise TunelabError(f"schema {path}: cannot read it ({e.strerror})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TunelabError(f"schema {path}: not JSON ({e})") from None
        if not isinstance(schema, dict):
            raise TunelabError(f"schema {path}: a JSON schema is an object")
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as e:
        raise TunelabError(f"not a valid JSON schema: {e.message}") from None
    return schema


def schema_validator(schema: dict[str, Any]):
    from jsonschema.validators import validator_for

    return validator_for(schema)(schema)


def _json_schema(p: SchemaParams):
    validator = schema_validator(load_schema(p.schema_))

    def score(prompt, answer, reference, row):
        ok, value = json_of(answer)
        return float(ok and validator.is_valid(value))

    return score


register(
    Kind(
        "json_schema",
        1,
        "1 when the answer is JSON valid under `schema` (inline, or a file path), else 0.",
        _json_schema,
        SchemaParams,
        shorthand="schema",
    )
)


# --- strings and length --------------------------------------------------------------------------------


class StringsParams(Params):
    strings: list[str] = Field(min_length=1, description="The strings to look for.")
    ignore_case: bool = Field(False, description="Compare regardless of case.")

    @field_validator("strings", mode="before")
    @classmethod
    def _one_is_a_list(cls, v):
        return [v] if isinstance(v, str) else v


def _share_present(p: StringsParams, present: bool):
    fold = str.casefold if p.ignore_case else str
    wanted = [fold(s) for s in p.strings]

    def score(prompt, answer, reference, row):
        text = fold(answer)
        return sum((s in text) == present for s in wanted) / len(wanted)

    return score


register(
    Kind(
        "contains",
        1,
        "The share of `strings` the answer contains (1 when it contains all).",
        lambda p: _share_present(p, True),
        StringsParams,
        shorthand="strings",
    )
)
register(
    Kind(
        "not_contains",
        1,
        "The share of `strings` the answer does not contain (1 when it contains none).",
        lambda p: _share_present(p, False),
        StringsParams,
        shorthand="strings",
    )
)


class LengthParams(Params):
    max_words: int = Field(gt=0, description="Answers up to this many words are not penalized.")


def _length_penalty(p: LengthParams):
    return lambda prompt, answer, reference, row: max(0, len(answer.split()) - p.max_words) / p.max_words


register(
    Kind(
        "length_penalty",
        -1,
        "Words beyond `max_words` as a share of max_words (0 within the limit); lower is better.",
        _length_penalty,
        LengthParams,
        shorthand="max_words",
    )
)
