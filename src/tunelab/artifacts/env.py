"""Keep every tracker client inside the tracking directory, offline and without telemetry, for as
long as tunelab uses it.

Trackers default to folders in the home directory (~/.cache/huggingface/trackio, ~/.config/wandb,
./wandb, ./mlruns) and some phone home. `isolated(dir)` points them into `dir` through their
documented environment variables for the duration of a block, and puts everything back after:
a variable the user set is left as the user set it. trackio reads `TRACKIO_DIR` once, at import,
into module constants; `tunelab.compat.point_trackio_at` re-points those too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tunelab.compat import point_trackio_at  # noqa: F401 (the trackio stores and sink take it from here)

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


def prepare(tracking_dir: str | Path) -> Path:
    """The tracking directory, absolute and created."""
    d = Path(tracking_dir).expanduser().resolve()
    d.mkdir(parents=True, exist_ok=True)
    return d


def variables(d: Path, timeout_s: float = 30.0) -> dict[str, str]:
    """The environment that keeps the trackers in `d`."""
    return {
        **_QUIET,
        "WANDB_DIR": str(d),  # W&B adds wandb/ below it
        "WANDB_CACHE_DIR": str(d / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(d / "wandb-config"),
        "WANDB_DATA_DIR": str(d / "wandb-data"),
        "WANDB_ARTIFACT_DIR": str(d / "wandb-artifacts"),
        "GRADIO_TEMP_DIR": str(d / "gradio-tmp"),
        "MLFLOW_TRACKING_DIR": str(d),  # not read by MLflow itself; tunelab's default store lives here
        # an unreachable MLflow server must fail fast instead of retrying for minutes
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(max(1, timeout_s))),
    }


@contextmanager
def isolated(tracking_dir: str | Path, timeout_s: float = 30.0) -> Iterator[Path]:
    """Trackers pointed at `tracking_dir` for the block (only variables the user has not set), then restored."""
    d = prepare(tracking_dir)
    added = {k: v for k, v in variables(d, timeout_s).items() if k not in os.environ}
    os.environ.update(added)
    previous_trackio = os.environ.get("TRACKIO_DIR")
    restore = point_trackio_at(d / "trackio")
    try:
        yield d
    finally:
        for k in added:
            os.environ.pop(k, None)
        restore()
        if previous_trackio is None:
            os.environ.pop("TRACKIO_DIR", None)
        else:
            os.environ["TRACKIO_DIR"] = previous_trackio
