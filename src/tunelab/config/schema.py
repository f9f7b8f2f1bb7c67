"""The run config: one pydantic model, one section per concern.

The YAML file, the dotted CLI overrides and the `config.yaml` saved in every run directory are all
this object. Field descriptions double as documentation (`tunelab config`).
"""

from __future__ import annotations

import re
import string
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunelab.config.distributed import DistributedConfig
from tunelab.refs import DataRef, ModelRef, RefError, parse_data, parse_model

DType = Literal["auto", "bf16", "fp16", "fp32"]
# A run (or artifact) name is one path component: it is joined to output.dir, so '/', '..' or an
# absolute path would point a run (and output.overwrite) at someone else's files.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?|xpu(:\d+)?)$")
# File systems take 255 bytes per path component; what tunelab names after a run (its lock file
# `.<name>.lock`, temporary names, a sweep's trial and tracker names) needs room beside it.
NAME_MAX = 200
# numpy's seed range: a seed outside it fails only once training starts.
SEED_MAX = 2**32 - 1


def check_name(value: str) -> str:
    """A single path component of letters, digits, '.', '_' and '-', not '.' or '..' (else ValueError)."""
    if not NAME_PATTERN.match(value) or value in (".", ".."):
        raise ValueError("must be one folder name of letters, digits, '.', '_' and '-' (not '.' or '..', no '/')")
    if len(value) > NAME_MAX:
        raise ValueError(f"must be at most {NAME_MAX} characters; file systems cap the length of a folder name")
    return value


def _parses(parse, value: str) -> str:
    """`value` when `parse` (a tunelab.refs parser) accepts it; its message as a field error otherwise."""
    try:
        parse(value)
    except RefError as e:
        raise ValueError(str(e)) from None
    return value


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated, and no number is
    infinite or NaN (`learning_rate: inf` passed `gt=0` and trained on NaN losses)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(Section):
    name: str = Field(
        description="Base model: a Hugging Face hub id, a local folder, `tiny:NAME` for a locally built tiny model, "
        "or a model artifact (trackio:PROJECT/NAME:ALIAS, mlflow:NAME:VERSION): its base model plus its adapter."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of the model.")
    trust_remote_code: bool = Field(False, description="Run code shipped with the model. Off unless you trust it.")
    dtype: DType = Field(
        "auto",
        description="Weight dtype: auto = bf16 where supported, fp16 on other GPUs; "
        "on the CPU fp32, or bf16 for LoRA under training.precision bf16.",
    )
    device: str = Field("auto", description="`auto` (cuda:0 when a GPU is present, else cpu), `cpu`, `cuda`, `cuda:N`.")
    attn_implementation: str | None = Field(
        None,
        description="Attention kernel, e.g. sdpa, eager, flash_attention_2; default tunelab_packed_sdpa "
        "(SDPA per packed example instead of a block-diagonal mask over the whole row).",
    )
    use_cache: bool = Field(
        False, description="KV cache during training (off: it is useless with gradient checkpointing)."
    )

    _name_parses = field_validator("name")(lambda cls, v: _parses(parse_model, v))

    @property
    def ref(self) -> ModelRef:
        """What `name` names (tiny preset, local folder, artifact, hub id): the one classification."""
        return parse_model(self.name)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE_PATTERN.match(v):
            raise ValueError("must be auto, cpu, cuda, cuda:N, mps or xpu[:N]")
        return v


class QuantizationConfig(Section):
    bits: Literal[None, 4, 8] = Field(
        None, description="Load the base in 4-bit or 8-bit with bitsandbytes; null = no quantization."
    )
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    double_quant: bool = Field(True, description="Quantize the quantization constants too (QLoRA).")
    compute_dtype: DType = Field("auto", description="Dtype of the 4-bit matmuls: auto follows model.dtype.")


class FreezeConfig(Section):
    first_n_layers: int = Field(0, ge=0, description="Freeze the first N transformer blocks (full fine-tuning).")
    embeddings: bool = Field(False, description="Freeze the input embeddings (full fine-tuning).")


class AdapterConfig(Section):
    type: Literal["lora", "none"] = Field("lora", description="`lora` (PEFT) or `none` for full fine-tuning.")
    r: int = Field(64, gt=0, description="LoRA rank.")
    alpha: float = Field(16, gt=0, description="LoRA alpha (scale = alpha / r, or alpha / sqrt(r) with rsLoRA).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the LoRA input.")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases to train.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names to adapt, or `all-linear`.",
    )
    modules_to_save: list[str] = Field(
        default_factory=list, description="Modules trained in full and saved with the adapter."
    )
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    use_rslora: bool = Field(False, description="Rank-stabilised LoRA scaling.")
    freeze: FreezeConfig = Field(default_factory=FreezeConfig, description="Layer freezing for full fine-tuning.")


