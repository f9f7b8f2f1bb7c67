"""The typed records a run directory holds: its summary (`summary.json`), its data statistics, the
results of `tunelab eval` (`eval.json`), and the metadata of every model folder tunelab writes
(`tunelab_model.json`).

Every reader and writer goes through these models, so a key is spelled once. Records read from
disk are lenient (fields may be missing in a failed run's summary or a run from an older tunelab;
unknown keys are kept), records written are complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunelab.runs.damage import DamagedRun, read_json_record, validation_problem
from tunelab.runs.reading import read_json

MODEL_META = "tunelab_model.json"
_LEGACY_FINAL = "tunelab_final.json"  # what final/ held before tunelab_model.json (read, never written)


class Record(BaseModel):
    model_config = ConfigDict(extra="allow")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)


class DataStats(Record):
    """What the data pipeline read and made of it (before training starts)."""

    rows_read: int | None = None
    rows_skipped: dict[str, int] = Field(default_factory=dict)
    train_rows: int | None = None
    test_rows: int | None = None
    train_examples: int | None = None
    test_examples: int | None = None
    train_tokens: int | None = None
    train_loss_tokens: int | None = None
    too_long_truncated: int = 0
    too_long_dropped: int = 0
    no_response_tokens: int = 0
    packing_efficiency: float | None = None


class Parameters(Record):
    total: int = 0
    trainable: int = 0
    trainable_pct: float = 0.0


class Summary(Record):
    """summary.json. A finished run has every field; a failed or interrupted one at least
    status, steps and the reason."""

    status: str
    steps: int | None = None
    reason: str | None = None
    run_dir: str | None = None
    base_model: str | None = None
    adapter: str | None = None
    quantization: int | None = None
    device: str | None = None
    host: str | None = None
    gradient_checkpointing: bool | None = None
    kernels: str | None = None  # training.kernels as resolved: liger or none
    compile: str | None = None  # training.compile as decided: on or off
    compile_reason: str | None = None  # why (auto's rule, or what compiled)
    compile_graphs: int | None = None  # on: the graphs torch.compile built (0: nothing compiled)
    compile_s: float | None = None  # on: seconds spent compiling (inside train_time_s)
    resumed_from: str | None = None
    wall_time_s: float | None = None
    train_time_s: float | None = None
    eval_time_s: float | None = None
    sample_time_s: float | None = None
    train_tokens: int | None = None
    session_tokens: int | None = None
    tokens_per_s: float | None = None
    model_flops_per_token: float | None = None
    achieved_tflops: float | None = None
    mfu: float | None = None  # achieved / peak_tflops, the ranks' matmul peaks measured at the end of the run
    peak_tflops: float | None = None
    peak_rss_mb: float | None = None  # the whole job: summed over its processes (each one's in per_rank)
    peak_gpu_mb: float | None = None
    world_size: int | None = None  # processes that trained together
    strategy: str | None = None  # ddp, fsdp2, deepspeed_zero2/3 (several processes)
    global_batch: int | None = None  # sequences per optimizer step: batch_size x grad_accum x world_size
    per_rank: list[dict[str, Any]] | None = (
        None  # several processes: each rank's host, devices, tokens, speed, MFU, memory
    )
    final_train_loss: float | None = None
    final_eval_loss: float | None = None
    samples_exact_match_before: float | None = None
    samples_exact_match_after: float | None = None
    heldout_reward_before: float | None = None  # grpo: the rewards' weighted sum over the sample answers
    heldout_reward_after: float | None = None
    reward_failures: dict[str, int] | None = None  # grpo: completions each reward could not score
    heldout_reward_failures: dict[str, int] | None = None  # grpo: held-out answers each reward could not score
    parameters: Parameters | None = None
    data: DataStats | None = None
    config: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if d.get("peak_gpu_mb") is None:
            d.pop("peak_gpu_mb", None)  # a CPU run has no GPU peak (not a zero one)
        return d

    @classmethod
    def read(cls, path: Path) -> Summary | None:
        """The summary at `path`; None when there is none yet; `DamagedRun` when the file is there but
        is not a summary (not JSON, no status, a field of the wrong type). Losses may be NaN or
        infinite: a run that diverged records that, and readers show it rather than rank it."""
        data = read_json_record(path)
        if data is None:
            return None
        if not isinstance(data.get("status"), str):
            raise DamagedRun(path, "no status (completed, failed, interrupted or pruned)")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise DamagedRun(path, validation_problem(e)) from None


# A metric as eval.json holds it: a number (NaN and infinity included: a diverged model), never text or a bool.
Number = Annotated[float, Field(strict=True)]


class EvalModel(Record):
    """One evaluated model in eval.json: what it is and its metrics (`exact_match`, `loss`, a scorer's key)."""

    label: str | None = None
    model: str | None = None  # what was loaded: a path, a hub id, or "<base> (adapter disabled)"
    metrics: dict[str, Number] = Field(default_factory=dict)


class EvalData(Record):
    source: str | None = None
    split: str | None = None
    examples: int | None = None
    prompt_format: str | None = None
    reference_words: float | None = None  # mean words per reference answer


class EvalInterval(Record):
    """A paired bootstrap interval of target - baseline on one metric (`evaluation.intervals`)."""

    low: Number
    high: Number
    prompts: int  # the prompts both models were scored on, each resample draws this many
    resamples: int | None = None
    seed: int | None = None
    level: float | None = None  # 0.95
    direction: int | None = None  # the metric's, when eval ran: +1 higher is better, -1 lower, 0 neither

    def verdict(self, direction: int | None = None) -> str:
        """The verdict the tables print: better or worse (by the metric's direction; higher or lower for a
        metric with none) when the interval excludes zero, else "not distinguishable on N prompts".
        `direction` defaults to the one recorded with the interval."""
        if not self.distinguishes():
            return f"not distinguishable on {self.prompts} prompts"
        side = 1 if self.low > 0 else -1
        direction = self.direction if direction is None else direction
        if not direction:
            return "higher" if side > 0 else "lower"
        return "better" if side * direction > 0 else "worse"

    def distinguishes(self) -> bool:
        """Whether the interval excludes zero: the difference is more than the choice of prompts explains."""
        return self.low > 0 or self.high < 0


class EvalLeakage(Record):
    """Held-out prompts that also occur in the training rows (`evaluation.leakage`), found before scoring."""

    checked: int  # held-out prompts looked up
    training_rows: int
    exact: int  # equal to a training prompt after normalize_answer's folding
    near: int  # not exact, but a near-duplicate by word n-gram Jaccard
    ngram: int | None = None
    threshold: float | None = None
    examples: list[int] = Field(default_factory=list)  # indices of the first flagged prompts in eval_samples.jsonl


class JudgeResult(Record):
    """The pairwise judge's verdicts on target vs baseline (`evaluation.judge`): each prompt asked in both
    orders, a win or loss only when both orders agree, else a tie. The win rate counts a tie as half a
    win (AlpacaEval's convention); its interval is a seeded bootstrap over the prompts."""

    model: str  # the judge's model id
    endpoint: str | None = None  # the API's URL without credentials, or the TARGET served in-process
    template: str  # the judge prompt as sent (placeholders unfilled)
    template_source: str | None = None  # "default" or the file it was read from
    template_sha256: str | None = None
    n: int  # prompts judged
    wins: int
    ties: int
    losses: int
    win_rate: Number  # (wins + ties / 2) / n
    win_rate_low: Number
    win_rate_high: Number
    ties_as: str = "half"
    interval: str | None = None  # how the interval was computed
    position_consistency: Number | None = None  # share of prompts whose two verdicts agreed (both parsed)
    inconsistent: int = 0  # prompts whose two orders disagreed (counted as ties)
    failed_pairs: int = 0  # prompts with an order that got no verdict (counted as ties)
    requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0
    failures: int = 0  # questions (one order of one prompt) that got no verdict after every attempt
    unparsable: int = 0  # replies without a `Verdict:` line
    rate_limited: int = 0  # 429 answers
    prompt_tokens: int = 0  # from the API's `usage`, when it reports one
    completion_tokens: int = 0
    errors: dict[str, int] = Field(default_factory=dict)  # why attempts failed, counted

    def verdict(self) -> str:
        """better / worse when the interval of the win rate excludes one half, else "not distinguishable"."""
        return EvalInterval(low=self.win_rate_low - 0.5, high=self.win_rate_high - 0.5, prompts=self.n).verdict(1)


class BenchmarkScore(Record):
    """One lm-eval task of `tunelab eval --tasks` (`evaluation.benchmarks`): its primary metric for the
    target and the baseline, each with lm-eval's own standard error, and target - baseline."""

    metric: str  # lm-eval's name: acc, acc_norm, exact_match...
    tuned: Number
    tuned_stderr: Number | None = None
    baseline: Number | None = None
    baseline_stderr: Number | None = None
    diff: Number | None = None
    higher_is_better: bool = True
    examples: int | None = None


class EvalRecord(Record):
    """eval.json, what `tunelab eval` writes: the target and its baseline on the same examples.

    It is read for its numbers: a value of another shape than tunelab writes (a metric that is text,
    `models` that is a list) reads as absent, and the report and `runs compare` show the rest; only a
    file that is not a JSON object at all is a `DamagedRun`."""

    target: str | None = None
    step: int | None = None  # the training step of the target's weights, when it is a run
    created: str | None = None
    data: EvalData | None = None
    generation: dict[str, Any] | None = None  # the generation settings, as GenerationSettings.as_dict()
    models: dict[str, EvalModel] = Field(default_factory=dict)  # "target" and, when compared, "baseline"
    time_s: float | None = None
    difference: dict[str, Number] | None = None  # target - baseline, per metric both have
    scorers: dict[str, Any] | None = None  # metric key -> the scorer's declaration {kind: parameters}
    intervals: dict[str, EvalInterval] | None = None  # metric key -> 95 % interval of `difference` (newer files)
    leakage: EvalLeakage | None = None  # held-out prompts found in the training rows (a run's own split)
    judge: JudgeResult | None = None  # the pairwise judge's verdicts (`tunelab eval --judge`)
    benchmarks: dict[str, BenchmarkScore] | None = None  # lm-eval task -> its scores (`--tasks`)

    def metrics(self, role: str = "target") -> dict[str, float]:
        """The metrics of one model (`target` or `baseline`); empty when it has none."""
        model = self.models.get(role)
        return dict(model.metrics) if model is not None else {}

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        # absent, not null, when there are none
        for key in ("difference", "scorers", "intervals", "leakage", "judge", "benchmarks"):
            if d.get(key) is None:
                d.pop(key, None)
        return d

    @classmethod
    def read(cls, path: Path) -> EvalRecord | None:
        """The record at `path`; None when there is none; `DamagedRun` when the file is not a JSON object."""
        data = read_json_record(path)
        return None if data is None else cls.lenient(data)

    @classmethod
    def lenient(cls, data: dict[str, Any]) -> EvalRecord:
        """The record from `data`, every value that does not fit dropped (see the class)."""
        data = json.loads(json.dumps(data))  # a copy to drop values from
        while True:  # each round drops at least one value, so this ends
            try:
                return cls.model_validate(data)
            except ValidationError as e:
                locs = [err["loc"] for err in e.errors()]
            if any([_drop(data, loc) for loc in locs]):
                continue
            # a location that names no key (a type in a union): its whole field goes
            if all(data.pop(loc[0], _MISSING) is _MISSING for loc in locs if loc):
                raise RuntimeError(f"eval record: cannot drop what fails validation at {locs}")


def _drop(data: Any, loc: tuple) -> bool:
    """Remove the value at `loc` (a pydantic error location) from nested dicts; whether it was there."""
    *parents, last = loc
    for key in parents:
        if not isinstance(data, dict) or key not in data:
            return False
        data = data[key]
    return isinstance(data, dict) and data.pop(last, _MISSING) is not _MISSING


_MISSING = object()


ModelKind = Literal["adapter", "full", "merged", "gguf"]


class ModelMeta(Record):
    """tunelab_model.json, in every model folder tunelab writes (a run's final/, merge and export
    output): what the folder is, what it rests on, and how it must be asked."""

    kind: ModelKind
    base_model: str | None = None  # as the user named it: a hub id, tiny: preset or folder
    base_model_path: str | None = None  # where it was loaded from (a local folder, or the hub id)
    revision: str | None = None
    adapter: str | None = None  # lora | none
    quantization: int | None = None
    step: int | None = None
    prompt: dict[str, Any] | None = None  # the PromptConfig it was trained with
    source: str | None = None  # what merge / export read (a run, folder or artifact)
    dtype: str | None = None
    check: str | None = None  # the logit check of a merge

    @property
    def prompt_format(self) -> str | None:
        return (self.prompt or {}).get("format")

    def write(self, folder: Path) -> None:
        (Path(folder) / MODEL_META).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def read(cls, folder: Path) -> ModelMeta | None:
        """The folder's metadata; from a run written before tunelab_model.json, its tunelab_final.json."""
        folder = Path(folder)
        data = read_json(folder / MODEL_META)
        if data is not None:
            data.setdefault("kind", "adapter" if (folder / "adapter_config.json").is_file() else "full")
            try:
                return cls.model_validate(data)
            except ValueError:
                return None
        legacy = read_json(folder / _LEGACY_FINAL)
        if legacy is None:
            return None
        fmt = legacy.pop("prompt_format", None)
        kind = "adapter" if legacy.get("adapter") == "lora" else "full"
        return cls.model_validate({**legacy, "kind": kind, "prompt": {"format": fmt} if fmt else None})

    @classmethod
    def present(cls, folder: Path) -> bool:
        return (Path(folder) / MODEL_META).is_file() or (Path(folder) / _LEGACY_FINAL).is_file()
