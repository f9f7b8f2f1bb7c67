"""Tiny Llama-architecture models and tokenizers, built locally and deterministically.

They are saved as ordinary Hugging Face folders (config.json, model.safetensors, tokenizer.json),
so the quickstart and the tests go through the same loading code as a real model. `tiny:NAME`
in `model.name` builds (once, cached) and loads one of the presets below.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tunelab.cache import cache_root
from tunelab.errors import ConfigError
from tunelab.outputs import Output, staged_folder

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]

# ChatML with tools in the Hermes / Qwen2.5 convention: the tool definitions in a system turn, each
# call as <tool_call>{"name": ..., "arguments": ...}</tool_call>, results as <tool_response> in a user
# turn. The tag tokens are ordinary added tokens (not special), so decoding keeps them, as Qwen's do.
TOOLS_CHAT_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "You may call these tools:\n<tools>\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}</tools>\n"
    'Call one as <tool_call>{"name": NAME, "arguments": ARGS}</tool_call>.<|im_end|>\n'
    "{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' and loop.first and tools %}"
    "{% elif m['role'] == 'assistant' %}<|im_start|>assistant\n{{ m['content'] or '' }}"
    "{% for c in m['tool_calls'] or [] %}{% set f = c['function'] if c['function'] is defined else c %}"
    '<tool_call>{"name": "{{ f[\'name\'] }}", "arguments": {{ f[\'arguments\'] | tojson }}}</tool_call>'
    "{% endfor %}<|im_end|>\n"
    "{% elif m['role'] == 'tool' %}<|im_start|>user\n<tool_response>{{ m['content'] }}</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOL_TAGS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]


@dataclass(frozen=True)
class TinySpec:
    layers: int = 2
    hidden: int = 64
    intermediate: int = 192
    heads: int = 4
    kv_heads: int = 4
    vocab: int = 1024
    max_positions: int = 2048
    seed: int = 0
    pretrain_steps: int = 0  # >0: a short full training on synthetic tasks (see tunelab.model.pretrain)
    tools: bool = False  # a chat template that renders tool calls (TOOLS_CHAT_TEMPLATE) and its tag tokens

    def digest_fields(self) -> dict:
        """What names the cached build: every field, `tools` only when set (older presets keep their folders)."""
        d = asdict(self)
        if not self.tools:
            d.pop("tools")
        return d


PRESETS: dict[str, TinySpec] = {
    "llama-2l": TinySpec(),
    "llama-4l": TinySpec(layers=4, hidden=256, intermediate=704, heads=4, kv_heads=4),
    # the quickstart's base: pretrained on synthetic tasks written as plain text (not the Alpaca template)
    "quickstart-base": TinySpec(layers=2, hidden=128, intermediate=384, heads=4, kv_heads=4, pretrain_steps=450),
    # llama-2l's shape with a tool-calling chat template: trains (and serves) OpenAI-style tool calls
    "tools-2l": TinySpec(layers=2, hidden=128, intermediate=384, heads=4, kv_heads=4, tools=True),
}


def corpus_texts(tools: bool = False) -> list[str]:
    """Text the tiny tokenizer is trained on: the prompt templates and the synthetic tasks (and, for
    a tools preset, tool definitions and calls as JSON)."""
    from tunelab.data.synthetic import generate
    from tunelab.data.templates import ALPACA_NO_INPUT, ALPACA_WITH_INPUT

    rows = generate(3000, seed=12345)
    texts = [ALPACA_NO_INPUT, ALPACA_WITH_INPUT] * 200
    texts += [f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in rows]
    texts += [f"{r['instruction']} {r['input']}".upper() for r in rows[:500]]
    if tools:
        from tunelab.data.synthetic import TOOLS, tool_conversations

        texts += [json.dumps(t) for t in TOOLS] * 100
        for row in tool_conversations(1000, seed=12345):
            call = row["messages"][1]["tool_calls"][0]["function"]
            texts.append(
                f"{row['messages'][0]['content']}\n"
                + json.dumps({"name": call["name"], "arguments": call["arguments"]})
            )
    return texts


def build_tokenizer(texts: list[str], vocab_size: int, tools: bool = False):
    """A byte-level BPE tokenizer (digits split one by one) wrapped as a transformers fast tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    if tools:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_TAGS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = TOOLS_CHAT_TEMPLATE if tools else CHAT_TEMPLATE
    return fast


TINY_MARKER = "tunelab_tiny.json"  # the spec a tiny model folder was built from
# What `tunelab tiny --out` writes; an earlier one (any preset) may be replaced: it is rebuilt exactly from its spec.
TINY_MODEL = Output("a tiny model", lambda p: (p / TINY_MARKER).is_file(), folder=True)


def build_tiny(out: str | Path, spec: TinySpec = TinySpec(), texts: list[str] | None = None) -> Path:
    """Write a randomly initialised tiny Llama and its tokenizer to `out` (staged, then renamed into place)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(texts or corpus_texts(spec.tools), spec.vocab, spec.tools)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    with staged_folder(Path(out)) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / TINY_MARKER).write_text(json.dumps(asdict(spec), indent=2))
        if spec.pretrain_steps:
            from tunelab.model.pretrain import pretrain_on_synthetic

            pretrain_on_synthetic(tmp, spec.pretrain_steps, spec.seed)
    return Path(out)


def tiny_spec(name: str) -> TinySpec:
    """The preset `tiny:NAME` names, or the config error listing the known ones (nothing is built)."""
    preset = name.removeprefix("tiny:")
    if preset not in PRESETS:
        raise ConfigError(
            [f"model.name: unknown tiny preset {name!r} (known: {', '.join('tiny:' + p for p in PRESETS)})"]
        )
    return PRESETS[preset]


def resolve_tiny(name: str) -> Path:
    """`tiny:llama-2l` -> a cached local folder, built on first use."""
    preset = name.removeprefix("tiny:")
    spec = tiny_spec(name)
    digest = hashlib.sha256(json.dumps(spec.digest_fields(), sort_keys=True).encode()).hexdigest()[:10]
    path = cache_root("tiny") / f"{preset}-{digest}"
    if not (path / "config.json").is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        build_tiny(path, spec)
    return path
