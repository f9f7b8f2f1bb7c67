"""Battery cases for a config's neighbours: each section's keys misspelt (the close name suggested), values
of the wrong type, out of range, infinite or NaN, and settings that contradict each other.

`tunelab validate` and `tunelab train` must both refuse the same config in one line naming the field
(one rule, one owner: the two verbs cannot disagree), and the refused `train` leaves no run directory.
"""

from __future__ import annotations

from battery import CASES, Context, Outcome, case, expect


def _both(ctx: Context, name: str, overrides: list[str], text: str) -> Outcome:
    """`validate` and `train` with `overrides` both exit 2 saying `text`; `train` makes no run directory."""
    cfg = ctx.config(f"cfg-{name}.yaml", output={"dir": str(ctx.tmp / "runs"), "name": f"cfg-{name}"})
    outcome = None
    for verb in ("validate", "train"):
        o = expect(ctx, [verb, str(cfg), *overrides], text)
        if outcome is None or o.verdict != "clean":
            outcome = o
    if (ctx.tmp / "runs" / f"cfg-{name}").exists():
        outcome.lost = "train made a run directory for a config it refused"
    return outcome


# name: (overrides, what both verbs say)
NEIGHBOURS: dict[str, tuple[list[str], str]] = {
    # a key misspelt: the close name is suggested, in every section
    "section_name_misspelt": (["traning.max_steps=3"], "traning: unknown key; did you mean training?"),
    "training_key_misspelt": (["training.max_step=3"], "did you mean training.max_steps?"),
    "adapter_key_misspelt": (["adapter.rank=8"], "adapter.rank: unknown key; did you mean adapter.r?"),
    "model_key_misspelt": (["model.nmae=x"], "model.nmae: unknown key; did you mean model.name?"),
    "data_key_misspelt": (["data.trian.path=x"], "data.trian: unknown key; did you mean data.train?"),
    "output_key_misspelt": (["output.nmae=x"], "output.nmae: unknown key; did you mean output.name?"),
    "tracking_key_misspelt": (["tracking.backnd=none"], "did you mean tracking.backend?"),
    "samples_key_misspelt": (["samples.enabld=false"], "did you mean samples.enabled?"),
    "model_key_from_another_tool": (["model.load_in_4bit=true"], "model.load_in_4bit: unknown key"),
    # wrong types
    "max_steps_not_a_number": (["training.max_steps=abc"], "training.max_steps: Input should be a valid integer"),
    "max_steps_in_scientific_notation": (["training.max_steps=1e3"], "training.max_steps: Input should be a valid"),
    "batch_size_a_fraction": (["training.batch_size=2.5"], "training.batch_size: Input should be a valid integer"),
    "target_modules_a_number": (["adapter.target_modules=5"], "adapter.target_modules: Input should be a valid list"),
    "scorers_a_string": (["eval.scorers=notalist"], "eval.scorers: Input should be a valid list"),
    "output_dir_empty": (["output.dir="], "output.dir: Input should be a valid string"),
    "data_train_a_number": (["data.train=5"], "data.train"),
    # out of range
    "batch_size_zero": (["training.batch_size=0"], "training.batch_size: Input should be greater than 0"),
    "grad_accum_zero": (["training.grad_accum=0"], "training.grad_accum: Input should be greater than 0"),
    "learning_rate_negative": (["training.learning_rate=-1"], "training.learning_rate: Input should be greater"),
    "learning_rate_nan": (["training.learning_rate=nan"], "training.learning_rate: Input should be"),
    "learning_rate_infinite": (["training.learning_rate=inf"], "training.learning_rate: Input should be a finite"),
    "max_length_zero": (["training.max_length=0"], "training.max_length: Input should be greater than 0"),
    "warmup_ratio_above_one": (["training.warmup_ratio=2"], "training.warmup_ratio: Input should be less than 1"),
    "weight_decay_negative": (["training.weight_decay=-1"], "training.weight_decay: Input should be greater"),
    "save_steps_zero": (["training.save_steps=0"], "training.save_steps: Input should be greater than 0"),
    "eval_steps_negative": (["training.eval_steps=-5"], "training.eval_steps: Input should be greater than 0"),
    "seed_negative": (["training.seed=-1"], "training.seed: Input should be greater than or equal to 0"),
    "epochs_negative": (["training.epochs=-1"], "training.epochs: Input should be greater than 0"),
    "rank_zero": (["adapter.r=0"], "adapter.r: Input should be greater than 0"),
    "alpha_negative": (["adapter.alpha=-1"], "adapter.alpha: Input should be greater than 0"),
    "dropout_above_one": (["adapter.dropout=1.5"], "adapter.dropout: Input should be less than 1"),
    "dropout_nan": (["adapter.dropout=nan"], "adapter.dropout: Input should be a finite number"),
    "test_size_negative": (["data.test_size=-1"], "data.test_size: must be a fraction in (0, 1)"),
    "test_size_fraction_above_one": (["data.test_size=1.5"], "data.test_size: must be a fraction in (0, 1)"),
    "num_prompts_negative": (["samples.num_prompts=-1"], "samples.num_prompts: Input should be greater"),
    "samples_temperature_zero": (["samples.temperature=0"], "samples.temperature: Input should be greater than 0"),
    "synthetic_rows_past_the_limit": (
        ["data.train.path=synthetic:50000000"],
        "50000000 rows is above the most synthetic data holds",
    ),
    # not among the choices
    "method_unknown": (["training.method=ppo"], "training.method: Input should be 'sft', 'dpo', 'kto' or 'grpo'"),
    "dtype_unknown": (["model.dtype=int3"], "model.dtype: Input should be 'auto', 'bf16'"),
    "on_bad_row_unknown": (["data.on_bad_row=ignore"], "data.on_bad_row: Input should be 'error' or 'skip'"),
    "prompt_format_unknown": (["prompt.format=xml"], "prompt.format: Input should be 'alpaca'"),
    "tracker_unknown": (["tracking.backend=tensorflow"], "tracking.backend: unknown tracker 'tensorflow'"),
    "tracker_unknown_in_a_list": (["tracking.backend=[trackio,bogus]"], "tracking.backend: unknown tracker 'bogus'"),
    "strategy_unknown": (["distributed.strategy=mpi"], "distributed.strategy: Input should be 'auto', 'ddp'"),
    # contradictory
    "test_size_above_the_rows": (["data.test_size=100000"], "data.test_size: 100000 leaves no train or no test rows"),
    "max_steps_zero": (["training.max_steps=0"], "training.max_steps must be -1 (use epochs) or a positive step"),
    "custom_format_without_a_template": (["prompt.format=custom"], "prompt.template is required when prompt.format"),
    "dpo_on_instruction_rows": (["training.method=dpo"], "data.jsonl:1: missing field 'chosen'"),
    "text_format_on_instruction_rows": (["prompt.format=text"], "data.jsonl:1: missing field 'text'"),
    "fp16_training_on_the_cpu": (["model.device=cpu", "model.dtype=fp16"], "model.dtype: fp16 weights are not"),
    "preference_rows_under_sft": (
        ["data.train.path=synthetic:40:kind=preference"],
        "synthetic:40:kind=preference:row 1: missing field 'output'",
    ),
}

for _name, (_overrides, _text) in NEIGHBOURS.items():
    if f"config_{_name}" in CASES:
        raise RuntimeError(f"two battery cases named {_name}")

    def _fn(ctx, n=_name, ov=_overrides, t=_text):
        return _both(ctx, n, ov, t)

    _fn.__name__ = f"case_config_{_name}"
    case("bad input")(_fn)


@case("bad input")
def case_config_target_modules_not_in_the_model(ctx):
    """Only the model knows its layer names: `train` refuses before it makes the run directory."""
    cfg = ctx.config("cfg-target.yaml", output={"dir": str(ctx.tmp / "runs"), "name": "cfg-target"})
    o = expect(ctx, ["train", str(cfg), "adapter.target_modules=[qkv_proj]"], "adapter.target_modules: qkv_proj not")
    if (ctx.tmp / "runs" / "cfg-target").exists():
        o.lost = "train made a run directory for a config it refused"
    return o