# ShareGPT role names (the `from` values of the common public files) and the chat turn each becomes.
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "system": "system",
    "function_call": "tool_call",
    "observation": "tool",
    "tool": "tool",
}
SourceFormat = Literal["auto", "alpaca", "sharegpt", "messages", "text"]


class ShareGPTConfig(Section):
    """Where a ShareGPT row keeps its turns, and what its role names mean."""

    conversations: str = Field("conversations", description="Field holding the list of turns.")
    role: str = Field("from", description="Key of a turn's role name.")
    content: str = Field("value", description="Key of a turn's text.")
    system: str = Field("system", description="Field holding a system prompt (optional in each row).")
    tools: str = Field("tools", description="Field holding the tool definitions, a list or a JSON string (optional).")
    roles: dict[str, Literal["user", "assistant", "system", "tool_call", "tool"]] = Field(
        default_factory=dict,
        description="Role names on top of the usual ones (human/user, gpt/assistant, system, "
        "function_call = an assistant's tool call, observation/tool = a tool's result), e.g. {bot: assistant}.",
    )

    def role_map(self) -> dict[str, str]:
        return {**SHAREGPT_ROLES, **self.roles}


class SourceConfig(Section):
    path: str = Field(
        description="Local file (.json/.jsonl/.csv/.parquet/.txt), folder of such files, hub dataset id, "
        "synthetic:N[:seed=S][:tasks=a,b][:kind=alpaca|preference|tools] for generated rows with exact answers, or a "
        "dataset artifact (trackio:PROJECT/NAME:VERSION, wandb:ENTITY/PROJECT/NAME:VERSION)."
    )
    split: str = Field("train", description="Split to read (hub datasets; local files have one split, `train`).")
    subset: str | None = Field(None, description="Hub dataset configuration name.")
    revision: str | None = Field(None, description="Hub dataset revision.")
    format: SourceFormat = Field(
        "auto",
        description="Shape of this source's rows, converted to prompt.format: auto = prompt.format's own "
        "(under messages, ShareGPT rows are detected and converted, with a note); sharegpt and alpaca rows become chat "
        "messages; text is raw text.",
    )
    sharegpt: ShareGPTConfig = Field(default_factory=ShareGPTConfig, description="ShareGPT keys and role names.")
    field_map: dict[str, str] | None = Field(None, description="Rename this source's fields (default: data.field_map).")
    documents: Literal["file", "blank_lines", "lines"] = Field(
        "file",
        description=".txt files: each file is one document, each block between blank lines is one, or each "
        "non-blank line is one (LLaMA-Factory's convention).",
    )
    weight: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="In a mixture: this source's share of the training rows "
        "(weights are normalised; rows are counted exactly, seeded).",
    )
    rows: int | None = Field(
        None,
        gt=0,
        description="Exactly this many training rows from this source (seeded; a source with fewer rows is repeated).",
    )
    test_size: float | int | None = Field(
        None, description="Carve this source's own test rows: a fraction (0-1) or a row count (default data.test_size)."
    )

    _path_parses = field_validator("path")(lambda cls, v: _parses(parse_data, v))
    _test_size_ok = field_validator("test_size")(lambda cls, v: _check_test_size(v))

    @property
    def ref(self) -> DataRef:
        """What `path` names (synthetic spec, local file or folder, artifact, hub dataset)."""
        return parse_data(self.path)


def _check_test_size(v):
    if v is not None and (v <= 0 or (isinstance(v, float) and v >= 1 and not float(v).is_integer())):
        raise ValueError("must be a fraction in (0, 1) or a positive row count")
    return v


