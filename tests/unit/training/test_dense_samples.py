"""Whether samples generate with dense weights (`training.run._dense_samples_fit`): the memory plan decides,
and a model config the planner cannot read means the plain path, never a failed run."""

from __future__ import annotations

import pytest

from conftest import base_config
from tunelab.config import build_config
from tunelab.perf.plan import Plan
from tunelab.training.run import _dense_samples_fit

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def cfg(tmp_path):
    return build_config(base_config(tmp_path / "x.jsonl", tmp_path / "runs", tracking={"backend": "none"}))


@pytest.fixture
def weights_of_one_byte(monkeypatch):
    import tunelab.model.dense as dense

    monkeypatch.setattr(dense, "generation_weight_bytes", lambda model: 1)


@pytest.mark.parametrize("error", [AttributeError("no hidden_size"), TypeError("None * int"), ZeroDivisionError()])
def test_a_model_the_planner_cannot_read_samples_without_dense_weights(cfg, monkeypatch, weights_of_one_byte, error):
    import tunelab.perf.plan as plan

    def unreadable(*args, **kwargs):
        raise error

    monkeypatch.setattr(plan, "estimate", unreadable)
    assert _dense_samples_fit(cfg, None, "cpu", False, model=None) is False


def test_dense_weights_are_used_when_the_plan_has_room(cfg, monkeypatch, weights_of_one_byte):
    import tunelab.perf.plan as plan

    room = Plan({"activations": 1.0, "logits_and_loss": 1.0})
    monkeypatch.setattr(plan, "estimate", lambda *args, **kwargs: room)
    assert _dense_samples_fit(cfg, None, "cpu", False, model=None) is True
    room.parts.update(activations=0.0, logits_and_loss=0.0)  # no room between the steps: plain weights
    assert _dense_samples_fit(cfg, None, "cpu", False, model=None) is False
