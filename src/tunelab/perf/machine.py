"""The CPU a measurement ran on: the facts that explain its matmul peak (model, cores, AMX / AVX-512)."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
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
