"""User-facing errors.

A `TunelabError` is a mistake in the user's input (config, data, paths): the CLI prints its message
on one line (plus an optional hint) and exits with code 2. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class TunelabError(Exception):
    """A user error: one line saying what and where, and an optional hint."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class ConfigError(TunelabError):
    """One or more config problems, each a line naming the field."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        head = f"{len(problems)} config problem{'s' if len(problems) != 1 else ''}{where}:"
        super().__init__(head + "\n" + "\n".join(f"  - {p}" for p in problems))


class DataError(TunelabError):
    """A problem with training or test data, located as file:line or source:row."""
