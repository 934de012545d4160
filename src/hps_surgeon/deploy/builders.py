"""The NVIDIA engine builder installed here: TensorRT (`tensorrt`) when present, else TensorRT-RTX.

TensorRT builds for the GPU it runs on. TensorRT-RTX (`pip install tensorrt-rtx-cu13`) builds ahead
of time for compute capabilities the machine need not have, so it builds on a machine without a
GPU; its engines run on TensorRT-RTX runtimes, not in Triton's TensorRT backend.

TensorRT-RTX's ONNX parser `dlopen`s the unversioned `libtensorrt_rtx.so` once a plugin has been
created, but the wheel ships only `libtensorrt_rtx.so.1`; the failed lookup ends the process in
`std::terminate` (measured with tensorrt-rtx-cu13 1.7.1). The parser searches its own folder
first (RPATH `$ORIGIN`), and the dynamic loader reads LD_LIBRARY_PATH only when a process starts,
so before `tensorrt_rtx` is imported both libraries are loaded from a private folder of symlinks
that also holds the unversioned name: `$ORIGIN` is then that folder. Site-packages is left as is.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..errors import SurgeonError

INSTALL_HINT = ("pip install tensorrt-rtx-cu13 (TensorRT-RTX: builds ahead of time, no GPU needed) or "
                "tensorrt (the version your Triton serves; builds on a GPU)")
_RTX_LIBRARIES = ("libtensorrt_rtx.so.1", "libtensorrt_onnxparser_rtx.so.1")
_RTX_UNVERSIONED = "libtensorrt_rtx.so"
_RTLD_DI_ORIGIN = 6  # <dlfcn.h>: dlinfo request for the folder $ORIGIN stands for


@dataclass(frozen=True)
class NvidiaBuilder:
    """An imported builder module (`tensorrt` or `tensorrt_rtx`)."""

    trt: ModuleType
    name: str

    @property
    def rtx(self) -> bool:
        return self.name == "tensorrt_rtx"

    @property
    def title(self) -> str:
        return f"{'TensorRT-RTX' if self.rtx else 'TensorRT'} {self.trt.__version__} ({self.name})"


def find_builder() -> NvidiaBuilder:
    """TensorRT when installed, else TensorRT-RTX; SurgeonError saying what to install when neither is."""
    for name in ("tensorrt", "tensorrt_rtx"):
        if importlib.util.find_spec(name) is None:
            continue
        if name == "tensorrt_rtx":
            _make_rtx_parser_find_its_library()
        try:
            module = importlib.import_module(name)
            module.Builder  # noqa: B018 - a stub or broken install has no Builder
        except Exception as exc:  # ImportError, OSError from a missing .so, AttributeError
            raise SurgeonError(f"the {name} package is installed but cannot be used ({_first_line(exc)}) — "
                               f"reinstall it, or {INSTALL_HINT}") from None
        return NvidiaBuilder(module, name)
    raise SurgeonError(f"no NVIDIA engine builder is installed — {INSTALL_HINT}")


def _make_rtx_parser_find_its_library() -> None:
    libs = _rtx_library_folder()
    if libs is None:
        return  # a layout we do not know: importing tensorrt_rtx reports what is missing
    try:
        parser = ctypes.CDLL(_RTX_LIBRARIES[1], mode=os.RTLD_NOLOAD)
    except OSError:
        parser = None
    if parser is None:
        folder = _private_folder(libs)
        for name in _RTX_LIBRARIES:
            ctypes.CDLL(str(folder / name))
        return
    origin = _origin(parser)
    searched = [origin, *os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)]
    if not any(folder and (Path(folder) / _RTX_UNVERSIONED).exists() for folder in searched):
        raise SurgeonError(
            f"tensorrt_rtx was loaded before hps-surgeon could make {_RTX_UNVERSIONED} findable, and its ONNX "
            f"parser aborts the process without it — use hps-surgeon before importing tensorrt_rtx, or put a "
            f"{_RTX_UNVERSIONED} -> {_RTX_LIBRARIES[0]} symlink in a folder on LD_LIBRARY_PATH")


def _rtx_library_folder() -> Path | None:
    """Where the tensorrt_rtx_libs wheel put its libraries, found without importing it (that loads them)."""
    spec = importlib.util.find_spec("tensorrt_rtx_libs")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))).resolve()
    return folder if all((folder / name).is_file() for name in _RTX_LIBRARIES) else None


def _private_folder(libs: Path) -> Path:
    """A folder of symlinks to the wheel's libraries plus the unversioned name, kept for the process."""
    folder = Path(tempfile.mkdtemp(prefix="hps-surgeon-trt-rtx-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    for name in _RTX_LIBRARIES:
        (folder / name).symlink_to(libs / name)
    (folder / _RTX_UNVERSIONED).symlink_to(libs / _RTX_LIBRARIES[0])
    return folder


def _origin(library: ctypes.CDLL) -> str:
    dlinfo = ctypes.CDLL(None).dlinfo
    buffer = ctypes.create_string_buffer(4096)
    if dlinfo(ctypes.c_void_p(library._handle), _RTLD_DI_ORIGIN, buffer) != 0:
        return ""
    return buffer.value.decode(errors="replace")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
