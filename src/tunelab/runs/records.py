"""The typed records a run directory holds: its summary (`summary.json`), its data statistics, and
the metadata of every model folder tunelab writes (`tunelab_model.json`).

Every reader and writer goes through these models, so a key is spelled once. Records read from
disk are lenient (fields may be missing in a failed run's summary or a run from an older tunelab;
unknown keys are kept), records written are complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunelab.runs.damage import DamagedRun, read_json_record, validation_problem
from tunelab.runs.files import read_json

MODEL_META = "tunelab_model.json"
_LEGACY_FINAL = "tunelab_final.json"  # what final/ held before tunelab_model.json (read, never written)


class Record(BaseModel):
    model_config = ConfigDict(extra="allow")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)


class DataStats(Record):
    """What the data pipeline read and made of it (before training starts)."""

    rows_read: int | None = None
    rows_skipped: dict[str, int] = Field(default_factory=dict)
    train_rows: int | None = None
    test_rows: int | None = None
    train_examples: int | None = None
    test_examples: int | None = None
    train_tokens: int | None = None
    train_loss_tokens: int | None = None
    too_long_truncated: int = 0
    too_long_dropped: int = 0
    no_response_tokens: int = 0
    packing_efficiency: float | None = None


class Parameters(Record):
    total: int = 0
    trainable: int = 0
    trainable_pct: float = 0.0


Status = Literal["completed", "failed", "interrupted", "pruned"]


class Summary(Record):
    """summary.json. A finished run has every field; a failed or interrupted one at least
    status, steps and the reason."""

    status: str
    steps: int | None = None
    reason: str | None = None
    run_dir: str | None = None
    base_model: str | None = None
    adapter: str | None = None
    quantization: int | None = None
    device: str | None = None
    host: str | None = None
    gradient_checkpointing: bool | None = None
    kernels: str | None = None  # training.kernels as resolved: liger or none
    resumed_from: str | None = None
    wall_time_s: float | None = None
    train_time_s: float | None = None
    eval_time_s: float | None = None
    sample_time_s: float | None = None
    train_tokens: int | None = None
    session_tokens: int | None = None
    tokens_per_s: float | None = None
    model_flops_per_token: float | None = None
    achieved_tflops: float | None = None
    mfu: float | None = None  # achieved / peak_tflops, the ranks' matmul peaks measured at the end of the run
    peak_tflops: float | None = None
    peak_rss_mb: float | None = None  # the whole job: summed over its processes (each one's in per_rank)
    peak_gpu_mb: float | None = None
    world_size: int | None = None  # processes that trained together
    strategy: str | None = None  # ddp, fsdp2, deepspeed_zero2/3 (several processes)
    global_batch: int | None = None  # sequences per optimizer step: batch_size x grad_accum x world_size
    per_rank: list[dict[str, Any]] | None = (
        None  # several processes: each rank's host, devices, tokens, speed, MFU, memory
    )
    final_train_loss: float | None = None
    final_eval_loss: float | None = None
    samples_exact_match_before: float | None = None
    samples_exact_match_after: float | None = None
    parameters: Parameters | None = None
    data: DataStats | None = None
    config: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if d.get("peak_gpu_mb") is None:
            d.pop("peak_gpu_mb", None)  # a CPU run has no GPU peak (not a zero one)
        return d

    @classmethod
    def read(cls, path: Path) -> Summary | None:
        """The summary at `path`; None when there is none yet; `DamagedRun` when the file is there but
        is not a summary (not JSON, no status, a field of the wrong type). Losses may be NaN or
        infinite: a run that diverged records that, and readers show it rather than rank it."""
        data = read_json_record(path)
        if data is None:
            return None
        if not isinstance(data.get("status"), str):
            raise DamagedRun(path, "no status (completed, failed, interrupted or pruned)")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise DamagedRun(path, validation_problem(e)) from None


ModelKind = Literal["adapter", "full", "merged", "gguf"]


class ModelMeta(Record):
    """tunelab_model.json, in every model folder tunelab writes (a run's final/, merge and export
    output): what the folder is, what it rests on, and how it must be asked."""

    kind: ModelKind
    base_model: str | None = None  # as the user named it: a hub id, tiny: preset or folder
    base_model_path: str | None = None  # where it was loaded from (a local folder, or the hub id)
    revision: str | None = None
    adapter: str | None = None  # lora | none
    quantization: int | None = None
    step: int | None = None
    prompt: dict[str, Any] | None = None  # the PromptConfig it was trained with
    source: str | None = None  # what merge / export read (a run, folder or artifact)
    dtype: str | None = None
    check: str | None = None  # the logit check of a merge

    @property
    def prompt_format(self) -> str | None:
        return (self.prompt or {}).get("format")

    def write(self, folder: Path) -> None:
        (Path(folder) / MODEL_META).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def read(cls, folder: Path) -> ModelMeta | None:
        """The folder's metadata; from a run written before tunelab_model.json, its tunelab_final.json."""
        folder = Path(folder)
        data = read_json(folder / MODEL_META)
        if data is not None:
            data.setdefault("kind", "adapter" if (folder / "adapter_config.json").is_file() else "full")
            try:
                return cls.model_validate(data)
            except ValueError:
                return None
        legacy = read_json(folder / _LEGACY_FINAL)
        if legacy is None:
            return None
        fmt = legacy.pop("prompt_format", None)
        kind = "adapter" if legacy.get("adapter") == "lora" else "full"
        return cls.model_validate({**legacy, "kind": kind, "prompt": {"format": fmt} if fmt else None})

    @classmethod
    def present(cls, folder: Path) -> bool:
        return (Path(folder) / MODEL_META).is_file() or (Path(folder) / _LEGACY_FINAL).is_file()
