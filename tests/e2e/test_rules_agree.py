"""`validate` predicts what `train` refuses: over the same bad configs, validate lists a problem holding the
case's fragment, and train exits 2 with it, before any weights load (`training.rules` is the one owner of the
checks before a run; `training.preflight` adds the ones that read the model folder and the data). Good
configs pass both. The commands are forked from a preloaded process (tests/support/battery.py `Context.cli`)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import battery
from conftest import FIXTURES

pytestmark = pytest.mark.slow

Case = tuple[Path, list[str], str]  # the config, what follows it on both command lines, the fragment
CASES: dict[str, Callable[[battery.Context], Case]] = {}


def case(fn: Callable[[battery.Context], Case]) -> Callable[[battery.Context], Case]:
    CASES[fn.__name__] = fn
    return fn


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return battery.Context(tmp_path_factory.mktemp("agree"))


def _unfinished(ctx: battery.Context, name: str) -> Path:
    """A copy of the trained run that was stopped after its last checkpoint (no final/)."""
    run = ctx.copy_run(name)
    shutil.rmtree(run / "final")
    return run


def _resume(ctx: battery.Context, name: str, *args: str) -> tuple[Path, list[str]]:
    """The trained run's own config and the arguments that continue the run `name`."""
    return ctx.config("trained.yaml"), [f"output.name={name}", "--resume", *args]


# --- the data ------------------------------------------------------------------------------------------------


@case
def missing_data_file(ctx):
    return ctx.config("nodata.yaml", data={"train": {"path": str(ctx.tmp / "nope.jsonl")}}), [], "data file not found"


@case
def mixture_with_a_missing_file(ctx):
    train = [{"path": str(ctx.data())}, {"path": str(ctx.tmp / "gone.jsonl")}]
    return ctx.config("mixgone.yaml", data={"train": train}), [], "gone.jsonl"


@case
def bad_data_rows(ctx):
    p = ctx.path("bad.jsonl")
    p.write_text('{"instruction": "add 1 and 2"}\n' * 20)
    return ctx.config("badrows.yaml", data={"train": {"path": str(p)}}), [], "missing field 'output'"


@case
def split_that_leaves_no_train_rows(ctx):
    return ctx.config("split.yaml", data={"test_size": 1000}), [], "data.test_size: 1000 leaves no train"


@case
def tools_on_a_template_that_cannot_render_them(ctx):
    data = {"train": {"path": str(FIXTURES / "sharegpt_tools.json")}, "test_size": None}
    return ctx.config("tools.yaml", data=data, prompt={"format": "messages"}), [], "cannot render tool calls"


# --- the model -----------------------------------------------------------------------------------------------


@case
def unknown_tiny_preset(ctx):
    return ctx.config("tinynope.yaml"), ["model.name=tiny:nope"], "unknown tiny preset 'tiny:nope'"


@case
def folder_that_is_no_model(ctx):
    (ctx.tmp / "empty-model").mkdir(exist_ok=True)
    return ctx.config("empty.yaml"), [f"model.name={ctx.tmp / 'empty-model'}"], "has no config.json"


@case
def continued_run_with_another_adapter_rank(ctx):
    return ctx.config("rank.yaml"), [f"model.name={ctx.trained_run()}", "adapter.r=4"], "adapter.r is 4"


@case
def continued_run_that_has_not_finished(ctx):
    run = _unfinished(ctx, "half")
    return ctx.config("unfinished.yaml"), [f"model.name={run}"], "is a run that has not finished"


# --- device, precision, kernels, processes -------------------------------------------------------------------


@case
def fp16_precision_on_the_cpu(ctx):
    return ctx.config("fp16.yaml"), ["model.device=cpu", "training.precision=fp16"], "training.precision"


@case
def fp16_weights_on_the_cpu(ctx):
    return ctx.config("w16.yaml"), ["model.device=cpu", "model.dtype=fp16"], "fp16 weights are not supported"


@case
def liger_kernels_without_a_gpu(ctx):
    return ctx.config("liger.yaml"), ["model.device=cpu", "training.kernels=liger"], "training.kernels: liger"


@case
def compile_under_gradient_checkpointing(ctx):
    args = ["training.compile=on", "training.gradient_checkpointing=true"]
    return ctx.config("compile.yaml"), args, "training.compile: on: no graph compiles under gradient checkpointing"


@case
def pinned_device_with_two_processes(ctx):
    return ctx.config("pinned.yaml"), ["model.device=cuda:0", "--nproc", "2"], "pins every process"


@case
def fsdp2_on_cpu_processes(ctx):
    args = ["model.device=cpu", "distributed.strategy=fsdp2", "--nproc", "2"]
    return ctx.config("fsdp.yaml"), args, "fsdp2 shards over GPUs only"


# --- scorers and output folders ------------------------------------------------------------------------------


@case
def unknown_scorer(ctx):
    return ctx.config("scorer.yaml", eval={"scorers": ["exact_match", "bogus"]}), [], "unknown scorer 'bogus'"


@case
def unwritable_output_dir(ctx):
    (ctx.tmp / "a-file").write_text("x")
    return ctx.config("underfile.yaml"), [f"output.dir={ctx.tmp / 'a-file' / 'runs'}"], "output.dir: cannot write"


@case
def existing_run_directory(ctx):
    ctx.trained_run()
    return ctx.config("exists.yaml"), ["output.name=trained"], "already exists"


@case
def overwrite_of_a_folder_tunelab_did_not_make(ctx):
    mine = ctx.tmp / "runs" / "photos"
    mine.mkdir(parents=True, exist_ok=True)
    (mine / "holiday.jpg").write_bytes(b"not a run")
    return ctx.config("foreign.yaml"), ["output.name=photos", "output.overwrite=true"], "was not made by tunelab"


