"""Tracking end to end on the tiny model, offline.

One CLI run trains from a dataset artifact and logs to trackio, W&B (offline), MLflow (local sqlite)
and TensorBoard at once, with canary secrets in the environment and the config and HOME pointed at
an empty folder; every backend is then read back through its own API. A second, in-process run
continues the first run's model artifact while two injected trackers fail mid-run.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import base_config

pytestmark = pytest.mark.slow

CANARIES = {
    "WANDB_API_KEY": "canary-wandb-4f9a1c2e7b",
    "HF_TOKEN": "canary-hf-8d3e5a1f0c",
    "MY_SERVICE_TOKEN": "canary-svc-2b7c9e4d1a",
    "DB_PASSWORD": "canary-pw-6e1a3f8b2d",
}
URI_CANARY = "canary-uri-9c4b2e7a1f"
STEPS = [1, 2, 3, 4]
SAMPLE_COLUMNS = ["step", "prompt", "generation", "reference", "settings"]
RUN = "r1"


def cli(*args: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunelab.cli.main", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, _isolated_cache):
    from tunelab.data.synthetic import generate, write_jsonl

    root = tmp_path_factory.mktemp("tracked")
    home = root / "home"
    home.mkdir()
    tracking = root / "runs" / ".tracking"
    data = write_jsonl(generate(200, seed=3), root / "synth.jsonl")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_", "TRACKIO_", "XDG_"))}
    env.update(CANARIES, HOME=str(home), COLUMNS="200")
    push = cli(
        "artifacts",
        "push",
        str(data),
        "--name",
        "synth",
        "--type",
        "dataset",
        "--alias",
        "gold",
        "--dir",
        str(tracking),
        env=env,
    )
    assert push.returncode == 0, push.stderr[-3000:]

    cfg = base_config(data, root / "runs")
    cfg["data"]["train"]["path"] = "trackio:tunelab/synth:gold"
    cfg["tracking"] = {
        "backend": ["trackio", "wandb", "mlflow", "tensorboard"],
        "tags": ["e2e", CANARIES["DB_PASSWORD"]],
        "job_type": "finetune",
        "notes": f"key {CANARIES['MY_SERVICE_TOKEN']} at https://bob:{URI_CANARY}@example.org/x",
        "system_every_s": 0.01,
        "model_aliases": ["candidate"],
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = cli("train", str(path), f"output.name={RUN}", env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    run = root / "runs" / RUN
    return SimpleNamespace(
        root=root,
        home=home,
        tracking=tracking,
        run=run,
        env=env,
        train=r,
        push=push,
        where=json.loads((run / "tracking.json").read_text()),
        lineage=json.loads((run / "lineage.json").read_text()),
    )


def test_every_backend_started_and_the_run_records_lineage(tracked):
    assert {k: v["active"] for k, v in tracked.where.items()} == {
        "trackio": True,
        "wandb": True,
        "mlflow": True,
        "tensorboard": True,
    }
    # no tracker warned (the short run's own "only 4 optimizer steps" warning is the run's, not a tracker's)
    assert [line for line in tracked.train.stderr.splitlines() if "warning" in line] == [
        line for line in tracked.train.stderr.splitlines() if line.startswith("warning: only 4 optimizer steps")
    ]
    (inp,) = tracked.lineage["inputs"]
    assert (inp["ref"], inp["requested"], inp["type"]) == (
        "trackio:tunelab/synth:v0",
        "trackio:tunelab/synth:gold",
        "dataset",
    )
    final_digest = __import__("tunelab.artifacts", fromlist=["x"]).content_digest(tracked.run / "final")
    outs = {o["store"]: o for o in tracked.lineage["outputs"]}
    assert (
        outs["trackio"]["ref"] == f"trackio:tunelab/{RUN}-model:v0" and outs["mlflow"]["ref"] == f"mlflow:{RUN}-model:1"
    )
    assert {"latest", "final", "best", "candidate"} <= set(outs["trackio"]["aliases"])
    assert all(o["digest"] == final_digest for o in outs.values())

    shown = json.loads(cli("runs", "show", RUN, "--dir", str(tracked.root / "runs"), "--json", env=tracked.env).stdout)
    assert shown["status"] == "completed" and shown["reads"][0]["ref"] == "trackio:tunelab/synth:v0"
    assert f"trackio:tunelab/{RUN}-model:v0" in [w["ref"] for w in shown["writes"]]
    art = json.loads(
        cli(
            "artifacts",
            "show",
            f"trackio:tunelab/{RUN}-model:final",
            "--dir",
            str(tracked.tracking),
            "--json",
            env=tracked.env,
        ).stdout
    )
    # model artifact -> the run that made it -> the dataset version it read
    assert art["lineage"]["producer_run"] == RUN and art["lineage"]["producer_inputs"] == ["trackio:tunelab/synth:v0"]
    assert art["metadata"]["base_model"] == "tiny:llama-2l" and art["metadata"]["final_eval_loss"] is not None
    assert art["digest"] == final_digest


def _train_rows(run: Path) -> list[dict]:
    return [
        json.loads(x)
        for x in (run / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in x and "eval_loss" not in x
    ]


def test_trackio_reads_back_metrics_samples_config_and_system(tracked):
    from tunelab.compat import point_trackio_at

    point_trackio_at(tracked.tracking / "trackio")
    from trackio.sqlite_storage import SQLiteStorage

    logs = SQLiteStorage.get_logs("tunelab", RUN)
    train = [x for x in logs if "loss" in x]
    assert [x["step"] for x in train] == STEPS
    assert all({"learning_rate", "grad_norm", "tokens_per_s"} <= set(x) for x in train)
    expected = {r["step"]: r["loss"] for r in _train_rows(tracked.run)}
    assert {x["step"]: x["loss"] for x in train} == pytest.approx(expected)
    assert sorted(x["step"] for x in logs if "eval_loss" in x) == [2, 4]
    tables = [x for x in logs if "samples" in x]
    assert [x["step"] for x in tables] == [2, 4]
    rows = tables[0]["samples"]["_value"]
    assert len(rows) == 4 and list(rows[0]) == SAMPLE_COLUMNS and rows[0]["prompt"].endswith("### Response:\n")
    config = SQLiteStorage.get_run_config("tunelab", RUN)
    assert config["training"]["learning_rate"] == 1e-3 and config["tunelab"]["parameters"]["trainable"] > 0
    assert config["tunelab"]["versions"]["transformers"] and config["tunelab"]["data"]["rows_read"] == 200
    assert "packing_efficiency" in config["tunelab"]["data"] and config["tunelab"]["machine"]["cpu_count"] >= 1
    system = SQLiteStorage.get_system_logs("tunelab", RUN)
    assert system and "system/process_rss_gb" in system[0]


def test_wandb_offline_run_reads_back(tracked):
    from wandb_offline import read_run, table_rows

    sync_dir = Path(tracked.where["wandb"]["dir"])
    assert tracked.where["wandb"]["mode"] == "offline" and sync_dir.is_relative_to(tracked.tracking)
    got = read_run(sync_dir)
    assert got["run"]["name"] == RUN and got["run"]["job_type"] == "finetune" and "e2e" in got["run"]["tags"]
    train = [h for h in got["history"] if "loss" in h]
    assert [h["_step"] for h in train] == STEPS and all("learning_rate" in h and "grad_norm" in h for h in train)
    assert got["config"]["training"]["learning_rate"] == 1e-3 and "git" in got["config"]["tunelab"]
    rows = table_rows(sync_dir)
    assert sorted({r["step"] for r in rows}) == [2, 4] and len(rows) == 8 and list(rows[0]) == SAMPLE_COLUMNS
    (model,) = [a for a in got["artifacts"] if a["type"] == "model"]
    assert model["name"] == f"{RUN}-model" and {"latest", "final"} <= set(model["aliases"])
    assert "adapter_model.safetensors" in model["files"] and model["metadata"]["base_model"] == "tiny:llama-2l"
    assert got["summary"]["status"] == "completed"


def test_mlflow_reads_back_metrics_table_params_model_and_input(tracked):
    import mlflow
    from mlflow import MlflowClient

    uri = tracked.where["mlflow"]["uri"]
    run_id = tracked.where["mlflow"]["run_id"]
    mlflow.set_tracking_uri(uri)
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["job_type"] == "finetune"
    assert run.data.params["training.learning_rate"] == "0.001" and run.data.params["adapter.r"] == "8"
    assert [m.step for m in c.get_metric_history(run_id, "loss")] == STEPS
    assert [m.step for m in c.get_metric_history(run_id, "eval_loss")] == [2, 4]
    table = c.load_table(run.info.experiment_id, "samples.json", run_ids=[run_id])
    assert list(table.columns) == SAMPLE_COLUMNS and sorted(set(table["step"])) == [2, 4] and len(table) == 8
    mv = c.get_model_version_by_alias(f"{RUN}-model", "final")
    assert str(mv.version) == "1" and mv.run_id == run_id and {"best", "candidate"} <= set(mv.aliases)
    assert mv.tags["tunelab.digest"] == tracked.lineage["outputs"][0]["digest"]
    (ds,) = run.inputs.dataset_inputs
    assert ds.dataset.name == "synth" and "synth:v0" in ds.dataset.source


def test_tensorboard_reads_back_scalars_and_sample_text(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(tracked.where["tensorboard"]["logdir"], size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    assert [e.step for e in ea.Scalars("loss")] == STEPS
    assert [e.step for e in ea.Scalars("eval_loss")] == [2, 4]
    texts = ea.Tensors("samples/text_summary")
    assert [t.step for t in texts] == [2, 4]
    first = texts[0].tensor_proto.string_val[0].decode()
    assert first.startswith("| step | prompt | generation | reference | settings |") and "### Response:" in first


def test_model_artifact_loads_back_and_generates_like_final(tracked):
    from tunelab.artifacts import Home
    from tunelab.inference.generate import GenerationSettings, generate_batch
    from tunelab.inference.target import load_target, resolve_target

    home = Home.default(tracked.tracking)
    from_art = resolve_target(f"trackio:tunelab/{RUN}-model:best", home=home)
    from_run = resolve_target(str(tracked.run))
    assert from_art.adapter is not None and from_art.prompt == from_run.prompt
    assert from_art.config.quantization == from_run.config.quantization
    prompts = [json.loads(x)["prompt"] for x in (tracked.run / "samples.jsonl").read_text().splitlines()[:3]]
    settings = GenerationSettings(max_new_tokens=12, do_sample=False)
    answers = []
    for target in (from_art, from_run):
        model, tok = load_target(target, device="cpu")
        answers.append(generate_batch(model, tok, prompts, settings))
    assert answers[0] == answers[1] and any(a.strip() for a in answers[0])
    from tunelab.errors import TunelabError

    with pytest.raises(TunelabError, match="has no version or alias 'nope'"):
        resolve_target(f"trackio:tunelab/{RUN}-model:nope", home=home)


def test_no_secret_reaches_any_file_or_output_and_nothing_lands_in_home(tracked):
    canaries = [*CANARIES.values(), URI_CANARY]
    leaks = []
    for f in tracked.root.rglob("*"):
        if f.is_file() and f.name != "run.yaml":  # the config as the user wrote it, canaries included
            blob = f.read_bytes()
            leaks += [(str(f.relative_to(tracked.root)), c) for c in canaries if c.encode() in blob]
    for name, text in (
        ("train output", tracked.train.stdout + tracked.train.stderr),
        ("push output", tracked.push.stdout + tracked.push.stderr),
    ):
        leaks += [(name, c) for c in canaries if c in text]
    assert leaks == []
    assert "***" in (tracked.run / "config.yaml").read_text()  # the notes and tag were there, redacted
    written_home = sorted(str(p.relative_to(tracked.home)) for p in tracked.home.rglob("*") if p.is_file())
    assert written_home == []


def test_dashboard_answers_on_localhost_and_stops(tracked):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunelab.cli.main",
            "dashboard",
            "--dir",
            str(tracked.tracking),
            "--project",
            "tunelab",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=tracked.env,
    )
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split("dashboard: ", 1)[1].strip()
        with urllib.request.urlopen(url, timeout=30) as resp:
            assert resp.status == 200 and b"<html" in resp.read(2000).lower()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
    assert code == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


class Boom:
    name = "boom"

    def log_metrics(self, record):
        if record["step"] >= 2:
            raise OSError("tracker disk full")


class Hang:
    name = "hang"

    def log_samples(self, step, table):
        time.sleep(3600)


def test_continue_a_model_artifact_while_trackers_fail_mid_run(tracked, tmp_path):
    """Training goes on past a tracker that raises at step 2 and one that hangs: one warning each,
    final/ complete, the healthy tracker has every step; the run starts from the artifact's adapter."""
    import io

    from rich.console import Console
    from safetensors.torch import load_file

    from tunelab.config.load import build_config
    from tunelab.training.run import train

    cfg = base_config(tracked.root / "synth.jsonl", tracked.root / "runs")
    cfg["model"]["name"] = f"trackio:tunelab/{RUN}-model:final"
    cfg["training"].update(learning_rate=1e-9, save_steps=None)
    cfg["tracking"] = {"backend": "trackio", "timeout_s": 2, "model_artifact": "continued"}
    cfg["output"]["name"] = "r2"
    text = io.StringIO()
    summary = train(build_config(cfg), console=Console(file=text, width=200), sinks=[Boom(), Hang()])
    log = text.getvalue()
    assert summary.status == "completed" and summary.steps == 4
    run = tracked.root / "runs" / "r2"
    assert (run / "final" / "adapter_model.safetensors").is_file() and (run / "final" / "tunelab_model.json").is_file()
    assert (
        log.count("boom failed in log_metrics") == 1
        and log.count("hang failed in log_samples (no answer within 2 s)") == 1
    )
    from trackio.sqlite_storage import SQLiteStorage

    assert [x["step"] for x in SQLiteStorage.get_logs("tunelab", "r2") if "loss" in x] == STEPS
    # a learning rate of 1e-9 leaves the weights where they started: the artifact's adapter, not a fresh one
    start, end = (
        load_file(tracked.run / "final" / "adapter_model.safetensors"),
        load_file(run / "final" / "adapter_model.safetensors"),
    )
    lora_b = [k for k in start if "lora_B" in k]
    assert lora_b and all(start[k].abs().sum() > 0 for k in lora_b)
    assert all((start[k] - end[k]).abs().max() < 1e-6 for k in start)
    lineage = json.loads((run / "lineage.json").read_text())
    assert [i["ref"] for i in lineage["inputs"]] == [f"trackio:tunelab/{RUN}-model:v0"]
    assert lineage["outputs"][0]["ref"] == "trackio:tunelab/continued:v0"