class DataConfig(Section):
    train: SourceConfig | list[SourceConfig] = Field(
        description="Training data: one source, or a list of sources mixed by their weight or rows (with data.seed)."
    )
    test: SourceConfig | None = Field(
        None, description="Test data from another file or a named split of a hub dataset."
    )
    test_size: float | int | None = Field(
        None, description="Carve the test split from train: a fraction (0-1) or a row count, seeded."
    )
    train_rows: int | None = Field(
        None,
        gt=0,
        description="Use only the first N training rows (after shuffling); "
        "in a mixture, the total that the weighted sources share.",
    )
    test_rows: int | None = Field(None, gt=0, description="Use only the first N test rows.")
    shuffle: bool = Field(True, description="Shuffle the training rows (seeded) before selecting.")
    seed: int = Field(42, ge=0, le=SEED_MAX, description="Seed for shuffling and test carving.")
    field_map: dict[str, str] = Field(
        default_factory=dict, description="Rename source fields, e.g. {question: instruction}."
    )
    on_bad_row: Literal["error", "skip"] = Field(
        "error", description="Stop at the first bad row, or skip and count it."
    )
    too_long: Literal["truncate", "drop", "split"] = Field(
        "truncate",
        description="What to do with examples over max_length: truncate, drop, or split into max_length "
        "pieces, each its own packed example (TRL's bfd_split; continued pre-training on long documents; needs "
        "training.packing: true). Blocks (training.packing: blocks) never cut an example short. Default: split "
        "for prompt.format text with training.packing: true (a long document keeps every token), else truncate.",
    )
    truncate_prompt: Literal["none", "left"] = Field(
        "none",
        description="Preference pairs (dpo / kto) whose prompt leaves no room for the answers: none = drop the pair "
        "(counted), left = drop the prompt's first tokens so its end and the answers fit (TRL's keep_end).",
    )
    max_lost_answers: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Largest share of training rows that may lose every answer token to truncation "
        "before the run stops with an error (1.0: never stop; such rows are always dropped, and counted).",
    )
    cache_dir: str | None = Field(None, description="Tokenized-data cache; default ~/.cache/tunelab/data.")

    _test_size_ok = field_validator("test_size")(lambda cls, v: _check_test_size(v))

    @property
    def train_sources(self) -> list[SourceConfig]:
        """The training sources, one or several."""
        return list(self.train) if isinstance(self.train, list) else [self.train]

    @property
    def sources(self) -> list[SourceConfig]:
        """Every source the data reads: the training ones, then data.test."""
        return self.train_sources + ([self.test] if self.test is not None else [])

    @property
    def is_mixture(self) -> bool:
        """Rows are picked per source (several sources, or one with an exact row count); else one source is read
        as it is."""
        srcs = self.train_sources
        return len(srcs) > 1 or srcs[0].rows is not None or srcs[0].test_size is not None

    @model_validator(mode="after")
    def _one_test_source(self):
        if self.test is not None and self.test_size is not None:
            raise ValueError("set either data.test or data.test_size, not both")
        if self.test is not None and any(s.test_size is not None for s in self.train_sources):
            raise ValueError("set either data.test or the sources' own test_size, not both")
        if isinstance(self.train, list) and not self.train:
            raise ValueError("data.train: an empty list of sources")
        if self.test is not None:
            for name in ("weight", "rows", "test_size"):
                if getattr(self.test, name) is not None:
                    raise ValueError(f"data.test.{name}: only training sources take a {name}")
        srcs = self.train_sources
        weighted = [s for s in srcs if s.weight is not None]
        if weighted and len(srcs) == 1:
            raise ValueError("data.train.weight: a weight shares rows among several sources; one source takes rows: N")
        if any(s.weight is not None and s.rows is not None for s in srcs):
            raise ValueError("data.train: give a source a weight or rows, not both")
        plain = [s for s in srcs if s.weight is None and s.rows is None]
        if len(srcs) > 1 and plain and len(plain) != len(srcs):
            raise ValueError(
                "data.train: in a mixture give every source a weight or rows (or none of them a "
                "weight or rows: then every row of every source is used)"
            )
        if weighted and len(weighted) < len(srcs) and self.train_rows is None:
            raise ValueError(
                "data.train_rows: sources with rows and sources with a weight together need the total "
                "(data.train_rows) that the weighted ones share"
            )
        return self


