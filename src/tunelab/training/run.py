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
from typing import Any

from rich.markup import escape
from rich.text import Text

from tunelab.config import RunConfig, save_config
from tunelab.config.load import config_to_dict
from tunelab.data.prepare import prepare_data
from tunelab.errors import Interrupted, TunelabError, as_user_error, os_error
from tunelab.files import check_writable
from tunelab.evaluation.metrics import exact_match_rate
from tunelab.model.adapters import adapter_warnings, apply_adapter, parameter_report
from tunelab.model.loading import device_for, load_model, load_tokenizer, resolve_model_path, run_precision, run_weight_dtype
from tunelab.training.callbacks import GracefulStop, MetricsCallback, ProgressCallback, ResumedIntervals, SamplesCallback
from tunelab.runs import DataStats, ModelMeta, RunDir, RunLock, Summary, check_run_dir, prepare_run_dir, rotate_checkpoints
from tunelab.runs import step_dir_name


def precision_flags(cfg: RunConfig, device: str) -> dict[str, bool]:
    """`training.precision` -> SFTConfig bf16 / fp16 flags (auto: bf16 on GPUs that have it, fp16 on others, fp32 on CPU)."""
    p = run_precision(cfg, device)
    if p == "fp16" and not device.startswith("cuda"):
        raise TunelabError("training.precision: fp16 mixed precision needs a GPU; use bf16 or fp32 on the CPU")
    return {"bf16": p == "bf16", "fp16": p == "fp16"}


def sft_config(cfg: RunConfig, run: RunDir, device: str, has_test: bool, checkpointing: bool):
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
        packing=t.packing,
        packing_strategy="bfd",
        max_length=t.max_length,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=t.dataloader_workers,
    )


def make_trainer_class():
    from trl import SFTTrainer

    class TunelabTrainer(SFTTrainer):
        """SFTTrainer whose checkpoints land in checkpoints/step-NNNNNN/ once fully written."""

        run: RunDir
        keep: int | None = None

        def _save_checkpoint(self, model, trial):  # a private Trainer method: pinned in tunelab.compat.SAVE_CHECKPOINT
            super()._save_checkpoint(model, trial)
            step = self.state.global_step
            src = Path(self.args.output_dir) / f"checkpoint-{step}"
            dst = self.run.checkpoints / step_dir_name(step)
            if dst.exists():
                shutil.rmtree(dst)
            # The rename is the commit point: a crash mid-save leaves checkpoint-N, which resume ignores.
            src.rename(dst)
            rotate_checkpoints(self.run, self.keep)

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

    return pc.list_value_length(dataset.data.column("input_ids")).to_pylist()


def packing_efficiency(dataset, max_length: int) -> float | None:
    if dataset is None or len(dataset) == 0:
        return None
    lengths = row_lengths(dataset)
    return round(sum(lengths) / (len(lengths) * max_length), 4)


# Settings that `--resume` may change: they do not alter what the optimizer steps compute. Any
# other difference from the run's saved config would silently give a run that is neither.
RESUME_MAY_CHANGE = ("training.save_steps", "training.eval_steps", "training.logging_steps", "training.save_total_limit",
                     "training.dataloader_workers", "training.resume", "model.device", "output.",
                     "samples.", "eval.", "tracking.")


