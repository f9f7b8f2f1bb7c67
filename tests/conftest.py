"""Shared fixtures: a private cache folder, a tiny model built locally, synthetic data files.

Also where the layout of tests/ is applied (README.md there): the helpers in tests/support import by their
module names (`from battery import case`), and every test under tests/e2e/ is marked `slow`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.procs import child_env

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "alpaca_en_demo.json"
TESTS = Path(__file__).resolve().parent
SUPPORT = TESTS / "support"
FIXTURES = SUPPORT / "fixtures"
E2E = TESTS / "e2e"
sys.path.insert(0, str(SUPPORT))


def pytest_collection_modifyitems(items):
    """Everything under tests/e2e/ runs the real CLI on a model: `slow` by where it lives, so `-m "not slow"`
    (make test-fast) never starts one, whatever the file itself marks."""
    for item in items:
        if item.path.is_relative_to(E2E):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tiny models and tokenized data go to a per-session folder, never the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("tunelab-cache")
    os.environ["TUNELAB_CACHE"] = str(cache)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield cache


@pytest.fixture(scope="session")
def tiny_model_dir(_isolated_cache) -> Path:
    from tunelab.model.resolve import resolve_model_path

    return Path(resolve_model_path("tiny:llama-2l"))


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def synth_file(tmp_path) -> Path:
    from tunelab.data.synthetic import generate, write_jsonl

    return write_jsonl(generate(200, seed=3), tmp_path / "synth.jsonl")


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path


def write_cfg(tmp_path: Path, cfg: dict, name: str = "run.yaml") -> Path:
    """A run config written as YAML into `tmp_path`."""
    import yaml

    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def read_jsonl(p: Path) -> list[dict]:
    """Every record of a JSON Lines file a finished run wrote (a partial line is an error here)."""
    import json

    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real `tunelab` CLI in a subprocess (which dies with the tests: `tunelab.procs`)."""
    return subprocess.run(
        [sys.executable, "-m", "tunelab.cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env({**os.environ, "COLUMNS": "200"}),
    )


def run_sweep(folder: Path, base: dict, spec: dict, timeout: int = 600) -> tuple[subprocess.CompletedProcess, dict]:
    """`tunelab sweep s.yaml` in `folder` over base.yaml (`spec` names it); the process and its results.json."""
    import yaml

    (folder / "base.yaml").write_text(yaml.safe_dump(base))
    (folder / "s.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    r = run_cli("sweep", "s.yaml", cwd=folder, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r, json.loads((folder / "sweeps" / "s" / "results.json").read_text())


def base_config(data_path: Path, out_dir: Path, **sections) -> dict:
    """A small, fast run config on the tiny model."""
    cfg = {
        "model": {"name": "tiny:llama-2l"},
        "adapter": {"r": 8, "alpha": 16, "dropout": 0.0},
        "data": {"train": {"path": str(data_path)}, "test_size": 16},
        "training": {
            "max_steps": 4,
            "batch_size": 4,
            "grad_accum": 2,
            "max_length": 256,
            "learning_rate": 1e-3,
            "eval_steps": 2,
            "save_steps": 2,
            "gradient_checkpointing": False,
        },
        "samples": {"num_prompts": 4, "max_new_tokens": 8},
        "output": {"dir": str(out_dir)},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


def run_faulty(fault: str, *args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real CLI with a fault injected (tests/support/fault_inject.py): a crash, a full disk, a signal."""
    return subprocess.run(
        [sys.executable, str(SUPPORT / "fault_inject.py"), fault, "--", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )


def data_config(path, tmp_path: Path, model: str = "tiny:llama-2l", max_length: int = 512, **sections):
    """A validated run config over one data file (or a mixture list), unshuffled, caching under tmp_path:
    what the data-format tests build their cases from."""
    from tunelab.config import build_config

    data = {
        "train": {"path": str(path)} if not isinstance(path, list) else path,
        "shuffle": False,
        "cache_dir": str(tmp_path / "cache"),
    }
    data.update(sections.pop("data", {}))
    return build_config(
        {
            "model": {"name": model},
            "data": data,
            "training": {"max_length": max_length, **sections.pop("training", {})},
            "tracking": {"backend": "none"},
            "output": {"dir": str(tmp_path / "runs")},
            **sections,
        }
    )


QUICKSTART_STEPS = 150  # the shared quickstart run's length (what tests/e2e/test_eval_e2e.py measured with it)


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory) -> Path:
    """The quickstart (tiny:quickstart-base, 4-bit, LoRA on all linear layers) cut to 150 steps, trained once
    per session for every end-to-end test that evaluates a tuned model against its base (eval, benchmarks).
    Tests write their eval results elsewhere (`--out`) or only where the others expect them."""
    root = tmp_path_factory.mktemp("quickstart-runs")
    r = run_cli(
        "train",
        str(ROOT / "examples" / "quickstart.yaml"),
        f"output.dir={root}",
        "output.name=qs",
        f"training.max_steps={QUICKSTART_STEPS}",
        "training.eval_steps=75",
        "training.save_steps=null",
        "samples.num_prompts=12",
        "samples.at_start=false",
        timeout=1800,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "qs"
