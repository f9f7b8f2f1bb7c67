"""The one place tunelab reaches into the libraries' internals or mirrors their checks.

Every function here names what it depends on; tests/unit/test_compat.py calls each one against the
installed versions, so a library upgrade that moves something breaks that test, not a run.
"""

from __future__ import annotations

# The `optim` and `lr_scheduler_type` values transformers' TrainingArguments accepts, mirrored here so
# a config validates in a fraction of a second (importing transformers.training_args pulls in torch
# and takes seconds). tests/unit/test_compat.py compares them with the installed transformers' own enums
# (`OptimizerNames`, `SchedulerType`), so an upgrade that changes them fails that test loudly.
OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_torch_xla",
    "adamw_torch_npu_fused",
    "adafactor",
    "adamw_anyprecision",
    "adamw_torch_4bit",
    "adamw_torch_8bit",
    "ademamix",
    "sgd",
    "adagrad",
    "adamw_bnb_8bit",
    "adamw_8bit",
    "ademamix_8bit",
    "lion_8bit",
    "lion_32bit",
    "paged_adamw_32bit",
    "paged_adamw_8bit",
    "paged_ademamix_32bit",
    "paged_ademamix_8bit",
    "paged_lion_32bit",
    "paged_lion_8bit",
    "rmsprop",
    "rmsprop_bnb",
    "rmsprop_bnb_8bit",
    "rmsprop_bnb_32bit",
    "galore_adamw",
    "galore_adamw_8bit",
    "galore_adafactor",
    "galore_adamw_layerwise",
    "galore_adamw_8bit_layerwise",
    "galore_adafactor_layerwise",
    "lomo",
    "adalomo",
    "grokadamw",
    "schedule_free_radam",
    "schedule_free_adamw",
    "schedule_free_sgd",
    "apollo_adamw",
    "apollo_adamw_layerwise",
    "stable_adamw",
)
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
    "greedy",
)


def optimizer_names() -> list[str]:
    """The values `training.optimizer` may take (transformers' `OptimizerNames`)."""
    return list(OPTIMIZERS)


def scheduler_names() -> list[str]:
    """The values `training.lr_scheduler` may take (transformers' `SchedulerType`)."""
    return list(SCHEDULERS)


def checkpoint_safe_globals():
    """The numpy types transformers' Trainer allows when it loads rng_state.pth weights-only
    (`transformers.trainer_pt_utils.safe_globals`), as a context manager."""
    from transformers.trainer_pt_utils import safe_globals

    return safe_globals()


def point_trackio_at(trackio_dir):
    """Make trackio read and write `trackio_dir`, whether or not trackio is imported yet; returns a
    function that puts the previous module constants back.

    trackio reads TRACKIO_DIR once, at import, into module constants (`TRACKIO_DIR`, `MEDIA_DIR`,
    `ARTIFACTS_DIR` in trackio.utils and the modules that imported them).
    """
    import os
    import sys
    from pathlib import Path

    d = Path(trackio_dir).resolve()
    os.environ["TRACKIO_DIR"] = str(d)
    values = {"TRACKIO_DIR": d, "MEDIA_DIR": d / "media", "ARTIFACTS_DIR": d / "artifacts"}
    saved = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "trackio" or name.startswith("trackio.")):
            continue
        for attr, value in values.items():
            old = getattr(module, attr, None)
            if isinstance(old, Path):
                saved.append((module, attr, old))
                setattr(module, attr, value)

    def restore() -> None:
        for module, attr, old in saved:
            setattr(module, attr, old)

    return restore


def trackio_storage():
    """trackio's SQLite storage class (`trackio.sqlite_storage.SQLiteStorage`): artifact manifests,
    logs and lineage are read through it, as trackio's own UI does."""
    from trackio.sqlite_storage import SQLiteStorage

    return SQLiteStorage


