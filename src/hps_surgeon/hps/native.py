"""ctypes binding of the native HPS lookup library (``libhps_plugin.so``, built from ``plugin/``).

The library is the same one TensorRT loads for ``HPS_TRT`` nodes, so looking up through it checks
exactly what the engine will compute. Importing this module needs neither the library nor a GPU;
:class:`NativeUnavailableError` is raised only when a table is opened.

Library search order (the first that applies):

1. ``$HPS_SURGEON_PLUGIN_LIB`` (used as given, even if missing, so a typo is reported);
2. ``build/plugin/libhps_plugin.so`` in this source tree;
3. ``/usr/local/hps_trt/lib/libhps_plugin.so`` (``cmake --install`` default, HugeCTR's location).

Example::

    with HpsTable.open("out/hps_config.json", "dlrm", table_id=0) as table:
        emb = table.lookup(keys_cuda)           # torch or CuPy array, int32/int64, any shape
        ref = table.lookup_host(keys_numpy)     # numpy in, numpy out (no CuPy/torch needed)
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hps_surgeon._native_lib import NativeLibrary, Signatures
from hps_surgeon.errors import SurgeonError

__all__ = [
    "ENV_LIBRARY",
    "HpsStats",
    "HpsTable",
    "NativeError",
    "NativeUnavailableError",
    "device_count",
    "library_path",
    "load_library",
]

#: Environment variable naming the library explicitly.
ENV_LIBRARY = "HPS_SURGEON_PLUGIN_LIB"

# hps_status codes (plugin/include/hps_plugin/hps.h).
_STATUS_NAMES = {
    1: "invalid argument",
    2: "config error",
    3: "table file error",
    4: "CUDA error",
    5: "out of memory",
    6: "internal error",
    7: "database error",
    8: "cancelled",
}


class NativeUnavailableError(SurgeonError):
    """The native library cannot be found or loaded (message names the path tried and how to build)."""


class NativeError(SurgeonError):
    """A call into the native library failed; ``code`` is its ``hps_status``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Stats(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in
                ("lookups", "cache_hits", "host_hits", "not_found", "insertions", "evictions")]


class _TierStats(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in
                ("volatile_hits", "persistent_hits", "defaults", "unavailable", "corrupt", "elevated")]


