"""Where a W2 training step's time goes: torch.profiler on the CPU, one optimizer step split into parts.

    python bench/profile_w2.py [--steps 3] [--set training.precision=fp32] [--trace PATH]
    python bench/profile_w2.py --quick      # a tiny shape: checks the script, measures nothing

W2 is bench/run_bench.py's matmul-bound LoRA workload: the same model, data and config, built by its
functions; the precision here defaults to bf16 (`--set training.precision=fp32` for the other). tunelab's
own `train()` runs in this process with a callback that drives the profiler: steps 1 and 2 run
unprofiled (1 warms up, 2 is the reference wall time), step 3 warms the profiler up, and the next
`--steps` are recorded. Output: a markdown table (per step, averaged over the recorded steps) and
bench/results/profile-w2[-quick][+variant].json, with the CPU and its matmul peaks measured first.

How time is attributed to a row:
- Forward: hooks on the model's modules put each module call in a `record_function("tl::<row>")`
  range; an op belongs to its innermost range (a LoRA layer's base Linear, its A / B Linears, its
  dropout, the rest of the LoRA layer, norms, the attention module, ...). In the attention range,
  `aten::scaled_dot_product_attention` and what it calls is SDPA; in the outermost model range (the
  loss head, which uses the LM head's weight directly), linear ops are the LM head.
- Backward: the autograd engine records each node as `autograd::engine::evaluate_function: <Node>`
  with the sequence number of the forward op that created it; the node's ops go to that forward op's
  row (the last forward op recorded with that number is the one that created the node).
  AccumulateGrad nodes (adding each micro-batch's gradients into .grad) have their own row.
- torch's own ranges: `Optimizer.step#...` and `Optimizer.zero_grad#...` are the optimizer,
  `enumerate(DataLoader)#...` is fetching and collating batches; any other op in the step belongs to
  the trainer, outside the model (gradient clipping, loss scaling, token counting, logging).
- Each op counts its self CPU time (its time minus its children's), so nothing counts twice; the
  step's wall time is the profiler's `ProfilerStep` range. "Python overhead" is wall minus all ops'
  self time: the Python ranges' own time (module calls, the trainer loop, the data loader, the
  optimizer), including the hooks' and the profiler's overhead; the unprofiled step 2 shows how much.
Matmul columns: self time of aten::mm / addmm / bmm / baddbmm, and the FLOPs the profiler counts for
them (`with_flops`); copy/cast: aten::to / _to_copy / copy_ (dtype casts, bias broadcasts, copies).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainerCallback

import run_bench as rb  # bench/ is on sys.path when this script runs

ROWS = {
    "frozen": "frozen-weight matmuls (base Linear)",
    "lora_ab": "LoRA A/B matmuls",
    "lora_glue": "LoRA layer rest (input cast, scale, add)",
    "lora_dropout": "LoRA dropout",
    "sdpa": "attention: SDPA",
    "attn_other": "attention: rope, reshapes, rest",
    "norm": "norms",
    "elementwise": "activations, MLP and residual elementwise",
    "model_other": "embeddings, rotary tables, masks",
    "lm_head": "loss head: lm_head matmul",
    "loss": "loss head: log-softmax, gather, entropy",
    "accumulate": "gradient accumulation (AccumulateGrad)",
    "optimizer": "optimizer step + zero_grad",
    "data": "data loading / collation",
    "trainer": "trainer, outside the model",
}
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
COPY_OPS = {"aten::to", "aten::_to_copy", "aten::copy_"}
LINEAR_OPS = {"aten::linear", "aten::matmul", "aten::mm", "aten::addmm"}
QUICK_MODEL = dict(layers=2, hidden=128, intermediate=256, heads=4, kv_heads=4, vocab=1024)
QUICK_CFG = dict(training__max_length=128, training__batch_size=2, training__grad_accum=2)
UNPROFILED = 2  # steps before the profiler: a warm-up, then the reference wall time


def module_row(name: str, module: Any, root: Any, lm_head: Any) -> str | None:
    """The row a module's own ops go to; None: its caller's."""
    from torch import nn

    parts, cls = set(name.split(".")), type(module).__name__
    if module is root:
        return "loss"
    if hasattr(module, "base_layer") and hasattr(module, "lora_A"):  # a PEFT LoRA layer
        return "lora_glue"
    if parts & {"lora_A", "lora_B"}:
        return "lora_ab"
    if "lora_dropout" in parts:
        return "lora_dropout"
    if module is lm_head:
        return "lm_head"
    if isinstance(module, nn.Linear):
        return "frozen"
    if "Norm" in cls:
        return "norm"
    if "Attention" in cls:
        return "attn_other"
    if "MLP" in cls or "DecoderLayer" in cls or "Activation" in cls or isinstance(module, (nn.SiLU, nn.GELU)):
        return "elementwise"
    if isinstance(module, nn.Embedding) or "Rotary" in cls or hasattr(module, "layers"):
        return "model_other"
    return None


class Annotator:
    """Forward hooks: each labelled module's call inside a `tl::<row>` profiler range; the dtypes the
    base and LoRA Linears see (input, weight -> output; the output shows autocast's compute dtype)."""

    def __init__(self, model: Any):
        self.open: list[Any] = []
        self.dtypes: set[tuple[str, str, str, str]] = set()
        self.handles: list[Any] = []
        get_head = getattr(model, "get_output_embeddings", None)
        lm_head = get_head() if get_head else None
        for name, module in model.named_modules():
            row = module_row(name, module, model, lm_head)
            if row is not None:
                parts = name.split(".")
                kind = "lora_A" if "lora_A" in parts else "lora_B" if "lora_B" in parts else row
                self.handles.append(module.register_forward_pre_hook(self._enter(row)))
                self.handles.append(module.register_forward_hook(self._exit(kind), always_call=True))

    def _enter(self, row: str):
        from torch.profiler import record_function

        label = f"tl::{row}"

        def hook(module, args):
            self.open.append(record_function(label).__enter__())

        return hook

    def _exit(self, kind: str):
        def hook(module, args, output):
            self.open.pop().__exit__(None, None, None)
            if kind in ("frozen", "lora_A", "lora_B") and args and hasattr(args[0], "dtype"):

                def name(t):
                    return str(t.dtype).removeprefix("torch.")

                self.dtypes.add((kind, name(args[0]), name(module.weight), name(output)))

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class StepProfiler(TrainerCallback):
    """Profiles optimizer steps UNPROFILED + 2 .. UNPROFILED + 1 + steps; times every step."""

    def __init__(self, steps: int, trace: str | None):
        self.steps, self.trace = steps, trace
        self.walls: list[float] = []
        self.tokens: list[int] = []
        self.events: Any = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from torch.profiler import ProfilerActivity, profile, schedule

        self.annotator = Annotator(model)
        self.prof = profile(
            activities=[ProfilerActivity.CPU],
            record_shapes=True,
            with_flops=True,
            schedule=schedule(wait=UNPROFILED, warmup=1, active=self.steps, repeat=1),
            on_trace_ready=self._ready,
        )
        self.prof.start()
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.walls.append(now - self.last)
        self.last = now
        self.tokens.append(int(state.num_input_tokens_seen or 0))
        self.prof.step()

    def on_train_end(self, args, state, control, **kwargs):
        self.prof.stop()
        self.annotator.remove()

    def _ready(self, prof) -> None:
        self.events = prof.events()
        if self.trace:
            prof.export_chrome_trace(self.trace)


@dataclass
class Row:
    total: float = 0.0  # µs of op self time, all steps
    backward: float = 0.0
    matmul: float = 0.0
    copy: float = 0.0
    flops: int = 0
    ops: Counter = field(default_factory=Counter)


def attribute(events: Any) -> tuple[dict[str, Row], Counter, list[float]]:
    """(op time per row, Python time per row, wall of each profiled step), in µs; see the docstring."""
    rows: dict[str, Row] = defaultdict(Row)
    python: Counter = Counter()
    forward_row: dict[tuple[int, int], str] = {}

    def walk(ev, row: str, backward: bool) -> None:
        name = ev.name
        if name.startswith("tl::"):
            row = name[4:]
        elif name.startswith("autograd::engine::evaluate_function:"):
            backward = True
            row = (
                "accumulate"
                if "AccumulateGrad" in name
                else forward_row.get((ev.fwd_thread, ev.sequence_nr), "trainer")
            )
        elif name.startswith("Optimizer."):
            row = "optimizer"
        elif name.startswith("enumerate(DataLoader)"):
            row = "data"
        elif not backward:
            if row == "attn_other" and "scaled_dot_product" in name:
                row = "sdpa"
            elif row == "loss" and name in LINEAR_OPS:
                row = "lm_head"
            if ev.sequence_nr >= 0:  # children come after their parent: the creating op is recorded last
                forward_row[(ev.thread, ev.sequence_nr)] = row
        us = ev.self_cpu_time_total
        if ev.is_user_annotation:
            python[row] += us
        else:
            r = rows[row]
            r.total += us
            r.backward += us if backward else 0.0
            r.ops[name] += us
            if name in MATMUL_OPS:
                r.matmul += us
                r.flops += ev.flops or 0
            elif name in COPY_OPS:
                r.copy += us
        for child in ev.cpu_children:
            walk(child, row, backward)

    steps = sorted((e for e in events if e.name.startswith("ProfilerStep")), key=lambda e: e.time_range.start)
    for step in steps:
        walk(step, "trainer", False)
    return rows, python, [s.cpu_time_total for s in steps]


def report(rows: dict[str, Row], python: Counter, walls_us: list[float], peak_flops: float) -> dict[str, Any]:
    """Per-step figures (ms) for the table and the JSON."""
    n = len(walls_us)
    wall = statistics.mean(walls_us) / 1e3

    def ms(us):  # µs over all steps -> ms per step
        return round(us / n / 1e3, 2)

    table = []
    for key, label in ROWS.items():
        r = rows.get(key)
        if r is None or r.total == 0:
            continue
        tflops = r.flops / (r.matmul / 1e6) / 1e12 if r.matmul else None
        table.append(
            {
                "row": key,
                "label": label,
                "ms": ms(r.total),
                "pct": round(100 * r.total / n / 1e3 / wall, 1),
                "backward_ms": ms(r.backward),
                "matmul_ms": ms(r.matmul),
                "copy_ms": ms(r.copy),
                "matmul_tflops": round(tflops, 5) if tflops is not None else None,
                "python_ms": ms(python.get(key, 0)),
                "top_ops_ms": {k: ms(v) for k, v in r.ops.most_common(8)},
            }
        )
    py = sum(python.values())
    matmul = sum(r.matmul for r in rows.values())
    flops = sum(r.flops for r in rows.values())
    return {
        "steps_profiled": n,
        "step_wall_ms": round(wall, 1),
        "op_ms": ms(sum(r.total for r in rows.values())),
        "python_overhead_ms": ms(py),
        "python_overhead_pct": round(100 * py / n / 1e3 / wall, 1),
        "python_by_row_ms": {k: ms(v) for k, v in python.most_common()},
        "matmul_ms": ms(matmul),
        "matmul_tflops": round(flops / (matmul / 1e6) / 1e12, 5) if matmul else None,
        "matmul_pct_of_peak": round(100 * flops / (matmul / 1e6) / peak_flops, 1) if matmul and peak_flops else None,
        "rows": table,
    }


def markdown(res: dict[str, Any]) -> str:
    head = "| part | ms / step | % of step | of which backward | matmul kernels | copies / casts | matmul TFLOP/s |"
    lines = [head, "|" + "---|" * 7]
    for r in res["rows"]:
        tf = f"{r['matmul_tflops']:.3g}" if r["matmul_tflops"] is not None else ""
        lines.append(
            f"| {r['label']} | {r['ms']:,.1f} | {r['pct']:.1f} | {r['backward_ms']:,.1f} | {r['matmul_ms']:,.1f} "
            f"| {r['copy_ms']:,.1f} | {tf} |"
        )
    lines.append(
        f"| other / Python overhead (wall - op time) | {res['python_overhead_ms']:,.1f} "
        f"| {res['python_overhead_pct']:.1f} | | | | |"
    )
    tf = f"{res['matmul_tflops']:.3g}" if res["matmul_tflops"] is not None else ""
    lines.append(
        f"| **step wall (profiled)** | **{res['step_wall_ms']:,.1f}** | 100 | | {res['matmul_ms']:,.1f} | | {tf} |"
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps to record (after 3 unrecorded ones)")
    ap.add_argument("--quick", action="store_true", help="a tiny model and batch: checks the script, measures nothing")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a tunelab config override (repeatable), e.g. training.precision=fp32",
    )
    ap.add_argument("--trace", metavar="PATH", help="also write the recorded steps as a Chrome / Perfetto trace")
    a = ap.parse_args()
    if a.steps < 1:
        ap.error("--steps must be at least 1")
    variant = rb.parse_sets(ap, a.set)
    rb.bench_env()
    host = rb.machine()  # before the model loads: the CPU and its matmul peaks at this process's thread count
    import torch

    from tunelab.config import build_config
    from tunelab.model.precision import run_precision
    from tunelab.training.run import train

    over = {
        "training__precision": "bf16",
        **(QUICK_CFG if a.quick else {}),
        **rb.overrides(variant),
        "training__max_steps": UNPROFILED + 1 + a.steps,
    }
    model, train_file, test_file = rb.w2_inputs(QUICK_MODEL, "w2-quick-model") if a.quick else rb.w2_inputs()
    name = "profile-w2-quick" if a.quick else "profile-w2"
    cfg_dict = rb.w2_cfg(model, train_file, test_file, name, **over)
    cfg = build_config(cfg_dict)
    precision = run_precision(cfg, "cpu")
    prof = StepProfiler(a.steps, a.trace)
    train(cfg, callbacks=[prof])
    if prof.events is None:
        sys.exit("the profiler recorded nothing: did training stop before its last step?")

    rows, python, walls_us = attribute(prof.events)
    peak = host["peaks"].get(precision, host["peaks"]["fp32"])
    res = report(rows, python, walls_us, peak["best"])
    tokens = [b - c for c, b in zip([0, *prof.tokens], prof.tokens, strict=False)]  # per step, from the running count
    res.update(
        workload="profile-w2",
        precision=precision,
        threads=torch.get_num_threads(),
        load_avg_after=[round(x, 2) for x in os.getloadavg()],
        step_walls_s=[round(w, 3) for w in prof.walls],
        step_tokens=tokens,
        unprofiled_step_s=round(prof.walls[UNPROFILED - 1], 3),
        lora_and_base_dtypes=sorted(prof.annotator.dtypes),
        date=dt.date.today().isoformat(),
        commit=rb.git_commit(),
        machine=host,
        quick=a.quick,
        config=cfg_dict,
        command=" ".join(["python", "bench/profile_w2.py", *sys.argv[1:]]),
        **({"variant": variant} if variant else {}),
    )

    print(
        f"\nW2 {precision}, {res['threads']} threads: step wall {res['step_wall_ms']:,.0f} ms profiled (mean of "
        f"{res['steps_profiled']}), {res['unprofiled_step_s'] * 1e3:,.0f} ms unprofiled (step {UNPROFILED}); "
        f"{tokens[-1]:,} tokens per step"
    )
    print(markdown(res))
    if res["matmul_pct_of_peak"] is not None:
        print(
            f"\nmatmul kernels: {res['matmul_ms']:,.0f} ms per step at {res['matmul_tflops']:.3g} TFLOP/s = "
            f"{res['matmul_pct_of_peak']}% of the measured {peak['dtype']} peak ({peak['best_tflops']} TFLOP/s)"
        )
    print(
        "matmul dtypes (input x weight -> output): "
        + "; ".join(f"{r}: {i} x {w} -> {o}" for r, i, w, o in sorted(prof.annotator.dtypes))
    )
    print(
        "Python overhead by where (ms / step): "
        + ", ".join(f"{k} {v:,.1f}" for k, v in list(res["python_by_row_ms"].items())[:6])
    )
    print("largest non-matmul ops (ms / step):")
    for r in sorted(res["rows"], key=lambda r: r["ms"] - r["matmul_ms"], reverse=True)[:6]:
        ops = [f"{k} {v:,.1f}" for k, v in r["top_ops_ms"].items() if k not in MATMUL_OPS][:4]
        print(f"  {r['label']}: {', '.join(ops)}")
    rb.RESULTS.mkdir(parents=True, exist_ok=True)
    out = rb.RESULTS / f"{name}{rb.variant_suffix(a.set)}.json"
    out.write_text(json.dumps(res, indent=2, default=str))
    print(f"\nwrote {out.relative_to(rb.ROOT)}")


if __name__ == "__main__":
    main()
