"""`tunelab eval`: a target and its baseline on the same held-out prompts, with the same settings.

For each model: the loss and perplexity on the reference answers (response tokens only, masked as
in training) and the generation metrics of its greedy (or configured) answers. The default baseline
is the model the run started from: for a LoRA run on a base model, that base, reached with PEFT's
`disable_adapter()` so the weights are loaded once and quantized exactly as in training; for a run
that continued a tuned model (SFT, then DPO), that model with its adapter on; `--baseline` names any
other target instead. Every per-example metric's difference gets a paired bootstrap interval
(`evaluation.intervals`), and held-out prompts found in the training rows are counted before
scoring (`evaluation.leakage`). Results go to eval.json (aggregates, a `runs.EvalRecord`) and
eval_samples.jsonl (one line per example), both through the run directory's owner
(`RunDir.write_eval`).
"""

from __future__ import annotations

import gc
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunelab.data.prepare import tokenize_rows
from tunelab.errors import TunelabError
from tunelab.evaluation.benchmarks import Benchmarks, TaskScore, load_benchmarks, run_benchmarks
from tunelab.evaluation.gate import Gates, check_gates
from tunelab.evaluation.heldout import EvalRows, check_args, load_eval_rows
from tunelab.evaluation.intervals import score_intervals
from tunelab.evaluation.judge import AnswerPairs, JudgeSpec, PairVerdict, judge_spec, run_judge
from tunelab.evaluation.leakage import prompt_text, rows_leakage
from tunelab.evaluation.leakage import warning as leakage_warning
from tunelab.evaluation.metrics import metric_table
from tunelab.evaluation.pair_accuracy import has_pairs, preference_scores, tokenized_pairs
from tunelab.inference.generate import GenerationSettings, generate_batch
from tunelab.inference.target import Target, base_model_id, load_target, model_folders, resolve_target
from tunelab.outputs import Output, check_output, write_text
from tunelab.runs import EvalRecord, RunDir
from tunelab.runs.metric_table import BENCH_PREFIX, JUDGE_WIN_RATE, MetricTable
from tunelab.runs.reading import read_json
from tunelab.runs.records import BenchmarkScore, EvalLeakage, ModelMeta
from tunelab.scoring import Scorer, config_scorers, merged, score_set
from tunelab.scoring.weighted import unscored_as_missing, weighted_scorers

# `--out`: a folder eval adds its two files to; an earlier one holds an eval.json as `_record` writes it.
EVAL_RESULTS = Output(
    "eval results",
    lambda p: {"target", "models", "generation"} <= set(read_json(RunDir(p).eval_results) or {}),
    adds_files=True,
)


@dataclass
class ModelResult:
    """One evaluated model: what it is, its answers and scores."""

    role: str  # "target" or "baseline"
    label: str
    spec: str  # what was loaded: a path, a hub id, or "<base> (adapter disabled)"
    answers: list[str] = field(default_factory=list)
    scores: list[dict[str, float | None]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    benchmarks: dict[str, TaskScore] = field(default_factory=dict)  # lm-eval task -> its score (`--tasks`)


@dataclass
class EvalResult:
    record: EvalRecord  # what eval.json holds
    models: list[ModelResult]
    out_dir: Path
    table: MetricTable  # the rows of what was measured: the fixed metrics and the chosen scorers'


def response_loss(model, tokenizer, rows: EvalRows, batch_size: int) -> dict[str, float]:
    """Mean cross-entropy per response token (the training mask) and its exponential, the perplexity."""
    import torch
    import torch.nn.functional as F

    cols, _ = tokenize_rows(rows.raw, rows.spec, tokenizer)
    examples = sorted(zip(cols["input_ids"], cols["labels"], strict=True), key=lambda e: -len(e[0]))
    if not examples:
        return {}
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, (x, y) in enumerate(chunk):
                ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            # token t predicts token t+1; summing (not averaging per batch) weights every response token equally
            shifted = labels[:, 1:].to(device)
            total += F.cross_entropy(logits[:, :-1].transpose(1, 2), shifted, ignore_index=-100, reduction="sum").item()
            count += int((shifted != -100).sum())
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}


def settings_for(target: Target, max_new_tokens: int | None, batch_size: int | None) -> GenerationSettings:
    """A run's sample-generation settings (what training used), else the defaults; CLI values win."""
    s = GenerationSettings()
    if target.config is not None:
        s = target.config.samples.generation()
    if max_new_tokens is not None:
        s.max_new_tokens = max_new_tokens
    if batch_size is not None:
        s.batch_size = batch_size
    return s