def trackio_hydrated_artifact(rec: dict):
    """A trackio `Artifact` filled from a stored manifest record, so it can download outside a run
    (trackio hands out hydrated artifacts only from `use_artifact` in a run: `Artifact._hydrate_from_db`)."""
    import trackio

    art = trackio.Artifact(rec["name"], type=rec["type"])
    art._hydrate_from_db(
        project=rec.get("project"),
        version=rec["version"],
        aliases=rec["aliases"],
        manifest=rec["manifest"],
        manifest_digest=rec["manifest_digest"],
        size_bytes=rec["size_bytes"],
        metadata=rec["metadata"],
    )
    return art


def wandb_netrc_auth(host: str):
    """W&B's own .netrc lookup (`wandb.sdk.lib.wbauth.wbnetrc.read_netrc_auth`)."""
    from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth

    return read_netrc_auth(host=host)


def dataset_fingerprint(ds) -> str:
    """A datasets.Dataset's content fingerprint (`Dataset._fingerprint`), which datasets keeps for its own cache."""
    return ds._fingerprint


def optuna_running_trial(study, frozen):
    """A live optuna `Trial` for a trial still RUNNING in the storage (its worker was killed or
    stopped): reporting, pruning and `tell` work on it as on a trial from `study.ask()`. The
    `Trial(study, trial_id)` constructor is documented for Optuna's own use, and a frozen trial's id
    is private (`FrozenTrial._trial_id`)."""
    import optuna

    return optuna.trial.Trial(study, frozen._trial_id)


def trl_uses_triton(device) -> bool:
    """Whether TRL's chunked log-prob kernel runs as Triton on `device` (`trl.kernels.chunked_logprob._use_triton`)."""
    from trl.kernels.chunked_logprob import _use_triton

    return _use_triton(device)


def trl_fused_output():
    """The output record TRL's fused LM head returns (`trl.trainer.utils.FusedCausalLMOutput`)."""
    from trl.trainer.utils import FusedCausalLMOutput

    return FusedCausalLMOutput


