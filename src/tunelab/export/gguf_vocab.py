"""Tokenizer metadata for a GGUF file: what llama.cpp needs to tokenize exactly as transformers does.

Two kinds of tokenizer are written, the two that Llama-family models ship:

- byte-level BPE from `tokenizer.json` (GPT-2 style, Llama 3, tunelab's tiny tokenizer) as llama.cpp's
  `gpt2` model: the byte-encoded vocabulary, the merges, and a pre-tokenizer name. llama.cpp does not
  read the pre-tokenizer from the file, it picks one of its own by name, so the name is only written
  for pre-tokenizers recognised here by their structure; any other is refused rather than guessed
  (a wrong guess tokenizes differently without any error).
- SentencePiece from `tokenizer.model` (Llama 1/2, OpenLLaMA, Mistral v0.1) as llama.cpp's `llama`
  model: pieces, scores and piece types, read with the `sentencepiece` package.

Token types follow llama.cpp's converter: special added tokens are CONTROL (matched as one token only
when a prompt is parsed with special tokens, as chat templates are), other added tokens USER_DEFINED,
ids the tokenizer does not fill UNUSED `[PADn]` placeholders (embeddings padded past the vocabulary).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

# The regex Llama 3's tokenizer.json splits with before its byte-level step; llama.cpp's `llama-bpe`.
LLAMA3_SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)


@dataclass
class GGUFVocab:
    model: str  # llama.cpp tokenizer model: gpt2 (byte-level BPE) | llama (SentencePiece)
    pre: str  # llama.cpp pre-tokenizer name
    tokens: list[str]
    types: list[int]  # gguf.TokenType per token
    scores: list[float] | None  # SentencePiece only
    merges: list[str] | None  # BPE only, "a b" per merge
    bos: int | None
    eos: int | None
    unk: int | None
    pad: int | None
    eot: int | None  # an end-of-turn id the model's generation config stops at besides EOS
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool | None  # SentencePiece's dummy prefix; None: llama.cpp's default


def read_vocab(
    folder: Path, tokenizer: Any, vocab_size: int, stop_ids: list[int], spm_candidates: list[Path]
) -> GGUFVocab:
    """The GGUF tokenizer metadata for the tokenizer saved in `folder` (and loaded as `tokenizer`).

    `vocab_size` is the model's embedding rows; `stop_ids` the ids generation stops at (EOS first);
    `spm_candidates` are folders that may hold the SentencePiece `tokenizer.model` (transformers 5
    does not always save it next to a merged model)."""
    spm = next((f / "tokenizer.model" for f in [folder, *spm_candidates] if (f / "tokenizer.model").is_file()), None)
    tj_file = folder / "tokenizer.json"
    tj = json.loads(tj_file.read_text()) if tj_file.is_file() else None
    bpe_model = (tj or {}).get("model") or {}
    if tj is not None and bpe_model.get("type") == "BPE" and not bpe_model.get("byte_fallback"):
        tokens, types, merges, pre = _byte_level_bpe(tj, vocab_size)
        scores, add_space_prefix = None, None
        kind = "gpt2"
    elif spm is not None:
        tokens, types, scores, add_space_prefix = _sentencepiece(spm, tj, tokenizer, vocab_size)
        merges, pre, kind = None, "default", "llama"
    else:
        raise TunelabError(
            f"{folder}: GGUF export needs a byte-level BPE tokenizer.json or a SentencePiece tokenizer.model",
            hint="this tokenizer is neither; copy the base model's tokenizer.model next to it if it has one",
        )
    probe = tokenizer("a").input_ids
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    extra_stops = [i for i in stop_ids if i != eos]
    return GGUFVocab(
        model=kind,
        pre=pre,
        tokens=tokens,
        types=types,
        scores=scores,
        merges=merges,
        bos=bos,
        eos=eos,
        unk=tokenizer.unk_token_id,
        pad=tokenizer.pad_token_id,
        eot=extra_stops[0] if extra_stops else None,
        # The same rule as tunelab.inference.generate.encode_prompt: BOS when the tokenizer adds one.
        add_bos=bos is not None and probe[:1] == [bos],
        add_eos=eos is not None and probe[-1:] == [eos],
        add_space_prefix=add_space_prefix,
    )


def _byte_level_bpe(tj: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int], list[str], str]:
    from gguf import TokenType

    model = tj["model"]
    if not isinstance(tj.get("decoder"), dict) or tj["decoder"].get("type") != "ByteLevel":
        raise TunelabError(
            "tokenizer.json: a BPE tokenizer without a ByteLevel decoder; GGUF export supports byte-level BPE only"
        )
    if tj.get("normalizer") is not None:
        raise TunelabError(
            f"tokenizer.json: normalizer {tj['normalizer'].get('type')!r} "
            "has no llama.cpp equivalent for byte-level BPE"
        )
    pre = pre_tokenizer_name(tj.get("pre_tokenizer"))
    if pre is None:
        raise TunelabError(
            f"tokenizer.json: pre-tokenizer {json.dumps(tj.get('pre_tokenizer'))[:200]} "
            "is not one llama.cpp is known to match",
            hint="supported: GPT-2 byte-level, Llama 3's split + byte-level, "
            "digits + byte-level (tunelab's tiny tokenizer)",
        )
    # llama.cpp ignores merges (takes a whole word from the vocabulary first) exactly for llama-bpe.
    if bool(model.get("ignore_merges")) != (pre == "llama-bpe"):
        raise TunelabError(
            f"tokenizer.json: ignore_merges={model.get('ignore_merges')} with a {pre} pre-tokenizer "
            "differs from llama.cpp's tokenizer"
        )
    by_id: dict[int, tuple[str, int]] = {i: (t, TokenType.NORMAL) for t, i in model["vocab"].items()}
    for added in tj.get("added_tokens", []):
        by_id[added["id"]] = (added["content"], TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED)
    _check_fits(by_id, vocab_size)
    tokens = [by_id.get(i, (f"[PAD{i}]", TokenType.UNUSED))[0] for i in range(vocab_size)]
    types = [int(by_id.get(i, ("", TokenType.UNUSED))[1]) for i in range(vocab_size)]
    # tokenizers >= 0.20 saves merges as pairs, older versions as "a b" strings; GGUF wants the strings.
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges, pre


def pre_tokenizer_name(pre: dict[str, Any] | None) -> str | None:
    """llama.cpp's name for a tokenizer.json pre-tokenizer, when it is one llama.cpp reproduces exactly."""

    def byte_level(p: dict[str, Any], regex: bool) -> bool:
        return (
            p.get("type") == "ByteLevel" and not p.get("add_prefix_space") and bool(p.get("use_regex", True)) == regex
        )

    if not pre:
        return None
    if byte_level(pre, regex=True):
        return "gpt-2"
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not steps or len(steps) != 2:
        return None
    first, second = steps
    if first.get("type") == "Digits" and first.get("individual_digits") and byte_level(second, regex=True):
        return "starcoder"  # llama.cpp: \p{N} split, then the GPT-2 regex
    if (
        first.get("type") == "Split"
        and (first.get("pattern") or {}).get("Regex") == LLAMA3_SPLIT
        and first.get("behavior") == "Isolated"
        and not first.get("invert")
        and byte_level(second, regex=False)
    ):
        return "llama-bpe"
    return None