class PromptConfig(Section):
    format: Literal["alpaca", "messages", "text", "custom"] = Field(
        "alpaca",
        description="alpaca template, chat `messages` (the tokenizer's chat template; OpenAI-style rows, with "
        "tool calls and a `tools` list, and ShareGPT rows), raw `text`, or a `custom` template.",
    )
    template: str | None = Field(
        None, description="custom: template with {field} placeholders; the response field is appended after it."
    )
    chat_template: str | None = Field(
        None,
        description="messages: the chat template to render with instead of the tokenizer's own: a built-in name "
        "(chatml; hermes, llama3 render tools) or a Jinja file. Saved with the tokenizer in final/ and every "
        "exported folder, so generate, serve and export use it too.",
    )
    response_field: str = Field("output", description="custom: the field holding the answer.")
    text_field: str = Field("text", description="text: the field holding the raw text.")
    train_on: Literal["response", "all"] = Field(
        "response", description="Compute the loss on the response only, or on the whole text (the tutorial's choice)."
    )

    @field_validator("format", mode="before")
    @classmethod
    def _sharegpt_is_chat(cls, v):
        if v == "sharegpt":
            raise ValueError(
                "ShareGPT rows are chat: set prompt.format: messages (ShareGPT rows are detected), or "
                "data.train.format: sharegpt to say so explicitly"
            )
        return v

    @field_validator("template")
    @classmethod
    def _template_parses(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            names = [f for _, f, _, _ in string.Formatter().parse(v) if f is not None]
        except ValueError as e:  # an unmatched '{' or '}'
            raise ValueError(f"{e} (write a literal brace as {{{{ or }}}})") from None
        for n in names:
            if not n.isidentifier():
                raise ValueError(f"placeholder {{{n}}} is not a plain field name")
        return v

    @model_validator(mode="after")
    def _template_needed(self):
        if self.format == "custom" and not self.template:
            raise ValueError("prompt.template is required when prompt.format is custom")
        if self.chat_template is not None and self.format != "messages":
            raise ValueError("prompt.chat_template: only prompt.format messages renders with a chat template")
        return self


class TrainingConfig(Section):
    epochs: float = Field(1, gt=0, description="Passes over the training data.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: run the epochs).")
    batch_size: int = Field(2, gt=0, description="Sequences per device per micro-batch.")
    grad_accum: int = Field(16, gt=0, description="Micro-batches per optimizer step.")
    eval_batch_size: int | None = Field(None, gt=0, description="Eval micro-batch; default batch_size.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name (cosine, linear, constant, ...).")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of the steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping (0: off).")
    optimizer: str = Field(
        "adamw_torch", description="transformers optimizer name, e.g. adamw_torch, paged_adamw_8bit."
    )
    precision: DType = Field(
        "auto", description="Mixed precision: auto = bf16 where supported, else fp16 on GPU, fp32."
    )
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description="Recompute activations in backward to save memory; auto: only when the memory plan needs it.",
    )
    loss_kernel: Literal["auto", "trl"] = Field(
        "auto",
        description="Loss over the LM head: auto = TRL's Triton kernel on GPUs, one fp32 log-softmax elsewhere; "
        "trl = TRL's always.",
    )
    kernels: Literal["auto", "liger", "none"] = Field(
        "auto",
        description="Fused GPU kernels for the decoder: auto = Liger's RMSNorm / SwiGLU / RoPE (Triton) on CUDA when "
        "liger-kernel is installed and covers the architecture, none elsewhere; liger = insist; none = off.",
    )
    cpu_allocator: Literal["auto", "system"] = Field(
        "auto",
        description="auto: a CPU run keeps the memory it frees for reuse (glibc malloc never unmaps it), so large "
        "tensors do not page-fault in fresh memory at every step; system: the C library's defaults.",
    )
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile (inductor) of the repeated decoder layer, one compiled code for every layer; "
        "the embedding, LM head and loss stay eager. auto: off (not yet measured faster than eager on any "
        "device); on: compile (sft only, without gradient checkpointing; costs seconds of compile time at the "
        "first steps); off: eager.",
    )
    method: Literal["sft", "dpo", "kto", "grpo"] = Field(
        "sft",
        description="sft (TRL's SFTTrainer), or preference tuning with TRL's stable trainers: dpo (pairs: "
        "chosen / rejected) or kto (completion + label, or pairs), or grpo: online RL over TRL's GRPOTrainer, "
        "rewarded by the scorers in grpo.rewards. ORPO is only in trl.experimental and is refused.",
    )
    packing: bool | Literal["blocks"] = Field(
        True,
        description="true: pack examples into max_length rows, each attending only to itself; blocks: concatenate "
        "every example (EOS between) and cut the stream into max_length blocks whose attention crosses examples, as "
        "pre-training does; false: one example per row, padded. Preference methods never pack.",
    )
    max_length: int = Field(1024, gt=0, description="Tokens per (packed) sequence.")
    logging_steps: int = Field(1, gt=0, description="Log training metrics every N steps.")
    progress_every_s: float = Field(
        30.0,
        gt=0,
        description="Without a terminal (a log file, a pipe): print a progress line "
        "(step, loss, tokens/s, ETA) every N seconds.",
    )
    eval_steps: int | None = Field(None, gt=0, description="Evaluate every N steps (null: only at the end).")
    save_steps: int | None = Field(
        None, gt=0, description="Checkpoint every N steps (null: no intermediate checkpoints)."
    )
    save_total_limit: int | None = Field(None, gt=0, description="Keep only the newest N checkpoints.")
    seed: int = Field(42, ge=0, le=SEED_MAX, description="Seed for initialisation, dropout and data order.")
    resume: Literal[False, "auto"] | str = Field(
        False, description="`auto`: continue from the newest checkpoint of this run; or a checkpoint path."
    )
    dataloader_workers: int = Field(0, ge=0, description="DataLoader worker processes.")

    @field_validator("method", mode="before")
    @classmethod
    def _stable_methods(cls, v):
        if isinstance(v, str) and v.lower() in ("orpo", "cpo", "simpo", "bco"):
            raise ValueError(
                f"{v} is not in TRL's stable API (only trl.experimental); use dpo (preference.loss_type "
                "sigmoid, ipo, hinge, ...) or kto"
            )
        return v

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_switch(cls, v):
        # YAML 1.1 reads a bare `on` / `off` as a boolean
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, v: str) -> str:
        from tunelab.compat import optimizer_names

        return _known(v, optimizer_names())

    @field_validator("lr_scheduler")
    @classmethod
    def _scheduler(cls, v: str) -> str:
        from tunelab.compat import scheduler_names

        return _known(v, scheduler_names())

    @model_validator(mode="after")
    def _steps(self):
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError("training.max_steps must be -1 (use epochs) or a positive step count")
        return self

    @property
    def is_preference(self) -> bool:
        """dpo / kto: the rows are pairs (or labelled completions), the `preference` section applies."""
        return self.method in ("dpo", "kto")

    @property
    def row_method(self) -> str:
        """The method whose rows the data pipeline reads: grpo reads SFT's rows (a prompt and its reference
        answer, which the rewards score against); the model's own completions replace the answer."""
        return "sft" if self.method == "grpo" else self.method


