"""The rule for what we write: one check for every output path, as `confine` is for what we read.

An output is named on the command line (`rewrite --out` and `--plan-out`, `deploy --repo`,
`build-engine --out`, `publish --persistent-db`) or in a config (`persistent_db.path`, which
`publish --update` writes). Before anything is written, each is refused, in one line naming the
option and what to do, when it is:

- empty, the root folder, a symlink to nothing or a loop of links, a name too long to stage beside;
- an input of the command (the model, its external data, the plan, the rewrite folder, a table
  folder) or a folder that holds one at any depth: writing there would replace or mix into what
  is being read;
- a special file (a FIFO blocks, a device is no place for a file);
- for a database folder: a non-empty folder that is not a RocksDB database (RocksDB would mix its
  files into whatever is there), a file.

Whether a non-empty folder may be replaced (`--force`) stays with the command that replaces it.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

from .confine import file_kind
from .errors import SurgeonError, shown

#: room the staging folder's name needs beyond the output's own name: "." + ".tmp-" + 8 random characters
_STAGE_NAME_EXTRA = 16
_NAME_MAX = 255
#: every name RocksDB writes into its folder (db/filename.cc): what a database folder of ours may hold
_ROCKSDB_FILE = re.compile(r"CURRENT|IDENTITY|LOCK|LOG(\.old\.\d+)?|(MANIFEST|OPTIONS)-\d+(\.dbtmp)?|"
                           r"\d+\.(sst|ldb|log|blob|dbtmp)|\d+\.dbtmp")


def output_folder(out_dir: str | os.PathLike, option: str = "--out", inputs: Iterable[Path] = ()) -> Path:
    """`out_dir` as the absolute path of a folder to write, or SurgeonError naming `option`.

    A symlink to a folder stands for that folder. `inputs`: what the command reads (see the module).
    """
    path = _absolute(out_dir, option)
    if len(os.fsencode(path.name)) > _NAME_MAX - _STAGE_NAME_EXTRA:
        raise SurgeonError(f"{option} {path.name[:40]}...: the name is {len(os.fsencode(path.name))} bytes; names "
                           f"are at most {_NAME_MAX} bytes and the staging folder beside it adds "
                           f"{_STAGE_NAME_EXTRA} — choose a shorter name")
    try:
        if path.is_symlink():
            target = Path(os.path.realpath(path))
            if not target.exists():
                raise SurgeonError(f"{option} {path}: a symbolic link to nothing (or a loop of links); remove it "
                                   f"or {_fix(option)}")
            path = target
        mode = os.stat(path).st_mode if path.exists() else None
    except OSError as exc:
        raise SurgeonError(f"{option} {path}: cannot use it ({exc.strerror}); {_fix(option)}") from None
    if mode is not None and not stat.S_ISDIR(mode) and not stat.S_ISREG(mode):
        raise SurgeonError(f"{option} {path}: {file_kind(mode)}, not a folder; {_fix(option)}")
    _refuse_inputs(path, option, inputs)
    return path


def output_file(path: str | os.PathLike, option: str, inputs: Iterable[Path] = ()) -> Path:
    """`path` as the absolute path of a file to write (created or replaced), or SurgeonError naming `option`."""
    out = _absolute(path, option, "file")
    try:
        mode = os.stat(out).st_mode if os.path.lexists(out) else None
    except OSError as exc:  # a loop of links, a name too long
        raise SurgeonError(f"{option} {out}: cannot use it ({exc.strerror}); {_fix(option)}") from None
    if mode is not None and not stat.S_ISREG(mode):
        raise SurgeonError(f"{option} {out}: {file_kind(mode)}, not a file; name a file to write")
    _refuse_inputs(Path(os.path.realpath(out)), option, inputs)
    return out


def database_folder(path: str | os.PathLike, option: str, inputs: Iterable[Path] = (),
                    existing: bool = False) -> Path:
    """`path` as a RocksDB folder to write: absent (created; not with `existing`), empty, or a RocksDB
    database already; SurgeonError naming `option` otherwise."""
    folder = output_folder(path, option, inputs)
    try:
        present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else None
    except OSError as exc:
        raise SurgeonError(f"{option} {folder}: cannot use it ({exc.strerror}); {_fix(option)}") from None
    if folder.exists() and present is None:
        raise SurgeonError(f"{option} {folder}: a file, not a database folder; name a folder for RocksDB")
    if existing and not present:
        raise SurgeonError(f"{option} {folder}: no RocksDB database there; publish the tables first (hps-surgeon "
                           "publish DIR --persistent-db PATH)")
    foreign = [name for name in present or () if not _ROCKSDB_FILE.fullmatch(name)]
    if present and ("CURRENT" not in present or foreign):
        what = f"holds {shown(foreign[0])}" if foreign else "has no CURRENT file"
        raise SurgeonError(f"{option} {folder}: a non-empty folder that is not a RocksDB database ({what}); "
                           "RocksDB would mix its files into it — name an empty or new folder, or an existing "
                           "database")
    return folder


def _absolute(value: str | os.PathLike, option: str, what: str = "folder") -> Path:
    text = os.fspath(value)
    if not text:
        raise SurgeonError(f"{option} '': an empty path; name the output {what}")
    if "\0" in text:
        raise SurgeonError(f"{option} {shown(text)}: holds a NUL byte; name the output {what}")
    try:
        path = Path(os.path.abspath(text))
    except OSError as exc:  # a relative path while the working folder is gone
        raise SurgeonError(f"{option} {text}: cannot use it ({exc.strerror}); pass an absolute path") from None
    if path == Path(path.anchor) or Path(os.path.realpath(path)) == Path(path.anchor):
        raise SurgeonError(f"{option} {path}: the root folder cannot be an output; name a folder inside it")
    return path


def _refuse_inputs(path: Path, option: str, inputs: Iterable[Path]) -> None:
    real = Path(os.path.realpath(path))
    for source in inputs:
        source_real = Path(os.path.realpath(source))
        if source_real == real:
            raise SurgeonError(f"{option} {path}: is the input {source}; writing there would overwrite what is read — "
                               f"{_fix(option)}")
        if source_real.is_relative_to(real):
            raise SurgeonError(f"{option} {path}: holds the input {source}; writing there would replace or mix into "
                               f"what is read — {_fix(option)}")


def _fix(option: str) -> str:
    """What to do about a refused output: another option value, or (for a path named in a config,
    `option` "CONFIG: field") another field value."""
    return f"choose another {option}" if option.startswith("-") else f"change {option.rsplit(': ', 1)[-1]}"
