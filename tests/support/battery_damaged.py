"""Battery cases for issue 21's damaged runs and impossible values: run directories whose files no
longer read (summary.json, config.yaml, eval.json, an adapter's weights or config in final/ or the
newest checkpoint), values past what Python or the libraries take (seeds, weights, names, numbers of
thousands of digits, nesting past the recursion limit), the crashes of report / runs on mixtures and
mixed methods, and gguf export of a hub base offline.

A damaged run is one line naming the file and what is wrong; `runs list` / `runs compare` skip it with
that line and go on; nothing in the damaged run is changed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import yaml

from battery import Context, Outcome, case, expect, lost_files, snapshot

HUGE = "9" * 5000  # past Python's 4,300-digit limit for int()
DEEP = "[" * 100_000 + "]" * 100_000


def _run(ctx: Context, name: str) -> Path:
    """A copy of the trained run, alone in its own runs folder (so `runs list` sees it and one good run)."""
    root = ctx.tmp / "damaged" / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    shutil.copytree(ctx.trained_run(), root / "good")
    return shutil.copytree(ctx.trained_run(), root / name)


def _listed(ctx: Context, name: str, damage: Callable[[Path], None], problem: str, verb: str = "list") -> Outcome:
    """`runs list` (or `runs compare good NAME`) lists the good run and skips the damaged one with a note
    naming `problem`; nothing in the damaged run changes."""
    run = _run(ctx, name)
    damage(run)
    before = snapshot(run)
    root = str(run.parent)
    args = (
        ["runs", "list", "--dir", root] if verb == "list" else ["runs", "compare", "good", name, "good", "--dir", root]
    )
    o = expect(ctx, args, f"skipped {name}: damaged run: ", rc=0)
    for needed in (problem, "good"):  # the note says what is wrong; the good run is still listed
        if o.verdict == "clean" and needed not in o.output:
            o.expect = needed
    o.lost = lost_files(before, run)
    return o


def _summary(change: Callable[[dict], None] | str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        if isinstance(change, str):
            (run / "summary.json").write_text(change)
            return
        s = json.loads((run / "summary.json").read_text())
        change(s)
        (run / "summary.json").write_text(json.dumps(s))

    return damage


def _set(key: str, value) -> Callable[[dict], None]:
    return lambda s: s.__setitem__(key, value)


# --- summary.json of each wrong type: `runs list` skips the run with one line -------------------------------


@case("bad input")
def case_damaged_summary_steps_a_list(ctx):
    return _listed(ctx, "steps-list", _summary(_set("steps", [1, 2])), "steps: Input should be a valid integer")


@case("bad input")
def case_damaged_summary_steps_text(ctx):
    return _listed(ctx, "steps-text", _summary(_set("steps", "four")), "steps: Input should be a valid integer")


@case("bad input")
def case_damaged_summary_loss_text(ctx):
    return _listed(ctx, "loss-text", _summary(_set("final_train_loss", "low")), "final_train_loss: Input should be")


@case("bad input")
def case_damaged_summary_loss_a_mapping(ctx):
    return _listed(ctx, "loss-map", _summary(_set("final_eval_loss", {"a": 1})), "final_eval_loss: Input should be")


@case("bad input")
def case_damaged_summary_parameters_a_list(ctx):
    return _listed(ctx, "params-list", _summary(_set("parameters", [1, 2])), "parameters: Input should be")


@case("bad input")
def case_damaged_summary_data_text(ctx):
    return _listed(ctx, "data-text", _summary(_set("data", "rows")), "data: Input should be")


@case("bad input")
def case_damaged_summary_wall_time_text(ctx):
    return _listed(ctx, "wall-text", _summary(_set("wall_time_s", "fast")), "wall_time_s: Input should be")


@case("bad input")
def case_damaged_summary_per_rank_a_number(ctx):
    return _listed(ctx, "per-rank", _summary(_set("per_rank", 3)), "per_rank: Input should be")


@case("bad input")
def case_damaged_summary_status_a_number(ctx):
    return _listed(ctx, "status-num", _summary(_set("status", 3)), "no status")


@case("bad input")
def case_damaged_summary_without_status(ctx):
    return _listed(ctx, "no-status", _summary(lambda s: s.pop("status")), "no status")


@case("bad input")
def case_damaged_summary_truncated(ctx):
    return _listed(ctx, "cut", lambda r: _truncate(r / "summary.json"), "summary.json: not valid JSON")


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


@case("bad input")
def case_damaged_summary_empty(ctx):
    return _listed(ctx, "empty", _summary(""), "summary.json: empty")


@case("bad input")
def case_damaged_summary_a_list(ctx):
    return _listed(ctx, "a-list", _summary("[1, 2, 3]"), "holds a JSON list, not an object")


@case("bad input")
def case_damaged_summary_binary(ctx):
    return _listed(ctx, "binary", lambda r: (r / "summary.json").write_bytes(b"\xff\xfe\x00garbage"), "summary.json:")


@case("bad input")
def case_damaged_summary_huge_integer(ctx):
    return _listed(ctx, "huge-int", _summary('{"status": "completed", "steps": ' + HUGE + "}"), "unreadable number")


@case("bad input")
def case_damaged_summary_nested_too_deeply(ctx):
    return _listed(ctx, "deep", _summary(DEEP), "nested too deeply")


@case("bad input")
def case_damaged_summary_skipped_by_runs_compare(ctx):
    return _listed(ctx, "cmp", _summary(_set("steps", [1])), "steps: Input should be", verb="compare")


@case("bad input")
def case_damaged_eval_json_skipped_by_runs_compare(ctx):
    return _listed(
        ctx, "cmp-eval", lambda r: (r / "eval.json").write_text("{oops"), "eval.json: not valid JSON", "compare"
    )


# --- config.yaml damaged -------------------------------------------------------------------------------------


@case("bad input")
def case_damaged_config_not_yaml(ctx):
    return _listed(ctx, "cfg-yaml", lambda r: (r / "config.yaml").write_text("model: [unclosed\n"), "not valid YAML")


@case("bad input")
def case_damaged_config_a_list(ctx):
    return _listed(ctx, "cfg-list", lambda r: (r / "config.yaml").write_text("- 1\n- 2\n"), "not a mapping")


@case("bad input")
def case_damaged_config_section_a_list(ctx):
    def damage(run: Path) -> None:
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["training"] = [1, 2]
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))

    return _listed(ctx, "cfg-section", damage, "training: a list where a mapping of settings belongs")


# --- runs show / compare / report: one line, or a note and the page --------------------------------------------


@case("bad input")
def case_runs_show_a_damaged_run(ctx):
    run = _run(ctx, "show")
    _summary(_set("steps", {"x": 1}))(run)
    return expect(ctx, ["runs", "show", str(run)], f"damaged run: {run / 'summary.json'}: steps:")


@case("bad input")
def case_runs_compare_with_only_one_readable_run(ctx):
    run = _run(ctx, "one-left")
    _summary("{")(run)
    return expect(ctx, ["runs", "compare", "good", "one-left", "--dir", str(run.parent)], "fewer than two readable")


def _report(ctx: Context, name: str, damage: Callable[[Path], None], expected: str) -> Outcome:
    run = _run(ctx, name)
    damage(run)
    before = snapshot(run)
    out = run.parent / "report.html"
    o = expect(ctx, ["report", str(run.parent / "good"), str(run), "-o", str(out)], expected, rc=0)
    if o.verdict == "clean" and not out.is_file():
        o.lost = "no report written"
    o.lost = o.lost or lost_files(before, run)
    return o


@case("bad input")
def case_report_notes_a_damaged_summary(ctx):
    return _report(ctx, "rep-types", _summary(_set("steps", [1, 2])), "damaged run: ")


@case("bad input")
def case_report_notes_a_truncated_summary(ctx):
    return _report(ctx, "rep-cut", lambda r: _truncate(r / "summary.json"), "summary.json: not valid JSON")


@case("bad input")
def case_report_with_a_nan_loss(ctx):
    return _report(ctx, "rep-nan", _summary(_set("final_train_loss", float("nan"))), "wrote ")


@case("bad input")
def case_report_with_an_infinite_loss(ctx):
    return _report(ctx, "rep-inf", _summary(_set("final_eval_loss", float("inf"))), "wrote ")


@case("bad input")
def case_report_with_a_nan_loss_in_the_metrics(ctx):
    def damage(run: Path) -> None:
        (run / "summary.json").unlink()
        with (run / "metrics.jsonl").open("a") as f:
            f.write('{"step": 9, "loss": NaN}\n{"step": 10, "loss": Infinity}\n')

    return _report(ctx, "rep-nan-log", damage, "wrote ")


@case("bad input")
def case_report_with_eval_json_of_the_wrong_shape(ctx):
    shape = {"models": {"target": {"metrics": {"exact_match": "high", "loss": [1]}}}, "data": "x"}
    return _report(ctx, "rep-eval", lambda r: (r / "eval.json").write_text(json.dumps(shape)), "wrote ")


@case("bad input")
def case_runs_list_and_compare_with_nan_and_infinity(ctx):
    run = _run(ctx, "nan-list")
    _summary(lambda s: s.update(final_train_loss=float("nan"), final_eval_loss=float("inf")))(run)
    o = expect(ctx, ["runs", "list", "--dir", str(run.parent)], "nan", rc=0)
    if o.verdict == "clean":
        o = expect(ctx, ["runs", "compare", "good", "nan-list", "--dir", str(run.parent)], "inf", rc=0)
    return o


def _config_of(run: Path, change: Callable[[dict], None]) -> None:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    change(cfg)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))


@case("bad input")
def case_report_on_a_mixture_run(ctx):
    def mixture(cfg: dict) -> None:
        src = cfg["data"]["train"]
        cfg["data"]["train"] = [{**src, "weight": 2.0}, {**src, "path": "synthetic:40:seed=9", "weight": 1.0}]

    return _report(ctx, "rep-mix", lambda r: _config_of(r, mixture), "wrote ")


@case("bad input")
def case_runs_show_a_mixture_run(ctx):
    run = _run(ctx, "show-mix")
    _config_of(run, lambda c: c["data"].update(train=[c["data"]["train"], {"path": "synthetic:40", "weight": 1}]))
    return expect(ctx, ["runs", "show", str(run)], "data source: synthetic:40", rc=0)


@case("bad input")
def case_runs_list_shows_the_method(ctx):
    run = _run(ctx, "method")
    _config_of(run, lambda c: c["training"].update(method="kto"))
    return expect(ctx, ["runs", "list", "--dir", str(run.parent)], "\tkto\t", rc=0)


@case("bad input")
def case_report_compares_losses_within_a_method(ctx):
    def dpo(run: Path) -> None:
        _config_of(run, lambda c: c["training"].update(method="dpo"))
        _summary(_set("final_train_loss", 0.001))(run)  # lower than the SFT run's, but not comparable

    o = _report(ctx, "rep-methods", dpo, "wrote ")
    html = (ctx.tmp / "damaged" / "rep-methods" / "report.html").read_text() if o.verdict == "clean" else ""
    if o.verdict == "clean" and ("compared within each method" not in html or "Best on final train loss" in html):
        o.lost = "the report ranked the losses of an SFT and a DPO run against each other"
    return o


# --- adapters: final/ or the newest checkpoint damaged --------------------------------------------------------


def _adapter_case(ctx: Context, name: str, damage: Callable[[Path], None], message: str, verb: str = "generate"):
    run = _run(ctx, name)
    damage(run)
    before = snapshot(run)
    args = {
        "generate": ["generate", str(run), "Say hi.", "--max-new-tokens", "2"],
        "eval": ["eval", str(run), "--no-baseline"],
        "merge": ["merge", str(run), "--out", str(run.parent / "merged")],
        "export": ["export", str(run), "--format", "hf", "--out", str(run.parent / "exported")],
    }[verb]
    o = expect(ctx, args, message)
    o.lost = lost_files(before, run)
    for out in ("merged", "exported"):
        if (run.parent / out).exists():
            o.lost = f"{out}/ was left behind"
    return o


def _garbage(name: str) -> Callable[[Path], None]:
    return lambda run: (run / "final" / name).write_bytes(b"\xff" * 4096)


@case("bad input")
def case_final_adapter_weights_garbage(ctx):
    return _adapter_case(ctx, "ad-garbage", _garbage("adapter_model.safetensors"), "not a safetensors file")


@case("bad input")
def case_final_adapter_weights_truncated(ctx):
    return _adapter_case(
        ctx, "ad-cut", lambda r: _truncate(r / "final" / "adapter_model.safetensors"), "adapter_model.safetensors: cut"
    )


@case("bad input")
def case_final_adapter_weights_empty(ctx):
    return _adapter_case(
        ctx, "ad-empty", lambda r: (r / "final" / "adapter_model.safetensors").write_bytes(b""), "not a safetensors"
    )


@case("bad input")
def case_final_adapter_config_missing(ctx):
    return _adapter_case(
        ctx, "ad-nocfg", lambda r: (r / "final" / "adapter_config.json").unlink(), "adapter_config.json: missing"
    )


@case("bad input")
def case_final_adapter_config_not_json(ctx):
    return _adapter_case(ctx, "ad-cfgjson", _garbage("adapter_config.json"), "adapter_config.json: not")


@case("bad input")
def case_final_adapter_config_a_list(ctx):
    return _adapter_case(
        ctx, "ad-cfglist", lambda r: (r / "final" / "adapter_config.json").write_text("[]"), "holds a JSON list"
    )


def _newest_checkpoint_only(run: Path) -> Path:
    shutil.rmtree(run / "final")
    return sorted((run / "checkpoints").glob("step-*"))[-1]


@case("bad input")
def case_checkpoint_adapter_weights_garbage(ctx):
    def damage(run: Path) -> None:
        (_newest_checkpoint_only(run) / "adapter_model.safetensors").write_bytes(b"\x00" * 100)

    return _adapter_case(ctx, "ck-garbage", damage, "step-000004/adapter_model.safetensors: not a safetensors")


@case("bad input")
def case_checkpoint_adapter_config_missing(ctx):
    return _adapter_case(
        ctx,
        "ck-nocfg",
        lambda r: (_newest_checkpoint_only(r) / "adapter_config.json").unlink(),
        "step-000004/adapter_config.json: missing",
    )


@case("bad input")
def case_eval_on_damaged_adapter_weights(ctx):
    return _adapter_case(ctx, "ev-garbage", _garbage("adapter_model.safetensors"), "not a safetensors", "eval")


@case("bad input")
def case_merge_of_a_damaged_adapter_config(ctx):
    return _adapter_case(ctx, "mg-cfg", _garbage("adapter_config.json"), "adapter_config.json: not", "merge")


@case("bad input")
def case_export_of_damaged_adapter_weights(ctx):
    return _adapter_case(ctx, "ex-garbage", _garbage("adapter_model.safetensors"), "not a safetensors", "export")


@case("bad input")
def case_adapter_folder_without_its_config(ctx):
    folder = ctx.tmp / "damaged" / "lone-adapter"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(ctx.trained_run() / "final", folder)
    (folder / "adapter_config.json").unlink()
    return expect(ctx, ["generate", str(folder), "Say hi."], "adapter_config.json: missing")


# --- impossible values in a config: validate and train refuse them in one line ---------------------------------


def _limit(ctx: Context, name: str, overrides: list[str], message: str, verbs=("validate", "train")) -> Outcome:
    cfg = ctx.config(f"limit-{name}.yaml", output={"dir": str(ctx.tmp / "limit-runs"), "name": name})
    outcome = None
    for verb in verbs:
        o = expect(ctx, [verb, str(cfg), *overrides], message)
        if outcome is None or o.verdict != "clean":
            outcome = o
    if (ctx.tmp / "limit-runs" / name).exists():
        outcome.lost = "a run directory was created for a config that cannot run"
    return outcome


@case("bad input")
def case_seed_minus_one(ctx):
    return _limit(ctx, "seed-neg", ["training.seed=-1"], "training.seed: Input should be greater than or equal to 0")


@case("bad input")
def case_seed_two_to_the_32(ctx):
    return _limit(ctx, "seed-big", ["training.seed=4294967296"], "training.seed: Input should be less than or equal")


@case("bad input")
def case_data_seed_negative(ctx):
    return _limit(
        ctx, "dseed", ["data.seed=-5"], "data.seed: Input should be greater than or equal to 0", ("validate",)
    )


@case("bad input")
def case_samples_seed_past_the_range(ctx):
    return _limit(ctx, "sseed", ["samples.seed=99999999999"], "samples.seed: Input should be less", ("validate",))


def _weight(ctx: Context, name: str, weight: str, message: str) -> Outcome:
    p = ctx.path(f"weight-{name}.yaml")
    data = str(ctx.data())
    p.write_text(
        "model: {name: 'tiny:llama-2l'}\n"
        f"data:\n  train:\n    - {{path: '{data}', weight: {weight}}}\n    - {{path: '{data}', weight: 1}}\n"
        f"output: {{dir: '{ctx.tmp / 'limit-runs'}', name: weight-{name}}}\n"
    )
    return expect(ctx, ["validate", str(p)], f"data.train.0.weight: {message}")


@case("bad input")
def case_mixture_weight_infinite(ctx):
    return _weight(ctx, "inf", ".inf", "Input should be a finite number")


@case("bad input")
def case_mixture_weight_minus_infinite(ctx):
    return _weight(ctx, "minf", "-.inf", "Input should be a finite number")


@case("bad input")
def case_mixture_weight_nan(ctx):
    return _weight(ctx, "nan", ".nan", "Input should be a finite number")


@case("bad input")
def case_mixture_weight_zero(ctx):
    return _weight(ctx, "zero", "0", "Input should be greater than 0")


@case("bad input")
def case_mixture_weight_negative(ctx):
    return _weight(ctx, "neg", "-1", "Input should be greater than 0")


@case("bad input")
def case_mixture_weight_huge_integer(ctx):
    p = ctx.path("weight-huge.yaml")
    p.write_text(f"model: {{name: 'tiny:llama-2l'}}\ndata:\n  train:\n    - {{path: x.jsonl, weight: {HUGE}}}\n")
    return expect(ctx, ["validate", str(p)], f"{p}:4: a number of more than 4,300 digits")


@case("bad input")
def case_output_name_past_the_file_system_limit(ctx):
    return _limit(ctx, "long", ["output.name=" + "x" * 256], "output.name: must be at most 200 characters")


@case("data loss")
def case_output_name_long_with_overwrite(ctx):
    return _limit(
        ctx, "long-ow", ["output.name=" + "y" * 400, "output.overwrite=true"], "output.name: must be at most 200"
    )


@case("bad input")
def case_huge_integer_in_a_config_file(ctx):
    p = ctx.path("huge.yaml")
    p.write_text(f"model: {{name: 'tiny:llama-2l'}}\ntraining:\n  max_steps: {HUGE}\n")
    return expect(ctx, ["validate", str(p)], f"{p}:3: a number of more than 4,300 digits")


@case("bad input")
def case_huge_integer_in_an_override(ctx):
    return _limit(ctx, "huge-ovr", [f"training.max_steps={HUGE}"], "override training.max_steps: a number of more")


@case("bad input")
def case_config_nested_too_deeply(ctx):
    p = ctx.path("deep.yaml")
    p.write_text("model: " + DEEP + "\n")
    return expect(ctx, ["validate", str(p)], f"{p}: nested too deeply to read")


@case("bad input")
def case_override_nested_too_deeply(ctx):
    return _limit(ctx, "deep-ovr", ["adapter.r=" + "[" * 5000], "override adapter.r: nested too deeply", ("validate",))


# --- gguf export of a hub base offline (a sweep over a mixture: tests/unit/runs/test_damaged_runs.py) ---


@case("bad input")
def case_gguf_export_of_a_hub_base_offline(ctx):
    run = _run(ctx, "hub-base")
    _config_of(run, lambda c: c["model"].update(name="acme-org/not-cached-model"))
    meta = json.loads((run / "final" / "tunelab_model.json").read_text())
    meta.update(base_model="acme-org/not-cached-model", base_model_path="acme-org/not-cached-model")
    (run / "final" / "tunelab_model.json").write_text(json.dumps(meta))
    saved, ctx.env = ctx.env, {**ctx.env, "HF_HUB_OFFLINE": "1"}
    try:
        o = expect(
            ctx,
            ["export", str(run), "--format", "gguf", "--out", str(run.parent / "gguf")],
            "'acme-org/not-cached-model' is not in the local hub cache and the hub is unreachable",
        )
    finally:
        ctx.env = saved
    if (run.parent / "gguf").exists():
        o.lost = "gguf/ was left behind"
    return o


# --- numbers and nesting past Python's limits inside data rows (read by tunelab.data)


def _rows(ctx, name: str, text: str):
    data = ctx.path(f"{name}.jsonl")
    data.write_text(text)
    return data, ctx.config(f"{name}.yaml", data={"train": {"path": str(data)}, "test_size": 1})


@case("bad input")
def case_huge_integer_in_a_data_row(ctx):
    data, cfg = _rows(ctx, "huge-row", '{"instruction": "a", "input": "", "output": ' + HUGE + "}\n")
    return expect(ctx, ["validate", str(cfg)], f"{data}:1: a number too long to read")


@case("bad input")
def case_deep_nesting_in_a_data_row(ctx):
    data, cfg = _rows(ctx, "deep-row", '{"instruction": ' + "[" * 100000 + "]" * 100000 + "}\n")
    return expect(ctx, ["validate", str(cfg)], f"{data}:1: JSON nested too deeply to read")


@case("bad input")
def case_huge_integer_in_a_tool_call(ctx):
    args = json.dumps(json.dumps({"n": 1})).replace("1", HUGE)  # the arguments as JSON text, holding the number
    row = (
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": '
        '[{"type": "function", "function": {"name": "f", "arguments": ' + args + "}}]}]}\n"
    )
    data = ctx.path("huge-call.jsonl")
    data.write_text(row * 4)
    cfg = ctx.config(
        "huge-call.yaml",
        model={"name": "tiny:tools-2l"},
        data={"train": {"path": str(data)}, "test_size": 1},
        prompt={"format": "messages"},
    )
    return expect(ctx, ["validate", str(cfg)], "number too long or nesting too deep to read")
