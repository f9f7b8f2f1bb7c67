"""The sweep file: a base run config, a search space over dotted config keys, and how to search it.

```yaml
name: lr-rank                    # default: the file's stem; the folder is <dir>/<name>/
base: {config: quickstart.yaml, overrides: [training.max_steps=150]}
method: grid                     # grid | random | tpe
space:
  adapter.r: [4, 16, 64]                                    # a choice (shorthand)
  training.learning_rate: {float: [1.0e-4, 1.0e-2], log: true}
paired:                          # settings that vary together: one axis of the grid
  - {model.name: org/a, training.batch_size: 4}
  - {model.name: org/b, training.batch_size: 2}
objective: eval_loss             # or {metric, direction}, or a list of them (a Pareto front)
pruner: median                   # none | median | hyperband | successive_halving, or {name: ..., options}
```

Everything is checked by pydantic with the run config's error format: one line per problem,
naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tunelab.sweep import gateway
from tunelab.sweep.gateway import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class BaseSpec(Strict):
    config: str = Field(
        description="The base run config (YAML); a relative path is looked up from the working "
        "directory, then from the sweep file's folder."
    )
    overrides: list[str] = Field(
        default_factory=list, description="Dotted overrides applied to it, as `tunelab train` takes them."
    )


class Param(Strict):
    """One searched setting: a choice of values, or an int / float range."""

    choice: list[Any] | None = Field(None, description="Values to choose from (any YAML values).")
    int_: tuple[int, int] | None = Field(None, alias="int", description="[low, high] integers, both included.")
    float_: tuple[float, float] | None = Field(None, alias="float", description="[low, high] floats.")
    log: bool = Field(False, description="Sample the range on a log scale (low must be positive).")
    step: float | None = Field(None, gt=0, description="Only multiples of step above low (not with log).")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data):
        return {"choice": data} if isinstance(data, list) else data

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [k for k, v in (("choice", self.choice), ("int", self.int_), ("float", self.float_)) if v is not None]
        if len(kinds) != 1:
            raise ValueError(
                "give exactly one of choice: [...], int: [low, high] or float: [low, high]"
                + (f" (got {', '.join(kinds)})" if kinds else "")
            )
        if self.choice is not None:
            if not self.choice:
                raise ValueError("empty choice list")
            if self.log or self.step is not None:
                raise ValueError("log and step apply to ranges, not to a choice")
            return self
        low, high = self.bounds
        if low >= high:
            raise ValueError(f"low must be below high (got [{low}, {high}])")
        if self.log and low <= 0:
            raise ValueError(f"log needs a positive range (got [{low}, {high}])")
        if self.log and self.step is not None:
            raise ValueError("step and log exclude each other")
        if self.int_ is not None and self.step is not None and not float(self.step).is_integer():
            raise ValueError(f"an int range takes an integer step (got {self.step})")
        return self

    @property
    def kind(self) -> str:
        return "choice" if self.choice is not None else "int" if self.int_ is not None else "float"

    @property
    def bounds(self) -> tuple[float, float]:
        return self.int_ if self.int_ is not None else self.float_  # type: ignore[return-value]


class Objective(Strict):
    metric: str = Field(
        description="What a run writes (a row of the metric table): eval_loss, loss, final_eval_loss, tokens_per_s, "
        "a scorer's samples_<name> (at every evaluation) or eval.<name> (runs `tunelab eval` after training), "
        "<name> as eval.scorers reports it: samples_rougeL, eval.exact_match, eval.numeric, ..."
    )
    direction: Literal["minimize", "maximize"] | None = Field(
        None, description="Default: minimize a loss, maximize a score; required for other metrics."
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data):
        return {"metric": data} if isinstance(data, str) else data

    @field_validator("metric")
    @classmethod
    def _a_run_writes_it(cls, v: str) -> str:
        problem = gateway.unknown_metric(v)
        if problem:
            raise ValueError(problem)
        return v


class Pruner(Strict):
    name: Literal["none", "median", "hyperband", "successive_halving"] = Field(
        "none", description="Optuna's pruner; intermediate values are the objective at every evaluation."
    )
    startup_trials: int | None = Field(
        None, ge=0, description="median: trials that finish before any is pruned (default 5)."
    )
    warmup_steps: int | None = Field(
        None, ge=0, description="median: steps of a trial before it may be pruned (default 0)."
    )
    min_steps: int | None = Field(
        None, gt=0, description="hyperband / successive_halving: steps every trial runs (default: Optuna's)."
    )
    reduction_factor: int | None = Field(
        None, ge=2, description="hyperband / successive_halving: 1/N of the trials go on at each rung."
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data):
        return {"name": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _options_fit(self):
        median, halving = ("startup_trials", "warmup_steps"), ("min_steps", "reduction_factor")
        wrong = [k for k in median if getattr(self, k) is not None and self.name != "median"]
        wrong += [
            k for k in halving if getattr(self, k) is not None and self.name not in ("hyperband", "successive_halving")
        ]
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: not an option of the {self.name} pruner")
        return self


class SweepSpec(Strict):
    """A whole sweep file."""

    name: str | None = Field(None, description="Study and folder name (default: the sweep file's stem).")
    dir: str = Field("sweeps", description="Folder that holds sweep folders (<dir>/<name>/).")
    base: BaseSpec = Field(description="The run config every trial starts from.")
    method: Literal["grid", "random", "tpe"] = Field(
        "grid", description="Optuna's GridSampler, RandomSampler or TPESampler."
    )
    space: dict[str, Param] = Field(default_factory=dict, description="Dotted config key -> choice or range.")
    paired: list[dict[str, Any]] | None = Field(
        None,
        description="Settings that vary together (a list of {dotted key: value} maps, all with the same keys): "
        "one more axis.",
    )
    trials: int | None = Field(
        None, gt=0, description="How many trials: required for random / tpe; grid: at most the whole grid."
    )
    objective: list[Objective] = Field(
        default_factory=lambda: [Objective(metric="eval_loss")],
        description="Metric(s) to optimize; several give a Pareto front.",
    )
    seed: int = Field(0, description="Seed of the sampler (trial N draws with a seed made of this and N).")
    pruner: Pruner = Field(default_factory=Pruner, description="Stop unpromising trials early.")
    parallel: int = Field(
        1, gt=0, description="Worker processes; one GPU each on a GPU machine, the CPU threads divided otherwise."
    )
    storage: str | None = Field(
        None,
        description="journal (default: a journal file in the sweep folder), sqlite "
        "(a SQLite file there), or a database URL any machine can reach (postgresql://...).",
    )
    timeout: float | None = Field(None, gt=0, description="Seconds after which no new trial starts.")

    @field_validator("objective", mode="before")
    @classmethod
    def _objective_list(cls, v):
        return v if isinstance(v, list) else [v]

    @field_validator("objective")
    @classmethod
    def _some_objective(cls, v):
        if not v:
            raise ValueError("give at least one metric")
        metrics = [o.metric for o in v]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"a metric appears twice ({', '.join(metrics)})")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        return v if v is None else gateway.check_name(v)

    @field_validator("paired")
    @classmethod
    def _paired_shape(cls, v):
        if v is None:
            return v
        if not v:
            raise ValueError("empty list of paired settings")
        keys = set(v[0])
        if not keys:
            raise ValueError("a paired entry sets nothing")
        for i, entry in enumerate(v):
            if set(entry) != keys:
                raise ValueError(
                    f"entry {i} sets {', '.join(sorted(entry))}; every entry must set {', '.join(sorted(keys))}"
                )
        return v

    @model_validator(mode="after")
    def _method_fits(self):
        if not self.space and not self.paired:
            raise ValueError("space: nothing to search (give space or paired)")
        if self.method == "grid":
            ranges = [k for k, p in self.space.items() if p.kind != "choice"]
            if ranges:
                raise ValueError(
                    f"space.{ranges[0]}: a range, but method grid enumerates choices "
                    "(use choice: [...], or method random / tpe)"
                )
        elif self.trials is None:
            raise ValueError(f"trials: required for method {self.method} (how many trials to run)")
        if len(self.objective) > 1 and self.pruner.name != "none":
            raise ValueError(
                "pruner: Optuna prunes single-objective studies only; use pruner none with several objectives"
            )
        return self


def load_spec(path: Path, overrides: list[str] | None = None) -> SweepSpec:
    """Read and check a sweep file (with `KEY=VALUE` overrides of its own keys); all problems at once."""
    data = gateway.read_yaml(path)
    for text in overrides or []:
        parts, value = gateway.parse_override(text)
        if parts[0] == "space" and len(parts) > 1:  # space keys are dotted config keys themselves
            data.setdefault("space", {})[".".join(parts[1:])] = value
        else:
            gateway.set_dotted(data, ".".join(parts), value)
    space = data.get("space") if isinstance(data.get("space"), dict) else {}
    paired = data.get("paired") if isinstance(data.get("paired"), list) else []
    keys = list(paired[0]) if paired and isinstance(paired[0], dict) else []
    problems = [f"space.{k}: {p}" for k in space if (p := _key_problem(str(k)))]
    problems += [f"paired.{k}: {p}" for k in keys if (p := _key_problem(str(k)))]
    problems += [f"paired.{k}: also in space; a setting is searched once" for k in keys if k in space]
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_problems(e) + problems, source=str(path)) from None
    if problems:
        raise ConfigError(problems, source=str(path))
    return spec


def _key_problem(key: str) -> str | None:
    if key.startswith(gateway.RESERVED) or key in {r.rstrip(".") for r in gateway.RESERVED}:
        return "set by the sweep for every trial (its folder, name and tracker run)"
    return gateway.config_key_problem(key)


def _problems(err: ValidationError) -> list[str]:
    """pydantic's errors as the run config formats them; a model-level problem names its own key."""
    lines = []
    for line in gateway.format_validation_error(err, SweepSpec):
        field, _, message = line.partition(": ")
        if field == "(config)" and ": " in message:  # a check across keys: its message starts with the key
            line = message
        lines.append(line)
    return lines
