"""`tunelab train`: one training job as named phases.

`train` settles how this process was started (device, strategy, checks that need nothing loaded),
takes the run lock, and hands over to `TrainingRun`, whose phases run in this order:

1. `prepare`: the trackers, the resume point, the model reference, the tokenizer, the data, the
   model and its adapter. Everything that can fail on user input fails here; nothing is written.
2. `open_run_dir`: only now is the run directory created (or replaced, or truncated to a
   checkpoint) and `config.yaml` saved, by rank 0 alone.
3. `build_trainer`: TRL's SFTTrainer (DPOTrainer / KTOTrainer for preference tuning) on the data.
4. `attach_callbacks`: metrics, progress, samples, held-out preference pairs, graceful stop.
5. `fit`: training, resumable; an interrupted run leaves a checkpoint and the resume command.
6. `summarize`: the figures of the run as a `runs.Summary`.
7. `finish`: `final/`, the trackers' records, and `summary.json` last.
"""

from __future__ import annotations

import platform
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.markup import escape
from rich.text import Text

from tunelab.config import RunConfig, save_config
from tunelab.config.load import config_to_dict
from tunelab.data.prepare import check_lost_answers, data_notes, prepare_data
from tunelab.errors import Interrupted, TunelabError, as_user_error, os_error
from tunelab.evaluation.metrics import exact_match_rate
from tunelab.model.adapters import adapter_warnings, apply_adapter, parameter_report
from tunelab.model.compiled import compile_for_run
from tunelab.model.kernels import apply_kernels, resolve_kernels
from tunelab.model.loading import load_model, load_tokenizer
from tunelab.model.precision import run_precision, run_weight_dtype
from tunelab.model.resolve import ResolvedModel, ResolvedOnce, resolve_model_path
from tunelab.runs import DataStats, RunDir, RunLock, Summary, prepare_run_dir
from tunelab.scoring import config_scorers
from tunelab.training import distributed as dist
from tunelab.training.callbacks import (
    GracefulStop,
    MetricsCallback,
    ProgressCallback,
    ResumedIntervals,
    SamplesCallback,
)
from tunelab.training.figures import packing_efficiency, peak_memory_mb, row_lengths
from tunelab.training.preference_trainer import PreferenceCallback, preference_args, sample_rows
from tunelab.training.resume import checkpoint_step, resume_command
from tunelab.training.rules import Situation, before_load, grpo_rows, raise_first, run_dir_for, start_point
from tunelab.training.trainer import evaluated_at, make_trainer_class, save_final_model, sft_config


@dataclass
class RunStart:
    """How this process was started, settled by `train` before it takes the run lock."""

    config_path: str | Path | None
    resume: bool
    console: object
    sinks: list
    command: str | None  # how the user started the run (printed in the resume hint)
    callbacks: list  # extra trainer callbacks (the sweep's pruner, the tests' fault injection)
    device: str
    run_name: str
    situation: Situation  # what the rules before a run are asked about (`training.rules`)
    world: dist.World = field(default_factory=dist.World)
    strategy: str = "none"
    backend: str | None = None


def train(
    cfg: RunConfig,
    config_path: str | Path | None = None,
    resume: bool = False,
    console=None,
    sinks=None,
    command: str | None = None,
    callbacks=None,
) -> Summary:
    """Run a whole training job as configured; returns the summary (also written to summary.json).

    `command` is how the user started the run (printed in the resume hint); `callbacks` are extra
    trainer callbacks (the tests' fault injection).
    """
    from rich.console import Console

    console = console or Console(stderr=True)
    launch = _settle_launch(cfg, config_path, resume, console, list(sinks or []), command, list(callbacks or []))
    run = run_dir_for(cfg, launch.resume)
    # one job per run directory: rank 0 holds the lock for the whole run, the others learn whether it could
    lock = launch.world.on_main(lambda: RunLock(run.path).acquire())
    try:
        if lock is not None and lock.took_over:
            console.print(
                Text(
                    f"note: took over the lock of {run.path} left by PID {lock.took_over.get('pid')} on "
                    f"{lock.took_over.get('host')}, which is gone",
                    style="yellow",
                )
            )
        return TrainingRun(cfg, launch).execute()
    finally:
        if lock is not None:
            lock.release()