def train(cfg: RunConfig, config_path: str | Path | None = None, resume: bool = False, console=None, sinks=None,
          command: str | None = None, callbacks=None) -> Summary:
    """Run a whole training job as configured; returns the summary (also written to summary.json).

    `command` is how the user started the run (printed in the resume hint); `callbacks` are extra
    trainer callbacks (the tests' fault injection).
    """
    from rich.console import Console

    console = console or Console(stderr=True)
    resume = resume or cfg.training.resume not in (False, None)
    device = device_for(cfg.model)
    precision_flags(cfg, device)  # fail before anything is written
    explicit = _explicit_checkpoint(cfg)  # a training.resume path that is no checkpoint is named first
    run_name = cfg.output.name or "run"
    _check_outputs_writable(cfg)
    run = _check_run_dir(cfg, run_name, resume, explicit)
    lock = RunLock(run.path).acquire()  # one process per run directory, for the whole run
    try:
        if lock.took_over:
            console.print(Text(f"note: took over the lock of {run.path} left by PID {lock.took_over.get('pid')} on "
                               f"{lock.took_over.get('host')}, which is gone", style="yellow"))
        return _train(cfg, config_path, resume, console, sinks, command, callbacks, device, run_name, explicit)
    finally:
        lock.release()


def _train(cfg, config_path, resume, console, sinks, command, callbacks, device, run_name, explicit) -> Summary:
    t_start = time.perf_counter()
    sinks = list(sinks or [])
    from tunelab.artifacts import Home
    from tunelab.artifacts.models import check_adapter_fits, load_adapter_weights, model_from_artifact
    from tunelab.tracking import Tracking

    home = Home.of(cfg)  # where this config's artifact references resolve
    tracking = Tracking(cfg, config_path, extra_sinks=sinks, console=console, home=home)  # W&B online without a key stops here

    # --- setup: everything that can fail on user input happens before the run dir is touched
    run = _check_run_dir(cfg, run_name, resume, explicit)  # again, now that this process holds the lock
    if resume and explicit is None and run.is_complete():
        raise TunelabError(f"{run.path} already finished (final/ exists); nothing to resume")
    checkpoint = (explicit or _resume_point(run)) if resume else None
    if checkpoint is not None:
        _check_resume_settings(cfg, run, checkpoint)
        check_checkpoint_files(checkpoint)
    # a model artifact reference resolves (or fails in one line) before any weights load
    init = model_from_artifact(cfg.model.name, home) if cfg.model.ref.kind == "artifact" else None
    if init is not None:
        check_adapter_fits(init, cfg.adapter)
    model_path = resolve_model_path(init.base if init is not None else cfg.model.name)
    tokenizer = load_tokenizer(cfg.model, model_path)
    data = prepare_data(cfg, tokenizer, console, home)
    console.print(f"[bold]data[/]: {data.stats['train_examples']} train / {data.stats['test_examples']} test examples, "
                  f"{data.stats['train_tokens']:,} train tokens{' (cache hit)' if data.cache_hit else ''}")

    from transformers import set_seed

    set_seed(cfg.training.seed)  # the adapter's initialisation is part of the run's reproducibility
    model = load_model(cfg.model.model_copy(update={"dtype": run_weight_dtype(cfg, device)}), cfg.quantization, tokenizer, model_path)
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
    # the model and adapter loaded: only now is the run directory created (or replaced)
    run = prepare_run_dir(cfg.output.dir, run_name, resume=checkpoint is not None, overwrite=cfg.output.overwrite)
    if checkpoint is not None:
        run.remove_partial_files()
        dropped = run.truncate_logs(_checkpoint_step(checkpoint))
        if dropped:
            console.print(f"[dim]resume: dropped the records after step {_checkpoint_step(checkpoint)} from "
                          f"{', '.join(f'{k} ({v})' for k, v in dropped.items())}; those steps run again[/]")
    try:
        save_config(cfg, run.config)
    except OSError as e:
        raise os_error(e, run.config) from None
    params = parameter_report(model)
    from tunelab.perf.flops import flops_per_token, mean_attended_context

    flops = flops_per_token(model, mean_attended_context(row_lengths(data.train)))
    console.print(f"[bold]model[/]: {escape(cfg.model.name)} ({params['total']:,} params, {params['trainable']:,} trainable = "
                  f"{params['trainable_pct']}%){', ' + str(cfg.quantization.bits) + '-bit' if cfg.quantization.bits else ''}, "
                  f"device {device}", highlight=False)

    trainer_cls = make_trainer_class()
    trainer = trainer_cls(
        model=model,
        args=sft_config(cfg, run, device, data.test is not None, checkpointing),
        train_dataset=data.train,
        eval_dataset=data.test,
        processing_class=tokenizer,
    )
    trainer.run, trainer.keep = run, cfg.training.save_total_limit
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our progress bar and metrics.jsonl replace its dict dumps
    from tunelab.model.lm_head import use_direct_lm_head
    from tunelab.model.loading import keep_bnb_training_layout

    keep_bnb_training_layout(trainer.model)  # again: TRL may have re-wrapped layers
    if cfg.training.loss_kernel == "auto":
        use_direct_lm_head(trainer.model)  # TRL's tiled LM head is slow without Triton (a no-op with it)
    data.stats["packing_efficiency"] = packing_efficiency(trainer.train_dataset, cfg.training.max_length) if cfg.training.packing else None

    tracking.start(run, params, data.stats, device, resume=checkpoint is not None)
    sinks = [tracking]  # the trackers (and any sinks passed in), each guarded
    trainer.add_callback(tracking.callback())
    metrics_cb = MetricsCallback(run, sinks)
    progress_cb = ProgressCallback(metrics_cb, console)
    settings = cfg.samples.generation()
    samples_cb = None
    if cfg.samples.enabled and cfg.samples.num_prompts and data.test_rows:
        samples_cb = SamplesCallback(run, data.test_rows[: cfg.samples.num_prompts], cfg.prompt, tokenizer, settings, sinks,
                                     generation_metrics=cfg.eval.generation_metrics, dense_weights=dense_samples,
                                     clock=metrics_cb)
    stopper = GracefulStop(console)
    for cb in (metrics_cb, progress_cb, samples_cb, ResumedIntervals(), stopper, *(callbacks or [])):
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
            if stopper.signal is None and data.test is not None and not _evaluated_at(trainer, trainer.state.global_step):
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
        if status != "completed":
            _close_failed(run, tracking, status, reason, trainer.state.global_step)
    if status == "interrupted":
        saved = run.latest_checkpoint()
        at = f"; checkpoint {saved.name} saved" if saved is not None and _checkpoint_step(saved) == trainer.state.global_step else ""
        raise Interrupted(f"{reason}{at}", hint=resume_hint, exit_code=143 if stopper.signal == signal.SIGTERM else 130)

    history = trainer.state.log_history
    train_losses = [h["loss"] for h in history if "loss" in h]
    eval_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    session_tokens = tokens - metrics_cb.tokens_at_start  # a resumed run's speed counts this session's tokens only
    sample_s = samples_cb.seconds if samples_cb else 0.0
    eval_s = sum(h.get("eval_runtime", 0.0) for h in history if h.get("step", 0) > _checkpoint_step(checkpoint))
    pure_train_s = max(train_s - sample_s - eval_s, 1e-9)
    after = None
    if samples_cb is not None and samples_cb.history:
        last = samples_cb.history[max(samples_cb.history)]
        after = exact_match_rate(last, samples_cb.references)
    summary = Summary(
        status="completed",
        run_dir=str(run.path),
        base_model=cfg.model.name,
        adapter=cfg.adapter.type,
        quantization=cfg.quantization.bits,
        device=device,
        host=platform.node(),
        steps=trainer.state.global_step,
        gradient_checkpointing=checkpointing,
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
        **peak_memory_mb(device),
        final_train_loss=train_losses[-1] if train_losses else None,
        final_eval_loss=eval_losses[-1] if eval_losses else None,
        samples_exact_match_before=before,
        samples_exact_match_after=after,
        parameters=params,
        data=DataStats.model_validate(data.stats),
        config=config_to_dict(cfg),
    )
    # "completed" is written last, once the final model, the trackers' records and lineage.json are
    # all in place: a run whose summary says completed is complete.
    try:
        _save_final(trainer, tokenizer, run, cfg, model_path)
        for sink in sinks:
            sink.finish(summary)
        run.write_summary(summary)
    except Exception as e:
        err = e if isinstance(e, TunelabError) else as_user_error(e)
        _close_failed(run, tracking, "failed", err.message if err else f"{type(e).__name__}: {e}", trainer.state.global_step)
        if err is None:
            raise
        raise err from None
    return summary