def sdpa_pieces():
    """transformers' SDPA attention forward, `repeat_kv` and SDPA mask builder, which the packed-row
    attention registers and falls back to (`transformers.integrations.sdpa_attention`,
    `transformers.masking_utils.sdpa_mask`)."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    return sdpa_attention_forward, repeat_kv, sdpa_mask


# The Trainer method tunelab overrides to rename checkpoints once fully written (transformers'
# `Trainer._save_checkpoint(model, trial)`).
SAVE_CHECKPOINT = "_save_checkpoint"


def set_hub_offline() -> None:
    """Offline mode for the hub clients of this process, imported or not: the environment variables
    and the constants `huggingface_hub.constants.HF_HUB_OFFLINE` and `datasets.config.HF_HUB_OFFLINE`
    that they read once at import."""
    import os
    import sys

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:
        hub.HF_HUB_OFFLINE = True
    ds = sys.modules.get("datasets.config")
    if ds is not None:
        ds.HF_HUB_OFFLINE = True
        if hasattr(ds, "HF_DATASETS_OFFLINE"):
            ds.HF_DATASETS_OFFLINE = True


# The loss names TRL's stable preference trainers take (`DPOConfig.loss_type`, `KTOConfig.loss_type`),
# mirrored so a config validates without importing TRL; tests/unit/test_compat.py checks them against
# the installed TRL's own help text and choices.
DPO_LOSSES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
KTO_LOSSES = ("kto", "apo_zero_unpaired")


def preference_losses(method: str) -> list[str]:
    """The values `preference.loss_type` may take for `training.method` dpo or kto."""
    return list(DPO_LOSSES if method == "dpo" else KTO_LOSSES)


# `GRPOConfig.loss_type` values TRL 1.x accepts (its help text; GRPOTrainer switches on them). Pinned here,
# checked against TRL's own default in tests/unit/test_compat.py, so the config refuses a typo before weights load.
GRPO_LOSSES = ("dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo")


def grpo_losses() -> list[str]:
    """The values `grpo.loss_type` may take."""
    return list(GRPO_LOSSES)


# GRPOTrainer keeps its last generation batch for its completions table in a private dict: `_logs` with
# "prompt", "completion", "rewards" ({reward name: values}) and "advantages", one entry per completion.
GRPO_ROLLOUT_LOG = "_logs"


def grpo_rollouts(trainer) -> list[dict]:
    """The last generation batch of a GRPOTrainer: prompt, completion, each reward (None where it had
    none) and the advantage, one dict per completion."""
    import math

    logs = getattr(trainer, GRPO_ROLLOUT_LOG)

    def number(v):
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    rewards = {name: list(values) for name, values in logs["rewards"].items()}
    return [
        {
            "prompt": p,
            "completion": c,
            "rewards": {name: number(values[i]) for name, values in rewards.items()},
            "advantage": number(a),
        }
        for i, (p, c, a) in enumerate(zip(logs["prompt"], logs["completion"], logs["advantages"], strict=True))
    ]


# The TRL preference-trainer method tunelab overrides so that data it tokenized itself (one BOS rule,
# the verified cache) goes to TRL's collator as it is: `DPOTrainer._prepare_dataset(dataset,
# processing_class, args, dataset_name)` and the same on `KTOTrainer`.
PREPARE_DATASET = "_prepare_dataset"


def torchrun(argv: list[str]) -> None:
    """torch's elastic launcher run in this process exactly as the `torchrun` command runs with `argv`
    (`torch.distributed.run.parse_args` and `run`); raises its `ChildFailedError` (a worker failed)
    or `SignalException` (this process got SIGINT / SIGTERM, already passed on to the workers)."""
    from torch.distributed.run import parse_args, run

    run(parse_args(argv))


def generation_logits_processors(model, generate_kwargs: dict, prompt_length: int, device):
    """The logits processors `model.generate(**generate_kwargs)` would build for a prompt of
    `prompt_length` tokens (transformers' private `GenerationMixin._prepare_generation_config`,
    `_prepare_special_tokens` and `_get_logits_processor`), for the server's batching scheduler."""
    from transformers import LogitsProcessorList

    config, _ = model._prepare_generation_config(None, **generate_kwargs)
    # the special-token tensors `generate` sets before it builds the processors: without them the
    # EOS-dependent ones (min_new_tokens, min_length) are silently left out
    model._prepare_special_tokens(config, kwargs_has_attention_mask=True, device=device)
    return model._get_logits_processor(
        generation_config=config,
        input_ids_seq_length=prompt_length,
        encoder_input_ids=None,
        prefix_allowed_tokens_fn=None,
        logits_processor=LogitsProcessorList(),
        device=device,
        model_kwargs={},
    )


def compile_figures() -> tuple[int, float]:
    """The graphs torch.compile built in this process and the seconds it spent building them, forward frames
    (`_compile.compile_inner`) and the backward graphs compiled at their first backward
    (`backward._backward_impl`): `torch._dynamo.utils.counters` and `compilation_time_metrics`."""
    from torch._dynamo.utils import compilation_time_metrics, counters

    seconds = sum(
        sum(compilation_time_metrics.get(k, ())) for k in ("_compile.compile_inner", "backward._backward_impl")
    )
    return int(counters["stats"]["unique_graphs"]), seconds


def compile_grad_calls(module, recompile_limit: int = 32) -> None:
    """Compile `module`'s calls made with gradients on (`Module.compile()`'s `_compiled_call_impl`, given a
    dispatch); calls without them (evaluation, generation) run its eager `_call_impl`. While a compiled call
    runs, torch may keep `recompile_limit` versions of each frame (`torch._dynamo.config.recompile_limit`,
    8 by default)."""
    import torch

    compiled = torch.compile(module._call_impl)
    eager = module._call_impl

    def call(*args, **kwargs):
        if not torch.is_grad_enabled():
            return eager(*args, **kwargs)
        with torch._dynamo.config.patch(recompile_limit=recompile_limit):
            return compiled(*args, **kwargs)

    module._compiled_call_impl = call
