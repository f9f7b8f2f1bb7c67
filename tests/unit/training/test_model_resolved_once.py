"""A run's model is resolved once per process (`model.resolve.ResolvedOnce`): the memory plans the rules and
the launcher make before the run lock (how many processes fit, the strategy of a full fine-tune on several
GPUs) and the run after it all read config.json through one resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import base_config
from tunelab.config import build_config
from tunelab.model.resolve import ResolvedOnce, resolve_model_path
from tunelab.training import distributed as dist
from tunelab.training.launch import Launch, preflight
from tunelab.training.rules import Situation, before_load

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def reads(monkeypatch) -> list:
    """Every reading of a model's config.json from here on, in order."""
    import tunelab.model.resolve as resolve

    seen = []
    read = resolve.read_model_config
    monkeypatch.setattr(resolve, "read_model_config", lambda cfg, path: seen.append(path) or read(cfg, path))
    return seen


def _full_fine_tune(tmp_path: Path, **sections):
    """A full fine-tune of the tiny model: the strategy of several GPUs then depends on its memory plan."""
    return build_config(
        base_config(
            tmp_path / "x.jsonl",
            tmp_path / "runs",
            adapter={"type": "none"},
            data={"cache_dir": str(tmp_path / "cache")},
            tracking={"backend": "none"},
            **sections,
        )
    )


def test_a_ranks_rules_strategy_and_run_read_the_model_once(tmp_path, reads):
    """What `train` does on one rank of a 2-GPU job: the rules, the strategy, then the run's own model."""
    cfg = _full_fine_tune(tmp_path)
    model = ResolvedOnce(cfg)
    before_load(cfg, Situation(processes=2, local_processes=2, device="cuda:0", model=model))
    assert dist.resolve_strategy(cfg, 2, "cuda:0", 2, model) == "ddp"  # the tiny model fits one GPU
    resolved = model.at(resolve_model_path(cfg.model.name))
    assert resolved is model.for_planning() and resolved.model_type == "llama"
    assert len(reads) == 1


def test_the_launchers_checks_and_strategy_read_the_model_once(tmp_path, reads):
    """`train --nproc 2` on the CPU: the fit of two processes is planned from the model, read once."""
    cfg = _full_fine_tune(tmp_path)
    strategy, _ = preflight(cfg, Launch(nproc=2), resume=False)
    assert strategy == "ddp" and len(reads) == 1


def test_a_model_found_elsewhere_is_resolved_there(tmp_path, reads):
    model = ResolvedOnce(_full_fine_tune(tmp_path))
    planned = model.for_planning()
    other = tmp_path / "copy"
    other.mkdir()
    (other / "config.json").write_text((Path(planned.path) / "config.json").read_text())
    assert model.at(str(other)).path == str(other) and reads == [planned.path, str(other)]


def test_a_model_without_config_is_planned_for_safely_and_looked_for_once(tmp_path, monkeypatch):
    import tunelab.model.resolve as resolve

    asked = []
    find = resolve.resolve_model
    monkeypatch.setattr(resolve, "resolve_model", lambda cfg: asked.append(cfg) or find(cfg))
    cfg = _full_fine_tune(tmp_path, model={"name": str(tmp_path)})  # a folder without config.json
    nothing = ResolvedOnce(cfg)
    assert nothing.for_planning() is None and nothing.for_planning() is None
    assert dist.resolve_strategy(cfg, 2, "cuda:0", 2, nothing) == "fsdp2"  # no plan: shard, the choice that fits
    assert len(asked) == 1
