"""Several processes, one run (training.distributed, training.launch, perf.sharding).

The end-to-end tests run DDP between two CPU processes over torch's gloo backend and hold it to one
process: 2 processes x grad_accum 1 must give the losses and adapter of 1 process x grad_accum 2 (the
same sequences per optimizer step, in the same order). Each process gets one thread (two processes
that each use both cores slow each other far more than twice).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, SUPPORT, base_config, run_cli
from tunelab.config import build_config
from tunelab.errors import TunelabError
from tunelab.training import distributed as dist
from tunelab.training.launch import Launch, early_checks


def _cfg(**sections):
    return build_config(base_config(Path("x.jsonl"), Path("runs"), **sections))


# --- units: no process group needed


def test_world_from_the_launchers_environment():
    assert dist.World.from_env({}) == dist.World()
    torchrun = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1"}
    w = dist.World.from_env(torchrun)
    assert (w.size, w.rank, w.local_rank, w.local_size, w.node_rank, w.nnodes) == (4, 3, 1, 2, 1, 2)
    assert w.distributed and not w.is_main
    # accelerate launch sets no GROUP_RANK / LOCAL_WORLD_SIZE on some paths: one machine is assumed
    w = dist.World.from_env({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})
    assert (w.size, w.local_size, w.nnodes, w.is_main) == (2, 2, 1, True)


def test_strategy_auto_is_ddp_for_lora_and_none_for_one_process():
    lora, full = _cfg(), _cfg(adapter={"type": "none"})
    assert dist.resolve_strategy(lora, 1, "cuda:0") == "none"
    assert dist.resolve_strategy(lora, 2, "cuda:0") == "ddp"
    assert dist.resolve_strategy(full, 2, "cpu") == "ddp"  # accelerate shards over GPUs only
    assert dist.resolve_strategy(_cfg(distributed={"strategy": "fsdp2"}), 2, "cuda:0") == "fsdp2"


def test_strategy_auto_shards_a_full_fine_tune_that_does_not_fit_one_gpu(monkeypatch):
    import tunelab.perf.plan as plan

    full = _cfg(adapter={"type": "none"})
    monkeypatch.setattr(plan, "available_memory", lambda device: 80 * 2**30)
    assert dist.resolve_strategy(full, 2, "cuda:0") == "ddp"  # the tiny model fits an 80 GB GPU
    monkeypatch.setattr(plan, "available_memory", lambda device: 2**20)
    assert dist.resolve_strategy(full, 2, "cuda:0") == "fsdp2"


def test_strategies_that_cannot_work_are_refused_in_one_line(monkeypatch):
    with pytest.raises(
        TunelabError,
        match=r"fsdp2 with quantization.bits 4 .* installed bitsandbytes \S+, accelerate \S+, "
        r"torch \S+ \(bitsandbytes#1945",
    ):
        dist.check_strategy(_cfg(quantization={"bits": 4}, distributed={"strategy": "fsdp2"}), "fsdp2", on_cpu=False)
    with pytest.raises(TunelabError, match="fsdp2 shards over GPUs only"):
        dist.check_strategy(_cfg(adapter={"type": "none"}), "fsdp2", on_cpu=True)
    if dist.installed("deepspeed") is None:
        with pytest.raises(TunelabError, match="deepspeed_zero3 needs the deepspeed package, which is not installed"):
            dist.check_strategy(_cfg(), "deepspeed_zero3", on_cpu=None)
    dist.check_strategy(_cfg(quantization={"bits": 4}), "ddp", on_cpu=True)  # QLoRA + DDP is the supported way
    # the refusal follows the installed versions: once a fixed release is named and installed,
    # it lets FSDP2 + 4-bit through
    monkeypatch.setattr(dist, "FSDP_QUANTIZED_FIXED_IN", {"torch": "1.0"})
    dist.check_strategy(_cfg(quantization={"bits": 4}), "fsdp2", on_cpu=False)
    monkeypatch.setattr(dist, "FSDP_QUANTIZED_FIXED_IN", {"torch": "999.0"})
    assert not dist.fsdp_quantized_known_good()


def test_trainer_arguments_per_strategy():
    cfg = _cfg()
    assert dist.trainer_args(cfg, "none", None) == {}
    ddp = dist.trainer_args(cfg, "ddp", "gloo")
    assert ddp == {"ddp_backend": "gloo", "ddp_timeout": 1800, "ddp_find_unused_parameters": False}
    fsdp = dist.trainer_args(cfg, "fsdp2", "nccl")
    assert fsdp["fsdp"] is True and fsdp["fsdp_config"]["version"] == 2 and fsdp["fsdp_config"]["reshard_after_forward"]
    assert dist.trainer_args(cfg, "deepspeed_zero3", "nccl")["deepspeed"]["zero_optimization"]["stage"] == 3


def test_a_resume_needs_the_number_of_processes_that_wrote_the_checkpoint(tmp_path):
    one, two = tmp_path / "step-000002", tmp_path / "step-000004"
    one.mkdir(), two.mkdir()
    (one / "rng_state.pth").touch()
    for r in (0, 1):
        (two / f"rng_state_{r}.pth").touch()
    assert dist.checkpoint_world_size(one) == 1 and dist.checkpoint_world_size(two) == 2
    dist.check_resume_world(two, 2)
    with pytest.raises(TunelabError, match=r"step-000004 was written by 2 processes, this run has 1.*--nproc 2"):
        dist.check_resume_world(two, 1)


def test_job_figures_sum_the_ranks():
    ranks = [
        {"tokens": 100, "peak_tflops": 1.0, "peak_rss_mb": 500.0},
        {"tokens": 300, "peak_tflops": 1.0, "peak_rss_mb": 700.0},
    ]
    job = dist.job_figures(ranks, seconds=2.0, flops_per_token=1e10)
    assert [r["tokens_per_s"] for r in ranks] == [50.0, 150.0]
    assert ranks[1]["mfu"] == pytest.approx(1.5e12 / 1e12) and job["mfu"] == pytest.approx(2e12 / 2e12)
    assert job["peak_rss_mb"] == 1200.0 and "peak_gpu_mb" not in job


def test_global_batch_and_how_to_keep_one_process_batch():
    cfg = _cfg(training={"batch_size": 2, "grad_accum": 16})
    assert dist.global_batch(cfg, 2) == 64
    assert dist.batch_note(cfg, 2).endswith(
        "= 64 sequences per step (one process steps 32; training.grad_accum=8 would match it)"
    )


def test_launch_flags_are_checked_before_anything_loads():
    cfg = _cfg()
    for launch, message in [
        (Launch(nproc=0), "--nproc: 0 processes"),
        (Launch(nproc=2, nnodes=0), "--nnodes"),
        (Launch(nproc=2, nnodes=2, node_rank=2, master_addr="h"), "--node-rank: 2 is not in 0..1"),
        (Launch(nproc=2, nnodes=2), "--master-addr: needed"),
        (Launch(nproc=2, master_port=70000), "no TCP port"),
    ]:
        with pytest.raises(TunelabError, match=message):
            early_checks(cfg, launch)
    with pytest.raises(TunelabError, match="model.device: cuda:1 pins every process"):
        early_checks(_cfg(model={"device": "cuda:1"}), Launch(nproc=2))
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        with pytest.raises(TunelabError, match=f"--master-port: port {s.getsockname()[1]} is in use"):
            early_checks(cfg, Launch(nproc=2, master_port=s.getsockname()[1]))
    assert 0 < early_checks(cfg, Launch(nproc=2)) < 65536


def test_rank_plans_ddp_replicates_and_fsdp2_shards():
    from tunelab.model.resolve import resolve_model
    from tunelab.perf.plan import estimate
    from tunelab.perf.sharding import rank_plan

    cfg = _cfg(adapter={"type": "none"})
    resolved = resolve_model(cfg)
    one = estimate(cfg, resolved, "cuda", checkpointing=False)
    ddp = rank_plan(resolved, one, "ddp", 4)
    assert ddp.parts["ddp_gradient_buckets"] == one.parts["gradients"] and ddp.total > one.total
    block, root = 0.1, 0.2
    fsdp = rank_plan(resolved, one, "fsdp2", 4, shares=(block, root))
    assert fsdp.parts["optimizer"] == pytest.approx(one.parts["optimizer"] / 4)
    assert fsdp.parts["weights"] == pytest.approx(one.parts["weights"] * (1 / 4 + 2 * block + root))
    assert fsdp.parts["activations"] == one.parts["activations"]  # each rank's own micro-batch
    assert fsdp.total < one.total
    zero2 = rank_plan(resolved, one, "deepspeed_zero2", 4)
    assert zero2.parts["weights"] == one.parts["weights"] and zero2.parts["gradients"] == pytest.approx(
        one.parts["gradients"] / 4
    )
    assert rank_plan(resolved, one, "ddp", 1) is one


# --- end to end: two CPU processes over gloo against one process

pytestmark_slow = pytest.mark.slow
STEPS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}


def _torchrun(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """What a user runs: torchrun starting two tunelab processes (or the fault-injecting wrapper)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(_free_port()),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        cwd=ROOT,
    )


