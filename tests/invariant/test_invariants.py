"""Invariants of training that must hold whatever the code looks like (TRL's way of pinning
silent training bugs): equivalent batch layouts give the same losses, and a fixed tiny run gives
the losses recorded in tests/invariant/refs/, next to the library versions they were made with."""

import json
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

from conftest import base_config

pytestmark = pytest.mark.slow

REFS = Path(__file__).resolve().parent / "refs"
# the libraries whose numerics the golden losses depend on
LIBRARIES = ("torch", "transformers", "trl", "peft")


def installed_versions() -> dict[str, str]:
    def one(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {name: one(name) for name in LIBRARIES}


def version_drift(recorded: dict[str, str], installed: dict[str, str]) -> str:
    """Which libraries differ from the ones a reference was made with ('' when none): the first suspects
    when a recorded loss no longer matches."""
    moved = [
        f"{name} {recorded.get(name, 'unrecorded')} -> {installed[name]}"
        for name in LIBRARIES
        if recorded.get(name) != installed[name]
    ]
    return "; library versions differ from the reference's: " + ", ".join(moved) if moved else ""


def _losses(tmp_path, name, data, **training):
    import io

    from rich.console import Console

    from tunelab.config.load import build_config
    from tunelab.training.run import train

    cfg = base_config(
        data,
        tmp_path / "runs",
        training={"eval_steps": None, "save_steps": None, **training},
        samples={"enabled": False},
        tracking={"backend": "none"},
        output={"name": name},
    )
    cfg["data"]["test_size"] = None
    train(build_config(cfg), console=Console(file=io.StringIO()))
    rows = [json.loads(x) for x in (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_grad_accum_8x1_equals_1x8(tmp_path, synth_file):
    """batch 1 x grad_accum 8 and batch 8 x grad_accum 1 see the same examples in the same order
    (packing off): the same losses within 1e-4."""
    common = dict(max_steps=3, packing=False, learning_rate=1e-3, logging_steps=1)
    a = _losses(tmp_path, "ga8", synth_file, batch_size=1, grad_accum=8, **common)
    b = _losses(tmp_path, "bs8", synth_file, batch_size=8, grad_accum=1, **common)
    assert len(a) == len(b) == 3
    assert a == pytest.approx(b, abs=1e-4)


def test_golden_losses(tmp_path, synth_file):
    ref = json.loads((REFS / "golden_losses.json").read_text())
    drift = version_drift(ref["versions"], installed_versions())
    if drift:
        # other versions are not a failure by themselves; the note says what to suspect if the losses ever move
        warnings.warn(f"golden losses{drift} (they still have to match)", stacklevel=1)
    got = _losses(tmp_path, "golden", synth_file, max_steps=4, batch_size=4, grad_accum=2)
    assert got == pytest.approx(ref["losses"], abs=ref["tolerance"]), (
        f"losses moved: {[round(x, 5) for x in got]}, recorded {ref['losses']} at {ref['recorded_at']}{drift}"
    )


def test_a_golden_mismatch_names_the_libraries_that_moved():
    ref = json.loads((REFS / "golden_losses.json").read_text())
    assert set(ref["versions"]) == set(LIBRARIES)
    assert version_drift(ref["versions"], dict(ref["versions"])) == ""
    moved = version_drift(ref["versions"], {**ref["versions"], "trl": "9.9.9"})
    assert moved == f"; library versions differ from the reference's: trl {ref['versions']['trl']} -> 9.9.9"
