"""The rules a run must pass before it starts, each written once, as findings.

A rule is one function; its callers decide what to do with what it finds. `tunelab train` (every rank,
in `training.run`) and `train --nproc` (once, in `training.launch`, before any process starts) raise
the first problem (`raise_first`); `tunelab validate` (`training.preflight`) and `tunelab sweep` list
them all. So `validate` predicts what `train` refuses: both ask the same functions.

This module holds the rules that need nothing loaded: the config, the machine and the file system
(the device, precision, kernels and compile, several processes, the tiny preset, the scorers, folders that
must be writable, the run directory and the resume point). The rules that read the model folder,
the tokenizer and the data rows are in `training.preflight`. Light on purpose (no transformers at
import): `train --nproc` answers its flags in a second.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tunelab.config import RunConfig
from tunelab.errors import ConfigError, TunelabError
from tunelab.runs import RunDir, check_run_dir
from tunelab.writability import check_writable

if TYPE_CHECKING:
    from tunelab.model.resolve import ResolvedOnce

Severity = Literal["problem", "note", "ok"]


@dataclass(frozen=True)
class Finding:
    """What one rule found: a problem (the run cannot start), a note (worth knowing; train prints it as a
    warning) or an ok line; `field` names the setting (or flag) to change."""

    severity: Severity
    field: str
    message: str
    hint: str | None = None
    error: TunelabError | None = dataclass_field(
        default=None, compare=False, repr=False
    )  # what train raises, as it was

    def line(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True)
class Situation:
    """How the run would start, as far as the rules care."""

    resume: bool = False  # --resume
    processes: int = 1  # processes in the job (--nproc x --nnodes, or a launcher's WORLD_SIZE)
    local_processes: int | None = None  # of those, on this machine (default: all)
    device: str | None = None  # this process's device when it is settled (a rank's cuda:LOCAL_RANK)
    fit: bool = False  # check that the processes fit this machine (the launcher does; its ranks need not)
    hub: bool = True  # the hub may be asked (a sweep's checks never do)
    # the process's one resolution of the run's model, which the memory plans ask (a new one when None)
    model: ResolvedOnce | None = dataclass_field(default=None, compare=False)

    @property
    def per_machine(self) -> int:
        return self.local_processes or self.processes


def findings_of(e: TunelabError, default_field: str) -> list[Finding]:
    """A user error as findings: one per line of a ConfigError, else one, under the field its message
    names ("model.device: ...") or `default_field`."""
    lines = e.problems if isinstance(e, ConfigError) else [e.message.splitlines()[0] if e.message else ""]
    out = []
    for text in lines:
        head, sep, rest = text.partition(": ")
        named = sep and " " not in head and ("." in head or head.startswith("--"))
        out.append(Finding("problem", head if named else default_field, rest if named else text, e.hint, e))
    return out


def problems_of(check: Callable[[], object], default_field: str) -> list[Finding]:
    """Run a check that raises a user error; what it raised as findings (none when it passed)."""
    try:
        check()
    except TunelabError as e:
        return findings_of(e, default_field)
    return []


def problems(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "problem"]


def raise_first(findings: list[Finding]) -> list[Finding]:
    """Raise the first problem as the user error its rule raised; else return the notes (for warnings)."""
    for f in problems(findings):
        raise f.error if f.error is not None else TunelabError(f.line(), hint=f.hint)
    return [f for f in findings if f.severity == "note"]


# --- the rules that need nothing loaded ---------------------------------------------------------------------


def before_load(cfg: RunConfig, sit: Situation) -> list[Finding]:
    """Every rule that reads only the config, the machine and the file system, in the order train meets them."""
    from tunelab.model.resolve import ResolvedOnce

    found: list[Finding] = []
    device = sit.device or _device(cfg, sit, found)
    model = sit.model or ResolvedOnce(cfg)  # the fit and the strategy plan from one reading of config.json
    found += precision(cfg, device)
    found += kernels(cfg, device)
    chosen = chosen_strategy(cfg, sit, device, model)  # once: compile and the strategy rule both read it
    found += compile_setting(cfg, device, chosen)
    if sit.fit:
        found += processes(cfg, sit.per_machine, model)
    found += strategy(cfg, sit.processes, device, sit.per_machine, model, chosen)
    found += tiny_preset(cfg)
    found += scorers(cfg)
    found += grpo(cfg, sit.processes, device)
    found += writable_outputs(cfg)
    found += problems_of(lambda: start_point(cfg, sit), "--resume" if resuming(cfg, sit.resume) else "output.name")
    return found


def _device(cfg: RunConfig, sit: Situation, found: list[Finding]) -> str:
    from tunelab.model.precision import device_for

    found += pinned_device(cfg.model.device, sit.processes)
    try:
        device = device_for(cfg.model)
    except TunelabError as e:
        found += findings_of(e, "model.device")
        return "cpu"
    found.append(Finding("ok", "model.device", device))
    return device


def pinned_device(requested: str, processes: int) -> list[Finding]:
    """Several processes take one device each: `distributed.check_not_pinned`, as a finding."""
    from tunelab.training import distributed as dist

    return problems_of(lambda: dist.check_not_pinned(requested, processes), "model.device")


def check_nproc(nproc: int) -> None:
    if nproc < 1:
        raise TunelabError(f"--nproc: {nproc} processes; give at least 1 (processes on this machine, one per GPU)")


def precision(cfg: RunConfig, device: str) -> list[Finding]:
    """The precision on this device, fp16 weights on the CPU, and bf16 on a CPU that emulates it (a note)."""
    from tunelab.model.precision import precision_flags, run_precision, run_weight_dtype
    from tunelab.perf.machine import cpu_bf16_note

    found = problems_of(lambda: precision_flags(cfg, device), "training.precision")
    if found:
        return found
    if device == "cpu" and run_weight_dtype(cfg, device) == "fp16" and cfg.quantization.bits is None:
        return [
            Finding(
                "problem", "model.dtype", "fp16 weights are not supported for training on the CPU; use fp32 or bf16"
            )
        ]
    precision_name = run_precision(cfg, device)
    slow = cpu_bf16_note(device, precision_name)
    return [
        Finding("note", "training.precision", slow) if slow else Finding("ok", "training.precision", precision_name)
    ]


def kernels(cfg: RunConfig, device: str) -> list[Finding]:
    """`training.kernels` on this device (liger where Triton cannot run), before the model says its type."""
    from tunelab.model.kernels import resolve_kernels

    try:
        chosen = resolve_kernels(cfg.training.kernels, device, None)
    except TunelabError as e:
        return findings_of(e, "training.kernels")
    return [Finding("ok", "training.kernels", chosen.why)]


def compile_setting(cfg: RunConfig, device: str, chosen: str | None = None) -> list[Finding]:
    """`training.compile` on this device and with this run's settings (`on` where inductor cannot run);
    `chosen`: the strategy of several processes as train resolves it (None: as configured)."""
    from tunelab.model.compiled import FIELD, compile_wanted

    try:
        _, why = compile_wanted(cfg, device, strategy=chosen)
    except TunelabError as e:
        return findings_of(e, FIELD)
    return [Finding("ok", FIELD, why)]


def chosen_strategy(cfg: RunConfig, sit: Situation, device: str | None, model: ResolvedOnce) -> str | None:
    """The strategy train will run with (`distributed.resolve_strategy`: `auto` may become FSDP2); None while
    the device is unknown."""
    if device is None:
        return None
    from tunelab.training import distributed as dist

    return dist.resolve_strategy(cfg, sit.processes, device, sit.per_machine, model)


def processes(cfg: RunConfig, nproc: int, model: ResolvedOnce | None = None) -> list[Finding]:
    """`--nproc N`: the flag, and how N processes fit this machine (`distributed.process_fit`, the one rule)."""
    from tunelab.training import distributed as dist

    found = problems_of(lambda: check_nproc(nproc), "--nproc")
    if found:
        return found
    fit = dist.process_fit(cfg, nproc, model=model)
    return [Finding(fit.kind, "--nproc", fit.message, fit.hint)]


def strategy(
    cfg: RunConfig,
    processes: int,
    device: str | None,
    per_machine: int | None = None,
    model: ResolvedOnce | None = None,
    chosen: str | None = None,
) -> list[Finding]:
    """The strategy of several processes, with its backend; `device` None: as far as the config alone decides
    it (what `train --nproc` refuses before any library loads); `chosen`: the strategy as already resolved."""
    from tunelab.training import distributed as dist

    if processes <= 1:
        return []
    if device is None:
        known = cfg.distributed.strategy
        if known == "auto":
            known = "ddp" if cfg.adapter.type == "lora" else None
        return (
            [] if known is None else problems_of(lambda: dist.check_strategy(cfg, known, None), "distributed.strategy")
        )
    on_cpu = device == "cpu"
    found = problems_of(lambda: dist.backend_for(cfg, on_cpu), "distributed.backend")
    chosen = chosen or dist.resolve_strategy(cfg, processes, device, per_machine, model)
    return found + problems_of(lambda: dist.check_strategy(cfg, chosen, on_cpu), "distributed.strategy")


def tiny_preset(cfg: RunConfig) -> list[Finding]:
    if cfg.model.ref.kind != "tiny":
        return []
    from tunelab.model.tiny import tiny_spec

    return problems_of(lambda: tiny_spec(cfg.model.name), "model.name")


def scorers(cfg: RunConfig) -> list[Finding]:
    """`eval.scorers`: every name known, every parameter valid (`tunelab.scoring` owns the rule)."""
    from tunelab.scoring import config_scorers

    return problems_of(lambda: config_scorers(cfg.eval.scorers), "eval.scorers")


def grpo(cfg: RunConfig, processes: int = 1, device: str | None = None) -> list[Finding]:
    """training.method grpo: the rewards built (`training.rewards` owns the rule), the generation batch that TRL
    splits into whole groups of grpo.num_generations, and where the rollouts are generated."""
    if cfg.training.method != "grpo":
        return []
    from tunelab.scoring.weighted import FIELD
    from tunelab.training.rewards import build_rewards

    found = problems_of(lambda: build_rewards(cfg.grpo.rewards), FIELD)
    t, groups = cfg.training, cfg.grpo.num_generations
    per_step = t.batch_size * t.grad_accum * max(1, processes)
    if per_step % groups:
        found.append(
            Finding(
                "problem",
                "training.batch_size",
                f"batch_size x grad_accum{' x processes' if processes > 1 else ''} = {per_step} completions per "
                f"step is not a multiple of grpo.num_generations ({groups}); TRL samples whole groups",
                hint=f"make batch_size x grad_accum a multiple of {groups}",
            )
        )
    found += _rollout_engine(cfg, device)
    return found


def _rollout_engine(cfg: RunConfig, device: str | None) -> list[Finding]:
    """grpo.vllm_mode: colocate needs vLLM and a GPU; without them the rollouts run in transformers (a note)."""
    if cfg.grpo.vllm_mode is None:
        return [Finding("ok", "grpo.vllm_mode", "rollouts generated with transformers")]
    from importlib.util import find_spec

    if device is not None and not device.startswith("cuda"):
        why = f"vLLM needs a GPU (device {device})"
    elif find_spec("vllm") is None:
        why = "vllm is not installed (pip install 'tunelab[vllm]')"
    else:
        return [Finding("ok", "grpo.vllm_mode", "rollouts generated with vLLM, colocated")]
    return [Finding("note", "grpo.vllm_mode", f"{why}; the rollouts are generated with transformers")]


def vllm_rollouts(cfg: RunConfig, device: str) -> bool:
    """Whether this run's rollouts go through vLLM (what `_rollout_engine` says, as a decision)."""
    return cfg.grpo.vllm_mode is not None and all(f.severity == "ok" for f in _rollout_engine(cfg, device))


