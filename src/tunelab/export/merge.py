"""`tunelab merge`: fold a LoRA adapter into its base weights and prove the result answers the same.

The base is reloaded unquantized (16- or 32-bit) even when the run trained on a 4-bit base:
merging into 4-bit weights would round the adapter's update into the quantization grid. The merged
folder is written, reloaded from disk, and its logits are compared with the adapter model's on a
few prompts rendered with the run's template; the folder is published only if they match.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.dtypes import TORCH_NAMES, short_name, torch_dtype
from tunelab.errors import TunelabError
from tunelab.export.model_folder import check_model_output, write_model_card, write_model_meta
from tunelab.inference.generate import encode_prompt, stop_token_ids
from tunelab.inference.prompts import instruction_row, prompt_text
from tunelab.inference.target import Target, load_target
from tunelab.outputs import staged_folder

CHECK_INSTRUCTIONS = [
    ("Reverse the order of the words.", "cat dog sun"),
    ("What is 3 plus 5?", ""),
    ("Write the word in upper case.", "river"),
    ("Give a short answer: what colour is the sky on a clear day?", ""),
]
# Largest |merged - adapter| logit difference allowed, relative to the largest |logit|. The merged
# weights W + BA are rounded to the saved dtype once, the adapter model rounds W and BA x apart.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}


@dataclass
class LogitCheck:
    prompts: int
    tokens: int
    max_abs_diff: float
    max_abs_logit: float
    tolerance: float
    argmax_agreement: float
    compared_with: str = "the adapter model's"

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance * max(self.max_abs_logit, 1.0)

    def describe(self) -> str:
        verdict = "match" if self.ok else "DO NOT match"
        return (
            f"saved logits {verdict} {self.compared_with} on {self.prompts} prompts ({self.tokens} positions): "
            f"max |diff| {self.max_abs_diff:.2e} (allowed {self.tolerance * max(self.max_abs_logit, 1.0):.2e}), "
            f"same top token at {self.argmax_agreement:.1%} of positions"
        )


def saved_dtype(model_path: str) -> str:
    """The dtype the base model was published in (config.json), as bf16 / fp16 / fp32."""
    cfg_file = Path(model_path) / "config.json"
    name = None
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text())
        name = cfg.get("dtype") or cfg.get("torch_dtype")
    else:
        from transformers import AutoConfig

        name = str(getattr(AutoConfig.from_pretrained(model_path), "dtype", "") or "").removeprefix("torch.")
    return short_name(name)


def check_inputs(target: Target, tokenizer) -> list[list[int]]:
    """Token ids of the check prompts, rendered with the target's prompt format."""
    inputs = []
    for instruction, inp in CHECK_INSTRUCTIONS:
        try:
            row = instruction_row(instruction, inp, target.prompt)
        except TunelabError:  # a custom template with other fields: ask the bare instruction
            row = None
        inputs.append(encode_prompt(tokenizer, prompt_text(row, target.prompt, tokenizer) if row else instruction))
    return inputs


def logits_for(model, inputs: list[list[int]]) -> list[Any]:
    """Float32 CPU logits of each input (one forward pass each: no padding to perturb them)."""
    import torch

    from tunelab.inference.generate import inference_mode

    device = next(model.parameters()).device
    out = []
    with inference_mode(model):
        for ids in inputs:
            out.append(model(input_ids=torch.tensor([ids], device=device)).logits[0].float().cpu())
    return out


def compare_logits(ref: list[Any], got: list[Any], dtype: str) -> LogitCheck:
    import torch

    diff = max(float((a - b).abs().max()) for a, b in zip(ref, got, strict=True))
    scale = max(float(a.abs().max()) for a in ref)
    same = torch.cat([(a.argmax(-1) == b.argmax(-1)).float() for a, b in zip(ref, got, strict=True)])
    return LogitCheck(len(ref), int(same.numel()), diff, scale, TOLERANCE[dtype], float(same.mean()))


