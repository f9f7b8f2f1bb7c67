"""Battery cases for the verbs' own options: numbers that are zero, negative, huge, NaN or not numbers,
names that are not among the choices, files that are missing, empty, not UTF-8, folders, or links that
point back at themselves, and flags that exclude each other.

Each is refused in one line naming the option (exit 2) before anything loads, and a verb that would
have written a file or folder leaves nothing at the place it was pointed at.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from battery import CASES, Context, Outcome, case, expect

Args = Callable[[Context], list[str]]


def _register(name: str, group: str, fn: Callable[[Context], Outcome]) -> None:
    if name in CASES:
        raise RuntimeError(f"two battery cases named {name}")
    fn.__name__ = f"case_{name}"
    case(group)(fn)


def _run(ctx: Context) -> str:
    return str(ctx.trained_run())


def _cfg(ctx: Context) -> str:
    return str(ctx.config("cli.yaml", output={"dir": str(ctx.tmp / "runs"), "name": "cli-refused"}))


def _prompts(ctx: Context) -> str:
    p = ctx.path("cli-prompts.jsonl")
    if not p.is_file():
        p.write_text('{"instruction": "Reverse the order of the words.", "input": "cat dog"}\n')
    return str(p)


def _loop(ctx: Context) -> str:
    """A symbolic link that points at itself (through a second one)."""
    a, b = ctx.tmp / "loop-a", ctx.tmp / "loop-b"
    if not a.is_symlink():
        a.symlink_to(b)
        b.symlink_to(a)
    return str(a)


def _not_utf8(ctx: Context) -> str:
    p = ctx.path("latin1-prompts.jsonl")
    p.write_bytes('{"instruction": "caf\xe9"}\n'.encode("latin-1"))
    return str(p)


def _empty(ctx: Context) -> str:
    p = ctx.path("empty-prompts.jsonl")
    p.write_bytes(b"")
    return str(p)


def _folder(ctx: Context) -> str:
    d = ctx.tmp / "a-folder"
    d.mkdir(exist_ok=True)
    return str(d)


def _refused(ctx: Context, args: list[str], text: str, out: Path | None) -> Outcome:
    """`args` exits 2 saying `text`; the output it was pointed at (if any) is not there afterwards."""
    o = expect(ctx, args, text)
    if out is not None and (out.exists() or out.is_symlink()):
        o.lost = f"{out} was written although the command was refused"
    return o


def _out(ctx: Context, name: str) -> Path:
    return ctx.tmp / "cli-out" / name


# name: (arguments, the message fragment, the output that must not appear)
OPTIONS: dict[str, tuple[Args, str, Callable[[Context], Path] | None]] = {
    # synth
    "synth_n_not_a_number": (
        lambda c: ["synth", "--out", str(_out(c, "s1.jsonl")), "--n", "abc"],
        "Invalid value for '--n'",
        lambda c: _out(c, "s1.jsonl"),
    ),
    "synth_n_zero": (
        lambda c: ["synth", "--out", str(_out(c, "s2.jsonl")), "--n", "0"],
        "--n: the row count must be positive",
        lambda c: _out(c, "s2.jsonl"),
    ),
    "synth_n_negative": (
        lambda c: ["synth", "--out", str(_out(c, "s3.jsonl")), "--n=-5"],
        "--n: the row count must be positive",
        lambda c: _out(c, "s3.jsonl"),
    ),
    "synth_n_of_twenty_digits": (
        lambda c: ["synth", "--out", str(_out(c, "s4.jsonl")), "--n", "99999999999999999999"],
        "rows is above the most synthetic data holds",
        lambda c: _out(c, "s4.jsonl"),
    ),
    "synth_without_out": (lambda c: ["synth", "--n", "3"], "Missing option '--out'", None),
    "synth_out_through_a_link_loop": (
        lambda c: ["synth", "--out", _loop(c), "--n", "3"],
        "a symbolic link that points back at itself",
        None,
    ),
    # tiny
    "tiny_unknown_preset": (
        lambda c: ["tiny", "--out", str(_out(c, "t1")), "--preset", "llama-70b"],
        "--preset: unknown preset 'llama-70b'",
        lambda c: _out(c, "t1"),
    ),
    "tiny_out_through_a_link_loop": (
        lambda c: ["tiny", "--out", _loop(c)],
        "a symbolic link that points back at itself",
        None,
    ),
    # generate
    "generate_max_new_tokens_zero": (
        lambda c: ["generate", _run(c), "hi", "--max-new-tokens", "0"],
        "--max-new-tokens: must be positive",
        None,
    ),
    "generate_max_new_tokens_past_the_context": (
        lambda c: ["generate", _run(c), "hi", "--max-new-tokens", "99999999999"],
        "exceeds the model's context",
        None,
    ),
    "generate_temperature_negative": (
        lambda c: ["generate", _run(c), "hi", "--temperature=-1"],
        "--temperature: must be 0 (greedy) or positive",
        None,
    ),
    "generate_temperature_nan": (
        lambda c: ["generate", _run(c), "hi", "--temperature", "nan"],
        "--temperature: must be 0 (greedy) or positive",
        None,
    ),
    "generate_temperature_infinite": (
        lambda c: ["generate", _run(c), "hi", "--temperature", "inf"],
        "--temperature: must be 0 (greedy) or positive",
        None,
    ),
    "generate_top_p_zero": (lambda c: ["generate", _run(c), "hi", "--top-p", "0"], "--top-p: must be in (0, 1]", None),
    "generate_top_p_above_one": (
        lambda c: ["generate", _run(c), "hi", "--top-p", "1.5"],
        "--top-p: must be in (0, 1]",
        None,
    ),
    "generate_seed_negative": (
        lambda c: ["generate", _run(c), "hi", "--seed=-1"],
        "--seed: Input should be greater than or equal to 0",
        None,
    ),
    "generate_seed_past_the_generators_range": (
        lambda c: ["generate", _run(c), "hi", "--seed", str(2**40)],
        "--seed: Input should be less than or equal to",
        None,
    ),
    "generate_batch_size_zero": (
        lambda c: ["generate", _run(c), "--file", _prompts(c), "--batch-size", "0"],
        "--batch-size: must be positive",
        lambda c: Path(_prompts(c)).with_suffix(".generations.jsonl"),
    ),
    "generate_file_missing": (
        lambda c: ["generate", _run(c), "--file", str(c.tmp / "no-such-prompts.jsonl")],
        "no-such-prompts.jsonl: prompts file not found",
        None,
    ),
    "generate_file_is_a_folder": (
        lambda c: ["generate", _run(c), "--file", _folder(c)],
        "a-folder: a folder; --file takes one prompts file",
        None,
    ),
    "generate_file_empty": (
        lambda c: ["generate", _run(c), "--file", _empty(c)],
        "empty-prompts.jsonl: no prompts in the file",
        None,
    ),
    "generate_file_not_utf8": (
        lambda c: ["generate", _run(c), "--file", _not_utf8(c)],
        "latin1-prompts.jsonl:1: not UTF-8 text",
        None,
    ),
    "generate_file_a_link_loop": (
        lambda c: ["generate", _run(c), "--file", _loop(c)],
        "a symbolic link that points back at itself",
        None,
    ),
    "generate_neither_instruction_nor_file": (
        lambda c: ["generate", _run(c)],
        "give either an INSTRUCTION or --file PROMPTS.jsonl",
        None,
    ),
    "generate_device_of_a_missing_gpu": (
        lambda c: ["generate", _run(c), "hi", "--device", "cuda:99"],
        "model.device: cuda:99 asked for",
        None,
    ),
    "generate_target_missing": (
        lambda c: ["generate", str(c.tmp / "runs" / "no-such-run"), "hi"],
        "no-such-run",
        None,
    ),
    # eval
    "eval_limit_zero": (
        lambda c: ["eval", _run(c), "--no-baseline", "--limit", "0", "--out", str(_out(c, "e1"))],
        "--limit 0: must be a positive number of examples",
        lambda c: _out(c, "e1"),
    ),
    "eval_limit_negative": (
        lambda c: ["eval", _run(c), "--no-baseline", "--limit=-2", "--out", str(_out(c, "e2"))],
        "--limit -2: must be a positive number of examples",
        lambda c: _out(c, "e2"),
    ),
    "eval_batch_size_zero": (
        lambda c: ["eval", _run(c), "--no-baseline", "--batch-size", "0", "--out", str(_out(c, "e3"))],
        "--batch-size 0: must be positive",
        lambda c: _out(c, "e3"),
    ),
    "eval_max_new_tokens_zero": (
        lambda c: ["eval", _run(c), "--no-baseline", "--max-new-tokens", "0", "--out", str(_out(c, "e4"))],
        "--max-new-tokens 0: must be positive",
        lambda c: _out(c, "e4"),
    ),
    "eval_unknown_split": (
        lambda c: ["eval", _run(c), "--no-baseline", "--split", "validation", "--out", str(_out(c, "e5"))],
        "--split validation: a run has a test and a train split",
        lambda c: _out(c, "e5"),
    ),
    "eval_data_missing": (
        lambda c: ["eval", _run(c), "--no-baseline", "--data", str(c.tmp / "nothing.jsonl")],
        "data file not found",
        None,
    ),
    "eval_data_an_empty_file": (
        lambda c: ["eval", _run(c), "--no-baseline", "--data", _empty(c), "--out", str(_out(c, "e6"))],
        "empty-prompts.jsonl: ",
        lambda c: _out(c, "e6"),
    ),
    "eval_data_not_utf8": (
        lambda c: ["eval", _run(c), "--no-baseline", "--data", _not_utf8(c), "--out", str(_out(c, "e7"))],
        "not UTF-8 text",
        lambda c: _out(c, "e7"),
    ),
    "eval_data_an_empty_folder": (
        lambda c: ["eval", _run(c), "--no-baseline", "--data", _folder(c), "--out", str(_out(c, "e8"))],
        "folder holds no .json, .jsonl, .csv, .parquet or .txt files",
        lambda c: _out(c, "e8"),
    ),
    "eval_baseline_and_no_baseline": (
        lambda c: ["eval", _run(c), "--no-baseline", "--baseline", "tiny:llama-2l"],
        "--baseline and --no-baseline exclude each other",
        None,
    ),
    "eval_unknown_scorer": (
        lambda c: ["eval", _run(c), "--no-baseline", "--scorer", "exact_macth", "--out", str(_out(c, "e9"))],
        "--scorer exact_macth: unknown scorer",
        lambda c: _out(c, "e9"),
    ),
    "eval_out_through_a_link_loop": (
        lambda c: ["eval", _run(c), "--no-baseline", "--limit", "1", "--out", _loop(c)],
        "a symbolic link that points back at itself",
        None,
    ),
    "eval_a_folder_that_is_no_run_without_data": (
        lambda c: ["eval", _folder(c)],
        "not a run directory, a model folder or an adapter folder",
        None,
    ),
    # report
    "report_max_prompts_negative": (
        lambda c: ["report", _run(c), "-o", str(_out(c, "r1.html")), "--max-prompts=-1"],
        "--max-prompts -1: must be zero or more",
        lambda c: _out(c, "r1.html"),
    ),
    "report_max_prompts_not_a_number": (
        lambda c: ["report", _run(c), "-o", str(_out(c, "r2.html")), "--max-prompts", "many"],
        "Invalid value for '--max-prompts'",
        lambda c: _out(c, "r2.html"),
    ),
    "report_a_missing_run": (
        lambda c: ["report", str(c.tmp / "runs" / "gone"), "-o", str(_out(c, "r3.html"))],
        "gone: no such run directory",
        lambda c: _out(c, "r3.html"),
    ),
    "report_a_folder_that_is_no_run": (
        lambda c: ["report", _folder(c), "-o", str(_out(c, "r4.html"))],
        "not a run directory",
        lambda c: _out(c, "r4.html"),
    ),
    "report_a_run_through_a_link_loop": (
        lambda c: ["report", _loop(c), "-o", str(_out(c, "r5.html"))],
        "a symbolic link that points back at itself",
        lambda c: _out(c, "r5.html"),
    ),
    "report_out_through_a_link_loop": (
        lambda c: ["report", _run(c), "-o", _loop(c)],
        "a symbolic link that points back at itself",
        None,
    ),
    # merge / export
    "merge_unknown_dtype": (
        lambda c: ["merge", _run(c), "-o", str(_out(c, "m1")), "--dtype", "fp8"],
        "--dtype: 'fp8' is not one of",
        lambda c: _out(c, "m1"),
    ),
    "merge_a_full_model": (
        lambda c: ["merge", "tiny:llama-2l", "-o", str(_out(c, "m2"))],
        "a full model, there is no adapter to merge",
        lambda c: _out(c, "m2"),
    ),
    "merge_out_through_a_link_loop": (
        lambda c: ["merge", _run(c), "-o", _loop(c)],
        "a symbolic link that points back at itself",
        None,
    ),
    "export_unknown_format": (
        lambda c: ["export", _run(c), "--format", "onnx", "-o", str(_out(c, "x1"))],
        "--format: 'onnx' is not hf, adapter or gguf",
        lambda c: _out(c, "x1"),
    ),
    "export_unknown_quant": (
        lambda c: ["export", _run(c), "--format", "gguf", "--quant", "q3_k", "-o", str(_out(c, "x2"))],
        "--quant: 'q3_k' is not one of",
        lambda c: _out(c, "x2"),
    ),
    "export_quant_without_gguf": (
        lambda c: ["export", _run(c), "--format", "adapter", "--quant", "q8_0", "-o", str(_out(c, "x3"))],
        "--quant: only with --format gguf",
        lambda c: _out(c, "x3"),
    ),
    "export_unknown_dtype": (
        lambda c: ["export", _run(c), "--format", "hf", "--dtype", "int4", "-o", str(_out(c, "x4"))],
        "--dtype: 'int4' is not one of",
        lambda c: _out(c, "x4"),
    ),
    "export_a_folder_that_is_no_model": (
        lambda c: ["export", _folder(c), "--format", "adapter", "-o", str(_out(c, "x5"))],
        "not a run directory, a model folder or an adapter folder",
        lambda c: _out(c, "x5"),
    ),
    "export_out_through_a_link_loop": (
        lambda c: ["export", _run(c), "--format", "adapter", "-o", _loop(c)],
        "a symbolic link that points back at itself",
        None,
    ),
    # train / validate flags
    "train_node_rank_outside_one_machine": (
        lambda c: ["train", _cfg(c), "--node-rank", "5"],
        "--node-rank: 5 is not in 0..0",
        lambda c: c.tmp / "runs" / "cli-refused",
    ),
    "train_master_port_not_a_port": (
        lambda c: ["train", _cfg(c), "--master-port", "70000"],
        "--master-port: 70000 is no TCP port",
        lambda c: c.tmp / "runs" / "cli-refused",
    ),
    "train_nnodes_zero": (
        lambda c: ["train", _cfg(c), "--nnodes", "0"],
        "--nnodes: 0 machines; give at least 1",
        lambda c: c.tmp / "runs" / "cli-refused",
    ),
    "train_two_machines_without_an_address": (
        lambda c: ["train", _cfg(c), "--nnodes", "2"],
        "--master-addr: needed with --nnodes > 1",
        lambda c: c.tmp / "runs" / "cli-refused",
    ),
    "train_config_a_link_loop": (lambda c: ["train", _loop(c)], "config file not found", None),
    "train_override_without_a_value_sign": (
        lambda c: ["train", _cfg(c), "adapter"],
        "override 'adapter': expected KEY=VALUE",
        lambda c: c.tmp / "runs" / "cli-refused",
    ),
    "train_override_with_an_empty_key": (
        lambda c: ["train", _cfg(c), "=3"],
        "override '=3': empty key",
        lambda c: c.tmp / "runs" / "cli-refused",
    ),
    "validate_an_empty_config_file": (lambda c: ["validate", _empty(c)], "empty-prompts.jsonl", None),
    # plan
    "plan_memory_unreadable": (lambda c: ["plan", _cfg(c), "--memory", "lots"], "--memory: cannot read 'lots'", None),
    "plan_memory_negative": (lambda c: ["plan", _cfg(c), "--memory=-4GB"], "--memory: cannot read '-4GB'", None),
    "plan_memory_nan": (lambda c: ["plan", _cfg(c), "--memory", "nanGB"], "--memory: cannot read 'nanGB'", None),
    "plan_nproc_zero": (lambda c: ["plan", _cfg(c), "--nproc", "0"], "--nproc: give at least 1", None),
    "plan_nnodes_zero": (lambda c: ["plan", _cfg(c), "--nnodes", "0"], "--nnodes: give at least 1", None),
    "plan_model_config_not_json": (
        lambda c: ["plan", _cfg(c), "--model-config", _not_utf8(c)],
        "is no config.json",
        None,
    ),
    # serve (refused before the model loads)
    "serve_port_zero": (lambda c: ["serve", _run(c), "--port", "0"], "--port: 0 is not a port number", None),
    "serve_port_past_65535": (
        lambda c: ["serve", _run(c), "--port", "99999"],
        "--port: 99999 is not a port number",
        None,
    ),
    "serve_max_tokens_limit_zero": (
        lambda c: ["serve", _run(c), "--max-tokens-limit", "0"],
        "--max-tokens-limit: must be positive",
        None,
    ),
    "serve_max_batch_zero": (lambda c: ["serve", _run(c), "--max-batch", "0"], "--max-batch: must be at least 1", None),
    "serve_max_body_negative": (
        lambda c: ["serve", _run(c), "--max-body-mb=-1"],
        "--max-body-mb: must be positive",
        None,
    ),
    "serve_unknown_backend": (lambda c: ["serve", _run(c), "--backend", "tgi"], "--backend: 'tgi' is not", None),
    "serve_adapter_without_a_name": (
        lambda c: ["serve", _run(c), "--adapter", "nonsense"],
        "--adapter 'nonsense': expected NAME=PATH",
        None,
    ),
    # runs / artifacts
    "runs_compare_one_run": (
        lambda c: ["runs", "compare", "trained", "--dir", str(c.tmp / "runs")],
        "at least two",
        None,
    ),
    "runs_show_an_unknown_run": (
        lambda c: ["runs", "show", "no-such-run", "--dir", str(c.tmp / "runs")],
        "no-such-run: no run directory of that name",
        None,
    ),
    "artifacts_push_a_missing_file": (
        lambda c: ["artifacts", "push", str(c.tmp / "gone.jsonl"), "--name", "g", "--type", "dataset"],
        "gone.jsonl: no such file or folder",
        None,
    ),
    "artifacts_push_an_unknown_type": (
        lambda c: ["artifacts", "push", str(c.data()), "--name", "g", "--type", "weights"],
        "--type: 'weights' is not dataset or model",
        None,
    ),
    "artifacts_pull_not_a_reference": (
        lambda c: ["artifacts", "pull", "garbage", "--out", str(_out(c, "pulled"))],
        "garbage: not an artifact reference",
        lambda c: _out(c, "pulled"),
    ),
    "artifacts_pull_an_unknown_artifact": (
        lambda c: [
            "artifacts",
            "pull",
            "trackio:nope/x",
            "--out",
            str(_out(c, "pulled2")),
            "--dir",
            str(c.tmp / "runs" / ".tracking"),
        ],
        "no artifact 'x' in trackio project 'nope'",
        lambda c: _out(c, "pulled2"),
    ),
}

for _name, (_args, _text, _output) in OPTIONS.items():
    _register(
        _name,
        "bad input",
        lambda ctx, a=_args, t=_text, o=_output: _refused(ctx, a(ctx), t, o(ctx) if o else None),
    )


@case("bad input")
def case_synth_negative_seed_is_a_seed(ctx):
    """Not every odd value is an error: a negative seed is a seed (Python's `random` takes any integer)."""
    out = _out(ctx, "negative-seed.jsonl")
    o = expect(ctx, ["synth", "--out", str(out), "--n", "3", "--seed=-1"], "wrote 3 rows", rc=0)
    if o.rc == 0 and len(out.read_text().splitlines()) != 3:
        o.lost = "the file does not hold the 3 rows it says"
    return o


@case("bad input")
def case_a_config_that_is_a_fifo_is_refused(ctx):
    fifo = ctx.tmp / "config.fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    return expect(ctx, ["validate", str(fifo)], "config file not found", timeout=60)