class PreferenceConfig(Section):
    """Preference tuning (training.method dpo | kto): TRL's DPOConfig / KTOConfig settings."""

    beta: float = Field(0.1, gt=0, description="How far the policy may move from the reference (higher: less far).")
    loss_type: str | list[str] | None = Field(
        None,
        description="TRL's loss: dpo sigmoid (default), hinge, ipo, robust, exo_pair, bco_pair, sppo_hard, "
        "nca_pair, aot, aot_unpaired, apo_zero, apo_down, discopop, sigmoid_norm, sft, or a list of them added up "
        "(e.g. [sigmoid, sft]: DPO plus the NLL of the chosen answer, as RPO does); "
        "kto kto (default), apo_zero_unpaired.",
    )
    loss_weights: list[float] | None = Field(
        None, description="dpo: the weight of each loss in a loss_type list (default 1 each)."
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="dpo robust / exo_pair: probability that a label is flipped."
    )
    desirable_weight: float = Field(1.0, gt=0, description="kto: weight of the losses of desirable completions.")
    undesirable_weight: float = Field(1.0, gt=0, description="kto: weight of the losses of undesirable completions.")
    eval_pairs: int = Field(
        64,
        ge=0,
        description="Held-out pairs scored at every evaluation: the share whose chosen "
        "answer the model finds likelier than the rejected one (preference_accuracy).",
    )

    def loss(self, method: str) -> str | list[str]:
        return self.loss_type or ("kto" if method == "kto" else "sigmoid")

    def losses(self, method: str) -> list[str]:
        loss = self.loss(method)
        return loss if isinstance(loss, list) else [loss]


