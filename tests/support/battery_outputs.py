"""Battery cases for where the verbs that write may write: `merge`, `export` (hf, adapter, gguf),
`report`, `eval --out`, `generate --out`, `tiny --out`, `synth --out`, each pointed at the run it reads,
a folder inside it or around it, a user's folder or file, a read-only place, a place under a file, a
name too long and a full disk.

Every refused case must exit 2 with one line, change nothing (the source run, the user's files, the
place pointed at) and leave no staging copy (`.NAME.tmpPID`) behind. Most cases are refused before any
weights load (a few seconds each); the full-disk cases run the verb until its write fails.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from battery import Context, Outcome, case, expect, lost_files, read_only, small_disk, snapshot

Args = Callable[[Context, Path], list[str]]


def _run(ctx: Context) -> str:
    return str(ctx.trained_run())


def _prompts(ctx: Context) -> Path:
    p = ctx.path("prompts.jsonl")
    if not p.is_file():
        p.write_text('{"instruction": "Reverse the order of the words.", "input": "cat dog"}\n')
    return p


# each verb, given the place it is pointed at (the model-loading verbs do as little work as they can)
VERBS: dict[str, Args] = {
    "merge": lambda ctx, out: ["merge", _run(ctx), "-o", str(out), "--overwrite"],
    "export_hf": lambda ctx, out: ["export", _run(ctx), "--format", "hf", "-o", str(out), "--overwrite"],
    "export_adapter": lambda ctx, out: ["export", _run(ctx), "--format", "adapter", "-o", str(out), "--overwrite"],
    "export_gguf": lambda ctx, out: ["export", _run(ctx), "--format", "gguf", "-o", str(out), "--overwrite"],
    "report": lambda ctx, out: ["report", _run(ctx), "-o", str(out)],
    "eval": lambda ctx, out: [
        "eval",
        _run(ctx),
        "--out",
        str(out),
        "--limit",
        "1",
        "--no-baseline",
        "--max-new-tokens",
        "1",
    ],
    "generate": lambda ctx, out: [
        "generate",
        _run(ctx),
        "--file",
        str(_prompts(ctx)),
        "--out",
        str(out),
        "--max-new-tokens",
        "1",
    ],
    "tiny": lambda ctx, out: ["tiny", "--out", str(out)],
    "synth": lambda ctx, out: ["synth", "--out", str(out), "--n", "5"],
}
# export --format hf goes through merge's writer: the generic places below try merge for both
FOLDER_VERBS = ("merge", "export_adapter", "export_gguf", "tiny")
FILE_VERBS = ("report", "generate", "synth")


def _user_folder(ctx: Context) -> Path:
    d = ctx.tmp / "users-folder"
    d.mkdir(exist_ok=True)
    (d / "thesis.txt").write_text("three years of work")
    return d


def _user_file(ctx: Context) -> Path:
    f = ctx.tmp / "notes.jsonl"
    f.write_text('{"instruction": "my own", "output": "data"}\n')
    return f


def _leftovers(folder: Path) -> list[str]:
    """Staging copies a failed write left beside its output."""
    if not folder.is_dir():
        return []
    return [p.name for p in folder.iterdir() if ".tmp" in p.name or ".old" in p.name]


def _refused(ctx: Context, verb: str, out: Path, text: str, guard: list[Path]) -> Outcome:
    """`verb` pointed at `out` exits 2 saying `text`; every guarded path (and the run) is unchanged."""
    guard = [ctx.trained_run(), *guard]
    before = [snapshot(g) if g.is_dir() else {"": g.read_bytes()} for g in guard]
    o = expect(ctx, VERBS[verb](ctx, out), text)
    for g, snap in zip(guard, before, strict=True):
        lost = lost_files(snap, g) if g.is_dir() else (None if g.read_bytes() == snap[""] else f"{g} changed")
        o.lost = o.lost or lost
    left = _leftovers(out.parent) + _leftovers(ctx.trained_run())
    if left and not o.lost:
        o.lost = f"staging copies left behind: {left[:3]}"
    return o


def _register(name: str, group: str, fn: Callable[[Context], Outcome]) -> None:
    fn.__name__ = f"case_{name}"
    case(group)(fn)


# --- the run being read, a folder inside it, the folder around it ------------------------------

for _verb in ("merge", "export_hf", "export_adapter", "export_gguf"):
    _register(
        f"{_verb}_onto_its_own_run",
        "data loss",
        lambda ctx, v=_verb: _refused(ctx, v, ctx.trained_run(), "never writes over its input", []),
    )
    _register(
        f"{_verb}_into_its_runs_final",
        "data loss",
        lambda ctx, v=_verb: _refused(ctx, v, ctx.trained_run() / "final", "never writes over its input", []),
    )
    _register(
        f"{_verb}_onto_the_folder_holding_its_run",
        "data loss",
        lambda ctx, v=_verb: _refused(ctx, v, ctx.trained_run().parent, "holds the input", [ctx.trained_run().parent]),
    )


@case("data loss")
def case_export_into_another_runs_final(ctx):
    other = ctx.copy_run("other-run")
    return _refused(ctx, "export_adapter", other / "final", "is inside the run directory", [other])


@case("data loss")
def case_merge_into_another_runs_checkpoint(ctx):
    other = ctx.copy_run("other-run")
    step = next((other / "checkpoints").iterdir())
    return _refused(ctx, "merge", step, "is inside the run directory", [other])


@case("data loss")
def case_export_onto_the_working_directory(ctx):
    _user_folder(ctx)
    return _refused(ctx, "export_hf", ctx.tmp, "holds the input", [ctx.tmp / "users-folder"])


@case("data loss")
def case_report_onto_the_runs_summary(ctx):
    return _refused(ctx, "report", ctx.trained_run() / "summary.json", "was not written by tunelab", [])


@case("data loss")
def case_report_onto_the_run_itself(ctx):
    return _refused(ctx, "report", ctx.trained_run(), "never writes over its input", [])


@case("data loss")
def case_report_onto_another_runs_summary(ctx):
    other = ctx.copy_run("other-run")
    return _refused(ctx, "report", other / "summary.json", "was not written by tunelab", [other])


@case("data loss")
def case_eval_out_inside_the_runs_final(ctx):
    return _refused(ctx, "eval", ctx.trained_run() / "final", "never writes over its input", [])


@case("data loss")
def case_eval_out_another_run(ctx):
    other = ctx.copy_run("other-run")
    return _refused(ctx, "eval", other, "is a run directory", [other])


@case("data loss")
def case_eval_out_the_folder_holding_runs(ctx):
    return _refused(ctx, "eval", ctx.trained_run().parent, "was not written by tunelab", [ctx.trained_run().parent])


@case("data loss")
def case_generate_out_onto_its_prompts(ctx):
    prompts = _prompts(ctx)
    return _refused(ctx, "generate", prompts, "never writes over its input", [prompts])


@case("data loss")
def case_generate_out_onto_the_runs_metrics(ctx):
    return _refused(ctx, "generate", ctx.trained_run() / "metrics.jsonl", "was not written by tunelab", [])


@case("data loss")
def case_generate_out_onto_the_runs_folder(ctx):
    return _refused(ctx, "generate", ctx.trained_run().parent, "is a folder", [ctx.trained_run().parent])


# --- a user's folder, a user's file ------------------------------------------------------------

for _verb in (*FOLDER_VERBS, "eval"):
    _register(
        f"{_verb}_onto_a_users_folder",
        "data loss",
        lambda ctx, v=_verb: _refused(ctx, v, _user_folder(ctx), "was not written by tunelab", [_user_folder(ctx)]),
    )
    _register(
        f"{_verb}_onto_a_users_file",
        "data loss",
        lambda ctx, v=_verb: _refused(ctx, v, _user_file(ctx), "is a file, not a folder", [_user_file(ctx)]),
    )

for _verb in FILE_VERBS:
    _register(
        f"{_verb}_onto_a_users_folder",
        "data loss",
        lambda ctx, v=_verb: _refused(ctx, v, _user_folder(ctx), "is a folder", [_user_folder(ctx)]),
    )
    _register(
        f"{_verb}_onto_a_users_file",
        "data loss",
        lambda ctx, v=_verb: _refused(ctx, v, _user_file(ctx), "was not written by tunelab", [_user_file(ctx)]),
    )


@case("data loss")
def case_synth_onto_a_users_alpaca_data(ctx):
    data = ctx.path("alpaca-own.jsonl")
    data.write_text('{"instruction": "Reverse the order of the words.", "input": "a b", "output": "b a"}\n' * 2)
    data.write_text(data.read_text() + '{"instruction": "Summarize.", "input": "x", "output": "y"}\n')
    return _refused(ctx, "synth", data, "was not written by tunelab", [data])


@case("data loss")
def case_merge_onto_an_earlier_merge_without_overwrite(ctx):
    earlier = ctx.tmp / "earlier-merge"
    earlier.mkdir(exist_ok=True)
    (earlier / "tunelab_model.json").write_text('{"kind": "merged"}')
    o = expect(ctx, ["merge", _run(ctx), "-o", str(earlier)], "pass --overwrite")
    if not (earlier / "tunelab_model.json").is_file():
        o.lost = "the earlier output was replaced without --overwrite"
    return o


# --- what --overwrite still does: replace an earlier output of the same kind -------------------


@case("data loss")
def case_export_adapter_overwrite_replaces_an_earlier_export(ctx):
    out = ctx.tmp / "adapter-export"
    code, text, _ = ctx.cli(*VERBS["export_adapter"](ctx, out))
    assert code == 0, text[-1000:]
    (out / "stale.txt").write_text("from the earlier export")
    o = expect(ctx, VERBS["export_adapter"](ctx, out), "wrote", rc=0)
    if (out / "stale.txt").exists() or not (out / "adapter_model.safetensors").is_file():
        o.lost = "--overwrite did not replace the earlier export with a whole new one"
    elif _leftovers(out.parent):
        o.lost = f"staging copies left behind: {_leftovers(out.parent)}"
    return o


@case("data loss")
def case_report_replaces_an_earlier_report(ctx):
    out = ctx.tmp / "again.html"
    ctx.cli(*VERBS["report"](ctx, out))
    return expect(ctx, VERBS["report"](ctx, out), "wrote", rc=0)


@case("data loss")
def case_synth_replaces_earlier_synthetic_data(ctx):
    out = ctx.tmp / "synth-again.jsonl"
    ctx.cli(*VERBS["synth"](ctx, out))
    o = expect(ctx, ["synth", "--out", str(out), "--n", "7"], "wrote 7 rows", rc=0)
    if o.rc == 0 and len(out.read_text().splitlines()) != 7:
        o.lost = "the earlier file was not replaced whole"
    return o


# --- places that cannot be written: read-only, under a file, a name too long ------------------

for _verb in (v for v in VERBS if v != "export_hf"):
    _register(
        f"{_verb}_into_a_read_only_folder",
        "fault",
        lambda ctx, v=_verb: _read_only_case(ctx, v),
    )
    _register(
        f"{_verb}_under_a_file",
        "bad input",
        lambda ctx, v=_verb: _refused(ctx, v, _user_file(ctx) / "out", "is a file, not a folder", [_user_file(ctx)]),
    )


def _read_only_case(ctx: Context, verb: str) -> Outcome:
    with read_only(ctx.tmp / f"ro-{verb}") as ro:
        return expect(ctx, VERBS[verb](ctx, ro / "out"), "cannot write")


@case("bad input")
def case_merge_name_too_long(ctx):
    return _refused(ctx, "merge", ctx.tmp / ("m" * 300), "name too long", [])


@case("bad input")
def case_report_name_too_long(ctx):
    return _refused(ctx, "report", ctx.tmp / ("r" * 250 + ".html"), "name too long", [])


# --- a full disk: the write fails part way; one line, nothing half-written left -------------------


def _fill(folder: Path) -> None:
    """Fill the file system `folder` is on (a small tmpfs) to the last byte."""
    with (folder / "filler.bin").open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    try:
        with (folder / "filler-tail.bin").open("wb") as f:
            while True:
                f.write(b"\0")
                f.flush()
    except OSError:
        pass


def _disk_full_case(ctx: Context, verb: str) -> Outcome:
    with small_disk(ctx.tmp / f"disk-{verb}", "4m") as disk:
        _fill(disk)
        out = disk / "out"
        o = expect(ctx, VERBS[verb](ctx, out), "out of disk space writing")
        left = [p.name for p in disk.iterdir() if not p.name.startswith("filler")]
        if left:
            o.lost = f"half-written output left on the full disk: {left[:3]}"
        return o


for _verb in ("merge", "export_adapter", "export_gguf", "report", "eval", "generate", "tiny", "synth"):
    _register(f"{_verb}_on_a_full_disk", "fault", lambda ctx, v=_verb: _disk_full_case(ctx, v))


# --- a sweep folder that cannot be written: said before any trial starts -----------------------


def _sweep_case(ctx: Context, folder: Path) -> Outcome:
    spec = ctx.path(f"sweep-{folder.name}.yaml")
    spec.write_text(
        f"name: s1\nbase:\n  config: {ctx.config('sweep-base.yaml')}\nmethod: grid\n"
        f"space:\n  training.learning_rate: [0.001]\nobjective: final_train_loss\ndir: {folder}\n"
    )
    return expect(ctx, ["sweep", str(spec)], "cannot write the sweep folder")


@case("bad input")
def case_sweep_folder_under_a_file(ctx):
    return _sweep_case(ctx, _user_file(ctx) / "sweeps")


@case("fault")
def case_sweep_folder_read_only(ctx):
    with read_only(ctx.tmp / "ro-sweeps") as ro:
        return _sweep_case(ctx, ro)
