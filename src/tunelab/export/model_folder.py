"""Writing a model folder for others to load: staged then renamed, a model card, tunelab's metadata.

Merge and export both write through here, so every folder tunelab hands out names its base model,
data and config, and carries the prompt format the model must be asked in.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from tunelab.inference.target import Target, base_model_id, source_folders
from tunelab.outputs import Output, check_output
from tunelab.runs import ModelMeta, RunDir
from tunelab.runs.metric_table import FINAL_EVAL_LOSS, FINAL_TRAIN_LOSS

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)


# What merge and export write: a model folder, recognized by its tunelab_model.json (a run's final/
# carries one too, but check_output refuses any folder inside a run directory).
MODEL_FOLDER = Output("a model folder", ModelMeta.present, folder=True)


def check_model_output(out: Path, target: Target, overwrite: bool) -> Path:
    """Where merge / export may write `out` (see `tunelab.outputs.check_output`); before any weights load."""
    return check_output(out, "-o", MODEL_FOLDER, source_folders(target), overwrite)


def is_hub_id(name: str) -> bool:
    from tunelab.refs import RefError, parse_model

    try:
        return parse_model(name).kind == "hub"
    except RefError:
        return False


def write_model_meta(folder: Path, target: Target, kind: str, extra: dict[str, Any] | None = None) -> None:
    """tunelab_model.json: what this folder is, where it came from, the prompt format to ask it in."""
    extra = dict(extra or {})
    known = {k: extra.pop(k) for k in list(extra) if k in ModelMeta.model_fields}
    ModelMeta(
        kind=kind,
        source=target.text,
        base_model=base_model_id(target),
        prompt=target.prompt.model_dump(mode="json"),
        quantization=target.quantization.bits or None,
        **known,
        **extra,
    ).write(folder)


def write_model_card(
    folder: Path, target: Target, kind: str, check: str | None, usage: list[str], library: str | None = None
) -> None:
    """README.md naming the base model, the data and the config, with the logit check and the serving commands.

    `library` is the card's `library_name` (default: peft for an adapter, transformers otherwise; gguf for
    GGUF files)."""
    base = base_model_id(target)
    summary = _run_summary(target)
    what = {
        "merged": "A LoRA fine-tune, its adapter merged into the base weights",
        "full": "A fully fine-tuned model",
        "adapter": "A LoRA adapter (PEFT) to load over its base model",
    }[kind]
    front = _card_front(target, base, library or ("peft" if kind == "adapter" else "transformers"))
    lines = ["---", front, "---", "", f"# {target.name}", "", f"{what}, trained with tunelab.", ""]
    lines += ["## Base model", "", f"`{base}`"]
    if target.quantization.bits:
        lines += [
            "",
            f"Trained with QLoRA on a {target.quantization.bits}-bit base; the merge reloaded the base unquantized.",
        ]
    lines += ["", "## Data", "", *_data_lines(target, summary)]
    if summary:
        lines += [
            "",
            "## Training",
            "",
            f"- steps: {summary.get('steps')}, final train loss: {summary.get(FINAL_TRAIN_LOSS)}, "
            f"final eval loss: {summary.get(FINAL_EVAL_LOSS)}",
        ]
    if check:
        lines += ["", "## Merge check", "", check]
    lines += ["", "## Use it", "", "```bash", *usage, "```"]
    if target.run_dir is not None and (target.run_dir / "config.yaml").is_file():
        lines += [
            "",
            "## Config",
            "",
            "The run's resolved config (secrets redacted):",
            "",
            "```yaml",
            (target.run_dir / "config.yaml").read_text().rstrip(),
            "```",
        ]
    (folder / "README.md").write_text("\n".join(lines) + "\n")


def _card_front(target: Target, base: str, library: str) -> str:
    """The card's YAML front matter: the hub reads its base model and datasets from here."""
    cfg = target.config
    front: dict[str, Any] = {
        "library_name": library,
        "tags": ["tunelab", "lora" if target.adapter else "full-fine-tune"],
    }
    if is_hub_id(base):
        front["base_model"] = base
    hub_data = [s.path for s in cfg.data.train_sources if is_hub_id(s.path)] if cfg is not None else []
    if hub_data:
        front["datasets"] = hub_data
    return yaml.safe_dump(front, sort_keys=False).strip()


def _data_lines(target: Target, summary: dict[str, Any]) -> list[str]:
    """The card's data section: each source, the test split, the row and token counts, the prompt format."""
    if target.config is None:
        return ["Not recorded (the source was not a tunelab run directory)."]
    d = target.config.data
    lines = []
    for src in d.train_sources:
        share = (
            f", weight {src.weight}" if src.weight is not None else f", {src.rows} rows" if src.rows is not None else ""
        )
        lines.append(f"- train: `{src.path}` (split `{src.split}`{share})")
    if d.test is not None:
        lines.append(f"- test: `{d.test.path}` (split `{d.test.split}`)")
    elif d.test_size is not None:
        lines.append(f"- test: {d.test_size} carved from train (seed {d.seed})")
    stats = summary.get("data") or {}
    if stats:
        lines.append(
            f"- {stats.get('train_rows', '?')} train rows, {stats.get('test_rows', '?')} test rows, "
            f"{stats.get('train_tokens', '?')} train tokens"
        )
    lines.append(f"- prompt format: `{target.config.prompt.format}` (loss on {target.config.prompt.train_on})")
    return lines


def _run_summary(target: Target) -> dict[str, Any]:
    if target.run_dir is None:
        return {}
    s = RunDir(target.run_dir).read_summary()
    return s.to_dict() if s is not None else {}


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
