"""Battery cases for `tunelab eval --tasks` and its no-regression gate: a malformed or impossible
`--max-drop` / `--min-win-rate` and a `--tasks` folder that holds no task are refused in one line
before any weights load, and no eval.json is left behind."""

from __future__ import annotations

from battery import Context, Outcome, case, expect


def _refused(ctx: Context, name: str, args: list[str], message: str) -> Outcome:
    run = ctx.copy_run(name)
    o = expect(ctx, ["eval", str(run), *args], message)
    if (run / "eval.json").exists():
        o.lost = "eval.json written although the gate options were refused"
    return o


@case("bad input")
def case_eval_with_a_max_drop_without_a_limit(ctx: Context) -> Outcome:
    return _refused(ctx, "gate-form", ["--max-drop", "exact_match"], "--max-drop 'exact_match': expected NAME=LIMIT")


@case("bad input")
def case_eval_with_a_max_drop_on_an_unknown_metric(ctx: Context) -> Outcome:
    return _refused(
        ctx, "gate-name", ["--max-drop", "exact_macth=0.1"], "--max-drop exact_macth: neither a --tasks task nor"
    )


@case("bad input")
def case_eval_with_a_max_drop_and_no_baseline(ctx: Context) -> Outcome:
    return _refused(
        ctx, "gate-nobase", ["--no-baseline", "--max-drop", "exact_match=0.1"], "--max-drop compares with the baseline"
    )


@case("bad input")
def case_eval_with_a_min_win_rate_and_no_judge(ctx: Context) -> Outcome:
    return _refused(ctx, "gate-judge", ["--min-win-rate", "0.5"], "--min-win-rate needs the judge's win rate")


@case("bad input")
def case_eval_with_a_task_folder_that_holds_no_task(ctx: Context) -> Outcome:
    folder = ctx.path("no-tasks")
    folder.mkdir(exist_ok=True)
    (folder / "notes.yaml").write_text("just: notes\n")
    return _refused(ctx, "tasks-empty", ["--tasks", str(folder)], "no lm-eval task YAML")
