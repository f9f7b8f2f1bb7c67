"""Every metric tunelab reports, one row each: its key, label, format, direction and where a run
writes it. `runs list` / `compare`, the report, `tunelab eval`'s table, sweep objectives and the
trackers read this table, so adding a metric is one row here, and a key is spelled once.

Scorer metrics come from the scorers a run declares (`eval.scorers`, `--scorer`): each adds
`samples_<key>` (metrics.jsonl, at every evaluation) and `eval.<key>` (eval.json). The scorer
registry sits above this package (`scoring` imports `runs`, never the reverse), so this table holds
the fixed rows and takes the scorers from its caller: `MetricTable.with_scorers`, which
`tunelab.evaluation.metrics.metric_table` calls with the registry's kinds and a run's declarations.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

# Where a value is written: metrics.jsonl at every logging step ("log") or at each evaluation
# ("evaluation", what a pruner can follow), summary.json once at the end, eval.json by `tunelab eval`
# (its metrics, "eval", and its lm-eval tasks of `--tasks`, "benchmark": `benchmark_row`).
Where = Literal["log", "evaluation", "summary", "eval", "benchmark"]

EVAL_PREFIX = "eval."  # eval.json's metrics, as a sweep objective names them (eval.loss is not the training loss)
SAMPLES_PREFIX = "samples_"  # a scorer's mean over the sample answers at each evaluation
BENCH_PREFIX = "bench."  # an lm-eval task's score in eval.json's `benchmarks` (`tunelab eval --tasks`)

LOSS = "loss"
EVAL_LOSS = "eval_loss"
FINAL_TRAIN_LOSS = "final_train_loss"
FINAL_EVAL_LOSS = "final_eval_loss"
EXACT_MATCH = "exact_match"
SAMPLES_EXACT_MATCH = SAMPLES_PREFIX + EXACT_MATCH
SAMPLES_EXACT_MATCH_BEFORE = "samples_exact_match_before"
SAMPLES_EXACT_MATCH_AFTER = "samples_exact_match_after"
PREFERENCE_ACCURACY = "preference_accuracy"
PREFERENCE_ACCURACY_BEFORE = "preference_accuracy_before"
PREFERENCE_ACCURACY_AFTER = "preference_accuracy_after"
PREFERENCE_MARGIN = "preference_margin"
JUDGE_WIN_RATE = "judge_win_rate"  # eval.json's target metric: the pairwise judge's win rate over the baseline
REWARD_MARGINS = "rewards/margins"
REWARD = "reward"  # grpo: the rollouts' weighted reward, mean over a logging interval (TRL's key)
HELDOUT_REWARD = "heldout_reward"  # grpo: the rewards' weighted sum over the greedy sample answers
HELDOUT_REWARD_BEFORE = "heldout_reward_before"
HELDOUT_REWARD_AFTER = "heldout_reward_after"


@dataclass(frozen=True)
class Metric:
    """One row. `key` is unique in the table: the metrics.jsonl or summary.json key, or `eval.<name>`
    for eval.json's `<name>`. `fmt` is "pct" (a share, shown as a percentage) or a `str.format`
    pattern; `direction` is +1 (higher is better), -1 (lower is better) or 0 (neither, or a trade-off
    only the user can weigh: time, memory, answer length)."""

    key: str
    label: str
    fmt: str
    direction: int
    where: Where
    logged_as: str | None = None  # the metrics.jsonl series that stands in before summary.json exists

    @property
    def field(self) -> str:
        """The key inside the file that holds it (eval.json's metrics drop the `eval.` prefix, its
        benchmarks are keyed by the task's name)."""
        if self.where == "benchmark":
            return self.key.removeprefix(BENCH_PREFIX)
        return self.key.removeprefix(EVAL_PREFIX) if self.where == "eval" else self.key

    def format(self, value: Any) -> str:
        """The value as tables show it; "" for none."""
        if value is None:
            return ""
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)  # a diverged run's nan / inf, shown as such
        return f"{value:.1%}" if self.fmt == "pct" else self.fmt.format(value)

    def format_delta(self, diff: float) -> str:
        """A signed difference in the metric's own format (points for a share)."""
        return ("+" if diff > 0 else "") + (f"{diff * 100:.1f} pts" if self.fmt == "pct" else self.format(diff))

    def format_with_stderr(self, value: float | None, stderr: float | None) -> str:
        """A score with its standard error (lm-eval's, `tunelab eval --tasks`), "-" for none."""
        if value is None:
            return "-"
        return self.format(value) + (f" ± {self.format(stderr)}" if stderr is not None else "")


