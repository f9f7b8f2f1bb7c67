"""The training loss on devices without Triton: one log-softmax over the answer tokens' logits.

TRL's SFTTrainer always computes the loss through its fused LM head (`trl.trainer.utils.
add_fused_lm_head`): per-token log-probabilities, entropy and top-1 flags in vocabulary tiles,
without building the `[tokens, vocab]` logits. On CUDA that runs as Triton kernels. Elsewhere it
falls back to a dozen torch element-wise passes per tile, forward and again backward, over every
position (masked ones included). On the CPU that fallback was about a third of a W1 training step.

`use_direct_lm_head` puts a forward in front of TRL's one. When TRL asks for the fused outputs on
a device without Triton, it projects only the positions that have a label, takes one fp32
`log_softmax` (whose backward is a single native kernel), and gathers the same fields TRL's kernel
returns: log-probabilities (the loss), entropy and top-1 flags (the logged metrics). Tokens go in
chunks of at most `max_chunk_bytes` of logits; with more than one chunk each is recomputed in the
backward pass (activation checkpointing), so memory stays bounded as TRL's tiles keep it.
Everything else (Triton devices, logit soft-capping or scaling, MoE auxiliary losses, generation)
goes to TRL's forward unchanged.
"""

from __future__ import annotations

import functools
import types

MAX_CHUNK_BYTES = 256 * 2**20


def _unsupported(config) -> str | None:
    """Why a model needs TRL's own head (logit transforms this path does not apply), or None."""
    text = config.get_text_config()
    for name in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"):
        if getattr(text, name, None) not in (None, 1, 1.0):
            return name
    if getattr(text, "output_router_logits", False):
        return "output_router_logits"
    return None


def _token_fields(hidden, weight, bias, targets):
    """(log p(target), entropy, is_top1) for each row of `hidden`, from one fp32 log-softmax."""
    import torch
    import torch.nn.functional as F

    logp = F.linear(hidden, weight, bias).float().log_softmax(-1)
    lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(logp.exp() * logp).sum(-1)
        top1 = logp.argmax(-1) == targets  # argmax takes the first maximum, as TRL's is_top1 does
    return lp, entropy, top1


def direct_fields(hidden, weight, bias, targets, max_chunk_bytes: int = MAX_CHUNK_BYTES):
    """`_token_fields` over token chunks of bounded logits size; chunks are recomputed in backward."""
    import torch
    from torch.utils.checkpoint import checkpoint

    n, vocab = hidden.shape[0], weight.shape[0]
    chunk = max(1, max_chunk_bytes // (vocab * 4))
    if n <= chunk:
        return _token_fields(hidden, weight, bias, targets)
    parts = [
        checkpoint(_token_fields, hidden[i : i + chunk], weight, bias, targets[i : i + chunk], use_reentrant=False)
        for i in range(0, n, chunk)
    ]
    return tuple(torch.cat(p) for p in zip(*parts, strict=True))


def use_direct_lm_head(model, max_chunk_bytes: int = MAX_CHUNK_BYTES) -> bool:
    """Route the trainer's fused-LM-head calls through `direct_fields` where Triton is absent.

    `model` is the (PEFT-wrapped) model after `SFTTrainer.__init__`, which patched the base model's
    forward. Returns False, changing nothing, for models whose logits need transforms this path
    does not apply.
    """
    from tunelab.compat import trl_fused_output, trl_uses_triton

    FusedCausalLMOutput = trl_fused_output()  # noqa: N806 - TRL's class

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if _unsupported(base.config) or "forward" not in vars(base):
        return False
    trl_forward = base.forward  # TRL's fused forward (an instance attribute)

    @functools.wraps(type(base).forward)  # generate() validates its kwargs against this signature
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        lm_head = self.get_output_embeddings()
        if not fused_lm_head or trl_uses_triton(lm_head.weight.device):
            return trl_forward(
                *args,
                fused_lm_head=fused_lm_head,
                labels=labels,
                shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch,
                **kwargs,
            )
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        else:
            labels = shift_labels
        hidden, labels = hidden.to(lm_head.weight.device), labels.to(lm_head.weight.device)
        mask = labels != -100
        fields = direct_fields(hidden[mask], lm_head.weight, lm_head.bias, labels[mask], max_chunk_bytes)
        # masked_scatter keeps an all-masked micro-batch connected to the graph (a differentiable zero)
        log_probs, entropy, is_top1 = (x.new_zeros(mask.shape).masked_scatter(mask, x) for x in fields)
        loss = -log_probs.sum() / (mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
        return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=entropy, is_top1=is_top1, label_mask=mask)

    base.forward = types.MethodType(forward, base)
    return True
