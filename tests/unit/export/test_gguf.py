"""GGUF export: the file read back into transformers, loaded in real llama.cpp, its Modelfile, bad input.

llama.cpp is llama-cpp-python built from source by scripts/build-llama-cpp.sh into a venv outside the
repo ($TUNELAB_LLAMA_CPP_VENV, default ~/.cache/tunelab/llama-cpp-venv); the tests run that venv's
python in a subprocess (PROBE below) and skip, naming the script, when it is not built. The Go
template test renders the Modelfile's TEMPLATE with Go's text/template (as Ollama does) and skips
without a `go` toolchain (apt-get install golang-go).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from inference_support import RUN_NAME, one_torch_thread, trained_run  # noqa: F401 (autouse fixture)
from tunelab.config.schema import PromptConfig

LLAMA_CPP_VENV = Path(os.environ.get("TUNELAB_LLAMA_CPP_VENV", Path.home() / ".cache" / "tunelab" / "llama-cpp-venv"))
LLAMA_CPP_PYTHON = LLAMA_CPP_VENV / "bin" / "python"
BITS = {"F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8.5, "Q5_0": 5.5, "Q4_0": 4.5}  # per weight, block scales included
MAX_NEW = 16

# Runs inside the llama.cpp venv: tokenize each prompt as llama.cpp does (BOS by the file's metadata,
# special tokens not parsed, as for user text), decode greedily, and answer chat requests through the
# file's own chat template.
PROBE = r"""
import json, sys
import numpy as np
import llama_cpp
from llama_cpp import Llama

req = json.load(sys.stdin)
llm = Llama(model_path=req["gguf"], n_ctx=1024, n_threads=1, seed=0, verbose=False, logits_all=True)
out = {"version": llama_cpp.__version__, "prompts": [], "chats": []}
eog = set(req["eog"])
for text in req["prompts"]:
    ids = llm.tokenize(text.encode(), add_bos=True, special=False)
    llm.reset()
    llm.eval(ids)
    first = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    gen = []
    for _ in range(req["max_new_tokens"]):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        gen.append(nxt)
        if nxt in eog:
            break
        llm.eval([nxt])
    out["prompts"].append({"ids": ids, "generated": gen, "first_logits": first.tolist()})
for messages in req["chats"]:
    r = llm.create_chat_completion(
        messages=messages, temperature=0.0, top_k=1, max_tokens=req["max_new_tokens"], seed=0
    )
    out["chats"].append(r["choices"][0]["message"]["content"])
json.dump(out, sys.stdout)
"""

GO_RENDER = r"""
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

