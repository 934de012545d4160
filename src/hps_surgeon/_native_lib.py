"""Finding and loading a library that ``plugin/`` builds, through ctypes.

Shared by the bindings of ``libhps_plugin.so`` (:mod:`hps_surgeon.hps.native`) and ``libhps_storage.so``
(:mod:`hps_surgeon.storage._native`). Search order (the first that applies):

1. the library's environment variable (used as given, even if missing, so a typo is reported);
2. ``build/plugin/<file>`` in this source tree;
3. ``/usr/local/hps_trt/lib/<file>`` (``cmake --install`` default, HugeCTR's location).
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import Any

_REPO_BUILD_DIR = Path(__file__).resolve().parents[2] / "build" / "plugin"
_INSTALL_DIR = Path("/usr/local/hps_trt/lib")

#: C function name -> (argtypes, restype).
Signatures = dict[str, tuple[list[Any], Any]]


class NativeLibrary:
    """One library of ``plugin/``: where it is looked for, its C signatures; loaded once, on first use."""

    def __init__(self, file_name: str, *, env: str, label: str, build_hint: str, signatures: Signatures,
                 unavailable: type[Exception]) -> None:
        self.env = env
        self.repo_build = _REPO_BUILD_DIR / file_name
        self.installed = _INSTALL_DIR / file_name
        self._label = label  # what messages call it: "native HPS library"
        self._build_hint = build_hint
        self._signatures = signatures
        self._unavailable = unavailable
        self._cdll: ctypes.CDLL | None = None
        self._lock = threading.Lock()

    def path(self) -> tuple[Path, str]:
        """The path that would be loaded and where it came from (for messages)."""
        env = os.environ.get(self.env)
        if env:
            return Path(env), f"${self.env}"
        if self.repo_build.exists():
            return self.repo_build, "source-tree build"
        return self.installed, "install default"

    def load(self) -> ctypes.CDLL:
        """The loaded library, its signatures declared; ``unavailable`` (one line) when it is missing or broken."""
        with self._lock:
            if self._cdll is None:
                self._cdll = self._open()
            return self._cdll

    def _open(self) -> ctypes.CDLL:
        path, origin = self.path()
        if not path.exists():
            tried = str(path) if origin != "install default" else f"{self.repo_build} and {self.installed}"
            raise self._unavailable(f"{self._label} not found (tried {tried}); {self._build_hint}")
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as exc:
            raise self._unavailable(f"cannot load {self._label} {path} ({origin}): {exc}; {self._build_hint}") from exc
        for name, (args, res) in self._signatures.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, res
        return lib