def _losses(run: Path, key: str = "loss") -> dict[int, float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r}


def _adapter(run: Path):
    from safetensors.torch import load_file

    return load_file(str(run / "final" / "adapter_model.safetensors"))


def _config(tmp: Path, data: Path, bits: int | None) -> Path:
    # dropout 0: each rank draws dropout masks from its own RNG stream, which no single process reproduces
    cfg = base_config(
        data,
        tmp / "runs",
        quantization={"bits": bits},
        adapter={"dropout": 0.0},
        training={
            "max_steps": STEPS,
            "batch_size": 2,
            "grad_accum": 1,
            "max_length": 128,
            "eval_steps": 3,
            "save_steps": 2,
        },
    )
    path = tmp / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _one_process(config: Path, name: str) -> Path:
    """The reference: one process, grad_accum 2, in this process (tracking off; it does not change a loss)."""
    import io

    from rich.console import Console

    from tunelab.config import load_config
    from tunelab.training.run import train

    cfg = load_config(config, [f"output.name={name}", "training.grad_accum=2", "tracking.backend=none"])
    train(cfg, console=Console(file=io.StringIO()))
    return Path(cfg.output.dir) / name


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    """LoRA: `tunelab train --nproc 2` and one process with twice the accumulation."""
    from tunelab.data.synthetic import generate, write_jsonl

    tmp = tmp_path_factory.mktemp("ddp-lora")
    config = _config(tmp, write_jsonl(generate(200, seed=3), tmp / "synth.jsonl"), bits=None)
    single = _one_process(config, "one")
    r = run_cli("train", str(config), "output.name=two", "--nproc", "2", cwd=tmp)
    assert r.returncode == 0, r.stderr[-4000:]
    return {"tmp": tmp, "config": config, "one": single, "two": tmp / "runs" / "two", "cli": r}


