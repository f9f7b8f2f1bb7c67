"""TensorBoard: event files under `<tracking dir>/tensorboard/<run name>/`. Scalars per step, the
config and run facts as text, sample tables as markdown text per step, final metrics as hparams.
TensorBoard has no artifacts; models are logged by the other backends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tunelab.runs.reading import flatten
from tunelab.tracking.base import Sink
from tunelab.tracking.trackio_backend import scalars


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", "<br>")


def samples_markdown(table: list[dict[str, Any]]) -> str:
    """A markdown table (TensorBoard renders text summaries as markdown)."""
    lines = ["| step | prompt | generation | reference | settings |", "|---|---|---|---|---|"]
    for r in table:
        lines.append(
            "| "
            + " | ".join(
                _md_cell(x)
                for x in (
                    r["step"],
                    r["prompt"],
                    r["generation"],
                    r["reference"],
                    json.dumps(r["settings"], sort_keys=True),
                )
            )
            + " |"
        )
    return "\n".join(lines)


class TensorBoardSink(Sink):
    name = "tensorboard"

    def __init__(self, tracking_dir: Path, run_name: str):
        self.logdir = tracking_dir / "tensorboard" / run_name
        self.writer = None
        self.config: dict[str, Any] = {}

    def store_paths(self) -> list[Path]:
        return [self.logdir]

    def start(self, info: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.logdir))
        self.config = info["config"]
        self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(info["config"], sort_keys=False) + "```", 0)
        facts = {k: v for k, v in info.items() if k != "config"}
        self.writer.add_text("run", "```json\n" + json.dumps(facts, indent=2, default=str) + "\n```", 0)

    def where(self) -> dict[str, Any]:
        return {"logdir": str(self.logdir)}

    def log_metrics(self, record: dict[str, Any]) -> None:
        for k, v in scalars(record).items():
            self.writer.add_scalar(k, v, record["step"])

    def log_system(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def log_samples(self, step: int, table: list[dict[str, Any]]) -> None:
        self.writer.add_text("samples", samples_markdown(table), step)
        self.writer.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        hp = {k: v for k, v in flatten(self.config).items() if isinstance(v, int | float | str | bool)}
        final = {
            f"final/{k}": float(v)
            for k, v in summary.items()
            if k.startswith("final_") and isinstance(v, int | float) and not isinstance(v, bool)
        }
        if final:
            # written into this run's own folder (SummaryWriter.add_hparams would open a new one)
            for s in hparams(hp, final):
                self.writer.file_writer.add_summary(s)
            for k, v in final.items():
                self.writer.add_scalar(k, v, int(summary.get("steps") or 0))
        self.writer.close()