def save_full_model(model, tokenizer, folder: Path, dtype: str) -> None:
    """Weights (safetensors) in `dtype`, tokenizer and generation config, ready for serving engines."""

    model = model.to(torch_dtype(dtype))
    model.config.use_cache = True  # training turned it off; generate() and serving engines want the KV cache
    gen = model.generation_config
    if gen is not None:
        eos = stop_token_ids(model, tokenizer)
        gen.eos_token_id = eos[0] if len(eos) == 1 else eos
        gen.pad_token_id = tokenizer.pad_token_id
        if tokenizer.bos_token_id is not None:
            gen.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(folder)  # transformers 5 writes safetensors only
    tokenizer.save_pretrained(folder)


def merge_target(
    target: Target,
    out: Path,
    dtype: str = "auto",
    overwrite: bool = False,
    device: str | None = None,
    usage: list[str] | None = None,
) -> LogitCheck:
    """Merge the target's adapter into its base, write `out`, and return the logit check.

    Raises when the merged model, reloaded from disk, does not reproduce the adapter model's
    logits within tolerance; `out` is then left untouched. `overwrite`: replace an earlier model
    folder tunelab wrote at `out` (never the source, nor files tunelab did not write).
    """
    if target.adapter is None:
        raise TunelabError(
            f"{target.text}: a full model, there is no adapter to merge",
            hint="tunelab export --format hf copies it as it is",
        )
    out = check_model_output(out, target, overwrite)
    return write_full_model(target, out, dtype, device, usage)


def write_full_model(
    target: Target,
    out: Path,
    dtype: str = "auto",
    device: str | None = None,
    usage: list[str] | None = None,
) -> LogitCheck:
    """A standalone Hugging Face folder of the target (adapter merged when there is one) at `out` (a place
    `check_model_output` allowed), checked by reloading it; staged, so `out` appears only once it passed."""
    with staged_folder(out) as tmp:
        return fill_model_folder(target, tmp, dtype, device, usage)


def fill_model_folder(
    target: Target, folder: Path, dtype: str = "auto", device: str | None = None, usage: list[str] | None = None
) -> LogitCheck:
    """Write the target's full model (adapter merged) into the empty `folder` and check it by reloading it."""
    from transformers import AutoModelForCausalLM

    from tunelab.model.precision import device_for
    from tunelab.model.resolve import resolve_model_path

    if dtype == "auto":
        dtype = saved_dtype(resolve_model_path(target.base))
    if dtype not in TORCH_NAMES:
        raise TunelabError(f"--dtype: {dtype!r} is not one of bf16, fp16, fp32, auto")
    kind = "merged" if target.adapter is not None else "full"
    dev = device_for(target.model_cfg.model_copy(update={"device": device or target.model_cfg.device}))
    # fp16 matmuls are not a CPU thing: work in fp32 there and round once when saving.
    work_dtype = "fp32" if dtype == "fp16" and dev == "cpu" else dtype
    model, tokenizer = load_target(target, quantize=False, device=dev, dtype=work_dtype)
    inputs = check_inputs(target, tokenizer)
    reference = logits_for(model, inputs)
    if kind == "merged":
        try:
            model = model.merge_and_unload(safe_merge=True)
        except ValueError as e:  # safe_merge found NaNs in the merged weights
            raise TunelabError(f"{target.text}: merging produced broken weights: {e}") from None
    save_full_model(model, tokenizer, folder, dtype)
    del model
    gc.collect()
    reloaded = AutoModelForCausalLM.from_pretrained(
        folder,
        dtype=torch_dtype(work_dtype),
        device_map={"": dev},
        use_safetensors=True,
        trust_remote_code=target.model_cfg.trust_remote_code,
    )
    check = compare_logits(reference, logits_for(reloaded, inputs), dtype)
    check.compared_with = "the adapter model's" if kind == "merged" else "the source model's"
    del reloaded
    if not check.ok:
        raise TunelabError(
            f"{target.text}: {check.describe()}",
            hint="the folder was not written; report this with the run's config",
        )
    write_model_meta(folder, target, kind, {"dtype": dtype, "check": check.describe()})
    write_model_card(folder, target, kind, check.describe() if kind == "merged" else None, usage or [])
    return check
