"""Unit tests of the reliability rules (issue 10): run names, the run lock, overwrite, write errors,
config values only transformers would have rejected. The end-to-end cases are in tests/support/battery.py."""

import errno
import json
import subprocess
import sys
import textwrap

import pytest

from tunelab.config.load import build_config
from tunelab.errors import ConfigError, TunelabError, as_user_error, os_error
from tunelab.runs import RunDir, RunLock, check_run_dir, prepare_run_dir

MINIMAL = {"model": {"name": "tiny:llama-2l"}, "data": {"train": {"path": "x.jsonl"}}}


@pytest.mark.parametrize("name", [".", "..", "/abs/path", "../../x", "a/b", "", "with space"])
def test_a_run_name_is_one_folder_name(name):
    with pytest.raises(ConfigError, match="output.name: must be one folder name"):
        build_config({**MINIMAL, "output": {"name": name}})


def test_good_run_names_pass():
    assert build_config({**MINIMAL, "output": {"name": "r1.a_b-C"}}).output.name == "r1.a_b-C"


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("optimizer", "adamw_torchh", "did you mean 'adamw_torch'?"),
        ("lr_scheduler", "cosinee", "did you mean 'cosine'?"),
    ],
)
def test_values_only_transformers_checked_are_checked_up_front(key, value, message):
    with pytest.raises(ConfigError) as e:
        build_config({**MINIMAL, "training": {key: value}})
    assert f"training.{key}: unknown value; {message}" in str(e.value)


def test_device_and_template_are_checked():
    with pytest.raises(ConfigError, match="model.device: must be auto, cpu, cuda"):
        build_config({**MINIMAL, "model": {"name": "x", "device": "tpu:7"}})
    with pytest.raises(ConfigError, match="prompt.template: expected '}'"):
        build_config({**MINIMAL, "prompt": {"format": "custom", "template": "Q: {instruction"}})


def test_overwrite_only_replaces_tunelab_run_directories(tmp_path):
    foreign = tmp_path / "runs" / "photos"
    foreign.mkdir(parents=True)
    (foreign / "a.jpg").write_bytes(b"x")
    with pytest.raises(TunelabError, match="was not made by tunelab"):
        check_run_dir(tmp_path / "runs", "photos", resume=False, overwrite=True)
    assert (foreign / "a.jpg").read_bytes() == b"x"
    ours = prepare_run_dir(tmp_path / "runs", "mine", resume=False, overwrite=False)
    (ours.path / "metrics.jsonl").write_text("{}\n")
    assert ours.marker.is_file() and ours.is_tunelab_run()
    again = prepare_run_dir(tmp_path / "runs", "mine", resume=False, overwrite=True)
    assert not (again.path / "metrics.jsonl").exists() and again.marker.is_file()


def test_a_run_directory_from_before_the_marker_still_counts_as_tunelab_s(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    (run / "config.yaml").write_text("model: {name: x}\ndata: {}\ntraining: {}\noutput: {}\n")
    (run / "summary.json").write_text("{}")
    assert RunDir(run).is_tunelab_run()
    (run / "summary.json").unlink()
    assert not RunDir(run).is_tunelab_run()  # a lone YAML file is not enough


def test_the_run_lock_refuses_a_second_holder_and_takes_over_a_dead_one(tmp_path):
    run = tmp_path / "runs" / "r"
    script = textwrap.dedent(f"""
        from pathlib import Path
        from tunelab.errors import TunelabError
        from tunelab.runs import RunLock
        try:
            RunLock(Path({str(run)!r})).acquire()
        except TunelabError as e:
            print(e.message)
    """)
    with RunLock(run) as lock:
        holder = json.loads(lock.path.read_text())
        assert holder["pid"] > 0
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60).stdout
        assert f"is in use by PID {holder['pid']}" in out
    assert not lock.path.exists()
    # a lock file whose holder died without releasing it (kill -9): taken over, and said so
    lock.path.write_text(json.dumps({"pid": 424242, "host": "elsewhere"}))
    with RunLock(run) as again:
        assert again.took_over == {"pid": 424242, "host": "elsewhere"}


def test_full_disk_errors_from_libraries_become_one_line(tmp_path):
    err = as_user_error(
        RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0: file write failed")
    )
    assert err is not None and err.message.startswith("out of disk space writing")
    err = as_user_error(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.json")))
    assert f"out of disk space writing {tmp_path / 'x.json'}" in err.message and "MB left" in err.message
    assert as_user_error(ValueError("a bug")) is None
    assert "cannot write" in os_error(OSError(errno.EROFS, "Read-only file system", "/ro/x")).message


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    real = type(tmp_path).replace

    def full(self, target):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(tmp_path), "replace", full)
    with pytest.raises(TunelabError, match="out of disk space"):
        run.write_json(run.summary, {"status": "completed"})
    monkeypatch.setattr(type(tmp_path), "replace", real)
    assert not list(tmp_path.iterdir())


def test_resume_drops_the_log_records_after_the_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    run.metrics.write_text(
        "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 7)) + '{"step": 7, "lo'
    )
    assert run.truncate_logs(4) == {"metrics.jsonl": 3}
    assert [json.loads(x)["step"] for x in run.metrics.read_text().splitlines()] == [1, 2, 3, 4]