class GrpoConfig(Section):
    """Online RL (training.method grpo): TRL's GRPOConfig settings and the rewards, declared from the scorers."""

    num_generations: int = Field(
        4, ge=2, description="Completions sampled per prompt (the group whose rewards are compared)."
    )
    max_completion_length: int = Field(64, gt=0, description="Tokens per sampled completion at most.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of the rollouts (1: off).")
    beta: float = Field(
        0.0, ge=0, description="KL coefficient against the reference model (0: no reference model is kept)."
    )
    epsilon: float = Field(0.2, gt=0, description="Clip range of the policy ratio.")
    epsilon_high: float | None = Field(None, gt=0, description="Upper clip range (DAPO: 0.28); default epsilon.")
    num_iterations: int = Field(1, ge=1, description="Optimizer passes over each batch of rollouts.")
    loss_type: str | None = Field(
        None,
        description="TRL's loss: dapo (TRL's default), grpo, dr_grpo, bnpo, cispo, sapo, luspo, vespo.",
    )
    importance_sampling_level: Literal["token", "sequence"] = Field(
        "token", description="Importance-sampling ratios per token, or one per sequence (GSPO)."
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Advantages divided by the reward std of the group, of the batch, or not (Dr. GRPO)."
    )
    mask_truncated_completions: bool = Field(
        False, description="Leave completions cut at max_completion_length out of the loss (DAPO)."
    )
    # checked against the scorer registry (tunelab.scoring, above this layer) by train and validate
    rewards: list[str | dict[str, Any]] = Field(
        default_factory=lambda: ["exact_match"],
        min_length=1,
        description="Rewards, each a scorer as eval.scorers declares one plus an optional weight, e.g. "
        "[{exact_match: {weight: 1}}, {regex: {pattern: '^\\d+$', weight: 0.2}}, {python: my_rewards:score}]; "
        "`tunelab scorers` lists them.",
    )
    reference_column: str | None = Field(
        None,
        description="The data column holding the reference answer the rewards compare with "
        "(default: the row's answer: Alpaca output, the last assistant turn, custom's response_field).",
    )
    importance_sampling_correction: bool = Field(
        True,
        description="vLLM rollouts: correct for the gap between vLLM's and the trainer's token probabilities "
        "(TRL's truncated importance sampling); transformers' rollouts need none.",
    )
    vllm_mode: Literal["colocate"] | None = Field(
        None,
        description="colocate: generate the rollouts with vLLM on the training GPU (needs the vllm extra); "
        "default: transformers' generation.",
    )


def _known(value: str, known: list[str]) -> str:
    """`value` if it is one of `known`, else a ValueError naming the closest and the known values."""
    if value in known:
        return value
    import difflib

    close = difflib.get_close_matches(value, known, n=1, cutoff=0.6)
    guess = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"unknown value; {guess}known: {', '.join(known)}")


class GenerationSettings(Section):
    """How answers are generated: the sample table during training, `tunelab eval`, generate, chat, serve."""

    max_new_tokens: int = Field(256, gt=0, description="Tokens generated per answer.")
    do_sample: bool = Field(False, description="Sample (true) or greedy decoding (false).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    batch_size: int = Field(16, gt=0, description="Prompts generated together (batched, KV cache, left padding).")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Sampling seed (generation never touches the training RNG).")
    ignore_eos: bool = Field(
        False,
        description="Generate max_new_tokens tokens even past an end-of-sequence token "
        "(throughput measurements; vLLM's ignore_eos).",
    )

    def as_dict(self) -> dict:
        return self.model_dump()


class SamplesConfig(GenerationSettings):
    enabled: bool = Field(True, description="Generate answers for test prompts at every evaluation and at the end.")
    num_prompts: int = Field(10, ge=0, description="How many test prompts to answer.")
    at_start: bool = Field(False, description="Also answer them before training (the untrained baseline).")
    dense_weights: bool = Field(
        True,
        description="Generate with dense, LoRA-merged weight copies when the memory plan shows room between "
        "steps (faster, above all for 4-bit models); false: always through the quantized and LoRA layers.",
    )

    def generation(self) -> GenerationSettings:
        """The generation settings alone."""
        return GenerationSettings(**{k: getattr(self, k) for k in GenerationSettings.model_fields})


