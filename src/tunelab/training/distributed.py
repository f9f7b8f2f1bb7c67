"""Several processes, one run: what tunelab adds on top of the libraries' own distributed training.

torch's elastic launcher (`torchrun`, which `tunelab train --nproc N` and `accelerate launch` both
use) starts the processes and sets RANK / LOCAL_RANK / WORLD_SIZE; accelerate's `PartialState` opens
the process group; transformers' Trainer wraps the model (DDP, FSDP2, DeepSpeed), shards the data and
all-reduces. tunelab never builds a process group itself. This module adds:

- `World`: this process's place in the job, read once from the launcher's environment;
- which strategy a run uses (`resolve_strategy`) and what cannot work here (`check_strategy`), said
  in one line before anything is written;
- how many processes this machine holds (`process_fit`: one per GPU; on the CPU, what the memory
  holds, a warning beyond the cores), and the launcher's variables making sense (`check_launch_env`);
- each rank's own device (`cuda:LOCAL_RANK`, never `device_map="auto"`);
- rank 0 first with its outcome shared (`World.main_first`, `World.on_main`), so a user error on
  rank 0 ends every rank with the same one line instead of leaving the others in a barrier;
- the same stop step on every rank after Ctrl-C / SIGTERM (`World.agree_signal`);
- per-rank statistics for the summary (`rank_record`, `RankTokens`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tunelab.errors import TunelabError

if TYPE_CHECKING:
    from tunelab.config import RunConfig
    from tunelab.model.resolve import ResolvedOnce
    from tunelab.perf.machine import Machine, ProcessFit

T = TypeVar("T")

# FSDP2 over bitsandbytes 4/8-bit weights: FSDP2's parameter swap rewrites the NaN bit patterns of
# packed NF4 bytes stored as bf16 (bitsandbytes#1945, open), and the accelerate path either crashes or
# trains with loss 0 / NaN gradients (accelerate#3983, #3874). No release is known to fix them; when
# one is, put its first fixed version here and the check below lets that combination through.
FSDP_QUANTIZED_FIXED_IN: dict[str, str | None] = {"bitsandbytes": None, "accelerate": None, "torch": None}


@dataclass(frozen=True)
class World:
    """This process's place in a job, from the variables torchrun / accelerate launch set."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_size: int = 1
    node_rank: int = 0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> World:
        env = dict(os.environ if env is None else env)

        def num(*names: str, default: int) -> int:
            for n in names:
                if env.get(n, "").strip().lstrip("-").isdigit():
                    return int(env[n])
            return default

        size = num("WORLD_SIZE", default=1)
        local_size = num("LOCAL_WORLD_SIZE", default=size)
        return cls(
            size=size,
            rank=num("RANK", default=0),
            local_rank=num("LOCAL_RANK", default=0),
            local_size=local_size,
            node_rank=num("GROUP_RANK", "NODE_RANK", default=0),
        )

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def nnodes(self) -> int:
        return max(1, self.size // max(1, self.local_size))

    # --- the process group (accelerate's)
    def start(self, cfg: RunConfig) -> str | None:
        """Open the process group through accelerate's PartialState (a no-op for one process) and
        return the backend; the Trainer's own PartialState reuses the group."""
        if not self.distributed:
            return None
        from datetime import timedelta

        import torch
        from accelerate import PartialState

        on_cpu = runs_on_cpu(cfg)
        backend = backend_for(cfg, on_cpu)
        if on_cpu and not os.environ.get("OMP_NUM_THREADS"):
            # ranks on one machine share its cores; oversubscribed threads slow each other far beyond N x
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.local_size))
        PartialState(cpu=on_cpu, backend=backend, timeout=timedelta(seconds=cfg.distributed.timeout_s))
        return backend

    def device(self, model_cfg) -> str:
        """This rank's device: `cuda:LOCAL_RANK` (accelerate's choice, which the Trainer uses too) or `cpu`."""
        from tunelab.model.precision import device_for

        if not self.distributed:
            return device_for(model_cfg)
        requested = model_cfg.device
        check_not_pinned(requested, self.size)
        if requested == "cpu":
            return "cpu"
        import torch

        if not torch.cuda.is_available():
            return device_for(model_cfg)  # `cuda` without a GPU: device_for's own one-line error
        n = torch.cuda.device_count()
        if 1 < n < self.local_size:
            raise TunelabError(
                f"{self.local_size} processes on this machine but {n} GPUs are visible; two ranks would share a GPU",
                hint=f"start at most {n} processes per machine (--nproc {n})",
            )
        from accelerate import PartialState

        return str(PartialState().device)

    # --- collectives (torch.distributed, on the group accelerate opened)
    def _gather(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def gather(self, obj: Any) -> list[Any]:
        """`obj` from every rank, in rank order (on every rank)."""
        return self._gather(obj) if self.distributed else [obj]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def agree_signal(self, signum: int | None) -> int | None:
        """The stop signal any rank has seen (the largest number), so every rank stops after the same step."""
        if not self.distributed:
            return signum
        import torch
        import torch.distributed as dist
        from accelerate import PartialState

        t = torch.tensor([int(signum or 0)], device=PartialState().device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item()) or None

    def _share(self, error: TunelabError | None) -> None:
        """Raise on every rank the first user error any rank hit in this stage (ranks in order)."""
        if not self.distributed:
            if error is not None:
                raise error
            return
        shared = self._gather(None if error is None else (error.message, error.hint, getattr(error, "exit_code", 2)))
        for i, e in enumerate(shared):
            if e is None:
                continue
            if i == self.rank and error is not None:
                raise error
            raise RankEcho(*e)

    def main_first(self, fn: Callable[[], T]) -> T:
        """`fn()` on rank 0 first, then on each machine's local rank 0, then on the others (a cache
        filled once per file system it lives on: once when shared, once per machine when not). A user
        error on any rank in a stage ends every rank with that error."""
        stages = [self.is_main, not self.is_main and self.local_rank == 0, self.local_rank != 0]
        result: Any = None
        for mine in stages if self.distributed else [True]:
            error = None
            if mine:
                try:
                    result = fn()
                except TunelabError as e:
                    error = e
            self._share(error)
        return result

    def on_main(self, fn: Callable[[], T]) -> T | None:
        """`fn()` on rank 0 only; the others return None, or raise rank 0's user error."""
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except TunelabError as e:
                error = e
        self._share(error)
        return result


def check_not_pinned(requested: str, processes: int) -> None:
    """Several processes take one device each (cuda:LOCAL_RANK): a config that names one device cannot."""
    if processes > 1 and requested not in ("auto", "cpu", "cuda"):
        raise TunelabError(
            f"model.device: {requested} pins every process to one device; with {processes} processes "
            "each rank uses its own (cuda:LOCAL_RANK)",
            hint="set model.device: auto (or cuda / cpu)",
        )


class RankEcho(TunelabError):
    """Another rank's user error, raised here too so every rank stops; that rank prints it."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = 2):
        super().__init__(message, hint)
        self.exit_code = exit_code


def runs_on_cpu(cfg: RunConfig) -> bool:
    import torch

    return cfg.model.device == "cpu" or not torch.cuda.is_available()


def backend_for(cfg: RunConfig, on_cpu: bool) -> str:
    b = cfg.distributed.backend
    if b == "nccl" and on_cpu:
        raise TunelabError("distributed.backend: nccl needs CUDA GPUs; this run is on the CPU", hint="use auto or gloo")
    return ("gloo" if on_cpu else "nccl") if b == "auto" else b


def resolve_strategy(
    cfg: RunConfig, world_size: int, device: str, local_size: int | None = None, model: ResolvedOnce | None = None
) -> str:
    """`none` for one process; else `distributed.strategy`, with `auto` = ddp for LoRA / QLoRA and,
    for full fine-tuning, ddp when one device holds the whole run (the memory plan of the run's model,
    from `model`, the process's one resolution of it), else fsdp2."""
    if world_size <= 1:
        return "none"
    s = cfg.distributed.strategy
    if s != "auto":
        return s
    if cfg.adapter.type == "lora" or not device.startswith("cuda"):
        return "ddp"  # LoRA: replicas are small; the CPU: accelerate shards on GPUs only
    from tunelab.model.resolve import ResolvedOnce
    from tunelab.perf.plan import estimate

    resolved = (model or ResolvedOnce(cfg)).for_planning()
    if resolved is None:
        return "fsdp2"  # no config.json to plan from: shard, the choice that fits
    ckpt = cfg.training.gradient_checkpointing in (True, "auto")
    need = estimate(cfg, resolved, device, checkpointing=ckpt).total
    return "ddp" if need <= rank_budget(device, local_size or world_size) else "fsdp2"


def rank_budget(device: str, local_size: int) -> float:
    """Memory one rank may plan for: its GPU (90 %), or its share of this machine's RAM (70 %)."""
    from tunelab.perf.plan import available_memory

    if device.startswith("cuda"):
        return available_memory(device) * 0.9
    return available_memory(device) * 0.7 / max(1, local_size)


FLOOR_NEED = "every process needs at least {gib} GiB (Python, torch and the libraries, before any model)"
PLAN_NEED = "a CPU run of this config needs about {gib} GiB per process (model, optimizer, activations, data)"


def process_fit(
    cfg,
    nproc: int,
    flag: str = "--nproc",
    machine: Machine | None = None,
    planned: bool = True,
    model: ResolvedOnce | None = None,
) -> ProcessFit:
    """How `nproc` processes of this run fit this machine (a `perf.machine.ProcessFit`): the one rule that
    `train --nproc`, `validate --nproc` and a rank torchrun / accelerate launch started all apply.

    A GPU run takes one process per GPU. A CPU run takes as many as the memory holds, each one rank's
    memory plan, and a warning beyond the cores. `planned=False` loads no library and answers in well
    under a second: the floor of any process, which refuses `--nproc 64` on a small machine before
    anything else happens; the plan (torch and transformers loaded) refines it before any process starts.
    `model`: the process's one resolution of the run's model (`model.resolve.ResolvedOnce`)."""
    from tunelab.perf.machine import Machine, ProcessFit, processes_fit
    from tunelab.perf.plan import CPU_PROCESS_OVERHEAD

    machine = machine or Machine.here()
    floor = processes_fit(nproc, CPU_PROCESS_OVERHEAD, machine, FLOOR_NEED, flag)
    if not planned or floor.kind == "problem":
        return floor
    if not runs_on_cpu(cfg):
        import torch

        n = torch.cuda.device_count()
        if nproc > n and cfg.distributed.backend != "gloo":
            return ProcessFit(
                "problem",
                f"{nproc} processes but this machine has {n} GPU{'s' if n != 1 else ''}",
                n,
                f"one process per GPU: {flag} {n} (processes share GPUs only over distributed.backend=gloo, for tests)",
            )
        return floor
    per_rank = cpu_rank_memory(cfg, nproc, model)
    return floor if per_rank is None else processes_fit(nproc, per_rank, machine, PLAN_NEED, flag)


def cpu_rank_memory(cfg: RunConfig, nproc: int, model: ResolvedOnce | None = None) -> float | None:
    """One CPU rank's planned peak in bytes (DDP: the CPU's only strategy), or None without a model config
    to plan from (a hub model while offline); `model`: the process's one resolution of the run's model."""
    from tunelab.model.resolve import ResolvedOnce
    from tunelab.perf.plan import decide_checkpointing
    from tunelab.perf.sharding import rank_estimator

    resolved = (model or ResolvedOnce(cfg)).for_planning()
    if resolved is None:
        return None
    ckpt = cfg.training.gradient_checkpointing
    if ckpt == "auto":
        ckpt = decide_checkpointing(cfg, resolved, "cpu")
    return rank_estimator("ddp", nproc)(cfg, resolved, "cpu", checkpointing=ckpt is True).total


LAUNCH_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
CHECKED_ENV = "TUNELAB_NPROC_CHECKED"  # set by `--nproc` for its workers: the launcher applied `process_fit`

_LAUNCHER_HINT = (
    "let a launcher set these (tunelab train --nproc N, torchrun, accelerate launch); unset WORLD_SIZE, RANK, "
    "LOCAL_RANK and LOCAL_WORLD_SIZE to run one process"
)


def check_launch_env(env: dict[str, str] | None = None) -> None:
    """The variables a launcher sets (torchrun, accelerate launch) make sense together, or a user error
    naming the one that does not: set by hand or left over in a shell, they would crash or hang the
    process group."""
    env = dict(os.environ if env is None else env)
    for name in LAUNCH_VARS:
        value = env.get(name, "").strip()
        if value and not value.isdigit():
            raise TunelabError(f"{name}={value}: not a number of processes or a rank", hint=_LAUNCHER_HINT)
    world = World.from_env(env)
    if world.size < 1 or world.local_size < 1:
        raise TunelabError(
            f"WORLD_SIZE={world.size}, LOCAL_WORLD_SIZE={world.local_size}: give at least 1", hint=_LAUNCHER_HINT
        )
    if not world.distributed:
        return
    missing = [n for n in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(n, "").strip()]
    if missing:
        raise TunelabError(
            f"WORLD_SIZE={world.size} but {', '.join(missing)} not set: this process is not one a launcher started",
            hint=_LAUNCHER_HINT,
        )
    if not 0 <= world.rank < world.size:
        raise TunelabError(f"RANK={world.rank} is not in 0..{world.size - 1} (WORLD_SIZE={world.size})")
    if world.local_size > world.size or not 0 <= world.local_rank < world.local_size:
        raise TunelabError(
            f"LOCAL_RANK={world.local_rank}, LOCAL_WORLD_SIZE={world.local_size}: not a rank of "
            f"0..LOCAL_WORLD_SIZE-1 on a machine of a job of WORLD_SIZE={world.size}",
            hint=_LAUNCHER_HINT,
        )


def check_launched(cfg: RunConfig, world: World) -> str | None:
    """At the start of a rank that torchrun / accelerate launch started (after `check_launch_env`), before
    anything loads: the processes on its machine (LOCAL_WORLD_SIZE) against `process_fit`'s floor (the plan
    would first cost every rank the libraries' memory). Returns the warning for rank 0 to print; the ranks of
    `--nproc` were checked by their launcher."""
    if not world.distributed or os.environ.get(CHECKED_ENV) or not os.environ.get("LOCAL_WORLD_SIZE"):
        return None  # alone; checked by `--nproc` already; or no launcher's word on how many share this machine
    from tunelab.perf.machine import Machine

    machine = Machine.here(siblings=world.local_size - 1)
    fit = process_fit(cfg, world.local_size, "--nproc-per-node", machine, planned=False)
    return require_fit(fit, "LOCAL_WORLD_SIZE")


def require_fit(fit: ProcessFit, field: str = "--nproc") -> str | None:
    """A refused `process_fit` as the user error; else its warning (None when there is nothing to say)."""
    if fit.kind == "problem":
        raise TunelabError(f"{field}: {fit.message}", hint=fit.hint)
    return f"{field}: {fit.message}" if fit.kind == "note" else None


def installed(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def fsdp_quantized_known_good() -> bool:
    """Whether every library in FSDP_QUANTIZED_FIXED_IN is at or past its first fixed version."""
    from packaging.version import Version

    for pkg, fixed in FSDP_QUANTIZED_FIXED_IN.items():
        have = installed(pkg)
        if fixed is None or have is None or Version(have) < Version(fixed):
            return False
    return True


def check_strategy(cfg: RunConfig, strategy: str, on_cpu: bool | None) -> None:
    """Refuse, in one line, a strategy that cannot work with this config and these libraries
    (`on_cpu` None: the device is not known yet, its checks wait)."""
    if strategy == "none":
        return
    if strategy.startswith("deepspeed"):
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise TunelabError(
                f"distributed.strategy: {strategy} needs the deepspeed package, which is not installed",
                hint="pip install deepspeed, or use ddp (LoRA / QLoRA) or fsdp2 (full fine-tuning)",
            )
        if on_cpu:
            raise TunelabError(f"distributed.strategy: {strategy} needs CUDA GPUs", hint="use ddp on the CPU")
    if strategy == "fsdp2" and on_cpu:
        # accelerate turns FSDP on CPU processes into plain DDP without a word; refuse instead
        raise TunelabError(
            "distributed.strategy: fsdp2 shards over GPUs only (accelerate runs CPU processes as DDP)",
            hint="use ddp on the CPU",
        )
    bits = cfg.quantization.bits
    if strategy in ("fsdp2", "deepspeed_zero3") and bits is not None and not fsdp_quantized_known_good():
        versions = ", ".join(f"{p} {installed(p) or 'absent'}" for p in FSDP_QUANTIZED_FIXED_IN)
        raise TunelabError(
            f"distributed.strategy: {strategy} with quantization.bits {bits} "
            f"shards {bits}-bit bitsandbytes weights, which "
            f"crashes or silently trains with loss 0 / NaN gradients with the installed {versions} "
            "(bitsandbytes#1945, accelerate#3983)",
            hint="use ddp: each rank holds the quantized base, only the LoRA gradients are all-reduced",
        )


def trainer_args(cfg: RunConfig, strategy: str, backend: str | None, model=None) -> dict[str, Any]:
    """The TrainingArguments for the strategy (nothing for one process)."""
    if strategy == "none":
        return {}
    args: dict[str, Any] = {"ddp_backend": backend, "ddp_timeout": cfg.distributed.timeout_s}
    if strategy == "ddp":
        # every trainable parameter takes part in every step (LoRA on fixed modules, or all weights):
        # no search for unused ones, which would cost a graph traversal per step
        args["ddp_find_unused_parameters"] = False
    elif strategy == "fsdp2":
        fsdp_config: dict[str, Any] = {
            "version": 2,
            "reshard_after_forward": True,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "state_dict_type": "FULL_STATE_DICT",
            "cpu_ram_efficient_loading": False,
        }
        layers = getattr(model, "_no_split_modules", None) if model is not None else None
        if layers:
            fsdp_config["transformer_layer_cls_to_wrap"] = list(layers)
        args.update(fsdp=True, fsdp_config=fsdp_config)
    else:
        stage = 2 if strategy == "deepspeed_zero2" else 3
        zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
        if stage == 3:
            zero["stage3_gather_16bit_weights_on_model_save"] = True
        args["deepspeed"] = {
            "zero_optimization": zero,
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto",
            "gradient_clipping": "auto",
            "bf16": {"enabled": "auto"},
            "fp16": {"enabled": "auto"},
        }
    return args


def shards_weights(strategy: str) -> bool:
    """Whether no rank holds the whole model (so a forward pass needs every rank)."""
    return strategy in ("fsdp2", "deepspeed_zero3")


def checkpoint_world_size(checkpoint: Path) -> int:
    """How many processes wrote a checkpoint: the Trainer saves one RNG file per rank when there are several."""
    ranks = list(Path(checkpoint).glob("rng_state_*.pth"))
    return len(ranks) if ranks else 1


def check_resume_world(checkpoint: Path, world_size: int, command: str = "tunelab train CONFIG") -> None:
    """A resume runs with as many processes as the checkpoint was written by (the global batch, the data
    order and each rank's RNG state depend on it)."""
    was = checkpoint_world_size(checkpoint)
    if was != world_size:
        how = f"--nproc {was}" if was > 1 else "a single process (no --nproc)"
        raise TunelabError(
            f"--resume: {checkpoint.name} was written by {was} process{'es' if was > 1 else ''}, "
            f"this run has {world_size}",
            hint=f"resume with {how}: the global batch, data order and RNG state of the remaining steps depend on it",
        )


def global_batch(cfg: RunConfig, world_size: int) -> int:
    """Sequences per optimizer step: batch_size x grad_accum x world size."""
    return cfg.training.batch_size * cfg.training.grad_accum * max(1, world_size)


def batch_note(cfg: RunConfig, world_size: int) -> str:
    """The global batch in words, and the grad_accum that keeps one process's batch (the tutorial's 32)."""
    t = cfg.training
    one, now = t.batch_size * t.grad_accum, global_batch(cfg, world_size)
    text = (
        f"global batch {t.batch_size} x grad_accum {t.grad_accum} x {world_size} processes = {now} sequences per step"
    )
    if world_size > 1 and one % (t.batch_size * world_size) == 0:
        text += f" (one process steps {one}; training.grad_accum={one // (t.batch_size * world_size)} would match it)"
    return text


class RankTokens:
    """Trainer mixin: this rank's own input tokens (the Trainer's `num_input_tokens_seen` is the whole job's)."""

    rank_tokens = 0

    def training_step(self, model, inputs, *args, **kwargs):
        if not isinstance(inputs, dict):  # GRPO gets rows of prompts; its tokens are counted as it generates
            return super().training_step(model, inputs, *args, **kwargs)
        mask, ids = inputs.get("attention_mask"), inputs.get("input_ids")
        pad = getattr(self.processing_class, "pad_token_id", None)
        if mask is not None:
            self.rank_tokens += int(mask.sum())
        elif ids is not None:
            self.rank_tokens += int((ids != pad).sum()) if pad is not None else ids.numel()
        return super().training_step(model, inputs, *args, **kwargs)


def peak_flops(device: str, dtype: str) -> float:
    """This process's matmul peak, measured briefly (MFU's denominator; ranks sharing a machine measure together)."""
    from tunelab.perf.flops import measure_peak_matmul

    dev = device if device.startswith("cuda") else "cpu"
    return measure_peak_matmul(dtype, dev, n=4096 if dev.startswith("cuda") else 1024, seconds=0.3)


def rank_record(
    world: World,
    device: str,
    trainer_device: str,
    model_device: str,
    tokens: int,
    peak: float,
    memory: dict[str, float],
) -> dict[str, Any]:
    """One rank's line in the summary: where it ran (as the Trainer and the weights say) and what it did."""
    import platform

    return {
        "rank": world.rank,
        "local_rank": world.local_rank,
        "host": platform.node(),
        "device": device,
        "trainer_device": trainer_device,
        "model_device": model_device,
        "tokens": tokens,
        "peak_tflops": round(peak / 1e12, 4),
        **memory,
    }


def job_figures(per_rank: list[dict[str, Any]], seconds: float, flops_per_token: float) -> dict[str, Any]:
    """Fill in each rank's speed over `seconds` (rank 0's training time: every rank steps in lockstep)
    and return the whole job's: MFU over the sum of the ranks' peaks, peak memory summed over ranks."""
    seconds = max(seconds, 1e-9)
    for r in per_rank:
        achieved = flops_per_token * r["tokens"] / seconds
        r["tokens_per_s"] = round(r["tokens"] / seconds, 1)
        r["achieved_tflops"] = round(achieved / 1e12, 5)
        r["mfu"] = round(achieved / (r["peak_tflops"] * 1e12), 4) if r["peak_tflops"] else None
    peak = sum(r["peak_tflops"] for r in per_rank)
    achieved = sum(flops_per_token * r["tokens"] / seconds for r in per_rank) / 1e12
    out: dict[str, Any] = {
        "mfu": round(achieved / peak, 4) if peak else None,
        "peak_tflops": round(peak, 4),
        "peak_rss_mb": round(sum(r["peak_rss_mb"] for r in per_rank), 1),
    }
    gpus = [r["peak_gpu_mb"] for r in per_rank if r.get("peak_gpu_mb") is not None]
    if gpus:
        out["peak_gpu_mb"] = round(sum(gpus), 1)
    return out


def check_trainer_world(trainer, world: World, device: str, strategy: str = "none") -> None:
    """The Trainer runs with the launcher's world size, this rank's device and the strategy asked for,
    or the run stops here: a job that silently trains as one process, all ranks on one GPU or
    unsharded is a bug, not a slow run."""
    args = trainer.args
    wanted = {
        "fsdp2": "is_fsdp_enabled",
        "deepspeed_zero2": "is_deepspeed_enabled",
        "deepspeed_zero3": "is_deepspeed_enabled",
    }
    if strategy in wanted and not getattr(trainer, wanted[strategy], False):
        raise RuntimeError(f"distributed.strategy {strategy} asked for, but the trainer does not run it")
    if args.world_size != world.size:
        raise RuntimeError(
            f"launched as rank {world.rank} of {world.size} processes, but the trainer runs with world size "
            f"{args.world_size}"
        )
    if world.distributed and not same_device(str(args.device), device):
        raise RuntimeError(f"rank {world.rank} loaded its model on {device}, but the trainer runs on {args.device}")


def same_device(a: str, b: str) -> bool:
    """`cuda:1` is `cuda:1`; every CPU is the CPU (accelerate names a CPU rank's device `cpu:0`)."""
    import torch

    da, db = torch.device(a), torch.device(b)
    return da.type == db.type and (da.type == "cpu" or (da.index or 0) == (db.index or 0))


def launch_command(config, overrides, world: World) -> str:
    """The command that runs this job again (the resume hint): `tunelab train` with its launch flags."""
    import shlex

    cmd = ["tunelab", "train", str(config), *(overrides or [])]
    if world.distributed:
        cmd += ["--nproc", str(world.local_size)]
        if world.nnodes > 1:
            cmd += [
                "--nnodes",
                str(world.nnodes),
                "--node-rank",
                str(world.node_rank),
                "--master-addr",
                os.environ.get("MASTER_ADDR", "HOST"),
                "--master-port",
                os.environ.get("MASTER_PORT", "29500"),
            ]
    return shlex.join(cmd)
