"""The `distributed` config section: how several processes (GPUs, machines) share one run.

How many processes run is not config: it is how the run is launched (`tunelab train --nproc N`,
`torchrun`, `accelerate launch`). This section says what those processes do together.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Strategy = Literal["auto", "ddp", "fsdp2", "deepspeed_zero2", "deepspeed_zero3"]


class DistributedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    strategy: Strategy = Field(
        "auto",
        description="With several processes: auto = ddp for LoRA / QLoRA, and for full fine-tuning ddp when "
        "the model fits one device (the memory plan), else fsdp2; "
        "ddp (each rank a full replica, gradients all-reduced); "
        "fsdp2 (weights, gradients and optimizer states sharded; not with quantization.bits); deepspeed_zero2 / "
        "deepspeed_zero3 (needs the deepspeed package). Ignored by a single process.",
    )
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="Process-group backend: auto = nccl on CUDA GPUs, gloo on the CPU."
    )
    timeout_s: int = Field(
        1800,
        gt=0,
        description="Seconds a rank waits for the others in a collective (an all-reduce, a barrier) "
        "before the run fails; rank 0's sample generation and checkpoint writes happen inside this wait.",
    )
