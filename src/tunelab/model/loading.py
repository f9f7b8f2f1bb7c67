"""Load a tokenizer and a causal LM from where `model.resolve` found it: dtype and device
(`model.precision`), bitsandbytes 4/8-bit quantization; safetensors only; remote code off by default."""

from __future__ import annotations

from typing import Any

from tunelab.config.schema import ModelConfig, QuantizationConfig
from tunelab.errors import ConfigError, TunelabError
from tunelab.hub import unreachable_message
from tunelab.model.precision import device_for, resolve_dtype
from tunelab.model.resolve import check_remote_code, hub_offline, resolve_model_path


def _first_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return f"{type(e).__name__}: {text[:240]}" if len(text) < 8 else text[:240]


def load_tokenizer(cfg: ModelConfig, path: str | None = None, chat_template: str | None = None):
    """The model's tokenizer with a pad token distinct from EOS (so EOS is learnt, not masked as padding),
    rendering chats with `chat_template` (a run's `prompt.chat_template`) when one is named."""
    from transformers import AutoTokenizer

    path = path or resolve_model_path(cfg.name)
    check_remote_code(path, cfg.trust_remote_code)
    offline = hub_offline(path)
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - missing, truncated or foreign tokenizer files all mean "not loadable"
        if offline:
            raise TunelabError(unreachable_message("model.name", path)) from None
        raise TunelabError(
            f"model.name: cannot load a tokenizer from {cfg.name!r}: {_first_line(e)}",
            hint="a model folder needs its tokenizer files (tokenizer.json or tokenizer.model, tokenizer_config.json)",
        ) from None
    if isinstance(tok, bool) or not hasattr(tok, "eos_token"):
        raise TunelabError(f"model.name: {cfg.name!r} has no tokenizer files")
    if tok.eos_token is None:
        raise TunelabError(
            f"model.name: the tokenizer of {cfg.name} has no EOS token; tuned models could not learn to stop"
        )
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        if tok.unk_token is not None and tok.unk_token_id != tok.eos_token_id:
            tok.pad_token = tok.unk_token
        else:
            tok.add_special_tokens({"pad_token": "<pad>"})
    tok.padding_side = "right"
    from tunelab.data.chat_templates import use_chat_template

    return use_chat_template(tok, chat_template)


def quantization_config(q: QuantizationConfig, model_dtype):
    if q.bits is None:
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(
            [f"quantization.bits: {q.bits}-bit loading needs bitsandbytes (pip install bitsandbytes)"]
        ) from None
    from transformers import BitsAndBytesConfig

    if q.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    from tunelab.dtypes import torch_dtype

    compute = model_dtype if q.compute_dtype == "auto" else torch_dtype(q.compute_dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=compute,
    )


def load_model(cfg: ModelConfig, qcfg: QuantizationConfig, tokenizer=None, path: str | None = None) -> Any:
    """Load the base causal LM (weights from safetensors only)."""
    from transformers import AutoModelForCausalLM

    path = path or resolve_model_path(cfg.name)
    device = device_for(cfg)
    dtype = resolve_dtype(cfg.dtype, device)
    if device == "cpu" and dtype == __import__("torch").float16 and qcfg.bits is None:
        raise ConfigError(["model.dtype: fp16 weights are not supported for training on the CPU; use fp32 or bf16"])
    kwargs: dict[str, Any] = dict(
        revision=cfg.revision,
        trust_remote_code=cfg.trust_remote_code,
        dtype=dtype,
        use_safetensors=True,
        device_map={"": device},
        quantization_config=quantization_config(qcfg, dtype),
    )
    from tunelab.model import attention

    # default: per-example attention on packed rows (same results as SDPA, a fraction of the work)
    attn = cfg.attn_implementation or attention.NAME
    if attn == attention.NAME:
        attention.register()
    kwargs["attn_implementation"] = attn
    check_remote_code(path, cfg.trust_remote_code)
    offline = hub_offline(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as e:  # noqa: BLE001 - truncated or garbage safetensors, a config that does not match its weights
        if offline:
            raise TunelabError(unreachable_message("model.name", path)) from None
        raise TunelabError(f"model.name: cannot load {cfg.name!r}: {_first_line(e)}") from None
    model.config.use_cache = cfg.use_cache
    if tokenizer is not None:
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        model.config.pad_token_id = tokenizer.pad_token_id
        if model.generation_config is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    keep_bnb_training_layout(model)
    return model


def keep_bnb_training_layout(model) -> int:
    """Work around a bitsandbytes (0.50) trap on CPUs with AVX512-BF16.

    On such CPUs a `Linear4bit` repacks its 4-bit weight into an inference layout on the first
    forward pass without gradients (an eval step, a generation). Backward passes after that use the
    repacked weight with the training kernels and give silently wrong LoRA gradients (seen: 27-99%
    off). Turning the fast path off keeps one layout for the whole run. Returns the layers changed.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    n = 0
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit) and getattr(m, "support_avx512bf16_for_cpu", False):
            m.support_avx512bf16_for_cpu = False
            n += 1
    return n
