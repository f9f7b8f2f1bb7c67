from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from tunelab.config import load_config, save_config
from tunelab.config.load import redact
from tunelab.errors import ConfigError


def write(tmp_path, data) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


MINIMAL = {"model": {"name": "tiny:llama-2l"}, "data": {"train": {"path": "x.jsonl"}}}


def test_minimal_config_gets_defaults_and_name_from_file(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.adapter.r == 64 and cfg.adapter.alpha == 16 and cfg.adapter.dropout == 0.1
    assert cfg.adapter.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert cfg.output.name == "run"
    assert cfg.prompt.train_on == "response"


def test_dotted_overrides_are_typed(tmp_path):
    cfg = load_config(
        write(tmp_path, MINIMAL), ["adapter.r=16", "training.learning_rate=1e-4", "adapter.target_modules=[q_proj]"]
    )
    assert cfg.adapter.r == 16
    assert cfg.training.learning_rate == pytest.approx(1e-4)
    assert cfg.adapter.target_modules == ["q_proj"]


def test_all_problems_reported_at_once_with_field_names_and_suggestions(tmp_path):
    data = {
        "model": {"name": "m", "dtyp": "fp16"},
        "data": {"train": {"path": "x"}, "trian_rows": 3},
        "adapter": {"r": 0},
        "training": {"learning_rate": -1},
    }
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, data), ["training.lr=3"])
    lines = e.value.problems
    assert "model.dtyp: unknown key; did you mean model.dtype?" in lines
    assert "data.trian_rows: unknown key; did you mean data.train_rows?" in lines
    assert "training.lr: unknown key; did you mean training.learning_rate?" in lines
    assert any(line.startswith("adapter.r: ") and "greater than 0" in line for line in lines)
    assert any(line.startswith("training.learning_rate: ") and "greater than 0" in line for line in lines)
    assert len(lines) == 5


def test_missing_sections_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, {"model": {"name": "m"}}))
    assert e.value.problems == ["data: required but missing"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: [unclosed\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert str(bad) in e.value.problems[0] and "invalid YAML" in e.value.problems[0]
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_impossible_combinations(tmp_path):
    data = {**MINIMAL, "quantization": {"bits": 4}, "adapter": {"type": "none"}}
    with pytest.raises(ConfigError, match="quantization.bits"):
        load_config(write(tmp_path, data))
    data = {**MINIMAL, "data": {"train": {"path": "x"}, "test": {"path": "y"}, "test_size": 0.1}}
    with pytest.raises(ConfigError, match="either data.test or data.test_size"):
        load_config(write(tmp_path, data))


def test_saved_config_round_trips_and_redacts_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "canary-secret-123456")
    data = {**MINIMAL, "tracking": {"notes": "uses canary-secret-123456", "dir": "https://bob:hunter22@example.org/x"}}
    cfg = load_config(write(tmp_path, data), ["adapter.r=8"])
    out = tmp_path / "saved.yaml"
    save_config(cfg, out)
    text = out.read_text()
    assert "canary-secret-123456" not in text and "hunter22" not in text
    again = load_config(out)
    assert again.adapter.r == 8 and again.model.name == "tiny:llama-2l"


def test_redact_matches_secret_values_not_key_names(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "canary-secret-123456")
    # a field map whose keys look like secret names is data (issue 10: it was saved as '***' and broke eval)
    assert redact({"field_map": {"q_key": "instruction", "a_token": "output"}}) == {
        "field_map": {"q_key": "instruction", "a_token": "output"}
    }
    assert redact({"anything": "x canary-secret-123456 y", "uri": "https://u:pw1234@h/x"}) == {
        "anything": "x *** y",
        "uri": "https://***@h/x",
    }


def test_field_map_with_secret_looking_keys_survives_a_round_trip(tmp_path):
    data = {**MINIMAL, "data": {"train": {"path": "x.jsonl"}, "field_map": {"q_key": "instruction"}}}
    cfg = load_config(write(tmp_path, data))
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml").data.field_map == {"q_key": "instruction"}


# sweep files (examples/sweep-*.yaml) are checked in tests/unit/sweep/test_sweep.py
@pytest.mark.parametrize(
    "path",
    sorted(p for p in (ROOT / "examples").glob("*.yaml") if not p.name.startswith("sweep-")),
    ids=lambda p: p.name,
)
def test_every_example_config_loads(path):
    cfg = load_config(path)
    assert cfg.model.name
    first = path.read_text().splitlines()[0]
    assert first.startswith("# tunelab "), "examples carry the command that runs them in their first line"


def test_reference_recipe_has_the_tutorial_values():
    cfg = load_config(ROOT / "examples" / "openllama-3b-alpaca-qlora.yaml")
    assert cfg.model.name == "openlm-research/open_llama_3b_v2" and cfg.model.use_cache is False
    assert (
        cfg.quantization.bits,
        cfg.quantization.quant_type,
        cfg.quantization.double_quant,
        cfg.quantization.compute_dtype,
    ) == (4, "nf4", True, "fp16")
    a = cfg.adapter
    assert (a.r, a.alpha, a.dropout, a.bias, a.target_modules) == (
        64,
        16,
        0.1,
        "none",
        ["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    assert (cfg.data.train_rows, cfg.data.test_rows) == (512, 10)
    t = cfg.training
    assert (t.packing, t.max_length, t.batch_size, t.grad_accum, t.epochs, t.precision) == (
        True,
        1024,
        2,
        16,
        1,
        "fp16",
    )
    assert (t.learning_rate, t.lr_scheduler, t.warmup_ratio, t.gradient_checkpointing, t.logging_steps) == (
        2e-4,
        "cosine",
        0.1,
        True,
        1,
    )
    assert t.eval_steps == t.save_steps == 512 // (2 * 16)
    assert cfg.prompt.format == "alpaca" and cfg.prompt.train_on == "all"
