"""Battery cases for scorers (tunelab.scoring): a bad eval.scorers entry or `--scorer` is refused in one
line naming it before anything loads or is written, and a user's scorer that returns no number ends
`tunelab eval` in one line without leaving an eval.json behind."""

from __future__ import annotations

from battery import Context, Outcome, case, expect


@case("bad input")
def case_train_with_an_unknown_scorer(ctx: Context) -> Outcome:
    cfg = ctx.config("scorer-typo.yaml", eval={"scorers": ["exact_match", "exact_macth"]})
    o = expect(ctx, ["train", str(cfg), "output.name=scorer-typo"], "eval.scorers[1]: unknown scorer 'exact_macth'")
    if (ctx.tmp / "runs" / "scorer-typo").exists():
        o.lost = "a run directory was created for a config that was refused"
    return o


@case("bad input")
def case_train_with_a_missing_python_scorer(ctx: Context) -> Outcome:
    cfg = ctx.config("scorer-missing.yaml", eval={"scorers": [{"python": "no_such_checks:score"}]})
    return expect(ctx, ["train", str(cfg)], "eval.scorers[0]: python: cannot import 'no_such_checks'")


@case("bad input")
def case_eval_with_a_bad_scorer_parameter(ctx: Context) -> Outcome:
    return expect(
        ctx,
        ["eval", str(ctx.trained_run()), "--scorer", 'numeric:{"tol": 1}'],
        "--scorer numeric:{\"tol\": 1}: numeric: unknown parameter 'tol'",
    )


@case("bad input")
def case_eval_with_a_scorer_that_returns_no_number(ctx: Context) -> Outcome:
    ctx.path("wordy_checks.py").write_text("def verdict(prompt, answer, reference, row):\n    return 'yes'\n")
    run = ctx.copy_run("scorer-wordy")
    o = expect(
        ctx,
        ["eval", str(run), "--no-baseline", "--limit", "2", "--scorer", "python:wordy_checks:verdict"],
        "python:wordy_checks:verdict: returned 'yes'; a scorer returns a number",
    )
    if (run / "eval.json").exists():
        o.lost = "eval.json written although scoring failed"
    return o
