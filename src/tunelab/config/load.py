"""Build a `RunConfig` from YAML plus dotted overrides; save it back with secrets redacted."""

from __future__ import annotations

import difflib
import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunelab.config.schema import RunConfig
from tunelab.errors import ConfigError

_SECRET_ENV = re.compile(r"(TOKEN|_KEY|SECRET|PASSWORD)$", re.IGNORECASE)
_URI_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<cred>[^/@\s]+)@", re.IGNORECASE)
REDACTED = "***"
# names people bring from other tools (the tutorial's TRL / PEFT arguments) -> ours
_ALIASES = {
    "lr": "learning_rate",
    "max_seq_length": "max_length",
    "seq_len": "max_length",
    "lora_r": "r",
    "rank": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "lr_scheduler_type": "lr_scheduler",
    "warmup": "warmup_ratio",
    "load_in_4bit": "bits",
    "bnb_4bit_quant_type": "quant_type",
    "bnb_4bit_use_double_quant": "double_quant",
    "model_name": "name",
}


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning I/O and syntax problems into one-line errors."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError([f"{p}: is a directory, not a config file"])
    if not p.is_file():
        raise ConfigError([f"config file not found: {p}"])
    try:
        text = p.read_bytes().decode("utf-8-sig")  # a BOM (Windows editors) is not part of the YAML
    except UnicodeDecodeError as e:
        line = p.read_bytes()[: e.start].count(b"\n") + 1
        raise ConfigError([f"{p}:{line}: not UTF-8 text (byte {e.object[e.start]:#04x})"]) from None
    except OSError as e:
        raise ConfigError([f"{p}: cannot read it ({e.strerror})"]) from None
    data = parse_yaml(text, str(p))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{p}: the top level must be a mapping of sections (model:, data:, ...)"])
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """`adapter.r=16` -> (['adapter', 'r'], 16). Values are parsed as YAML scalars / lists."""
    if "=" not in text:
        raise ConfigError([f"override {text!r}: expected KEY=VALUE with a dotted key, e.g. adapter.r=16"])
    key, raw = text.split("=", 1)
    parts = [k for k in key.strip().split(".") if k]
    if not parts:
        raise ConfigError([f"override {text!r}: empty key"])
    try:
        value = parse_yaml(raw, f"override {key.strip()}", numbered=False) if raw.strip() else None
    except ConfigError as e:
        if not isinstance(e.__context__, yaml.YAMLError):
            raise
        value = raw  # not YAML: the text itself (a template with braces, a path with colons)
    return parts, value


