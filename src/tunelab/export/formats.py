"""`tunelab export`: a folder that serving engines load as it is, and the exact commands to serve it.

`hf`: a standalone Hugging Face model folder (LoRA merged, checked like `tunelab merge`) for vLLM,
TGI and transformers. `adapter`: the PEFT adapter alone, for engines that serve LoRA adapters over
a shared base (vLLM `--enable-lora`, TGI `LORA_ADAPTERS`, PEFT). `gguf`: one GGUF file for llama.cpp,
Ollama and LM Studio with an Ollama Modelfile, converted from the merged, unquantized weights (a
QLoRA run is merged into its 16/32-bit base first, never exported from 4-bit tensors).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.export.gguf import check_quant
from tunelab.export.gguf_export import export_gguf
from tunelab.export.merge import write_full_model
from tunelab.export.model_folder import (
    check_model_output,
    copy_tokenizer_files,
    is_hub_id,
    write_model_card,
    write_model_meta,
)
from tunelab.export.result import ExportResult
from tunelab.inference.target import Target, base_model_id
from tunelab.outputs import staged_folder

TGI_IMAGE = "ghcr.io/huggingface/text-generation-inference:latest"
FORMATS = ("hf", "adapter", "gguf")
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank accepts


def hf_commands(folder: Path, name: str) -> list[str]:
    return [
        f"vllm serve {folder} --served-model-name {name}",
        f"docker run --gpus all --shm-size 1g -p 8080:80 -v {folder}:/data/model {TGI_IMAGE} --model-id /data/model",
        f'python -c "from transformers import pipeline; '
        f"print(pipeline('text-generation', '{folder}')('Hello')[0]['generated_text'])\"",
        f"tunelab serve {folder}",
    ]


def adapter_commands(folder: Path, name: str, base: str, rank: int) -> list[str]:
    rank_flag = f" --max-lora-rank {next((r for r in VLLM_LORA_RANKS if r >= rank), rank)}" if rank > 16 else ""
    return [
        f"vllm serve {base} --enable-lora --lora-modules {name}={folder}{rank_flag}",
        f"docker run --gpus all --shm-size 1g -p 8080:80 -v {folder}:/data/adapter "
        f"-e LORA_ADAPTERS={name}=/data/adapter {TGI_IMAGE} --model-id {base}",
        f'python -c "from transformers import AutoModelForCausalLM; from peft import PeftModel; '
        f"m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained('{base}'), '{folder}')\"",
        f"tunelab serve {base} --adapter {name}={folder}",
    ]


def check_format(fmt: str, quant: str | None) -> None:
    """The --format and --quant of `tunelab export`, checked before anything loads."""
    if fmt not in FORMATS:
        raise TunelabError(f"--format: {fmt!r} is not hf, adapter or gguf")
    if quant is not None:
        if fmt != "gguf":
            raise TunelabError("--quant: only with --format gguf")
        check_quant(quant)


def hub_token() -> str:
    """The hub token `--push-to-hub` uploads with: from the environment only, never the command line."""
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise TunelabError(
            "--push-to-hub: HF_TOKEN is not set",
            hint="export HF_TOKEN=<a write token>; tunelab reads it from the environment only",
        )
    return token


def export_target(
    target: Target, out: Path, fmt: str, dtype: str = "auto", overwrite: bool = False, quant: str | None = None
) -> ExportResult:
    """Write `out` in the given format; the result lists the commands that serve it.

    `quant` (gguf only): the GGUF tensor type, f16 when None. `overwrite`: replace an earlier model folder
    tunelab wrote at `out` (never the source, nor files tunelab did not write)."""
    check_format(fmt, quant)
    if fmt == "adapter" and target.adapter is None:
        raise TunelabError(f"{target.text}: a full model has no adapter to export", hint="use --format hf")
    out = check_model_output(out, target, overwrite)
    if fmt == "gguf":
        return export_gguf(target, out, dtype, quant or "f16")
    if fmt == "hf":
        usage = hf_commands(out, target.name)
        check = write_full_model(target, out, dtype, usage=usage)
        return ExportResult(
            out, "merged" if target.adapter is not None else "full", check, usage, wrote="Hugging Face model folder"
        )
    return _export_adapter(target, out)


def _export_adapter(target: Target, out: Path) -> ExportResult:
    src = target.adapter
    assert src is not None
    if not (src / "adapter_model.safetensors").is_file():
        raise TunelabError(f"{src}: no adapter_model.safetensors (tunelab exports safetensors only)")
    config = json.loads((src / "adapter_config.json").read_text())
    base = base_model_id(target)
    # Engines resolve the base by this field: a hub id when the run used one, else the local folder.
    config["base_model_name_or_path"] = base if is_hub_id(base) else target.base
    notes = []
    if config.get("use_dora") or config.get("modules_to_save"):
        notes.append(
            "vLLM's LoRA serving does not take DoRA adapters or adapters with modules_to_save; "
            "export --format hf for vLLM"
        )
    usage = adapter_commands(out, target.name, config["base_model_name_or_path"], int(config.get("r") or 0))
    with staged_folder(out) as tmp:
        shutil.copy2(src / "adapter_model.safetensors", tmp / "adapter_model.safetensors")
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
        copy_tokenizer_files(src, tmp)
        write_model_meta(tmp, target, "adapter")
        write_model_card(tmp, target, "adapter", None, usage)
    return ExportResult(out, "adapter", None, usage, notes, wrote="PEFT adapter")


def push_to_hub(folder: Path, repo: str, private: bool = True) -> str:
    """Upload `folder` to the hub repo (created if missing) with the token in HF_TOKEN; the repo's URL."""
    token = hub_token()
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message="Upload from tunelab export")
    except Exception as e:  # network, auth, offline mode: all the user's to fix; never echo the token
        msg = (str(e).splitlines() or [type(e).__name__])[0].replace(token, "***")[:300]
        raise TunelabError(
            f"--push-to-hub {repo}: {msg}", hint="needs network access and a token with write access"
        ) from None
    return f"https://huggingface.co/{repo}"
