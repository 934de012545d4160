"""ctypes binding of ``libhps_storage.so`` (``plugin/include/hps_plugin/hps_storage.h``).

HugeCTR's database layout is implemented once, in C++ (``plugin/src/storage/``); this module only
moves arrays across. Library search order: ``$HPS_SURGEON_STORAGE_LIB``, then
``build/plugin/libhps_storage.so`` in this source tree, then ``/usr/local/hps_trt/lib``.
"""

from __future__ import annotations

import ctypes
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Self

import numpy as np

from hps_surgeon._native_lib import NativeLibrary, Signatures
from hps_surgeon.errors import SurgeonError

ENV_LIBRARY = "HPS_SURGEON_STORAGE_LIB"

OK, CONFIG, DATABASE, CANCELLED = 0, 2, 7, 8
#: key status after fetch (hps_storage.h HPS_KEY_*).
FOUND, MISSING, UNAVAILABLE, CORRUPT = 0, 1, 2, 3


class StorageUnavailableError(SurgeonError):
    """libhps_storage.so cannot be found or loaded."""


class StorageError(SurgeonError):
    """A storage call failed; ``code`` is its hps_status (2 config, 7 database, 8 cancelled)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


_PROGRESS = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)


class TierStats(ctypes.Structure):
    """Counters of a table's database tiers (hps_tier_stats_t)."""

    _fields_ = [(name, ctypes.c_uint64) for name in
                ("volatile_hits", "persistent_hits", "defaults", "unavailable", "corrupt", "elevated")]

    def as_dict(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name, _ in self._fields_}


def _signatures() -> Signatures:
    vp, i32, i64, cp = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_char_p
    p_i64, p_vp = ctypes.POINTER(i64), ctypes.POINTER(vp)
    return {
        "hps_storage_last_error": ([], cp),
        "hps_db_open": ([cp, cp, i32, p_vp], i32),
        "hps_db_open_config": ([cp, cp, p_vp], i32),
        "hps_db_close": ([vp], i32),
        "hps_db_publish": ([vp, cp, cp, i32, i64, i64, i64, _PROGRESS, vp, p_i64, p_i64], i32),
        "hps_db_insert": ([vp, cp, vp, i64, vp, i32], i32),
        "hps_db_fetch": ([vp, cp, vp, i64, i32, vp, vp], i32),
        "hps_db_evict": ([vp, cp, vp, i64, p_i64], i32),
        "hps_db_evict_table": ([vp, cp, p_i64], i32),
        "hps_db_size": ([vp, cp, p_i64], i32),
        "hps_db_check_table": ([vp, cp, i32], i32),
        "hps_db_find_tables": ([vp, cp, vp, i64, p_i64], i32),
        "hps_storage_describe_config": ([cp, vp, i64, p_i64], i32),
        "hps_storage_tag": ([cp, cp, vp, i64], i32),
        "hps_tiers_open": ([cp, cp, i32, p_vp], i32),
        "hps_tiers_fetch": ([vp, vp, i64, vp], i32),
        "hps_tiers_stats": ([vp, ctypes.POINTER(TierStats)], i32),
        "hps_tiers_catch_up": ([vp], i32),
        "hps_tiers_close": ([vp], i32),
    }


_LIBRARY = NativeLibrary(
    "libhps_storage.so",
    env=ENV_LIBRARY,
    label="storage library",
    build_hint=("build it with `hps-surgeon build-native` (needs libhiredis-dev and librocksdb-dev; "
                "`hps-surgeon doctor` lists what is missing) or set " + ENV_LIBRARY),
    unavailable=StorageUnavailableError,
    signatures=_signatures(),
)


def library_path() -> tuple[Path, str]:
    """The library path that would be loaded and where it came from (for messages)."""
    return _LIBRARY.path()


def load() -> ctypes.CDLL:
    """The loaded library (once); StorageUnavailableError when it is missing."""
    return _LIBRARY.load()