def eval_scorers(target: Target, extra: list[Scorer] | None) -> list[Scorer]:
    """The run's eval.scorers (or the default set), then a GRPO run's rewards (their scorers, without the
    weights), then the `--scorer` ones, each replacing any earlier one of the same name; a bad declaration
    is a ConfigError naming it."""
    config = target.config
    source = str(target.run_dir / "config.yaml") if target.run_dir is not None else None
    chosen = config_scorers(config.eval.scorers if config else None, source)
    if config is not None and config.training.method == "grpo":
        # the held-out reward re-scored by the scorers training summed: a reward wins over an eval scorer of its name
        chosen = merged(chosen, [unscored_as_missing(s) for s, _ in weighted_scorers(config.grpo.rewards, source)])
    return merged(chosen, extra or [])


@dataclass
class EvalRequest:
    """What `tunelab eval` was asked: the target, the prompts, the baseline, where results go, and what
    else to measure (`--scorer`, `--judge`, `--tasks`; the gates are only checked here, before any
    weights load, and applied to the record by the caller)."""

    target: str
    data: str | None = None
    split: str = "test"
    limit: int | None = None
    baseline: str | None = None
    use_baseline: bool = True
    out_dir: str | Path | None = None
    max_new_tokens: int | None = None
    batch_size: int | None = None
    trust_remote_code: bool = False
    scorers: list[Scorer] = field(default_factory=list)
    judge: str | None = None
    judge_model: str | None = None
    judge_concurrency: int | None = None
    tasks: list[str] | None = None
    gates: Gates | None = None


@dataclass
class EvalPlan:
    """Everything settled before the first weights load: what is scored, on which rows, against what."""

    target: Target
    base_target: Target | None  # None: the target's own weights with the adapter off (or no baseline)
    models: list[ModelResult]
    rows: EvalRows
    scorers: list[Scorer]
    settings: GenerationSettings
    loss_batch: int
    out: Path
    judging: JudgeSpec | None
    benchmarks: Benchmarks | None
    leakage: EvalLeakage | None = None
    prompts: list[str] = field(default_factory=list)  # rendered by the target's tokenizer, once it is loaded
    references: list[str] = field(default_factory=list)


def _score(result: ModelResult, model, tokenizer, plan: EvalPlan, progress) -> None:
    """One model's loss, answers and scores on the plan's rows, prompts and references."""
    rows, prompts, references = plan.rows, plan.prompts, plan.references
    if not rows.generates:  # raw text: judged by its loss and perplexity alone, as continued pre-training is
        result.metrics = response_loss(model, tokenizer, rows, plan.loss_batch)
        return
    task = progress.add_task(result.label, total=len(prompts)) if progress is not None else None
    on_batch = (lambda n: progress.advance(task, n)) if progress is not None else None
    result.answers = generate_batch(model, tokenizer, prompts, plan.settings, on_batch=on_batch)
    result.scores, aggregates = score_set(plan.scorers, prompts, result.answers, references, rows.rows)
    result.metrics = {**response_loss(model, tokenizer, rows, plan.loss_batch), **aggregates}
    if has_pairs(rows.rows):  # preference rows: is the chosen answer the likelier one?
        result.metrics.update(
            preference_scores(model, tokenizer, tokenized_pairs(rows.raw, rows.spec, tokenizer), plan.loss_batch)
        )
    if plan.benchmarks is not None:
        result.benchmarks = run_benchmarks(plan.benchmarks, model, tokenizer, plan.loss_batch)


def benchmark_record(models: list[ModelResult]) -> dict[str, BenchmarkScore]:
    """Each task's score of the target, beside the baseline's (when there is one) and the difference."""
    target, base = models[0].benchmarks, (models[1].benchmarks if len(models) > 1 else {})
    record = {}
    for name, t in target.items():
        b = base.get(name)
        record[name] = BenchmarkScore(
            metric=t.metric,
            tuned=t.value,
            tuned_stderr=t.stderr,
            baseline=b.value if b else None,
            baseline_stderr=b.stderr if b else None,
            diff=t.value - b.value if b else None,
            higher_is_better=t.higher_is_better,
            examples=t.examples,
        )
    return record


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def auto_baseline(target: Target) -> Target | None:
    """The model a target is compared with when no --baseline is given: the model its run started
    from. A run that continued another tuned model (SFT, then DPO: `model.name: runs/sft`) started
    from that model, its adapter on; a full fine-tune from its base weights. None for a LoRA run on a
    plain base, whose baseline is its own weights with the adapter off (see `evaluate`)."""
    if target.config is None:
        return None
    started = continued_from(target)
    if started is not None:
        return started
    if target.adapter is not None:
        return None
    return Target(  # a full fine-tune: its base is another set of weights
        target.config.model.name,
        base=target.config.model.name,
        prompt=target.prompt,
        config=target.config,
        trust_remote_code=target.trust_remote_code,
    )


