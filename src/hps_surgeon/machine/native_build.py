"""`hps-surgeon build-native`: the plugin's CMake build in one command, after checking its toolchain.

A command rather than a compiling build backend: `pip install -e .` stays pure Python (seconds, no
compiler), and the build can say what is missing before CMake starts, pick a CUDA toolkit per
architecture (V100 needs CUDA 12) and show the compiler's own output when something fails.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import SurgeonError
from . import probes
from .libraries import LibraryContents, read_library

#: the libraries the build makes, in the build folder's top level (plugin/CMakeLists.txt)
LIBRARIES = ("libhps_plugin.so", "libhps_storage.so")
_CHECKOUT = Path(__file__).resolve().parents[3]


class BuildFailed(Exception):
    """A CMake step exited non-zero; its output was shown (or is in the message, with --quiet)."""


@dataclass(frozen=True)
class NativeBuild:
    """What to build, where, and with which toolchain."""

    source: Path
    build_dir: Path
    cuda_archs: str | None = None
    """CMake's CUDA_ARCHITECTURES list ("86", "90;100", "native"); None: the plugin's default fatbin."""
    tensorrt_root: Path | None = None
    """A folder with include/NvInfer.h: compiles the TensorRT glue in."""
    cuda_root: Path | None = None
    """A CUDA toolkit other than the nvcc on PATH (a CUDA 12 one for V100)."""
    jobs: int = 2
    run_tests: bool = False
    install_prefix: Path | None = None
    fresh: bool = False

    def commands(self) -> list[list[str]]:
        """The cmake/ctest command lines, in order."""
        configure = ["cmake", "-S", str(self.source), "-B", str(self.build_dir), "-DCMAKE_BUILD_TYPE=Release",
                     f"-DHPS_BUILD_TESTS={'ON' if self.run_tests else 'OFF'}",
                     # explicit every time, so that a rebuild without the option does not keep an old value
                     f"-DTENSORRT_ROOT={self.tensorrt_root or ''}",
                     f"-DCMAKE_CUDA_ARCHITECTURES={self.cuda_archs}" if self.cuda_archs
                     else "-UCMAKE_CUDA_ARCHITECTURES"]
        if self.cuda_root:
            configure += [f"-DCMAKE_CUDA_COMPILER={self.cuda_root / 'bin' / 'nvcc'}",
                          f"-DCUDAToolkit_ROOT={self.cuda_root}"]
        if self.fresh:
            configure.append("--fresh")
        steps = [configure, ["cmake", "--build", str(self.build_dir), "-j", str(self.jobs)]]
        if self.run_tests:
            steps.append(["ctest", "--test-dir", str(self.build_dir), "--output-on-failure"])
        if self.install_prefix:
            steps.append(["cmake", "--install", str(self.build_dir), "--prefix", str(self.install_prefix)])
        return steps


def plugin_source(source: Path | None = None) -> Path:
    """plugin/ of this source checkout (or `source`); SurgeonError when there is none."""
    folder = Path(source) if source else _CHECKOUT / "plugin"
    if not (folder / "CMakeLists.txt").is_file():
        raise SurgeonError(f"{folder}: no CMakeLists.txt of the plugin; build-native builds from a source checkout "
                           "(git clone the repository, pip install -e . there) or pass --source <checkout>/plugin")
    return folder


def default_build_dir(source: Path) -> Path:
    """<checkout>/build/plugin: where hps-surgeon looks for the libraries of its own checkout."""
    return source.parent / "build" / "plugin"


def preflight(build: NativeBuild) -> None:
    """Everything the build needs that is missing, in one SurgeonError, before CMake starts."""
    tools = probes.toolchain(build.cuda_root)
    problems = [] if tools.ok else [f"{tools.summary} ({tools.fix})"]
    if build.cuda_root is not None and tools.facts["nvcc"] is None:
        problems.append(f"--cuda-root {build.cuda_root}: no bin/nvcc there")
    if build.tensorrt_root is not None and not (build.tensorrt_root / "include" / "NvInfer.h").is_file():
        problems.append(f"--tensorrt-root {build.tensorrt_root}: no include/NvInfer.h there (TensorRT's headers: the "
                        "TensorRT SDK's include/ or github.com/NVIDIA/TensorRT's include/)")
    if problems:
        raise SurgeonError("build-native cannot start: " + "; ".join(problems))


def run(build: NativeBuild, *, quiet: bool = False) -> dict[str, LibraryContents]:
    """Runs every step; the libraries built, read back. BuildFailed names the step that failed."""
    for step in build.commands():
        if not quiet:
            print("+ " + shlex.join(step), flush=True)
        done = subprocess.run(step, capture_output=quiet, text=True, env={**os.environ, "CLICOLOR": "0"})
        if done.returncode != 0:
            why = f" — {first_error(done.stdout + done.stderr)}" if quiet else " (its output is above)"
            raise BuildFailed(f"`{shlex.join(step[:3])} ...` exited {done.returncode}{why}")
    return {name: read_library(build.build_dir / name) for name in LIBRARIES}


def first_error(output: str) -> str:
    """The first error of a build's output with the lines that continue it (CMake indents them), on one line."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if re.search(r"CMake Error|error:|fatal", line, re.IGNORECASE):
            block = [line]
            for more in lines[i + 1:]:
                if not more.startswith(" ") or not more.strip():
                    break
                block.append(more)
            return " ".join(" ".join(block).split())[:800]
    return " | ".join(lines[-5:])


def where_found(build: NativeBuild) -> list[str]:
    """What a user must set for hps-surgeon to load these libraries (empty when it finds them already)."""
    from ..hps import native
    from ..storage import _native as storage

    lines = []
    for name, module in zip(LIBRARIES, (native, storage)):
        built = (build.install_prefix / "lib" / name) if build.install_prefix else build.build_dir / name
        if module.library_path()[0].resolve() != built.resolve():
            lines.append(f"export {module.ENV_LIBRARY}={built}")
    return lines
