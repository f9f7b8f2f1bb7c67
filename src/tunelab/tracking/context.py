"""What a run logs about itself at start (versions, git, machine) and system metrics while it trains."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = (
    "tunelab",
    "torch",
    "transformers",
    "trl",
    "peft",
    "datasets",
    "accelerate",
    "bitsandbytes",
    "tokenizers",
    "safetensors",
    "trackio",
    "wandb",
    "mlflow",
    "tensorboard",
)


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a run depends on (missing ones left out)."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_state(folder: str | Path | None) -> dict[str, Any] | None:
    """Commit and dirty flag of the git work tree holding `folder`, or None outside one.

    The remote URL is left out on purpose: it may carry a token.
    """
    if folder is None:
        return None

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status), "branch": git("rev-parse", "--abbrev-ref", "HEAD")}


def machine() -> dict[str, Any]:
    """Host facts that explain a run's speed: CPUs, memory, GPUs."""
    import psutil
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu_count": psutil.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 2),
        "gpus": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["gpus"].append({"name": p.name, "memory_gb": round(p.total_memory / 2**30, 2)})
    return info


class SystemSampler:
    """CPU and GPU memory and utilisation, read with psutil and torch.cuda (nvml when installed)."""

    def __init__(self):
        import psutil

        self.process = psutil.Process()
        self.process.cpu_percent(None)  # the first reading only starts the interval
        psutil.cpu_percent(None)

    def sample(self) -> dict[str, float]:
        import psutil
        import torch

        vm = psutil.virtual_memory()
        out = {
            "system/cpu_percent": psutil.cpu_percent(None),
            "system/process_cpu_percent": self.process.cpu_percent(None),
            "system/memory_used_percent": vm.percent,
            "system/process_rss_gb": round(self.process.memory_info().rss / 2**30, 4),
        }
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                out[f"system/gpu{i}_memory_allocated_gb"] = round(torch.cuda.memory_allocated(i) / 2**30, 4)
                out[f"system/gpu{i}_memory_reserved_gb"] = round(torch.cuda.memory_reserved(i) / 2**30, 4)
                try:
                    out[f"system/gpu{i}_utilization_percent"] = float(torch.cuda.utilization(i))
                except Exception:  # noqa: BLE001 - needs nvml (nvidia-ml-py); memory is still reported
                    pass
        return out
