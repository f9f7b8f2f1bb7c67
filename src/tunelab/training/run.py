"""`tunelab train`: the whole run, top to bottom.

setup (run dir, tokenizer, data, model, adapter) -> trainer -> train (resumable) -> final save
-> summary. TRL's SFTTrainer does the training; this module wires the config into it and adds the
run directory, checkpoint naming, samples, and the summary.
"""

from __future__ import annotations

import platform
import resource
import shutil
import signal
import time
from pathlib import Path

from rich.markup import escape
from rich.text import Text

from tunelab.config import RunConfig, save_config
from tunelab.config.load import config_to_dict
from tunelab.data.prepare import check_lost_answers, data_notes, prepare_data
from tunelab.errors import Interrupted, TunelabError, as_user_error, os_error
from tunelab.evaluation.metrics import exact_match_rate
from tunelab.model.adapters import adapter_warnings, apply_adapter, parameter_report
from tunelab.model.kernels import apply_kernels, resolve_kernels
from tunelab.model.loading import (
    load_model,
    load_tokenizer,
    precision_flags,
    resolve_model_path,
    run_precision,
    run_weight_dtype,
)
from tunelab.perf.machine import cpu_bf16_note
from tunelab.runs import (
    DataStats,
    ModelMeta,
    RunDir,
    RunLock,
    Summary,
    prepare_run_dir,
    rotate_checkpoints,
    step_dir_name,
)
from tunelab.training import distributed as dist
from tunelab.training.callbacks import (
    GracefulStop,
    MetricsCallback,
    ProgressCallback,
    ResumedIntervals,
    SamplesCallback,
)
from tunelab.training.checks import check_outputs_writable as _check_outputs_writable
from tunelab.training.checks import check_run_dir_for as _check_run_dir
from tunelab.training.checks import explicit_checkpoint as _explicit_checkpoint
from tunelab.training.checks import resume_point as _resume_point
from tunelab.training.preference import (
    PreferenceCallback,
    preference_args,
    preference_trainer,
    sample_rows,
    sequence_lengths,
)


def sft_config(
    cfg: RunConfig, run: RunDir, device: str, has_test: bool, checkpointing: bool, extra: dict | None = None
):
    from trl import SFTConfig

    t = cfg.training
    evaluate = has_test and t.eval_steps is not None
    return SFTConfig(
        output_dir=str(run.checkpoints),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size or t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # transformers 5: a value below 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optimizer,
        use_cpu=not device.startswith("cuda"),
        **precision_flags(cfg, device),
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=t.eval_steps if evaluate else None,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps,
        save_total_limit=None,  # we rotate our own step-* folders
        seed=t.seed,
        data_seed=t.seed,
        report_to="none",
        disable_tqdm=True,
        packing=bool(t.packing),
        # bfd: whole examples, each attending to itself; bfd_split: long ones cut into pieces first
        # (data.too_long: split); wrapped: the example stream cut into blocks (training.packing: blocks)
        packing_strategy="wrapped" if t.packing == "blocks" else "bfd_split" if cfg.data.too_long == "split" else "bfd",
        max_length=t.max_length,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=t.dataloader_workers,
        **(extra or {}),  # several processes: the strategy's own arguments (training.distributed.trainer_args)
    )


def make_trainer_class(method: str = "sft"):
    from trl import SFTTrainer

    base = SFTTrainer if method == "sft" else preference_trainer(method)  # TRL's DPOTrainer / KTOTrainer

    class TunelabTrainer(dist.RankTokens, base):
        """SFTTrainer whose checkpoints land in checkpoints/step-NNNNNN/ once fully written."""

        run: RunDir
        keep: int | None = None

        def _save_checkpoint(self, model, trial):  # a private Trainer method: pinned in tunelab.compat.SAVE_CHECKPOINT
            super()._save_checkpoint(model, trial)
            self.accelerator.wait_for_everyone()  # several processes: every rank's RNG state is in checkpoint-N
            if self.args.should_save:  # rank 0
                step = self.state.global_step
                src = Path(self.args.output_dir) / f"checkpoint-{step}"
                dst = self.run.checkpoints / step_dir_name(step)
                if dst.exists():
                    shutil.rmtree(dst)
                # The rename is the commit point: a crash mid-save leaves checkpoint-N, which resume ignores.
                src.rename(dst)
                rotate_checkpoints(self.run, self.keep)
            self.accelerator.wait_for_everyone()  # step-N is complete before any rank goes on (or dies)

    return TunelabTrainer


