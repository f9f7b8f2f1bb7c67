"""`tunelab plan`: estimate a run's peak memory from the model config alone (meta device, no weights).

The estimate adds: weights (by dtype; 4-bit NF4 at 0.5 byte plus quantization constants), adapter
weights, gradients, AdamW states, activations (with or without gradient checkpointing, for the
micro-batch's tokens), logits and loss, and a fixed overhead (the Python/torch process on the CPU;
allocator slack on a GPU). Activation sizes follow the tensors a Llama-style block keeps for
backward; the constants were checked against measured peaks (docs/performance.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunelab.config.schema import RunConfig
from tunelab.errors import TunelabError

if TYPE_CHECKING:
    from tunelab.model.resolve import ResolvedModel

GIB = 2**30
# Resident set of a training process beyond the model: torch, transformers, TRL, PEFT, bitsandbytes
# and the trackers imported, a tokenizer, the data, the trainer (calibrated on W1 / W2, see
# docs/performance.md: ~900 MB on the CPU).
CPU_PROCESS_OVERHEAD = 900 * 2**20
GPU_ALLOCATOR_SLACK = 0.08  # caching-allocator fragmentation, as a share of the rest


@dataclass
class Plan:
    parts: dict[str, float] = field(default_factory=dict)  # bytes
    device: str = "cpu"
    tokens_per_microbatch: int = 0
    checkpointing: bool = True

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def _bytes(dtype: str) -> int:
    from tunelab.dtypes import dtype_bytes

    return dtype_bytes(dtype)


def _linear_bytes(cfg: RunConfig, model, wdtype: str, act_b: int) -> tuple[float, float, float]:
    """The Linear layers' weight bytes (as quantized), the LoRA adapter's parameter count, and the LoRA
    activations kept for backward per token (all layers together)."""
    import torch

    q, targets = cfg.quantization.bits, cfg.adapter.target_modules
    lora = cfg.adapter.type == "lora"
    weights = adapter = lora_act_per_token = 0.0
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        short = name.rsplit(".", 1)[-1]
        n = mod.in_features * mod.out_features
        is_head = short == "lm_head"
        if q == 4 and not is_head:
            # NF4: half a byte per weight; absmax per 64 weights, itself 8-bit with double quantization
            weights += n * 0.5 + n / 64 * (1.0 + 4 / 256 if cfg.quantization.double_quant else 4.0)
        elif q == 8 and not is_head:
            weights += n * 1.0 + mod.out_features * 4
        else:
            weights += n * _bytes(wdtype)
        if lora and not is_head and (targets == "all-linear" or short in targets):
            adapter += cfg.adapter.r * (mod.in_features + mod.out_features)
            # kept for backward: the (dropped-out) input and the rank-r intermediate
            lora_act_per_token += (mod.in_features * (2 if cfg.adapter.dropout > 0 else 1) + cfg.adapter.r) * act_b
    return weights, adapter, lora_act_per_token


def estimate(
    cfg: RunConfig,
    resolved: ResolvedModel,
    device: str,
    checkpointing: bool | None = None,
    batch_size: int | None = None,
) -> Plan:
    """Peak memory estimate for `cfg` on `device` ('cpu' or 'cuda'), its model as resolved once for the run."""
    import torch

    from tunelab.model.precision import run_precision, run_weight_dtype

    mcfg = resolved.config
    model = resolved.meta_model
    on_gpu = device.startswith("cuda")

    wdtype, prec = run_weight_dtype(cfg, device), run_precision(cfg, device)
    # On the CPU the tensors kept for backward stay mostly fp32 even with bf16 weights under bf16
    # autocast (norms and attention run in fp32 there; measured: W2's peak is within 4% of fp32's
    # with bf16 weights), so CPU activations count 4 bytes.
    act_b = _bytes(prec if prec != "fp32" else wdtype) if on_gpu else 4
    q = cfg.quantization.bits
    lora = cfg.adapter.type == "lora"
    weights, adapter, lora_act_per_token = _linear_bytes(cfg, model, wdtype, act_b)
    other = sum(
        p.numel() for m in model.modules() if not isinstance(m, torch.nn.Linear) for p in m.parameters(recurse=False)
    )
    weights += other * _bytes(wdtype)

    trainable = adapter if lora else sum(p.numel() for p in model.parameters())
    # TRL keeps LoRA weights of quantized models in bf16; otherwise they follow the weight dtype
    p_bytes = 2 if (lora and q) else (4 if wdtype == "fp32" else 2)
    adapter_bytes = adapter * p_bytes if lora else 0.0
    grads = trainable * p_bytes
    optim = trainable * 8.0  # AdamW: two fp32 moments
    if not lora and wdtype != "fp32" and prec != "fp32":
        optim += trainable * 4.0  # fp32 master weights under mixed precision

    h, inter, layers = mcfg.hidden_size, mcfg.intermediate_size, mcfg.num_hidden_layers
    heads = mcfg.num_attention_heads
    kv = getattr(mcfg, "num_key_value_heads", heads) or heads
    h_kv = h * kv // heads
    b = batch_size or cfg.training.batch_size
    grpo = cfg.training.method == "grpo"
    # grpo trains on prompt + sampled completion: up to max_length + max_completion_length tokens a row
    seq = cfg.training.max_length + (cfg.grpo.max_completion_length if grpo else 0)
    tokens = b * seq
    # per token per layer: norm inputs (fp32), q/k/v and rotated q/k, attention out, o_proj in,
    # MLP gate/up/act/product (SwiGLU), plus LoRA inputs
    per_layer_token = (3 * h + 2 * h_kv + 2 * h + 4 * inter) * act_b + 2 * h * 4 + lora_act_per_token / max(layers, 1)
    packed_attention = cfg.model.attn_implementation in (None, "tunelab_packed_sdpa")
    if not on_gpu and not (packed_attention and cfg.training.packing):
        # SDPA with a mask (a packed row under a block-diagonal mask, or padding) materialises the
        # score matrix on the CPU; tunelab's per-example attention runs the causal flash kernel instead
        per_layer_token += heads * min(seq, 1024) * act_b / 2
    ckpt = cfg.training.gradient_checkpointing if checkpointing is None else checkpointing
    ckpt = ckpt is True  # "auto" is resolved by the caller (decide_checkpointing); estimate it as off
    # with checkpointing only each block's input is kept, plus one block's activations while it is recomputed
    acts = tokens * (layers * h * act_b + per_layer_token) if ckpt else tokens * layers * per_layer_token
    vocab = mcfg.vocab_size
    logits = tokens * vocab * (act_b + 4 + 4)  # logits, their fp32 copy for the loss, and its gradient

    unquantized = sum(p.numel() for p in model.parameters()) * _bytes(wdtype)
    parts = {
        "weights": weights,
        # on the CPU the memory-mapped safetensors file stays resident next to the loaded tensors, and
        # bf16 autocast keeps a bf16 copy of every unquantized weight it multiplies
        "weight_file_and_casts": 0.0
        if on_gpu
        else unquantized * (1 if q else 1 + (prec == "bf16" and wdtype == "fp32") * 0.5),
        "adapter": adapter_bytes,
        "gradients": grads,
        "optimizer": optim,
        "activations": acts,
        "logits_and_loss": logits,
    }
    if grpo:
        parts.update(_rollout_parts(cfg, mcfg, weights, layers, h_kv, seq, act_b, acts + logits))
    base = sum(parts.values())
    parts["overhead"] = base * GPU_ALLOCATOR_SLACK if on_gpu else CPU_PROCESS_OVERHEAD
    return Plan(parts, device, tokens, ckpt)


def _rollout_parts(cfg: RunConfig, mcfg, weights: float, layers: int, h_kv: int, seq: int, act_b: int, train_peak):
    """grpo: the KV cache of one generation batch (batch_size x grad_accum sequences of prompt + completion, every
    layer's keys and values), counted beyond the training step's activations and logits, which are freed while
    TRL generates; and a frozen copy of the weights as the reference model when grpo.beta > 0 and the whole model
    trains (with LoRA the reference is the base with the adapter switched off: no copy)."""
    t = cfg.training
    kv = t.batch_size * t.grad_accum * seq * layers * 2 * h_kv * act_b
    sampling_logits = t.batch_size * t.grad_accum * mcfg.vocab_size * 4  # the last position's, per sampled token
    out = {"rollout_kv_cache": max(0.0, kv + sampling_logits - train_peak)}
    if cfg.grpo.beta > 0 and cfg.adapter.type != "lora":
        out["reference_model"] = weights
    return out


def parse_memory(text: str) -> float:
    t = text.strip().upper().replace("IB", "B")
    for unit, mult in (("TB", 2**40), ("GB", GIB), ("MB", 2**20), ("KB", 2**10), ("B", 1)):
        if t.endswith(unit):
            try:
                value = float(t[: -len(unit)]) * mult
            except ValueError:
                break
            if 0 < value < float("inf"):  # not -4GB, 0GB, nan or inf
                return value
            break
    raise TunelabError(f"--memory: cannot read {text!r}; use e.g. 24GB or 80GiB")


def available_memory(device: str) -> float:
    import psutil
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return float(torch.cuda.get_device_properties(0).total_memory)
    return float(psutil.virtual_memory().total)


def advise(cfg: RunConfig, resolved: ResolvedModel, device: str, budget: float, estimator=None) -> dict[str, Any]:
    """Largest micro-batch that fits and whether checkpointing is needed for the configured one
    (`estimator`: `estimate` for one process; `perf.sharding.rank_estimator` for one of several)."""
    estimator = estimator or estimate
    without = estimator(cfg, resolved, device, checkpointing=False)
    with_ck = estimator(cfg, resolved, device, checkpointing=True)
    largest = {}
    for ck in (False, True):
        best = 0
        for bs in (1, 2, 4, 8, 16, 32, 64, 128):
            if estimator(cfg, resolved, device, checkpointing=ck, batch_size=bs).total <= budget:
                best = bs
        largest["with_checkpointing" if ck else "without_checkpointing"] = best
    return {
        "fits_without_checkpointing": without.total <= budget,
        "fits_with_checkpointing": with_ck.total <= budget,
        "checkpointing_needed": without.total > budget,
        "largest_micro_batch": largest,
    }


def decide_checkpointing(cfg: RunConfig, resolved: ResolvedModel | None, device: str) -> bool:
    """`training.gradient_checkpointing: auto`: on only when the run would not fit without it
    (`resolved` None: no model config to plan from, so the memory-safe choice)."""
    if resolved is None:
        return True
    budget = available_memory(device) * (0.9 if device.startswith("cuda") else 0.7)
    return estimate(cfg, resolved, device, checkpointing=False).total > budget


def describe(plan: Plan) -> list[tuple[str, str]]:
    return [(k, f"{v / GIB:,.3f} GiB") for k, v in plan.parts.items()] + [("total", f"{plan.total / GIB:,.3f} GiB")]


def plan_to_json(plan: Plan) -> dict[str, Any]:
    return {
        "device": plan.device,
        "checkpointing": plan.checkpointing,
        "tokens_per_microbatch": plan.tokens_per_microbatch,
        "parts_bytes": {k: int(v) for k, v in plan.parts.items()},
        "total_bytes": int(plan.total),
    }
