"""The machine a run or a measurement uses: the CPU facts that explain a matmul peak (model, cores,
AMX / AVX-512), and how many processes of a run its cores and memory hold (`processes_fit`)."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

# the instruction sets that decide CPU matmul speed, as Linux names them in /proc/cpuinfo and lscpu
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    logical_cores: int
    usable_cores: int  # this process's CPU affinity: a container or taskset may allow fewer than the machine has
    physical_cores: int | None  # cores per socket x sockets, where lscpu says
    amx: bool  # amx_tile + amx_bf16: bf16 matmuls on the tile unit (Intel Sapphire Rapids and later)
    avx512f: bool
    avx512_bf16: bool  # bf16 dot products in AVX-512 registers (VDPBF16PS), without AMX
    isa: list[str]  # which of ISA_FLAGS the CPU reports
    torch_capability: str  # the kernel variant torch's CPU ops dispatch to (e.g. AVX512)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        cores = f"{self.usable_cores} usable of {self.logical_cores} logical cores"
        if self.physical_cores:
            cores += f" ({self.physical_cores} physical)"
        units = (
            "AMX" if self.amx else "AVX-512 BF16" if self.avx512_bf16 else "AVX-512" if self.avx512f else "no AVX-512"
        )
        return f"{self.model}, {cores}, {units}; torch kernels: {self.torch_capability}"


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container or taskset may allow fewer than the
    machine has), or every core where the OS has no affinity call."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Machine:
    """What the processes of a run on this machine share: its cores and the memory available to them."""

    cores: int
    memory: float  # bytes available now (free + reclaimable), what new processes can take without swapping

    @classmethod
    def here(cls, siblings: int = 0) -> Machine:
        """This machine now (fast: no library loaded). `siblings`: processes of the same job already
        running beside this one, whose memory so far counts as theirs to use (a rank checking at its start)."""
        import psutil

        held = siblings * psutil.Process().memory_info().rss if siblings else 0
        return cls(usable_cores(), float(psutil.virtual_memory().available + held))


@dataclass(frozen=True)
class ProcessFit:
    """How `n` processes of one run fit a machine: a problem (refused), a note (a warning) or ok."""

    kind: Literal["problem", "note", "ok"]
    message: str
    fits: int  # how many processes the memory holds
    hint: str | None = None


def processes_fit(n: int, per_process: float, machine: Machine, need: str, flag: str = "--nproc") -> ProcessFit:
    """The rule for `n` processes of a run on one machine, each needing `per_process` bytes (`need` says
    what that is, with `{gib}` where the figure goes): more than its memory holds is refused; more than its
    cores, a warning; `flag` is what the user changes."""
    gib = 2**30
    fits = int(machine.memory // per_process) if per_process > 0 else n
    if n > fits:
        hint = f"use {flag} {min(fits, machine.cores)}" if fits >= 1 else "free memory on this machine first"
        return ProcessFit(
            "problem",
            f"{n} processes: {need.format(gib=f'{per_process / gib:.2f}')}; {n} x {per_process / gib:.2f} "
            f"= {n * per_process / gib:.1f} GiB exceeds the {machine.memory / gib:.1f} GiB this machine has "
            f"available; at most {fits} fit",
            fits,
            hint,
        )
    if n > machine.cores:
        return ProcessFit(
            "note",
            f"{n} processes on {machine.cores} usable core{'s' if machine.cores != 1 else ''}: they take turns on "
            f"the cores, so beyond {flag} {machine.cores} they add no speed (and their all-reduces wait on each other)",
            fits,
        )
    return ProcessFit(
        "ok",
        f"{n} processes fit: {n} x {per_process / gib:.2f} GiB of {machine.memory / gib:.1f} GiB available, "
        f"{machine.cores} usable cores",
        fits,
    )


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(
            ["lscpu"], check=False, capture_output=True, text=True, timeout=10, env={**os.environ, "LC_ALL": "C"}
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {k.strip(): v.strip() for k, sep, v in (line.partition(":") for line in out.splitlines()) if sep}


def _proc_cpuinfo() -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n", 1)[0]
    return {k.strip(): v.strip() for k, sep, v in (line.partition(":") for line in first.splitlines()) if sep}


def cpu_info() -> CpuInfo:
    """This machine's CPU, from lscpu where it exists, /proc/cpuinfo, then `platform`."""
    import torch

    ls, proc = _lscpu(), _proc_cpuinfo()
    flags = set((ls.get("Flags") or proc.get("flags") or "").split())
    try:
        physical: int | None = int(ls["Core(s) per socket"]) * int(ls["Socket(s)"])
    except (KeyError, ValueError):
        physical = None
    logical = os.cpu_count() or 1
    usable = usable_cores()
    return CpuInfo(
        model=ls.get("Model name") or proc.get("model name") or platform.processor() or platform.machine(),
        logical_cores=logical,
        usable_cores=usable,
        physical_cores=physical,
        amx={"amx_tile", "amx_bf16"} <= flags,
        avx512f="avx512f" in flags,
        avx512_bf16="avx512_bf16" in flags,
        isa=[f for f in ISA_FLAGS if f in flags],
        torch_capability=torch.backends.cpu.get_cpu_capability(),
    )


def cpu_bf16_note(device: str, precision: str) -> str | None:
    """A warning for bf16 on a CPU without bf16 matmul units (no AVX512-BF16, no AMX), else None."""
    if device != "cpu" or precision != "bf16":
        return None
    cpu = cpu_info()
    if cpu.amx or cpu.avx512_bf16 or not cpu.isa:  # not an x86 CPU that reports its flags: nothing to say
        return None
    return (
        f"bf16 on a CPU without bf16 matmul units ({cpu.model}: no AVX512-BF16 or AMX): torch's bf16 matmuls "
        "run several times slower than fp32 on such CPUs (training.precision: fp32)"
    )