def peak_memory_mb(device: str) -> dict[str, float]:
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"peak_rss_mb": round(rss, 1)}
    if device.startswith("cuda"):
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def row_lengths(dataset) -> list[int]:
    """Token count of every row, read from the Arrow column (no token lists built in Python)."""
    import pyarrow.compute as pc

    if "input_ids" not in dataset.column_names:
        return sequence_lengths(dataset)  # preference pairs: prompt + each answer
    return pc.list_value_length(dataset.data.column("input_ids")).to_pylist()


def packing_efficiency(dataset, max_length: int) -> float | None:
    if dataset is None or len(dataset) == 0:
        return None
    lengths = row_lengths(dataset)
    return round(sum(lengths) / (len(lengths) * max_length), 4)


# Settings that `--resume` may change: they do not alter what the optimizer steps compute. Any
# other difference from the run's saved config would silently give a run that is neither.
RESUME_MAY_CHANGE = (
    "training.save_steps",
    "training.eval_steps",
    "training.logging_steps",
    "training.save_total_limit",
    "training.dataloader_workers",
    "training.progress_every_s",
    "training.cpu_allocator",
    "data.max_lost_answers",
    "training.resume",
    "model.device",
    "output.",
    "samples.",
    "eval.",
    "tracking.",
    "distributed.backend",
    "distributed.timeout_s",
)


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
    resume = resume or cfg.training.resume not in (False, None)
    world = dist.World.from_env()  # launched as one of several processes (torchrun, accelerate launch, --nproc)?
    backend = world.start(cfg)
    if not world.is_main:
        console.quiet = True  # rank 0 speaks for the job (the others' tracebacks still reach stderr)
    device = world.device(cfg.model)  # cuda:LOCAL_RANK, never device_map="auto"
    precision_flags(cfg, device)  # fail before anything is written
    resolve_kernels(cfg.training.kernels, device, None)  # training.kernels: liger where it cannot run
    slow = cpu_bf16_note(device, run_precision(cfg, device))
    if slow:
        console.print(Text(f"warning: training.precision: {slow}", style="yellow"), soft_wrap=True)
    strategy = dist.resolve_strategy(cfg, world.size, device, world.local_size)
    dist.check_strategy(cfg, strategy, device == "cpu")
    explicit = _explicit_checkpoint(cfg)  # a training.resume path that is no checkpoint is named first
    run_name = cfg.output.name or "run"
    _check_outputs_writable(cfg)
    run = _check_run_dir(cfg, run_name, resume, explicit)
    # one job per run directory: rank 0 holds the lock for the whole run, the others learn whether it could
    lock = world.on_main(lambda: RunLock(run.path).acquire())
    try:
        if lock is not None and lock.took_over:
            console.print(
                Text(
                    f"note: took over the lock of {run.path} left by PID {lock.took_over.get('pid')} on "
                    f"{lock.took_over.get('host')}, which is gone",
                    style="yellow",
                )
            )
        return _train(
            cfg,
            config_path,
            resume,
            console,
            sinks,
            command,
            callbacks,
            device,
            run_name,
            explicit,
            world,
            strategy,
            backend,
        )
    finally:
        if lock is not None:
            lock.release()


