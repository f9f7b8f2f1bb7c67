"""Load a tokenizer and a causal LM as the config says: hub id, local folder or `tiny:` preset;
dtype, device, bitsandbytes 4/8-bit quantization; safetensors only; remote code off by default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.config.schema import ModelConfig, QuantizationConfig
from tunelab.errors import ConfigError, TunelabError
from tunelab.hub import unreachable_message


def resolve_model_path(name: str, weights: bool = True) -> str:
    """A local folder for `tiny:` presets and local paths (checked; `weights=False`: a config.json is
    enough, as for planning); hub ids are returned as they are. Model artifacts resolve to their base
    first (`base_model_source`)."""
    from tunelab.refs import RefError, parse_model

    try:
        ref = parse_model(name)
    except RefError as e:
        raise TunelabError(f"model.name: {e}") from None
    if ref.kind == "tiny":
        from tunelab.model.tiny import resolve_tiny

        return str(resolve_tiny(name))
    if ref.kind == "artifact":
        raise TunelabError(
            f"model.name: {name} is a model artifact; its base model is resolved from the artifact first"
        )
    if ref.kind == "local":
        p = Path(name).expanduser()
        if not p.is_dir():
            raise TunelabError(f"model.name: {name} is not a model folder")
        if not (p / "config.json").is_file():
            raise TunelabError(f"model.name: {p} has no config.json (not a Hugging Face model folder)")
        if weights and not any(p.glob("*.safetensors")) and not (p / "adapter_config.json").is_file():
            raise TunelabError(
                f"model.name: {p} holds no *.safetensors weights",
                hint="tunelab loads safetensors only; convert .bin weights with transformers' save_pretrained",
            )
        return str(p)
    return name


def base_model_source(cfg, home=None, weights: bool = True) -> str:
    """Where a run config's base model loads from: its folder or hub id, through a model artifact's
    metadata when `model.name` is one, or the base of a run directory or adapter folder it continues
    (`home`: where an artifact resolves, default the config's own)."""
    name = cfg.model.name
    if cfg.model.ref.kind in ("artifact", "local"):
        from tunelab.artifacts import Home
        from tunelab.artifacts.models import continued_model

        init = continued_model(name, home or Home.of(cfg))
        if init is not None:
            name = init.base
    return resolve_model_path(name, weights)


def _hub_offline(path: str) -> bool:
    """For a hub id: switch the hub clients offline when the hub is unreachable (fast failure); True if so."""
    from tunelab.hub import ensure_offline_if_unreachable
    from tunelab.refs import RefError, parse_model

    try:
        is_hub = parse_model(path).kind == "hub"
    except RefError:
        return False
    return ensure_offline_if_unreachable() if is_hub else False


def _first_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return f"{type(e).__name__}: {text[:240]}" if len(text) < 8 else text[:240]


def remote_code_files(path: str) -> list[str]:
    """Files of a local model folder that make transformers run the model's own code (`auto_map`)."""
    import json

    p = Path(path)
    if not p.is_dir():
        return []
    found = []
    for name in ("config.json", "tokenizer_config.json", "adapter_config.json"):
        f = p / name
        try:
            data = json.loads(f.read_text()) if f.is_file() else {}
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("auto_map"):
            found.append(str(f))
    return found


def check_remote_code(path: str, trusted: bool, flag: str = "model.trust_remote_code: true") -> None:
    """Refuse, in one line naming the file, a local model that ships code when its running was not asked for."""
    if trusted:
        return
    files = remote_code_files(path)
    if files:
        raise TunelabError(
            f"{files[0]} makes the model run its own Python code (auto_map), which is off by default",
            hint=f"if you trust that code, allow it with {flag}",
        )


def device_for(cfg: ModelConfig) -> str:
    import torch

    if cfg.device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError([f"model.device: {cfg.device} asked for, but no CUDA GPU is visible"])
    return "cuda:0" if cfg.device == "cuda" else cfg.device


def bf16_supported(device: str) -> bool:
    """Whether `device` runs bf16 mixed precision; a GPU that is not here (planning) counts as a current one."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported() if torch.cuda.is_available() else True
    return False


def auto_dtype(device: str) -> str:
    """What `auto` means for a dtype or a precision: bf16 on GPUs that have it, fp16 on other GPUs, fp32 on the CPU."""
    if device.startswith("cuda"):
        return "bf16" if bf16_supported(device) else "fp16"
    return "fp32"


def resolve_dtype(name: str, device: str):
    """A dtype name (`auto` resolved for `device`) as a torch dtype."""

    from tunelab.dtypes import torch_dtype

    return torch_dtype(auto_dtype(device) if name == "auto" else name)


def run_precision(cfg, device: str) -> str:
    """`training.precision` with `auto` resolved: bf16, fp16 or fp32 (no mixed precision)."""
    return auto_dtype(device) if cfg.training.precision == "auto" else cfg.training.precision


def precision_flags(cfg, device: str) -> dict[str, bool]:
    """`training.precision` -> SFTConfig bf16 / fp16 flags (auto: bf16 on GPUs that have it, fp16 on others,
    fp32 on CPU)."""
    p = run_precision(cfg, device)
    if p == "fp16" and not device.startswith("cuda"):
        raise TunelabError("training.precision: fp16 mixed precision needs a GPU; use bf16 or fp32 on the CPU")
    return {"bf16": p == "bf16", "fp16": p == "fp16"}


def run_weight_dtype(cfg, device: str) -> str:
    """The weight dtype a training run loads (`model.dtype`, with `auto` resolved for the run).

    `auto` on the CPU is fp32, except under `training.precision: bf16` with a frozen base (LoRA):
    autocast would cast every frozen fp32 weight to bf16 on each forward pass and keep the copies
    for backward, so the base is loaded in bf16 once (the adapter stays fp32, as PEFT keeps it).
    """
    if cfg.model.dtype != "auto":
        return cfg.model.dtype
    if device.startswith("cuda"):
        return auto_dtype(device)
    return "bf16" if run_precision(cfg, device) == "bf16" and cfg.adapter.type == "lora" else "fp32"


def load_tokenizer(cfg: ModelConfig, path: str | None = None, chat_template: str | None = None):
    """The model's tokenizer with a pad token distinct from EOS (so EOS is learnt, not masked as padding),
    rendering chats with `chat_template` (a run's `prompt.chat_template`) when one is named."""
    from transformers import AutoTokenizer

    path = path or resolve_model_path(cfg.name)
    check_remote_code(path, cfg.trust_remote_code)
    offline = _hub_offline(path)
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
    offline = _hub_offline(path)
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
