"""The fault and abuse battery: bad input, faults (signals, full disk, two writers, tampered caches)
and what the CLI makes of them.

Every case runs the real CLI in a subprocess (or a short in-process call) on the tiny model and is
classified: `clean` (the expected exit code and one-line message, no traceback, nothing lost),
`traceback`, `hang` (past its deadline), `data lost` (a file tunelab did not create was removed or
changed, or a half-written file was left looking complete) or `wrong` (anything else).
`tests/e2e/test_battery.py` asserts every case is clean; `bench/battery.py` runs them all and writes
the counts to `bench/results/battery.json`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CASES: dict[str, Callable[[Context], Outcome]] = {}
GROUPS: dict[str, str] = {}


def case(group: str):
    def register(fn):
        CASES[fn.__name__.removeprefix("case_")] = fn
        GROUPS[fn.__name__.removeprefix("case_")] = group
        return fn

    return register


@dataclass
class Outcome:
    rc: int | None
    output: str
    expect: str = ""
    expect_rc: int = 2
    lost: str | None = None  # what was lost or left half-written, when something was
    timed_out: bool = False
    skipped: str | None = None

    @property
    def verdict(self) -> str:
        if self.skipped:
            return "skipped"
        if self.timed_out:
            return "hang"
        if "Traceback (most recent call last)" in self.output:
            return "traceback"
        if self.lost:
            return "data lost"
        if self.rc == self.expect_rc and self.expect in self.output:
            return "clean"
        return "wrong"


class Skip(Exception):
    pass


_ZYGOTE: list = []


def _zygote():
    """The process the commands are forked from (tests/support/zygote.py), started on first use; None when
    TUNELAB_BATTERY_FORK=0 asks for a fresh interpreter per command."""
    if os.environ.get("TUNELAB_BATTERY_FORK", "1") == "0":
        return None
    if not _ZYGOTE or not _ZYGOTE[0].alive:
        import atexit

        from zygote import Zygote

        _ZYGOTE[:] = [Zygote({**os.environ, "COLUMNS": "200"})]
        atexit.register(_ZYGOTE[0].close)
    return _ZYGOTE[0]


@dataclass
class Context:
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)
    _run: Path | None = None
    runs: int = 0

    def path(self, name: str) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def cli(self, *args: str, timeout: float = 300, fault: str | None = None) -> tuple[int | None, str, bool]:
        env = {**os.environ, **self.env, "COLUMNS": "200"}
        zygote = _zygote()
        if zygote is not None and zygote.can_run(env):
            self.runs += 1
            out = (
                Path(tempfile.gettempdir()) / f"tunelab-battery-{os.getpid()}-{self.runs}.txt"
            )  # not in the case's folders
            return zygote.run(list(args), self.tmp, env, timeout, fault, out)
        cmd = (
            [sys.executable, "-m", "tunelab.cli.main", *args]
            if fault is None
            else [sys.executable, str(HERE / "fault_inject.py"), fault, "--", *args]
        )
        try:
            r = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=self.tmp,
                env=env,
            )
        except subprocess.TimeoutExpired as e:
            return (
                None,
                (e.stdout or b"").decode() + (e.stderr or b"").decode() if isinstance(e.stdout, bytes) else "",
                True,
            )
        return r.returncode, r.stdout + r.stderr, False

    def data(self, n: int = 120, name: str = "data.jsonl") -> Path:
        from tunelab.data.synthetic import generate, write_jsonl

        p = self.tmp / name
        return p if p.is_file() else write_jsonl(generate(n, seed=3), p)

    def config(self, name: str = "c.yaml", **sections) -> Path:
        cfg = {
            "model": {"name": "tiny:llama-2l"},
            "adapter": {"r": 8, "alpha": 16, "dropout": 0.0},
            "data": {"train": {"path": str(self.data())}, "test_size": 8},
            "training": {
                "max_steps": 4,
                "batch_size": 4,
                "grad_accum": 1,
                "max_length": 128,
                "learning_rate": 1e-3,
                "eval_steps": None,
                "save_steps": 2,
                "gradient_checkpointing": False,
            },
            "samples": {"enabled": False},
            "tracking": {"backend": "none"},
            "output": {"dir": str(self.tmp / "runs")},
        }
        for section, values in sections.items():
            if isinstance(values, dict) and isinstance(cfg.get(section), dict):
                cfg[section].update(values)
            else:
                cfg[section] = values
        p = self.path(name)
        p.write_text(yaml.safe_dump(cfg))
        return p

    def trained_run(self) -> Path:
        """A finished 4-step LoRA run with checkpoints at steps 2 and 4 (built once per battery)."""
        if self._run is None:
            rc, out, _ = self.cli("train", str(self.config("trained.yaml")), "output.name=trained")
            assert rc == 0, out[-2000:]
            self._run = self.tmp / "runs" / "trained"
        return self._run

    def copy_run(self, name: str) -> Path:
        dst = self.tmp / "runs" / name
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(self.trained_run(), dst)
        return dst


def snapshot(folder: Path) -> dict[str, bytes]:
    return (
        {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        if folder.exists()
        else {}
    )


def lost_files(before: dict[str, bytes], folder: Path) -> str | None:
    after = snapshot(folder)
    gone = [k for k in before if k not in after]
    changed = [k for k in before if k in after and after[k] != before[k]]
    if gone or changed:
        return f"{folder}: removed {gone[:3]} changed {changed[:3]}"
    return None


@contextmanager
def read_only(folder: Path):
    """`folder` (made here) that nobody can write: a read-only tmpfs as root (root ignores modes), else chmod."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True)
        if r.returncode != 0:
            raise Skip(f"cannot mount a read-only tmpfs here ({r.stderr.decode().strip()[:80]})")
        try:
            yield folder
        finally:
            subprocess.run(["umount", str(folder)], capture_output=True)
    else:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)