class JudgeConfig(Section):
    """The pairwise LLM judge of `tunelab eval --judge` (tuned vs baseline answers, both orders), and its defaults."""

    url: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible API (e.g. http://localhost:11434/v1); eval judges when this "
        "or target is set, or with --judge.",
    )
    target: str | None = Field(
        None, description="A tunelab TARGET (run, model folder, tiny: preset) served in-process as the judge."
    )
    model: str | None = Field(None, description="The judge's model id (a URL needs one; a TARGET's is its own).")
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the environment variable holding the API key (the key itself is never written).",
    )
    template: str | None = Field(
        None,
        description="A file holding the judge prompt, with {instruction}, {answer_a} and {answer_b}; "
        "default: tunelab's (evaluation/judge.py DEFAULT_TEMPLATE).",
    )
    concurrency: int = Field(4, ge=1, description="Judge requests in flight at once.")
    timeout_s: float = Field(60.0, gt=0, description="Seconds one judge request may take.")
    max_retries: int = Field(
        3, ge=0, description="Attempts after the first per question (timeouts, 429s, 5xx, unparsable verdicts)."
    )

    @model_validator(mode="after")
    def _one_judge(self):
        if self.url is not None and self.target is not None:
            raise ValueError("eval.judge: set url or target, not both")
        return self

    @property
    def configured(self) -> bool:
        """Whether the config names a judge, so every `tunelab eval` of the run judges."""
        return self.url is not None or self.target is not None


class EvalConfig(Section):
    generation_metrics: bool = Field(
        True,
        description="At every evaluation, score the sample answers with eval.scorers into metrics.jsonl and the "
        "trackers, next to the loss (off: exact match alone).",
    )
    # checked against the scorer registry (tunelab.scoring, above this layer) by train, validate and eval
    scorers: list[str | dict[str, Any]] | None = Field(
        None,
        description="What scores `tunelab eval` and the sample answers at every evaluation (as samples_<name>): "
        "scorer names or {name: parameters}, e.g. [exact_match, {numeric: {tolerance: 1e-6}}, "
        "{python: my_checks:score}]; `tunelab scorers` lists them. Default: exact_match, normalized_exact_match, "
        "rougeL, bleu, chrf, answer_words.",
    )
    judge: JudgeConfig = Field(default_factory=JudgeConfig)


TRACKERS = ("trackio", "wandb", "mlflow", "tensorboard", "none")


class TrackingConfig(Section):
    backend: str | list[str] = Field(
        "trackio",
        description="Experiment tracker(s): trackio (local SQLite + dashboard), wandb, mlflow, tensorboard or none; "
        "a list logs to several.",
    )
    project: str = Field("tunelab", description="Tracker project (W&B project, MLflow experiment).")
    entity: str | None = Field(None, description="W&B entity (user or team); default: the key's default entity.")
    run_name: str | None = Field(None, description="Tracker run name (default: the run directory name).")
    tags: list[str] = Field(default_factory=list, description="Run tags.")
    job_type: str = Field("train", description="Run job type.")
    group: str | None = Field(
        None,
        description="Group of runs shown together (W&B group, trackio group, MLflow tag "
        "tunelab.group); a sweep sets its name.",
    )
    notes: str | None = Field(None, description="Free-text notes.")
    dir: str | None = Field(
        None, description="Tracker files (all backends, artifact cache); default <output.dir>/.tracking."
    )
    mode: Literal["offline", "online"] | None = Field(
        None, description="W&B mode; default: $WANDB_MODE, else offline (upload later with `wandb sync`)."
    )
    uri: str | None = Field(
        None, description="MLflow tracking server URI; default a sqlite:/// store in the tracking dir."
    )
    log_model: bool = Field(True, description="Log the final adapter (or model) as a versioned model artifact.")
    log_checkpoints: bool = Field(False, description="Also log every checkpoint as a version of the model artifact.")
    model_artifact: str | None = Field(None, description="Model artifact name; default <run name>-model.")
    model_aliases: list[str] = Field(
        default_factory=list, description="Extra aliases for the final model version (latest and best are automatic)."
    )
    system_every_s: float = Field(
        10.0, ge=0, description="Seconds between system metric samples (CPU/GPU memory, utilisation); 0: off."
    )
    timeout_s: float = Field(
        30.0, gt=0, description="A tracker call slower than this is abandoned and that tracker turned off for the run."
    )

    @field_validator("backend")
    @classmethod
    def _known_backends(cls, v):
        names = [v] if isinstance(v, str) else list(v)
        unknown = [n for n in names if n not in TRACKERS]
        if unknown:
            raise ValueError(f"unknown tracker {', '.join(map(repr, unknown))} (known: {', '.join(TRACKERS)})")
        return v

    def backends(self) -> list[str]:
        """Active backends in order, without `none` and duplicates."""
        names = [self.backend] if isinstance(self.backend, str) else self.backend
        return [n for i, n in enumerate(names) if n != "none" and n not in names[:i]]


