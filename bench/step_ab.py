"""Two variants of a W2 training step in one process, alternating at every step: a change measured on
a machine whose speed swings by minutes (docs/performance.md, issue 17).

    python bench/step_ab.py attention [--rounds 6]   # per-example attention by slices (before) vs split (now)
    python bench/step_ab.py allocator [--rounds 6]   # glibc's default malloc vs keeping freed memory (now)
    python bench/step_ab.py compile [--rounds 6]     # eager vs decoder layers compiled (training.compile: on)

W2's model (bench/run_bench.py builds it into bench/out/w2-model) with LoRA r=64 on q/k/v/o, dropout
0.1, fp32, one packed row of 2,048 tokens of alpaca-length examples (60-300 tokens, position ids
restarting per example, as TRL's padding-free packing gives). A step is forward + backward through
the model's own loss. Each round runs both arms, in alternating order, each one warm step then one
timed step; the figure to read is the per-round ratio, which a slow minute affects on both sides.
Minor page faults per step (getrusage) are counted too: unlike time, they do not depend on the
machine's speed. `allocator` first times one large element-wise op (exp over a micro-batch of W2's
logits) under both settings. `compile` compiles the decoder layers once as `training.compile: on` does
(tunelab.model.compiled) and switches between the compiled and the eager call of the same layers; the first
compiled steps (the compile) are timed apart and not counted, and the results go to
step-ab-compile.json in bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

import torch
import torch.nn.functional as F

import run_bench as rb  # bench/ is on sys.path when this script runs
from tunelab.perf import allocator as tl_alloc


def allocator(keep: bool) -> None:
    """keep: tunelab's own setting (tunelab.perf.allocator); else glibc's defaults, the kept heap given back."""
    libc = tl_alloc._glibc()
    if keep:
        tl_alloc._kept = False  # let keep_freed_memory set it again after a default arm
        assert tl_alloc.keep_freed_memory(), "not glibc"
    else:
        libc.mallopt(tl_alloc.M_MMAP_MAX, 65536)  # glibc's defaults
        libc.mallopt(tl_alloc.M_TRIM_THRESHOLD, 128 * 1024)
        libc.malloc_trim(0)


def exp_ms(keep: bool, reps: int = 9) -> float:
    """Median time of exp() over one W2 micro-batch of logits (2,048 x 8,192 fp32) into a fresh output."""
    allocator(keep)
    z = torch.randn(2048, 8192)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        z.exp()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def sliced_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kw):
    """tunelab's per-example attention before b11439d: one slice of the row per example."""
    p = kw["position_ids"][0]
    starts = [0, *torch.nonzero(torch.diff(p) != 1).flatten().add(1).tolist()]
    bounds = [*starts, query.shape[2]]
    outs = [
        F.scaled_dot_product_attention(
            query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True, scale=scaling
        )
        for s, e in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def compiled_switch(model, step):
    """Compile the model's decoder layers as `training.compile: on` does, run the compiling steps, and return a
    switch between the layers' compiled and eager calls, with the compile's figures."""
    from tunelab.compat import compile_figures
    from tunelab.model.compiled import compile_layers, decoder_layers

    compile_layers(model)
    layers = decoder_layers(model)
    calls = [layer._compiled_call_impl for layer in layers]

    def use_compiled(on: bool) -> None:
        for layer, call in zip(layers, calls, strict=True):
            layer._compiled_call_impl = call if on else None

    first = []
    for _ in range(2):  # the first compiles; the second shows that nothing compiles again (one row shape)
        t0 = time.perf_counter()
        step()
        first.append(time.perf_counter() - t0)
    graphs, seconds = compile_figures()
    print(f"compile: {graphs} graphs in {seconds:.1f} s; first two compiled steps {first[0]:.2f} s, {first[1]:.2f} s")
    return use_compiled, {"compile_graphs": graphs, "compile_s": round(seconds, 2), "first_compiled_steps_s": first}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("change", choices=["attention", "allocator", "compile"])
    ap.add_argument("--rounds", type=int, default=6)
    a = ap.parse_args()
    if a.change == "allocator":  # one large element-wise op first: the effect without the model around it
        ms = {keep: [] for keep in (False, True)}
        for r in range(4):
            for keep in (False, True) if r % 2 == 0 else (True, False):
                ms[keep].append(exp_ms(keep))
        print(
            "exp() over 2,048 x 8,192 fp32, fresh output, median of 4 x 9: "
            f"default {statistics.median(ms[False]):.1f} ms, keep {statistics.median(ms[True]):.1f} ms"
        )

    from transformers import AttentionInterface

    from tunelab.config.schema import AdapterConfig, ModelConfig, QuantizationConfig
    from tunelab.model import attention
    from tunelab.model.adapters import apply_adapter
    from tunelab.model.loading import load_model, load_tokenizer

    impl = {"split": attention.packed_sdpa, "slices": sliced_attention}
    current = {"f": attention.packed_sdpa}
    attention.register()
    if a.change == "attention":  # the others keep the kernel as registered (outside compiled graphs)
        AttentionInterface.register(attention.NAME, lambda *x, **k: current["f"](*x, **k))
    model_dir, _, _ = rb.w2_inputs()
    mcfg = ModelConfig(name=str(model_dir))
    torch.manual_seed(0)
    model = load_model(mcfg, QuantizationConfig(bits=None), load_tokenizer(mcfg))
    adapter = AdapterConfig(r=64, alpha=16, dropout=0.1, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = apply_adapter(model, adapter, quantized=False, gradient_checkpointing=False)
    model.train()
    g = torch.Generator().manual_seed(1)
    lens: list[int] = []
    while sum(lens) < 2048:
        lens.append(int(torch.randint(60, 300, (1,), generator=g)))
    lens[-1] -= sum(lens) - 2048
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    ids = torch.randint(5, model.config.vocab_size, (1, 2048), generator=g)

    def step():
        model(input_ids=ids, position_ids=pos, labels=ids).loss.backward()

    arms = {"attention": ("slices", "split"), "allocator": ("default", "keep"), "compile": ("eager", "compiled")}[
        a.change
    ]
    allocator(a.change != "allocator")  # the other comparisons run with the allocator as tunelab sets it
    secs: dict[str, list[float]] = {x: [] for x in arms}
    faults: dict[str, list[int]] = {x: [] for x in arms}
    step()
    if a.change == "compile":
        use_compiled, compile_record = compiled_switch(model, step)
    for r in range(a.rounds):
        for arm in arms if r % 2 == 0 else arms[::-1]:
            if a.change == "attention":
                current["f"] = impl[arm]
            elif a.change == "compile":
                use_compiled(arm == "compiled")
            else:
                allocator(arm == "keep")
            step()
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            step()
            secs[arm].append(time.perf_counter() - t0)
            faults[arm].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    print(f"{len(lens)} examples in one row of 2,048 tokens; {a.rounds} rounds, {torch.get_num_threads()} threads")
    for arm in arms:
        print(
            f"{arm:8s} step median {statistics.median(secs[arm]):.3f} s, min {min(secs[arm]):.3f} s; "
            f"minor page faults per step: median {int(statistics.median(faults[arm])):,}"
        )
    ratios = [new / old for new, old in zip(secs[arms[1]], secs[arms[0]], strict=True)]
    print(
        f"{arms[1]} / {arms[0]} per round: median {statistics.median(ratios):.3f} "
        f"(range {min(ratios):.3f}-{max(ratios):.3f})"
    )
    if a.change == "compile":
        record = {
            **compile_record,
            "rounds": a.rounds,
            "threads": torch.get_num_threads(),
            "examples_in_row": len(lens),
            "step_s": secs,
            "minor_faults": faults,
            "ratio_compiled_over_eager": ratios,
            "median_ratio": statistics.median(ratios),
            "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
            "torch": torch.__version__,
            "commit": rb.git_commit(),
        }
        out = rb.RESULTS / "step-ab-compile.json"
        out.write_text(json.dumps(record, indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
