"""`tunelab export --format gguf`: a folder with one GGUF file and an Ollama Modelfile, checked.

Steps, all inside a staging folder that is renamed to OUT only when every check passed:

1. merge: `write_full_model` writes the run as a Hugging Face folder from the *unquantized* base (a
   QLoRA run's adapter is merged into the 16/32-bit weights) and checks its logits against the adapter
   model's, exactly as `tunelab merge` does;
2. convert that folder to GGUF (`tunelab.export.gguf`), with the run's prompt format as the file's
   chat template and in the Modelfile (`tunelab.export.ollama`);
3. read the GGUF back into a transformers model from the file alone and compare its logits with the
   merged model's on the merge check's prompts: f32/f16/bf16 must match within the merge tolerance of
   that dtype; quantized types are reported (rounding to 8 or fewer bits moves logits by design).
"""

from __future__ import annotations

import gc
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

from tunelab.errors import TunelabError
from tunelab.export import gguf as gg
from tunelab.export.merge import check_inputs, compare_logits, fill_model_folder, logits_for
from tunelab.export.model_folder import write_model_card, write_model_meta
from tunelab.export.result import ExportResult
from tunelab.inference.target import Target, inference_prompt
from tunelab.outputs import staged_folder

TOLERANCE_KEY = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}  # merge.TOLERANCE's names


def gguf_commands(folder: Path, file_name: str, name: str) -> list[str]:
    gguf_path = folder / file_name
    return [
        f"ollama create {name} -f {folder / 'Modelfile'}",
        f"ollama run {name}",
        f"llama-cli -m {gguf_path} --jinja -cnv --temp 0",
        f"llama-server -m {gguf_path} --jinja --temp 0 --port 8080",
    ]


def engine_name(name: str) -> str:
    """A model name Ollama accepts (lower case letters, digits, '.', '-', '_')."""
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._") or "model"


def export_gguf(target: Target, out: Path, dtype: str, quant: str) -> ExportResult:
    """Write the GGUF folder at `out` (a place `check_model_output` allowed)."""
    from transformers import AutoTokenizer, GenerationConfig

    from tunelab.export.gguf_vocab import read_vocab
    from tunelab.export.ollama import engine_prompt, modelfile
    from tunelab.inference.generate import stop_token_ids
    from tunelab.model.resolve import resolve_model_path

    gg.check_quant(quant)
    base_dir = Path(resolve_model_path(target.base))
    gg.read_hparams(_base_config(target))  # refuse an unsupported architecture before merging anything
    name = engine_name(target.name)
    file_name = f"{name}-{quant}.gguf"
    usage = gguf_commands(out, file_name, name)
    with staged_folder(out) as tmp:
        merged = tmp / "merged-hf"  # scratch: converted, checked against the file, then removed
        merged.mkdir()
        merge_check = fill_model_folder(target, merged, dtype, usage=[])
        hp = gg.read_hparams(json.loads((merged / "config.json").read_text()))
        tokenizer = AutoTokenizer.from_pretrained(merged)
        stops = stop_token_ids(
            SimpleNamespace(generation_config=_generation_config(GenerationConfig, merged)), tokenizer
        )
        prompt = engine_prompt(inference_prompt(target, tokenizer), tokenizer, stops)
        spm_places = [p for p in (target.adapter, base_dir) if p is not None]
        vocab = read_vocab(merged, tokenizer, hp.vocab_size, stops, spm_places)
        summary = gg.write_gguf(merged, tmp / file_name, quant, vocab, prompt.chat_template, name)
        check = _check_file(target, merged, summary.path, quant, hp, tokenizer)
        (tmp / "Modelfile").write_text(modelfile(file_name, prompt, name))
        kind = "merged" if target.adapter is not None else "full"
        write_model_meta(
            tmp,
            target,
            "gguf",
            {
                "quant": quant,
                "file": file_name,
                "dtype_merged": _merged_dtype(merged),
                "merge_check": merge_check.describe(),
                "gguf_check": check,
            },
        )
        write_model_card(
            tmp, target, kind, f"{merge_check.describe()}\n\nGGUF ({quant}): {check}", usage, library="gguf"
        )
        shutil.rmtree(merged)
    notes = [*hp.notes, *prompt.notes]
    if summary.fallbacks:
        shown = ", ".join(f.split(":")[0] for f in summary.fallbacks[:4]) + (
            ", ..." if len(summary.fallbacks) > 4 else ""
        )
        notes.append(
            f"{len(summary.fallbacks)} tensors written F16, their rows not a multiple of the {quant} block of 32 "
            f"(as llama.cpp's converter does): {shown}"
        )
    types = ", ".join(
        f"{t} {n / summary.params:.1%}" for t, n in sorted(summary.params_by_type.items(), key=lambda kv: -kv[1])
    )
    size = f"{summary.bytes / 2**20:.1f} MiB" if summary.bytes >= 2**20 else f"{summary.bytes / 2**10:.0f} KiB"
    wrote = f"{file_name}, {size}, {summary.params:,} parameters ({types}); Modelfile (prompt format: {prompt.format})"
    return ExportResult(out, "gguf", merge_check, usage, notes, checks=[check], wrote=wrote)