def grpo_rows(cfg: RunConfig, rows: list[dict]) -> list[Finding]:
    """The training rows hold the reference answer every reward that needs one compares with."""
    if cfg.training.method != "grpo":
        return []
    from tunelab.training.rewards import build_rewards, reference_problem

    try:
        rewards = build_rewards(cfg.grpo.rewards)
    except TunelabError:
        return []  # said by `grpo`
    problem = reference_problem(rows, cfg, rewards)
    field = "grpo.reference_column" if cfg.grpo.reference_column else "grpo.rewards"
    return (
        [Finding("problem", field, problem, hint="set grpo.reference_column to the column that holds it")]
        if problem
        else []
    )


def output_targets(cfg: RunConfig) -> list[tuple[str, Path]]:
    """The folders a run writes before it writes anything else: output.dir, the data cache, the tracking dir."""
    from tunelab.artifacts import tracking_dir
    from tunelab.cache import cache_root

    targets = [
        ("output.dir", Path(cfg.output.dir)),
        ("data.cache_dir", Path(cfg.data.cache_dir) if cfg.data.cache_dir else cache_root("data")),
    ]
    if cfg.tracking.backends():
        targets.append(("tracking.dir", tracking_dir(cfg)))
    return targets


def writable_outputs(cfg: RunConfig) -> list[Finding]:
    from functools import partial

    return [f for name, path in output_targets(cfg) for f in problems_of(partial(check_writable, path, name), name)]


