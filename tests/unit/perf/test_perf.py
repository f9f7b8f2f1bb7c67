"""Memory planning and FLOPs accounting."""

from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli
from tunelab.config import build_config
from tunelab.errors import TunelabError
from tunelab.model.resolve import resolve_model
from tunelab.perf.flops import flops_per_token, mean_attended_context
from tunelab.perf.plan import GIB, advise, parse_memory
from tunelab.perf.plan import estimate as estimate_for

OPENLLAMA = ROOT.parent / "shared" / "models" / "open_llama_3b_v2"


def cfg(**over):
    data = {
        "model": {"name": "tiny:llama-2l"},
        "data": {"train": {"path": "x.jsonl"}},
        "training": {"batch_size": 2, "max_length": 256},
    }
    for section, values in over.items():
        data.setdefault(section, {}).update(values)
    return build_config(data)


def estimate(c, device, **kw):
    return estimate_for(c, resolve_model(c), device, **kw)


def test_quantization_checkpointing_and_batch_move_the_estimate_the_right_way():
    full = estimate(cfg(), "cpu", checkpointing=False)
    q4 = estimate(cfg(quantization={"bits": 4}), "cpu", checkpointing=False)
    assert q4.parts["weights"] < 0.6 * full.parts["weights"]  # embeddings and head stay unquantized
    ck = estimate(cfg(), "cpu", checkpointing=True)
    assert ck.parts["activations"] < full.parts["activations"]
    big = estimate(cfg(training={"batch_size": 8, "max_length": 256}), "cpu", checkpointing=False)
    assert big.parts["activations"] == pytest.approx(4 * full.parts["activations"])
    ft = estimate(cfg(adapter={"type": "none"}), "cpu", checkpointing=False)
    small_lora = estimate(cfg(adapter={"r": 4}), "cpu", checkpointing=False)
    assert ft.parts["optimizer"] > 10 * small_lora.parts["optimizer"]
    assert full.total == pytest.approx(sum(full.parts.values()))


@pytest.mark.skipif(not OPENLLAMA.is_dir(), reason="needs ../shared/models/open_llama_3b_v2")
def test_openllama_recipe_plan_is_in_the_expected_range():
    recipe = build_config(yaml.safe_load((ROOT / "examples" / "openllama-3b-alpaca-qlora.yaml").read_text()))
    recipe.model.name = str(OPENLLAMA)
    plan = estimate(recipe, "cuda", checkpointing=True)
    # 3.43 B parameters: 4-bit linear layers plus fp16 embeddings and head come to about 1.9 GiB
    assert 1.7 * GIB < plan.parts["weights"] < 2.2 * GIB
    # LoRA r=64 on q/k/v/o of 26 layers: 26 * 4 * 64 * (3200 + 3200) = 42.6 M parameters
    assert plan.parts["adapter"] == pytest.approx(26 * 4 * 64 * 6400 * 2)
    assert plan.parts["optimizer"] == pytest.approx(26 * 4 * 64 * 6400 * 8)
    advice = advise(recipe, resolve_model(recipe), "cuda", 16 * GIB)
    assert advice["fits_with_checkpointing"] and advice["largest_micro_batch"]["with_checkpointing"] >= 2


def _refuse_resolving(monkeypatch):
    """Any reading of a model's config.json (or finding its folder) from here on fails the test."""
    import transformers

    import tunelab.model.resolve as resolve

    def again(*args, **kwargs):
        raise AssertionError("the model was resolved again")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", again)
    for name in ("read_model_config", "base_model_source", "resolve_model_path"):
        monkeypatch.setattr(resolve, name, again)


def test_the_planner_plans_from_the_model_resolved_once(monkeypatch):
    from tunelab.perf.plan import decide_checkpointing
    from tunelab.perf.sharding import rank_estimator

    c = cfg(adapter={"type": "none"})
    resolved = resolve_model(c)
    assert resolved.model_type == "llama" and Path(resolved.path).is_dir() and resolved.name == "tiny:llama-2l"
    _refuse_resolving(monkeypatch)
    advice = advise(c, resolved, "cpu", 64 * GIB)
    assert advice["fits_without_checkpointing"] and advice["largest_micro_batch"]["without_checkpointing"] >= 1
    fsdp = rank_estimator("fsdp2", 4)(c, resolved, "cuda", checkpointing=False)
    assert fsdp.parts["optimizer"] == pytest.approx(estimate_for(c, resolved, "cuda").parts["optimizer"] / 4)
    assert decide_checkpointing(c, resolved, "cpu") is False  # the tiny model fits any machine
    assert decide_checkpointing(c, None, "cpu") is True  # nothing to plan from: the memory-safe choice


