"""`python: package.module:function`: the user's own scorer, imported only when declared.

The function gets what every scorer gets, (prompt, answer, reference, row), and returns a number,
or None for a row it cannot score.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from contextlib import contextmanager
from typing import Literal

from pydantic import Field, field_validator

from tunelab.errors import TunelabError
from tunelab.scoring.registry import Kind, Params, register

FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class PythonParams(Params):
    function: str = Field(description="`package.module:function`, importable from the working directory.")
    direction: Literal[1, 0, -1] = Field(1, description="1: higher is better, -1: lower is better, 0: neither.")

    @field_validator("function")
    @classmethod
    def _module_colon_function(cls, v: str) -> str:
        if not FUNCTION.match(v):
            raise ValueError(f"{v!r} is not package.module:function")
        return v


@contextmanager
def _working_dir_on_path():
    """The `tunelab` script does not put the working directory on sys.path as `python -m` does;
    a scorer module next to the config should import either way."""
    added = os.getcwd() not in sys.path
    if added:
        sys.path.append(os.getcwd())
    try:
        yield
    finally:
        if added:
            sys.path.remove(os.getcwd())


def import_function(spec: str):
    """The function `spec` names; TunelabError naming the module or function that is missing."""
    module_name, _, name = spec.partition(":")
    try:
        with _working_dir_on_path():
            module = importlib.import_module(module_name)
    except SyntaxError as e:
        raise TunelabError(f"cannot import {module_name!r}: {e.filename}:{e.lineno}: {e.msg}") from None
    except Exception as e:  # a missing module, or the module's own code failing as it loads
        raise TunelabError(f"cannot import {module_name!r}: {type(e).__name__}: {e}") from None
    fn = getattr(module, name, None)
    if fn is None:
        raise TunelabError(f"module {module_name!r} has no {name!r}")
    if not callable(fn):
        raise TunelabError(f"{spec}: {type(fn).__name__} is not a function")
    return fn


def _python(p: PythonParams):
    fn = import_function(p.function)

    def score(prompt, answer, reference, row):
        try:
            return fn(prompt, answer, reference, row)
        except Exception as e:  # the user's code: said in one line, with where to look
            raise TunelabError(
                f"python scorer {p.function} raised {type(e).__name__}: {e}",
                hint="call it on one row in Python to see the traceback",
            ) from e

    return score


register(
    Kind(
        "python",
        1,
        "Your function `package.module:function`(prompt, answer, reference, row) -> number or None.",
        _python,
        PythonParams,
        shorthand="function",
    )
)
