"""Tracking without training: config, references, the trackio artifact store (push / pull round trip
with versions, aliases and digests), the sink guard, W&B and MLflow faults, and the runs index."""

import json
import os
import threading
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunelab.config.load import build_config
from tunelab.errors import ConfigError, TunelabError


@pytest.fixture(autouse=True)
def _restore_env():
    """The trackers are pointed at each test's folder through the environment; put it back after."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def cli(*args: str):
    from tunelab.cli.main import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


MINIMAL = {"model": {"name": "tiny:llama-2l"}, "data": {"train": {"path": "x.jsonl"}}}


def test_tracking_config_defaults_to_trackio_and_checks_backend_names():
    cfg = build_config(MINIMAL)
    assert cfg.tracking.backend == "trackio" and cfg.tracking.backends() == ["trackio"]
    cfg = build_config({**MINIMAL, "tracking": {"backend": ["mlflow", "none", "mlflow", "tensorboard"]}})
    assert cfg.tracking.backends() == ["mlflow", "tensorboard"]
    assert build_config({**MINIMAL, "tracking": {"backend": "none"}}).tracking.backends() == []
    with pytest.raises(ConfigError) as e:
        build_config({**MINIMAL, "tracking": {"backend": ["trackio", "neptune"], "mode": "sometimes"}})
    text = str(e.value)
    assert "tracking.backend: unknown tracker 'neptune'" in text and "tracking.mode" in text


def test_artifact_references_parse_and_reject_bad_ones():
    from tunelab.refs import ArtifactRef, RefError, is_artifact_ref

    r = ArtifactRef.parse("wandb:ent/proj/alpaca_gpt4_splitted:v4")
    assert (r.store, r.entity, r.project, r.name, r.version) == ("wandb", "ent", "proj", "alpaca_gpt4_splitted", "v4")
    r = ArtifactRef.parse("trackio:proj/data:latest")
    assert (r.project, r.name, r.version) == ("proj", "data", "latest")
    assert ArtifactRef.parse("trackio:data").in_project("p").project == "p"
    assert ArtifactRef.parse("mlflow:my-model:3").version == "3"
    assert is_artifact_ref("trackio:p/x") and not is_artifact_ref("tiny:llama-2l") and not is_artifact_ref("data.jsonl")
    for bad in ("trackio:a/b/c/d", "trackio:p/bad name", "mlflow:p/x:1", "mlflow:..", "trackio:p/.hidden"):
        with pytest.raises(RefError):
            ArtifactRef.parse(bad)


def test_trackio_artifact_round_trip_with_versions_aliases_and_digests(tmp_path):
    from tunelab.artifacts import Home, content_digest, fetch

    d = tmp_path / "tracking"
    data = tmp_path / "data.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n')
    r = cli("artifacts", "push", str(data), "--name", "demo", "--type", "dataset", "--alias", "gold", "--dir", str(d))
    assert r.exit_code == 0, r.output
    assert "trackio:tunelab/demo:v0" in r.output and "gold" in r.output
    v0_digest = content_digest(data)
    data.write_text('{"instruction": "a", "output": "c"}\n')
    assert cli("artifacts", "push", str(data), "--name", "demo", "--type", "dataset", "--dir", str(d)).exit_code == 0
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(os.urandom(64))
    (folder / "config.json").write_text("{}")  # a model artifact is a model folder (issue 10: a JSONL file is refused)
    (folder / "sub").mkdir()
    (folder / "sub" / "extra.json").write_text("{}")
    assert (
        cli(
            "artifacts", "push", str(folder), "--name", "m", "--type", "model", "--alias", "prod", "--dir", str(d)
        ).exit_code
        == 0
    )

    listed = json.loads(cli("artifacts", "list", "--dir", str(d), "--json").output)
    by_ref = {x["ref"]: x for x in listed}
    assert set(by_ref) == {"trackio:tunelab/demo:v0", "trackio:tunelab/demo:v1", "trackio:tunelab/m:v0"}
    assert by_ref["trackio:tunelab/demo:v0"]["aliases"] == ["gold"]
    assert by_ref["trackio:tunelab/demo:v1"]["aliases"] == ["latest"]
    assert by_ref["trackio:tunelab/demo:v0"]["digest"] == v0_digest
    assert by_ref["trackio:tunelab/demo:v1"]["digest"] == content_digest(data) != v0_digest
    assert all(x["producer_run"].startswith("upload-") for x in listed)

    out = tmp_path / "pulled"
    r = cli("artifacts", "pull", "trackio:tunelab/demo:gold", "--out", str(out), "--dir", str(d))
    assert r.exit_code == 0, r.output
    assert (out / "data.jsonl").read_text() == '{"instruction": "a", "output": "b"}\n'
    assert content_digest(out) == v0_digest
    r = cli("artifacts", "pull", "trackio:tunelab/m:prod", "--out", str(tmp_path / "m2"), "--dir", str(d))
    assert r.exit_code == 0 and content_digest(tmp_path / "m2") == content_digest(folder)

    # identical content is the same version; a custom alias can still be added to it
    data.write_text('{"instruction": "a", "output": "b"}\n')
    assert (
        cli(
            "artifacts", "push", str(data), "--name", "demo", "--type", "dataset", "--alias", "again", "--dir", str(d)
        ).exit_code
        == 0
    )
    home = Home.default(d)
    got = fetch("trackio:tunelab/demo:again", home, expected_type="dataset")
    assert got.version.version == "v0" and set(got.version.aliases) == {"gold", "again"}
    assert got.path == fetch("trackio:tunelab/demo:v0", home).path  # cached by digest: downloaded once

    for ref, expected, kind in (
        ("trackio:tunelab/demo:v7", "has no version or alias 'v7' (has: v1 (latest), v0 (", None),
        ("trackio:tunelab/nothing", "no artifact 'nothing'", None),
        ("trackio:tunelab/demo:gold", "is a dataset artifact, not a model", "model"),
    ):
        with pytest.raises(TunelabError, match=None) as e:
            fetch(ref, home, expected_type=kind)
        assert expected in e.value.message and "\n" not in e.value.message
    r = cli("artifacts", "pull", "trackio:tunelab/demo:v9", "--dir", str(d))
    assert r.exit_code == 2 and "has no version or alias 'v9'" in r.output and "Traceback" not in r.output


def test_trackio_is_pointed_at_the_tracking_dir(tmp_path):
    """Pins trackio's import-time directory constants (tunelab.compat.point_trackio_at patches them), and
    shows the environment is put back afterwards (a variable the user set is left alone)."""
    from tunelab.artifacts.env import isolated

    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path / "mine")
    wandb_before = os.environ.get("WANDB_DIR")
    try:
        with isolated(tmp_path / "a"):
            from trackio import utils
            from trackio.sqlite_storage import SQLiteStorage
        with isolated(tmp_path / "b"):
            assert SQLiteStorage.get_project_db_path("p").parent == (tmp_path / "b" / "trackio").resolve()
            assert utils.project_artifacts_dir("p").is_relative_to((tmp_path / "b" / "trackio").resolve())
            assert os.environ["MLFLOW_DISABLE_TELEMETRY"]
            assert os.environ["GRADIO_TEMP_DIR"] == str(tmp_path / "mine")
            if wandb_before is None:
                assert os.environ["WANDB_DIR"] == str((tmp_path / "b").resolve())
        assert os.environ.get("WANDB_DIR") == wandb_before and os.environ["GRADIO_TEMP_DIR"] == str(tmp_path / "mine")
    finally:
        del os.environ["GRADIO_TEMP_DIR"]


class Boom:
    name = "boom"

    def __init__(self):
        self.calls = 0

    def log_metrics(self, record):
        self.calls += 1
        if record["step"] >= 2:
            raise OSError("disk full: https://user:canary-pw-123456@example.org/x")


class Hang:
    name = "hang"

    def __init__(self):
        self.release = threading.Event()

    def log_samples(self, step, table):
        self.release.wait()


def test_a_failing_or_hanging_sink_warns_once_and_is_turned_off():
    from tunelab.tracking.base import GuardedSink

    warnings = []
    boom = GuardedSink(Boom(), timeout_s=5, warn=warnings.append)
    for step in range(1, 5):
        boom.call("log_metrics", {"step": step})
    assert boom.disabled and boom.sink.calls == 2 and len(warnings) == 1
    assert "boom failed in log_metrics (OSError: disk full" in warnings[0] and "canary-pw" not in warnings[0]

    hang = GuardedSink(Hang(), timeout_s=0.5, warn=warnings.append)
    t0 = time.perf_counter()
    hang.call("log_samples", 2, [])
    hang.call("log_samples", 4, [])
    assert (
        time.perf_counter() - t0 < 3
        and hang.disabled
        and len(warnings) == 2
        and "no answer within 0.5 s" in warnings[1]
    )
    hang.sink.release.set()


def test_wandb_online_without_a_key_fails_before_training_naming_offline(tmp_path, monkeypatch):
    from tunelab.tracking import Tracking

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = build_config(
        {
            **MINIMAL,
            "tracking": {"backend": ["trackio", "wandb"], "mode": "online"},
            "output": {"dir": str(tmp_path / "runs")},
        }
    )
    with pytest.raises(TunelabError) as e:
        Tracking(cfg)
    assert "W&B online mode needs an API key" in e.value.message and "offline" in e.value.hint
    assert not (tmp_path / "runs").exists()
    monkeypatch.setenv("WANDB_MODE", "offline")
    Tracking(cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"mode": None})}))  # offline: fine


def test_an_unreachable_mlflow_server_costs_one_bounded_warning(tmp_path):
    import socket

    from tunelab.artifacts.env import isolated
    from tunelab.tracking.base import GuardedSink
    from tunelab.tracking.mlflow_backend import MlflowSink

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = build_config(
        {**MINIMAL, "tracking": {"backend": "mlflow", "uri": f"http://127.0.0.1:{port}", "timeout_s": 20}}
    )
    warnings = []
    with isolated(tmp_path / "t", timeout_s=5) as d:
        g = GuardedSink(MlflowSink(d, cfg.tracking, "r"), timeout_s=20, warn=warnings.append)
        t0 = time.perf_counter()
        g.call("start", {"config": {}, "tags": [], "notes": None})
        g.call("log_metrics", {"step": 1, "loss": 1.0})
    assert g.disabled and len(warnings) == 1 and "mlflow failed in start" in warnings[0]
    assert time.perf_counter() - t0 < 20


def _fake_run(root: Path, name: str, lr: float, loss: float, status: str = "completed") -> None:
    run = root / name
    run.mkdir(parents=True)
    cfg = build_config({**MINIMAL, "training": {"learning_rate": lr}, "output": {"name": name, "dir": str(root)}})
    from tunelab.config.load import config_to_dict

    (run / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    (run / "summary.json").write_text(
        json.dumps(
            {"status": status, "steps": 4, "final_train_loss": loss, "final_eval_loss": loss + 0.1, "wall_time_s": 12.5}
        )
    )


def test_runs_list_show_and_compare_read_run_directories(tmp_path):
    _fake_run(tmp_path, "a", 1e-4, 1.5)
    _fake_run(tmp_path, "b", 3e-4, 1.2, status="failed")
    (tmp_path / ".tracking").mkdir()
    rows = json.loads(cli("runs", "list", "--dir", str(tmp_path), "--json").output)
    assert [(r["name"], r["status"], r["learning_rate"], r["final_train_loss"]) for r in rows] == [
        ("a", "completed", 1e-4, 1.5),
        ("b", "failed", 3e-4, 1.2),
    ]
    assert rows[0]["base_model"] == "tiny:llama-2l" and rows[0]["duration_s"] == 12.5
    cmp = json.loads(cli("runs", "compare", "a", "b", "--dir", str(tmp_path), "--json").output)
    assert cmp["config"] == {"training.learning_rate": [1e-4, 3e-4]}
    assert cmp["metrics"]["final_eval_loss"] == [1.6, pytest.approx(1.3)] and cmp["metrics"]["status"] == [
        "completed",
        "failed",
    ]
    table = cli("runs", "list", "--dir", str(tmp_path)).output
    assert "a" in table and "completed" in table and "failed" in table
    shown = json.loads(cli("runs", "show", str(tmp_path / "a"), "--json").output)
    assert shown["reads"] == [{"ref": "x.jsonl", "type": "data source"}, {"ref": "tiny:llama-2l", "type": "base model"}]
    r = cli("runs", "show", "zzz", "--dir", str(tmp_path))
    assert r.exit_code == 2 and "no run directory of that name" in r.output


def test_mlflow_registry_round_trip_and_wandb_offline_push(tmp_path):
    from tunelab.artifacts import content_digest
    from wandb_offline import read_run

    d = tmp_path / "tracking"
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(128))
    (folder / "adapter_config.json").write_text("{}")
    r = cli(
        "artifacts",
        "push",
        str(folder),
        "--name",
        "m",
        "--type",
        "model",
        "--alias",
        "prod",
        "--store",
        "mlflow",
        "--dir",
        str(d),
    )
    assert r.exit_code == 0 and "mlflow:m:1 (latest, prod)" in r.output, r.output
    (folder / "adapter_config.json").write_text('{"r": 8}')
    assert (
        "mlflow:m:2 (latest)"
        in cli(
            "artifacts", "push", str(folder), "--name", "m", "--type", "model", "--store", "mlflow", "--dir", str(d)
        ).output
    )
    listed = {
        x["ref"]: x for x in json.loads(cli("artifacts", "list", "--store", "mlflow", "--dir", str(d), "--json").output)
    }
    assert listed["mlflow:m:2"]["aliases"] == ["latest"] and listed["mlflow:m:1"]["aliases"] == ["prod"]
    assert listed["mlflow:m:2"]["digest"] == content_digest(folder)
    out = tmp_path / "pulled"
    assert cli("artifacts", "pull", "mlflow:m:prod", "--out", str(out), "--dir", str(d)).exit_code == 0
    assert (out / "adapter_config.json").read_text() == "{}" and sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    r = cli("artifacts", "pull", "mlflow:m:7", "--dir", str(d))
    assert r.exit_code == 2 and "'m' has no version or alias '7' (has: 1 (prod), 2)" in r.output
    r = cli("artifacts", "push", str(folder), "--name", "ds", "--type", "dataset", "--store", "mlflow", "--dir", str(d))
    assert r.exit_code == 2 and "registry holds models only" in r.output

    r = cli(
        "artifacts",
        "push",
        str(folder),
        "--name",
        "m",
        "--type",
        "model",
        "--alias",
        "prod",
        "--store",
        "wandb",
        "--dir",
        str(d),
    )
    assert r.exit_code == 0 and "wandb sync" in r.output, r.output
    (run,) = (d / "wandb").glob("offline-run-*")
    (art,) = read_run(run)["artifacts"]
    assert (art["name"], art["type"], set(art["aliases"])) == ("m", "model", {"latest", "prod"})
    assert art["metadata"]["tunelab_digest"] == content_digest(folder) and set(art["files"]) == {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