def parse_yaml(text: str, where: str, numbered: bool = True) -> Any:
    """YAML text as data; a ConfigError naming `where` (and, when `numbered`, the line) for invalid
    YAML, nesting past Python's recursion limit, or an integer past Python's digit limit for int()."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"{where}:{mark.line + 1}" if mark and numbered else where
        raise ConfigError([f"{at}: invalid YAML: {getattr(e, 'problem', e)}"]) from e
    except RecursionError:
        raise ConfigError([f"{where}: nested too deeply to read"]) from None
    except ValueError:
        import sys

        limit = sys.get_int_max_str_digits()
        m = re.search(rf"[0-9_]{{{limit + 1},}}", text)
        at = f"{where}:{text.count(chr(10), 0, m.start()) + 1}" if m and numbered else where
        raise ConfigError([f"{at}: a number of more than {limit:,} digits; no setting takes one"]) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for k in parts[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[parts[-1]] = value
    return data


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at the parent of `loc`, for 'did you mean' hints."""
    current: Any = model
    for part in loc[:-1]:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def format_validation_error(err: ValidationError, model: type[BaseModel] = RunConfig) -> list[str]:
    problems = []
    errors = err.errors()
    for e in errors:
        if _lost_union_member(e, errors):
            continue
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-after")))
        # pydantic adds the tried union member (e.g. 'list[str]', 'literal[...]') to the location; drop it
        loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in {"str", "int", "float", "bool"})))
        field = ".".join(str(p) for p in loc) or "(config)"
        if e["type"] == "extra_forbidden":
            known = _fields_at(model, loc)
            alias = _ALIASES.get(str(loc[-1]))
            close = [alias] if alias in known else difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.5)
            hint = f"; did you mean {'.'.join(map(str, loc[:-1] + (close[0],)))}?" if close else ""
            valid = f" (valid: {', '.join(known)})" if known and not close else ""
            problems.append(f"{field}: unknown key{hint}{valid}")
        elif e["type"] == "missing":
            problems.append(f"{field}: required but missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            shown = "" if isinstance(got, dict | list) or got is None else f" (got {_shown(got)})"
            problems.append(f"{field}: {msg}{shown}")
    # union members each report the same field; keep the first message per field
    seen, unique = set(), []
    for p in problems:
        key = p.split(":", 1)[0]
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _lost_union_member(e: dict, errors: list[dict]) -> bool:
    """A union member's "not a mapping" error when another member got further (`data.train` as one
    source, when it is a list of sources with a bad field): the deeper error is the one to show."""
    if e["type"] not in ("model_type", "dict_type", "list_type"):
        return False
    prefix = e["loc"][:-1]
    return any(o is not e and o["loc"][: len(prefix)] == prefix and len(o["loc"]) > len(e["loc"]) for o in errors)


def _shown(value: Any) -> str:
    """A rejected value for a one-line message: at most 60 characters (a 300-character name, a
    3,000-digit number would otherwise fill the screen)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:50]}... ({len(text)} characters)"


def key_problem(key: str) -> str | None:
    """Why `key` (dotted) names no setting of the run config, or None when it does."""
    model: type[BaseModel] = RunConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        here = ".".join(parts[: i + 1])
        fields = model.model_fields
        if part not in fields:
            alias = _ALIASES.get(part)
            close = [alias] if alias in fields else difflib.get_close_matches(part, list(fields), n=1, cutoff=0.5)
            prefix = ".".join(parts[:i])
            hint = f"; did you mean {(prefix + '.' if prefix else '') + close[0]}?" if close else ""
            return f"no config setting {here}{hint}"
        ann = fields[part].annotation
        members = (ann, *typing.get_args(ann))
        sub = next((m for m in members if isinstance(m, type) and issubclass(m, BaseModel)), None)
        if i == len(parts) - 1:
            return None
        if sub is None:
            if any(typing.get_origin(m) is dict or m is dict for m in members):
                return None  # a mapping such as data.field_map takes any key
            return f"{here} is a value, it has no setting {parts[i + 1]!r}"
        model = sub
    return None


def build_config(data: dict[str, Any], source: str | None = None) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e), source=source) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML run config, apply dotted overrides, validate everything at once."""
    data = apply_overrides(read_yaml(path), list(overrides or []))
    cfg = build_config(data, source=str(path))
    if cfg.output.name is None:
        cfg.output.name = default_run_name(Path(path))
    anchor_paths(cfg, Path(path).resolve().parent)
    return cfg


def default_run_name(config_path: Path) -> str:
    """The config file's stem as a run name: characters a folder name cannot carry become '-'."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", config_path.stem).strip("-.")
    return name or "run"


def anchor_paths(cfg: RunConfig, base: Path) -> None:
    """Make relative local paths absolute: data files, a local model folder, output and tracking dirs.

    A relative path is looked up from the working directory first, then from the config file's
    folder (`base`). Anchoring it here, once, means the saved run config names the same files from
    wherever it is loaded again (`tunelab eval RUN_DIR`). Hub ids, artifact references and
    `synthetic:` / `tiny:` names match no local file and stay as they are.
    """

    def anchored(text: str) -> str:
        p = Path(text).expanduser()
        if p.is_absolute():
            return str(p)
        for candidate in (Path.cwd() / p, base / p):
            if candidate.exists():
                return str(candidate.resolve())
        return text

    for src in cfg.data.sources:
        src.path = anchored(src.path)
    cfg.model.name = anchored(cfg.model.name)
    if cfg.prompt.chat_template is not None and not cfg.prompt.chat_template.isidentifier():
        cfg.prompt.chat_template = anchored(cfg.prompt.chat_template)  # a file; built-in names are identifiers
    # Where runs and tracker files go is relative to the working directory (as `runs/` in the
    # quickstart): made absolute here, a saved run config finds its own artifact store from anywhere.
    for section in (cfg.output, cfg.tracking):
        if section.dir is not None and "://" not in section.dir:
            section.dir = str(Path(section.dir).expanduser().absolute())


def redact(obj: Any, _secrets: list[str] | None = None) -> Any:
    """Replace secret values: credentials in URIs and the values of secret environment variables.

    Values are matched, not key names: a config entry such as `data.field_map: {q_key: instruction}`
    is data, and redacting it by its name would break the saved config.
    """
    secrets = secret_env_values() if _secrets is None else _secrets  # read the environment once per call tree
    if isinstance(obj, dict):
        return {k: redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v, secrets) for v in obj]
    if isinstance(obj, str):
        text = _URI_CREDENTIALS.sub(lambda m: f"{m['scheme']}{REDACTED}@", obj)
        for secret in secrets:
            text = text.replace(secret, REDACTED)
        return text
    return obj


def secret_env_values() -> list[str]:
    """Values of environment variables that hold secrets (*_TOKEN, *_KEY, *_SECRET, *_PASSWORD)."""
    return [v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= 6]


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return redact(cfg.model_dump(mode="json"))


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config (secrets redacted); loadable again with `load_config`."""
    p = Path(path)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True), encoding="utf-8")
    tmp.replace(p)