@dataclass(frozen=True)
class ScorerMetric:
    """What the table needs of one scorer: the key it reports under, its label, format and direction."""

    key: str
    label: str
    fmt: str
    direction: int


FIXED: tuple[Metric, ...] = (
    Metric(LOSS, "training loss", "{:.4f}", -1, "log"),
    Metric(REWARD_MARGINS, "reward margin (training batches)", "{:.3f}", 1, "log"),
    Metric(EVAL_LOSS, "eval loss", "{:.4f}", -1, "evaluation"),
    # exact match is logged at every evaluation whatever eval.scorers says (the summary reports it)
    Metric(SAMPLES_EXACT_MATCH, "sample exact match", "pct", 1, "evaluation"),
    Metric(PREFERENCE_ACCURACY, "held-out preference accuracy (chosen likelier)", "pct", 1, "evaluation"),
    Metric(PREFERENCE_MARGIN, "held-out preference margin (nats)", "{:.3f}", 1, "evaluation"),
    Metric(REWARD, "mean reward (training rollouts)", "{:.3f}", 1, "log"),
    Metric(HELDOUT_REWARD, "held-out reward (greedy sample answers)", "{:.3f}", 1, "evaluation"),
    Metric(FINAL_TRAIN_LOSS, "final train loss", "{:.4f}", -1, "summary", logged_as=LOSS),
    Metric(FINAL_EVAL_LOSS, "final eval loss", "{:.4f}", -1, "summary", logged_as=EVAL_LOSS),
    # before training: a starting point, not a result (no run is better for starting higher)
    Metric(SAMPLES_EXACT_MATCH_BEFORE, "sample exact match, before training", "pct", 0, "summary"),
    Metric(
        SAMPLES_EXACT_MATCH_AFTER,
        "sample exact match, last evaluation",
        "pct",
        1,
        "summary",
        logged_as=SAMPLES_EXACT_MATCH,
    ),
    Metric(PREFERENCE_ACCURACY_BEFORE, "preference accuracy, before training", "pct", 0, "summary"),
    Metric(
        PREFERENCE_ACCURACY_AFTER,
        "preference accuracy, last evaluation",
        "pct",
        1,
        "summary",
        logged_as=PREFERENCE_ACCURACY,
    ),
    Metric(HELDOUT_REWARD_BEFORE, "held-out reward, before training", "{:.3f}", 0, "summary"),
    Metric(
        HELDOUT_REWARD_AFTER,
        "held-out reward, last evaluation",
        "{:.3f}",
        1,
        "summary",
        logged_as=HELDOUT_REWARD,
    ),
    Metric("tokens_per_s", "training tokens/s", "{:,.0f}", 0, "summary"),
    Metric("achieved_tflops", "achieved TFLOP/s", "{:.2f}", 0, "summary"),
    Metric("peak_rss_mb", "peak memory (MB RSS)", "{:,.0f}", 0, "summary"),
    Metric("peak_gpu_mb", "peak GPU memory (MB)", "{:,.0f}", 0, "summary"),
    Metric("wall_time_s", "wall time (s)", "{:.1f}", 0, "summary"),
    Metric("train_time_s", "training time (s)", "{:.1f}", 0, "summary"),
    Metric(EVAL_PREFIX + LOSS, "loss (response tokens)", "{:.4f}", -1, "eval"),
    Metric(EVAL_PREFIX + "perplexity", "perplexity", "{:.2f}", -1, "eval"),
    Metric(EVAL_PREFIX + PREFERENCE_ACCURACY, "preference accuracy (chosen likelier)", "pct", 1, "eval"),
    Metric(EVAL_PREFIX + PREFERENCE_MARGIN, "preference margin (nats)", "{:.3f}", 1, "eval"),
    Metric(EVAL_PREFIX + JUDGE_WIN_RATE, "judge win rate vs baseline (ties half)", "pct", 1, "eval"),
)