@pytest.mark.slow
def test_a_training_run_resolves_its_model_once(tmp_path, synth_file, monkeypatch):
    """`gradient_checkpointing: auto` and dense samples both ask the planner; the model is read once."""
    import io

    from rich.console import Console

    import tunelab.model.resolve as resolve
    from conftest import base_config
    from tunelab.training.run import train

    reads = []
    read = resolve.read_model_config
    monkeypatch.setattr(resolve, "read_model_config", lambda *a: reads.append(a) or read(*a))
    c = base_config(
        synth_file,
        tmp_path / "runs",
        training={"max_steps": 1, "eval_steps": None, "save_steps": None, "gradient_checkpointing": "auto"},
        samples={"num_prompts": 1, "max_new_tokens": 2, "at_start": False, "dense_weights": True},
        tracking={"backend": "none"},
    )
    summary = train(build_config(c), console=Console(file=io.StringIO()))
    assert summary.status == "completed" and summary.gradient_checkpointing is False
    assert len(reads) == 1


def test_parse_memory():
    assert parse_memory("24GB") == 24 * GIB and parse_memory("512MiB") == 512 * 2**20
    with pytest.raises(TunelabError):
        parse_memory("lots")


def test_flops_per_token_counts_frozen_and_trainable_weights(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for p in model.parameters():
        p.requires_grad_(False)
    model.lm_head.weight.requires_grad_(True)
    f = flops_per_token(model, mean_context=10.0)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    head = model.lm_head.weight.numel()
    assert f.trainable_params == head and f.frozen_matmul_params == linear - head
    c = model.config
    assert f.per_token == pytest.approx(
        4 * (linear - head) + 6 * head + 12 * c.num_hidden_layers * c.hidden_size * 10.0
    )


def test_mean_attended_context():
    assert mean_attended_context([1]) == 1
    assert mean_attended_context([3]) == pytest.approx((1 + 2 + 3) / 3)
    assert mean_attended_context([1, 3]) == pytest.approx((1 + 6) / 4)


def test_plan_cli(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"model": {"name": "tiny:llama-2l"}, "data": {"train": {"path": "x.jsonl"}}}))
    r = run_cli("plan", str(p), "--memory", "8GB")
    assert r.returncode == 0, r.stderr
    assert "weights" in r.stdout and "fits in 8.0 GiB" in r.stdout
    r = run_cli("plan", str(p), "--memory", "1MB")
    assert r.returncode == 0 and "does not fit" in r.stdout
    r = run_cli("plan", str(p), "model.name=/nonexistent/model")
    assert r.returncode == 2 and "model.name" in r.stderr


_FREED_PAGES = """
import json, os, sys, torch
from tunelab.perf.allocator import keep_freed_memory
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * page
def returned():  # bytes the process gives back when a 64 MiB tensor it wrote is freed
    x = torch.ones(2048, 8192)
    before = rss()
    del x
    return before - rss()
out = {"default": returned()}
out["kept"] = keep_freed_memory()
out["first"], out["again"] = returned(), returned()
out["kept_twice"] = keep_freed_memory()
print(json.dumps(out))
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident size from Linux's /proc")
def test_cpu_runs_keep_freed_memory_for_reuse():
    """glibc gives a freed 64 MiB tensor back to the kernel (the next one faults its pages in again);
    after keep_freed_memory its pages stay in the process for the next tensor to reuse."""
    import json
    import subprocess
    import sys

    from tunelab.perf.allocator import _glibc

    if _glibc() is None:
        pytest.skip("not glibc")
    r = subprocess.run([sys.executable, "-c", _FREED_PAGES], capture_output=True, text=True, check=True)
    got = json.loads(r.stdout)
    mib = 2**20
    assert got["default"] > 60 * mib  # the default: unmapped at once
    assert got["kept"] and got["kept_twice"]
    assert abs(got["first"]) < 4 * mib and abs(got["again"]) < 4 * mib  # kept: nothing goes back


def test_bf16_on_a_cpu_without_bf16_units_is_flagged(monkeypatch):
    from dataclasses import replace

    from tunelab.perf import machine

    base = machine.CpuInfo("Xeon", 2, 2, 2, False, True, False, ["avx2", "avx512f"], "AVX512")
    monkeypatch.setattr(machine, "cpu_info", lambda: base)
    note = machine.cpu_bf16_note("cpu", "bf16")
    assert note and "no AVX512-BF16 or AMX" in note and "training.precision: fp32" in note
    assert machine.cpu_bf16_note("cpu", "fp32") is None
    assert machine.cpu_bf16_note("cuda:0", "bf16") is None
    for has in (dict(avx512_bf16=True), dict(amx=True), dict(isa=[])):  # bf16 units, or flags not known
        monkeypatch.setattr(machine, "cpu_info", lambda has=has: replace(base, **has))
        assert machine.cpu_bf16_note("cpu", "bf16") is None