def _settle_launch(cfg: RunConfig, config_path, resume, console, sinks, command, callbacks) -> RunStart:
    """The process's place in the job, its device and strategy, and the checks that need nothing loaded."""
    world = dist.World.from_env()  # launched as one of several processes (torchrun, accelerate launch, --nproc)?
    backend = world.start(cfg)
    if not world.is_main:
        console.quiet = True  # rank 0 speaks for the job (the others' tracebacks still reach stderr)
    device = world.device(cfg.model)  # cuda:LOCAL_RANK, never device_map="auto"
    # one resolution of the model for the process: the strategy's plan (full fine-tuning on several GPUs)
    # before the lock, and the run after it
    model = ResolvedOnce(cfg)
    situation = Situation(
        resume=resume, processes=world.size, local_processes=world.local_size, device=device, model=model
    )
    for note in raise_first(before_load(cfg, situation)):  # what validate lists, refused before anything loads
        console.print(Text(f"warning: {note.line()}", style="yellow"), soft_wrap=True)
    return RunStart(
        config_path=config_path,
        resume=resume,
        console=console,
        sinks=sinks,
        command=command,
        callbacks=callbacks,
        device=device,
        run_name=cfg.output.name or "run",
        situation=situation,
        world=world,
        strategy=dist.resolve_strategy(cfg, world.size, device, world.local_size, model),
        backend=backend,
    )