class MetricTable:
    """The rows, in order: the fixed ones, then each scorer's (its sample row and its eval.json row)."""

    def __init__(self, rows: Iterable[Metric] = FIXED):
        self.rows: dict[str, Metric] = {}
        for m in rows:
            self.rows.setdefault(m.key, m)  # a fixed row wins over a scorer reported under its key

    def with_scorers(self, scorers: Iterable[ScorerMetric]) -> MetricTable:
        """This table and, for each scorer, `samples_<key>` and `eval.<key>`."""
        added = []
        for s in scorers:
            added.append(Metric(SAMPLES_PREFIX + s.key, f"sample {s.label}", s.fmt, s.direction, "evaluation"))
            added.append(Metric(EVAL_PREFIX + s.key, s.label, s.fmt, s.direction, "eval"))
        return MetricTable([*self.rows.values(), *added])

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def get(self, key: str) -> Metric | None:
        return self.rows.get(key)

    def keys(self) -> list[str]:
        return list(self.rows)

    def at(self, *where: Where) -> list[Metric]:
        """The rows written to these places, in table order."""
        return [m for m in self.rows.values() if m.where in where]

    def find(self, key: str) -> Metric | None:
        """The row of `key`; for a scorer's metric this table does not list (`samples_<name>`,
        `eval.<name>`: a scorer declared under a name of its own, or one a newer tunelab knows) a row
        made up from the prefix, its name as label and no direction; None for any other key."""
        if key in self.rows:
            return self.rows[key]
        if key.startswith(EVAL_PREFIX):
            return Metric(key, key.removeprefix(EVAL_PREFIX), "{:.3f}", 0, "eval")
        if key.startswith(SAMPLES_PREFIX):
            return Metric(key, key, "{:.3f}", 0, "evaluation")
        return None

    def eval_row(self, name: str) -> Metric:
        """The row of eval.json's metric `name` (see `find`)."""
        return self.find(EVAL_PREFIX + name)  # type: ignore[return-value]  # an eval. key always has one

    def direction(self, name: str) -> int:
        """+1 / -1 / 0 for a metric as any file or tracker names it: a table key (`final_eval_loss`,
        `eval.bleu`), a tracker's `eval/baseline/bleu`, or eval.json's bare `bleu`."""
        for key in _spellings(name):
            if key in self.rows:
                return self.rows[key].direction
        return -1 if name.endswith(LOSS) else 0


def benchmark_row(task: str, metric: str = "acc", higher_is_better: bool = True) -> Metric:
    """The row of one lm-eval task (`bench.<task>`; one per task, since each reports its own primary
    metric), in lm-eval's own four decimals; its field in eval.json's `benchmarks` is the task name."""
    return Metric(BENCH_PREFIX + task, f"{task} ({metric})", "{:.4f}", 1 if higher_is_better else -1, "benchmark")


def _spellings(name: str) -> list[str]:
    """The table keys a name may stand for, most specific first."""
    last = name.rsplit("/", 1)[-1] if name.startswith("eval/") else name
    keys = [name, EVAL_PREFIX + last, SAMPLES_PREFIX + last]
    if last.startswith(SAMPLES_PREFIX):
        keys.append(EVAL_PREFIX + last.removeprefix(SAMPLES_PREFIX))
    return keys


TABLE = MetricTable()