def _train(
    cfg,
    config_path,
    resume,
    console,
    sinks,
    command,
    callbacks,
    device,
    run_name,
    explicit,
    world: dist.World | None = None,
    strategy="none",
    backend=None,
) -> Summary:
    world = world or dist.World()
    t_start = time.perf_counter()
    if device == "cpu" and cfg.training.cpu_allocator == "auto":
        from tunelab.perf.allocator import keep_freed_memory

        keep_freed_memory()  # before the weights load: every large tensor of the run reuses freed pages
    sinks = list(sinks or [])
    from tunelab.artifacts import Home
    from tunelab.artifacts.models import check_adapter_fits, continued_model, load_adapter_weights
    from tunelab.tracking import Tracking

    home = Home.of(cfg)  # where this config's artifact references resolve
    tracking = Tracking(
        cfg, config_path, extra_sinks=sinks, console=console, home=home
    )  # W&B online without a key stops here

    # --- setup: everything that can fail on user input happens before the run dir is touched
    run = _check_run_dir(cfg, run_name, resume, explicit)  # again, now that this process holds the lock
    if resume and explicit is None and run.is_complete():
        raise TunelabError(f"{run.path} already finished (final/ exists); nothing to resume")
    checkpoint = (explicit or _resume_point(run)) if resume else None
    if checkpoint is not None:
        _check_resume_settings(cfg, run, checkpoint)
        check_checkpoint_files(checkpoint)
        dist.check_resume_world(checkpoint, world.size)
    # a model artifact reference resolves (or fails in one line) before any weights load
    # (rank 0 first: an artifact is fetched, a tiny: model built, once into the cache the others read)
    init = world.main_first(
        lambda: continued_model(cfg.model.name, home)
    )  # a model artifact, or a run / adapter folder (SFT, then DPO)
    if init is not None:
        check_adapter_fits(init, cfg.adapter)
    model_path = world.main_first(lambda: resolve_model_path(init.base if init is not None else cfg.model.name))
    tokenizer = load_tokenizer(cfg.model, model_path)
    data = world.main_first(
        lambda: prepare_data(cfg, tokenizer, console, home)
    )  # rank 0 tokenizes, the others read its cache
    console.print(
        f"[bold]data[/]: {data.stats['train_examples']} train / {data.stats['test_examples']} test examples, "
        f"{data.stats['train_tokens']:,} train tokens{' (cache hit)' if data.cache_hit else ''}"
    )
    notes = data_notes(data.stats, cfg)
    for line in notes:  # lost training signal is said before training starts (and reaches the trackers)
        console.print(Text(f"warning: {line}", style="yellow"), soft_wrap=True)
    data.stats["notes"] = notes
    check_lost_answers(data.stats, cfg)

    from transformers import set_seed

    set_seed(cfg.training.seed)  # the adapter's initialisation is part of the run's reproducibility
    model = load_model(
        cfg.model.model_copy(update={"dtype": run_weight_dtype(cfg, device), "device": device}),
        cfg.quantization,
        tokenizer,
        model_path,
    )
    kernels = resolve_kernels(cfg.training.kernels, device, model.config.model_type)
    apply_kernels(model, kernels)  # the base model's own modules, before the adapter wraps them
    checkpointing = cfg.training.gradient_checkpointing
    if checkpointing == "auto":
        from tunelab.perf.plan import decide_checkpointing

        checkpointing = decide_checkpointing(cfg, device)
    model = apply_adapter(model, cfg.adapter, cfg.quantization.bits is not None, checkpointing)
    for warning in adapter_warnings(model, cfg.adapter):
        console.print(Text(f"warning: {warning}", style="yellow"))
    dense_samples = _dense_samples_fit(cfg, device, checkpointing, model)
    if init is not None and init.adapter is not None:
        load_adapter_weights(model, init.adapter)  # continue the artifact's adapter

    # the model and adapter loaded: only now is the run directory created (or replaced), by rank 0 alone
    def open_run_dir() -> RunDir:
        run = prepare_run_dir(cfg.output.dir, run_name, resume=checkpoint is not None, overwrite=cfg.output.overwrite)
        if checkpoint is not None:
            run.remove_partial_files()
            dropped = run.truncate_logs(_checkpoint_step(checkpoint))
            if dropped:
                console.print(
                    f"[dim]resume: dropped the records after step {_checkpoint_step(checkpoint)} from "
                    f"{', '.join(f'{k} ({v})' for k, v in dropped.items())}; those steps run again[/]"
                )
        try:
            save_config(cfg, run.config)
        except OSError as e:
            raise os_error(e, run.config) from None
        return run

    run = world.on_main(open_run_dir) or run
    params = parameter_report(model)
    from tunelab.perf.flops import flops_per_token, mean_attended_context

    flops = flops_per_token(model, mean_attended_context(row_lengths(data.train)))
    console.print(
        f"[bold]model[/]: {escape(cfg.model.name)} ({params['total']:,} params, {params['trainable']:,} trainable = "
        f"{params['trainable_pct']}%){', ' + str(cfg.quantization.bits) + '-bit' if cfg.quantization.bits else ''}, "
        f"device {device}{', kernels: ' + kernels.why if kernels.name != 'none' else ''}",
        highlight=False,
    )

    trainer_cls = make_trainer_class(cfg.training.method)
    args = sft_config(
        cfg, run, device, data.test is not None, checkpointing, dist.trainer_args(cfg, strategy, backend, model)
    )
    trainer = trainer_cls(
        model=model,
        args=args if cfg.training.method == "sft" else preference_args(cfg, args),
        train_dataset=data.train,
        eval_dataset=data.test,
        processing_class=tokenizer,
    )
    trainer.run, trainer.keep = run, cfg.training.save_total_limit
    dist.check_trainer_world(
        trainer, world, device, strategy
    )  # a silent fall-back to one process is a bug, said loudly
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our progress bar and metrics.jsonl replace its dict dumps
    from tunelab.model.lm_head import use_direct_lm_head
    from tunelab.model.loading import keep_bnb_training_layout

    keep_bnb_training_layout(trainer.model)  # again: TRL may have re-wrapped layers
    if cfg.training.loss_kernel == "auto" and cfg.training.method == "sft":  # the preference losses need TRL's outputs
        use_direct_lm_head(trainer.model)  # TRL's tiled LM head is slow without Triton (a no-op with it)
    packed = cfg.training.packing and cfg.training.method == "sft"
    data.stats["packing_efficiency"] = (
        packing_efficiency(trainer.train_dataset, cfg.training.max_length) if packed else None
    )
    _print_plan(cfg, data, trainer, console)

    if world.is_main:  # one tracker run, one metrics file, one progress bar, one samples table: rank 0's
        tracking.start(run, params, data.stats, device, resume=checkpoint is not None)
        trainer.add_callback(tracking.callback())
    sinks = [tracking]  # the trackers (and any sinks passed in), each guarded
    metrics_cb = MetricsCallback(run, sinks)
    progress_cb = ProgressCallback(
        metrics_cb, console, cfg.training.progress_every_s, dist.global_batch(cfg, world.size)
    )
    settings = cfg.samples.generation()
    samples_cb = None
    if dist.shards_weights(strategy) and cfg.samples.enabled:
        console.print(
            Text(
                f"warning: samples: off under {strategy} (no rank holds the whole model to generate with); "
                "score the final model with tunelab eval",
                style="yellow",
            ),
            soft_wrap=True,
        )
    elif cfg.samples.enabled and cfg.samples.num_prompts and data.test_rows and world.is_main:
        # rank 0 generates between steps while the others wait in the next step's all-reduce
        samples_cb = SamplesCallback(
            run,
            sample_rows(data.test_rows)[: cfg.samples.num_prompts],
            cfg.prompt,
            tokenizer,
            settings,
            sinks,
            generation_metrics=cfg.eval.generation_metrics,
            dense_weights=dense_samples,
            clock=metrics_cb,
        )
    pref_cb = None
    if cfg.training.method != "sft" and cfg.preference.eval_pairs and data.test_rows and world.is_main:
        pref_cb = PreferenceCallback(
            run, _held_out_pairs(cfg, data.test_rows, tokenizer), tokenizer, sinks, clock=metrics_cb
        )
    stopper = GracefulStop(console, agree=world.agree_signal)  # every rank stops after the same step
    for cb in (
        *((metrics_cb, progress_cb, samples_cb, pref_cb) if world.is_main else ()),
        ResumedIntervals(),
        stopper,
        *(callbacks or []),
    ):
        if cb is not None:
            trainer.add_callback(cb)

    before = None
    status, reason = "failed", None
    t_train = time.perf_counter()
    resume_hint = f"continue with: {_resume_command(command, config_path)}"
    try:  # from here on the trackers are open: any failure closes them as failed, with the reason
        with stopper.installed():
            if samples_cb is not None and cfg.samples.at_start and checkpoint is None:
                table = samples_cb.generate(trainer.model, 0)
                before = exact_match_rate([r["generation"] for r in table], samples_cb.references)
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
            if (
                stopper.signal is None
                and data.test is not None
                and not _evaluated_at(trainer, trainer.state.global_step)
            ):
                trainer.evaluate()
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
        err = as_user_error(e)
        if err is None:
            reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"
            raise
        reason = err.message
        raise err from None
    finally:
        progress_cb.stop()
        train_s = time.perf_counter() - t_train
        if status != "completed" and world.is_main:
            _close_failed(run, tracking, status, reason, trainer.state.global_step)
    if status == "interrupted":
        saved = run.latest_checkpoint()
        at = (
            f"; checkpoint {saved.name} saved"
            if saved is not None and _checkpoint_step(saved) == trainer.state.global_step
            else ""
        )
        raise Interrupted(f"{reason}{at}", hint=resume_hint, exit_code=143 if stopper.signal == signal.SIGTERM else 130)

    history = trainer.state.log_history
    train_losses = [h["loss"] for h in history if "loss" in h]
    eval_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    session_tokens = tokens - metrics_cb.tokens_at_start  # a resumed run's speed counts this session's tokens only
    sample_s = samples_cb.seconds if samples_cb else 0.0
    eval_s = sum(h.get("eval_runtime", 0.0) for h in history if h.get("step", 0) > _checkpoint_step(checkpoint))
    pure_train_s = max(train_s - sample_s - eval_s, 1e-9)
    # where each rank ran and what it did; speeds over rank 0's clock (the others waited out its samples)
    prec = run_precision(cfg, device)
    per_rank = world.gather(
        dist.rank_record(
            world,
            device,
            str(trainer.args.device),
            str(next(model.parameters()).device),
            trainer.rank_tokens,
            dist.peak_flops(device, prec if prec != "fp32" else run_weight_dtype(cfg, device)),
            peak_memory_mb(device),
        )
    )
    job = dist.job_figures(per_rank, pure_train_s, flops.per_token)
    after = None
    if samples_cb is not None and samples_cb.history:
        last = samples_cb.history[max(samples_cb.history)]
        after = exact_match_rate(last, samples_cb.references)
    # a callback that stopped training on purpose (the sweep's pruner) names the status the run ends in
    stopped_by = next((cb for cb in callbacks or [] if getattr(cb, "stop_status", None)), None)
    summary = Summary(
        status=stopped_by.stop_status if stopped_by is not None else "completed",
        reason=getattr(stopped_by, "stop_reason", None),
        run_dir=str(run.path),
        base_model=cfg.model.name,
        adapter=cfg.adapter.type,
        quantization=cfg.quantization.bits,
        device=device,
        host=platform.node(),
        steps=trainer.state.global_step,
        gradient_checkpointing=checkpointing,
        kernels=kernels.name,
        resumed_from=str(checkpoint) if checkpoint else None,
        wall_time_s=round(time.perf_counter() - t_start, 2),
        train_time_s=round(train_s, 2),
        eval_time_s=round(eval_s, 2),
        sample_time_s=round(sample_s, 2),
        train_tokens=tokens,
        session_tokens=session_tokens,
        tokens_per_s=round(session_tokens / pure_train_s, 1),
        model_flops_per_token=flops.per_token,
        achieved_tflops=round(flops.per_token * session_tokens / pure_train_s / 1e12, 5),
        mfu=job["mfu"],
        peak_tflops=job["peak_tflops"],
        peak_rss_mb=job["peak_rss_mb"],
        peak_gpu_mb=job.get("peak_gpu_mb"),
        world_size=world.size,
        strategy=None if strategy == "none" else strategy,
        global_batch=dist.global_batch(cfg, world.size),
        per_rank=per_rank if world.distributed else None,
        final_train_loss=train_losses[-1] if train_losses else None,
        final_eval_loss=eval_losses[-1] if eval_losses else None,
        samples_exact_match_before=before,
        samples_exact_match_after=after,
        **(pref_cb.summary() if pref_cb is not None else {}),
        parameters=params,
        data=DataStats.model_validate(data.stats),
        config=config_to_dict(cfg),
    )
    # "completed" is written last, once the final model, the trackers' records and lineage.json are
    # all in place: a run whose summary says completed is complete.
    try:
        _save_final(trainer, tokenizer, run, cfg, model_path, world)
        if world.is_main:
            for sink in sinks:
                sink.finish(summary)
            run.write_summary(summary)
    except Exception as e:
        err = e if isinstance(e, TunelabError) else as_user_error(e)
        if world.is_main:
            _close_failed(
                run, tracking, "failed", err.message if err else f"{type(e).__name__}: {e}", trainer.state.global_step
            )
        if err is None:
            raise
        raise err from None
    return summary


