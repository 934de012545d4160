"""The confinement rule for paths named inside files: one rule, checked here, for every command.

A model's external-data `location`, an HPS config's `sparse_files` and the `key`/`emb_vector`
files under them are chosen by whoever wrote the file; for `check` in a pre-commit hook and for
`deploy` that may be anyone. So before any such path is read or copied, its real path (every
symlink followed) must lie inside the folder of the file that names it. An absolute path is
accepted when it resolves inside that folder. Anything else is refused, naming the file, the
field and the path, before a byte of it is read.
"""

from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path

from .errors import SurgeonError


class PathRefused(SurgeonError):
    """A path named in `file` at `field` breaks the rule; `problem` says how (and what to do)."""

    def __init__(self, file: Path, field: str, problem: str):
        self.file, self.field, self.problem = file, field, problem
        super().__init__(f"{file}: {field}: {problem}")


def inside(file: Path, field: str, value: object, root: Path | None = None, hint: str = "") -> Path:
    """The real path of `value` (relative to `file`'s folder, or absolute), if it lies inside `root`.

    `root` defaults to the folder of `file`. The path itself need not exist. `hint` ends the message
    of a path that leads outside.
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
    if not real.is_relative_to(root_real):
        raise PathRefused(file, field, f"{shown(value)} leads outside {root_real} (to {real}); refusing to read "
                                       f"it — keep what {file.name} names inside its folder{hint}")
    try:
        os.stat(real)
    except (FileNotFoundError, NotADirectoryError):
        pass  # absent: the caller says what it needed there
    except OSError as exc:  # a name too long, a loop of links: unusable whatever it is
        raise PathRefused(file, field, f"{shown(value)} cannot be used ({exc.strerror}); fix the path") from None
    return real


def regular_file(file: Path, field: str, value: object, root: Path | None = None) -> Path:
    """`inside`, and the path must be an existing regular file (not a folder, FIFO or device)."""
    real = inside(file, field, value, root)
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        raise PathRefused(file, field, f"{shown(value)} does not exist (looked for {real}); copy it there or "
                                       "fix the path") from None
    except OSError as exc:
        raise PathRefused(file, field, f"{shown(value)} cannot be opened ({exc.strerror}); fix the path") from None
    if not stat.S_ISREG(mode):
        raise PathRefused(file, field, f"{shown(value)} is {_kind(mode)}, not a regular file; fix the path")
    return real


def inside_posix(root: str, path: str) -> bool:
    """Whether the POSIX path `path` (as written into a deployed file) lies inside `root`."""
    root, path = posixpath.normpath(root), posixpath.normpath(path)
    return path != root and path.startswith(root.rstrip("/") + "/")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "a special file"


def shown(value: object) -> str:
    """`value` quoted for a one-line message."""
    # repr-like quoting that keeps NULs and control characters visible and the message on one line
    text = value if isinstance(value, str) else repr(value)
    return "'" + text.encode("unicode_escape").decode("ascii").replace("'", "\\'") + "'"
