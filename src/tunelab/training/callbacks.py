"""Trainer callbacks: metrics file, live progress bar, sample generations, a graceful stop on
Ctrl-C / SIGTERM, and the step intervals a resumed run may change."""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from typing import Any

from transformers import TrainerCallback

from tunelab.data.templates import reference, render_prompt
from tunelab.evaluation.metrics import exact_match_rate
from tunelab.inference.generate import GenerationSettings, generate_batch
from tunelab.runs import RunDir
from tunelab.scoring import Scorer, score_set


class MetricsCallback(TrainerCallback):
    """Appends every log (train and eval) to metrics.jsonl, adding tokens/s between logs."""

    def __init__(self, run: RunDir, sinks: list[Any] | None = None):
        self.run = run
        self.sinks = sinks or []
        self.last_tokens = 0
        self.last_time: float | None = None
        self.last_train_loss: float | None = None
        self.last_eval_loss: float | None = None
        self.tokens_per_s: float | None = None
        self.tokens_at_start = 0  # tokens seen before this session (a resumed run)

    def on_train_begin(self, args, state, control, **kw):
        self.last_tokens = self.tokens_at_start = state.num_input_tokens_seen or 0
        self.last_time = time.perf_counter()

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` spent outside training (sample generation) out of the next tokens/s reading."""
        if self.last_time is not None:
            self.last_time += seconds

    def on_log(self, args, state, control, logs=None, **kw):
        logs = dict(logs or {})
        record: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        if "loss" in logs:
            now = time.perf_counter()
            tokens = state.num_input_tokens_seen or 0
            if self.last_time is not None and now > self.last_time:
                self.tokens_per_s = (tokens - self.last_tokens) / (now - self.last_time)
                record["tokens_per_s"] = round(self.tokens_per_s, 1)
            self.last_tokens, self.last_time = tokens, now
            record["tokens"] = tokens
            self.last_train_loss = float(logs["loss"])
        if "eval_loss" in logs:
            self.last_eval_loss = float(logs["eval_loss"])
        for k, v in logs.items():
            if k in ("total_flos", "num_input_tokens_seen"):
                continue
            record[k] = round(v, 8) if isinstance(v, float) else v
        self.run.append_jsonl(self.run.metrics, record)
        for sink in self.sinks:
            sink.log_metrics(record)

    def on_evaluate(self, args, state, control, **kw):
        # Evaluation time must not count against the next training tokens/s reading.
        self.last_time = time.perf_counter()


class ProgressCallback(TrainerCallback):
    """Progress while training: a rich bar in a terminal; elsewhere (a log file, a pipe, a scheduler's
    output) one plain line every `every_s` seconds: step, loss, tokens/s, ETA."""

    def __init__(self, metrics: MetricsCallback, console=None, every_s: float = 30.0, global_batch: int | None = None):
        from rich.console import Console

        self.metrics = metrics
        self.global_batch = global_batch  # sequences per optimizer step, over every process
        self.console = console or Console(stderr=True)
        self.every_s = every_s
        self.progress = None
        self.task = None
        self.started: float | None = None
        self.start_step = 0
        self.last_line = 0.0

    def on_train_begin(self, args, state, control, **kw):
        self.started = self.last_line = time.perf_counter()
        self.start_step = state.global_step
        if not self.console.is_terminal:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, info="")

    def _info(self) -> str:
        m = self.metrics
        info = []
        if m.last_train_loss is not None:
            info.append(f"loss {m.last_train_loss:.4f}")
        if m.last_eval_loss is not None:
            info.append(f"eval {m.last_eval_loss:.4f}")
        if m.tokens_per_s:
            info.append(f"{m.tokens_per_s:,.0f} tok/s")
        if self.global_batch:
            info.append(f"batch {self.global_batch}")
        return "  ".join(info)

    def on_step_end(self, args, state, control, **kw):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, info=self._info())
            return
        now = time.perf_counter()
        if self.started is None or now - self.last_line < self.every_s:
            return
        self.last_line = now
        done = state.global_step - self.start_step
        eta = (now - self.started) / done * (state.max_steps - state.global_step) if done else 0.0
        self.console.print(
            f"train step {state.global_step}/{state.max_steps}  {self._info()}  "
            f"elapsed {_clock(now - self.started)}  eta {_clock(eta)}",
            highlight=False,
            soft_wrap=True,
        )

    def on_log(self, args, state, control, **kw):
        if self.progress is not None:  # runs after MetricsCallback: show the newest loss
            self.progress.update(self.task, completed=state.global_step, info=self._info())

    def on_train_end(self, args, state, control, **kw):
        self.stop()

    def stop(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class SamplesCallback(TrainerCallback):
    """At each evaluation and at the end: answer N test prompts and log a table of them.

    Rows go to samples.jsonl (step, prompt, generation, reference, settings) and to every tracker
    sink. Generation runs in `inference_mode`, which restores train mode and the RNG state.
    """

    def __init__(
        self,
        run: RunDir,
        rows: list[dict],
        prompt_cfg,
        tokenizer,
        settings: GenerationSettings,
        sinks=None,
        scorers: list[Scorer] | None = None,
        dense_weights: bool = False,
        clock: MetricsCallback | None = None,
    ):
        self.run = run
        self.clock = clock  # its tokens/s readings must not count the time spent here
        self.dense_weights = dense_weights  # see generate_batch; train() decides from the memory plan
        self.scorers = scorers or []  # besides exact match, which the run's summary always reports
        self.rows = rows
        self.prompts = [render_prompt(r, prompt_cfg, tokenizer) for r in rows]
        self.references = [reference(r, prompt_cfg) for r in rows]
        self.tokenizer = tokenizer
        self.settings = settings
        self.sinks = sinks or []
        self.seconds = 0.0
        self.last_step = -1
        self.history: dict[int, list[str]] = {}

    def generate(self, model, step: int) -> list[dict[str, Any]]:
        if not self.prompts or step == self.last_step:
            return []
        t0 = time.perf_counter()
        answers = generate_batch(model, self.tokenizer, self.prompts, self.settings, dense_weights=self.dense_weights)
        spent = time.perf_counter() - t0
        self.seconds += spent
        if self.clock is not None:
            self.clock.exclude(spent)
        self.last_step = step
        self.history[step] = answers
        table = [
            {"step": step, "prompt": p, "generation": a, "reference": r, "settings": self.settings.as_dict()}
            for p, a, r in zip(self.prompts, answers, self.references, strict=True)
        ]
        for rec in table:
            self.run.append_jsonl(self.run.samples, rec)
        record = {"step": step, "samples_exact_match": exact_match_rate(answers, self.references)}
        if self.scorers:  # quality curves next to the loss curves (config: eval.scorers, eval.generation_metrics)
            _, scores = score_set(self.scorers, self.prompts, answers, self.references, self.rows)
            record.update({f"samples_{k}": v for k, v in scores.items()})
        for key, value in self.more_scores(step, answers).items():
            record.setdefault(key, value)  # the table's own figure keeps its name (a reward named exact_match)
        self.run.append_jsonl(self.run.metrics, record)
        for sink in self.sinks:
            sink.log_samples(step, table)
            sink.log_metrics(record)
        return table

    def more_scores(self, step: int, answers: list[str]) -> dict[str, Any]:
        """Figures a subclass adds to the step's one metrics record (GRPO: the held-out reward)."""
        return {}

    def on_evaluate(self, args, state, control, model=None, **kw):
        self.generate(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kw):
        self.generate(model, state.global_step)


class GracefulStop(TrainerCallback):
    """Ctrl-C or SIGTERM (schedulers, `docker stop`, preemptible VMs): finish the current optimizer
    step, save a checkpoint, stop. A second Ctrl-C stops at once (KeyboardInterrupt).

    `agree` (several processes) turns this rank's signal into the one any rank has seen, so every
    rank stops, and saves, after the same step."""

    def __init__(self, console=None, agree=None):
        self.console = console
        self.signal: int | None = None
        self.agree = agree

    @property
    def name(self) -> str:
        return {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}.get(self.signal, "a signal")

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        if self.console is not None:
            self.console.print(
                f"[yellow]{self.name}: stopping after this step and saving a checkpoint[/] "
                "(Ctrl-C again to stop at once)"
            )

    @contextmanager
    def installed(self):
        """The handlers for the duration of training (main thread only), the previous ones restored after."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def on_step_end(self, args, state, control, **kw):
        stop = self.signal
        if self.agree is not None:
            # every rank decides on what all saw. A signal whose handler ran during this all-reduce (it runs
            # once the all-reduce returns) stays in self.signal for the next step's: assigning the result
            # would lose it on every rank, as happens when all ranks get their launcher's SIGTERM together
            stop = self.agree(self.signal)
            if stop is not None:
                self.signal = stop
        if stop is not None:
            control.should_save = True
            control.should_training_stop = True
            control.should_evaluate = False


class ResumedIntervals(TrainerCallback):
    """A resumed trainer takes logging / eval / save intervals from the checkpoint's trainer state;
    the config's values (which `--resume` may change) win."""

    def on_train_begin(self, args, state, control, **kw):
        state.logging_steps = args.logging_steps
        if args.eval_steps is not None:
            state.eval_steps = args.eval_steps
        if args.save_steps is not None:
            state.save_steps = args.save_steps
