"""HugeCTR's sparse-model table folder: `key` (int64 little-endian, one per row) and `emb_vector`
(float32 little-endian, row-major, emb_vec_size per key). Writing, summarising and checking it.

Table bytes are streamed: float32 tables stored externally are copied file-to-file by the kernel
(`copy_file_range`), others in bounded chunks, so memory stays flat whatever the table size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from onnx import TensorProto

from .. import confine
from ..errors import SurgeonError
from ..staging import copy_range, fsync

if TYPE_CHECKING:
    from ..load import TensorSource

KEY_FILE = "key"
VECTOR_FILE = "emb_vector"
_CHUNK_BYTES = 64 << 20
_INT32_MAX = 2**31 - 1
#: what `check` reads of each emb_vector to warn about NaN/Inf: its first rows, this many bytes
NAN_SAMPLE_BYTES = 64 << 10
#: keys HugeCTR's GPU cache reserves as its empty-slot marker, numeric_limits<key>::max()
#: (HugeCTR/include/hps/embedding_cache.hpp:83): uint32 0xFFFFFFFF (int32 keys, so key -1; stored
#: keys are cast to uint32, HugeCTR/src/hps/modelloader.cpp:120) and INT64_MAX (int64 keys).
HUGECTR_EMPTY_KEYS = {TensorProto.INT32: -1, TensorProto.INT64: 2**63 - 1}

Progress = Callable[[int], Any]


def mapped_keys(key_map: np.ndarray, rows: int) -> np.ndarray:
    """Keys a HugeCTR-style map sends to a real row: 0 means missing, rows past the table do not exist."""
    return np.flatnonzero((key_map > 0) & (key_map < rows)).astype(np.int64)


def own_key_counts(key_map: np.ndarray, rows: dict[int, int]) -> dict[int, tuple[int, int]] | None:
    """How many keys of a shared HugeCTR key map each table owns, as (fewest, most) possible.

    hugectr2onnx fills one map for all embeddings, numbering each table's keys 1..n in file order
    (HugeCTR's onnx_converter/hugectr2onnx/hugectr_loader.py:154, :226-237), so index i is taken by
    every table with n >= i: the drops of that count give the multiset of n, and each table's n must
    fit its rows (`rows`: table id -> rows of the ONNX table, row 0 being the default). None when the
    map is not in that layout or shared with tables not listed.
    """
    used = key_map[key_map > 0]
    if used.size and used.max() >= max(rows.values(), default=0):
        return None  # an index past every table's rows: not that layout (and no bincount of that size)
    per_index = np.bincount(used, minlength=2)[1:] if used.size else np.zeros(0, np.int64)
    if per_index.size == 0 or np.any(np.diff(per_index) > 0) or per_index[0] != len(rows):
        return None
    drops = -np.diff(np.append(per_index, 0))
    sizes = sorted(int(n) for n, times in zip(range(1, per_index.size + 1), drops) for _ in range(int(times)))
    possible: dict[int, list[int]] = {}
    for table, table_rows in rows.items():
        others = sorted(r for t, r in rows.items() if t != table)
        possible[table] = [n for i, n in enumerate(sizes) if i == sizes.index(n) and n < table_rows and
                           _fits(sizes[:i] + sizes[i + 1:], others)]
    if any(not p for p in possible.values()):
        return None
    return {t: (min(p), max(p)) for t, p in possible.items()}


def _fits(sizes: list[int], rows: list[int]) -> bool:
    """Sorted key counts fit sorted tables one to one (each n below its table's rows)."""
    return all(n < r for n, r in zip(sizes, rows))


def write_row_table(source: TensorSource, rows: int, dim: int, folder: Path, progress: Progress) -> None:
    """Key i = row i of `source`, for every row."""
    folder.mkdir(parents=True)
    with open(folder / KEY_FILE, "wb") as out:
        step = _CHUNK_BYTES // 8
        for start in range(0, rows, step):
            np.arange(start, min(start + step, rows), dtype="<i8").tofile(out)
            progress(min(step, rows - start) * 8)
        fsync(out)
    with open(folder / VECTOR_FILE, "wb") as out:
        if source.file is not None and source.data_type == TensorProto.FLOAT:
            copy_range(source.file, source.offset, rows * dim * 4, out, progress)
        else:
            step = max(1, _CHUNK_BYTES // (dim * 4))
            for start in range(0, rows, step):
                values = source.read_rows(start, min(start + step, rows))
                values.astype("<f4", copy=False).tofile(out)
                progress(values.nbytes)
        fsync(out)


def write_mapped_table(source: TensorSource, key_map: TensorSource, dim: int, folder: Path,
                       progress: Progress) -> None:
    """Key k with row key_map[k] of the table, for every key the map sends to a real row."""
    folder.mkdir(parents=True)
    mapping = key_map.read_all()
    keys = mapped_keys(mapping, source.shape[0])
    with open(folder / KEY_FILE, "wb") as out:
        keys.astype("<i8").tofile(out)
        fsync(out)
    step = max(1, _CHUNK_BYTES // (dim * 4))
    with open(folder / VECTOR_FILE, "wb") as out:
        for start in range(0, keys.size, step):
            values = source.read_row_indices(mapping[keys[start:start + step]])
            values.astype("<f4", copy=False).tofile(out)
            progress(values.nbytes)
        fsync(out)


def copy_table_folder(source: Path, folder: Path, progress: Progress) -> None:
    folder.mkdir(parents=True)
    for name in (KEY_FILE, VECTOR_FILE):
        with open(folder / name, "wb") as out:
            copy_range(source / name, 0, (source / name).stat().st_size, out, progress)
            fsync(out)


@dataclass(frozen=True)
class KeySummary:
    """What checks need to know of a `key` file: are its keys unique, and their span."""

    unique: bool
    low: int
    high: int
    reserved: frozenset[int] = frozenset()  #: which of HUGECTR_EMPTY_KEYS' keys the file holds


_KEY_CHUNK = 8 << 20  #: keys per read: 64 MiB, so memory stays flat whatever the table size


def key_summary(path: Path) -> KeySummary:
    """Summary of a HugeCTR `key` file (int64 little-endian), read in bounded chunks.

    Remembered per file version: verify and deploy validate a folder, then draw keys from the
    same files, and a 32 M-row table's keys are 256 MiB to read.
    """
    stat = Path(path).stat()
    return _key_summary(str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


@lru_cache(maxsize=256)
def _key_summary(path: str, _inode: int, size: int, _mtime_ns: int, _ctime_ns: int) -> KeySummary:
    keys = np.memmap(path, dtype="<i8", mode="r") if size else np.zeros(0, np.int64)
    if keys.size == 0:
        return KeySummary(True, 0, 0)
    increasing, previous, low, high = True, None, None, None
    reserved: set[int] = set()
    for start in range(0, keys.size, _KEY_CHUNK):
        chunk = np.asarray(keys[start:start + _KEY_CHUNK])
        reserved.update(int(k) for k in HUGECTR_EMPTY_KEYS.values() if np.any(chunk == k))
        increasing = increasing and bool(np.all(chunk[1:] > chunk[:-1])) and (
            previous is None or chunk[0] > previous)
        previous = chunk[-1]
        low = chunk.min() if low is None else min(low, chunk.min())
        high = chunk.max() if high is None else max(high, chunk.max())
    # Strictly increasing keys (what rewrite writes) are unique; sort only when they are not.
    unique = increasing or np.unique(np.asarray(keys)).size == keys.size
    return KeySummary(unique, int(low), int(high), frozenset(reserved))


class TableSizeError(SurgeonError):
    """A table folder's `key` and `emb_vector` sizes disagree (the message names the file and both counts)."""


def table_rows(key_file: Path, vector_file: Path, dim: int) -> int:
    """Rows of a table folder, from its file sizes: the one place they are checked against each other and
    `dim` (8 bytes per key, dim x 4 bytes per vector); TableSizeError otherwise."""
    key_bytes, vector_bytes = key_file.stat().st_size, vector_file.stat().st_size
    rows, extra = divmod(key_bytes, 8)
    if extra:
        raise TableSizeError(f"{key_file} has {key_bytes} bytes, not a whole number of int64 keys")
    if vector_bytes != rows * dim * 4:
        raise TableSizeError(f"{vector_file} has {vector_bytes} bytes, expected {rows} rows x {dim} x 4 = "
                             f"{rows * dim * 4}")
    return rows


def table_files(config_path: Path, folder: Path, field: str) -> tuple[Path, Path]:
    """Real paths of a table folder's `key` and `emb_vector`: regular files inside the config's folder or a
    trusted root (the confinement rule: a symlink in the folder may not lead elsewhere); `confine.PathRefused`
    if not."""
    key, vector = (confine.regular_file(Path(config_path), f"{field}/{name}", str(folder / name), trusted=True)
                   for name in (KEY_FILE, VECTOR_FILE))
    return key, vector


def check_table_files(config_path: Path, folder: Path, table_id: int, dim: int, key_type, bad) -> None:
    """Report through `bad(message[, severity])` what is wrong with a table folder: where its files lead,
    sizes, duplicate keys, int32 reach, keys HugeCTR would refuse or mishandle; a warning for NaN/Inf in
    its first NAN_SAMPLE_BYTES of vectors."""
    if not (folder / KEY_FILE).is_file() or not (folder / VECTOR_FILE).is_file():
        return  # reported against the config, which names the folder
    try:
        key_file, vector_file = table_files(config_path, folder, f"table {table_id}")
    except confine.PathRefused as exc:
        bad(f"{exc.field}: {exc.problem}")
        return
    try:
        rows = table_rows(key_file, vector_file, dim)
    except TableSizeError as exc:
        bad(f"table {table_id}: {exc} — the file is truncated or emb_vec_size is wrong; re-export the table")
        if key_file.stat().st_size % 8:
            return
        rows = key_file.stat().st_size // 8
    vector_bytes = vector_file.stat().st_size
    if rows == 0:
        bad(f"table {table_id}: {key_file} is empty: HugeCTR's HPS refuses it (\"embeddings key file is empty\", "
            "modelloader.cpp:143-145); our plugin returns the default value for every key", severity="warning")
    keys = key_summary(key_file)
    if not keys.unique:
        bad(f"table {table_id}: {key_file} holds duplicate keys — each key must appear once")
    if key_type is not None and key_type[0] == TensorProto.INT32 and (
            keys.high > _INT32_MAX or keys.low < -_INT32_MAX - 1):
        bad(f"table {table_id}: stored keys reach {keys.high}, beyond int32 keys of this node — "
            "rewrite with --key-dtype int64")
    sample = np.fromfile(vector_file, dtype="<f4", count=min(vector_bytes, NAN_SAMPLE_BYTES) // 4)
    if not np.isfinite(sample).all():
        bad(f"table {table_id}: {vector_file} holds NaN or infinite values in its first {sample.size // dim} rows "
            f"(check reads only the first {NAN_SAMPLE_BYTES >> 10} KiB of each table) — lookups of those keys "
            "return them; re-export the table", severity="warning")
    empty = HUGECTR_EMPTY_KEYS.get(key_type[0]) if key_type is not None else None
    if empty in keys.reserved:
        bad(f"table {table_id}: {key_file} stores key {empty}, which HugeCTR's GPU cache reserves as its empty-slot "
            "marker (include/hps/embedding_cache.hpp:83; its gpu_cache/ReadMe.md: never a real key); our plugin "
            "serves it — give the row another key for HugeCTR", severity="warning")
