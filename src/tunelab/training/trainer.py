"""The trainer tunelab hands the run to: TRL's arguments built from the config, the trainer class
whose checkpoints land in checkpoints/step-NNNNNN/ once fully written, and the final model folder."""

from __future__ import annotations

import shutil
from pathlib import Path

from tunelab.config import RunConfig
from tunelab.model.precision import precision_flags
from tunelab.runs import ModelMeta, RunDir, rotate_checkpoints, step_dir_name
from tunelab.training import distributed as dist
from tunelab.training.preference_trainer import preference_trainer


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

    if method == "grpo":
        from tunelab.training.grpo_trainer import grpo_trainer

        base = grpo_trainer()  # TRL's GRPOTrainer
    else:
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


def evaluated_at(trainer, step: int) -> bool:
    return any("eval_loss" in h and h.get("step") == step for h in trainer.state.log_history)


def save_final_model(
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