def _sentencepiece(
    path: Path, tj: dict[str, Any] | None, tokenizer: Any, vocab_size: int
) -> tuple[list[str], list[int], list[float], bool]:
    from gguf import TokenType

    try:
        from sentencepiece import SentencePieceProcessor
        from sentencepiece import sentencepiece_model_pb2 as spm_pb2
    except ImportError:
        raise TunelabError(
            f"{path}: reading a SentencePiece tokenizer needs the sentencepiece package",
            hint="pip install sentencepiece",
        ) from None
    sp = SentencePieceProcessor(model_file=str(path))
    proto = spm_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    by_id: dict[int, tuple[str, int, float]] = {}
    for i in range(sp.vocab_size()):
        kind = (
            TokenType.UNKNOWN
            if sp.IsUnknown(i)
            else TokenType.CONTROL
            if sp.IsControl(i)
            else TokenType.UNUSED
            if sp.IsUnused(i)
            else TokenType.BYTE
            if sp.IsByte(i)
            else TokenType.NORMAL
        )
        by_id[i] = (sp.IdToPiece(i), kind, sp.GetScore(i))
    added = (
        tj.get("added_tokens", [])
        if tj
        else [{"id": i, "content": t.content, "special": t.special} for i, t in tokenizer.added_tokens_decoder.items()]
    )
    for a in added:
        if a["id"] >= sp.vocab_size() or by_id[a["id"]][0] != a["content"]:
            by_id[a["id"]] = (a["content"], TokenType.CONTROL if a.get("special") else TokenType.USER_DEFINED, -1000.0)
    _check_fits(by_id, vocab_size)
    # The transformers tokenizer is what the model was trained with: the .model file must be its vocabulary.
    hf_pieces = tokenizer.convert_ids_to_tokens(list(range(min(sp.vocab_size(), len(tokenizer)))))
    wrong = [i for i, piece in enumerate(hf_pieces) if piece != by_id[i][0]]
    if wrong:
        i = wrong[0]
        raise TunelabError(
            f"{path}: does not match the model's tokenizer "
            f"(id {i}: {by_id[i][0]!r} vs {hf_pieces[i]!r}, {len(wrong)} ids differ)"
        )
    tokens = [by_id.get(i, (f"[PAD{i}]",))[0] for i in range(vocab_size)]
    types = [int(by_id[i][1]) if i in by_id else int(TokenType.UNUSED) for i in range(vocab_size)]
    scores = [by_id[i][2] if i in by_id else -10000.0 for i in range(vocab_size)]
    return tokens, types, scores, bool(proto.normalizer_spec.add_dummy_prefix)


def _check_fits(by_id: dict[int, Any], vocab_size: int) -> None:
    top = max(by_id) if by_id else -1
    if top >= vocab_size:
        raise TunelabError(f"the tokenizer has token id {top} but the model only {vocab_size} embeddings")