# --- the run directory and the resume point -----------------------------------------------------------------


def resuming(cfg: RunConfig, resume: bool) -> bool:
    """--resume, or `training.resume` set in the config (auto or a checkpoint)."""
    return resume or cfg.training.resume not in (False, None)


def explicit_checkpoint(cfg: RunConfig) -> Path | None:
    """`training.resume: PATH`: that checkpoint, checked now; None for `auto` / off."""
    explicit = cfg.training.resume
    if explicit in (False, None, "auto", True):
        return None
    p = Path(str(explicit)).expanduser()
    if not p.exists():
        raise TunelabError(f"training.resume: {p} does not exist")
    if not (p / "trainer_state.json").is_file():
        raise TunelabError(f"training.resume: {p} is not a checkpoint (no trainer_state.json)")
    return p


def run_dir_for(cfg: RunConfig, resume: bool) -> RunDir:
    """`check_run_dir` for this run: an explicit `training.resume` checkpoint may start a new run directory."""
    run_name = cfg.output.name or "run"
    resume = resuming(cfg, resume)
    if explicit_checkpoint(cfg) is not None:
        resume = (Path(cfg.output.dir) / run_name).is_dir()
    return check_run_dir(cfg.output.dir, run_name, resume=resume, overwrite=cfg.output.overwrite)


