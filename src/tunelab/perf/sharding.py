"""One rank's memory when several processes share a run: the single-process plan (`perf.plan`) cut
to what each rank holds under DDP, FSDP2 or DeepSpeed ZeRO.

- DDP: every rank holds everything a single process does, plus the reducer's flat copy of the
  gradients it all-reduces (its buckets).
- FSDP2 (full shard, resharded after forward) and ZeRO-3: weights, gradients, optimizer states and
  adapters are split N ways; each rank also holds the gathered weights (and, in backward, gradients)
  of the block it runs and the one prefetched, and the root module's own weights (embeddings, final
  norm, LM head), which stay gathered through the step.
- ZeRO-2: gradients and optimizer states are split N ways, weights are not.
Activations and logits are the rank's own micro-batch: they do not shrink.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tunelab.config.schema import RunConfig
from tunelab.perf.plan import CPU_PROCESS_OVERHEAD, GPU_ALLOCATOR_SLACK, Plan, estimate

if TYPE_CHECKING:
    from tunelab.model.resolve import ResolvedModel

PREFETCHED_BLOCKS = 2  # the block running and the next one FSDP2 gathers ahead


def block_shares(resolved: ResolvedModel) -> tuple[float, float]:
    """The largest transformer block's share of the parameters, and the root module's (whatever no block holds)."""
    model = resolved.meta_model
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    total = sum(p.numel() for p in model.parameters()) or 1
    if not blocks:
        return 1.0, 0.0  # nothing to wrap: one unit, gathered whole
    sizes = [sum(p.numel() for p in b.parameters()) for b in blocks]
    return max(sizes) / total, max(0.0, 1 - sum(sizes) / total)


def rank_plan(
    resolved: ResolvedModel, plan: Plan, strategy: str, world_size: int, shares: tuple[float, float] | None = None
) -> Plan:
    """`plan` (one process, the whole run) as one rank's share under `strategy` with `world_size` ranks."""
    if world_size <= 1 or strategy == "none":
        return plan
    n = world_size
    parts = {k: v for k, v in plan.parts.items() if k != "overhead"}
    if strategy == "ddp":
        parts["ddp_gradient_buckets"] = parts["gradients"]
    elif strategy == "deepspeed_zero2":
        parts["gradients"] /= n
        parts["optimizer"] /= n
    else:  # fsdp2, deepspeed_zero3
        block, root = shares if shares is not None else block_shares(resolved)
        gathered = PREFETCHED_BLOCKS * block + root
        parts["weights"] = parts["weights"] / n + parts["weights"] * gathered
        parts["gradients"] = parts["gradients"] / n + parts["gradients"] * PREFETCHED_BLOCKS * block
        parts["optimizer"] /= n
        parts["adapter"] /= n
    on_gpu = plan.device.startswith("cuda")
    parts["overhead"] = sum(parts.values()) * GPU_ALLOCATOR_SLACK if on_gpu else CPU_PROCESS_OVERHEAD
    return replace(plan, parts=parts)


def rank_estimator(strategy: str, world_size: int, shares: tuple[float, float] | None = None):
    """`perf.plan.estimate` for one rank (the signature `advise` takes)."""

    def estimator(
        cfg: RunConfig,
        resolved: ResolvedModel,
        device: str,
        checkpointing: bool | None = None,
        batch_size: int | None = None,
    ) -> Plan:
        plan = estimate(cfg, resolved, device, checkpointing=checkpointing, batch_size=batch_size)
        return rank_plan(resolved, plan, strategy, world_size, shares)

    return estimator


def plan_summary(strategy: str, world_size: int) -> dict[str, Any]:
    return {"strategy": strategy, "world_size": world_size, "per_rank": world_size > 1}
