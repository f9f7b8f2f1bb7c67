"""Preference tuning (training.method dpo | kto) over TRL's stable `DPOTrainer` and `KTOTrainer`.

The run is the SFT run's (`training.run`): same run directory, checkpoints, resume, trackers,
samples and summary. What differs lives here: the trainer arguments (the SFT run's
TrainingArguments plus TRL's preference settings), the trainer base class, and a callback that
scores held-out pairs at every evaluation.

ORPO (and CPO, SimPO, BCO) exist only in `trl.experimental` in TRL 1.x, whose API may change
between minor releases; the config refuses them in one line.

The reference model is TRL's own: with LoRA, the adapter switched off (a fresh adapter) or, when
the run continues an adapter (an SFT run's, `model.name: runs/sft`), a frozen copy of it that TRL
adds as the `ref` adapter, so DPO after SFT is measured against the SFT model.
"""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback

from tunelab.config import RunConfig
from tunelab.runs import RunDir


def preference_args(cfg: RunConfig, sft_args):
    """DPOConfig / KTOConfig carrying every TrainingArguments value of `sft_args` (what `sft_config`
    built for this run: batch, schedule, precision, checkpoints, logging, distributed settings), plus
    the preference section. Only transformers' own fields are copied: TRL's SFT-specific ones
    (its `loss_type`, packing, padding-free) mean something else, or nothing, here."""
    import dataclasses

    from transformers import TrainingArguments
    from trl import DPOConfig, KTOConfig

    method, p = cfg.training.method, cfg.preference
    names = [f.name for f in dataclasses.fields(TrainingArguments) if f.init]
    common = {n: getattr(sft_args, n) for n in names if hasattr(sft_args, n)}
    loss = p.loss(method)
    if method == "dpo":
        return DPOConfig(
            **common,
            beta=p.beta,
            loss_type=p.losses(method),
            loss_weights=p.loss_weights,
            label_smoothing=p.label_smoothing,
            max_length=cfg.training.max_length,
            padding_free=False,
        )
    # KTO's KL term pairs each example with its neighbour in a fixed-order batch (TRL requires the
    # sequential sampler for it); the rows were already shuffled (seeded) by the data pipeline.
    if loss == "kto":
        common["train_sampling_strategy"] = "sequential"
    return KTOConfig(
        **common,
        beta=p.beta,
        loss_type=loss,
        desirable_weight=p.desirable_weight,
        undesirable_weight=p.undesirable_weight,
        max_length=cfg.training.max_length,
    )


def preference_trainer(method: str):
    """TRL's DPOTrainer / KTOTrainer, taking the data as tunelab tokenized it.

    TRL's `_prepare_dataset` would extract prompts, append EOS and tokenize raw text again; tunelab
    already did all of that (the same templates and BOS rule as SFT and inference, the verified
    cache, truncation counted), so the override hands the columns on. KTO's KL completions are
    built as TRL builds them: each micro-batch's completions rotated by one."""
    from tunelab.compat import PREPARE_DATASET

    if method == "dpo":
        from trl import DPOTrainer as Base
    else:
        from trl import KTOTrainer as Base

    def prepare(self, dataset, processing_class, args, dataset_name):
        if method == "kto" and getattr(self, "calculate_KL", False) and "KL_completion_ids" not in dataset.column_names:

            def rotate(batch):
                return {"KL_completion_ids": [batch["completion_ids"][-1], *batch["completion_ids"][:-1]]}

            # keep_in_memory: never write cache files next to the verified tokenized-data cache
            dataset = dataset.map(
                rotate, batched=True, batch_size=args.per_device_train_batch_size, keep_in_memory=True
            )
        return dataset

    def init(self, *args, **kwargs):
        Base.__init__(self, *args, **kwargs)
        # added here, before the run's own callbacks: its mark is in the logs they write
        self.add_callback(KLWatch())

    return type(f"Pretokenized{Base.__name__}", (Base,), {PREPARE_DATASET: prepare, "__init__": init})


