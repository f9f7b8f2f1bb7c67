"""Where the verbs that write may write (`tunelab.outputs`): never over their input, never into a run's own
folders, never over files tunelab did not write; staged writes leave nothing behind; write errors are
one line. Unit tests of the owner, then the real CLI on one small trained run."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import pytest

from conftest import run_cli
from tunelab.errors import TunelabError
from tunelab.outputs import Output, check_output, staged_file, staged_folder, write_error

MODEL = Output("a model folder", lambda p: (p / "tunelab_model.json").is_file(), folder=True)
NOTE = Output("a note", lambda p: p.read_text().startswith("NOTE"))
RESULTS = Output("results", lambda p: (p / "eval.json").is_file(), adds_files=True)


def _run_dir(root: Path) -> Path:
    run = root / "runs" / "r1"
    (run / "final").mkdir(parents=True)
    (run / "tunelab_run.json").write_text("{}")
    (run / "final" / "tunelab_model.json").write_text('{"kind": "adapter"}')
    return run


def _refused(path, kind, text, **kw) -> str:
    with pytest.raises(TunelabError) as e:
        check_output(path, "-o", kind, **kw)
    assert text in str(e.value), str(e.value)
    assert "\n" not in e.value.message
    return e.value.message


# --- check_output ---------------------------------------------------------------------------------


def test_the_input_itself_inside_it_or_around_it_is_refused(tmp_path):
    run = _run_dir(tmp_path)
    for out, text in (
        (run, "is the input"),
        (run / "final", "is inside the input"),
        (run / "merged", "is inside the input"),
        (run.parent, "holds the input"),
        (tmp_path, "holds the input"),
    ):
        for overwrite in (False, True):
            _refused(out, MODEL, text, sources=[run], overwrite=overwrite)


def test_a_file_output_may_sit_in_its_input_but_replaces_only_its_own_file(tmp_path):
    run = _run_dir(tmp_path)
    (run / "summary.json").write_text("{}")
    _refused(run / "summary.json", NOTE, "was not written by tunelab", sources=[run], overwrite=True)
    _refused(run, NOTE, "is the input", sources=[run])
    assert check_output(run / "report.html", "-o", NOTE, sources=[run]) == (run / "report.html").resolve()


def test_a_run_directorys_own_folders_are_refused_to_folder_outputs(tmp_path):
    run = _run_dir(tmp_path)  # not the source here: another run
    _refused(run / "final", MODEL, "is inside the run directory", overwrite=True)
    _refused(run, MODEL, "is a run directory", overwrite=True)
    _refused(run, RESULTS, "is a run directory", overwrite=True)


def test_a_users_folder_or_file_is_refused_with_or_without_overwrite(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("x")
    for overwrite in (False, True):
        _refused(mine, MODEL, "was not written by tunelab as a model folder", overwrite=overwrite)
        _refused(mine / "thesis.txt", MODEL, "is a file, not a folder", overwrite=overwrite)
        _refused(mine / "thesis.txt", NOTE, "was not written by tunelab as a note", overwrite=overwrite)
        _refused(mine, NOTE, "is a folder", overwrite=overwrite)


def test_an_earlier_output_is_replaced_only_with_overwrite(tmp_path):
    earlier = tmp_path / "merged"
    earlier.mkdir()
    (earlier / "tunelab_model.json").write_text("{}")
    _refused(earlier, MODEL, "pass --overwrite", overwrite=False)
    assert check_output(earlier, "-o", MODEL, overwrite=True) == earlier.resolve()
    note = tmp_path / "n.txt"
    note.write_text("NOTE 1")
    assert check_output(note, "-o", NOTE, overwrite=True) == note.resolve()


def test_missing_and_empty_places_are_fine_and_nothing_is_created(tmp_path):
    (tmp_path / "empty").mkdir()
    assert check_output(tmp_path / "empty", "-o", MODEL) == (tmp_path / "empty").resolve()
    assert check_output(tmp_path / "a" / "b" / "c", "-o", MODEL) == (tmp_path / "a" / "b" / "c").resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_home_is_allowed_as_it_is(tmp_path):
    run = _run_dir(tmp_path)
    assert check_output(run, "--out", RESULTS, sources=[run / "final"], home=run) == run.resolve()
    _refused(run / "final", RESULTS, "is the input", sources=[run / "final"], home=run)


def test_places_that_cannot_be_written(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    _refused(f / "out", MODEL, "is a file, not a folder")
    _refused(f / "deeper" / "out.html", NOTE, "is a file, not a folder")
    _refused(tmp_path / ("n" * 250), MODEL, "name too long")
    _refused(tmp_path / ("d" * 300) / "x", NOTE, "name too long")


def test_a_link_is_not_written_through(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "keep.txt").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    _refused(tmp_path / "link", MODEL, "was not written by tunelab", overwrite=True)


# --- staged writes ---------------------------------------------------------------------------------


def test_staged_folder_replaces_an_earlier_output_whole(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with staged_folder(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_staged_write_leaves_the_earlier_output_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(TunelabError, match=f"out of disk space writing {out}"), staged_folder(out) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "half.bin"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "old.txt").read_text() == "old"


def test_a_failed_staged_file_removes_its_temp_and_the_folders_it_made(tmp_path):
    out = tmp_path / "new" / "deeper" / "r.html"
    with pytest.raises(TunelabError, match="cannot write .*r.html: read-only file system"), staged_file(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("Error while serializing: I/O error: Read-only file system (os error 30)")
    assert list(tmp_path.iterdir()) == []


def test_a_bug_inside_a_staged_write_keeps_its_traceback(tmp_path):
    with pytest.raises(KeyError), staged_file(tmp_path / "x.json") as tmp:
        tmp.write_text("{}")
        raise KeyError("bug")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "out of disk space writing"),
        (OSError(errno.EROFS, "Read-only file system"), "cannot write"),
        (OSError(errno.ENOTDIR, "Not a directory"), "Not a directory"),
        (OSError(errno.EISDIR, "Is a directory"), "Is a directory"),
        (OSError(errno.ENAMETOOLONG, "File name too long"), "File name too long"),
        (RuntimeError("safetensors: I/O error: No space left on device (os error 28)"), "out of disk space"),
        (RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed: file write failed"), ""),
    ],
)
def test_write_errors_are_one_line_naming_the_output(tmp_path, exc, text):
    err = write_error(exc, tmp_path / "out")
    assert err is not None and text in err.message and str(tmp_path / "out") in err.message
    assert "\n" not in err.message


def test_other_errors_are_bugs(tmp_path):
    assert write_error(ValueError("shape mismatch"), tmp_path) is None
    assert write_error(OSError(errno.ENOENT, "No such file"), tmp_path) is None


# --- the kinds' recognizers ------------------------------------------------------------------------


def test_synth_recognizes_its_own_data_only(tmp_path):
    from tunelab.data.synthetic import WORDS, generate, is_synthetic_file, task_instructions, write_jsonl

    assert len(task_instructions()) == 6 + 10 * 10 + 3 * len(WORDS)  # every instruction the tasks can ask
    assert is_synthetic_file(write_jsonl(generate(300, seed=5), tmp_path / "s.jsonl"))
    own = tmp_path / "own.jsonl"
    rows = generate(3) + [{"instruction": "Summarize this.", "input": "x", "output": "y"}]
    own.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert not is_synthetic_file(own)


def test_a_prompts_file_that_is_not_utf8_is_one_line_with_its_line(tmp_path):
    from tunelab.config.schema import PromptConfig
    from tunelab.inference.prompts import read_prompt_rows

    p = tmp_path / "p.jsonl"
    p.write_bytes(b'{"instruction": "a"}\n{"instruction": "caf\xe9"}\n')
    with pytest.raises(TunelabError, match=r"p.jsonl:2: not UTF-8 text"):
        read_prompt_rows(p, PromptConfig())


# --- end to end: the real CLI on one small trained run -----------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 4-step LoRA run under ROOT/runs/r1, and a user's folder beside it."""
    from conftest import base_config, write_cfg
    from tunelab.data.synthetic import generate, write_jsonl

    root = tmp_path_factory.mktemp("outputs")
    data = write_jsonl(generate(80, seed=3), root / "data.jsonl")
    cfg = base_config(data, root / "runs", training={"grad_accum": 1, "eval_steps": None})
    cfg.update(samples={"enabled": False}, tracking={"backend": "none"})
    r = run_cli("train", str(write_cfg(root, cfg)), "output.name=r1", cwd=root)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (root / "mine").mkdir()
    (root / "mine" / "thesis.txt").write_text("three years of work")
    return root / "runs" / "r1"


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["merge", "runs/r1", "-o", "runs/r1", "--overwrite"], "never writes over its input"),
        (["export", "runs/r1", "--format", "hf", "-o", "runs/r1", "--overwrite"], "never writes over its input"),
        (["export", "runs/r1", "--format", "adapter", "-o", "runs", "--overwrite"], "holds the input"),
        (["export", "runs/r1", "--format", "gguf", "-o", "runs/r1/final", "--overwrite"], "never writes over"),
        (["export", "runs/r1", "--format", "adapter", "-o", ".", "--overwrite"], "holds the input"),
        (["export", "runs/r1", "--format", "adapter", "-o", "data.jsonl"], "is a file, not a folder"),
        (["tiny", "--out", "mine"], "was not written by tunelab"),
        (["report", "runs/r1", "-o", "runs/r1/summary.json"], "was not written by tunelab"),
        (["report", "runs/r1", "-o", "mine"], "is a folder"),
        (["eval", "runs/r1", "--out", "data.jsonl"], "is a file, not a folder"),
        (["generate", "runs/r1", "--file", "data.jsonl", "--out", "data.jsonl"], "never writes over its input"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_refused_outputs_exit_2_and_change_nothing(trained, args, text):
    root = trained.parent.parent
    before = _tree(root)
    r = run_cli(*args, cwd=root, timeout=300)
    assert r.returncode == 2, r.stdout[-1000:] + r.stderr[-1000:]
    assert text in r.stderr and "Traceback" not in r.stderr
    assert _tree(root) == before
