"""The one place tunelab reaches into the libraries' internals or mirrors their checks.

Every function here names what it depends on; tests/test_compat.py calls each one against the
installed versions, so a library upgrade that moves something breaks that test, not a run.
"""

from __future__ import annotations

import functools


@functools.cache
def optimizer_names() -> list[str]:
    """The `optim` values transformers' TrainingArguments accepts (`training.optimizer`)."""
    from transformers.training_args import OptimizerNames

    return [o.value for o in OptimizerNames]


@functools.cache
def scheduler_names() -> list[str]:
    """The `lr_scheduler_type` values transformers accepts (`training.lr_scheduler`)."""
    from transformers.trainer_utils import SchedulerType

    return [s.value for s in SchedulerType]


def checkpoint_safe_globals():
    """The numpy types transformers' Trainer allows when it loads rng_state.pth weights-only
    (`transformers.trainer_pt_utils.safe_globals`), as a context manager."""
    from transformers.trainer_pt_utils import safe_globals

    return safe_globals()