def resume_point(run: RunDir) -> Path:
    """The newest complete checkpoint of `run`, or a user error saying there is none."""
    ckpt = run.latest_checkpoint()
    if ckpt is None:
        raise TunelabError(
            f"nothing to resume in {run.path}: no complete checkpoint under checkpoints/",
            hint="checkpoints are written every training.save_steps steps",
        )
    return ckpt


def start_point(cfg: RunConfig, sit: Situation) -> tuple[RunDir, Path | None]:
    """The run directory and the checkpoint this run continues (None for a new run), or the user error that
    stops it: a checkpoint that is none, a run directory in the way, a finished run, nothing to resume, a
    resume that changes what the remaining steps compute, checkpoint files that are not weights-only data,
    or another number of processes than wrote the checkpoint."""
    from tunelab.training import distributed as dist
    from tunelab.training.resume import check_checkpoint_files, check_resume_settings

    explicit = explicit_checkpoint(cfg)  # a training.resume path that is no checkpoint is named first
    run = run_dir_for(cfg, sit.resume)
    if not resuming(cfg, sit.resume):
        return run, None
    if explicit is None and run.is_complete():
        raise TunelabError(f"{run.path} already finished (final/ exists); nothing to resume")
    checkpoint = explicit or resume_point(run)
    # another number of processes first: its fix (the checkpoint's --nproc) comes before any setting's
    dist.check_resume_world(checkpoint, sit.processes)
    check_resume_settings(cfg, run, checkpoint)
    check_checkpoint_files(checkpoint)
    return run, checkpoint