@contextmanager
def small_disk(folder: Path, size: str = "16m"):
    """A small tmpfs at `folder` (root only), so a test can fill it."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        raise Skip("filling a disk needs a tmpfs mount (root)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if r.returncode != 0:
        raise Skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()[:80]})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def expect(ctx: Context, args: list[str], text: str, rc: int = 2, **kw) -> Outcome:
    code, out, hung = ctx.cli(*args, **kw)
    return Outcome(code, out, text, rc, timed_out=hung)


# --- data loss: run names, overwrite, two writers ---------------------------------------------


def _name_case(ctx: Context, name: str, guard: Path) -> Outcome:
    guard.mkdir(parents=True, exist_ok=True)
    (guard / "keep.txt").write_text("user file")
    before = snapshot(guard)
    cfg = ctx.config(
        f"name-{abs(hash(name))}.yaml", output={"dir": str(ctx.tmp / "runs"), "name": name, "overwrite": True}
    )
    o = expect(ctx, ["train", str(cfg)], "output.name: must be one folder name")
    o.lost = lost_files(before, guard)
    return o


@case("data loss")
def case_name_dot_with_overwrite(ctx):
    return _name_case(ctx, ".", ctx.tmp / "runs" / "someone-elses-run")


@case("data loss")
def case_name_dotdot_with_overwrite(ctx):
    return _name_case(ctx, "..", ctx.tmp / "beside-runs")


@case("data loss")
def case_name_absolute_with_overwrite(ctx):
    return _name_case(ctx, str(ctx.tmp / "precious"), ctx.tmp / "precious")


@case("data loss")
def case_name_escapes_output_dir(ctx):
    o = _name_case(ctx, "../../escaped", ctx.tmp / "guard")
    if (ctx.tmp.parent / "escaped").exists():
        o.lost = "a run directory was created outside output.dir"
    return o


@case("data loss")
def case_overwrite_refuses_a_foreign_directory(ctx):
    mine = ctx.tmp / "runs" / "photos"
    mine.mkdir(parents=True, exist_ok=True)
    (mine / "holiday.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    before = snapshot(mine)
    cfg = ctx.config("foreign.yaml", output={"dir": str(ctx.tmp / "runs"), "name": "photos", "overwrite": True})
    o = expect(ctx, ["train", str(cfg)], "was not made by tunelab")
    o.lost = lost_files(before, mine)
    return o


@case("data loss")
def case_two_writers_one_run(ctx):
    cfg = ctx.config(
        "two.yaml",
        training={"max_steps": 40, "save_steps": None},
        output={"dir": str(ctx.tmp / "runs"), "name": "shared", "overwrite": True},
    )
    # the first run holds the run open (a pause after step 1) while the second one starts
    first = subprocess.Popen(
        [sys.executable, str(HERE / "fault_inject.py"), "pause_at:1:25", "--", "train", str(cfg)],
        cwd=ctx.tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    lock = ctx.tmp / "runs" / ".shared.lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        o = expect(ctx, ["train", str(cfg)], "is in use by PID")
    finally:
        out_first, _ = first.communicate(timeout=600)
    summary = json.loads((ctx.tmp / "runs" / "shared" / "summary.json").read_text())
    if first.returncode != 0 or summary.get("status") != "completed" or summary.get("steps") != 40:
        o.lost = f"the first run did not finish cleanly: rc {first.returncode} {out_first[-300:]}"
    return o


@case("data loss")
def case_stale_lock_is_taken_over(ctx):
    cfg = ctx.config("stale.yaml", output={"dir": str(ctx.tmp / "runs"), "name": "stale"})
    (ctx.tmp / "runs").mkdir(exist_ok=True)
    (ctx.tmp / "runs" / ".stale.lock").write_text(json.dumps({"pid": 999999, "host": "gone", "since": 0}))
    return expect(ctx, ["train", str(cfg)], "took over the lock", rc=0)


# --- faults: full disk, signals, tampered caches, read-only stores -----------------------------


@case("fault")
def case_full_disk_at_a_checkpoint(ctx):
    with small_disk(ctx.tmp / "disk") as disk:
        cfg = ctx.config(
            "full.yaml", training={"max_steps": 6, "save_steps": 3}, output={"dir": str(disk / "runs"), "name": "full"}
        )
        o = expect(ctx, ["train", str(cfg)], "out of disk space writing", fault="fill_disk_at:2:12288")
        run = disk / "runs" / "full"
        left = [str(p) for p in run.rglob("*.tmp")] + [str(p) for p in run.rglob("checkpoint-*")]
        summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
        if left or (run / "final").exists():
            o.lost = f"half-written files left: {left[:3]} final={(run / 'final').exists()}"
        elif summary.get("status") != "failed" or "disk" not in str(summary.get("reason")):
            o.lost = f"summary.json does not say failed (out of space): {summary}"
        return o


def _signal_case(ctx: Context, sig: str, rc: int) -> Outcome:
    name = f"sig{sig.lower()}"
    cfg = ctx.config(
        f"{name}.yaml",
        training={"max_steps": 8, "save_steps": None},
        tracking={"backend": "trackio"},
        output={"dir": str(ctx.tmp / "runs"), "name": name},
    )
    o = expect(
        ctx,
        ["train", str(cfg), "training.learning_rate=0.001"],
        "continue with: tunelab train",
        rc=rc,
        fault=f"signal_at:3:{sig}",
    )
    run = ctx.tmp / "runs" / name
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    tracking = json.loads((run / "tracking.json").read_text()) if (run / "tracking.json").is_file() else {}
    # the signal comes during step 3's callbacks: the run stops at the next step boundary, step 4
    if summary.get("status") != "interrupted" or not (run / "checkpoints" / "step-000004").is_dir():
        o.lost = f"no interrupted summary or step-4 checkpoint: {summary}"
    elif "training.learning_rate=0.001" not in o.output or "--resume" not in o.output:
        o.lost = "the resume hint dropped the overrides"
    elif "trackio" not in tracking:
        o.lost = "trackers were not closed (no tracking.json)"
    else:
        code, out, _ = ctx.cli("train", str(cfg), "training.learning_rate=0.001", "--resume")
        done = json.loads((run / "summary.json").read_text())
        if code != 0 or done.get("status") != "completed" or done.get("steps") != 8:
            o.lost = f"resume after {sig} failed: {out[-300:]}"
    return o


@case("fault")
def case_sigterm_stops_at_a_step_with_a_checkpoint(ctx):
    return _signal_case(ctx, "SIGTERM", 143)


@case("fault")
def case_ctrl_c_stops_at_a_step_with_a_checkpoint(ctx):
    return _signal_case(ctx, "SIGINT", 130)


@case("fault")
def case_tampered_artifact_cache_is_fetched_again(ctx):
    tracking = ctx.tmp / "runs" / ".tracking"
    data = ctx.data()
    code, out, _ = ctx.cli("artifacts", "push", str(data), "--name", "ds", "--type", "dataset", "--dir", str(tracking))
    assert code == 0, out
    pulled = ctx.tmp / "pulled1"
    ctx.cli("artifacts", "pull", "trackio:tunelab/ds:latest", "--out", str(pulled), "--dir", str(tracking))
    cached = next((tracking / "artifact-cache").rglob("data.jsonl"))
    cached.write_text('{"instruction": "tampered", "output": "x"}\n')
    o = expect(
        ctx,
        ["artifacts", "pull", "trackio:tunelab/ds:latest", "--out", str(ctx.tmp / "pulled2"), "--dir", str(tracking)],
        "pulled",
        rc=0,
    )
    if (ctx.tmp / "pulled2" / "data.jsonl").read_bytes() != data.read_bytes():
        o.lost = "the tampered cache copy was handed out"
    return o


@case("fault")
def case_tampered_token_cache_is_rebuilt(ctx):
    cache = ctx.tmp / "token-cache"
    cfg = ctx.config("tok.yaml", data={"train": {"path": str(ctx.data())}, "test_size": 8, "cache_dir": str(cache)})
    code, out, _ = ctx.cli("train", str(cfg), "output.name=tok1")
    assert code == 0, out[-1000:]
    arrow = next(cache.rglob("train.arrow"))
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    o = expect(ctx, ["train", str(cfg), "output.name=tok2"], "rebuilding it", rc=0)
    a = json.loads((ctx.tmp / "runs" / "tok1" / "summary.json").read_text())
    b = json.loads((ctx.tmp / "runs" / "tok2" / "summary.json").read_text()) if o.rc == 0 else {}
    if o.rc == 0 and a["final_train_loss"] != b.get("final_train_loss"):
        o.lost = "the run on the rebuilt cache trained on different data"
    return o


@case("fault")
def case_read_only_trackio_store(ctx):
    tracking = ctx.tmp / "ro-tracking"
    with read_only(tracking / "trackio"):
        cfg = ctx.config("rotrack.yaml", tracking={"backend": "trackio", "dir": str(tracking)})
        o = expect(ctx, ["train", str(cfg), "output.name=rotrack"], "trackio is off for this run", rc=0)
    where = json.loads((ctx.tmp / "runs" / "rotrack" / "tracking.json").read_text())
    if where.get("trackio", {}).get("active") is not False:
        o.lost = f"tracking.json reports a tracker active that wrote nothing: {where}"
    if o.output.count("trackio is off") != 1:
        o.lost = "expected exactly one warning"
    return o


@case("fault")
def case_kill_9_then_resume_loses_nothing(ctx):
    cfg = ctx.config("kill.yaml", training={"max_steps": 6, "save_steps": 2})
    code, out, _ = ctx.cli("train", str(cfg), "output.name=kill", fault="crash_after_save:4")
    assert code == 75, out[-500:]
    o = expect(ctx, ["train", str(cfg), "output.name=kill", "--resume"], "", rc=0)
    metrics = [json.loads(x) for x in (ctx.tmp / "runs" / "kill" / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in metrics if "loss" in m]
    if steps != [1, 2, 3, 4, 5, 6]:
        o.lost = f"metrics.jsonl steps after resume: {steps}"
    return o


# --- resume bookkeeping -----------------------------------------------------------------------


@case("bad input")
def case_resume_applies_a_save_steps_override(ctx):
    cfg = ctx.config("rs.yaml", training={"max_steps": 6, "save_steps": 2})
    code, out, _ = ctx.cli("train", str(cfg), "output.name=rs", fault="crash_after_save:2")
    assert code == 75, out[-500:]
    o = expect(ctx, ["train", str(cfg), "output.name=rs", "training.save_steps=3", "--resume"], "", rc=0)
    ckpts = sorted(p.name for p in (ctx.tmp / "runs" / "rs" / "checkpoints").glob("step-*"))
    if ckpts != ["step-000002", "step-000003", "step-000006"]:
        o.lost = f"save_steps override not applied: {ckpts}"
    return o


@case("bad input")
def case_resume_refuses_a_changed_learning_rate(ctx):
    run = ctx.copy_run("lr")
    shutil.rmtree(run / "final")
    cfg = ctx.config("trained.yaml")
    return expect(
        ctx,
        ["train", str(cfg), "output.name=lr", "training.learning_rate=0.5", "--resume"],
        "--resume cannot change training.learning_rate",
    )


@case("bad input")
def case_resume_from_a_missing_path(ctx):
    cfg = ctx.config("rmiss.yaml")
    return expect(
        ctx,
        ["train", str(cfg), "training.resume=/nonexistent/step-9"],
        "training.resume: /nonexistent/step-9 does not exist",
    )


@case("bad input")
def case_resume_with_a_pickled_optimizer(ctx):
    run = ctx.copy_run("pickled")
    shutil.rmtree(run / "final")
    (run / "checkpoints" / "step-000004" / "optimizer.pt").write_bytes(b"\x80\x04cos\nsystem\n(S'touch PWNED'\ntR.")
    before = snapshot(run)
    o = expect(
        ctx,
        ["train", str(ctx.config("trained.yaml")), "output.name=pickled", "--resume"],
        "optimizer.pt: not loadable as weights-only data",
    )
    if (ctx.tmp / "PWNED").exists():
        o.lost = "the pickle ran"
    o.lost = o.lost or lost_files(before, run)
    return o


# --- code nobody opted into -------------------------------------------------------------------


@case("bad input")
def case_saved_trust_remote_code_is_not_inherited(ctx):
    run = ctx.copy_run("remote")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    base = ctx.tmp / "remote-base"
    if not base.exists():
        shutil.copytree(Path(_tiny_path()), base)
    config = json.loads((base / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (base / "config.json").write_text(json.dumps(config))
    (base / "evil.py").write_text("import pathlib; pathlib.Path('MARKER').write_text('ran')\n")
    saved["model"].update(name=str(base), trust_remote_code=True)
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    meta = json.loads((run / "final" / "tunelab_model.json").read_text())
    (run / "final" / "tunelab_model.json").write_text(
        json.dumps({**meta, "base_model": str(base), "base_model_path": str(base)})
    )
    o = expect(
        ctx,
        ["generate", str(run), "Say hi.", "--max-new-tokens", "2"],
        "config.json makes the model run its own Python code",
    )
    if (ctx.tmp / "MARKER").exists():
        o.lost = "the model's code ran without --trust-remote-code"
    return o


@case("bad input")
def case_pickled_adapter_is_refused(ctx):
    folder = ctx.tmp / "bin-adapter"
    if not folder.exists():
        shutil.copytree(ctx.trained_run() / "final", folder)
        (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    return expect(ctx, ["generate", str(folder), "Say hi."], "adapter_model.bin: a pickled adapter")


# --- one-line errors where tracebacks were ----------------------------------------------------


def _config_error(ctx: Context, field: str, overrides: list[str], name: str, verbs=("validate", "train")) -> Outcome:
    """A config problem: `validate` and `train` both exit 2 naming `field`, and an existing run
    directory that `output.overwrite` would replace is left untouched."""
    run = ctx.copy_run(name)
    before = snapshot(run)
    cfg = ctx.config(f"{name}.yaml", output={"dir": str(ctx.tmp / "runs"), "name": name, "overwrite": True})
    outcome = None
    for verb in verbs:
        o = expect(ctx, [verb, str(cfg), *overrides], field)
        if outcome is None or o.verdict != "clean":
            outcome = o
    outcome.lost = lost_files(before, run)
    return outcome


@case("bad input")
def case_optimizer_typo(ctx):
    return _config_error(
        ctx,
        "training.optimizer: unknown value; did you mean 'adamw_torch'?",
        ["training.optimizer=adamw_torchh"],
        "opt",
    )


@case("bad input")
def case_scheduler_typo(ctx):
    return _config_error(
        ctx, "training.lr_scheduler: unknown value; did you mean 'cosine'?", ["training.lr_scheduler=cosinee"], "sched"
    )


@case("bad input")
def case_unknown_device(ctx):
    return _config_error(ctx, "model.device: must be auto, cpu, cuda", ["model.device=tpu:7"], "dev")


@case("bad input")
def case_template_with_an_unmatched_brace(ctx):
    return _config_error(
        ctx,
        "prompt.template: expected '}' before end of string",
        ["prompt.format=custom", "prompt.template='Q: {instruction'"],
        "tpl",
    )


@case("bad input")
def case_output_dir_under_a_file(ctx):
    (ctx.tmp / "a-file").write_text("x")
    return expect(
        ctx,
        ["train", str(ctx.config("odf.yaml")), f"output.dir={ctx.tmp / 'a-file' / 'runs'}"],
        "output.dir: cannot write",
    )


def _read_only_case(ctx: Context, key: str, sub: str) -> Outcome:
    with read_only(ctx.tmp / sub):
        o = expect(
            ctx,
            ["train", str(ctx.config(f"{sub}.yaml")), f"{key}={ctx.tmp / sub / 'inner'}", "tracking.backend=trackio"],
            f"{key}: cannot write",
        )
    if (ctx.tmp / "runs" / sub).exists():
        o.lost = "a run directory was left behind"
    return o


@case("bad input")
def case_output_dir_read_only(ctx):
    return _read_only_case(ctx, "output.dir", "ro-out")


@case("bad input")
def case_cache_dir_read_only(ctx):
    return _read_only_case(ctx, "data.cache_dir", "ro-cache")


@case("bad input")
def case_tracking_dir_read_only(ctx):
    return _read_only_case(ctx, "tracking.dir", "ro-track")


@case("bad input")
def case_config_not_utf8(ctx):
    p = ctx.path("latin1.yaml")
    p.write_bytes("model: {name: 'caf\xe9'}\n".encode("latin-1"))
    return expect(ctx, ["validate", str(p)], "not UTF-8 text")


@case("bad input")
def case_config_is_a_directory(ctx):
    (ctx.tmp / "cfgdir").mkdir(exist_ok=True)
    return expect(ctx, ["validate", str(ctx.tmp / "cfgdir")], "is a directory")


def _data_case(
    ctx: Context, name: str, content: bytes, message: str, rc: int = 2, extra: list[str] | None = None
) -> Outcome:
    p = ctx.path(name)
    p.write_bytes(content)
    cfg = ctx.config(f"{name}.yaml", data={"train": {"path": str(p)}, "test_size": 2})
    return expect(ctx, ["validate", str(cfg), *(extra or [])], message, rc=rc)


@case("bad input")
def case_corrupt_parquet(ctx):
    return _data_case(ctx, "bad.parquet", b"PAR1 this is not parquet PAR1", "not a readable Parquet file")


@case("bad input")
def case_jsonl_nested_200k_deep(ctx):
    deep = b"[" * 200_000 + b"]" * 200_000
    return _data_case(
        ctx,
        "deep.jsonl",
        b'{"instruction": "a", "output": "b"}\n{"x": ' + deep + b"}\n",
        "deep.jsonl:2: JSON nested too deeply",
    )


@case("bad input")
def case_lone_surrogate_in_a_row(ctx):
    rows = b'{"instruction": "a\\ud800b", "output": "b"}\n' + b'{"instruction": "a", "output": "b"}\n' * 20
    return _data_case(ctx, "surrogate.jsonl", rows, "surrogate.jsonl:1: field instruction holds invalid Unicode")


@case("bad input")
def case_empty_file(ctx):
    return _data_case(ctx, "empty.jsonl", b"", "empty.jsonl: the file is empty")


@case("bad input")
def case_blank_lines_file(ctx):
    return _data_case(ctx, "blank.jsonl", b"\n\n  \n", "blank.jsonl: the file holds only blank lines")


@case("bad input")
def case_empty_json_array(ctx):
    return _data_case(ctx, "empty.json", b"[]", "empty.json: an empty JSON array")


@case("bad input")
def case_header_only_csv(ctx):
    return _data_case(ctx, "header.csv", b"instruction,output\n", "header.csv: a CSV header with no rows")


@case("bad input")
def case_every_row_skipped(ctx):
    rows = b'{"instruction": "a", "output": ""}\n' * 30
    return _data_case(ctx, "skipped.jsonl", rows, "all 30 rows of", extra=["data.on_bad_row=skip"])


@case("bad input")
def case_bom_files_are_accepted(ctx):
    rows = [{"instruction": f"say {i}", "output": str(i)} for i in range(20)]
    outcomes = [
        _data_case(
            ctx,
            "bom.jsonl",
            b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode(),
            "18 train rows",
            rc=0,
        ),
        _data_case(ctx, "bom.json", b"\xef\xbb\xbf" + json.dumps(rows).encode(), "18 train rows", rc=0),
        _data_case(
            ctx,
            "bom.csv",
            b"\xef\xbb\xbfinstruction,output\n" + "".join(f"say {i},{i}\n" for i in range(20)).encode(),
            "18 train rows",
            rc=0,
        ),
    ]
    return next((o for o in outcomes if o.verdict != "clean"), outcomes[0])


@case("bad input")
def case_field_map_key_matches_nothing(ctx):
    cfg = ctx.config(
        "fm.yaml", data={"train": {"path": str(ctx.data())}, "test_size": 8, "field_map": {"questoin": "instruction"}}
    )
    return expect(ctx, ["validate", str(cfg)], "data.field_map: 'questoin' matches no field")


@case("bad input")
def case_max_length_too_small(ctx):
    return expect(
        ctx,
        ["train", str(ctx.config("ml.yaml")), "training.max_length=2"],
        "training.max_length: 2 tokens leave no answer",
    )


@case("bad input")
def case_rank_above_the_layer_width(ctx):
    return expect(
        ctx, ["train", str(ctx.config("rank.yaml")), "adapter.r=4096"], "adapter.r: 4096 is above the full rank"
    )


def _tiny_path() -> str:
    from tunelab.model.resolve import resolve_model_path

    return resolve_model_path("tiny:llama-2l")


def _model_folder(ctx: Context, name: str, change: Callable[[Path], None]) -> Path:
    folder = ctx.tmp / name
    if not folder.exists():
        shutil.copytree(_tiny_path(), folder)
        change(folder)
    return folder


def _model_case(ctx: Context, name: str, change: Callable[[Path], None], message: str) -> Outcome:
    folder = _model_folder(ctx, name, change)
    o = expect(ctx, ["train", str(ctx.config(f"{name}.yaml")), f"model.name={folder}", f"output.name={name}"], message)
    if (ctx.tmp / "runs" / name).exists():
        o.lost = "a run directory was left behind"
    return o


@case("bad input")
def case_model_folder_without_tokenizer(ctx):
    def drop(f: Path):
        for n in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
            (f / n).unlink(missing_ok=True)

    return _model_case(ctx, "no-tok", drop, "model.name: cannot load a tokenizer")


@case("bad input")
def case_truncated_safetensors(ctx):
    def cut(f: Path):
        w = f / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 3])

    return _model_case(ctx, "cut-weights", cut, "model.name: cannot load")


@case("bad input")
def case_garbage_safetensors(ctx):
    return _model_case(
        ctx,
        "garbage-weights",
        lambda f: (f / "model.safetensors").write_bytes(os.urandom(4096)),
        "model.name: cannot load",
    )


@case("bad input")
def case_config_does_not_match_weights(ctx):
    def widen(f: Path):
        c = json.loads((f / "config.json").read_text())
        c["hidden_size"] *= 2
        (f / "config.json").write_text(json.dumps(c))

    return _model_case(ctx, "mismatch", widen, "model.name: cannot load")


def _chat_template_case(ctx: Context, name: str, template: str, message: str) -> Outcome:
    def set_template(f: Path):
        (f / "chat_template.jinja").write_text(template)
        tc = json.loads((f / "tokenizer_config.json").read_text())
        tc.pop("chat_template", None)
        (f / "tokenizer_config.json").write_text(json.dumps(tc))

    folder = _model_folder(ctx, name, set_template)
    rows = ctx.path(f"{name}.jsonl")
    rows.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]})
            + "\n"
            for i in range(20)
        )
    )
    cfg = ctx.config(
        f"{name}.yaml",
        model={"name": str(folder)},
        prompt={"format": "messages"},
        data={"train": {"path": str(rows)}, "test_size": 2},
    )
    o = expect(ctx, ["train", str(cfg), f"output.name={name}"], message)
    if (ctx.tmp / "runs" / name).exists():
        o.lost = "a run directory was left behind"
    return o


@case("bad input")
def case_chat_template_that_raises(ctx):
    return _chat_template_case(ctx, "raising-template", "{{ raise_exception('no system role') }}", "chat template")


@case("bad input")
def case_chat_template_escaping_its_sandbox(ctx):
    return _chat_template_case(
        ctx, "escaping-template", "{{ ''.__class__.__mro__[1].__subclasses__() }}", "chat template"
    )


@case("bad input")
def case_artifacts_pull_to_a_read_only_folder(ctx):
    tracking = ctx.tmp / "runs" / ".tracking"
    ctx.cli("artifacts", "push", str(ctx.data()), "--name", "pullme", "--type", "dataset", "--dir", str(tracking))
    with read_only(ctx.tmp / "ro-pull"):
        return expect(
            ctx,
            [
                "artifacts",
                "pull",
                "trackio:tunelab/pullme",
                "--out",
                str(ctx.tmp / "ro-pull" / "x"),
                "--dir",
                str(tracking),
            ],
            "cannot write",
        )


@case("bad input")
def case_artifacts_push_dotdot_to_mlflow(ctx):
    return expect(
        ctx,
        [
            "artifacts",
            "push",
            str(ctx.data()),
            "--name",
            "..",
            "--type",
            "dataset",
            "--store",
            "mlflow",
            "--dir",
            str(ctx.tmp / "runs" / ".tracking"),
        ],
        "artifact names and versions use letters",
    )


@case("bad input")
def case_artifacts_push_a_file_as_a_model(ctx):
    return expect(
        ctx,
        [
            "artifacts",
            "push",
            str(ctx.data()),
            "--name",
            "m",
            "--type",
            "model",
            "--dir",
            str(ctx.tmp / "runs" / ".tracking"),
        ],
        "a model artifact is a model or adapter folder",
    )


@case("bad input")
def case_markup_in_a_data_path(ctx):
    cfg = ctx.config("markup.yaml", data={"train": {"path": str(ctx.tmp / "[/b]data.jsonl")}, "test_size": 2})
    return expect(ctx, ["validate", str(cfg)], f"data file not found: {ctx.tmp / '[/b]data.jsonl'}")


@case("bad input")
def case_bold_markup_in_a_data_path(ctx):
    cfg = ctx.config("bold.yaml", data={"train": {"path": str(ctx.tmp / "[bold]x.jsonl")}, "test_size": 2})
    return expect(ctx, ["validate", str(cfg)], f"{ctx.tmp / '[bold]x.jsonl'}")


@case("bad input")
def case_synthetic_spec_prints_as_written(ctx):
    cfg = ctx.config("syn.yaml", data={"train": {"path": "synthetic:100:bogus=1"}, "test_size": 2})
    return expect(ctx, ["validate", str(cfg)], "synthetic:100:bogus=1")


def _load_area_cases() -> None:
    """Register the cases kept by area in battery_<area>.py beside this file (each imports `case`,
    `expect` and `Context` from here)."""
    import importlib

    for p in sorted(Path(__file__).parent.glob("battery_*.py")):
        importlib.import_module(p.stem)


_load_area_cases()


def run_all(tmp: Path, names: list[str] | None = None, log=print) -> dict[str, Outcome]:
    """Run the cases (all, or `names`) in `tmp`; returns each case's outcome."""
    ctx = Context(tmp)
    results = {}
    for name, fn in CASES.items():
        if names and name not in names:
            continue
        t0 = time.perf_counter()
        try:
            results[name] = fn(ctx)
        except Skip as e:
            results[name] = Outcome(None, "", skipped=str(e))
        log(f"{results[name].verdict:10s} {time.perf_counter() - t0:6.1f}s  {name}")
    return results


def counts(results: dict[str, Outcome]) -> dict[str, int]:
    verdicts = [o.verdict for o in results.values()]
    return {
        "cases": len(verdicts),
        **{v: verdicts.count(v) for v in ("clean", "traceback", "hang", "data lost", "wrong", "skipped")},
    }


if __name__ == "__main__":
    import tempfile

    # Run as a script, this file is __main__; the area modules registered into `battery`.
    import battery as _battery

    run_all, counts = _battery.run_all, _battery.counts

    names = sys.argv[1:] or None
    with tempfile.TemporaryDirectory(prefix="tunelab-battery-") as d:
        os.environ.setdefault("TUNELAB_CACHE", str(Path(d) / "cache"))
        res = run_all(Path(d), names)
        print(json.dumps(counts(res)))
        for n, o in res.items():
            if o.verdict not in ("clean", "skipped"):
                print(f"--- {n}: {o.verdict} rc={o.rc} lost={o.lost}\n{o.output[-1500:]}")
    sys.exit(0 if all(o.verdict in ("clean", "skipped") for o in res.values()) else 1)
