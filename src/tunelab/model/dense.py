"""Dense, LoRA-merged weight copies for no-grad blocks (generation, evaluation).

Generation reads every weight once per new token. bitsandbytes' CPU path dequantizes the whole
4-bit weight again on each such read (its fast CPU GEMM needs the `kernels` package and the hub),
and each LoRA layer adds two small matmuls and their Python overhead. `generation_weights` swaps
in one `F.linear` per layer for the duration of a block; callers decide whether the copies fit.
"""

from __future__ import annotations

from contextlib import contextmanager


def _compute_dtype(base):
    """The dtype a base layer's forward computes in (a 4-bit layer's compute dtype, else its weight's)."""
    import torch

    if base.weight.is_floating_point():
        return base.weight.dtype
    return getattr(base, "compute_dtype", None) or torch.float32


def _dense_layers(model):
    """(layer, kind) for what `generation_weights` replaces: LoRA layers ("lora") and bare 4-bit ones ("4bit")."""
    try:
        import bitsandbytes as bnb

        four_bit = (bnb.nn.Linear4bit,)
    except ImportError:
        four_bit = ()
    import torch

    inside_lora = set()
    for m in model.modules():
        base = getattr(m, "base_layer", None)
        plain_lora = not getattr(m, "lora_variant", None) and not any(getattr(m, "lora_bias", {}).values())
        if hasattr(m, "lora_A") and isinstance(base, (torch.nn.Linear, *four_bit)) and plain_lora:
            inside_lora.add(id(base))
            yield m, "lora"
    for m in model.modules():
        if four_bit and isinstance(m, four_bit) and id(m) not in inside_lora:
            yield m, "4bit"


def generation_weight_bytes(model) -> int:
    """Bytes of the dense copies `generation_weights` makes (compute dtype of each layer)."""
    import torch

    total = 0
    for m, _ in _dense_layers(model):
        base = getattr(m, "base_layer", m)
        total += base.in_features * base.out_features * torch.finfo(_compute_dtype(base)).bits // 8
    return total


def generation_weights_fit(model, share: float = 0.25) -> bool:
    """Whether `generation_weights`' copies fit in `share` of the memory free now (GPU or host)."""
    import psutil
    import torch

    device = next(model.parameters()).device
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else psutil.virtual_memory().available
    return generation_weight_bytes(model) <= share * free


def _dense_base(base):
    """The base layer's weight as a dense tensor in the dtype its forward computes in."""
    dtype = _compute_dtype(base)
    if base.weight.is_floating_point():
        return base.weight.detach(), dtype
    import bitsandbytes.functional as bnbf

    return bnbf.dequantize_4bit(base.weight.data, base.weight.quant_state).to(dtype), dtype


@contextmanager
def generation_weights(model, enabled: bool = True):
    """Dense, LoRA-merged weights for the duration of a no-grad block (generation, evaluation).

    Each LoRA layer
    runs one `F.linear` with `W + scaling * B @ A` (the active adapters, merged in fp32 into a dense
    copy of W), and each bare 4-bit layer one `F.linear` with its dequantized weight. The quantized
    weights and the adapters are not touched; with adapters disabled (`disable_adapter()`) a layer
    uses the dense W alone. LoRA variants (DoRA) keep PEFT's forward. Costs
    `generation_weight_bytes(model)` of memory while active: callers decide whether that fits.
    """
    if not enabled:
        yield
        return
    import torch
    import torch.nn.functional as F

    patched = []

    def merged(layer, cache):
        active = tuple(a for a in layer.active_adapters if a in layer.lora_A)
        if layer.disable_adapters or layer.merged or not active:
            return cache["base"]
        if active not in cache:
            w = cache["base"].float()
            for a in active:
                w = w + layer.get_delta_weight(a).float()
            cache[active] = w.to(cache["base"].dtype)
        return cache[active]

    try:
        with torch.no_grad():
            for m, kind in _dense_layers(model):
                base = getattr(m, "base_layer", m)
                weight, dtype = _dense_base(base)
                bias = None if base.bias is None else base.bias.detach().to(dtype)
                cache = {"base": weight}
                if kind == "lora":

                    def forward(x, *args, _m=m, _cache=cache, _bias=bias, _dtype=dtype, **kwargs):
                        if args or kwargs or torch.is_grad_enabled():  # mixed-adapter batches, training: PEFT's path
                            return type(_m).forward(_m, x, *args, **kwargs)
                        return F.linear(x.to(_dtype), merged(_m, _cache), _bias).to(x.dtype)
                else:

                    def forward(x, _cache=cache, _bias=bias, _dtype=dtype):
                        return F.linear(x.to(_dtype), _cache["base"], _bias).to(x.dtype)

                m.forward = forward
                patched.append(m)
        yield
    finally:
        for m in patched:
            del m.forward
