"""`tunelab validate`: everything about a run that can be checked without loading weights, all at once.

Each check gives a `Finding`: a problem (the run cannot start), a note (something worth knowing,
such as what could not be checked offline) or an ok line. The device and precision, the model
(config and tokenizer files, remote code, a chat template where the format needs one), the data
(every row read and validated), the folders the run writes and a resume point are all checked, and
every problem is reported, not only the first. Nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tunelab.config.schema import RunConfig
from tunelab.errors import TunelabError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


@dataclass
class Finding:
    kind: Literal["problem", "note", "ok"]
    field: str
    message: str

    def line(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def add(self, kind: str, field_name: str, message: str) -> None:
        self.findings.append(Finding(kind, field_name, message))  # type: ignore[arg-type]

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.kind == "problem"]

    @property
    def notes(self) -> list[Finding]:
        return [f for f in self.findings if f.kind == "note"]


def _message(e: BaseException) -> str:
    text = e.message if isinstance(e, TunelabError) else str(e)
    first = text.splitlines()[0]
    if first.rstrip().endswith(":") and len(text.splitlines()) > 1:  # a ConfigError's list: its items
        return "; ".join(x.strip().removeprefix("- ") for x in text.splitlines()[1:])
    return first


def _field_and_message(e: BaseException, default_field: str) -> tuple[str, str]:
    msg = _message(e)
    head, sep, rest = msg.partition(": ")
    if sep and "." in head and " " not in head:  # "model.device: ..." already names its field
        return head, rest
    return default_field, msg


def preflight(cfg: RunConfig, resume: bool = False, nproc: int = 1) -> Report:
    """Every check `tunelab validate` runs, collected (never raising for a user error); `nproc` as for
    `train --nproc`."""
    from tunelab import hub

    report = Report()
    uses_hub = cfg.model.ref.kind == "hub" or any(s.ref.kind == "hub" for s in cfg.data.sources)
    offline = hub.ensure_offline_if_unreachable() if uses_hub else False
    device = _device(cfg, report)
    _precision(cfg, device, report)
    _kernels(cfg, device, report)
    if nproc != 1:
        _processes(cfg, nproc, device, report)
    tokenizer = _model(cfg, report, offline)
    _data(cfg, report, offline, tokenizer)
    _scorers(cfg, report)
    _outputs(cfg, report, resume)
    return report


def _device(cfg: RunConfig, report: Report) -> str:
    from tunelab.model.loading import device_for

    try:
        device = device_for(cfg.model)
    except TunelabError as e:
        report.add("problem", *_field_and_message(e, "model.device"))
        return "cpu"
    report.add("ok", "model.device", device)
    return device


def _precision(cfg: RunConfig, device: str, report: Report) -> None:
    from tunelab.model.loading import precision_flags, run_precision, run_weight_dtype

    try:
        precision_flags(cfg, device)
    except TunelabError as e:
        report.add("problem", *_field_and_message(e, "training.precision"))
        return
    if device == "cpu" and run_weight_dtype(cfg, device) == "fp16" and cfg.quantization.bits is None:
        report.add("problem", "model.dtype", "fp16 weights are not supported for training on the CPU; use fp32 or bf16")
        return
    from tunelab.perf.machine import cpu_bf16_note

    precision = run_precision(cfg, device)
    slow = cpu_bf16_note(device, precision)
    if slow:
        report.add("note", "training.precision", slow)
    else:
        report.add("ok", "training.precision", precision)


def _kernels(cfg: RunConfig, device: str, report: Report) -> None:
    from tunelab.model.kernels import resolve_kernels

    try:
        kernels = resolve_kernels(cfg.training.kernels, device, None)
    except TunelabError as e:
        report.add("problem", *_field_and_message(e, "training.kernels"))
        return
    report.add("ok", "training.kernels", kernels.why)


def _processes(cfg: RunConfig, nproc: int, device: str, report: Report) -> None:
    """`--nproc N`: the flag, the strategy, and how N processes fit this machine (what `train --nproc` refuses)."""
    from tunelab.training import distributed as dist
    from tunelab.training.launch import Launch

    try:
        Launch(nproc).check()
    except TunelabError as e:
        report.add("problem", "--nproc", e.message.removeprefix("--nproc: "))
        return
    try:
        dist.check_strategy(cfg, dist.resolve_strategy(cfg, nproc, device, nproc), device == "cpu")
    except TunelabError as e:
        report.add("problem", *_field_and_message(e, "distributed.strategy"))
    fit = dist.process_fit(cfg, nproc)
    report.add(fit.kind, "--nproc", fit.message + (f" ({fit.hint})" if fit.hint else ""))


def _model(cfg: RunConfig, report: Report, offline: bool):
    """Check the base model without its weights; returns its tokenizer when it could be loaded cheaply."""
    from tunelab.model.loading import check_remote_code, load_tokenizer, resolve_model_path

    ref = cfg.model.ref
    name = cfg.model.name
    try:
        if ref.kind == "tiny":
            from tunelab.model.tiny import PRESETS

            if ref.preset not in PRESETS:
                report.add(
                    "problem",
                    "model.name",
                    f"unknown tiny preset {name!r} (known: {', '.join('tiny:' + p for p in PRESETS)})",
                )
                return None
            report.add("ok", "model.name", f"{name} (built locally on first use)")
            return None
        if ref.kind == "artifact":
            from tunelab.artifacts import Home
            from tunelab.artifacts.models import model_from_artifact

            art = model_from_artifact(name, Home.of(cfg))
            report.add("ok", "model.name", f"{name}: base {art.base}" + (", with its adapter" if art.adapter else ""))
            return None
        if ref.kind == "hub":
            return _hub_model(cfg, report, offline)
        from tunelab.artifacts.models import model_from_folder

        init = model_from_folder(name)  # a run directory or an adapter folder: continued (SFT, then DPO)
        if init is not None:
            report.add("ok", "model.name", f"{name}: continues {init.adapter} over {init.base}")
            return None
        path = resolve_model_path(name)
        check_remote_code(path, cfg.model.trust_remote_code)
        if not any((Path(path) / f).is_file() for f in TOKENIZER_FILES):
            report.add("problem", "model.name", f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES)})")
            return None
        chat = cfg.prompt.format == "messages"
        tokenizer = load_tokenizer(cfg.model, path, cfg.prompt.chat_template) if chat else None
        report.add("ok", "model.name", f"{path}: config, weights (safetensors) and tokenizer present")
        return tokenizer
    except TunelabError as e:
        report.add("problem", *_field_and_message(e, "model.name"))
        return None


def _hub_model(cfg: RunConfig, report: Report, offline: bool):
    from huggingface_hub import try_to_load_from_cache

    name, revision = cfg.model.name, cfg.model.revision
    cached = {f: try_to_load_from_cache(name, f, revision=revision) for f in ("config.json", "tokenizer_config.json")}
    have = [f for f, p in cached.items() if isinstance(p, str)]
    if offline:
        if len(have) == len(cached):
            report.add("ok", "model.name", f"{name}: config and tokenizer in the local hub cache (weights not checked)")
        else:
            report.add(
                "note",
                "model.name",
                f"{name}: not checked (offline, and not in the local hub cache); "
                "training needs the hub or a local folder",
            )
        return None
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=cfg.model.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - any hub failure is the user's to fix: say what it was
        report.add("problem", "model.name", f"cannot read the config of {name!r} from the hub: {_message(e)[:200]}")
        return None
    report.add("ok", "model.name", f"{name}: reachable on the hub (weights not checked)")
    return None


def _data(cfg: RunConfig, report: Report, offline: bool, tokenizer) -> None:
    from tunelab.data.prepare import load_splits

    hub_sources = [s for s in cfg.data.sources if s.ref.kind == "hub"]
    try:
        train, test, stats = load_splits(cfg)
    except TunelabError as e:
        if offline and hub_sources:
            report.add(
                "note",
                "data.train.path",
                f"{hub_sources[0].path}: not checked (offline, and not in the local datasets cache)",
            )
            return
        report.add("problem", *_field_and_message(e, "data.train.path"))
        return
    report.stats.update(stats)
    skipped = f", skipped {stats['rows_skipped']}" if stats["rows_skipped"] else ""
    report.add("ok", "data", f"{stats['train_rows']} train rows, {stats['test_rows']} test rows{skipped}")
    if tokenizer is not None and cfg.prompt.format == "messages":
        from tunelab.data.templates import render_segments
        from tunelab.data.tools import check_run_tools

        try:
            check_run_tools(cfg, tokenizer, train.rows, test.rows)
            for row in train.rows[:1] + test.rows[:1]:
                render_segments(row, cfg.prompt, tokenizer)
        except TunelabError as e:
            report.add("problem", *_field_and_message(e, "prompt.format"))


def _scorers(cfg: RunConfig, report: Report) -> None:
    from tunelab.errors import ConfigError
    from tunelab.scoring import config_scorers

    try:
        config_scorers(cfg.eval.scorers)
    except ConfigError as e:
        for line in e.problems:
            report.add("problem", *line.split(": ", 1))


def _outputs(cfg: RunConfig, report: Report, resume: bool) -> None:
    from tunelab.artifacts import tracking_dir
    from tunelab.cache import cache_root
    from tunelab.files import unwritable
    from tunelab.runs import RunDir

    targets = [
        ("output.dir", Path(cfg.output.dir)),
        ("data.cache_dir", Path(cfg.data.cache_dir) if cfg.data.cache_dir else cache_root("data")),
    ]
    if cfg.tracking.backends():
        targets.append(("tracking.dir", tracking_dir(cfg)))
    for name, path in targets:
        why = unwritable(path)
        if why:
            report.add("problem", name, f"cannot write {path}: {why}")
    run = RunDir(Path(cfg.output.dir) / (cfg.output.name or "run"))
    explicit = cfg.training.resume
    if explicit not in (False, None, "auto", True):
        p = Path(str(explicit)).expanduser()
        if not (p / "trainer_state.json").is_file():
            report.add(
                "problem",
                "training.resume",
                f"{p} is not a checkpoint (no trainer_state.json)" if p.exists() else f"{p} does not exist",
            )
    elif (resume or explicit == "auto") and run.latest_checkpoint() is None:
        report.add("problem", "training.resume", f"nothing to resume in {run.path}: no complete checkpoint")
    elif run.path.exists() and not resume and explicit is False:
        if not cfg.output.overwrite:
            report.add(
                "note", "output.name", f"{run.path} exists: train will refuse unless --resume or output.overwrite=true"
            )
        elif not run.is_tunelab_run():
            report.add("problem", "output.overwrite", f"{run.path} was not made by tunelab; it is never replaced")
