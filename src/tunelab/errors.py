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


class Interrupted(TunelabError):
    """A run stopped by Ctrl-C or SIGTERM after saving what it could; exits 130 / 143 like the signal would."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = 130):
        super().__init__(message, hint)
        self.exit_code = exit_code


def os_error(e: OSError, path: object = None, needed_bytes: int | None = None) -> TunelabError:
    """A one-line user error for a failed write: out of space (with what is left), read-only, missing folder."""
    import errno
    import shutil
    from pathlib import Path

    where = Path(str(path or getattr(e, "filename", None) or "."))
    if e.errno == errno.ENOSPC:
        probe = where
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            free = shutil.disk_usage(probe).free
        except OSError:
            free = None
        need = f"{_mb(needed_bytes)} needed, " if needed_bytes else ""
        left = f"{_mb(free)} left" if free is not None else "space left unknown"
        return TunelabError(
            f"out of disk space writing {where} ({need}{left})",
            hint="free some space or point output.dir / data.cache_dir / tracking.dir at another disk",
        )
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return TunelabError(f"cannot write {where}: {e.strerror.lower() if e.strerror else 'permission denied'}")
    return TunelabError(f"cannot write {where}: {e.strerror or e}")


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:,.1f} MB"


# Messages libraries raise (as RuntimeError and the like) when a write hits a full disk.
_DISK_FULL = ("no space left", "storagefull", "file write failed", "errno 28", "disk quota exceeded")


def as_user_error(e: BaseException, where: object = None) -> TunelabError | None:
    """The user error an exception from a library stands for (a full disk, a read-only folder), or None for a bug.
    `where`: what was being written, named when the exception names no path itself."""
    import errno

    if isinstance(e, TunelabError):
        return e
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS):
        return os_error(e, getattr(e, "filename", None) or where)
    text = str(e).lower()
    if any(m in text for m in _DISK_FULL):
        return os_error(OSError(errno.ENOSPC, "No space left on device"), _path_in(str(e)) or where)
    cause = e.__cause__ or e.__context__
    return as_user_error(cause, where) if isinstance(cause, BaseException) and cause is not e else None


def _path_in(text: str) -> str | None:
    """An absolute path in a library's message (not the "/O" of "I/O error")."""
    import re

    m = re.search(r"(?:^|[\s'\"(:=])(/[^\s'\"]+)", text)
    return m.group(1) if m else None
