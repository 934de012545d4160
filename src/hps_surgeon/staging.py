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
    """Yield an empty staging folder; on success it replaces `out_dir` (an `outputs.output_folder`), on
    error it is removed."""
    try:
        if out_dir.exists() and not out_dir.is_dir():
            raise SurgeonError(f"{out_dir}: exists and is not a folder; choose another --out")
        if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
            raise SurgeonError(f"{out_dir}: folder is not empty; pass --force to replace it or choose another --out")
    except OSError as exc:
        raise SurgeonError(f"{out_dir}: cannot use it ({exc.strerror}); choose another --out") from None
    stage = make_stage(out_dir, "tmp", f"{out_dir}: cannot write there ({{reason}}); choose a writable --out")
    try:
        yield stage
        _replace(out_dir, stage)
    except OSError as exc:  # e.g. the disk filled up while writing tables
        shutil.rmtree(stage, ignore_errors=True)
        where = f" ({exc.filename})" if exc.filename else ""
        raise SurgeonError(f"{out_dir}: writing the output failed: {exc.strerror}{where}; nothing was written — "
                           "free space or choose another --out") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


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
    try:
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=stage.parent))
            os.rename(out_dir, old / "content")
        os.rename(stage, out_dir)
    except OSError as exc:
        if old is not None:  # put the previous output back: a failed run changes nothing
            with contextlib.suppress(OSError):
                os.rename(old / "content", out_dir)
            if not (old / "content").exists():
                shutil.rmtree(old, ignore_errors=True)
        raise SurgeonError(f"{out_dir}: cannot move the output into place ({exc.strerror}); choose another "
                           "--out") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(out_dir.parent)


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


def replace_file(path: Path, data: bytes, error: str | None = None) -> None:
    """Replace the file `path` with `data` atomically: a temporary file beside it, fsynced, renamed.

    Missing parent folders are made. `error` (with `{reason}`) is the message raised when no
    temporary file can be made there; without it the OS's error propagates.
    """
    try:
        path.absolute().parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.absolute().parent)
    except OSError as exc:
        if error is None:
            raise
        raise SurgeonError(error.format(reason=exc.strerror)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            fsync(f)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a server reading it may run as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.absolute().parent)


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