# KL(policy || reference) in nats past which a preference run has most likely left the reference
# behind (a learning rate too high for the method: KTO at the DPO example's rate went 0 -> 474 in 5 steps).
KL_WARN = 10.0


class KLWatch(TrainerCallback):
    """Says once, on stderr and as `kl_warning` in that step's metrics, when the logged KL (KTO logs
    it) passes `KL_WARN`: a run that diverged this way keeps going and its losses look fine."""

    def __init__(self, console=None, limit: float | None = None):
        self.console, self.limit, self.warned = console, KL_WARN if limit is None else limit, False

    def on_log(self, args, state, control, logs=None, **kw):
        kl = (logs or {}).get("kl")
        if self.warned or not isinstance(kl, int | float) or not kl > self.limit:
            return
        self.warned = True
        logs["kl_warning"] = float(kl)
        if self.console is None:
            from rich.console import Console

            self.console = Console(stderr=True)
        self.console.print(
            f"[yellow]warning:[/] KL from the reference model is {kl:.1f} at step {state.global_step} "
            f"(past {self.limit:g}): the policy is running away from the reference; "
            "a lower training.learning_rate or a higher preference.beta keeps it close",
            highlight=False,
            soft_wrap=True,
        )


def sequence_lengths(dataset) -> list[int]:
    """Tokens of each sequence a preference dataset feeds the model (prompt + each answer)."""
    import pyarrow.compute as pc

    prompt = pc.list_value_length(dataset.data.column("prompt_ids")).to_pylist()
    out: list[int] = []
    for col in ("chosen_ids", "rejected_ids", "completion_ids"):
        if col in dataset.column_names:
            out += [
                p + n for p, n in zip(prompt, pc.list_value_length(dataset.data.column(col)).to_pylist(), strict=True)
            ]
    return out


def sample_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Test rows whose answer is one to imitate (a KTO row labelled undesirable is not a reference)."""
    return [r for r in rows if r.get("label", True) is not False]


class PreferenceCallback(TrainerCallback):
    """At the start, at every evaluation and at the end: the preference accuracy and margin of up to
    `preference.eval_pairs` held-out pairs (`tunelab.evaluation.pair_accuracy`), into metrics.jsonl
    and the trackers."""

    def __init__(self, run: RunDir, pairs, tokenizer, sinks=None, clock=None, batch_size: int = 16):
        self.run, self.pairs, self.tokenizer, self.sinks = run, pairs, tokenizer, sinks or []
        self.clock, self.batch_size = clock, batch_size
        self.history: dict[int, dict[str, float]] = {}
        self.seconds = 0.0

    def score(self, model, step: int) -> dict[str, float]:
        from tunelab.evaluation.pair_accuracy import preference_scores

        if not self.pairs or step in self.history:
            return self.history.get(step, {})
        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            scores = preference_scores(model, self.tokenizer, self.pairs, self.batch_size)
        finally:
            model.train(was_training)
        spent = time.perf_counter() - t0
        self.seconds += spent
        if self.clock is not None:
            self.clock.exclude(spent)  # not training time: keep it out of tokens/s
        self.history[step] = scores
        record = {"step": step, **{k: round(v, 6) for k, v in scores.items()}}
        self.run.append_jsonl(self.run.metrics, record)
        for sink in self.sinks:
            sink.log_metrics(record)
        return scores

    def on_train_begin(self, args, state, control, model=None, **kw):
        if state.global_step == 0:
            self.score(model, 0)

    def on_evaluate(self, args, state, control, model=None, **kw):
        self.score(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kw):
        self.score(model, state.global_step)

    def summary(self) -> dict[str, float]:
        """preference_accuracy_before / _after for the run's summary (before only when this session started at
        step 0)."""
        if not self.history:
            return {}
        first, last = min(self.history), max(self.history)
        out = {"preference_accuracy_after": self.history[last].get("preference_accuracy")}
        if first == 0:
            out["preference_accuracy_before"] = self.history[0].get("preference_accuracy")
        return out