def _check_run_dir(cfg: RunConfig, run_name: str, resume: bool, explicit: Path | None) -> RunDir:
    """`check_run_dir` for this run: an explicit `training.resume` checkpoint may start a new run directory."""
    if explicit is not None:
        resume = (Path(cfg.output.dir) / run_name).is_dir()
    return check_run_dir(cfg.output.dir, run_name, resume=resume, overwrite=cfg.output.overwrite)


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


def _check_outputs_writable(cfg: RunConfig) -> None:
    """output.dir, the data cache and the tracking dir must be writable before anything is loaded."""
    from tunelab.artifacts import tracking_dir
    from tunelab.cache import cache_root

    check_writable(cfg.output.dir, "output.dir")
    check_writable(Path(cfg.data.cache_dir) if cfg.data.cache_dir else cache_root("data"), "data.cache_dir")
    if cfg.tracking.backends():
        check_writable(tracking_dir(cfg), "tracking.dir")


def _explicit_checkpoint(cfg: RunConfig) -> Path | None:
    """`training.resume: PATH`: that checkpoint, checked now; None for `auto` / off."""
    explicit = cfg.training.resume
    if explicit in (False, None, "auto", True):
        return None
    p = Path(str(explicit)).expanduser()
    if not p.exists():
        raise TunelabError(f"training.resume: {p} does not exist")
    if not (p / "trainer_state.json").is_file():
        raise TunelabError(f"training.resume: {p} is not a checkpoint (no trainer_state.json)")
    return p


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
    changed = [k for k in sorted(set(saved) | set(now))
               if saved.get(k) != now.get(k) and not k.startswith(RESUME_MAY_CHANGE)]
    if changed:
        shown = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:6])
        raise TunelabError(f"--resume cannot change {', '.join(changed)} ({shown})",
                           hint="resume with the run's own settings (runs/<name>/config.yaml), or start a new run; "
                                f"resume may change: {', '.join(k.rstrip('.') for k in RESUME_MAY_CHANGE)}")