class OutputConfig(Section):
    dir: str = Field("runs", description="Folder that holds run directories.")
    name: str | None = Field(None, description="Run directory name, one folder name (default: the config file's stem).")
    overwrite: bool = Field(
        False, description="Replace an existing run directory of the same name (only one tunelab made)."
    )

    @field_validator("name")
    @classmethod
    def _one_component(cls, v: str | None) -> str | None:
        return v if v is None else check_name(v)


class RunConfig(Section):
    """A whole run. Sections: model, quantization, adapter, data, prompt, training, preference, grpo, samples,
    eval, tracking, distributed, output."""

    model: ModelConfig
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    data: DataConfig
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    grpo: GrpoConfig = Field(default_factory=GrpoConfig)
    samples: SamplesConfig = Field(default_factory=SamplesConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _cross_section(self):
        if self.quantization.bits is not None and self.adapter.type == "none":
            raise ValueError(
                "quantization.bits: full fine-tuning (adapter.type: none) of a quantized model is impossible; use LoRA"
            )
        fmt = self.prompt.format
        for i, src in enumerate(self.data.train_sources):
            if src.format not in SOURCE_FORMATS_FOR[fmt]:
                where = f"data.train[{i}]" if isinstance(self.data.train, list) else "data.train"
                raise ValueError(
                    f"{where}.format: {src.format} rows cannot be rendered as prompt.format {fmt} "
                    f"(it takes {', '.join(SOURCE_FORMATS_FOR[fmt])})"
                )
        if fmt == "text" and "too_long" not in self.data.model_fields_set and self.training.packing is True:
            self.data.too_long = "split"  # a long document keeps every token (one .txt file is one document)
        if self.data.too_long == "split" and self.training.packing is not True:
            raise ValueError(
                "data.too_long: split cuts long examples into packed pieces; it needs training.packing: true"
            )
        method = self.training.method
        if method != "sft" and fmt == "text":
            raise ValueError(
                f"training.method: {method} needs prompts to answer; prompt.format text has "
                "none (use alpaca, messages, or custom with template '{prompt}')"
            )
        if method == "grpo":
            self._check_grpo()
        if self.training.is_preference:
            from tunelab.compat import preference_losses

            known, p = preference_losses(method), self.preference
            for loss in p.losses(method):
                if loss not in known:
                    raise ValueError(
                        f"preference.loss_type: {loss!r} is not a {method} loss (known: {', '.join(known)})"
                    )
            if isinstance(p.loss_type, list) and (method != "dpo" or not p.loss_type):
                raise ValueError("preference.loss_type: a list of losses is for dpo (kto takes one)")
            if p.loss_weights is not None and len(p.loss_weights) != len(p.losses(method)):
                raise ValueError("preference.loss_weights: one weight per preference.loss_type entry")
            if method == "kto" and self.preference.loss(method) == "kto" and self.training.batch_size < 2:
                raise ValueError("training.batch_size: kto's KL term needs at least 2 completions per micro-batch")
        return self

    def _check_grpo(self) -> None:
        from tunelab.compat import grpo_losses

        if "packing" not in self.training.model_fields_set:
            self.training.packing = False  # saved so: the run's config.yaml loads again as it is
        elif self.training.packing:
            raise ValueError(
                "training.packing: grpo trains on the completions it samples, one per row; packing does not "
                "apply (remove it or set false)"
            )
        loss = self.grpo.loss_type
        if loss is not None and loss not in grpo_losses():
            raise ValueError(f"grpo.loss_type: {loss!r} is not a grpo loss (known: {', '.join(grpo_losses())})")


# Which row shapes (data.train[i].format) each prompt.format renders.
SOURCE_FORMATS_FOR = {
    "alpaca": ("auto", "alpaca"),
    "messages": ("auto", "messages", "sharegpt", "alpaca"),
    "text": ("auto", "text"),
    "custom": ("auto",),
}
