"""Where a verb may write its output, and writing it so that a failure leaves nothing behind.

Every verb that writes a file or folder the user names (`merge`, `export`, `report`, `eval --out`,
`generate --out`, `tiny --out`, `synth --out`) asks `check_output` first, before anything slow starts.
It refuses the input the verb reads (or a folder inside it or around it), a run directory's own
folders, and anything already there that tunelab did not write as this same kind of output:
`--overwrite` replaces an earlier output, never the user's files or the source. The output is then
written under a staging name beside it (`staged_folder`, `staged_file`) and renamed into place;
on any failure the staging copy is removed and a write error (read-only, full disk, a file where a
folder should be, a name too long) becomes one line naming the output.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError, as_user_error, os_error
from tunelab.runs import RunDir
from tunelab.writability import unwritable

# Failed writes that are the user's to fix (where they pointed the output, or the disk they chose).
WRITE_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENAMETOOLONG,
    }
)
# Room a staging name (`.NAME.tmpPID`, `.NAME.oldPID`) needs beyond the output's own name.
_STAGING_EXTRA = 16
_NAME_MAX = 255


@dataclass(frozen=True)
class Output:
    """One kind of output a verb writes, and how tunelab recognizes an earlier one of the same kind.

    `folder`: the verb writes (and on --overwrite replaces) a whole folder; otherwise one file.
    `adds_files`: a folder the verb adds its files to (eval's results), never replacing the folder."""

    what: str  # "a model folder", "a tunelab report", ... as a message names it
    is_earlier: Callable[[Path], bool]  # whether this existing path is an earlier output of this kind
    folder: bool = False
    adds_files: bool = False


def check_output(
    path: str | Path,
    option: str,
    kind: Output,
    sources: Sequence[Path | None] = (),
    overwrite: bool = False,
    home: Path | None = None,
) -> Path:
    """The absolute output path, or a user error saying why the verb may not write there.

    `sources`: what the verb reads (a run, a model folder, a prompts file); the output may not be one, nor
    (a folder output) lie inside one or hold one. A file output may sit inside a source folder: as
    anywhere, it never replaces a file that is not its own earlier output. `overwrite`: an earlier output
    of this kind may be replaced. `home`: the folder the verb writes into by default (eval: the run
    directory), allowed as it is. Nothing is written, and no folder is created."""
    out = _resolved(path, option)
    _check_name(out, option)
    where = f"{option} {out}"
    if home is None or out != Path(home).expanduser().resolve():
        _check_sources(out, where, sources, kind)
        if kind.folder or kind.adds_files:
            _check_run_dirs(out, where)
        if out.exists() or out.is_symlink():
            _check_existing(out, where, option, kind, overwrite)
    why = unwritable(out if kind.adds_files else out.parent)
    if why is not None:
        raise TunelabError(f"{where}: cannot write there: {why}")
    return out


def _resolved(path: str | Path, what: str) -> Path:
    """`path` made absolute with its links followed; a link that loops is one line naming it."""
    try:
        return Path(path).expanduser().resolve()
    except (RuntimeError, OSError) as e:  # a loop: RuntimeError before Python 3.13, OSError (ELOOP) since
        if isinstance(e, OSError) and e.errno != errno.ELOOP:
            raise
        raise TunelabError(
            f"{what} {path}: a symbolic link that points back at itself", hint="remove the link or name a real path"
        ) from None


def _check_name(out: Path, option: str) -> None:
    """A name the file system refuses (or that leaves no room for the staging name) is said now, not mid-write."""
    for i, part in enumerate(out.parts):
        room = _NAME_MAX - (_STAGING_EXTRA if i == len(out.parts) - 1 else 0)
        if len(part.encode()) > room:
            raise TunelabError(
                f"{option} {Path(*out.parts[:i]) / part[:40]}...: name too long ({len(part.encode())} bytes)",
                hint=f"keep each name in the path under {room} bytes",
            )


def _check_sources(out: Path, where: str, sources: Sequence[Path | None], kind: Output) -> None:
    for src in sources:
        if src is None:
            continue
        s = _resolved(src, "the input")
        if out == s:
            why = "is the input this command reads"
        elif s in out.parents and (kind.folder or kind.adds_files):
            why = f"is inside the input this command reads ({s})"
        elif kind.folder and out in s.parents:
            why = f"holds the input this command reads ({s})"
        else:
            continue
        raise TunelabError(f"{where}: {why}; tunelab never writes over its input", hint="pick another output path")


def _check_run_dirs(out: Path, where: str) -> None:
    """A run directory's own folders (final/, checkpoints) are the run's: no other verb writes into them."""
    for folder in (out, *out.parents):
        if folder.is_dir() and RunDir(folder).is_tunelab_run():
            what = "is a run directory" if folder == out else f"is inside the run directory {folder}"
            raise TunelabError(
                f"{where}: {what}; only `tunelab train` writes there", hint="pick a folder outside the run"
            )


def _check_existing(out: Path, where: str, option: str, kind: Output, overwrite: bool) -> None:
    if out.is_symlink():
        raise TunelabError(f"{where}: is a link; tunelab does not write through links", hint="name the place itself")
    if kind.folder or kind.adds_files:
        if not out.is_dir():
            raise TunelabError(f"{where}: is a file, not a folder", hint="name a folder to write")
        if not any(out.iterdir()):
            return
    elif out.is_dir():
        raise TunelabError(f"{where}: is a folder", hint="name the file to write, e.g. a path inside that folder")
    if not kind.is_earlier(out):
        raise TunelabError(
            f"{where}: already exists and was not written by tunelab as {kind.what}; "
            "tunelab only replaces its own earlier output",
            hint="pick another output path",
        )
    if not overwrite:
        raise TunelabError(f"{where}: already exists ({kind.what})", hint=f"pass --overwrite or pick another {option}")


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """An empty folder beside `out` to write into; renamed to `out` (replacing what `check_output` allowed)
    when the block succeeds, removed when it fails. Write errors become user errors naming `out`."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    made: list[Path] = []
    try:
        made = _make_parents(out)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        yield tmp
        _swap_in(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(made)
        raise_write_error(e, out)
        raise


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; an earlier `out` is moved aside first and removed only once the new one is in place."""
    if not out.exists():
        tmp.rename(out)
        return
    old = out.with_name(f".{out.name}.old{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_file(out: Path) -> Iterator[Path]:
    """A temporary name beside `out` to write; renamed to `out` when the block succeeds, removed when it
    fails. Write errors become user errors naming `out`."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    made: list[Path] = []
    try:
        made = _make_parents(out)
        yield tmp
        tmp.replace(out)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        _remove_empty(made)
        raise_write_error(e, out)
        raise


def _make_parents(out: Path) -> list[Path]:
    """Create the folders missing above `out`; the ones created, outermost first (removed again on failure)."""
    missing = [p for p in reversed(out.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


def write_text(out: Path, text: str) -> Path:
    """`text` (UTF-8) as the whole of `out`, written under a temporary name and renamed."""
    with staged_file(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out


def raise_write_error(e: BaseException, out: Path) -> None:
    """Raise the user error a failed write of `out` stands for; return when it is a bug (or already a user error)."""
    if isinstance(e, TunelabError) or not isinstance(e, Exception):
        return
    err = write_error(e, out)
    if err is not None:
        raise err from None


def write_error(e: BaseException, out: Path) -> TunelabError | None:
    """One line for a failed write of `out`: out of space (with what is left), read-only, a file where a
    folder should be, a name too long; None when the failure is a bug."""
    if isinstance(e, TunelabError):
        return e
    code = _write_errno(e)
    if code is None and as_user_error(e) is not None:
        code = errno.ENOSPC  # a library's own words for a full disk (see tunelab.errors)
    if code is None:
        return None
    err = os_error(OSError(code, os.strerror(code)), out)
    if code in (errno.ENOSPC, errno.EDQUOT):
        err.hint = "free some space or write to another disk"
    return err


def _write_errno(e: BaseException) -> int | None:
    """The errno of a write failure in `e` or its causes, also from a library's text ("... (os error 28)")."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
            return e.errno
        m = re.search(r"os error (\d+)", str(e))
        if m and int(m.group(1)) in WRITE_ERRNOS:
            return int(m.group(1))
        e = e.__cause__ or e.__context__
    return None