@pytestmark_slow
def test_two_processes_equal_one_process_with_twice_the_accumulation(lora):
    one, two = lora["one"], lora["two"]
    assert list(_losses(two)) == list(range(1, STEPS + 1))
    assert _losses(two) == pytest.approx(_losses(one), abs=1e-4)
    assert _losses(two, "eval_loss") == pytest.approx(_losses(one, "eval_loss"), abs=1e-4)
    a, b = _adapter(one), _adapter(two)
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5


@pytestmark_slow
def test_the_trainer_ran_on_two_ranks_each_on_its_own_device(lora):
    s = json.loads((lora["two"] / "summary.json").read_text())
    assert (s["status"], s["world_size"], s["strategy"], s["global_batch"]) == ("completed", 2, "ddp", 2 * 1 * 2)
    assert [r["rank"] for r in s["per_rank"]] == [0, 1] and [r["local_rank"] for r in s["per_rank"]] == [0, 1]
    for r in s["per_rank"]:  # on the CPU every rank's device is the CPU; on GPUs cuda:LOCAL_RANK (bench/gpu_check.sh)
        assert r["device"] == r["model_device"] == "cpu" and r["trainer_device"].startswith("cpu")
        assert r["tokens"] > 0 and r["tokens_per_s"] > 0 and r["peak_rss_mb"] > 0 and 0 < r["mfu"] < 1
    assert sum(r["tokens"] for r in s["per_rank"]) == s["session_tokens"]  # the job's tokens are the ranks' tokens
    assert 0 < s["mfu"] < 1 and s["peak_rss_mb"] == pytest.approx(sum(r["peak_rss_mb"] for r in s["per_rank"]), abs=0.2)
    single = json.loads((lora["one"] / "summary.json").read_text())
    assert single["world_size"] == 1 and single["per_rank"] is None and single["global_batch"] == 2 * 2
    assert "x 2 processes = 4 sequences per step" in lora["cli"].stderr


@pytestmark_slow
def test_only_rank_0_writes_one_run_directory_summary_tracker_run_and_samples_table(lora):
    two = lora["two"]
    assert sorted(p.name for p in two.parent.iterdir()) == [".tracking", "one", "two"]  # no lock file left behind
    assert [p.name for p in sorted((two / "checkpoints").glob("step-*"))] == [
        "step-000002",
        "step-000004",
        "step-000006",
    ]
    assert {p.name for p in (two / "checkpoints" / "step-000006").glob("rng_state*")} == {
        "rng_state_0.pth",
        "rng_state_1.pth",
    }
    samples = [json.loads(x) for x in (two / "samples.jsonl").read_text().splitlines()]
    assert [x["step"] for x in samples] == [3] * 4 + [6] * 4  # one table per evaluation, not one per rank
    metrics = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert sorted(m["step"] for m in metrics if "loss" in m) == list(range(1, STEPS + 1))
    assert lora["cli"].stdout.count("run two: completed") == 1  # one summary printed, by rank 0
    from tunelab.compat import point_trackio_at

    restore = point_trackio_at(two.parent / ".tracking" / "trackio")
    try:
        from trackio.sqlite_storage import SQLiteStorage

        assert SQLiteStorage.get_runs("tunelab") == ["two"]
        logs = SQLiteStorage.get_logs("tunelab", "two")
        assert [x["step"] for x in logs if "loss" in x] == list(range(1, STEPS + 1))
        assert [x["step"] for x in logs if "samples" in x] == [3, 6]
    finally:
        restore()


