"""`training.compile`: the model's repeated decoder layer compiled by torch.compile (inductor), regionally.

Regional: each decoder layer's calls with gradients are compiled in place (as `Module.compile()` does, so
parameter names and saved adapters do not change), and since torch inlines nn modules into the graph
(`inline_inbuilt_nn_modules`), every layer runs the same compiled code: the compile time is one layer's,
not the model's. The embedding, the LM head, the loss and every pass without gradients (evaluation,
samples) stay eager. What compiles in a layer: the norms, the projections (LoRA and bitsandbytes 4-bit
included), RoPE, the MLP and the residuals, in graphs around the per-example attention, which runs
eagerly between them (`model.attention`: its split points depend on the position ids, so traced it would
recompile for every packed row). A packed run compiles in its first micro-batches (the second row
length makes the length dynamic) and not again.

Compiled graphs draw dropout masks from inductor's generator, not eager torch's: with LoRA dropout the
losses of a compiled run differ slightly from an eager run's (without dropout they are the same).

`auto` is off: on the CPU a compiled step has not been measured faster than eager (docs/performance.md),
and the compile time (tens of seconds on the CPU) must be won back within the run. Under gradient
checkpointing no graph compiles (torch 2.13 runs the checkpointed layer eagerly), so `on` refuses it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunelab.errors import ConfigError

if TYPE_CHECKING:
    from tunelab.config import RunConfig

FIELD = "training.compile"


def _unavailable(device: str) -> str | None:
    """Why inductor cannot compile on this device, or None."""
    if device.startswith("mps"):
        return "torch.compile's inductor backend does not train on MPS"
    try:
        import torch._inductor.config as inductor
    except ImportError:
        return "this torch build has no inductor backend"
    if device.startswith("cuda"):
        try:
            import triton  # noqa: F401
        except ImportError:
            return "inductor needs Triton on a GPU (pip install triton)"
        return None
    search = inductor.cpp.cxx if isinstance(inductor.cpp.cxx, (list, tuple)) else (inductor.cpp.cxx,)
    names = [c for c in search if c]  # the compilers inductor tries, in its order (None: a conda install)
    if not any(shutil.which(c) for c in names):
        return f"inductor compiles C++ on the CPU and no C++ compiler ({', '.join(names)}) is on PATH"
    return None


def compile_wanted(
    cfg: RunConfig, device: str, checkpointing: bool | str | None = None, strategy: str | None = None
) -> tuple[bool, str]:
    """Whether to compile the decoder layers, and the reason the run's plan line shows.

    `on` that cannot work is a ConfigError (the rule `training.rules.compile_setting` and the run both ask
    here). `checkpointing` is `gradient_checkpointing` as decided (default: as configured; "auto" is not
    decided before the model loads and passes, and the run asks again with the memory plan's decision);
    `strategy` the strategy of several processes as resolved ("none" for one process; default: as configured).
    """
    t = cfg.training
    checkpointing = t.gradient_checkpointing if checkpointing is None else checkpointing
    if t.compile == "off":
        return False, "off"
    if t.compile == "auto":  # the one place auto is decided: off until a device measures faster compiled
        return False, f"off (auto: not measured faster than eager on {device.split(':')[0]})"
    problem = _unavailable(device)
    if problem is None and t.method != "sft":
        problem = f"only sft runs compile (training.method is {t.method})"
    strategy = cfg.distributed.strategy if strategy is None else strategy
    if problem is None and strategy not in ("none", "auto", "ddp"):
        # FSDP2 / ZeRO wrap each layer in hooks of their own after tunelab compiles it: not tried
        problem = f"one process or DDP only (the strategy is {strategy})"
    if problem is not None:
        raise ConfigError([f"{FIELD}: on: {problem}; use off"])
    if checkpointing is True:
        auto = t.gradient_checkpointing == "auto"
        chosen = " (the memory plan of gradient_checkpointing: auto chose it)" if auto else ""
        raise ConfigError(
            [
                f"{FIELD}: on: no graph compiles under gradient checkpointing{chosen}: torch runs the checkpointed "
                "layer eagerly; set training.gradient_checkpointing: false, or compile: off"
            ]
        )
    return True, "on"


def decoder_layers(model: Any):
    """The ModuleList of the model's repeated block: of every ModuleList inside the (PEFT-unwrapped) model,
    the one whose modules are all of one class and hold the most parameters."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    best, best_size = None, 0
    for m in base.modules():
        if not isinstance(m, torch.nn.ModuleList) or len(m) < 2 or len({type(x) for x in m}) != 1:
            continue
        size = sum(p.numel() for p in m.parameters())
        if size > best_size:
            best, best_size = m, size
    if best is None:
        raise ConfigError([f"{FIELD}: on: no repeated decoder layer found in {type(base).__name__}; use off"])
    return best


def compile_layers(model: Any) -> int:
    """Compile every decoder layer's training calls in place (one shared code); returns how many.

    Passes without gradients (evaluation, sample generation) stay eager: grad mode is part of a graph's
    guards, so each would compile graphs of its own, and generation's growing KV cache recompiles at
    every length until torch gives up on the layer.
    """
    from tunelab.compat import compile_grad_calls

    layers = decoder_layers(model)
    for layer in layers:
        # each of a layer's frames keeps up to 2 (the first layer's input without gradients, the others' with)
        # x 3 (static sizes; then the row length and the examples' count turn dynamic, together or one at a
        # time) x 2 (transformers' forward wrappers, called two ways) versions: past torch's default limit
        # of 8 (seen in a DDP run) a frame would run eagerly, with a warning
        compile_grad_calls(layer, recompile_limit=32)
    return len(layers)


@dataclass(frozen=True)
class Compiled:
    """What `training.compile` did to a run's model (the plan line and summary.json say it)."""

    on: bool
    why: str

    def figures(self) -> dict[str, Any]:
        """summary.json's compile fields: on / off, why, and (on) the graphs built and the seconds spent."""
        if not self.on:
            return {"compile": "off", "compile_reason": self.why}
        from tunelab.compat import compile_figures

        graphs, seconds = compile_figures()
        return {"compile": "on", "compile_reason": self.why, "compile_graphs": graphs, "compile_s": round(seconds, 2)}


def compile_for_run(model: Any, cfg: RunConfig, device: str, checkpointing: bool, strategy: str) -> Compiled:
    """Compile the loaded (adapted) model's decoder layers when `training.compile` says so."""
    on, why = compile_wanted(cfg, device, checkpointing, strategy)
    if on:
        why = f"{compile_layers(model)} decoder layers compiled by inductor"
    return Compiled(on, why)
