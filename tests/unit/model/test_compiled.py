"""`training.compile`: the one rule for auto / on / off, the block it compiles, and the rule as a finding."""

import pytest
import yaml

from tunelab.config import build_config
from tunelab.errors import ConfigError
from tunelab.model import compiled

pytestmark = pytest.mark.timeout(60)


def cfg(**training):
    data = {"train": {"path": "x.jsonl"}}
    return build_config({"model": {"name": "tiny:llama-2l"}, "data": data, "training": training})


def test_auto_is_off_everywhere_until_measured_and_off_is_off():
    assert compiled.compile_wanted(cfg(), "cpu") == (False, "off (auto: not measured faster than eager on cpu)")
    assert compiled.compile_wanted(cfg(compile="auto"), "cuda:0")[0] is False
    assert compiled.compile_wanted(cfg(compile="off"), "cpu") == (False, "off")


def test_on_compiles_where_inductor_runs_and_says_why_not_elsewhere(monkeypatch):
    assert compiled.compile_wanted(cfg(compile="on", gradient_checkpointing=False), "cpu") == (True, "on")
    assert compiled.compile_wanted(cfg(compile="on"), "cpu")[0] is True  # checkpointing auto: decided after loading
    with pytest.raises(ConfigError, match=r"training\.compile: on: no graph compiles under gradient checkpointing"):
        compiled.compile_wanted(cfg(compile="on"), "cpu", checkpointing=True)
    with pytest.raises(ConfigError, match=r"training\.compile: on: only sft runs compile \(training.method is dpo\)"):
        compiled.compile_wanted(cfg(compile="on", method="dpo"), "cpu")
    with pytest.raises(ConfigError, match=r"one process or DDP only \(the strategy is fsdp2\)"):
        compiled.compile_wanted(cfg(compile="on"), "cpu", strategy="fsdp2")
    assert compiled.compile_wanted(cfg(compile="on"), "cpu", False, "ddp")[0] is True
    with pytest.raises(ConfigError, match="does not train on MPS"):
        compiled.compile_wanted(cfg(compile="on"), "mps")
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match=r"no C\+\+ compiler \(g\+\+\) is on PATH"):
        compiled.compile_wanted(cfg(compile="on"), "cpu")


def test_yaml_on_and_off_are_the_switch_not_booleans():
    assert cfg(**yaml.safe_load("compile: on")).training.compile == "on"
    assert cfg(**yaml.safe_load("compile: off")).training.compile == "off"
    with pytest.raises(ConfigError, match="training.compile"):
        cfg(compile="sometimes")


def test_validate_and_train_share_the_rule_as_a_finding():
    from tunelab.training.rules import compile_setting

    (ok,) = compile_setting(cfg(), "cpu")
    assert (ok.severity, ok.field) == ("ok", "training.compile")
    (problem,) = compile_setting(cfg(compile="on", gradient_checkpointing=True), "cpu")
    assert (problem.severity, problem.field) == ("problem", "training.compile")
    assert problem.message.startswith("on: no graph compiles under gradient checkpointing")


def test_validate_asks_with_the_strategy_train_will_resolve(monkeypatch):
    # distributed.strategy: auto may resolve to FSDP2 (a full fine-tune on several GPUs), which compile refuses:
    # validate must say so before load, as train would after it
    from tunelab.training import distributed as dist
    from tunelab.training import rules

    monkeypatch.setattr(dist, "resolve_strategy", lambda *a, **k: "fsdp2")
    c = cfg(compile="on", gradient_checkpointing=False)
    sit = rules.Situation(device="cpu", processes=2)
    assert rules.chosen_strategy(c, sit, "cpu", None) == "fsdp2"
    (problem,) = [f for f in rules.before_load(c, sit) if f.field == "training.compile"]
    assert problem.severity == "problem" and "one process or DDP only (the strategy is fsdp2)" in problem.message


def test_the_compiled_block_is_the_peft_models_decoder_layers(tiny_model_dir):
    import torch

    from tunelab.config.schema import AdapterConfig, ModelConfig, QuantizationConfig
    from tunelab.model.adapters import apply_adapter
    from tunelab.model.loading import load_model

    model = load_model(ModelConfig(name=str(tiny_model_dir)), QuantizationConfig(bits=None))
    model = apply_adapter(model, AdapterConfig(r=4), quantized=False, gradient_checkpointing=False)
    assert compiled.decoder_layers(model) is model.get_base_model().model.layers
    assert compiled.compile_layers(model) == 2
    layer = model.get_base_model().model.layers[0]
    assert layer._compiled_call_impl is not None
    assert model.get_base_model().model.embed_tokens._compiled_call_impl is None  # the rest stays eager
    with pytest.raises(ConfigError, match="no repeated decoder layer"):
        compiled.decoder_layers(torch.nn.Linear(2, 2))
