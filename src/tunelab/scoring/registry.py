"""The scorer registry: what a scorer is, the table of kinds, and how a declaration becomes one.

A scorer takes (prompt, answer, reference, row) and returns a float, or None when it cannot score
that row (no reference, no tools offered). Each kind has a name, a direction (+1 higher is better,
-1 lower is better, 0 none), a one-line doc, whether it needs a reference, and typed parameters.
The same scorers score `tunelab eval`, the sample tables during training and sweep objectives.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunelab.errors import ConfigError, TunelabError
from tunelab.runs.metric_table import ScorerMetric

ScoreFn = Callable[[str, str, "str | None", dict], "float | None"]
CorpusFn = Callable[[list[str], list[str]], float]
# What `tunelab eval` and the sample tables score when eval.scorers is not set.
DEFAULT_SCORERS = ("exact_match", "normalized_exact_match", "rougeL", "bleu", "chrf", "answer_words")


class Params(BaseModel):
    """Parameters every scorer takes; a kind's own parameters extend these. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]+$",  # a metrics.jsonl key and a tracker's metric name
        description="What its score is reported as (default: the scorer's name).",
    )


@dataclass(frozen=True)
class Kind:
    """One kind of scorer in the registry; `build` turns validated parameters into the score function."""

    name: str
    direction: int
    doc: str
    build: Callable[[Any], ScoreFn]
    params: type[Params] = Params
    needs_reference: bool = False
    corpus: CorpusFn | None = None  # a library-defined corpus score (BLEU, chrF) instead of the mean
    shorthand: str | None = None  # the parameter a bare value sets: `{contains: [a, b]}`, `{regex: '^\d+$'}`
    label: str | None = None  # what tables call its score (default: its name)
    fmt: str = "{:.3f}"  # how tables show its aggregate: "pct" for a share, else a str.format pattern


REGISTRY: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    if kind.name in REGISTRY:
        raise RuntimeError(f"scorer {kind.name!r} registered twice")
    REGISTRY[kind.name] = kind
    return kind


@dataclass(frozen=True)
class Scorer:
    """A declared scorer: its kind, its parameters, and the key its scores are reported under."""

    kind: Kind
    params: Params
    key: str
    fn: ScoreFn
    where: str  # the declaration, for errors about what it returned

    @property
    def direction(self) -> int:
        return self.metric.direction

    @property
    def metric(self) -> ScorerMetric:
        """Its row in the metric table (`samples_<key>`, `eval.<key>`)."""
        return _metric(self.kind, self.params)

    def declaration(self) -> dict[str, Any]:
        """The scorer as eval.scorers would declare it, every parameter spelled out."""
        return {self.kind.name: self.params.model_dump(mode="json", by_alias=True)}

    def score(self, prompt: str, answer: str, reference: str | None, row: dict) -> float | None:
        """The score of one answer; None when the scorer cannot score this row."""
        if self.kind.needs_reference and reference is None:
            return None
        value = self.fn(prompt, answer, reference, row)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TunelabError(
                f"{self.where}: returned {value!r}; a scorer returns a number (or None for a row it cannot score)"
            )
        return float(value)


def kind_of(name: str) -> Kind | None:
    return REGISTRY.get(name)


def _metric(kind: Kind, params: Params) -> ScorerMetric:
    key = params.name or _default_key(kind, params)
    declared = getattr(params, "direction", None)  # a python: scorer says its own
    direction = kind.direction if declared is None else declared
    return ScorerMetric(key, kind.label if kind.label and key == kind.name else key, kind.fmt, direction)


def kind_metrics() -> list[ScorerMetric]:
    """Every kind's row under its own name (what a scorer declared without `name` reports as)."""
    return [ScorerMetric(k.name, k.label or k.name, k.fmt, k.direction) for k in REGISTRY.values()]


def declared_metric(item: Any) -> ScorerMetric | None:
    """The metric-table row of a declaration (an eval.scorers entry, or one eval.json records) without
    building the scorer (a python: scorer's module is not imported); None for one this tunelab
    cannot read (`build_scorer` says why where it matters)."""
    try:
        return _metric(*_parse(item))
    except ValueError:
        return None


def declared_kind(item: Any) -> Kind | None:
    """The kind of a declaration (as `declared_metric` reads it, nothing imported); None for one this
    tunelab cannot read."""
    try:
        return _parse(item)[0]
    except ValueError:
        return None