def _held_out_pairs(cfg: RunConfig, rows: list[dict], tokenizer) -> list:
    """Up to preference.eval_pairs test pairs, tokenized as DPO training tokenizes them."""
    from tunelab.data.prepare import TokenSpec
    from tunelab.data.sources import RawRows
    from tunelab.evaluation.preference import tokenized_pairs

    return tokenized_pairs(RawRows(rows=rows[: cfg.preference.eval_pairs]), TokenSpec.of(cfg), tokenizer)


def _print_plan(cfg: RunConfig, data, trainer, console) -> None:
    """What the run will do, before it does it: rows, tokens, optimizer steps, the effective batch."""
    import math

    t = cfg.training
    per_step = t.batch_size * t.grad_accum * max(1, trainer.args.world_size)
    sequences = len(trainer.train_dataset)
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


def _resume_command(command: str | None, config_path) -> str:
    if command:
        return command if "--resume" in command.split() else f"{command} --resume"
    return f"tunelab train {config_path or 'CONFIG'} --resume"


def _checkpoint_step(checkpoint: Path | None) -> int:
    if checkpoint is None:
        return 0
    import json

    try:
        return int(json.loads((checkpoint / "trainer_state.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError):
        return int(checkpoint.name.removeprefix("step-")) if checkpoint.name.removeprefix("step-").isdigit() else 0


def _check_resume_settings(cfg: RunConfig, run: RunDir, checkpoint: Path) -> None:
    """Refuse a resume whose config changes what the remaining steps compute (listing each setting)."""
    from tunelab.config.load import read_yaml

    saved_file = run.config if run.config.is_file() else checkpoint.parent.parent / "config.yaml"
    if not saved_file.is_file():
        return
    from tunelab.runs.files import flatten

    saved = flatten(read_yaml(saved_file))
    now = flatten(config_to_dict(cfg))
    # a setting the saved config predates (the schema grew since) counts as unchanged at its default
    defaults = flatten(
        config_to_dict(RunConfig.model_validate({"model": {"name": "tiny:x"}, "data": {"train": {"path": "x"}}}))
    )
    changed = [
        k
        for k in sorted(set(saved) | set(now))
        if saved.get(k) != now.get(k)
        and not k.startswith(RESUME_MAY_CHANGE)
        and not (k not in saved and k in defaults and now.get(k) == defaults[k])
    ]
    if changed:
        shown = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:6])
        raise TunelabError(
            f"--resume cannot change {', '.join(changed)} ({shown})",
            hint="resume with the run's own settings (runs/<name>/config.yaml), or start a new run; "
            f"resume may change: {', '.join(k.rstrip('.') for k in RESUME_MAY_CHANGE)}",
        )


def check_checkpoint_files(checkpoint: Path) -> None:
    """The checkpoint's optimizer, scheduler and RNG files load as weights-only data (never a pickle of
    code): refuse in one line naming the file, before anything else is loaded."""
    import pickle

    import torch

    from tunelab.compat import checkpoint_safe_globals

    names = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt")
    for f in [checkpoint / n for n in names] + sorted(checkpoint.glob("rng_state_*.pth")):  # one RNG file per rank
        if not f.is_file():
            continue
        try:
            with checkpoint_safe_globals():  # exactly what the trainer will allow when it loads them
                torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise TunelabError(
                f"{f}: not loadable as weights-only data ({first})",
                hint="tunelab never unpickles code; delete that checkpoint to resume from an older one, "
                "or start the run again",
            ) from None
    if not any(checkpoint.glob("*.safetensors")):
        raise TunelabError(
            f"{checkpoint}: holds no *.safetensors weights", hint="tunelab resumes from safetensors checkpoints only"
        )


def _dense_samples_fit(cfg: RunConfig, device: str, checkpointing: bool, model) -> bool:
    """Whether sample generation may use dense, LoRA-merged weights (`generation_weights`).

    Samples are generated between optimizer steps, when the micro-batch's activations and logits
    are freed: the dense copies may use that room, but no more, so they cannot raise the run's peak.
    """
    if not cfg.samples.enabled or not cfg.samples.dense_weights:
        return False
    from tunelab.model.dense import generation_weight_bytes
    from tunelab.perf.plan import estimate

    try:
        plan = estimate(cfg, device, checkpointing=checkpointing)
    except TunelabError:
        return False
    return generation_weight_bytes(model) <= plan.parts["activations"] + plan.parts["logits_and_loss"]


def _evaluated_at(trainer, step: int) -> bool:
    return any("eval_loss" in h and h.get("step") == step for h in trainer.state.log_history)


def _save_final(
    trainer, tokenizer, run: RunDir, cfg: RunConfig, model_path: str, world: dist.World | None = None
) -> None:
    """final/ appears only complete: written to final.tmp, then renamed (by rank 0; every rank takes
    part in saving, which a sharded model needs)."""
    world = world or dist.World()
    tmp = run.path / "final.tmp"
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    world.barrier()
    trainer.save_model(str(tmp))
    world.barrier()
    if not world.is_main:
        return
    tokenizer.save_pretrained(str(tmp))
    (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; the run's config.yaml says it all
    if cfg.training.method != "sft":
        shutil.rmtree(tmp / "ref", ignore_errors=True)  # TRL's frozen reference copy of a continued adapter
    ModelMeta(
        kind="adapter" if cfg.adapter.type == "lora" else "full",
        base_model=cfg.model.name,
        base_model_path=model_path,
        revision=cfg.model.revision,
        adapter=cfg.adapter.type,
        quantization=cfg.quantization.bits,
        step=trainer.state.global_step,
        prompt=cfg.prompt.model_dump(mode="json"),
        source=str(run.path),
    ).write(tmp)
    if run.final.exists():
        shutil.rmtree(run.final)
    tmp.rename(run.final)