@pytestmark_slow
def test_kill_one_rank_then_resume_with_two_reaches_the_same_losses(lora):
    tmp, config = lora["tmp"], lora["config"]
    r = _torchrun(
        str(SUPPORT / "fault_inject.py"),
        "crash_after_save:4:1",
        "--",
        "train",
        str(config),
        "output.name=killed",
    )
    assert r.returncode != 0, r.stderr[-3000:]
    killed = tmp / "runs" / "killed"
    assert (killed / "checkpoints" / "step-000004").is_dir() and not (killed / "final").exists()
    r = run_cli("train", str(config), "output.name=killed", "--nproc", "2", "--resume", cwd=tmp)
    assert r.returncode == 0, r.stderr[-4000:]
    resumed, straight = _losses(killed), _losses(lora["two"])
    assert list(resumed) == list(range(1, STEPS + 1))
    for step in (5, 6):  # the steps after the checkpoint, run again by two fresh processes
        assert resumed[step] == pytest.approx(straight[step], abs=1e-4)
    s = json.loads((killed / "summary.json").read_text())
    assert s["status"] == "completed" and s["resumed_from"].endswith("step-000004") and s["world_size"] == 2


@pytestmark_slow
def test_qlora_through_torchrun_equals_one_process(tmp_path, synth_file):
    """QLoRA, started the way a user starts torchrun: `torchrun -m tunelab train ...`."""
    config = _config(tmp_path, synth_file, bits=4)
    single = _one_process(config, "one")
    r = _torchrun("-m", "tunelab", "train", str(config), "output.name=two", "tracking.backend=none")
    assert r.returncode == 0, r.stderr[-4000:]
    two = tmp_path / "runs" / "two"
    assert _losses(two) == pytest.approx(_losses(single), abs=1e-4)
    s = json.loads((two / "summary.json").read_text())
    assert (s["world_size"], s["strategy"], s["quantization"]) == (2, "ddp", 4)
    a, b = _adapter(single), _adapter(two)
    # QLoRA's adapter trains in bf16 here: the all-reduced gradients differ from the accumulated ones in the
    # last fp32 bits, which can round a weight to the neighbouring bf16 value (one step: 2^-8 relative). Adam
    # divides each gradient by its own running RMS, so for a weight whose gradient is near zero those last bits
    # move the update by more than its own ulp, so weights are compared at the tensor's scale. (Measured on a
    # Xeon, whose CPU kernels round differently from the EPYC's: a weight of 4e-4 moved by 2e-5; over all
    # tensors, relative error at most 1.0e-3 and largest difference 1.03 % of the tensor's largest weight.)
    for k in a:
        assert a[k].dtype == b[k].dtype
        x, y = a[k].float(), b[k].float()
        if a[k].dtype == __import__("torch").float32:
            assert float(((x - y).abs() - 1e-5 * x.abs()).max()) <= 1e-5, k
        else:  # overall within a bf16 ulp (2^-7 relative), no weight off by more than a few ulps of the tensor's scale
            assert float((x - y).norm() / x.norm()) <= 2**-7, k
            assert float((x - y).abs().max()) <= 2**-5 * float(x.abs().max()), k


@pytestmark_slow
def test_bad_launches_are_one_line_exit_2_and_write_nothing(lora, tmp_path):
    config = lora["config"]
    out = tmp_path / "out"
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        cases = [
            (["--nproc", "0"], "--nproc: 0 processes"),
            (["quantization.bits=4", "distributed.strategy=fsdp2", "--nproc", "2"], "fsdp2 with quantization.bits 4"),
            (["--nproc", "2", "--master-port", str(taken.getsockname()[1])], "is in use on this machine"),
            (["distributed.strategy=deepspeed_zero2", "--nproc", "2"], "needs the deepspeed package"),
        ]
        if dist.installed("deepspeed") is not None:
            cases.pop()
        for args, message in cases:
            r = run_cli("train", str(config), f"output.dir={out}", *args, cwd=tmp_path)
            errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
            assert r.returncode == 2 and len(errors) == 1 and message in errors[0], (args, r.stderr[-2000:])
            assert "Traceback" not in r.stderr and not out.exists()
    # a one-process checkpoint resumed by two processes: refused before any process starts
    ckpt = lora["one"] / "checkpoints" / "step-000004"
    r = run_cli("train", str(config), f"output.dir={out}", f"training.resume={ckpt}", "--nproc", "2", cwd=tmp_path)
    assert r.returncode == 2 and "step-000004 was written by 1 process, this run has 2" in r.stderr, r.stderr[-2000:]
    assert not out.exists()
