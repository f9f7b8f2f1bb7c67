"""The run directory and everything written into it: `RunDir` (layout, lock, atomic writes), the
typed records (`Summary`, `EvalRecord`, `DataStats`, `ModelMeta`), the metric table (`metric_table`),
the run index behind `tunelab runs`, and the readers the report uses. The only package that knows
file names inside a run."""

from tunelab.runs.damage import DamagedRun
from tunelab.runs.dir import RunDir, RunLock, check_run_dir, prepare_run_dir, rotate_checkpoints, step_dir_name
from tunelab.runs.records import MODEL_META, DataStats, EvalRecord, ModelMeta, Summary

__all__ = [
    "MODEL_META",
    "DamagedRun",
    "DataStats",
    "EvalRecord",
    "ModelMeta",
    "RunDir",
    "RunLock",
    "Summary",
    "check_run_dir",
    "prepare_run_dir",
    "rotate_checkpoints",
    "step_dir_name",
]
