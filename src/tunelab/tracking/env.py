"""Keep every tracker inside the tracking directory, offline and without telemetry.

Trackers default to folders in the home directory (~/.cache/huggingface/trackio, ~/.config/wandb,
./wandb, ./mlruns) and some phone home. `isolate(dir)` points all of them into `dir` through their
documented environment variables before their first use. trackio reads `TRACKIO_DIR` once, at
import, into module constants; `point_trackio_at` re-points those constants too, which is the one
place tunelab pins trackio's internals (checked by tests/test_tracking.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Telemetry and analytics switches honoured by the trackers and the libraries they pull in.
_QUIET = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "WANDB_SILENT": "true",
    "WANDB_DISABLE_CODE": "true",
    "WANDB_DISABLE_GIT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def isolate(tracking_dir: str | Path, timeout_s: float = 30.0) -> Path:
    """Point trackio, W&B, MLflow and gradio at `tracking_dir`; telemetry off. Returns the absolute dir."""
    d = Path(tracking_dir).expanduser().resolve()
    d.mkdir(parents=True, exist_ok=True)
    for k, v in _QUIET.items():
        os.environ.setdefault(k, v)
    os.environ.update({
        "WANDB_DIR": str(d),  # W&B adds wandb/ below it
        "WANDB_CACHE_DIR": str(d / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(d / "wandb-config"),
        "WANDB_DATA_DIR": str(d / "wandb-data"),
        "WANDB_ARTIFACT_DIR": str(d / "wandb-artifacts"),
        "GRADIO_TEMP_DIR": str(d / "gradio-tmp"),
        "MLFLOW_TRACKING_DIR": str(d),  # not read by MLflow itself; tunelab's default store lives here
    })
    # An unreachable MLflow server must fail fast instead of retrying for minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(1, timeout_s))))
    point_trackio_at(d / "trackio")
    return d


def point_trackio_at(trackio_dir: str | Path) -> Path:
    """Make trackio read and write `trackio_dir`, whether or not trackio is imported yet."""
    d = Path(trackio_dir).resolve()
    os.environ["TRACKIO_DIR"] = str(d)
    values = {"TRACKIO_DIR": d, "MEDIA_DIR": d / "media", "ARTIFACTS_DIR": d / "artifacts"}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "trackio" or name.startswith("trackio.")):
            continue
        for attr, value in values.items():
            if isinstance(getattr(module, attr, None), Path):
                setattr(module, attr, value)
    return d


def tracking_dir(cfg) -> Path:
    """The run config's tracking directory: `tracking.dir`, default `<output.dir>/.tracking`."""
    return Path(cfg.tracking.dir or Path(cfg.output.dir) / ".tracking").expanduser()


def default_tracking_dir() -> Path:
    """Where commands without a config look: $TUNELAB_TRACKING_DIR, else ./runs/.tracking."""
    return Path(os.environ.get("TUNELAB_TRACKING_DIR") or "runs/.tracking").expanduser()
