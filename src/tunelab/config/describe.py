"""The config's own documentation: every field's dotted key, type, default and description, read
from the pydantic models (what `tunelab config` prints)."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) if not isinstance(a, str) else a for a in typing.get_args(annotation))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _section(annotation: Any) -> type[BaseModel] | None:
    for a in (annotation, *typing.get_args(annotation)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def describe_fields(model: type[BaseModel], prefix: str = "") -> list[list[str]]:
    """[key, type, default, description] for every leaf field, sections expanded."""
    rows: list[list[str]] = []
    for name, f in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = _section(f.annotation)
        if sub is not None:
            rows += describe_fields(sub, key + ".")
            continue
        if f.default is not PydanticUndefined:
            default = "null" if f.default is None else repr(f.default) if not isinstance(f.default, str) else f.default
        elif f.default_factory is not None:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        rows.append([key, _type_name(f.annotation), default, f.description or ""])
    return rows
