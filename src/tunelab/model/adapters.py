"""LoRA adapters through PEFT, layer freezing for full fine-tuning, and the parameter report."""

from __future__ import annotations

from typing import Any

from tunelab.config.schema import AdapterConfig
from tunelab.errors import ConfigError


def lora_config(cfg: AdapterConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        bias=cfg.bias,
        task_type="CAUSAL_LM",
        target_modules=cfg.target_modules,
        modules_to_save=cfg.modules_to_save or None,
        use_dora=cfg.use_dora,
        use_rslora=cfg.use_rslora,
    )


def apply_adapter(model: Any, cfg: AdapterConfig, quantized: bool, gradient_checkpointing: bool) -> Any:
    """Wrap the model with a LoRA adapter, or freeze layers for full fine-tuning."""
    if cfg.type == "none":
        freeze_layers(model, cfg.freeze.first_n_layers, cfg.freeze.embeddings)
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if cfg.use_dora and getattr(model, "is_loaded_in_8bit", False) and model.device.type == "cpu":
        # PEFT's DoRA reads int8 scale constants that bitsandbytes' CPU backend does not keep (seen: bnb 0.50)
        raise ConfigError(
            ["adapter.use_dora: DoRA on an 8-bit model does not work on the CPU; use 4-bit or no quantization"]
        )
    if quantized:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    if cfg.target_modules != "all-linear":
        missing = [t for t in cfg.target_modules if t not in names]
        if missing:
            raise ConfigError(
                [
                    f"adapter.target_modules: {', '.join(missing)} not found in the model "
                    f"(has e.g. {', '.join(sorted(n for n in names if n and not n.isdigit())[:12])})"
                ]
            )
    return get_peft_model(model, lora_config(cfg))


def freeze_layers(model: Any, first_n: int, embeddings: bool) -> None:
    layers = _decoder_layers(model)
    if first_n > len(layers):
        raise ConfigError([f"adapter.freeze.first_n_layers: {first_n} but the model has {len(layers)} layers"])
    for layer in layers[:first_n]:
        for p in layer.parameters():
            p.requires_grad_(False)
    if embeddings:
        for p in model.get_input_embeddings().parameters():
            p.requires_grad_(False)


def _decoder_layers(model: Any) -> list:
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None) or getattr(getattr(base, "decoder", None), "layers", None)
    if layers is None:
        raise ConfigError(["adapter.freeze: cannot find the transformer blocks of this architecture"])
    return list(layers)


def true_numel(p: Any) -> int:
    """A parameter's element count; packed 4-bit weights at their true size.

    bitsandbytes stores two 4-bit values per uint8 element, so such a tensor reports half its
    parameter count; `quant_state.shape` holds the real one.
    """
    qs = getattr(p, "quant_state", None)
    if qs is not None and getattr(qs, "shape", None) is not None:
        n = 1
        for d in qs.shape:
            n *= int(d)
        return n
    return p.numel()


def parameter_report(model: Any) -> dict[str, Any]:
    """Total and trainable parameters, counting packed 4-bit weights at their true size."""
    total = trainable = 0
    for p in model.parameters():
        total += true_numel(p)
        if p.requires_grad:
            trainable += p.numel()
    return {"total": total, "trainable": trainable, "trainable_pct": round(100.0 * trainable / max(total, 1), 4)}


def adapter_warnings(model: Any, cfg: AdapterConfig) -> list[str]:
    """What a user should hear about an applied LoRA adapter's size; a rank above every adapted
    layer's full rank is an error (it adds parameters and no expressive power)."""
    if cfg.type != "lora":
        return []
    widths = []
    for m in model.modules():
        base = getattr(m, "base_layer", None)
        if hasattr(m, "lora_A") and base is not None and hasattr(base, "in_features"):
            widths.append(min(base.in_features, base.out_features))
    if not widths:
        return []
    if cfg.r > max(widths):
        raise ConfigError(
            [
                f"adapter.r: {cfg.r} is above the full rank of every adapted layer (at most {max(widths)}); "
                f"a rank of {max(widths)} or less can express the same updates"
            ]
        )
    out = []
    over = sum(1 for w in widths if cfg.r > w)
    if over:
        out.append(
            f"adapter.r {cfg.r} is above the full rank of {over} of {len(widths)} adapted layers "
            f"(the narrowest is {min(widths)}); those layers gain parameters, not expressiveness"
        )
    report = parameter_report(model)
    if report["trainable_pct"] > 50:
        out.append(
            f"the LoRA adapter trains {report['trainable_pct']:.0f}% of the model's parameters "
            f"(adapter.r {cfg.r}); LoRA's savings need a rank far below the layer width"
        )
    return out
