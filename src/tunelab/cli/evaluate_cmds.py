"""CLI verbs for evaluation: `tunelab eval` (tuned vs base on held-out prompts) and `tunelab report`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.common import user_errors
from tunelab.runs.metric_table import JUDGE_WIN_RATE

# The options of `tunelab eval`, named so its signature reads as a list.
TargetArg = Annotated[
    str, typer.Argument(help="Run directory, model or adapter folder, or hub id.", show_default=False)
]
DataArg = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="Evaluate on this source (file, folder, hub id, synthetic:N...) instead of the run's test split.",
    ),
]
SplitArg = Annotated[
    str, typer.Option("--split", help="The run's `test` or `train` split; with --data, the hub split to read.")
]
LimitArg = Annotated[int | None, typer.Option("--limit", help="Only the first N examples.")]
BaselineArg = Annotated[
    str | None, typer.Option("--baseline", help="Compare with this target (default: a LoRA run's base model).")
]
NoBaselineArg = Annotated[bool, typer.Option("--no-baseline", help="Evaluate the target alone.")]
OutDirArg = Annotated[
    Path | None,
    typer.Option("--out", help="Where to write eval.json and eval_samples.jsonl (default: the run directory)."),
]
MaxNewTokensArg = Annotated[
    int | None,
    typer.Option("--max-new-tokens", help="Tokens generated per answer (default: the run's samples setting)."),
]
BatchSizeArg = Annotated[int | None, typer.Option("--batch-size", help="Prompts generated together.")]
TrustRemoteCodeArg = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code", help="Allow the model's own Python code; a run's saved config never grants it."
    ),
]
ScorerArg = Annotated[
    list[str] | None,
    typer.Option(
        "--scorer",
        help="Also score with this scorer: NAME or NAME:PARAMS (JSON, e.g. 'contains:[\"Paris\"]'); repeatable; "
        "added to the run's eval.scorers. `tunelab scorers` lists them.",
    ),
]
JudgeArg = Annotated[
    str | None,
    typer.Option(
        "--judge",
        help="Have a model judge the target's answers against the baseline's, each prompt in both orders: an "
        "OpenAI-compatible URL (https://.../v1; key from eval.judge.api_key_env) or a TARGET served "
        "in-process. Default: the run's eval.judge.",
    ),
]
JudgeModelArg = Annotated[str | None, typer.Option("--judge-model", help="The judge's model id (needed with a URL).")]
JudgeConcurrencyArg = Annotated[
    int | None, typer.Option("--judge-concurrency", help="Judge requests in flight at once (default 4).")
]
TasksArg = Annotated[
    list[str] | None,
    typer.Option(
        "--tasks",
        help="Also run lm-eval benchmarks on both models: NAME[,NAME], a task folder or YAML file; "
        "tunelab_synthetic ships with tunelab (offline); a registry task's data must be in the local cache "
        "when offline.",
    ),
]
MaxDropArg = Annotated[
    list[str] | None,
    typer.Option(
        "--max-drop",
        help="Gate: exit 3 when the tuned model is worse than its baseline by more than LIMIT on NAME "
        "(a --tasks task or an eval metric such as exact_match; NAME=LIMIT, in the metric's units, 0.02 = "
        "2 points of a share); repeatable or comma-separated.",
    ),
]
MinWinRateArg = Annotated[
    float | None,
    typer.Option("--min-win-rate", help="Gate: exit 3 when the judge's win rate is below this (0-1)."),
]


@user_errors
def eval_(
    target: TargetArg,
    data: DataArg = None,
    split: SplitArg = "test",
    limit: LimitArg = None,
    baseline: BaselineArg = None,
    no_baseline: NoBaselineArg = False,
    out_dir: OutDirArg = None,
    max_new_tokens: MaxNewTokensArg = None,
    batch_size: BatchSizeArg = None,
    trust_remote_code: TrustRemoteCodeArg = False,
    scorer: ScorerArg = None,
    judge: JudgeArg = None,
    judge_model: JudgeModelArg = None,
    judge_concurrency: JudgeConcurrencyArg = None,
    tasks: TasksArg = None,
    max_drop: MaxDropArg = None,
    min_win_rate: MinWinRateArg = None,
):
    """Score a model on held-out prompts against its base: loss, perplexity, exact match, ROUGE-L, BLEU, chrF.

    Exit codes: 0 done, 2 a user error (nothing evaluated), 3 a --max-drop / --min-win-rate gate failed
    (the results are written first, one line per failing gate).
    """
    from tunelab.cli.common import _quiet_libraries, console
    from tunelab.errors import TunelabError

    if baseline and no_baseline:
        raise TunelabError("--baseline and --no-baseline exclude each other")
    for name, value in (("--max-new-tokens", max_new_tokens), ("--batch-size", batch_size)):
        if value is not None and value <= 0:
            raise TunelabError(f"{name} {value}: must be positive")
    from tunelab.evaluation.gate import parse_gates
    from tunelab.scoring import cli_scorers

    gates = parse_gates(max_drop, min_win_rate)
    extra_scorers = cli_scorers(scorer or [])
    _quiet_libraries()
    from tunelab.evaluation.runner import EvalRequest, evaluate

    request = EvalRequest(
        target,
        data=data,
        split=split,
        limit=limit,
        baseline=baseline,
        use_baseline=not no_baseline,
        out_dir=out_dir,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        trust_remote_code=trust_remote_code,
        scorers=extra_scorers,
        judge=judge,
        judge_model=judge_model,
        judge_concurrency=judge_concurrency,
        tasks=tasks,
        gates=gates,
    )
    result = evaluate(request, console=console)
    _print_results(result)
    _print_benchmarks(result.record)
    if gates:
        _apply_gates(gates, result)


def _print_benchmarks(record) -> None:
    """The lm-eval tasks' scores with lm-eval's standard errors, tuned beside baseline."""
    from rich.table import Table

    from tunelab.cli.common import out
    from tunelab.runs.metric_table import benchmark_row

    if not record.benchmarks:
        return
    t = Table(title="benchmarks (lm-eval, each ± its standard error)", title_justify="left")
    for name in ("task (metric)", "tuned", "baseline", "difference", "examples"):
        t.add_column(name, justify="left" if name.startswith("task") else "right")
    for task, b in record.benchmarks.items():
        row = benchmark_row(task, b.metric, b.higher_is_better)
        tuned = row.format_with_stderr(b.tuned, b.tuned_stderr)
        baseline = row.format_with_stderr(b.baseline, b.baseline_stderr)
        t.add_row(row.label, tuned, baseline, _difference(row, b.diff), str(b.examples or "-"))
    out.print(t)


def _apply_gates(gates, result) -> None:
    """After the results are written: one line per failing gate and exit 3, or one line that all passed."""
    from tunelab.cli.common import console, out
    from tunelab.evaluation.gate import EXIT_CODE, record_failures

    failed = record_failures(gates, result.record, result.table)
    for line in failed:
        console.print(f"[bold red]gate failed:[/] {line}", soft_wrap=True, highlight=False)
    if failed:
        raise typer.Exit(EXIT_CODE)
    out.print(f"gates passed ({len(gates.max_drops) + (gates.min_win_rate is not None)})", highlight=False)


@user_errors
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run directories to compare (one or more).", show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="HTML file to write.")] = Path("report.html"),
    max_prompts: Annotated[int, typer.Option("--max-prompts", help="Sample prompts shown with their answers.")] = 12,
):
    """Write one self-contained HTML file comparing runs: config, curves, metrics, answers, metadata."""
    from tunelab.cli.common import out
    from tunelab.errors import TunelabError
    from tunelab.evaluation.report import write_report

    if max_prompts < 0:
        raise TunelabError(f"--max-prompts {max_prompts}: must be zero or more")
    info = write_report(runs, output, max_prompts=max_prompts)
    gaps = f"; gaps: {', '.join(info['gaps'])}" if info["gaps"] else ""
    out.print(  # paths and the damaged files' lines are never wrapped: they are copied and searched for
        f"wrote {output} ({len(runs)} run{'s' if len(runs) != 1 else ''}, {info['bytes'] / 1024:,.0f} KiB){gaps}",
        soft_wrap=True,
    )


def _print_results(result) -> None:
    """The metrics of each model side by side, in the metric table's order and formats, with the difference."""
    from rich.table import Table

    from tunelab.cli.common import out

    record, models = result.record, result.models
    d = record.data
    t = Table(title=f"eval {record.target}: {d.examples} examples from {d.source}", title_justify="left")
    t.add_column("metric")
    for m in models:
        t.add_column(m.label, justify="right")
    intervals = record.intervals or {}
    if len(models) > 1:
        t.add_column("difference", justify="right")
    if intervals:
        t.add_column("95 % interval", justify="right")
        t.add_column("verdict")
    for row in result.table.at("eval"):
        values = [m.metrics.get(row.field) for m in models]
        if all(v is None for v in values):
            continue
        cells = ["-" if v is None else row.format(v) for v in values]
        if len(models) > 1:
            cells.append(_difference(row, (record.difference or {}).get(row.field)))
        if intervals:
            cells += _interval(row, intervals.get(row.field))
        if row.field == JUDGE_WIN_RATE and record.judge is not None:
            cells = _judge_cells(record.judge, len(models), bool(intervals))
        t.add_row(row.label, *cells)
    out.print(t)
    if record.judge is not None:
        out.print(_judge_line(record.judge), soft_wrap=True, highlight=False)
        if record.judge.failed_pairs:
            why = ", ".join(f"{k} x{n}" for k, n in record.judge.errors.items())
            out.print(
                f"[yellow]warning:[/] {record.judge.failed_pairs} of {record.judge.n} prompts got no verdict from the "
                f"judge (counted as ties): {why}",
                soft_wrap=True,
            )
    if intervals:
        first = next(iter(intervals.values()))
        out.print(
            f"95 % intervals: paired bootstrap over the same {first.prompts} prompts ({first.resamples} resamples, "
            f"seed {first.seed}); a verdict says better or worse only when the interval excludes zero"
        )
    out.print(f"wrote {result.out_dir}/eval.json and {result.out_dir}/eval_samples.jsonl ({record.time_s:.1f} s)")