class TrainingRun:
    """One training job; each phase reads and sets state on this object (see the module docstring)."""

    def __init__(self, cfg: RunConfig, launch: RunStart):
        self.cfg, self.launch = cfg, launch
        self.console, self.world, self.device = launch.console, launch.world, launch.device
        self.t_start = time.perf_counter()
        self.checkpoint: Path | None = None  # the checkpoint this job continues from
        self.before = None  # the samples' exact match before training
        self.samples_cb = self.pref_cb = None
        self.rewards: list = []  # grpo: the declared rewards, built once (the trainer and the held-out score)

    def execute(self) -> Summary:
        self.prepare()
        self.open_run_dir()
        self.build_trainer()
        self.attach_callbacks()
        self.fit()
        summary = self.summarize()
        self.finish(summary)
        return summary

    # --- 1. prepare: everything that can fail on user input, before the run directory is touched

    def prepare(self) -> None:
        cfg = self.cfg
        if self.device == "cpu" and cfg.training.cpu_allocator == "auto":
            from tunelab.perf.allocator import keep_freed_memory

            keep_freed_memory()  # before the weights load: every large tensor of the run reuses freed pages
        self._start_tracking()
        self._build_rewards()
        self._find_checkpoint()
        self._load_tokenizer_and_data()
        self._load_model()

    def _start_tracking(self) -> None:
        from tunelab.artifacts import Home
        from tunelab.tracking import Tracking

        self.home = Home.of(self.cfg)  # where this config's artifact references resolve
        self.tracking = Tracking(  # W&B online without a key stops here
            self.cfg, self.launch.config_path, extra_sinks=self.launch.sinks, console=self.console, home=self.home
        )

    def _build_rewards(self) -> None:
        if self.cfg.training.method == "grpo":
            from tunelab.training.rewards import build_rewards

            self.rewards = build_rewards(self.cfg.grpo.rewards)

    def _find_checkpoint(self) -> None:
        # the same rules as before the lock, again, now that this process holds it
        self.run, self.checkpoint = start_point(self.cfg, self.launch.situation)

    def _load_tokenizer_and_data(self) -> None:
        from tunelab.artifacts.models import check_adapter_fits, continued_model

        cfg, world = self.cfg, self.world
        # a model artifact reference resolves (or fails in one line) before any weights load
        # (rank 0 first: an artifact is fetched, a tiny: model built, once into the cache the others read)
        init = world.main_first(lambda: continued_model(cfg.model.name, self.home))  # an artifact, run or adapter
        if init is not None:
            check_adapter_fits(init, cfg.adapter)
        self.init = init
        path = world.main_first(lambda: resolve_model_path(init.base if init is not None else cfg.model.name))
        # once for the run (the plans before the lock included): the loaders and the memory planner take it
        self.resolved = self.launch.situation.model.at(path)
        self.tokenizer = load_tokenizer(cfg.model, path, cfg.prompt.chat_template)
        data = world.main_first(lambda: prepare_data(cfg, self.tokenizer, self.console, self.home))  # rank 0 tokenizes
        self.console.print(
            f"[bold]data[/]: {data.stats['train_examples']} train / {data.stats['test_examples']} test examples, "
            f"{data.stats['train_tokens']:,} train tokens{' (cache hit)' if data.cache_hit else ''}"
        )
        notes = data_notes(data.stats, cfg)
        for line in notes:  # lost training signal is said before training starts (and reaches the trackers)
            self.console.print(Text(f"warning: {line}", style="yellow"), soft_wrap=True)
        data.stats["notes"] = notes
        check_lost_answers(data.stats, cfg)
        raise_first(grpo_rows(cfg, data.train_rows))  # a reward's reference in every row, before weights load
        self.data = data

    def _load_model(self) -> None:
        from transformers import set_seed

        from tunelab.artifacts.models import load_adapter_weights

        cfg, device = self.cfg, self.device
        set_seed(cfg.training.seed)  # the adapter's initialisation is part of the run's reproducibility
        model = load_model(
            cfg.model.model_copy(update={"dtype": run_weight_dtype(cfg, device), "device": device}),
            cfg.quantization,
            self.tokenizer,
            self.resolved.path,
        )
        self.kernels = resolve_kernels(cfg.training.kernels, device, model.config.model_type)
        apply_kernels(model, self.kernels)  # the base model's own modules, before the adapter wraps them
        checkpointing = cfg.training.gradient_checkpointing
        if checkpointing == "auto":
            from tunelab.perf.plan import decide_checkpointing

            checkpointing = decide_checkpointing(cfg, self.resolved, device)
        self.checkpointing = checkpointing
        model = apply_adapter(model, cfg.adapter, cfg.quantization.bits is not None, checkpointing)
        for warning in adapter_warnings(model, cfg.adapter):
            self.console.print(Text(f"warning: {warning}", style="yellow"))
        self.dense_samples = _dense_samples_fit(cfg, self.resolved, device, checkpointing, model)
        if self.init is not None and self.init.adapter is not None:
            load_adapter_weights(model, self.init.adapter)  # continue the artifact's adapter
        # after the adapter and kernels, before the trainer
        self.compiled = compile_for_run(model, cfg, device, checkpointing, self.launch.strategy)
        self.model = model

    # --- 2. open the run directory: the model and adapter loaded, rank 0 alone creates (or replaces) it

    def open_run_dir(self) -> None:
        self.run = self.world.on_main(self._create_run_dir) or self.run

    def _create_run_dir(self) -> RunDir:
        cfg, checkpoint = self.cfg, self.checkpoint
        run = prepare_run_dir(
            cfg.output.dir, self.launch.run_name, resume=checkpoint is not None, overwrite=cfg.output.overwrite
        )
        if checkpoint is not None:
            run.remove_partial_files()
            dropped = run.truncate_logs(checkpoint_step(checkpoint))
            if dropped:
                self.console.print(
                    f"[dim]resume: dropped the records after step {checkpoint_step(checkpoint)} from "
                    f"{', '.join(f'{k} ({v})' for k, v in dropped.items())}; those steps run again[/]"
                )
        try:
            save_config(cfg, run.config)
        except OSError as e:
            raise os_error(e, run.config) from None
        return run

    # --- 3. the trainer

    def build_trainer(self) -> None:
        from transformers.trainer_callback import PrinterCallback

        from tunelab.model.lm_head import use_direct_lm_head
        from tunelab.model.loading import keep_bnb_training_layout
        from tunelab.perf.flops import flops_per_token, mean_attended_context

        cfg, data, launch = self.cfg, self.data, self.launch
        self.params = parameter_report(self.model)
        self.flops = flops_per_token(self.model, mean_attended_context(row_lengths(data.train)))
        self._print_model_line()
        extra = dist.trainer_args(cfg, launch.strategy, launch.backend, self.model)
        args = sft_config(cfg, self.run, self.device, data.test is not None, self.checkpointing, extra)
        trainer = make_trainer_class(cfg.training.method)(
            model=self.model, processing_class=self.tokenizer, **self._method_inputs(args)
        )
        trainer.run, trainer.keep = self.run, cfg.training.save_total_limit
        # a silent fall-back to one process is a bug, said loudly
        dist.check_trainer_world(trainer, self.world, self.device, launch.strategy)
        trainer.remove_callback(PrinterCallback)  # our progress bar and metrics.jsonl replace its dict dumps
        keep_bnb_training_layout(trainer.model)  # again: TRL may have re-wrapped layers
        if cfg.training.loss_kernel == "auto" and cfg.training.method == "sft":  # preference losses need TRL's
            use_direct_lm_head(trainer.model)  # TRL's tiled LM head is slow without Triton (a no-op with it)
        packed = cfg.training.packing and cfg.training.method == "sft"
        data.stats["packing_efficiency"] = (
            packing_efficiency(trainer.train_dataset, cfg.training.max_length) if packed else None
        )
        print_plan(cfg, data, trainer, self.console)
        self.trainer = trainer

    def _method_inputs(self, args) -> dict:
        """The trainer arguments, data and (grpo) rewards of the run's training method."""
        cfg, data = self.cfg, self.data
        if cfg.training.method == "grpo":
            from tunelab.training.grpo_trainer import grpo_args
            from tunelab.training.rewards import prompt_dataset

            return {
                "args": grpo_args(cfg, args, self.device, [r.weight for r in self.rewards]),
                "train_dataset": prompt_dataset(data.train_rows, cfg, self.tokenizer),
                "rewards": self.rewards,
                "console": self.console,
                "rollouts_every": cfg.training.eval_steps,  # and the last step
            }
        if cfg.training.is_preference:
            args = preference_args(cfg, args)
        return {"args": args, "train_dataset": data.train, "eval_dataset": data.test}

    def _print_model_line(self) -> None:
        cfg, params, kernels = self.cfg, self.params, self.kernels
        bits = f", {cfg.quantization.bits}-bit" if cfg.quantization.bits else ""
        self.console.print(
            f"[bold]model[/]: {escape(cfg.model.name)} ({params['total']:,} params, {params['trainable']:,} trainable "
            f"= {params['trainable_pct']}%){bits}, device {self.device}"
            f"{', kernels: ' + kernels.why if kernels.name != 'none' else ''}"
            f"{', compile: ' + self.compiled.why if self.compiled.on else ''}",
            highlight=False,
        )

    # --- 4. callbacks

    def attach_callbacks(self) -> None:
        cfg, world = self.cfg, self.world
        if world.is_main:  # one tracker run, one metrics file, one progress bar, one samples table: rank 0's
            self.tracking.start(self.run, self.params, self.data.stats, self.device, resume=self.checkpoint is not None)
            self.trainer.add_callback(self.tracking.callback())
        self.sinks = [self.tracking]  # the trackers (and any sinks passed in), each guarded
        self.metrics_cb = MetricsCallback(self.run, self.sinks)
        self.progress_cb = ProgressCallback(
            self.metrics_cb, self.console, cfg.training.progress_every_s, dist.global_batch(cfg, world.size)
        )
        self.samples_cb = self._samples_callback()
        if cfg.training.is_preference and cfg.preference.eval_pairs and self.data.test_rows and world.is_main:
            pairs = _held_out_pairs(cfg, self.data.test_rows, self.tokenizer)
            self.pref_cb = PreferenceCallback(self.run, pairs, self.tokenizer, self.sinks, clock=self.metrics_cb)
        self.stopper = GracefulStop(self.console, agree=world.agree_signal)  # every rank stops after the same step
        mine = (self.metrics_cb, self.progress_cb, self.samples_cb, self.pref_cb) if world.is_main else ()
        for cb in (*mine, ResumedIntervals(), self.stopper, *self.launch.callbacks):
            if cb is not None:
                self.trainer.add_callback(cb)

    def _samples_callback(self) -> SamplesCallback | None:
        cfg, strategy = self.cfg, self.launch.strategy
        if dist.shards_weights(strategy) and cfg.samples.enabled:
            self.console.print(
                Text(
                    f"warning: samples: off under {strategy} (no rank holds the whole model to generate with); "
                    "score the final model with tunelab eval",
                    style="yellow",
                ),
                soft_wrap=True,
            )
            return None
        if not (cfg.samples.enabled and cfg.samples.num_prompts and self.data.test_rows and self.world.is_main):
            return None
        # rank 0 generates between steps while the others wait in the next step's all-reduce
        rows = sample_rows(self.data.test_rows)[: cfg.samples.num_prompts]
        common = dict(dense_weights=self.dense_samples, clock=self.metrics_cb)
        settings = cfg.samples.generation()
        if cfg.training.method == "grpo":  # the held-out reward, scored by the rewards themselves
            from tunelab.training.grpo_trainer import HeldOutReward

            every = cfg.training.eval_steps
            return HeldOutReward(
                self.run,
                rows,
                cfg.prompt,
                self.tokenizer,
                settings,
                self.sinks,
                rewards=self.rewards,
                cfg=cfg,
                every=every,
                console=self.console,
                **common,
            )
        scorers = config_scorers(cfg.eval.scorers) if cfg.eval.generation_metrics else None
        return SamplesCallback(
            self.run, rows, cfg.prompt, self.tokenizer, settings, self.sinks, scorers=scorers, **common
        )

    # --- 5. fit

    def fit(self) -> None:
        """Train; an interrupted run raises `Interrupted` with the resume command, a failed one closes
        the trackers as failed with the reason."""
        trainer, stopper = self.trainer, self.stopper
        status, reason = "failed", None
        t_train = time.perf_counter()
        try:  # from here on the trackers are open: any failure closes them as failed, with the reason
            with stopper.installed():
                self._train_and_evaluate()
            if stopper.signal is not None:
                status = "interrupted"
                reason = f"stopped by {stopper.name} at step {trainer.state.global_step}"
            else:
                status = "completed"
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once, without a checkpoint
            status, reason = "interrupted", f"stopped by a second Ctrl-C at step {trainer.state.global_step}"
        except TunelabError as e:
            reason = e.message
            raise
        except Exception as e:
            err = as_user_error(e, self.run.path / "checkpoints")  # what fit writes, named when the library does not
            if err is None:
                reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"
                raise
            reason = err.message
            raise err from None
        finally:
            self.progress_cb.stop()
            self.train_s = time.perf_counter() - t_train
            if status != "completed" and self.world.is_main:
                _close_failed(self.run, self.tracking, status, reason, trainer.state.global_step)
        if status == "interrupted":
            self._raise_interrupted(reason)

    def _train_and_evaluate(self) -> None:
        trainer, samples_cb, checkpoint = self.trainer, self.samples_cb, self.checkpoint
        if samples_cb is not None and self.cfg.samples.at_start and checkpoint is None:
            table = samples_cb.generate(trainer.model, 0)
            self.before = exact_match_rate([r["generation"] for r in table], samples_cb.references)
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        if (
            self.stopper.signal is None
            and trainer.eval_dataset is not None  # grpo: the held-out reward instead (HeldOutReward)
            and not evaluated_at(trainer, trainer.state.global_step)
        ):
            trainer.evaluate()

    def _raise_interrupted(self, reason: str | None) -> None:
        step = self.trainer.state.global_step
        saved = self.run.latest_checkpoint()
        at = f"; checkpoint {saved.name} saved" if saved is not None and checkpoint_step(saved) == step else ""
        raise Interrupted(
            f"{reason}{at}",
            hint=f"continue with: {resume_command(self.launch.command, self.launch.config_path)}",
            exit_code=143 if self.stopper.signal == signal.SIGTERM else 130,
        )

    # --- 6. summarize

    def summarize(self) -> Summary:
        cfg, trainer, world = self.cfg, self.trainer, self.world
        history = trainer.state.log_history
        train_losses = [h["loss"] for h in history if "loss" in h]
        eval_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
        # a callback that stopped training on purpose (the sweep's pruner) names the status the run ends in
        stopped_by = next((cb for cb in self.launch.callbacks if getattr(cb, "stop_status", None)), None)
        strategy = self.launch.strategy
        return Summary(
            status=stopped_by.stop_status if stopped_by is not None else "completed",
            reason=getattr(stopped_by, "stop_reason", None),
            run_dir=str(self.run.path),
            base_model=cfg.model.name,
            adapter=cfg.adapter.type,
            quantization=cfg.quantization.bits,
            device=self.device,
            host=platform.node(),
            steps=trainer.state.global_step,
            gradient_checkpointing=self.checkpointing,
            kernels=self.kernels.name,
            **self.compiled.figures(),
            resumed_from=str(self.checkpoint) if self.checkpoint else None,
            **self._speed_figures(),
            world_size=world.size,
            strategy=None if strategy == "none" else strategy,
            global_batch=dist.global_batch(cfg, world.size),
            final_train_loss=train_losses[-1] if train_losses else None,
            final_eval_loss=eval_losses[-1] if eval_losses else None,
            samples_exact_match_before=self.before,
            samples_exact_match_after=self._exact_match_after(),
            **(self.pref_cb.summary() if self.pref_cb is not None else {}),
            **self._grpo_figures(),
            parameters=self.params,
            data=DataStats.model_validate(self.data.stats),
            config=config_to_dict(cfg),
        )

    def _grpo_figures(self) -> dict:
        """grpo: the held-out reward before / after and the completions each reward left unscored."""
        failures = getattr(self.trainer, "reward_failures", None)
        if failures is None:
            return {}
        from tunelab.training.grpo_trainer import HeldOutReward

        if isinstance(self.samples_cb, HeldOutReward):
            return self.samples_cb.summary(failures)
        return {"reward_failures": dict(failures)}

    def _speed_figures(self) -> dict:
        """Times, tokens, speed, MFU and memory: where each rank ran and what it did, speeds over rank 0's
        clock (the others waited out its samples)."""
        cfg, trainer, world, device = self.cfg, self.trainer, self.world, self.device
        history = trainer.state.log_history
        tokens = int(trainer.state.num_input_tokens_seen or 0)
        session_tokens = tokens - self.metrics_cb.tokens_at_start  # a resumed run's speed counts this session's
        sample_s = self.samples_cb.seconds if self.samples_cb else 0.0
        since = checkpoint_step(self.checkpoint)
        eval_s = sum(h.get("eval_runtime", 0.0) for h in history if h.get("step", 0) > since)
        pure_train_s = max(self.train_s - sample_s - eval_s, 1e-9)
        prec = run_precision(cfg, device)
        per_rank = world.gather(
            dist.rank_record(
                world,
                device,
                str(trainer.args.device),
                str(next(self.model.parameters()).device),
                trainer.rank_tokens,
                dist.peak_flops(device, prec if prec != "fp32" else run_weight_dtype(cfg, device)),
                peak_memory_mb(device),
            )
        )
        job = dist.job_figures(per_rank, pure_train_s, self.flops.per_token)
        return {
            "wall_time_s": round(time.perf_counter() - self.t_start, 2),
            "train_time_s": round(self.train_s, 2),
            "eval_time_s": round(eval_s, 2),
            "sample_time_s": round(sample_s, 2),
            "train_tokens": tokens,
            "session_tokens": session_tokens,
            "tokens_per_s": round(session_tokens / pure_train_s, 1),
            "model_flops_per_token": self.flops.per_token,
            "achieved_tflops": round(self.flops.per_token * session_tokens / pure_train_s / 1e12, 5),
            "mfu": job["mfu"],
            "peak_tflops": job["peak_tflops"],
            "peak_rss_mb": job["peak_rss_mb"],
            "peak_gpu_mb": job.get("peak_gpu_mb"),
            "per_rank": per_rank if world.distributed else None,
        }

    def _exact_match_after(self) -> float | None:
        cb = self.samples_cb
        if cb is None or not cb.history:
            return None
        return exact_match_rate(cb.history[max(cb.history)], cb.references)

    # --- 7. finish

    def finish(self, summary: Summary) -> None:
        """ "completed" is written last, once the final model, the trackers' records and lineage.json are
        all in place: a run whose summary says completed is complete."""
        world = self.world
        try:
            save_final_model(self.trainer, self.tokenizer, self.run, self.cfg, self.resolved.path, world)
            if world.is_main:
                for sink in self.sinks:
                    sink.finish(summary)
                self.run.write_summary(summary)
        except Exception as e:
            err = e if isinstance(e, TunelabError) else as_user_error(e, self.run.path / "final")
            if world.is_main:
                why = err.message if err else f"{type(e).__name__}: {e}"
                _close_failed(self.run, self.tracking, "failed", why, self.trainer.state.global_step)
            if err is None:
                raise
            raise err from None