class _Info(ctypes.Structure):
    _fields_ = [
        ("rows", ctypes.c_int64),
        ("dim", ctypes.c_int32),
        ("device", ctypes.c_int32),
        ("cache_slots", ctypes.c_int64),
        ("resident", ctypes.c_int32),
        ("default_value", ctypes.c_float),
        ("identity_keys", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
    ]


@dataclass(frozen=True)
class HpsStats:
    """Counters of one table since it was loaded, summed over all handles and streams."""

    lookups: int
    """Keys looked up."""
    cache_hits: int
    """Keys served from the GPU cache."""
    host_hits: int
    """Keys found in the table but served from the host tier (GPU-cache misses)."""
    not_found: int
    """Keys absent from the table (default value returned)."""
    insertions: int
    """Rows copied into the GPU cache after a miss."""
    evictions: int
    """Rows evicted from the GPU cache to make room."""

    @property
    def hit_rate(self) -> float:
        """Fraction of found keys served from the GPU cache (1.0 when nothing was found)."""
        found = self.cache_hits + self.host_hits
        return self.cache_hits / found if found else 1.0


def _signatures() -> Signatures:
    vp, i32, i64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
    return {
        "hps_version": ([], ctypes.c_char_p),
        "hps_last_error": ([], ctypes.c_char_p),
        "hps_device_count": ([ctypes.POINTER(i32)], ctypes.c_int),
        "hps_open": ([ctypes.c_char_p, ctypes.c_char_p, i32, i32, ctypes.POINTER(vp)], ctypes.c_int),
        "hps_lookup": ([vp, vp, i32, i64, vp, vp], ctypes.c_int),
        "hps_lookup_host": ([vp, vp, i32, i64, vp], ctypes.c_int),
        "hps_stats": ([vp, ctypes.POINTER(_Stats)], ctypes.c_int),
        "hps_table_info": ([vp, ctypes.POINTER(_Info)], ctypes.c_int),
        "hps_tier_stats": ([vp, ctypes.POINTER(_TierStats)], ctypes.c_int),
        "hps_refresh": ([vp, ctypes.c_double, ctypes.POINTER(i64)], ctypes.c_int),
        "hps_close": ([vp], ctypes.c_int),
    }


_LIBRARY = NativeLibrary(
    "libhps_plugin.so",
    env=ENV_LIBRARY,
    label="native HPS library",
    build_hint=("build it with `hps-surgeon build-native` (`hps-surgeon doctor` lists what it needs) or set "
                + ENV_LIBRARY),
    unavailable=NativeUnavailableError,
    signatures=_signatures(),
)


def library_path() -> tuple[Path, str]:
    """Return the library path that would be loaded and where it came from (for messages)."""
    return _LIBRARY.path()


def load_library() -> ctypes.CDLL:
    """Load (once) and return the native library; raise :class:`NativeUnavailableError` if absent."""
    return _LIBRARY.load()


def _check(lib: ctypes.CDLL, status: int, what: str) -> None:
    if status != 0:
        message = lib.hps_last_error().decode(errors="replace")
        kind = _STATUS_NAMES.get(status, f"status {status}")
        raise NativeError(status, f"{what}: {kind}: {message}")


def device_count() -> int:
    """Number of CUDA devices the library sees (0 without driver or device)."""
    lib = load_library()
    count = ctypes.c_int32(0)
    _check(lib, lib.hps_device_count(ctypes.byref(count)), "hps_device_count")
    return int(count.value)


@dataclass(frozen=True)
class _DeviceArray:
    """What we need of a CUDA array, whichever protocol described it."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    contiguous: bool
    device: int | None
    owner: Any  # keeps a DLPack capsule alive while its pointer is used


def _from_cai(obj: Any) -> _DeviceArray:
    cai = obj.__cuda_array_interface__
    shape = tuple(int(s) for s in cai["shape"])
    dtype = np.dtype(cai["typestr"])
    strides = cai.get("strides")
    contiguous = strides is None or tuple(strides) == _c_strides(shape, dtype.itemsize)
    return _DeviceArray(int(cai["data"][0]), shape, dtype, contiguous, _framework_device(obj), None)


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


_DL_CUDA, _DL_CUDA_MANAGED = 2, 13
_DL_CODES = {0: "i", 1: "u", 2: "f"}


def _from_dlpack(obj: Any) -> _DeviceArray:
    # The capsule is not consumed (name stays "dltensor"), so its destructor frees the producer's
    # DLManagedTensor once we drop it; we hold it in `owner` for as long as the pointer is used.
    capsule = obj.__dlpack__()
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    tensor = _DLTensor.from_address(get(capsule, b"dltensor"))  # DLManagedTensor starts with DLTensor
    if tensor.device.device_type not in (_DL_CUDA, _DL_CUDA_MANAGED):
        raise NativeError(1, f"DLPack array is on device type {tensor.device.device_type}, not CUDA; use lookup_host for host arrays")
    if tensor.dtype.lanes != 1 or tensor.dtype.code not in _DL_CODES:
        raise NativeError(1, f"DLPack dtype code {tensor.dtype.code} bits {tensor.dtype.bits} is not supported")
    dtype = np.dtype(f"{_DL_CODES[tensor.dtype.code]}{tensor.dtype.bits // 8}")
    shape = tuple(tensor.shape[i] for i in range(tensor.ndim))
    contiguous = not tensor.strides or tuple(tensor.strides[i] for i in range(tensor.ndim)) == tuple(
        s // dtype.itemsize for s in _c_strides(shape, dtype.itemsize))
    ptr = (tensor.data or 0) + tensor.byte_offset
    return _DeviceArray(ptr, shape, dtype, contiguous, tensor.device.device_id, capsule)


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    strides, step = [], itemsize
    for dim in reversed(shape):
        strides.append(step)
        step *= max(dim, 1)
    return tuple(reversed(strides))


def _framework_device(obj: Any) -> int | None:
    dev = getattr(obj, "device", None)
    index = getattr(dev, "index", None)  # torch.device
    if index is None:
        index = getattr(dev, "id", None)  # cupy.cuda.Device
    return int(index) if index is not None else None


_TORCH_DTYPES = {"torch.int32": np.dtype(np.int32), "torch.int64": np.dtype(np.int64),
                 "torch.float32": np.dtype(np.float32)}


def _from_torch(t: Any) -> _DeviceArray:
    # Fast path: torch's __cuda_array_interface__ builds a dict per call (tens of microseconds,
    # more than a small lookup takes on the GPU).
    dtype = _TORCH_DTYPES[str(t.dtype)]
    return _DeviceArray(int(t.data_ptr()), tuple(t.shape), dtype, bool(t.is_contiguous()), t.device.index, None)


def _describe(obj: Any, what: str) -> _DeviceArray:
    if _module_of(obj) == "torch" and getattr(obj, "is_cuda", False) and str(obj.dtype) in _TORCH_DTYPES:
        return _from_torch(obj)
    if hasattr(obj, "__cuda_array_interface__"):
        return _from_cai(obj)
    if hasattr(obj, "__dlpack__"):
        return _from_dlpack(obj)
    raise NativeError(1, f"{what} ({type(obj).__name__}) is not a CUDA array: pass a torch or CuPy array "
                         "(__cuda_array_interface__ or DLPack), or use lookup_host() for numpy")


def _module_of(obj: Any) -> str:
    return type(obj).__module__.split(".")[0]


def _current_stream(keys: Any) -> int:
    # Follow the caller's framework: work queued on its current stream before us stays ordered.
    mod = _module_of(keys)
    if mod == "torch":
        import torch

        return int(torch.cuda.current_stream(keys.device).cuda_stream)
    if mod == "cupy":
        import cupy

        return int(cupy.cuda.get_current_stream().ptr)
    return 0


def _stream_handle(stream: Any, keys: Any) -> int:
    if stream is None:
        return _current_stream(keys)
    if isinstance(stream, int):
        return stream
    for attr in ("cuda_stream", "ptr", "handle"):  # torch.cuda.Stream, cupy Stream, cuda.core Stream
        value = getattr(stream, attr, None)
        if value is not None:
            return int(value)
    raise NativeError(1, f"stream of type {type(stream).__name__} is not understood; pass an int handle, "
                         "a torch.cuda.Stream or a cupy.cuda.Stream")


def _empty_like_output(keys: Any, shape: tuple[int, ...]) -> Any:
    mod = _module_of(keys)
    if mod == "torch":
        import torch

        return torch.empty(shape, dtype=torch.float32, device=keys.device)
    if mod == "cupy":
        import cupy

        with cupy.cuda.Device(keys.device.id):
            return cupy.empty(shape, dtype=cupy.float32)
    raise NativeError(1, f"cannot allocate the output for {type(keys).__name__} keys; pass out= (float32, shape {shape})")


class HpsTable:
    """An open HPS table: one (config, model, table_id) on one CUDA device.

    Tables are shared inside the process: opening the same table twice returns two handles over
    one copy of the data, with shared counters. Close handles with :meth:`close` or ``with``.
    """

    def __init__(self, lib: ctypes.CDLL, handle: int, config_path: str, model_name: str, table_id: int) -> None:
        self._lib = lib
        self._handle: int | None = handle
        self.config_path = config_path
        self.model_name = model_name
        self.table_id = table_id
        info = _Info()
        _check(lib, lib.hps_table_info(handle, ctypes.byref(info)), "hps_table_info")
        #: Rows (keys) in the table.
        self.rows = int(info.rows)
        #: Floats per vector (``emb_vec_size``).
        self.dim = int(info.dim)
        #: CUDA device the cache lives on.
        self.device = int(info.device)
        #: Vectors the GPU cache holds (``rows`` when resident).
        self.cache_slots = int(info.cache_slots)
        #: True when the whole table is in GPU memory.
        self.resident = bool(info.resident)
        #: Value of every component returned for absent keys.
        self.default_value = float(info.default_value)
        #: True when key r is row r for every row (a rewrite's tables): looked up by direct index.
        self.identity_keys = bool(info.identity_keys)

    @classmethod
    def open(cls, config_path: str | os.PathLike[str], model_name: str, table_id: int, device: int = 0) -> HpsTable:
        """Open table ``table_id`` of ``model_name`` in the HPS config at ``config_path``.

        ``device`` is a CUDA ordinal, or -1 for the model's first ``deployed_device_list`` entry.
        Raises :class:`NativeUnavailableError` without the library, :class:`NativeError` for a bad
        config, bad table files or CUDA failures (the message names the file and field).
        """
        lib = load_library()
        handle = ctypes.c_void_p()
        path = os.fspath(config_path)
        _check(lib, lib.hps_open(path.encode(), model_name.encode(), int(table_id), int(device), ctypes.byref(handle)),
               f"opening table {table_id} of model '{model_name}' from {path}")
        return cls(lib, int(handle.value), path, model_name, int(table_id))

    def _live(self) -> int:
        if self._handle is None:
            raise NativeError(1, f"table {self.table_id} of model '{self.model_name}' is closed")
        return self._handle

    def lookup(self, keys: Any, out: Any = None, stream: Any = None) -> Any:
        """Look up CUDA ``keys`` (int32 or int64, C-contiguous, any shape) into ``out``.

        ``out`` is float32 of shape ``keys.shape + (dim,)`` on the same device; allocated with the
        keys' framework (torch or CuPy) when omitted. ``stream`` defaults to that framework's
        current stream (else the legacy default stream); the call is asynchronous on it.
        Returns ``out``.
        """
        handle = self._live()
        k = _describe(keys, "keys")
        if k.dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
            raise NativeError(1, f"keys have dtype {k.dtype}; HPS_TRT keys are int32 or int64")
        if not k.contiguous:
            raise NativeError(1, "keys are not C-contiguous; call .contiguous() (torch) or cupy.ascontiguousarray first")
        if k.device is not None and k.device != self.device:
            raise NativeError(1, f"keys are on CUDA device {k.device}, the table on device {self.device}")
        shape = k.shape + (self.dim,)
        if out is None:
            out = _empty_like_output(keys, shape)
        o = _describe(out, "out")
        if o.dtype != np.dtype(np.float32) or o.shape != shape or not o.contiguous:
            raise NativeError(1, f"out must be C-contiguous float32 of shape {shape}, got {o.dtype} {o.shape}"
                                 f"{'' if o.contiguous else ' (strided)'}")
        n = int(np.prod(k.shape, dtype=np.int64))
        _check(self._lib, self._lib.hps_lookup(handle, k.ptr, k.dtype.itemsize * 8, n, o.ptr,
                                               _stream_handle(stream, keys)), "hps_lookup")
        return out

    def lookup_host(self, keys: np.ndarray) -> np.ndarray:
        """Look up host ``keys`` (any integer dtype, any shape); return float32 ``[*keys.shape, dim]``.

        Synchronous: copies in, looks up on an internal stream, copies out. For verification and
        tests; production code uses :meth:`lookup` on device arrays.
        """
        handle = self._live()
        arr = np.asarray(keys)
        if arr.dtype.kind not in "iu":
            raise NativeError(1, f"keys have dtype {arr.dtype}; HPS keys are integers")
        if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
            raise NativeError(1, "uint64 keys above 2^63-1 cannot be int64 HPS keys")
        # int32 keys travel as they are (what an int32 engine input sends); the rest as int64.
        arr = np.ascontiguousarray(arr, dtype=np.int32 if arr.dtype == np.int32 else np.int64)
        out = np.empty(arr.shape + (self.dim,), dtype=np.float32)
        _check(self._lib, self._lib.hps_lookup_host(handle, arr.ctypes.data, arr.dtype.itemsize * 8, arr.size,
                                                    out.ctypes.data), "hps_lookup_host")
        return out

    def stats(self) -> HpsStats:
        """Counters of completed lookups (reads without waiting for work still queued)."""
        handle = self._live()
        s = _Stats()
        _check(self._lib, self._lib.hps_stats(handle, ctypes.byref(s)), "hps_stats")
        return HpsStats(*(int(getattr(s, f)) for f, _ in _Stats._fields_))

    def tier_stats(self) -> dict[str, int]:
        """Counters of the database tiers below the GPU cache (volatile/persistent hits, defaults,
        unavailable and corrupt key lookups, keys elevated); all zero for tables without tiers."""
        handle = self._live()
        s = _TierStats()
        _check(self._lib, self._lib.hps_tier_stats(handle, ctypes.byref(s)), "hps_tier_stats")
        return {f: int(getattr(s, f)) for f, _ in _TierStats._fields_}

    def refresh(self, fraction: float = 1.0) -> int:
        """Re-read `fraction` of the GPU cache's rows from the database tiers (online updates);
        returns the rows re-read. Tables without database tiers refresh nothing (0)."""
        handle = self._live()
        rows = ctypes.c_int64(0)
        _check(self._lib, self._lib.hps_refresh(handle, float(fraction), ctypes.byref(rows)), "hps_refresh")
        return int(rows.value)

    def close(self) -> None:
        """Release this handle; the table is freed when its last handle closes. Idempotent."""
        if self._handle is not None:
            handle, self._handle = self._handle, None
            _check(self._lib, self._lib.hps_close(handle), "hps_close")

    def __enter__(self) -> HpsTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Best effort only: interpreter shutdown may have torn down ctypes already.
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._handle is None else f"{self.rows} rows x {self.dim}, device {self.device}"
        return f"HpsTable({self.model_name!r}, table {self.table_id}, {state})"
