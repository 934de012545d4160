"""The confinement rule for paths named inside files: one rule, checked here, for every command.

A model's external-data `location`, an HPS config's `sparse_files` and the `key`/`emb_vector`
files under them are chosen by whoever wrote the file; for `check` in a pre-commit hook and for
`deploy` that may be anyone. So before any such path is read or copied, its real path (every
symlink followed) must lie inside the folder of the file that names it. An absolute path is
accepted when it resolves inside that folder. Anything else is refused, naming the file, the
field and the path, before a byte of it is read.

Trusted roots are the opt-in for deployments that keep tables on another volume, as HugeCTR's own
examples do (`/data/embeddings/...`): `--allow-path DIR` (check, verify, publish, deploy; through
`trusting`) and $HPS_SURGEON_ALLOW_PATH (folders separated by ':', for a pre-commit hook's
environment) name folders whose tables a config may also name (`sparse_files` and the `key` /
`emb_vector` under them: `trusted=True`). Nothing is trusted by default.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path

from .errors import SurgeonError, shown


class PathRefused(SurgeonError):
    """A path named in `file` at `field` breaks the rule; `problem` says how (and what to do)."""

    def __init__(self, file: Path, field: str, problem: str):
        self.file, self.field, self.problem = file, field, problem
        super().__init__(f"{file}: {field}: {problem}")


#: folders a user trusts for tables, besides those of --allow-path: separated by os.pathsep (':')
ALLOW_ENV = "HPS_SURGEON_ALLOW_PATH"
_trusted: ContextVar[tuple[Path, ...] | None] = ContextVar("trusted_roots", default=None)


@contextlib.contextmanager
def trusting(folders: Iterable[str | os.PathLike]) -> Iterator[tuple[Path, ...]]:
    """Within the block, tables may also lie in `folders` and $HPS_SURGEON_ALLOW_PATH's (existing folders,
    checked here: SurgeonError naming the option otherwise)."""
    roots = tuple(_trusted_root(folder, "--allow-path") for folder in folders) + _environment_roots()
    token = _trusted.set(roots)
    try:
        yield roots
    finally:
        _trusted.reset(token)


def trusted_roots() -> tuple[Path, ...]:
    """The folders trusted now: `trusting`'s, else $HPS_SURGEON_ALLOW_PATH's."""
    roots = _trusted.get()
    return roots if roots is not None else _environment_roots()


def _environment_roots() -> tuple[Path, ...]:
    named = [p for p in os.environ.get(ALLOW_ENV, "").split(os.pathsep) if p]
    return tuple(_trusted_root(p, f"${ALLOW_ENV}") for p in named)


def _trusted_root(folder: str | os.PathLike, option: str) -> Path:
    text = os.fspath(folder)
    if "\0" in text:
        raise SurgeonError(f"{option} {shown(text)}: holds a NUL byte; name a folder")
    real = Path(os.path.realpath(text))
    if not real.is_dir():
        raise SurgeonError(f"{option} {shown(text)}: not a folder (resolves to {real}); name the folder that holds "
                           "the tables")
    if real == Path(real.anchor):
        raise SurgeonError(f"{option} {shown(text)}: the root folder would trust every path; name the folder that "
                           "holds the tables")
    return real


def inside(file: Path, field: str, value: object, root: Path | None = None, hint: str = "",
           trusted: bool = False, verb: str = "read") -> Path:
    """The real path of `value` (relative to `file`'s folder, or absolute), if it lies inside `root`.

    `root` defaults to the folder of `file`; with `trusted`, a path inside a trusted root
    (`trusted_roots`) is accepted too. The path itself need not exist. `hint` ends the message of a
    path that leads outside; `verb` says what would be done there.
    """
    folder = Path(os.path.abspath(file)).parent
    root_real = Path(os.path.realpath(root if root is not None else folder))
    if not isinstance(value, str) or not value:
        raise PathRefused(file, field, f"{shown(value)} is not a path; name a file inside {root_real}")
    if "\0" in value:
        raise PathRefused(file, field, f"{shown(value)} holds a NUL byte; name a file inside {root_real}")
    real = Path(os.path.realpath(folder / value))
    if real == root_real:
        raise PathRefused(file, field, f"{shown(value)} is the folder {root_real} itself; name a file inside it")
    roots = trusted_roots() if trusted else ()
    if not real.is_relative_to(root_real) and not any(real.is_relative_to(r) for r in roots):
        also = f" or in a folder trusted with --allow-path ({', '.join(map(str, roots))})" if roots else ""
        opt_in = "; if you own the folder that holds it, trust it with --allow-path DIR" if trusted and not roots \
            else ""
        raise PathRefused(file, field, f"{shown(value)} leads outside {root_real}{also} (to {real}); refusing to "
                                       f"{verb} it — keep what {file.name} names inside its folder{hint}{opt_in}")
    try:
        os.stat(real)
    except (FileNotFoundError, NotADirectoryError):
        pass  # absent: the caller says what it needed there
    except OSError as exc:  # a name too long, a loop of links: unusable whatever it is
        raise PathRefused(file, field, f"{shown(value)} cannot be used ({exc.strerror}); fix the path") from None
    return real


def regular_file(file: Path, field: str, value: object, root: Path | None = None, trusted: bool = False) -> Path:
    """`inside`, and the path must be an existing regular file (not a folder, FIFO or device)."""
    real = inside(file, field, value, root, trusted=trusted)
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        raise PathRefused(file, field, f"{shown(value)} does not exist (looked for {real}); copy it there or "
                                       "fix the path") from None
    except OSError as exc:
        raise PathRefused(file, field, f"{shown(value)} cannot be opened ({exc.strerror}); fix the path") from None
    if not stat.S_ISREG(mode):
        raise PathRefused(file, field, f"{shown(value)} is {file_kind(mode)}, not a regular file; fix the path")
    return real


def inside_posix(root: str, path: str) -> bool:
    """Whether the POSIX path `path` (as written into a deployed file) lies inside `root`."""
    root, path = posixpath.normpath(root), posixpath.normpath(path)
    return path != root and path.startswith(root.rstrip("/") + "/")


def file_kind(mode: int) -> str:
    """'a folder', 'a FIFO', ... for messages about what a path is instead of a regular file."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "a special file"
