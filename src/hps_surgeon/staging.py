"""Writing outputs safely: a staging folder moved into place whole, fsynced files, streamed copies.

`rewrite` (export) and `deploy` write everything into a folder beside the destination and move it
into place only when complete, so a failure never leaves a half-written output.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import SurgeonError

_COPY_CHUNK = 256 << 20


@contextlib.contextmanager
def staged_output(out_dir: Path, force: bool) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces `out_dir`, on error it is removed."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SurgeonError(f"{out_dir}: exists and is not a folder; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise SurgeonError(f"{out_dir}: folder is not empty; pass --force to replace it or choose another --out")
    stage = make_stage(out_dir, "tmp", f"{out_dir}: cannot write there ({{reason}}); choose a writable --out")
    try:
        yield stage
        _replace(out_dir, stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def check_spares(out_dir: Path, source: Path) -> None:
    """Refuse an output folder that holds `source`: --force replaces the whole folder."""
    if source.absolute().resolve().is_relative_to(Path(out_dir).absolute().resolve()):
        raise SurgeonError(f"{out_dir}: holds the source model {source}; choose another --out (--force would "
                           "delete the source)")


def make_stage(target: Path, kind: str, error: str) -> Path:
    """An empty folder beside `target` (same filesystem, so the final move is a rename).

    `error` is the message raised when that is impossible; `{reason}` stands for the OS's reason.
    """
    parent = target.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.{kind}-", dir=parent))
    except OSError as exc:
        raise SurgeonError(error.format(reason=exc.strerror)) from None
    stage.chmod(0o755)  # mkdtemp makes 0700; a server reading the output may run as another user
    return stage


def _replace(out_dir: Path, stage: Path) -> None:
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=stage.parent))
        os.rename(out_dir, old / "content")
    os.rename(stage, out_dir)
    fsync_dir(out_dir.absolute().parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def copy_range(src: Path, offset: int, length: int, out, progress: Callable[[int], Any] = lambda n: None) -> None:
    """Copy bytes [offset, offset + length) of `src` to the open file `out`, kernel to kernel when it can."""
    with open(src, "rb") as f:
        done = 0
        while done < length:
            count = min(_COPY_CHUNK, length - done)
            try:
                copied = os.copy_file_range(f.fileno(), out.fileno(), count, offset + done)
            except OSError:  # e.g. filesystems that cannot: fall back to plain reads and writes
                copied = out.write(os.pread(f.fileno(), count, offset + done))
            if copied <= 0:
                raise SurgeonError(f"{src}: ended early while copying table bytes at offset {offset + done}")
            done += copied
            progress(copied)


def write_json(path: Path, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        fsync(f)


def fsync(f) -> None:
    f.flush()
    os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