def check(status: int, what: str = "") -> None:
    if status != OK:
        message = load().hps_storage_last_error().decode(errors="replace")
        raise StorageError(status, f"{what}: {message}" if what else message)


def _text_out(call: Callable[[ctypes.c_void_p, int, ctypes.POINTER(ctypes.c_int64)], int], what: str) -> str:
    needed = ctypes.c_int64(0)
    check(call(None, 0, ctypes.byref(needed)), what)
    buf = ctypes.create_string_buffer(int(needed.value))
    check(call(buf, needed.value, ctypes.byref(needed)), what)
    return buf.value.decode()


def tag_name(model: str, table: str) -> str:
    """HugeCTR's tag "hps_et.<model>.<table>"; StorageError(code 2) for names HugeCTR rejects."""
    buf = ctypes.create_string_buffer(512)
    check(load().hps_storage_tag(model.encode(), table.encode(), buf, len(buf)))
    return buf.value.decode()


def describe_config(config_path: str | os.PathLike[str]) -> dict:
    """The database sections of a config as the native parser reads them (defaults filled in)."""
    lib = load()
    path = os.fspath(config_path).encode()
    return json.loads(_text_out(lambda b, c, n: lib.hps_storage_describe_config(path, b, c, n), str(config_path)))


class _Handle:
    """A handle of the library, freed by close() or at the end of a with-block (closing twice is a no-op)."""

    _CLOSE: str  #: the C function that frees the handle
    _handle: int | None
    label: str

    def close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            check(getattr(load(), self._CLOSE)(handle), self.label)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Database(_Handle):
    """One opened Redis Cluster or RocksDB, laid out as HugeCTR's HPS lays it out."""

    _CLOSE = "hps_db_close"

    def __init__(self, handle: int, label: str) -> None:
        self._handle: int | None = handle
        self.label = label

    @classmethod
    def open(cls, section: str, params: dict, key_bits: int, label: str) -> Database:
        """Open from a config section's dict ("volatile_db" or "persistent_db")."""
        lib = load()
        handle = ctypes.c_void_p()
        check(lib.hps_db_open(section.encode(), json.dumps(params).encode(), key_bits, ctypes.byref(handle)), label)
        return cls(int(handle.value), label)

    @classmethod
    def open_config(cls, config_path: str | os.PathLike[str], section: str) -> Database:
        lib = load()
        handle = ctypes.c_void_p()
        check(lib.hps_db_open_config(os.fspath(config_path).encode(), section.encode(), ctypes.byref(handle)),
              f"{config_path}: {section}")
        return cls(int(handle.value), f"{section} of {config_path}")

    def _h(self) -> int:
        if self._handle is None:
            raise StorageError(1, f"{self.label} is closed")
        return self._handle

    def publish(self, tag: str, sparse_dir: str | os.PathLike[str], dim: int, *, first_row: int = 0, rows: int = -1,
                chunk_rows: int = 65536, progress: Callable[[int, int], bool] | None = None) -> tuple[int, int]:
        """Write a sparse-model folder under tag; returns (rows written, keys new to the database).

        ``progress(done, total)`` returning False cancels (StorageError code 8, after the chunk in flight).
        An exception raised inside ``progress`` cancels too and is re-raised here.
        """
        raised: list[BaseException] = []

        def relay(done: int, total: int, _user: int | None) -> int:
            try:
                return 1 if progress is None or progress(done, total) is not False else 0
            except BaseException as exc:  # KeyboardInterrupt inside the callback: stop the C++ loop, re-raise after
                raised.append(exc)
                return 0

        callback = _PROGRESS(relay)
        out_rows, out_new = ctypes.c_int64(0), ctypes.c_int64(0)
        status = load().hps_db_publish(self._h(), tag.encode(), os.fspath(sparse_dir).encode(), dim, first_row, rows,
                                       chunk_rows, callback, None, ctypes.byref(out_rows), ctypes.byref(out_new))
        if raised:
            raise raised[0]
        check(status, f"{self.label}: publishing {tag}")
        return int(out_rows.value), int(out_new.value)

    def insert(self, tag: str, keys: np.ndarray, values: np.ndarray) -> None:
        k = np.ascontiguousarray(keys, dtype=np.int64)
        v = np.ascontiguousarray(values, dtype=np.float32).reshape(k.size, -1)
        check(load().hps_db_insert(self._h(), tag.encode(), k.ctypes.data, k.size, v.ctypes.data, v.shape[1]),
              f"{self.label}: inserting into {tag}")

    def fetch(self, tag: str, keys: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(values [n, dim] float32, status [n] uint8: FOUND/MISSING/UNAVAILABLE/CORRUPT)."""
        k = np.ascontiguousarray(keys, dtype=np.int64).reshape(-1)
        values = np.zeros((k.size, dim), dtype=np.float32)
        status = np.full(k.size, MISSING, dtype=np.uint8)
        check(load().hps_db_fetch(self._h(), tag.encode(), k.ctypes.data, k.size, dim, values.ctypes.data,
                                  status.ctypes.data), f"{self.label}: fetching from {tag}")
        return values, status

    def evict(self, tag: str, keys: np.ndarray) -> int:
        k = np.ascontiguousarray(keys, dtype=np.int64).reshape(-1)
        out = ctypes.c_int64(0)
        check(load().hps_db_evict(self._h(), tag.encode(), k.ctypes.data, k.size, ctypes.byref(out)), self.label)
        return int(out.value)

    def evict_table(self, tag: str) -> int:
        out = ctypes.c_int64(0)
        check(load().hps_db_evict_table(self._h(), tag.encode(), ctypes.byref(out)), f"{self.label}: dropping {tag}")
        return int(out.value)

    def size(self, tag: str) -> int:
        out = ctypes.c_int64(0)
        check(load().hps_db_size(self._h(), tag.encode(), ctypes.byref(out)), f"{self.label}: size of {tag}")
        return int(out.value)

    def check_table(self, tag: str, dim: int) -> None:
        check(load().hps_db_check_table(self._h(), tag.encode(), dim), self.label)

    def find_tables(self, model: str) -> list[str]:
        lib, h = load(), self._h()
        text = _text_out(lambda b, c, n: lib.hps_db_find_tables(h, model.encode(), b, c, n), self.label)
        return [line for line in text.splitlines() if line]



class Tiers(_Handle):
    """HugeCTR's lookup order below the GPU cache for one table, on the host (what the plugin runs)."""

    _CLOSE = "hps_tiers_close"

    def __init__(self, config_path: str | os.PathLike[str], model: str, table_id: int) -> None:
        handle = ctypes.c_void_p()
        check(load().hps_tiers_open(os.fspath(config_path).encode(), model.encode(), table_id, ctypes.byref(handle)),
              f"{config_path}: table {table_id} of model '{model}'")
        self._handle: int | None = int(handle.value)
        self.label = f"table {table_id} of model '{model}'"

    def fetch(self, keys: np.ndarray, dim: int) -> np.ndarray:
        k = np.ascontiguousarray(keys, dtype=np.int64).reshape(-1)
        values = np.empty((k.size, dim), dtype=np.float32)
        check(load().hps_tiers_fetch(self._handle, k.ctypes.data, k.size, values.ctypes.data), self.label)
        return values.reshape(np.shape(keys) + (dim,))

    def catch_up(self) -> None:
        """See rows other processes wrote into RocksDB since opening (a refresh does this)."""
        check(load().hps_tiers_catch_up(self._handle), self.label)

    def stats(self) -> dict[str, int]:
        s = TierStats()
        check(load().hps_tiers_stats(self._handle, ctypes.byref(s)), self.label)
        return s.as_dict()
