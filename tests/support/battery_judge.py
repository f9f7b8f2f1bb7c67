"""Battery cases for the pairwise judge (`tunelab eval --judge`, evaluation/judge.py): what it cannot work with
is refused in one line before any model loads, and a judge that never answers costs the evaluation nothing but
the counted failures."""

from __future__ import annotations

import json

import yaml

from battery import Context, Outcome, case, expect


@case("bad input")
def case_judge_url_of_another_scheme(ctx: Context) -> Outcome:
    args = ["eval", str(ctx.trained_run()), "--judge", "ftp://host/v1", "--judge-model", "m"]
    return expect(ctx, args, "--judge ftp://host/v1: not an http(s) URL")


@case("bad input")
def case_judge_url_without_a_model(ctx: Context) -> Outcome:
    return expect(ctx, ["eval", str(ctx.trained_run()), "--judge", "http://127.0.0.1:9/v1"], "which model judges?")


@case("bad input")
def case_judge_without_a_baseline(ctx: Context) -> Outcome:
    args = ["eval", str(ctx.trained_run()), "--no-baseline", "--judge", "http://127.0.0.1:9/v1", "--judge-model", "m"]
    return expect(ctx, args, "--judge compares the target with its baseline; --no-baseline leaves none")


@case("bad input")
def case_judge_template_without_a_placeholder(ctx: Context) -> Outcome:
    run = ctx.copy_run("judge-template")
    template = ctx.path("judge.txt")
    template.write_text("Which is better?\n{instruction}\n{answer_a}\nVerdict: A|B|tie\n")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg.setdefault("eval", {})["judge"] = {"url": "http://127.0.0.1:9/v1", "model": "m", "template": str(template)}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    o = expect(ctx, ["eval", str(run)], f"eval.judge.template {template}: the template lacks {{answer_b}}")
    if (run / "eval.json").exists():
        o.lost = "eval.json written although the judge was refused"
    return o


@case("fault")
def case_judge_that_never_answers(ctx: Context) -> Outcome:
    run = ctx.copy_run("judge-unreachable")
    args = ["eval", str(run), "--limit", "2", "--judge", "http://127.0.0.1:9/v1", "--judge-model", "m"]
    o = expect(ctx, args, "2 of 2 prompts got no verdict from the judge (counted as ties)", rc=0)
    judge = json.loads((run / "eval.json").read_text()).get("judge") if (run / "eval.json").is_file() else None
    if judge is None or judge.get("failures") != 4:
        o.lost = f"eval.json's judge record does not count the 4 failed questions: {judge and judge.get('failures')}"
    return o