def check_checkpoint_files(checkpoint: Path) -> None:
    """The checkpoint's optimizer, scheduler and RNG files load as weights-only data (never a pickle of
    code): refuse in one line naming the file, before anything else is loaded."""
    import pickle

    import torch

    from tunelab.compat import checkpoint_safe_globals

    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt"):
        f = checkpoint / name
        if not f.is_file():
            continue
        try:
            with checkpoint_safe_globals():  # exactly what the trainer will allow when it loads them
                torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise TunelabError(f"{f}: not loadable as weights-only data ({first})",
                               hint="tunelab never unpickles code; delete that checkpoint to resume from an older one, "
                                    "or start the run again") from None
    if not any(checkpoint.glob("*.safetensors")):
        raise TunelabError(f"{checkpoint}: holds no *.safetensors weights", hint="tunelab resumes from safetensors checkpoints only")


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


def _resume_point(run: RunDir) -> Path:
    ckpt = run.latest_checkpoint()
    if ckpt is None:
        raise TunelabError(f"nothing to resume in {run.path}: no complete checkpoint under checkpoints/",
                           hint="checkpoints are written every training.save_steps steps")
    return ckpt


def _save_final(trainer, tokenizer, run: RunDir, cfg: RunConfig, model_path: str) -> None:
    """final/ appears only complete: written to final.tmp, then renamed."""
    tmp = run.path / "final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; the run's config.yaml says it all
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
