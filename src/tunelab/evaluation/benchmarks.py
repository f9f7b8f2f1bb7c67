"""`tunelab eval --tasks`: lm-evaluation-harness benchmarks on the target and its baseline.

The models are the ones `tunelab eval` already loaded, as the run trained them (a 4-bit base with its
adapter; the baseline through `disable_adapter()` or its own weights), wrapped in lm-eval's `HFLM`, so
a benchmark measures exactly what the held-out metrics measure. Tasks come from tunelab's shipped
folder (`evaluation/tasks/`: `tunelab_synthetic`, offline), a task folder or YAML file the user
names, or lm-eval's registry (hub data: it must be in the local cache when the hub is unreachable).
Every task is loaded once before any weights are, so an unknown name or missing data is one line
and costs nothing. Scores carry lm-eval's own standard errors.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.evaluation.shipped_tasks import SYNTHETIC_TASK, TASKS_DIR

BOOTSTRAP_ITERS = 1000  # lm-eval's stderr of a mean is closed-form; this only bounds BLEU-like metrics' bootstrap
SEED = 1234  # lm-eval's default seeds, passed explicitly so a rerun asks the same few-shot examples
TASKS_HINT = f"name a task folder or YAML file, {SYNTHETIC_TASK} (shipped with tunelab), or an lm-eval task"


@dataclass(frozen=True)
class TaskScore:
    """One task's primary metric (the first of its metric list) for one model, as lm-eval computed it."""

    metric: str
    value: float
    stderr: float | None
    higher_is_better: bool
    examples: int | None


@dataclass
class Benchmarks:
    """The tasks `--tasks` named, checked and loadable: `specs` go to lm-eval as they are, `names` are
    the task names its results (and `--max-drop`) use."""

    manager: Any  # lm_eval.tasks.TaskManager over the shipped folder, the user's folders and maybe the registry
    specs: list[str]
    names: list[str]


def parse_task_list(values: list[str]) -> list[str]:
    """`--tasks a,b --tasks c` as ["a", "b", "c"], each once; an empty name is a user error."""
    names = [n.strip() for v in values for n in v.split(",")]
    if not names or not all(names):
        raise TunelabError(f"--tasks {','.join(values)!r}: an empty task name", hint=TASKS_HINT)
    return list(dict.fromkeys(names))


def load_benchmarks(values: list[str]) -> Benchmarks:
    """The tasks named by `--tasks`, each loaded once (its data read) to prove it can run; a name lm-eval
    does not know, a folder without tasks or data that cannot be read is a TunelabError naming it."""
    from tunelab.hub import ensure_offline_if_unreachable

    names = parse_task_list(values)
    _require_lm_eval()
    folders = [Path(n).expanduser() for n in names if Path(n).expanduser().is_dir()]
    with quiet_lm_eval():
        from lm_eval.tasks import TaskManager

        manager = TaskManager(include_path=[str(TASKS_DIR), *map(str, folders)], include_defaults=False)
        if any(not _is_path(n) and n not in manager.all_tasks for n in names):  # lm-eval's registry: ~10 s to index
            manager = TaskManager(include_path=[str(TASKS_DIR), *map(str, folders)])
        specs = [s for n in names for s in _specs(n, manager)]
        offline = ensure_offline_if_unreachable()
        loaded = [name for spec in specs for name in _load(manager, spec, offline)]
    return Benchmarks(manager, specs, list(dict.fromkeys(loaded)))


def _require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise TunelabError(
            "--tasks runs EleutherAI's lm-eval, which is not installed here", hint="pip install 'tunelab[benchmarks]'"
        ) from None


def _is_path(name: str) -> bool:
    p = Path(name).expanduser()
    return p.is_dir() or (p.suffix in (".yaml", ".yml") and p.is_file())


def _specs(name: str, manager) -> list[str]:
    """What lm-eval loads for one `--tasks` entry: a folder's tasks, a YAML file's path, a known name."""
    p = Path(name).expanduser()
    if p.is_dir():
        root = p.resolve()
        found = [
            e.name
            for e in manager.task_index.values()
            if e.kind.name in ("TASK", "PY_TASK") and e.yaml_path is not None and root in e.yaml_path.resolve().parents
        ]
        if not found:
            raise TunelabError(f"--tasks {name}: no lm-eval task YAML (a `task:` key) in this folder", hint=TASKS_HINT)
        return sorted(found)
    if _is_path(name) or name in manager.all_tasks:
        return [str(p) if _is_path(name) else name]
    close = difflib.get_close_matches(name, manager.all_tasks, n=3)
    raise TunelabError(
        f"--tasks {name}: no such lm-eval task" + (f" (did you mean {', '.join(close)}?)" if close else ""),
        hint=TASKS_HINT,
    )


def _load(manager, spec: str, offline: bool) -> list[str]:
    """Load one task spec (reading its data) and return its task names; a failure is one line."""
    import yaml

    try:
        loaded = manager.load([spec])
    except (OSError, ValueError, KeyError, ImportError, yaml.YAMLError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if offline:
            raise TunelabError(
                f"--tasks {spec}: lm-eval cannot load it offline (a hub dataset must be in the local cache): {first}",
                hint=f"run it once with network access to cache the data, or use {SYNTHETIC_TASK} (shipped, offline)",
            ) from None
        raise TunelabError(f"--tasks {spec}: lm-eval cannot load it: {first}", hint=TASKS_HINT) from None
    return [*loaded["tasks"], *loaded["groups"]]


def run_benchmarks(benchmarks: Benchmarks, model, tokenizer, batch_size: int) -> dict[str, TaskScore]:
    """Every task on one loaded model (a PEFT model as it is: the caller switches its adapter off for
    the baseline), zero-shot unless a task's YAML says otherwise; task name -> its primary metric."""
    with quiet_lm_eval():
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        results = simple_evaluate(
            model=lm,
            tasks=list(benchmarks.specs),
            task_manager=benchmarks.manager,
            bootstrap_iters=BOOTSTRAP_ITERS,
            log_samples=False,
            random_seed=SEED,
            numpy_random_seed=SEED,
            torch_random_seed=SEED,
            fewshot_random_seed=SEED,
        )
    return task_scores(results)


def task_scores(results: dict[str, Any]) -> dict[str, TaskScore]:
    """lm-eval's results dict as one `TaskScore` per task (and group): the first numeric metric of each
    (its metric list's order: `acc` before `acc_norm`) with its `_stderr` sibling."""
    scores = {}
    for name, row in (results.get("results") or {}).items():
        for key, value in row.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr") or not _number(value):
                continue
            stderr = row.get(f"{metric}_stderr,{filt}")
            higher = (results.get("higher_is_better") or {}).get(name, {}).get(metric, True)
            examples = ((results.get("n-samples") or {}).get(name) or {}).get("effective")
            scores[name] = TaskScore(
                metric, float(value), float(stderr) if _number(stderr) else None, higher is not False, examples
            )
            break
    return scores


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@contextlib.contextmanager
def quiet_lm_eval():
    """lm-eval's info logging off while it runs (its warnings and errors still show), then as it was."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