# --- resuming ------------------------------------------------------------------------------------------------


@case
def finished_run_resumed(ctx):
    ctx.copy_run("done")
    return *_resume(ctx, "done"), "already finished"


@case
def resume_with_no_run(ctx):
    return *_resume(ctx, "never-ran"), "nothing to resume"


@case
def resume_with_no_checkpoint(ctx):
    run = _unfinished(ctx, "nockpt")
    shutil.rmtree(run / "checkpoints")
    return *_resume(ctx, "nockpt"), "nothing to resume in"


@case
def resume_with_another_max_steps(ctx):
    _unfinished(ctx, "longer")
    return *_resume(ctx, "longer", "training.max_steps=6"), "--resume cannot change training.max_steps"


@case
def resume_with_a_pickled_optimizer(ctx):
    run = _unfinished(ctx, "pickled")
    (run / "checkpoints" / "step-000004" / "optimizer.pt").write_bytes(b"\x80\x04cos\nsystem\n(S'true'\ntR.")
    return *_resume(ctx, "pickled"), "not loadable as weights-only data"


@case
def resume_with_another_process_count(ctx):
    _unfinished(ctx, "world")
    return *_resume(ctx, "world", "model.device=cpu", "--nproc", "2"), "was written by 1 process, this run has 2"


@case
def resume_from_a_missing_checkpoint(ctx):
    return ctx.config("rmiss.yaml"), ["training.resume=/nonexistent/step-9"], "/nonexistent/step-9 does not exist"


@case
def resume_from_a_folder_that_is_no_checkpoint(ctx):
    return ctx.config("rnot.yaml"), [f"training.resume={ctx.tmp}"], "is not a checkpoint"


# --- grpo ----------------------------------------------------------------------------------------------------


@case
def grpo_with_an_unknown_reward(ctx):
    cfg = ctx.config("grpo_unknown.yaml", training={"method": "grpo"}, grpo={"rewards": ["exact_mach"]})
    return cfg, [], "grpo.rewards[0]: unknown scorer 'exact_mach'"


@case
def grpo_with_a_batch_of_partial_groups(ctx):
    cfg = ctx.config("grpo_batch.yaml", training={"method": "grpo", "batch_size": 3}, grpo={"num_generations": 2})
    return cfg, [], "is not a multiple of grpo.num_generations (2)"


@case
def grpo_reward_without_its_reference_column(ctx):
    grpo = {"rewards": ["exact_match"], "reference_column": "gold"}
    return ctx.config("grpo_ref.yaml", training={"method": "grpo"}, grpo=grpo), [], "rows have no column 'gold'"


# --- the tests -----------------------------------------------------------------------------------------------

WEIGHTS_LOADED = re.compile(r"^model: ", re.MULTILINE)  # train's line once the model is loaded


def _problems(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("problem ")]


@pytest.mark.parametrize("name", list(CASES))
def test_validate_lists_what_train_refuses(ctx, name):
    config, args, fragment = CASES[name](ctx)
    code, out, hung = ctx.cli("validate", str(config), *args, timeout=120)
    assert not hung and code == 2, out[-3000:]
    assert any(fragment in line for line in _problems(out)), f"validate names no {fragment!r}:\n{out[-3000:]}"
    code, out, hung = ctx.cli("train", str(config), *args, timeout=120)
    assert not hung and code == 2 and fragment in out, f"train: rc {code}, no {fragment!r}:\n{out[-3000:]}"
    assert "Traceback" not in out
    assert not WEIGHTS_LOADED.search(out), f"train loaded the model before refusing:\n{out[-3000:]}"


def test_good_configs_pass_both(ctx):
    """The other half of "iff": what validate passes, train runs (a new run, and a resume with its own settings)."""
    config = ctx.config("good.yaml")
    code, out, _ = ctx.cli("validate", str(config), "output.name=good")
    assert code == 0 and not _problems(out), out[-3000:]
    code, out, _ = ctx.cli("train", str(config), "output.name=good")
    assert code == 0, out[-3000:]
    _unfinished(ctx, "again")
    config, args = _resume(ctx, "again")
    for verb in ("validate", "train"):
        code, out, _ = ctx.cli(verb, str(config), *args)
        assert code == 0, f"{verb}:\n{out[-3000:]}"


def test_a_sweep_over_a_mixture_plans_and_names_a_missing_file(ctx):
    """`tunelab sweep --validate` checks the data of every trial with validate's rules: a mixture plans, and
    a mixture with a missing file is refused naming it, as validate and train refuse it."""
    mixture = [{"path": str(ctx.data()), "weight": 2}, {"path": str(ctx.data(60, "other.jsonl")), "weight": 1}]
    gone = {"path": str(ctx.tmp / "gone.jsonl"), "weight": 1}
    for name, train in (("mixok", mixture), ("mixbad", [*mixture, gone])):
        ctx.config(f"{name}.yaml", data={"train": train})
        sweep = ctx.path(f"sweep-{name}.yaml")
        sweep.write_text(
            f"name: {name}\nbase: {{config: {name}.yaml}}\nmethod: grid\nspace: {{adapter.r: [4, 8]}}\n"
            "objective: eval_loss\n"
        )
        code, out, _ = ctx.cli("sweep", str(sweep), "--validate")
        if name == "mixok":
            assert code == 0, out[-3000:]
        else:
            assert code == 2 and "gone.jsonl" in out and "Traceback" not in out, out[-3000:]
