"""GGUF files (llama.cpp, Ollama, LM Studio) from a merged Hugging Face Llama-family folder, and back.

The conversion is written here against llama.cpp's own `gguf` package, which owns the file format,
the tensor names (`get_tensor_name_map`) and the quantizers; it does not use llama.cpp's converter
script. Supported: `LlamaForCausalLM` and `MistralForCausalLM` (the same tensors), in f32, f16, bf16,
q8_0, q5_0 and q4_0.

What differs from the Hugging Face layout:

- Q and K rows are permuted per head. transformers' rotary embedding rotates dimension i with
  i + head_dim/2 (`rotate_half`); ggml's rope rotates 2i with 2i+1. Reordering the rows of q_proj and
  k_proj turns one into the other, and since Q and K get the same order their dot products are unchanged.
- Norm weights (1-D) stay f32, as llama.cpp's converter keeps them.
- A quantized type works on blocks of 32 along a row; a tensor whose rows are not a multiple of 32
  (odd hidden sizes) is written f16 instead, as llama.cpp's converter does, and the summary says so.
- With q4_0 / q5_0 the output projection (lm head) is written q8_0: it is the tensor most sensitive
  to rounding, which is why llama.cpp's own quantizer also gives it a higher-precision type.

The gguf API used (pinned here; a gguf release that changes it breaks this module and its tests):
GGUFWriter's streaming calls (`add_tensor_info`, `write_header_to_file`, `write_kv_data_to_file`,
`write_ti_data_to_file`, `write_tensor_data`), `quants.quantize` / `quants.dequantize` /
`quant_shape_to_byte_shape`, `GGUFReader.fields[key].contents()` and `GGUFReader.tensors`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.export.gguf_vocab import GGUFVocab

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
QUANT_TYPES = ("f16", "bf16", "q8_0", "q5_0", "q4_0", "f32")
ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclass
class LlamaHparams:
    architecture: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    context: int
    rms_eps: float
    rope_theta: float
    rope: dict[str, Any]  # rope_parameters / rope_scaling as the config has them ({} when none)
    vocab_size: int
    tied: bool
    notes: list[str] = field(default_factory=list)

    @property
    def rope_type(self) -> str:
        return str(self.rope.get("rope_type") or self.rope.get("type") or "default")


@dataclass
class GGUFSummary:
    path: Path
    quant: str
    tensors: int
    params: int
    params_by_type: dict[str, int]  # ggml type name -> parameters stored in it
    fallbacks: list[str]  # tensors not written in the requested type, and why
    bytes: int


def check_quant(quant: str) -> None:
    if quant not in QUANT_TYPES:
        raise TunelabError(f"--quant: {quant!r} is not one of {', '.join(QUANT_TYPES)}")


def read_hparams(config: dict[str, Any]) -> LlamaHparams:
    """The shape of a Llama-family model from its config.json; one-line refusal for anything else."""
    arch = (config.get("architectures") or ["(no architectures in config.json)"])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise TunelabError(
            f"GGUF export supports {', '.join(SUPPORTED_ARCHITECTURES)}; this model is {arch}",
            hint="export --format hf and convert it with llama.cpp's convert_hf_to_gguf.py",
        )
    for key, ok in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if config.get(key, ok) != ok:
            raise TunelabError(
                f"GGUF export: {key}={config[key]!r} is not supported (Llama-family models have {key}={ok!r})"
            )
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    theta = float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    heads = int(config["num_attention_heads"])
    hp = LlamaHparams(
        architecture=arch,
        layers=int(config["num_hidden_layers"]),
        hidden=int(config["hidden_size"]),
        intermediate=int(config["intermediate_size"]),
        heads=heads,
        kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or config["hidden_size"] // heads),
        context=int(config.get("max_position_embeddings") or 2048),
        rms_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope=rope,
        vocab_size=int(config["vocab_size"]),
        tied=bool(config.get("tie_word_embeddings", False)),
    )
    if hp.rope_type not in ROPE_TYPES:
        raise TunelabError(
            f"GGUF export: rope type {hp.rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})"
        )
    window = config.get("sliding_window")
    if window and int(window) < hp.context:
        hp.notes.append(
            f"transformers limits this model's attention to a {window}-token sliding window, llama.cpp attends "
            f"over the whole context: answers can differ once prompt + answer exceed {window} tokens"
        )
    return hp


def write_gguf(
    model_dir: Path, out_file: Path, quant: str, vocab: GGUFVocab, chat_template: str | None, name: str
) -> GGUFSummary:
    """Write `model_dir` (a Hugging Face Llama-family folder, safetensors) to `out_file` as GGUF.

    Tensors are read, converted and written one at a time, so memory holds one tensor, not the model."""
    from contextlib import ExitStack

    import gguf
    import numpy as np
    from safetensors import safe_open

    check_quant(quant)
    hp = read_hparams(json.loads((model_dir / "config.json").read_text()))
    plan = _tensor_plan(_safetensors_files(model_dir), hp, quant)
    writer = gguf.GGUFWriter(out_file, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _add_model_kv(writer, hp, quant, name)
    _add_vocab_kv(writer, vocab, chat_template)
    T = gguf.GGMLQuantizationType
    for t in plan:  # F32/F16 go in as typed arrays; every other type as raw bytes of its block layout
        if t.qtype in (T.F32, T.F16):
            writer.add_tensor_info(
                t.gguf_name,
                t.shape,
                np.dtype(np.float32 if t.qtype == T.F32 else np.float16),
                _nbytes(t.shape, t.qtype),
            )
        else:
            writer.add_tensor_info(
                t.gguf_name,
                gguf.quant_shape_to_byte_shape(t.shape, t.qtype),
                np.dtype(np.uint8),
                _nbytes(t.shape, t.qtype),
                raw_dtype=t.qtype,
            )
    with ExitStack() as files:
        handles = {
            f: files.enter_context(safe_open(str(f), framework="pt"))
            for f in {t.file for t in plan if t.file is not None}
        }
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for t in plan:
                data = t.extra if t.extra is not None else handles[t.file].get_tensor(t.hf_name).float().numpy()
                writer.write_tensor_data(_convert(data, t, hp))
        finally:
            writer.close()
    by_type: dict[str, int] = {}
    for t in plan:
        by_type[t.qtype.name] = by_type.get(t.qtype.name, 0) + math.prod(t.shape)
    return GGUFSummary(
        out_file,
        quant,
        len(plan),
        sum(by_type.values()),
        by_type,
        [f"{t.gguf_name}: {t.note}" for t in plan if t.note],
        out_file.stat().st_size,
    )


@dataclass
class _Planned:
    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]  # numpy order (rows last)
    qtype: Any  # gguf.GGMLQuantizationType
    file: Path | None
    note: str = ""  # why the tensor is not in the requested type
    extra: Any = None  # a tensor computed here (rope_freqs) instead of read from a file


def _safetensors_files(model_dir: Path) -> dict[str, Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return {k: model_dir / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise TunelabError(f"{model_dir}: no model.safetensors to convert")
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as f:
        return {k: single for k in f.keys()}


def _tensor_plan(files: dict[str, Path], hp: LlamaHparams, quant: str) -> list[_Planned]:
    import gguf
    import numpy as np
    from safetensors import safe_open

    wanted = gguf.GGMLQuantizationType[quant.upper()]
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hp.layers)
    output_name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.OUTPUT] + ".weight"
    embd_name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight"
    has_output = "lm_head.weight" in files and not hp.tied
    plan: list[_Planned] = []
    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(set(files.values())):
        with safe_open(str(f), framework="pt") as h:
            shapes.update({k: tuple(h.get_slice(k).get_shape()) for k in h.keys()})
    for hf_name, file in files.items():
        if hf_name == "lm_head.weight" and not has_output:
            continue  # tied: llama.cpp uses the token embedding as the output projection when output.weight is absent
        gguf_name = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise TunelabError(
                f"GGUF export: tensor {hf_name!r} has no llama.cpp name (not a plain Llama-family model?)"
            )
        shape = shapes[hf_name]
        qtype, note = _tensor_type(
            gguf_name, shape, wanted, gguf_name == output_name or (not has_output and gguf_name == embd_name)
        )
        plan.append(_Planned(hf_name, gguf_name, shape, qtype, file, note))
    if hp.rope_type == "llama3":
        freqs = _llama3_rope_factors(hp)
        plan.append(
            _Planned(
                "",
                gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                freqs.shape,
                gguf.GGMLQuantizationType.F32,
                None,
                extra=freqs.astype(np.float32),
            )
        )
    return plan


def _tensor_type(gguf_name: str, shape: tuple[int, ...], wanted: Any, is_output: bool) -> tuple[Any, str]:
    import gguf

    T = gguf.GGMLQuantizationType
    if len(shape) == 1 or wanted == T.F32:
        return T.F32, ""
    if wanted in (T.F16, T.BF16):
        return wanted, ""
    if is_output and wanted in (T.Q4_0, T.Q5_0):
        wanted = T.Q8_0
    block = gguf.GGML_QUANT_SIZES[wanted][0]
    if shape[-1] % block:
        return T.F16, f"rows of {shape[-1]} are not a multiple of the {wanted.name} block ({block}): written F16"
    return wanted, ""


def _nbytes(shape: tuple[int, ...], qtype: Any) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape[:-1]) * (shape[-1] // block) * size


def permute_rotary(w, n_heads: int):
    """Q/K rows from transformers' half-split rotary order to ggml's interleaved pairs (per head)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rotary(w, n_heads: int):
    """The inverse of `permute_rotary`."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _convert(data, t: _Planned, hp: LlamaHparams):
    import gguf
    import numpy as np

    if t.hf_name.endswith("q_proj.weight"):
        data = permute_rotary(data, hp.heads)
    elif t.hf_name.endswith("k_proj.weight"):
        data = permute_rotary(data, hp.kv_heads)
    out = gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), t.qtype)
    if t.qtype == gguf.GGMLQuantizationType.F16 and not np.isfinite(out).all():
        raise TunelabError(f"GGUF export: {t.hf_name} overflows float16", hint="use --quant bf16 (or f32)")
    return out


def _llama3_rope_factors(hp: LlamaHparams):
    """Llama 3.1's frequency-dependent rope scaling, which llama.cpp reads as a rope_freqs tensor."""
    import numpy as np

    r = hp.rope
    factor, low, high = r.get("factor", 8.0), r.get("low_freq_factor", 1.0), r.get("high_freq_factor", 4.0)
    old_ctx = r.get("original_max_position_embeddings", 8192)
    freqs = 1.0 / (hp.rope_theta ** (np.arange(0, hp.head_dim, 2, dtype=np.float64) / hp.head_dim))
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def _add_model_kv(writer, hp: LlamaHparams, quant: str, name: str) -> None:
    import gguf

    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    file_type = {
        "f32": "ALL_F32",
        "f16": "MOSTLY_F16",
        "bf16": "MOSTLY_BF16",
        "q8_0": "MOSTLY_Q8_0",
        "q5_0": "MOSTLY_Q5_0",
        "q4_0": "MOSTLY_Q4_0",
    }[quant]
    writer.add_file_type(gguf.LlamaFileType[file_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(hp.vocab_size)
    writer.add_context_length(hp.context)
    writer.add_embedding_length(hp.hidden)
    writer.add_block_count(hp.layers)
    writer.add_feed_forward_length(hp.intermediate)
    writer.add_head_count(hp.heads)
    writer.add_head_count_kv(hp.kv_heads)
    if hp.head_dim != hp.hidden // hp.heads:  # e.g. Mistral Nemo: llama.cpp takes head sizes from these keys
        writer.add_key_length(hp.head_dim)
        writer.add_value_length(hp.head_dim)
    writer.add_rope_dimension_count(hp.head_dim)
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    r = hp.rope
    if hp.rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(r["factor"]))
    elif hp.rope_type == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(r["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(r["original_max_position_embeddings"]))
        for key, add in (
            ("beta_fast", writer.add_rope_scaling_yarn_beta_fast),
            ("beta_slow", writer.add_rope_scaling_yarn_beta_slow),
            ("attention_factor", writer.add_rope_scaling_yarn_attn_factor),
        ):
            if r.get(key) is not None:
                add(float(r[key]))


def _add_vocab_kv(writer, vocab: GGUFVocab, chat_template: str | None) -> None:
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges is not None:
        writer.add_token_merges(vocab.merges)
    for value, add in (
        (vocab.bos, writer.add_bos_token_id),
        (vocab.eos, writer.add_eos_token_id),
        (vocab.unk, writer.add_unk_token_id),
        (vocab.pad, writer.add_pad_token_id),
        (vocab.eot, writer.add_eot_token_id),
    ):
        if value is not None:
            add(value)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if chat_template:
        writer.add_chat_template(chat_template)


# Reading back ------------------------------------------------------------------------------------


def model_from_gguf(path: Path, rope_parameters: dict[str, Any] | None = None):
    """A float32 transformers LlamaForCausalLM built from the GGUF file alone: its metadata gives the
    config, its tensors (dequantized, Q/K rows restored) the weights. `rope_parameters` overrides the
    rope read from the file (needed for llama3 rope, which the file stores as factors only)."""
    import gguf
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    reader = gguf.GGUFReader(path)
    kv = {k: f.contents() for k, f in reader.fields.items()}
    arch = kv["general.architecture"]
    if arch != "llama":
        raise TunelabError(f"{path}: architecture {arch!r}, not llama")
    tensors = {t.name: t for t in reader.tensors}

    def get(key: str, default: Any = None) -> Any:
        return kv.get(f"{arch}.{key}", default)

    heads = int(get("attention.head_count"))
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(get("rope.freq_base", 10000.0))}
    if get("rope.scaling.type") == "linear":
        rope.update(rope_type="linear", factor=float(get("rope.scaling.factor")))
    elif get("rope.scaling.type") is not None or "rope_freqs.weight" in tensors:
        if rope_parameters is None:
            raise ValueError(
                f"{path}: rope scaling {get('rope.scaling.type') or 'llama3'} "
                "needs rope_parameters from the source config"
            )
    config = LlamaConfig(
        vocab_size=len(kv["tokenizer.ggml.tokens"]),
        hidden_size=int(get("embedding_length")),
        intermediate_size=int(get("feed_forward_length")),
        num_hidden_layers=int(get("block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(get("attention.head_count_kv", heads)),
        head_dim=int(get("attention.key_length", int(get("embedding_length")) // heads)),
        max_position_embeddings=int(get("context_length")),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_parameters=rope_parameters or rope,
        tie_word_embeddings="output.weight" not in tensors,
        bos_token_id=kv.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=kv.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=kv.get("tokenizer.ggml.padding_token_id"),
    )
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    # Built on the meta device and filled with assign=True: no random init of weights about to be replaced.
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    state = {}
    for hf_name in model.state_dict():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        t = tensors[tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))]
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(tuple(reversed(t.shape.tolist())))
        if hf_name.endswith("q_proj.weight"):
            w = unpermute_rotary(w, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            w = unpermute_rotary(w, config.num_key_value_heads)
        state[hf_name] = torch.from_numpy(np.ascontiguousarray(w))
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, assign=True, strict=True)
    # The rotary frequencies are a non-persistent buffer computed at init: on meta they hold nothing.
    model.model.rotary_emb = LlamaRotaryEmbedding(config=config)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()