def continued_from(target: Target) -> Target | None:
    """The tuned model (base + adapter) a run's training continued, when it continued one."""
    from tunelab.artifacts import Home
    from tunelab.artifacts.models import continued_model

    name = target.config.model.name
    init = continued_model(name, Home.of(target.config))
    if init is None or init.adapter is None:
        return None  # a plain base model (or a whole-model artifact, which is the target's own base)
    return Target(
        name,
        base=init.base,
        adapter=init.adapter,
        prompt=target.prompt,
        config=target.config,
        trust_remote_code=target.trust_remote_code,
    )


def baseline_model(
    target: Target, baseline: Target | None, use_baseline: bool
) -> tuple[ModelResult | None, Target | None]:
    """The baseline's result row and the target to load for it; (row, None) means the target's own
    weights with the adapter switched off; (None, None) no baseline. Each row's label names what is
    really measured."""
    if not use_baseline:
        return None, None
    if baseline is not None:
        return ModelResult("baseline", f"baseline ({_short(baseline.text)})", _spec(baseline)), baseline
    try:
        started = auto_baseline(target)
    except TunelabError as e:  # the run it continued is gone or unfinished: say which, and the way out
        raise TunelabError(
            f"the baseline (the model this run started from): {e.message}",
            hint="name one with --baseline TARGET, or pass --no-baseline",
        ) from None
    if started is not None and started.adapter is not None:  # SFT, then DPO: the SFT model, adapter on
        return ModelResult("baseline", f"start ({_short(started.text)})", _spec(started)), started
    if started is not None:
        return ModelResult("baseline", f"base ({_short(started.text)})", _spec(started)), started
    if target.adapter is not None:
        label = f"base ({_short(base_model_id(target))})"
        return ModelResult("baseline", label, f"{target.base} (adapter disabled)"), None
    return None, None


def _spec(target: Target) -> str:
    return f"{target.base} + {target.adapter}" if target.adapter is not None else target.base


def run_step(target: Target) -> int | None:
    """The training step of a run target's weights (final/ or step-NNNNNN/), when known."""
    weights = target.adapter if target.adapter is not None else Path(target.base)
    meta = ModelMeta.read(weights)
    if meta is not None and meta.step is not None:
        return meta.step
    name = weights.name
    return int(name.removeprefix("step-")) if name.startswith("step-") and name[5:].isdigit() else None


def evaluate(request: EvalRequest, console=None, sinks: list[Any] | None = None) -> EvalResult:
    """Evaluate a target (and its baseline) and write eval.json + eval_samples.jsonl atomically.

    The baseline is `request.baseline` when given, else the model the target's run started from
    (`use_baseline=False`: none). `sinks` (tracker clients) get `log_metrics(record)` with the
    aggregates as `eval/<metric>` and `eval/baseline/<metric>` at the run's step, and
    `log_samples(step, rows)` with one row per example and model. `request.scorers` (`--scorer`) are
    added to the run's eval.scorers; a judge (`--judge`, else the run's eval.judge) compares the
    target's answers with the baseline's (`evaluation.judge`); `tasks` are lm-eval benchmarks run on
    both models (`evaluation.benchmarks`).
    """
    t0 = time.perf_counter()
    plan = plan_eval(request, console)
    model, tokenizer = load_target(plan.target)
    plan.prompts, plan.references = plan.rows.prompts(tokenizer), plan.rows.references()
    with _progress(console) as progress:
        _score(plan.models[0], model, tokenizer, plan, progress)
        if len(plan.models) > 1:
            model = _score_baseline(plan, model, tokenizer, progress)
    del model
    _release_memory()
    judged = judge_answers(plan, console, request.trust_remote_code) if plan.judging else None

    record = _record(plan, time.perf_counter() - t0)
    record.judge = judged[0] if judged else None
    samples = _sample_records(plan.prompts, plan.references, plan.models, judged[1] if judged else None)
    RunDir(plan.out).write_eval(record, samples, write_text)
    for sink in sinks or []:
        _log_to_sink(sink, record.step or 0, plan)
    return EvalResult(record, plan.models, plan.out, metric_table(plan.scorers))