// The shape Ollama executes a .Messages template with (template.Execute in ollama/template).
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func main() {
	var req struct {
		Template string      `json:"template"`
		Cases    [][]Message `json:"cases"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		panic(err)
	}
	t := template.Must(template.New("").Option("missingkey=zero").Parse(req.Template))
	outs := []string{}
	for _, msgs := range req.Cases {
		ptrs := []*Message{}
		for i := range msgs {
			ptrs = append(ptrs, &msgs[i])
		}
		var b strings.Builder
		if err := t.Execute(&b, map[string]any{"System": "", "Messages": ptrs, "Response": ""}); err != nil {
			panic(err)
		}
		outs = append(outs, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(outs)
}
"""


# --- helpers ------------------------------------------------------------------------------------


def _ids_logits(model, ids_list: list[list[int]]) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [model(input_ids=torch.tensor([ids])).logits[0].float() for ids in ids_list]


def _greedy(model, tok, ids: list[int], eos: list[int], max_new: int = MAX_NEW) -> list[int]:
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=tok.pad_token_id,
            temperature=None,
            top_p=None,
            top_k=None,
        )
    return out[0, len(ids) :].tolist()


def _assert_same_greedy(
    model, ids_list: list[list[int]], got: list[list[int]], want: list[list[int]], tol: float
) -> int:
    """`got` must be `want` (greedy answers of `model`), except where `model` itself can barely tell
    the two tokens apart: at the first token where they part, `model`'s logit for its own choice may
    lead the other's by at most `tol`. A random tiny model has many such near-ties; a wrong
    conversion parts at once and by far. Returns how many answers are identical."""
    same = 0
    for ids, g, w in zip(ids_list, got, want, strict=True):
        if g == w:
            same += 1
            continue
        k = (
            next(i for i, (a, b) in enumerate(zip(g, w, strict=False)) if a != b)
            if g[: len(w)] != w[: len(g)]
            else min(len(g), len(w))
        )
        assert k < min(len(g), len(w)), (g, w)  # one stopped at EOS where the other went on
        logits = _ids_logits(model, [ids + w[:k]])[0][-1]
        gap = float(logits[w[k]] - logits[g[k]])
        assert gap <= tol, f"parted at token {k} by {gap:.2e} (allowed {tol:.2e}): {g} vs {w}"
    return same


def _write(folder: Path, quant: str, name: str = "m") -> Path:
    """GGUF of a model folder (no run: the tiny model or one built here), with its tokenizer's chat template."""
    from transformers import AutoTokenizer

    from tunelab.export.gguf import read_hparams, write_gguf
    from tunelab.export.gguf_vocab import read_vocab

    tok = AutoTokenizer.from_pretrained(folder)
    hp = read_hparams(json.loads((folder / "config.json").read_text()))
    vocab = read_vocab(folder, tok, hp.vocab_size, [tok.eos_token_id], [])
    return write_gguf(folder, folder.parent / f"{folder.name}-{quant}.gguf", quant, vocab, tok.chat_template, name).path


def _expected_size(path: Path) -> tuple[int, int]:
    """(bytes the tensors should take at their types' bits per weight + the header/metadata, file size)."""
    import gguf

    reader = gguf.GGUFReader(path)
    data = sum(int(t.n_elements) * BITS[t.tensor_type.name] / 8 for t in reader.tensors)
    return int(reader.data_offset + data), path.stat().st_size


def _llama_cpp(request: dict, tmp_path: Path) -> dict:
    if not LLAMA_CPP_PYTHON.is_file():
        pytest.skip(f"llama.cpp is not built: run scripts/build-llama-cpp.sh (looked for {LLAMA_CPP_PYTHON})")
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    r = subprocess.run(
        [str(LLAMA_CPP_PYTHON), str(probe)], input=json.dumps(request), capture_output=True, text=True, timeout=600
    )
    if r.returncode != 0 and "No module named 'llama_cpp'" in r.stderr:
        pytest.skip(f"{LLAMA_CPP_VENV} has no llama_cpp: run scripts/build-llama-cpp.sh")
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def _go_render(template: str, cases: list[list[dict]], tmp_path: Path) -> list[str]:
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain to render the Modelfile TEMPLATE as Ollama does (apt-get install golang-go)")
    (tmp_path / "render.go").write_text(GO_RENDER)
    env = {
        **os.environ,
        "GOCACHE": str(tmp_path / "gocache"),
        "GOPATH": str(tmp_path / "gopath"),
        "GOFLAGS": "",
        "GO111MODULE": "off",
    }
    r = subprocess.run(
        [go, "run", str(tmp_path / "render.go")],
        input=json.dumps({"template": template, "cases": cases}),
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def _held_out_rows(n: int = 12):
    from tunelab.data.synthetic import generate

    # seed 9: rows the trained run (seed 3) did not see, both alpaca variants (with and without input)
    return generate(n, seed=9)


# --- fast: the conversion itself --------------------------------------------------------------------


def test_qk_permutation_turns_transformers_rotary_into_ggml_rotary():
    """rope(permute(W) x) in ggml's interleaved-pairs form == permute(rope(W x)) in transformers' half-split form."""
    from tunelab.export.gguf import permute_rotary, unpermute_rotary

    torch.manual_seed(0)
    heads, d, hidden, pos = 3, 8, 12, 5
    w = torch.randn(heads * d, hidden).numpy()
    x = torch.randn(hidden).numpy()
    theta = 10000.0 ** (-np.arange(0, d, 2) / d) * pos

    def hf_rope(v):  # transformers: rotate_half pairs i with i + d/2
        v = v.reshape(heads, d)
        cos, sin = np.cos(np.concatenate([theta, theta])), np.sin(np.concatenate([theta, theta]))
        rot = np.concatenate([-v[:, d // 2 :], v[:, : d // 2]], axis=1)
        return (v * cos + rot * sin).reshape(-1)

    def ggml_rope(v):  # ggml rope mode 0: pairs (2i, 2i+1)
        v = v.reshape(heads, d // 2, 2)
        c, s = np.cos(theta)[None], np.sin(theta)[None]
        return np.stack([v[..., 0] * c - v[..., 1] * s, v[..., 0] * s + v[..., 1] * c], axis=-1).reshape(-1)

    p = permute_rotary(w, heads)
    assert np.allclose(ggml_rope(p @ x), permute_rotary(hf_rope(w @ x)[:, None], heads)[:, 0], atol=1e-5)
    assert np.array_equal(unpermute_rotary(p, heads), w)
    assert not np.array_equal(p, w)


@pytest.mark.parametrize("quant", ["f32", "f16", "bf16", "q8_0", "q5_0", "q4_0"])
def test_tiny_model_reads_back_from_the_file_alone(tiny_model_dir, tmp_path, quant):
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.export.gguf import model_from_gguf
    from tunelab.export.merge import TOLERANCE
    from tunelab.inference.generate import encode_prompt

    folder = tmp_path / "tiny"
    shutil.copytree(tiny_model_dir, folder)
    path = _write(folder, quant)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = [
        encode_prompt(tok, f"### Instruction:\n{t}\n\n### Response:\n")
        for t in ("Add 2 and 3.", "Sort 3 1 2.", "cat dog")
    ]
    ref = _ids_logits(AutoModelForCausalLM.from_pretrained(folder), ids)
    got = _ids_logits(model_from_gguf(path), ids)
    diff = max(float((a - b).abs().max()) for a, b in zip(ref, got, strict=True))
    scale = max(float(a.abs().max()) for a in ref)
    if quant in ("f32", "f16", "bf16"):
        assert diff <= {"f32": 1e-5, "f16": TOLERANCE["fp16"], "bf16": TOLERANCE["bf16"]}[quant] * max(scale, 1.0), diff
    else:  # quantized: close, not equal; the file's exact weights are what llama.cpp must reproduce (below)
        assert 0 < diff < {"q8_0": 0.05, "q5_0": 0.2, "q4_0": 0.4}[quant] * max(scale, 1.0), diff
    # every 2-D weight in the asked type (q4_0/q5_0: the lm head q8_0), norms f32
    reader = gguf.GGUFReader(path)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    assert types["blk.1.ffn_down.weight"] == types["token_embd.weight"] == quant.upper()
    assert types["output.weight"] == ("Q8_0" if quant in ("q4_0", "q5_0") else quant.upper())
    expected, size = _expected_size(path)
    assert abs(size - expected) <= 0.01 * expected, (size, expected)
    assert (
        reader.fields["general.file_type"].contents()
        == {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7, "q5_0": 8, "q4_0": 2}[quant]
    )


def test_rows_off_the_block_size_fall_back_to_f16_with_gqa_and_tied_embeddings(tiny_model_dir, tmp_path):
    """hidden 48 is not a multiple of q8_0's 32-wide blocks: those tensors are written F16 and said so."""
    import gguf
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunelab.export.gguf import model_from_gguf

    folder = tmp_path / "odd"
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=48,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0},
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(1)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    from tunelab.export.gguf import read_hparams, write_gguf
    from tunelab.export.gguf_vocab import read_vocab

    vocab = read_vocab(folder, tok, cfg.vocab_size, [tok.eos_token_id], [])
    summary = write_gguf(folder, tmp_path / "odd.gguf", "q8_0", vocab, None, "odd")
    assert read_hparams(json.loads((folder / "config.json").read_text())).kv_heads == 2
    reader = gguf.GGUFReader(summary.path)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert "output.weight" not in types  # tied: llama.cpp reuses token_embd
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == "F16"
    assert types["blk.0.ffn_down.weight"] == "Q8_0"  # its rows are 128 wide
    assert any(f.startswith("blk.0.attn_k.weight: rows of 48") for f in summary.fallbacks)
    assert reader.fields["llama.rope.scaling.type"].contents() == "linear"
    ids = [[tok.bos_token_id, 40, 41, 42, 43, 44, 45]]
    ref, got = _ids_logits(model.eval(), ids)[0], _ids_logits(model_from_gguf(summary.path), ids)[0]
    assert float((ref - got).abs().max()) < 0.02 * max(1.0, float(ref.abs().max()))


def test_vocab_metadata_of_the_byte_level_tokenizer(tiny_model_dir, tokenizer):
    import gguf

    from tunelab.export.gguf_vocab import pre_tokenizer_name, read_vocab

    v = read_vocab(
        tiny_model_dir,
        tokenizer,
        len(tokenizer) + 4,
        [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")],
        [],
    )
    assert (v.model, v.pre, v.bos, v.eos, v.pad, v.unk, v.add_bos, v.add_eos) == (
        "gpt2",
        "starcoder",
        1,
        2,
        3,
        0,
        True,
        False,
    )
    assert v.eot == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert v.tokens[:3] == ["<unk>", "<s>", "</s>"] and v.types[4] == v.types[5] == gguf.TokenType.CONTROL
    assert v.tokens[-1] == f"[PAD{len(tokenizer) + 3}]" and v.types[-1] == gguf.TokenType.UNUSED
    word = tokenizer.convert_ids_to_tokens(tokenizer("Below", add_special_tokens=False).input_ids)[0]
    assert v.types[v.tokens.index(word)] == gguf.TokenType.NORMAL
    assert v.merges and all(len(m.split(" ")) == 2 for m in v.merges)
    assert pre_tokenizer_name({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}) == "gpt-2"
    assert pre_tokenizer_name({"type": "Metaspace", "replacement": "_"}) is None


def test_unsupported_pre_tokenizer_is_refused(tiny_model_dir, tmp_path, tokenizer):
    from tunelab.errors import TunelabError
    from tunelab.export.gguf_vocab import read_vocab

    folder = tmp_path / "tok"
    folder.mkdir()
    tj = json.loads((tiny_model_dir / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Whitespace"}
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(TunelabError, match="pre-tokenizer .* is not one llama.cpp is known to match"):
        read_vocab(folder, tokenizer, len(tokenizer), [tokenizer.eos_token_id], [])


@pytest.fixture(scope="module")
def spm_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama with a SentencePiece tokenizer (tokenizer.model, byte fallback), as Llama 2 ships."""
    spm = pytest.importorskip("sentencepiece")
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    from tunelab.model.tiny import corpus_texts

    root = tmp_path_factory.mktemp("spm")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(t.replace("\n", " ") for t in corpus_texts()[:3000]))
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(root / "sp"),
        vocab_size=600,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        # as Llama 2's tokenizer.model: no normalization, whitespace kept as it is
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        num_threads=1,
        minloglevel=2,
    )
    src = root / "sp"
    src.mkdir()
    shutil.copy(root / "sp.model", src / "tokenizer.model")
    folder = root / "model"
    tok = LlamaTokenizer.from_pretrained(src, legacy=False, add_bos_token=True)
    tok.save_pretrained(folder)  # transformers 5 writes tokenizer.json only: the .model file must be found elsewhere
    assert not (folder / "tokenizer.model").exists()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(2)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def test_sentencepiece_vocab_metadata(spm_model_dir):
    import gguf
    from transformers import AutoTokenizer

    from tunelab.export.gguf_vocab import read_vocab

    tok = AutoTokenizer.from_pretrained(spm_model_dir)
    v = read_vocab(spm_model_dir, tok, len(tok), [tok.eos_token_id], [spm_model_dir.parent / "sp"])
    assert (v.model, v.pre, v.bos, v.eos, v.unk, v.add_bos, v.add_space_prefix) == (
        "llama",
        "default",
        1,
        2,
        0,
        True,
        True,
    )
    assert v.types[0] == gguf.TokenType.UNKNOWN and v.types[1] == v.types[2] == gguf.TokenType.CONTROL
    assert v.types.count(gguf.TokenType.BYTE) == 256 and v.tokens[v.types.index(gguf.TokenType.BYTE)] == "<0x00>"
    assert v.scores is not None and len(v.scores) == len(v.tokens) and v.merges is None


# --- fast: prompt formats for the engines -----------------------------------------------------------


def test_alpaca_chat_template_and_modelfile_render_the_training_prompt(tokenizer, tmp_path):
    from tunelab.export.ollama import engine_prompt, modelfile
    from tunelab.inference.generate import encode_prompt
    from tunelab.inference.prompts import instruction_row, prompt_text

    cfg = PromptConfig(format="alpaca")
    p = engine_prompt(cfg, tokenizer, [tokenizer.eos_token_id])
    assert p.stops == ["</s>"] and "no-input" in p.format
    rows = [r for r in _held_out_rows(6) if not r["input"]]
    conversations = [[{"role": "user", "content": r["instruction"]}] for r in rows]
    conversations.append(
        [
            {"role": "user", "content": "earlier"},
            {"role": "assistant", "content": "x"},
            {"role": "user", "content": rows[0]["instruction"]},
        ]
    )
    want = [prompt_text(instruction_row(c[-1]["content"], "", cfg), cfg, tokenizer) for c in conversations]
    # the GGUF's chat template, rendered the way transformers renders chat templates: BOS, then the training prompt
    rendered = [tokenizer.apply_chat_template(c, chat_template=p.chat_template, tokenize=False) for c in conversations]
    assert all(r.startswith(tokenizer.bos_token) for r in rendered)
    assert [r.removeprefix(tokenizer.bos_token) for r in rendered] == want
    assert [encode_prompt(tokenizer, r) for r in rendered] == [encode_prompt(tokenizer, w) for w in want]
    text = modelfile("r1-q8_0.gguf", p, "r1")
    assert "FROM ./r1-q8_0.gguf\n" in text and 'PARAMETER stop "</s>"\n' in text and "PARAMETER temperature 0\n" in text
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert template == p.go_template
    # Ollama renders it with Go's text/template over .Messages
    assert _go_render(template, conversations, tmp_path) == want


def test_chatml_runs_get_a_go_template_that_renders_like_the_chat_template(tokenizer, tmp_path):
    from tunelab.export.ollama import engine_prompt, is_chatml

    assert is_chatml(tokenizer)
    p = engine_prompt(PromptConfig(format="messages"), tokenizer, [tokenizer.eos_token_id])
    assert p.chat_template == tokenizer.chat_template and p.stops == ["</s>", "<|im_end|>"]
    conversations = [
        [{"role": "user", "content": "Add 2 and 3."}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Sort 3 1 2."},
        ],
    ]
    want = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    assert _go_render(p.go_template, conversations, tmp_path) == want


def test_other_chat_templates_get_a_note_instead_of_a_guess(tokenizer):
    from tunelab.export.ollama import engine_prompt, modelfile

    tokenizer = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    p = engine_prompt(PromptConfig(format="messages"), tokenizer, [tokenizer.eos_token_id])
    assert p.go_template is None and "not ChatML" in p.notes[0]
    assert "TEMPLATE" not in modelfile("m.gguf", p, "m").split("# Note")[0] and 'TEMPLATE """' not in modelfile(
        "m.gguf", p, "m"
    )


# --- bad input: one line, exit 2, nothing written ---------------------------------------------------


def _cli(*args: str):
    from typer.testing import CliRunner

    from tunelab.cli.main import app

    return CliRunner().invoke(app, list(args))


def test_bad_input_is_one_line_and_writes_nothing(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    res = _cli("export", str(tiny_model_dir), "--format", "gguf", "--quant", "q3_k", "-o", str(out))
    assert res.exit_code == 2 and "--quant: 'q3_k' is not one of f16, bf16, q8_0, q5_0, q4_0, f32" in res.output
    res = _cli("export", str(tiny_model_dir), "--format", "hf", "--quant", "q8_0", "-o", str(out))
    assert res.exit_code == 2 and "--quant: only with --format gguf" in res.output

    gpt2 = tmp_path / "gpt2"
    shutil.copytree(tiny_model_dir, gpt2)
    cfg = json.loads((gpt2 / "config.json").read_text())
    (gpt2 / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"]}))
    res = _cli("export", str(gpt2), "--format", "gguf", "-o", str(out))
    assert (
        res.exit_code == 2
        and "GGUF export supports LlamaForCausalLM, MistralForCausalLM; this model is GPT2LMHeadModel"
        in " ".join(res.output.split())
    )
    assert len([ln for ln in res.output.splitlines() if ln.startswith("error:")]) == 1

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = _cli("export", str(tiny_model_dir), "--format", "gguf", "-o", str(out))
    assert res.exit_code == 2 and "already exists and was not written by tunelab" in " ".join(res.output.split())
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2", "out"]  # no staging folder left behind


def test_a_gguf_check_failure_publishes_nothing(tiny_model_dir, tmp_path, monkeypatch):
    from tunelab.export import gguf as gg

    def broken(path, rope_parameters=None):  # a converter bug: the file's weights are not the model's
        model = real(path, rope_parameters)
        with torch.no_grad():
            model.lm_head.weight.mul_(1.5)
        return model

    real = gg.model_from_gguf
    monkeypatch.setattr(gg, "model_from_gguf", broken)
    res = _cli("export", str(tiny_model_dir), "--format", "gguf", "-o", str(tmp_path / "out"))
    assert res.exit_code == 2 and "the GGUF file's saved logits DO NOT match the merged model's" in res.output
    assert list(tmp_path.iterdir()) == []


# --- end to end: a trained LoRA run ------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    """The run exported through the real CLI at f16, q8_0 and q4_0, and merged as a Hugging Face folder
    (the reference)."""
    from tunelab.export.merge import merge_target
    from tunelab.inference.target import resolve_target

    root = tmp_path_factory.mktemp("gguf-export")
    outputs = {}
    for quant in ("f16", "q8_0", "q4_0"):
        r = run_cli("export", str(run), "--format", "gguf", "--quant", quant, "-o", str(root / quant))
        assert r.returncode == 0, r.stdout + r.stderr[-3000:]
        outputs[quant] = r.stdout
    merge_target(resolve_target(str(run)), root / "merged")
    return root, outputs


@pytest.mark.slow
def test_export_writes_the_file_the_modelfile_and_the_commands(exported):
    root, outputs = exported
    for quant, text in outputs.items():
        folder = root / quant
        name = f"{RUN_NAME}-{quant}.gguf"
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            [name, "Modelfile", "README.md", "tunelab_model.json"]
        )
        flat = " ".join(text.split())
        assert f"ollama create {RUN_NAME} -f {folder / 'Modelfile'}" in flat
        assert f"llama-cli -m {folder / name} --jinja -cnv --temp 0" in flat
        assert f"llama-server -m {folder / name} --jinja --temp 0 --port 8080" in flat
        assert "ok saved logits match the adapter model's" in flat and f"ok {quant} file read back" in flat
        meta = json.loads((folder / "tunelab_model.json").read_text())
        assert meta["kind"] == "gguf" and meta["quant"] == quant and meta["prompt"]["format"] == "alpaca"
        modelfile = (folder / "Modelfile").read_text()
        assert f"FROM ./{name}\n" in modelfile and "### Instruction:" in modelfile
    assert "ok f16 file read back: saved logits match the merged model's" in " ".join(outputs["f16"].split())


@pytest.mark.slow
def test_gguf_answers_like_the_merged_model(exported):
    """The file read back: f16 logits within tolerance; q8_0 the same greedy answers on held-out prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.data.templates import alpaca_prompt
    from tunelab.export.gguf import model_from_gguf
    from tunelab.export.merge import TOLERANCE
    from tunelab.inference.generate import encode_prompt

    root, _ = exported
    tok = AutoTokenizer.from_pretrained(root / "merged")
    merged = AutoModelForCausalLM.from_pretrained(root / "merged").eval()
    ids = [encode_prompt(tok, alpaca_prompt(r["instruction"], r["input"])) for r in _held_out_rows()]
    ref = _ids_logits(merged, ids)
    f16 = model_from_gguf(root / "f16" / f"{RUN_NAME}-f16.gguf")
    scale = max(float(a.abs().max()) for a in ref)
    diff = max(float((a - b).abs().max()) for a, b in zip(ref, _ids_logits(f16, ids), strict=True))
    assert diff <= TOLERANCE["fp16"] * max(scale, 1.0), diff
    q8 = model_from_gguf(root / "q8_0" / f"{RUN_NAME}-q8_0.gguf")
    eos = [tok.eos_token_id]
    want = [_greedy(merged, tok, i, eos) for i in ids]
    same = _assert_same_greedy(merged, ids, [_greedy(q8, tok, i, eos) for i in ids], want, tol=0.02 * max(scale, 1.0))
    print(f"q8_0 read back: {same}/{len(ids)} greedy answers identical to the merged model's")
    assert same >= len(ids) // 2
    expected, size = _expected_size(root / "q8_0" / f"{RUN_NAME}-q8_0.gguf")
    assert abs(size - expected) <= 0.01 * expected


@pytest.mark.slow
def test_llama_cpp_loads_the_file_and_answers_like_tunelab(exported, tmp_path):
    """Real llama.cpp: same tokens for the prompts, same greedy answers as transformers on the merged
    model (f16, q8_0) and on the file's own dequantized weights (q4_0), and the same answer through the
    file's chat template (the Alpaca template) as through tunelab's prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.data.templates import alpaca_prompt
    from tunelab.export.gguf import model_from_gguf
    from tunelab.inference.generate import GenerationSettings, encode_prompt, generate_batch

    root, _ = exported
    tok = AutoTokenizer.from_pretrained(root / "merged")
    merged = AutoModelForCausalLM.from_pretrained(root / "merged").eval()
    rows = _held_out_rows()
    prompts = [alpaca_prompt(r["instruction"], r["input"]) for r in rows]
    ids = [encode_prompt(tok, p) for p in prompts]
    eos = [tok.eos_token_id]
    want = [_greedy(merged, tok, i, eos) for i in ids]
    no_input = [r["instruction"] for r in rows if not r["input"]]
    tunelab_answers = generate_batch(
        merged, tok, [alpaca_prompt(i) for i in no_input], GenerationSettings(max_new_tokens=MAX_NEW)
    )
    for quant in ("f16", "q8_0", "q4_0"):
        path = root / quant / f"{RUN_NAME}-{quant}.gguf"
        res = _llama_cpp(
            {
                "gguf": str(path),
                "prompts": prompts,
                "max_new_tokens": MAX_NEW,
                "eog": eos,
                "chats": [[{"role": "user", "content": i}] for i in no_input],
            },
            tmp_path,
        )
        assert [p["ids"] for p in res["prompts"]] == ids, quant
        got = [p["generated"] for p in res["prompts"]]
        # llama.cpp vs transformers on the same weights: f16 against the merged model; quantized types against
        # the file's own dequantized weights (what llama.cpp must reproduce; rounding moves answers by design),
        # and q8_0 against the merged model too. llama.cpp multiplies q8_0/q4_0 weights by 8-bit-rounded
        # activations, so its logits differ from the dequantized float product by that rounding.
        scale = 0.01 if quant == "f16" else 0.05
        refs = {"merged": (merged, want)} if quant == "f16" else {"file": (model_from_gguf(path), None)}
        if quant == "q8_0":
            refs["merged"] = (merged, want)
        for what, (ref_model, ref_answers) in refs.items():
            ref_answers = ref_answers or [_greedy(ref_model, tok, i, eos) for i in ids]
            top = max(float(lg.abs().max()) for lg in _ids_logits(ref_model, ids))
            same = _assert_same_greedy(ref_model, ids, got, ref_answers, tol=scale * max(top, 1.0))
            print(
                f"llama.cpp {res['version']} {quant} vs transformers on the {what} weights: "
                f"{same}/{len(ids)} greedy answers identical"
            )
            assert same >= len(ids) // 2, (quant, what)
        if quant == "f16":
            first = torch.tensor([p["first_logits"] for p in res["prompts"]])
            ref = torch.stack([lg[-1] for lg in _ids_logits(merged, ids)])
            first_diff = float((first - ref).abs().max())
            print(f"llama.cpp f16 first-token logits vs the merged model: max |diff| {first_diff:.2e}")
            assert first_diff < 1e-2 * max(1.0, float(ref.abs().max()))

            # text, not ids, comes back from a chat completion; a random model emits stray UTF-8 bytes, which
            # transformers decodes as U+FFFD and llama-cpp-python drops, so both are compared without them
            def clean(text: str) -> str:
                return text.replace("\ufffd", "").strip()

            chat_same = sum(clean(a) == clean(b) for a, b in zip(res["chats"], tunelab_answers, strict=True))
            print(
                f"llama.cpp chat completions through the file's Alpaca chat template: "
                f"{chat_same}/{len(no_input)} as tunelab answers"
            )
            assert chat_same >= len(no_input) - 1


def test_llama_cpp_tokenizes_and_answers_like_transformers_with_a_sentencepiece_tokenizer(spm_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.data.templates import alpaca_prompt
    from tunelab.export.gguf import read_hparams, write_gguf
    from tunelab.export.gguf_vocab import read_vocab
    from tunelab.inference.generate import encode_prompt

    tok = AutoTokenizer.from_pretrained(spm_model_dir)
    hp = read_hparams(json.loads((spm_model_dir / "config.json").read_text()))
    vocab = read_vocab(spm_model_dir, tok, hp.vocab_size, [tok.eos_token_id], [spm_model_dir.parent / "sp"])
    path = write_gguf(spm_model_dir, tmp_path / "spm-f32.gguf", "f32", vocab, None, "spm").path
    prompts = [
        alpaca_prompt("Add 2 and 3."),
        alpaca_prompt("Sort the words.", "pear  apple\tfig"),
        "Spaces  and\ttabs,  ÄÖ and 🚀 bytes 1234 ",
    ]
    ids = [encode_prompt(tok, p) for p in prompts]
    res = _llama_cpp(
        {"gguf": str(path), "prompts": prompts, "max_new_tokens": 8, "eog": [tok.eos_token_id], "chats": []}, tmp_path
    )
    assert [p["ids"] for p in res["prompts"]] == ids
    model = AutoModelForCausalLM.from_pretrained(spm_model_dir).eval()
    assert [p["generated"] for p in res["prompts"]] == [_greedy(model, tok, i, [tok.eos_token_id], 8) for i in ids]