def _known_names() -> str:
    return ", ".join(sorted(REGISTRY))


def _params_problem(e: ValidationError) -> str:
    """One line for a parameter model's errors: each wrong parameter named."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown parameter {loc!r}")
        elif err["type"] == "missing":
            parts.append(f"parameter {loc!r} is required")
        else:
            msg = err["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's own message
            parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def build_scorer(item: Any, where: str) -> Scorer:
    """A scorer from one declaration: `name`, `{name: {param: value}}`, or `{name: value}` for a kind
    with a shorthand parameter. ValueError (one line, without `where`) for a bad declaration."""
    kind, params = _parse(item)
    try:
        fn = kind.build(params)
    except TunelabError as e:  # a python: function that cannot be imported, a schema file that cannot be read
        raise ValueError(f"{kind.name}: {e}") from None
    return Scorer(kind, params, _metric(kind, params).key, fn, where)


def _parse(item: Any) -> tuple[Kind, Params]:
    """A declaration's kind and validated parameters; ValueError (one line) for a bad one."""
    if isinstance(item, str):
        name, raw = item, None
    elif isinstance(item, dict) and len(item) == 1:
        ((name, raw),) = item.items()
    else:
        raise ValueError("a scorer is a name or a one-key mapping {name: parameters}")
    kind = kind_of(str(name))
    if kind is None:
        import difflib

        close = difflib.get_close_matches(str(name), list(REGISTRY), n=1)
        guess = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown scorer {name!r}; {guess}known: {_known_names()} (tunelab scorers lists them)")
    if raw is not None and not isinstance(raw, dict):
        if kind.shorthand is None:
            raise ValueError(f"{name}: parameters are a mapping {{param: value}}, not {raw!r}")
        raw = {kind.shorthand: raw}
    known = ", ".join(f.alias or n for n, f in kind.params.model_fields.items())
    try:
        params = kind.params.model_validate(raw or {})
    except ValidationError as e:
        raise ValueError(f"{name}: {_params_problem(e)} (parameters: {known})") from None
    return kind, params


def _default_key(kind: Kind, params: Params) -> str:
    function = getattr(params, "function", None)
    return function.rpartition(":")[2] if function else kind.name


def build_scorers(declared: list[tuple[str, Any]], source: str | None = None) -> list[Scorer]:
    """Scorers from (where, declaration) pairs; every bad one is a line of one ConfigError naming its
    `where` (and `source`, the config file, when given)."""
    problems, scorers, keys = [], [], {}
    for where, item in declared:
        try:
            s = build_scorer(item, where)
        except ValueError as e:
            problems.append(f"{where}: {e}")
            continue
        if s.key in keys:
            problems.append(
                f"{where}: a second scorer reported as {s.key!r} (first: {keys[s.key]}); give one another name: "
                f"{{{s.kind.name}: {{name: ...}}}}"
            )
            continue
        keys[s.key] = where
        scorers.append(s)
    if problems:
        raise ConfigError(problems, source=source)
    return scorers


def config_scorers(declared: list[Any] | None, source: str | None = None) -> list[Scorer]:
    """The scorers of a config's `eval.scorers` (None: the default set), each named `eval.scorers[i]` in errors."""
    items = list(DEFAULT_SCORERS) if declared is None else declared
    return build_scorers([(f"eval.scorers[{i}]", item) for i, item in enumerate(items)], source)


def parse_cli(text: str) -> Any:
    """`--scorer` text as a declaration: `name`, or `name:PARAMS` with PARAMS JSON (a mapping, or a
    shorthand value) or, when it is not JSON, the shorthand value as text (`regex:^\\d+$`)."""
    name, sep, rest = text.partition(":")
    if not sep:
        return name
    try:
        value = json.loads(rest)
    except json.JSONDecodeError:
        value = rest
    return {name: value}


def cli_scorers(texts: list[str]) -> list[Scorer]:
    """Scorers from `--scorer` options, each named `--scorer TEXT` in errors."""
    return build_scorers([(f"--scorer {t}", parse_cli(t)) for t in texts])


def merged(base: list[Scorer], extra: list[Scorer]) -> list[Scorer]:
    """`base` with `extra` added; an extra scorer reported under a key of `base` replaces that one."""
    replaced = {s.key for s in extra}
    return [s for s in base if s.key not in replaced] + extra