def _judge_cells(judge, models: int, with_interval: bool) -> list[str]:
    """The judge's row: the target's win rate, no baseline value of its own, and its interval against one half."""
    cells = [f"{judge.win_rate:.1%}", *["-"] * (models - 1)]
    if models > 1:
        cells.append(f"{judge.wins}/{judge.ties}/{judge.losses} W/T/L")
    interval = f"{judge.win_rate_low:.1%}..{judge.win_rate_high:.1%}"
    return cells + ([interval, judge.verdict()] if with_interval else [])


def _judge_line(judge) -> str:
    """What judging found and cost, in one line under the table."""
    consistency = "-" if judge.position_consistency is None else f"{judge.position_consistency:.0%}"
    tokens = (
        f", {judge.prompt_tokens:,} prompt + {judge.completion_tokens:,} completion tokens"
        if judge.prompt_tokens
        else ""
    )
    return (
        f"judge {judge.model}: {judge.wins} wins, {judge.ties} ties, {judge.losses} losses on {judge.n} prompts; "
        f"win rate {judge.win_rate:.1%} (ties as half; 95 % bootstrap "
        f"{judge.win_rate_low:.1%}..{judge.win_rate_high:.1%}); "
        f"both orders agreed on {consistency} ({judge.inconsistent} disagreed, {judge.failed_pairs} without a verdict: "
        f"ties); {judge.requests} requests, {judge.retries} retries, {judge.failures} failures{tokens}"
    )


def _difference(row, diff: float | None) -> str:
    """Target minus baseline, green when it is better by the metric's direction, red when worse."""
    if diff is None:
        return "-"
    sign = row.direction * (1 if diff > 0 else -1 if diff < 0 else 0)
    colour = {1: "green", -1: "red"}.get(sign, "")
    text = row.format_delta(diff)
    return f"[{colour}]{text}[/]" if colour else text


def _interval(row, interval) -> list[str]:
    """The paired bootstrap interval of the difference and its verdict; "-" for a metric that has none (loss)."""
    if interval is None:
        return ["-", ""]
    return [f"{row.format_delta(interval.low)}..{row.format_delta(interval.high)}", interval.verdict(row.direction)]


def register(app: typer.Typer) -> None:
    """Add `eval` and `report` to the app."""
    app.command("eval")(eval_)
    app.command()(report)