def _held_out_pairs(cfg: RunConfig, rows: list[dict], tokenizer) -> list:
    """Up to preference.eval_pairs test pairs, tokenized as DPO training tokenizes them."""
    from tunelab.data.prepare import TokenSpec
    from tunelab.data.sources import RawRows
    from tunelab.evaluation.pair_accuracy import tokenized_pairs

    return tokenized_pairs(RawRows(rows=rows[: cfg.preference.eval_pairs]), TokenSpec.of(cfg), tokenizer)


def print_plan(cfg: RunConfig, data, trainer, console) -> None:
    """What the run will do, before it does it: rows, tokens, optimizer steps, the effective batch."""
    import math

    t = cfg.training
    per_step = t.batch_size * t.grad_accum * max(1, trainer.args.world_size)
    sequences = len(trainer.train_dataset) * (cfg.grpo.num_generations if t.method == "grpo" else 1)
    world_size = max(1, trainer.args.world_size)
    per_epoch = max(1, math.ceil(math.ceil(sequences / (t.batch_size * world_size)) / t.grad_accum))
    steps = t.max_steps if t.max_steps > 0 else math.ceil(t.epochs * per_epoch)
    packed = f" packed into {sequences} rows of {t.max_length}" if t.packing and t.method == "sft" else ""
    world = f" x {trainer.args.world_size} processes" if trainer.args.world_size > 1 else ""
    console.print(
        f"[bold]plan[/]: {data.stats['train_examples']} examples ({data.stats['train_tokens']:,} tokens){packed} -> "
        f"{steps} optimizer steps at batch {t.batch_size} x grad_accum {t.grad_accum}{world} = {per_step} "
        f"sequences per step",
        highlight=False,
        soft_wrap=True,
    )
    if steps < 10:
        console.print(
            Text(
                f"warning: only {steps} optimizer steps: the learning-rate warmup and schedule have little room, "
                "and the loss curve says little; add data or epochs, or lower the batch (batch_size x grad_accum)",
                style="yellow",
            ),
            soft_wrap=True,
        )


