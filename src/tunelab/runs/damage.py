"""Run files that no longer read as tunelab wrote them: a summary.json cut short, a config.yaml
edited by hand into another shape, a number where a list belongs.

A missing file is not damage (a run may still be training, or was never evaluated). A file that is
there but cannot be what tunelab wrote is: the readers here raise `DamagedRun`, one line naming the
file and what is wrong, and the commands that list runs skip such a run with that line as a note.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

# The config sections every reader of a saved config.yaml takes to be mappings.
CONFIG_SECTIONS = ("model", "quantization", "adapter", "data", "prompt", "training", "preference", "output")


class DamagedRun(TunelabError):
    """A run file that exists but is not what tunelab wrote: `damaged run: FILE: what is wrong`."""

    def __init__(self, path: str | Path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(
            f"damaged run: {self.path}: {problem}",
            hint=f"restore {self.path.name} or move the run directory away; tunelab changed nothing in it",
        )


def read_json_record(path: str | Path) -> dict[str, Any] | None:
    """The JSON object at `path`; None when there is no file; `DamagedRun` when it is not one."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        raw = p.read_bytes()
        if not raw.strip():
            raise DamagedRun(p, "empty (a write cut short)")
        data = json.loads(raw)
    except OSError as e:
        raise DamagedRun(p, f"cannot read it ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise DamagedRun(p, f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError:
        raise DamagedRun(p, "not UTF-8 text") from None
    except RecursionError:
        raise DamagedRun(p, "JSON nested too deeply") from None
    except ValueError as e:  # an integer past Python's digit limit for int()
        raise DamagedRun(p, f"unreadable number ({e})") from None
    if not isinstance(data, dict):
        raise DamagedRun(p, f"holds a JSON {type(data).__name__}, not an object")
    return data


def read_config_record(path: str | Path) -> dict[str, Any] | None:
    """A run's saved config.yaml as a mapping whose sections are mappings; None when there is none."""
    import yaml

    p = Path(path)
    if not p.is_file():
        return None
    try:
        data = yaml.safe_load(p.read_bytes().decode("utf-8"))
    except OSError as e:
        raise DamagedRun(p, f"cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise DamagedRun(p, "not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise DamagedRun(p, f"not valid YAML{where}") from None
    except RecursionError:
        raise DamagedRun(p, "YAML nested too deeply") from None
    except ValueError as e:
        raise DamagedRun(p, f"unreadable number ({e})") from None
    if not isinstance(data, dict):
        raise DamagedRun(p, "not a mapping of config sections")
    for name in CONFIG_SECTIONS:
        if name in data and not isinstance(data[name], dict | None):
            raise DamagedRun(p, f"{name}: a {type(data[name]).__name__} where a mapping of settings belongs")
    return data


def validation_problem(err: Exception) -> str:
    """The first field error of a pydantic ValidationError, as `field: message (got VALUE)`."""
    first = err.errors()[0]  # type: ignore[attr-defined]
    field = ".".join(str(p) for p in first["loc"]) or "(record)"
    got = first.get("input")
    shown = "" if isinstance(got, dict | list) else f" (got {_short(got)})"
    return f"{field}: {first['msg']}{shown}"


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "a huge integer"
    return text if len(text) <= 40 else text[:37] + "..."


def safetensors_problem(path: str | Path) -> str | None:
    """What keeps a .safetensors file from loading (cut short, not safetensors at all), or None.

    Reads the 8-byte length and the JSON header only, so it is cheap on a large file; the libraries
    would otherwise fail deep inside a load with `header too large` or a short read."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with p.open("rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or n > size - 8:
                return "not a safetensors file (its header length does not fit the file; cut short or overwritten)"
            header = json.loads(f.read(n))
    except OSError as e:
        return f"cannot read it ({e.strerror or e})"
    except (ValueError, RecursionError):
        return "not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return "not a safetensors file (its header is not a JSON object)"
    ends = [
        t["data_offsets"][1]
        for k, t in header.items()
        if k != "__metadata__" and isinstance(t, dict) and isinstance(t.get("data_offsets"), list) and t["data_offsets"]
    ]
    if len(ends) != len(header) - ("__metadata__" in header) or not all(isinstance(e, int) for e in ends):
        return "not a safetensors file (a tensor entry without data offsets)"
    if ends and max(ends) > size - 8 - n:
        return f"cut short ({size:,} bytes; its tensors need {8 + n + max(ends):,})"
    return None