def test_eval_from_another_folder_resolves_the_run_s_own_artifacts(tracked, tmp_path):
    """A run whose data and base model are artifact references, evaluated from a folder where no
    tracking directory is: both references resolve in the run's own store (its saved config)."""
    cfg = base_config(
        tracked.root / "synth.jsonl",
        tracked.root / "runs",
        samples={"enabled": False},
        training={"max_steps": 2, "save_steps": None, "eval_steps": None},
    )
    cfg["data"]["train"]["path"] = "trackio:tunelab/synth:gold"
    cfg["model"]["name"] = f"trackio:tunelab/{RUN}-model:final"
    cfg["tracking"] = {"backend": "trackio", "log_model": False}
    path = tracked.root / "refs.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = cli("train", str(path), "output.name=refs", env=tracked.env)
    assert r.returncode == 0, r.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in tracked.env.items() if k != "TUNELAB_TRACKING_DIR"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunelab.cli.main",
            "eval",
            str(tracked.root / "runs" / "refs"),
            "--limit",
            "4",
            "--max-new-tokens",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=elsewhere,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tracked.root / "runs" / "refs" / "eval.json").read_text())
    assert result["data"]["examples"] == 4 and "target" in result["models"]
    assert not (elsewhere / "runs").exists()  # nothing looked for (or made) a store in the working folder