def plan_eval(request: EvalRequest, console) -> EvalPlan:
    """Every check and choice before weights load: the target and its baseline, the output folder, the
    rows, the scorers, the judge, the benchmarks and the gates; then the leakage check (a warning)."""
    target = resolve_target(request.target, request.trust_remote_code)
    check_args(target, request.data, request.split)
    chosen = eval_scorers(target, request.scorers)
    named_baseline = resolve_target(request.baseline, request.trust_remote_code) if request.baseline else None
    judging = requested_judge(target, request, console)
    out = Path(request.out_dir) if request.out_dir is not None else target.run_dir
    if out is None:
        raise TunelabError(
            f"{request.target}: not a run directory; say where to write eval.json", hint="pass --out DIR"
        )
    out = check_output(out, "--out", EVAL_RESULTS, model_folders(target), overwrite=True, home=target.run_dir)
    rows = load_eval_rows(target, request.data, request.split, request.limit)
    config = target.config
    label = target.run_dir.name if target.run_dir is not None else _short(request.target)
    models = [ModelResult("target", label, str(target.adapter or target.base))]
    base_row, base_target = baseline_model(target, named_baseline, request.use_baseline)
    models += [base_row] if base_row is not None else []
    if judging is not None and (len(models) < 2 or not rows.generates):
        what = "raw text: nothing is generated" if not rows.generates else "the target has no baseline to compare with"
        raise TunelabError(f"judge: {what}", hint="pass --baseline TARGET" if rows.generates else None)
    benchmarks = load_benchmarks(request.tasks) if request.tasks else None
    if request.gates:
        directions = {row.field: row.direction for row in metric_table(chosen).at("eval")}
        names = benchmarks.names if benchmarks else ()
        check_gates(request.gates, names, directions, len(models) > 1, judging is not None)
    plan = EvalPlan(
        target=target,
        base_target=base_target,
        models=models,
        rows=rows,
        scorers=chosen,
        settings=settings_for(target, request.max_new_tokens, request.batch_size),
        loss_batch=(config.training.eval_batch_size or config.training.batch_size) if config else 8,
        out=out,
        judging=judging,
        benchmarks=benchmarks,
    )
    plan.leakage = check_leakage(target, rows, request.data, request.split, console)
    return plan


def _score_baseline(plan: EvalPlan, model, tokenizer, progress):
    """The baseline's scores: the same weights with the LoRA layers off, or its own weights loaded in place of
    the target's (two sets of weights need not fit in memory together). Returns the model still loaded."""
    if plan.base_target is None:
        with model.disable_adapter():
            _score(plan.models[1], model, tokenizer, plan, progress)
        return model
    del model
    _release_memory()
    model, base_tokenizer = load_target(plan.base_target)
    _score(plan.models[1], model, base_tokenizer, plan, progress)
    return model


def _log_to_sink(sink, step: int, plan: EvalPlan) -> None:
    """A tracker gets every model's metrics (`eval/...`, `eval/baseline/...`) and, when answers were generated,
    the training sample table's shape with the model named in the settings column."""
    logged = {"step": step}
    for m in plan.models:
        prefix = "eval/" if m.role == "target" else "eval/baseline/"
        logged.update({prefix + k: v for k, v in m.metrics.items()})
        logged.update({f"{prefix}{BENCH_PREFIX}{task}": score.value for task, score in m.benchmarks.items()})
    sink.log_metrics(logged)
    if not plan.rows.generates:
        return
    settings = plan.settings.as_dict()
    sink.log_samples(
        step,
        [
            {
                "step": step,
                "prompt": p,
                "generation": m.answers[i],
                "reference": r,
                "settings": {**settings, "model": m.label},
            }
            for m in plan.models
            for i, (p, r) in enumerate(zip(plan.prompts, plan.references, strict=True))
        ],
    )


