"""CLI verbs for evaluation: `tunelab eval` (tuned vs base on held-out prompts) and `tunelab report`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.common import user_errors


@user_errors
def eval_(
    target: Annotated[
        str, typer.Argument(help="Run directory, model or adapter folder, or hub id.", show_default=False)
    ],
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Evaluate on this source (file, folder, hub id, synthetic:N...) instead of the run's test split.",
        ),
    ] = None,
    split: Annotated[
        str, typer.Option("--split", help="The run's `test` or `train` split; with --data, the hub split to read.")
    ] = "test",
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N examples.")] = None,
    baseline: Annotated[
        str | None, typer.Option("--baseline", help="Compare with this target (default: a LoRA run's base model).")
    ] = None,
    no_baseline: Annotated[bool, typer.Option("--no-baseline", help="Evaluate the target alone.")] = False,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Where to write eval.json and eval_samples.jsonl (default: the run directory)."),
    ] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option("--max-new-tokens", help="Tokens generated per answer (default: the run's samples setting)."),
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Prompts generated together.")] = None,
    trust_remote_code: Annotated[
        bool,
        typer.Option(
            "--trust-remote-code", help="Allow the model's own Python code; a run's saved config never grants it."
        ),
    ] = False,
    scorer: Annotated[
        list[str] | None,
        typer.Option(
            "--scorer",
            help="Also score with this scorer: NAME or NAME:PARAMS (JSON, e.g. 'contains:[\"Paris\"]'); repeatable; "
            "added to the run's eval.scorers. `tunelab scorers` lists them.",
        ),
    ] = None,
):
    """Score a model on held-out prompts against its base: loss, perplexity, exact match, ROUGE-L, BLEU, chrF."""
    from tunelab.cli.common import _quiet_libraries, console
    from tunelab.errors import TunelabError

    if baseline and no_baseline:
        raise TunelabError("--baseline and --no-baseline exclude each other")
    for name, value in (("--max-new-tokens", max_new_tokens), ("--batch-size", batch_size)):
        if value is not None and value <= 0:
            raise TunelabError(f"{name} {value}: must be positive")
    from tunelab.scoring import cli_scorers

    extra_scorers = cli_scorers(scorer or [])
    _quiet_libraries()
    from tunelab.evaluation.runner import evaluate

    result = evaluate(
        target,
        data=data,
        split=split,
        limit=limit,
        baseline=baseline,
        use_baseline=not no_baseline,
        out_dir=out_dir,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        console=console,
        trust_remote_code=trust_remote_code,
        scorers=extra_scorers,
    )
    _print_results(result)


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
        t.add_row(row.label, *cells)
    out.print(t)
    if intervals:
        first = next(iter(intervals.values()))
        out.print(
            f"95 % intervals: paired bootstrap over the same {first.prompts} prompts ({first.resamples} resamples, "
            f"seed {first.seed}); a verdict says better or worse only when the interval excludes zero"
        )
    out.print(f"wrote {result.out_dir}/eval.json and {result.out_dir}/eval_samples.jsonl ({record.time_s:.1f} s)")


def _difference(row, diff: float | None) -> str:
    """Target minus baseline, green when it is better by the metric's direction, red when worse."""
    if diff is None:
        return "-"
    sign = row.direction * (1 if diff > 0 else -1 if diff < 0 else 0)
    colour = {1: "green", -1: "red"}.get(sign, "")
    text = _delta(row, diff)
    return f"[{colour}]{text}[/]" if colour else text


def _delta(row, diff: float) -> str:
    """A signed difference in the metric's own format (points for a share)."""
    return ("+" if diff > 0 else "") + (f"{diff * 100:.1f} pts" if row.fmt == "pct" else row.format(diff))


def _interval(row, interval) -> list[str]:
    """The paired bootstrap interval of the difference and its verdict; "-" for a metric that has none (loss)."""
    if interval is None:
        return ["-", ""]
    return [f"{_delta(row, interval.low)}..{_delta(row, interval.high)}", interval.verdict(row.direction)]


def register(app: typer.Typer) -> None:
    """Add `eval` and `report` to the app."""
    app.command("eval")(eval_)
    app.command()(report)