def _close_failed(run: RunDir, tracking, status: str, reason: str | None, step: int) -> None:
    """Best effort on the way out of a failed or interrupted run: no temporary files, a summary that
    says what happened, trackers closed. A full disk may refuse even this; the error still reaches the user."""
    run.remove_partial_files()
    try:
        run.write_summary(Summary(status=status, steps=step, reason=reason))
    except TunelabError:
        pass
    tracking.abort(status, step, reason)


def _dense_samples_fit(cfg: RunConfig, resolved: ResolvedModel, device: str, checkpointing: bool, model) -> bool:
    """Whether sample generation may use dense, LoRA-merged weights (`generation_weights`).

    Samples are generated between optimizer steps, when the micro-batch's activations and logits
    are freed: the dense copies may use that room, but no more, so they cannot raise the run's peak.
    """
    if not cfg.samples.enabled or not cfg.samples.dense_weights:
        return False
    from tunelab.model.dense import generation_weight_bytes
    from tunelab.perf.plan import estimate

    try:
        plan = estimate(cfg, resolved, device, checkpointing=checkpointing)
    except Exception:  # noqa: BLE001 - a config the planner cannot read fails in many ways (a missing field...)
        # The planner reads the model's config as a Llama-like one; an architecture it cannot read raises
        # AttributeError, TypeError, ZeroDivisionError or whatever the meta model's build raises. Dense
        # weights only speed samples up, so without a plan they are not used, and the run goes on.
        return False
    return generation_weight_bytes(model) <= plan.parts["activations"] + plan.parts["logits_and_loss"]