def requested_judge(target: Target, request: EvalRequest, console) -> JudgeSpec | None:
    """The judge `--judge` or the run's eval.judge names, checked before any weights load (a judge TARGET
    resolved); None for no judge. `--no-baseline` refuses `--judge` and skips the config's judge."""
    config = target.config.eval.judge if target.config is not None else None
    spec = judge_spec(config, request.judge, request.judge_model, request.judge_concurrency)
    if spec is None or request.use_baseline:
        if spec is not None and spec.target is not None:
            resolve_target(spec.target, request.trust_remote_code)
        return spec
    if request.judge is not None:
        raise TunelabError("--judge compares the target with its baseline; --no-baseline leaves none")
    if console is not None:
        console.print("[dim]eval.judge skipped: --no-baseline leaves nothing to compare with[/]")
    return None


def judge_answers(plan: EvalPlan, console, trust_remote_code: bool):
    """The judge's record and per-prompt verdicts on the target's answers against the baseline's; the win
    rate joins the target's metrics (what runs list / compare, sweeps and the trackers read)."""
    rows, models = plan.rows, plan.models
    instructions = [prompt_text(r, rows.prompt).strip() or p for r, p in zip(rows.rows, plan.prompts, strict=True)]
    with _progress(console) as progress:
        pairs = AnswerPairs(instructions, models[0].answers, models[1].answers)
        result, verdicts = run_judge(plan.judging, pairs, trust_remote_code, progress)
    models[0].metrics[JUDGE_WIN_RATE] = result.win_rate
    return result, verdicts


def _short(text: str) -> str:
    return text if len(text) <= 40 else "..." + text[-37:]


def _progress(console):
    if console is None:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]eval[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("examples"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _record(plan: EvalPlan, seconds: float) -> EvalRecord:
    """eval.json: what was evaluated on what, each model's metrics, the differences with their intervals, the
    leakage found and the benchmarks."""
    target, rows, models, scorers = plan.target, plan.rows, plan.models, plan.scorers
    refs = rows.references()
    record = EvalRecord(
        target=target.text,
        step=run_step(target) if target.run_dir is not None else None,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        data={
            "source": rows.source,
            "split": rows.split,
            "examples": len(rows.rows),
            "prompt_format": rows.prompt.format,
            "reference_words": sum(len(r.split()) for r in refs) / len(refs),
        },
        generation=plan.settings.as_dict(),
        models={m.role: {"label": m.label, "model": m.spec, "metrics": m.metrics} for m in models},
        time_s=round(seconds, 2),
        scorers={s.key: s.declaration() for s in scorers},  # what each metric key means, to rerun it
    )
    record.leakage = plan.leakage
    record.benchmarks = benchmark_record(models) if plan.benchmarks else None
    if len(models) > 1:
        a, b = models[0].metrics, models[1].metrics
        record.difference = {k: a[k] - b[k] for k in a if k in b}
        if all(m.answers for m in models):
            t, base = models
            record.intervals = score_intervals(scorers, refs, t.answers, t.scores, base.answers, base.scores) or None
    return record


def check_leakage(target: Target, rows: EvalRows, data: str | None, split: str, console) -> EvalLeakage | None:
    """Held-out prompts found in the run's training rows, warned about before scoring; None when
    there is nothing to check (not a run, raw text, its own train split) or its training data cannot
    be read here any more (noted, not fatal: the evaluation itself does not need it)."""
    if target.config is None or not rows.generates or (data is None and split == "train"):
        return None
    from tunelab.artifacts import Home
    from tunelab.data.prepare import load_splits

    try:
        train, _, _ = load_splits(target.config, Home.of(target.config))
    except TunelabError as e:
        if console is not None:
            console.print(f"[dim]leakage not checked: the training data cannot be read ({e.message})[/]")
        return None
    leak = rows_leakage(rows.rows, train.rows, rows.prompt)
    line = leakage_warning(leak)
    if line and console is not None:
        console.print(f"[yellow]warning:[/] {line}", soft_wrap=True, highlight=False)
    return leak


def _sample_records(
    prompts, references, models: list[ModelResult], judged: list[PairVerdict] | None = None
) -> list[dict[str, Any]]:
    if not all(m.answers for m in models):
        return []  # raw text: nothing was generated, only the loss measured
    rows = [
        {
            "index": i,
            "prompt": p,
            "reference": r,
            "answers": {m.role: m.answers[i] for m in models},
            "scores": {m.role: m.scores[i] for m in models},
        }
        for i, (p, r) in enumerate(zip(prompts, references, strict=True))
    ]
    for row, verdict in zip(rows, judged or [], strict=False):
        row["judge"] = verdict.sample()
    return rows