def _base_config(target: Target) -> dict:
    """The base model's config.json: from its folder, else (a hub id) from the hub cache, with the one
    offline line when it is not cached and the hub cannot be reached."""
    from tunelab.model.resolve import resolve_model_path

    folder = Path(resolve_model_path(target.base))
    if (folder / "config.json").is_file():
        return json.loads((folder / "config.json").read_text())
    from huggingface_hub import hf_hub_download

    from tunelab.hub import ensure_offline_if_unreachable, unreachable_message

    offline = ensure_offline_if_unreachable()
    revision = target.config.model.revision if target.config is not None else None
    try:
        return json.loads(Path(hf_hub_download(target.base, "config.json", revision=revision)).read_text())
    except Exception as e:  # noqa: BLE001 - not cached, no such repo, gated: the base cannot be read either way
        if offline:
            raise TunelabError(unreachable_message("model.name", target.base)) from None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TunelabError(f"model.name: cannot read config.json of {target.base!r}: {first}") from None


def _generation_config(cls, folder: Path):
    try:
        return cls.from_pretrained(folder)
    except OSError:  # no generation_config.json: the tokenizer's EOS alone
        return None


def _merged_dtype(folder: Path) -> str:
    cfg = json.loads((folder / "config.json").read_text())
    return str(cfg.get("dtype") or cfg.get("torch_dtype"))


def _check_file(target: Target, merged: Path, gguf_file: Path, quant: str, hp: gg.LlamaHparams, tokenizer) -> str:
    """Logits of the model rebuilt from the GGUF file vs the merged folder's, on the merge check's prompts."""
    import torch
    from transformers import AutoModelForCausalLM

    inputs = check_inputs(target, tokenizer)
    # One model in memory at a time: the merged reference first, then the one read from the file.
    ref_model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32, use_safetensors=True)
    reference = logits_for(ref_model, inputs)
    del ref_model
    gc.collect()
    rope = {**hp.rope, "rope_theta": hp.rope_theta} if hp.rope_type in ("llama3", "yarn") else None
    got = logits_for(gg.model_from_gguf(gguf_file, rope), inputs)
    c = compare_logits(reference, got, TOLERANCE_KEY.get(quant, "bf16"))
    c.compared_with = "the merged model's"
    if quant in TOLERANCE_KEY:
        if not c.ok:
            raise TunelabError(
                f"{target.text}: the GGUF file's {c.describe()}",
                hint="nothing was written; report this with the run's config",
            )
        return f"{quant} file read back: {c.describe()}"
    return (
        f"{quant} file read back (dequantized): logits vs the merged model's on {c.prompts} prompts "
        f"({c.tokens} positions): max |diff| {c.max_abs_diff:.2e} (largest |logit| {c.max_abs_logit:.2f}), "
        "same top token at "
        f"{c.argmax_agreement:.1%} of positions (quantized: reported, not held to a tolerance)"
    )
