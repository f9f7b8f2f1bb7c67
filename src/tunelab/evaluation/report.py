"""`tunelab report`: one self-contained HTML page comparing runs.

The page has no scripts and loads nothing: CSS is inline and plots are base64 PNGs, so it opens
from a mail attachment or an air-gapped machine. Jinja2 renders it with autoescaping on, because
prompts and answers are arbitrary text. Whatever a run lacks (metrics, summary, evaluation) shows
as a marked gap.
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunelab.evaluation.intervals import paired_interval
from tunelab.evaluation.metrics import direction, exact_match, metric_table
from tunelab.evaluation.plots import all_curves
from tunelab.outputs import Output, check_output, write_text
from tunelab.runs.contents import RunData, load_runs
from tunelab.runs.metric_table import (
    EXACT_MATCH,
    FINAL_EVAL_LOSS,
    FINAL_TRAIN_LOSS,
    HELDOUT_REWARD_AFTER,
    HELDOUT_REWARD_BEFORE,
    PREFERENCE_ACCURACY_AFTER,
    PREFERENCE_ACCURACY_BEFORE,
    REWARD,
    REWARD_MARGINS,
    SAMPLES_EXACT_MATCH,
    SAMPLES_EXACT_MATCH_AFTER,
    SAMPLES_EXACT_MATCH_BEFORE,
    SAMPLES_PREFIX,
    Metric,
    MetricTable,
    benchmark_row,
)
from tunelab.runs.reading import NOT_COMPARED, flatten
from tunelab.runs.records import EvalInterval
from tunelab.scoring.registry import declared_kind

TEMPLATES = Path(__file__).parent / "templates"
# shown in the "same in every run" table when equal; any key that differs is shown regardless
KEY_SETTINGS = [
    "model.name",
    "quantization.bits",
    "adapter.type",
    "adapter.r",
    "adapter.alpha",
    "adapter.dropout",
    "adapter.target_modules",
    "data.train.path",
    "data.train",
    "data.test_size",
    "data.train_rows",
    "prompt.format",
    "prompt.train_on",
    "training.method",
    "preference.beta",
    "preference.loss_type",
    "training.max_steps",
    "training.epochs",
    "training.learning_rate",
    "training.lr_scheduler",
    "training.batch_size",
    "training.grad_accum",
    "training.max_length",
    "training.packing",
    "training.seed",
]
# The training table's rows, in order: the summary's results (each falling back to its logged series
# while a run trains), then every scorer's last sample value, then preference tuning's.
TRAIN_BEFORE = (FINAL_TRAIN_LOSS, FINAL_EVAL_LOSS, SAMPLES_EXACT_MATCH_BEFORE, SAMPLES_EXACT_MATCH_AFTER)
TRAIN_AFTER = (
    PREFERENCE_ACCURACY_BEFORE,
    PREFERENCE_ACCURACY_AFTER,
    REWARD_MARGINS,
    HELDOUT_REWARD_BEFORE,  # grpo
    HELDOUT_REWARD_AFTER,
    REWARD,
)
# where a value was read, said after a row's label
WHEN = {"evaluation": ", last evaluation", "log": ", last log"}


def fmt(value: Any, how: str) -> str:
    if value is None:
        return ""
    if how == "pct":
        return f"{value:.1%}"
    return how.format(value)


def show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def config_tables(runs: list[RunData]) -> tuple[list[dict], list[dict]]:
    """(settings that differ between runs, key settings equal in all of them)."""
    flat = [flatten(r.config) for r in runs]
    keys = sorted({k for f in flat for k in f} - NOT_COMPARED)
    missing = object()
    differ, same = [], []
    for k in keys:
        values = [f.get(k, missing) for f in flat]
        cells = ["(not set)" if v is missing else show(v) for v in values]
        if len(set(cells)) > 1:
            differ.append({"key": k, "cells": cells})
        elif k in KEY_SETTINGS:
            same.append({"key": k, "value": cells[0]})
    same.sort(key=lambda row: KEY_SETTINGS.index(row["key"]))
    return differ, same


def metric_row(
    label: str,
    key: str,
    values: list[float | None],
    how: str,
    notes: list[str] | None = None,
    groups: list[str] | None = None,
    better: int | None = None,
) -> dict:
    """A table row: formatted cells, the best one marked when it alone is best as shown (a tie, or
    values that print the same, such as 0.0 and 0.04 at one decimal, gets no star). With `groups`
    (each run's training method) only runs of one group compete: the losses of SFT, DPO and KTO
    measure different objectives. A NaN or infinite value (a diverged run) is shown, never best.
    `better`: the metric's direction, when the caller has its row (default: looked up by `key`)."""
    d = direction(key) if better is None else better
    values = [_number(v) for v in values]
    texts = [fmt(v, how) if v is not None else None for v in values]
    groups = groups or [""] * len(values)
    best: set[int] = set()
    if d:
        for g in dict.fromkeys(groups):
            best |= _sole_best(values, texts, [i for i, x in enumerate(groups) if x == g], d)
    cells = [
        {
            "text": texts[i] or "",
            "gap": v is None,
            "best": i in best,
            "note": (notes or [""] * len(values))[i],
        }
        for i, v in enumerate(values)
    ]
    return {"label": label, "key": key, "cells": cells, "values": values}


def _sole_best(values: list[float | None], texts: list[str | None], among: list[int], d: int) -> set[int]:
    """{index} of the one best finite value among `among` when it alone prints as best, else empty."""
    present = [i for i in among if values[i] is not None and math.isfinite(values[i])]
    if len(present) < 2:
        return set()
    pick = max if d > 0 else min
    winner = pick(present, key=lambda i: values[i])
    return {winner} if sum(1 for i in present if texts[i] == texts[winner]) == 1 else set()


def _number(v: Any) -> float | None:
    """A metric value as a number; anything else (a damaged eval.json's text) is a gap."""
    return v if isinstance(v, int | float) and not isinstance(v, bool) else None


def method_groups(runs: list[RunData]) -> list[str] | None:
    """Each run's training method when the runs mix methods (their losses are then not comparable), else None."""
    methods = [r.method for r in runs]
    return methods if len(set(methods)) > 1 else None


def verdict(
    runs: list[RunData], eval_rows: list[dict], train_rows: list[dict], intervals: RunIntervals | None = None
) -> str | None:
    """One line: the best run on the primary metric (eval exact match, else eval loss, else
    training loss) and by how much it leads the next one. On exact match a winner is named only
    when the paired bootstrap interval of the two runs' per-prompt scores excludes zero (`run_interval`;
    `intervals`: the ones the eval table already computed)."""
    if len(runs) < 2:
        return None
    intervals = intervals or RunIntervals(runs)
    for key, rows in ((EXACT_MATCH, eval_rows), (FINAL_EVAL_LOSS, train_rows), (FINAL_TRAIN_LOSS, train_rows)):
        row = next((r for r in rows if r["key"] == key), None)
        if row is None:
            continue
        scored = [(v, i) for i, v in enumerate(row["values"]) if v is not None and math.isfinite(v)]
        if len(scored) < 2 or (key.endswith("loss") and method_groups(runs)):
            continue
        scored.sort(key=lambda x: x[0], reverse=direction(key) > 0)
        (best, i), (second, j) = scored[0], scored[1]
        how = "pct" if key == EXACT_MATCH else "{:.4f}"
        name, other = runs[i].name, runs[j].name
        if best == second:
            return f"{name} and {other} tie on {row['label']} ({fmt(best, how)})."
        gap = f"{(best - second) * 100:+.1f} points" if key == EXACT_MATCH else f"{best - second:+.4f}"
        lead = f"{name} ({fmt(best, how)}), {gap} against {other}"
        if key != EXACT_MATCH:
            return f"Best on {row['label']}: {lead}."
        interval = intervals.between(i, j, key)
        if interval is None:
            return f"Highest {row['label']}: {lead}; no interval: the runs' evaluations share no prompts."
        span = f"95 % interval {interval.low * 100:+.1f}..{interval.high * 100:+.1f} points"
        if not interval.distinguishes():
            return (
                f"{name} and {other} are not distinguishable on {row['label']} on {interval.prompts} prompts "
                f"({fmt(best, how)} vs {fmt(second, how)}; {span})."
            )
        return f"Best on {row['label']}: {lead} ({span}, paired over {interval.prompts} prompts)."
    return None


def run_interval(a: RunData, b: RunData, key: str) -> EvalInterval | None:
    """The paired bootstrap interval of a - b on one per-example metric of the tuned models, over the
    prompts both runs' eval_samples.jsonl hold; None when they share none."""
    sa, sb = _target_scores(a, key), _target_scores(b, key)
    shared = [p for p in sa if p in sb]
    if not shared:
        return None
    return paired_interval([sa[p] for p in shared], [sb[p] for p in shared])


class RunIntervals:
    """`run_interval` of the report's runs, computed once per pair and metric: the eval table's star and
    the verdict line ask for the same pair, and each bootstrap resamples a thousand times."""

    def __init__(self, runs: list[RunData]):
        self.runs = runs
        self._known: dict[tuple[int, int, str], EvalInterval | None] = {}

    def between(self, i: int, j: int, key: str) -> EvalInterval | None:
        """The interval of runs[i] - runs[j] on `key`."""
        if (i, j, key) not in self._known:
            self._known[(i, j, key)] = run_interval(self.runs[i], self.runs[j], key)
        return self._known[(i, j, key)]


def _target_scores(run: RunData, key: str) -> dict[str, float]:
    """{prompt: the tuned model's score} from a run's eval_samples.jsonl (lines of another shape skipped)."""
    out = {}
    for s in getattr(run, "eval_samples", None) or []:
        scores = s.get("scores") if isinstance(s, dict) else None
        target = scores.get("target") if isinstance(scores, dict) else None
        value = _number(target.get(key)) if isinstance(target, dict) else None
        if isinstance(s.get("prompt"), str) and value is not None:
            out[s["prompt"]] = float(value)
    return out


def metrics_tables(runs: list[RunData], intervals: RunIntervals | None = None) -> tuple[list[dict], list[dict]]:
    """(rows from eval.json with the base model beside each value, rows from training); a row no run
    has is left out. The metric table says each row's label, format and direction; the scorers the
    runs declare (their configs' eval.scorers, their eval.json) add theirs. `intervals`: shared with
    the verdict line, so each pair of runs is bootstrapped once."""
    table = run_metric_table(runs)
    intervals = intervals or RunIntervals(runs)
    eval_rows = []
    for m in eval_metrics(runs, table):
        values, notes = [], []
        for r in runs:
            values.append(_number(r.value(m)))
            base = _number(r.value(m, role="baseline"))
            notes.append(_base_note(r, m, base))
        if any(v is not None for v in values):
            row = metric_row(m.label, m.field, values, m.fmt, notes, better=m.direction)
            _star_only_when_distinguished(row, runs, m, intervals)
            eval_rows.append(row)
    groups = method_groups(runs)
    train_rows = []
    for m in train_metrics(table):
        losses = m.key in (FINAL_TRAIN_LOSS, FINAL_EVAL_LOSS)
        label = m.label + WHEN.get(m.where, "") + (" (compared within each method)" if losses and groups else "")
        values = [r.value(m) for r in runs]
        groups_of = groups if losses else None
        train_rows.append(metric_row(label, m.key, values, m.fmt, groups=groups_of, better=m.direction))
    train_rows = [row for row in train_rows if not all(c["gap"] for c in row["cells"])]
    return eval_rows, train_rows


def _star_only_when_distinguished(row: dict, runs: list[RunData], m: Metric, intervals: RunIntervals) -> None:
    """Take the star off a per-prompt score's best run when the paired interval against the next run
    (`run_interval`) includes zero: the report names no winner that the interval does not support."""
    best = next((i for i, c in enumerate(row["cells"]) if c["best"]), None)
    if best is None or not _mean_of_prompt_scores(runs, m.field):
        return
    values = row["values"]
    rest = [i for i, v in enumerate(values) if i != best and v is not None and math.isfinite(v)]
    second = (max if m.direction > 0 else min)(rest, key=lambda i: values[i])
    interval = intervals.between(best, second, m.field)
    if interval is not None and not interval.distinguishes():
        row["cells"][best]["best"] = False


def _mean_of_prompt_scores(runs: list[RunData], key: str) -> bool:
    """Whether eval.json's `key` is the mean of the per-prompt scores eval_samples.jsonl holds (a corpus
    score such as BLEU is not), as the scorer eval.json records for it says."""
    for r in runs:
        declared = (r.eval.scorers or {}).get(key) if r.eval is not None else None
        kind = declared_kind(declared) if declared is not None else None
        if kind is not None:
            return kind.corpus is None
    return False


def _base_note(run: RunData, m: Metric, base: float | None) -> str:
    """What a run's eval cell says beside its value: its baseline's, and the interval's verdict when recorded."""
    if base is None:
        return ""
    interval = (run.eval.intervals or {}).get(m.field) if run.eval is not None else None
    return f"base {fmt(base, m.fmt)}" + (f", {interval.verdict(m.direction)}" if interval is not None else "")


def run_metric_table(runs: list[RunData]) -> MetricTable:
    """The metric table with the scorers these runs declared: in their configs, and in their eval.json."""
    declared = []
    for r in runs:
        scorers = (r.config.get("eval") or {}).get("scorers") if isinstance(r.config.get("eval"), dict) else None
        declared += scorers if isinstance(scorers, list) else []
        declared += list((r.eval.scorers or {}).values()) if r.eval is not None else []
    return metric_table(declared=declared)


def eval_metrics(runs: list[RunData], table: MetricTable) -> list[Metric]:
    """eval.json's rows: the table's, then one for each metric an eval.json holds that the table lacks."""
    known = table.at("eval")
    seen = {m.field for m in known}
    found = [k for r in runs if r.eval is not None for role in ("target", "baseline") for k in r.eval.metrics(role)]
    return known + [table.eval_row(k) for k in dict.fromkeys(found) if k not in seen]


def train_metrics(table: MetricTable) -> list[Metric]:
    """The training table's rows (see TRAIN_BEFORE): sample exact match once, as the summary's."""
    samples = [m for m in table.at("evaluation") if m.key.startswith(SAMPLES_PREFIX) and m.key != SAMPLES_EXACT_MATCH]
    return [table.rows[k] for k in TRAIN_BEFORE] + samples + [table.rows[k] for k in TRAIN_AFTER]


def metadata_rows(runs: list[RunData]) -> list[dict]:
    """Rows of run facts (duration, hardware, memory, data, base model); a row no run has is left out."""
    per_run = [_metadata(r) for r in runs]
    labels = list(dict.fromkeys(k for m in per_run for k in m))
    rows = []
    for label in labels:
        cells = [m.get(label, "") for m in per_run]
        if any(cells):
            rows.append({"label": label, "cells": [{"text": c, "gap": not c} for c in cells]})
    return rows


def _metadata(r: RunData) -> dict[str, str]:
    s = r.summary.to_dict() if r.summary is not None else {}

    def num(key: str, unit: str = "", digits: int = 0) -> str:
        v = s.get(key)
        return f"{v:,.{digits}f}{unit}" if isinstance(v, int | float) else ""

    params = s.get("parameters") or {}
    memory = [x for x in (num("peak_rss_mb", " MB RSS"), num("peak_gpu_mb", " MB GPU")) if x]
    return {
        "status": str(s.get("status", "")),
        "steps": num("steps"),
        "wall time": num("wall_time_s", " s", 1),
        "training time": num("train_time_s", " s", 1),
        "training tokens/s": num("tokens_per_s"),
        "device": str(s.get("device", "")),
        "host": str(s.get("host", "")),
        "peak memory": ", ".join(memory),
        "base model": str(s.get("base_model") or (r.config.get("model") or {}).get("name", "")),
        "adapter": _adapter(r),
        "trainable parameters": f"{params['trainable']:,} of {params['total']:,}" if "trainable" in params else "",
        "data": _data(r),
        "data version": _data_version(r),
        "evaluated": f"{r.eval.created or ''} on {_examples(r)} examples" if r.eval is not None else "",
    }


def _examples(r: RunData) -> Any:
    data = r.eval.data if r.eval is not None else None
    return data.examples if data is not None and data.examples is not None else "?"


def _adapter(r: RunData) -> str:
    a, q = r.config.get("adapter") or {}, r.config.get("quantization") or {}
    if not a:
        return ""
    text = "full fine-tune" if a.get("type") == "none" else f"LoRA r={a.get('r')} alpha={a.get('alpha')}"
    return text + (f", {q['bits']}-bit base" if q.get("bits") else "")


def _data(r: RunData) -> str:
    """The training data: its source (a mixture's sources, each with its weight or rows) and row counts."""
    train = (r.config.get("data") or {}).get("train")
    stats = r.summary.data.to_dict() if r.summary is not None and r.summary.data is not None else {}
    if isinstance(train, list):
        text = " + ".join(_source(s, share=True) for s in train if isinstance(s, dict))
    else:
        text = _source(train) if isinstance(train, dict) else ""
    if stats.get("train_rows") is not None:
        text += f" ({stats['train_rows']:,} train / {stats.get('test_rows') or 0:,} test rows)"
    return text


def _source(src: dict[str, Any], share: bool = False) -> str:
    text = str(src.get("path", ""))
    if src.get("revision"):
        text += f"@{src['revision']}"
    if share and src.get("weight") is not None:
        text += f" (weight {src['weight']})"
    elif share and src.get("rows") is not None:
        text += f" ({src['rows']} rows)"
    return text


def _data_version(r: RunData) -> str:
    """The dataset artifact versions the run read (lineage.json), with their content digests."""
    listed = r.lineage.get("inputs")
    inputs = (
        [i for i in listed if isinstance(i, dict) and i.get("type") == "dataset"] if isinstance(listed, list) else []
    )
    return ", ".join(f"{i.get('ref', i.get('name', '?'))} (sha256 {str(i.get('digest', ''))[:12]})" for i in inputs)


def sample_sections(runs: list[RunData], max_prompts: int) -> list[dict]:
    """For each sample prompt: the reference and a table of answers, steps down, runs across."""
    by_prompt: dict[str, dict[str, Any]] = {}
    for i, r in enumerate(runs):
        for s in r.samples:
            p = s.get("prompt")
            if not isinstance(p, str):
                continue
            entry = by_prompt.setdefault(p, {"reference": s.get("reference", ""), "answers": {}})
            entry["answers"][(f"step {s.get('step')}", i)] = s.get("generation", "")
        for s in r.eval_samples:
            p = s.get("prompt")
            if p in by_prompt or (isinstance(p, str) and not r.samples):
                entry = by_prompt.setdefault(p, {"reference": s.get("reference", ""), "answers": {}})
                answers = s.get("answers") if isinstance(s.get("answers"), dict) else {}
                for role, label in (("target", "tunelab eval"), ("baseline", "tunelab eval: base")):
                    if role in answers:
                        entry["answers"][(label, i)] = answers[role]
    prompts = list(by_prompt)[:max_prompts]
    prefix = _shared_prefix(prompts)
    sections = []
    for p in prompts:
        entry = by_prompt[p]
        labels = list(dict.fromkeys(label for label, _ in entry["answers"]))
        labels.sort(key=_row_order)
        rows = []
        for label in labels:
            cells = []
            for i in range(len(runs)):
                answer = entry["answers"].get((label, i))
                cells.append(
                    {
                        "text": answer if answer is not None else "",
                        "gap": answer is None,
                        "correct": answer is not None and exact_match(answer, str(entry["reference"])) == 1.0,
                    }
                )
            rows.append({"label": label, "cells": cells})
        sections.append({"prompt": p[len(prefix) :], "full_prompt": p, "reference": entry["reference"], "rows": rows})
    return sections


def _row_order(label: str) -> tuple[int, int]:
    if label.startswith("step "):
        step = label.removeprefix("step ")
        return (0, int(step) if step.isdigit() else 0)
    return (1, 0 if label == "tunelab eval" else 1)


def _shared_prefix(prompts: list[str]) -> str:
    """The boilerplate every prompt starts with (a template's preamble), cut at a line end."""
    if len(prompts) < 2:
        return ""
    prefix = os.path.commonprefix(prompts)
    prefix = prefix[: prefix.rfind("\n") + 1]
    return prefix if len(prefix) > 20 and all(len(p) > len(prefix) for p in prompts) else ""


def judge_bars(runs: list[RunData]) -> list[dict[str, Any]]:
    """One win / tie / loss bar per run whose eval.json holds a judge's verdicts (the run against its baseline)."""
    bars = []
    for r in runs:
        j = r.eval.judge if r.eval is not None else None
        if j is None or not j.n:
            continue
        baseline = r.eval.models.get("baseline")
        bars.append(
            {
                "run": r.name,
                "baseline": (baseline.label if baseline is not None else None) or "baseline",
                "model": j.model,
                "n": j.n,
                "parts": [
                    (name, count, 100 * count / j.n)
                    for name, count in (("wins", j.wins), ("ties", j.ties), ("losses", j.losses))
                ],
                "win_rate": f"{j.win_rate:.1%} ({j.win_rate_low:.1%}..{j.win_rate_high:.1%}), {j.verdict()}",
                "consistency": "-" if j.position_consistency is None else f"{j.position_consistency:.0%}",
                "failed": j.failed_pairs,
            }
        )
    return bars


def benchmark_rows(runs: list[RunData]) -> list[dict[str, Any]]:
    """One row per run and lm-eval task of `tunelab eval --tasks`: tuned and baseline, each ± lm-eval's
    standard error, and the difference."""
    rows = []
    for r in runs:
        for task, b in ((r.eval.benchmarks if r.eval is not None else None) or {}).items():
            row = benchmark_row(task, b.metric, b.higher_is_better)
            diff = "-" if b.diff is None else row.format_delta(b.diff)
            tuned = row.format_with_stderr(b.tuned, b.tuned_stderr)
            baseline = row.format_with_stderr(b.baseline, b.baseline_stderr)
            rows.append({"run": r.name, "task": task, "metric": b.metric, "tuned": tuned, "baseline": baseline})
            rows[-1].update(diff=diff, examples=b.examples)
    return rows


def build_context(runs: list[RunData], max_prompts: int) -> dict[str, Any]:
    differ, same = config_tables(runs)
    intervals = RunIntervals(runs)
    eval_rows, train_rows = metrics_tables(runs, intervals)
    return {
        "verdict": verdict(runs, eval_rows, train_rows, intervals),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "runs": runs,
        "differ": differ,
        "same": same,
        "eval_rows": eval_rows,
        "judge": judge_bars(runs),
        "benchmarks": benchmark_rows(runs),
        "train_rows": train_rows,
        "plots": all_curves(runs),
        "samples": sample_sections(runs, max_prompts),
        "metadata": metadata_rows(runs),
    }


def render(context: dict[str, Any]) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html.j2").render(**context)


# An earlier report is recognized by its title, the first thing the template writes after <head>.
REPORT = Output("a tunelab report", lambda p: _starts_with(p, b"<title>tunelab report:"))


def _starts_with(path: Path, mark: bytes) -> bool:
    try:
        with path.open("rb") as f:
            return mark in f.read(4096)
    except OSError:
        return False


def write_report(paths: list[str | Path], output: str | Path, max_prompts: int = 12) -> dict[str, Any]:
    """Render the report for `paths` into `output` (written to a temporary name, then renamed).

    Returns the size written and the gaps found (run: what is missing). `output` may replace an earlier
    report, never a run's files or any other file (see `tunelab.outputs.check_output`)."""
    out = check_output(output, "-o", REPORT, [Path(p) for p in paths], overwrite=True)
    runs = load_runs(paths)
    html = render(build_context(runs, max_prompts))
    write_text(out, html)
    return {
        "bytes": len(html.encode()),
        "gaps": [f"{r.name}: {g}" for r in runs for g in r.gaps if g.startswith(("no metrics", "damaged"))],
    }
