"""`training.compile: on` through the real CLI on the tiny model: compiled graphs run and learn what eager learns."""

import json
from pathlib import Path

import pytest

from conftest import base_config, read_jsonl, run_cli, write_cfg

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def losses(run: Path) -> dict[tuple[str, int], float]:
    return {(k, r["step"]): r[k] for r in read_jsonl(run / "metrics.jsonl") for k in ("loss", "eval_loss") if k in r}


def test_compiled_decoder_layers_train_to_the_eager_losses(tmp_path, synth_file):
    # dropout 0 (base_config): compiled graphs draw dropout masks from inductor's generator, not eager torch's
    path = write_cfg(tmp_path, base_config(synth_file, tmp_path / "runs"))
    for name, setting in (("eager", "off"), ("compiled", "on")):
        r = run_cli("train", str(path), f"output.name={name}", f"training.compile={setting}")
        assert r.returncode == 0, r.stderr[-3000:]
    eager, compiled = tmp_path / "runs" / "eager", tmp_path / "runs" / "compiled"
    s = json.loads((compiled / "summary.json").read_text())
    assert s["compile"] == "on" and s["compile_reason"] == "2 decoder layers compiled by inductor"
    assert s["compile_graphs"] > 0 and s["compile_s"] > 0  # a compiled graph ran (not the Trainer's no-op flag)
    assert json.loads((eager / "summary.json").read_text())["compile"] == "off"
    # measured: identical to 8 decimals (4 train + 2 eval losses, packed rows of varying length)
    assert losses(compiled) == pytest.approx(losses(eager), rel=1e-5)
    assert len(losses(eager)) == 6
    assert (compiled / "final" / "adapter_model.safetensors").is_file()
