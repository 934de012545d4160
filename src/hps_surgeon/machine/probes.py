"""What this machine has for each part of hps-surgeon, and how to get what it lacks (``hps-surgeon doctor``).

Every probe reports, none raises: a part that cannot be inspected is reported as missing, with the reason.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement

from ..errors import SurgeonError
from .libraries import LibraryContents, NotASharedLibrary, read_library

DISTRIBUTION = "hps-surgeon"
OK, PARTIAL, MISSING = "ok", "partial", "missing"
BUILD_NATIVE = "hps-surgeon build-native"
#: TensorRT's headers: no package registry ships them (README "Native parts")
TENSORRT_ENV = "TENSORRT_ROOT"
APT_PACKAGES = {"nlohmann_json": "nlohmann-json3-dev", "hiredis": "libhiredis-dev", "rocksdb": "librocksdb-dev",
                "pkg-config": "pkg-config", "cmake": "cmake", "c++": "g++", "redis-server": "redis-server",
                "redis-cli": "redis-tools", "ldb": "rocksdb-tools"}
MIN_CMAKE = (3, 24)


@dataclass(frozen=True)
class Finding:
    """One part of the machine: whether it is there, what was found, and what to do when it is not."""

    name: str
    status: str
    """``ok``, ``partial`` (there, but not all of it: a plugin without its TensorRT glue) or ``missing``."""
    summary: str
    fix: str = ""
    facts: dict = field(default_factory=dict)
    """Machine-readable details for ``--json`` (paths, versions, architectures)."""

    @property
    def ok(self) -> bool:
        return self.status == OK


def python_dependencies() -> Finding:
    try:
        requirements = [Requirement(r) for r in metadata.requires(DISTRIBUTION) or ()]
    except metadata.PackageNotFoundError:
        return Finding("python deps", MISSING, f"{DISTRIBUTION} is not installed in this environment",
                       "pip install -e . (in the source checkout)")
    found, bad = {}, []
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an extra's requirement ([test])
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            bad.append(f"{req.name} missing")
            continue
        found[req.name] = version
        if not req.specifier.contains(version, prereleases=True):
            bad.append(f"{req.name} {version} (needs {req.specifier})")
    if bad:
        return Finding("python deps", MISSING, "; ".join(bad), "pip install -e . (installs what pyproject.toml needs)",
                       {"versions": found})
    return Finding("python deps", OK, ", ".join(f"{n} {v}" for n, v in found.items()), facts={"versions": found})


def plugin_contents() -> LibraryContents | None:
    """What the plugin library that would be loaded holds; None when it is missing or not a library."""
    from ..hps import native

    try:
        return read_library(native.library_path()[0])
    except (OSError, NotASharedLibrary):
        return None


def plugin_library() -> Finding:
    """libhps_plugin.so: where it is looked for, the GPU code inside, the TensorRT glue, and whether it loads."""
    from ..hps import native

    path, origin = native.library_path()
    facts = {"path": str(path), "origin": origin}
    contents = plugin_contents()
    if contents is None:
        problem = _load_error(native.load_library) if not path.is_file() else f"{path}: not a shared library"
        return Finding("libhps_plugin.so", MISSING, problem,
                       f"{BUILD_NATIVE} (add --tensorrt-root DIR for the TensorRT glue)", facts)
    facts.update(sass=[f"sm_{a}" for a in contents.sass], ptx=[f"compute_{a}" for a in contents.ptx],
                 tensorrt_glue=contents.tensorrt_glue)
    archs = ", ".join([*facts["sass"], *facts["ptx"]]) or "no GPU code"
    summary = f"{path} ({origin}); CUDA {archs}; TensorRT glue: {'yes' if contents.tensorrt_glue else 'no'}"
    problem = _load_error(native.load_library)
    if problem:
        return Finding("libhps_plugin.so", MISSING, f"{summary}; does not load: {problem}", BUILD_NATIVE, facts)
    if not contents.tensorrt_glue:
        return Finding("libhps_plugin.so", PARTIAL, summary,
                       f"{BUILD_NATIVE} --tensorrt-root <folder with include/NvInfer.h> (for build-engine, "
                       "check --engine, deploy --build-engine)", facts)
    return Finding("libhps_plugin.so", OK, summary, facts=facts)


def storage_library() -> Finding:
    """libhps_storage.so: publish's Redis Cluster and RocksDB clients (hiredis, RocksDB linked in)."""
    from ..storage import _native

    path, origin = _native.library_path()
    facts = {"path": str(path), "origin": origin}
    problem = _load_error(_native.load)
    if problem:
        return Finding("libhps_storage.so", MISSING, problem, BUILD_NATIVE, facts)
    return Finding("libhps_storage.so", OK, f"{path} ({origin}); Redis Cluster (hiredis) and RocksDB clients",
                   facts=facts)


def gpus() -> Finding:
    """The GPUs nvidia-smi lists, each checked against the architectures in the plugin library."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        # containers often have the driver's libcuda but not nvidia-smi: ask the CUDA runtime through our library
        seen = _plugin_device_count()
        if seen:
            return Finding("GPUs", OK, f"{seen} device(s) visible to libhps_plugin.so (no nvidia-smi to name them)",
                           facts={"gpus": seen})
        return Finding("GPUs", MISSING, "none visible (no nvidia-smi)",
                       "nothing to do for scan/rewrite/verify --backend reference/build-engine with TensorRT-RTX; "
                       "verify --backend native and serving need an NVIDIA GPU and its driver")
    try:
        out = subprocess.run([smi, "--query-gpu=index,name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Finding("GPUs", MISSING, f"nvidia-smi failed: {exc}", "check the NVIDIA driver")
    rows = [[c.strip() for c in line.split(",")] for line in out.stdout.splitlines() if line.count(",") == 2]
    if out.returncode != 0 or not rows:
        text = (out.stderr or out.stdout).strip().splitlines()
        return Finding("GPUs", MISSING, f"nvidia-smi lists none ({text[0] if text else 'no output'})",
                       "check the NVIDIA driver")
    listed = [{"index": int(i), "name": name, "compute_capability": cc} for i, name, cc in rows]
    contents = plugin_contents()
    uncovered = [] if contents is None else [
        g for g in listed if not contents.runs_on(*map(int, g["compute_capability"].split(".")))]
    summary = "; ".join(f"{g['index']}: {g['name']} ({g['compute_capability']})" for g in listed)
    if uncovered:
        archs = sorted({int(g["compute_capability"].replace(".", "")) for g in uncovered})
        # CUDA 13 stopped at 75 (plugin/cmake/CudaArchitectures.cmake): older GPUs need a CUDA 12 toolkit
        toolkit = " --cuda-root <CUDA 12 toolkit>" if archs[0] < 75 else ""
        return Finding("GPUs", PARTIAL, f"{summary}; libhps_plugin.so has no code for "
                       + ", ".join(g["compute_capability"] for g in uncovered),
                       f"{BUILD_NATIVE} --cuda-arch '{';'.join(map(str, archs))}'{toolkit}", {"gpus": listed})
    return Finding("GPUs", OK, summary, facts={"gpus": listed})


def _plugin_device_count() -> int:
    from ..hps import native

    try:
        return native.device_count()
    except SurgeonError:  # no library, or it failed to ask the driver
        return 0


def builders() -> Finding:
    """The NVIDIA engine builders: TensorRT (builds for this GPU) and TensorRT-RTX (ahead of time, no GPU)."""
    found = {}
    for module, label in (("tensorrt", "TensorRT"), ("tensorrt_rtx", "TensorRT-RTX")):
        if importlib.util.find_spec(module) is not None:
            found[module] = _module_version(module)
    if not found:
        return Finding("builders", MISSING, "neither tensorrt nor tensorrt_rtx is installed",
                       "pip install tensorrt-rtx-cu13==1.7.1.116 (builds ahead of time, no GPU needed); tensorrt "
                       "(the version your Triton serves) builds on a GPU for deploy --build-engine",
                       {"builders": found})
    from ..deploy.builders import find_builder

    try:
        used = find_builder().title  # imports it: a broken or stub install fails here, as build-engine would
    except SurgeonError as exc:
        return Finding("builders", MISSING, str(exc), "reinstall it: pip install tensorrt-rtx-cu13==1.7.1.116",
                       {"builders": found})
    summary = ", ".join(f"{m} {v}" for m, v in found.items())
    summary += f"; build-engine uses {used}" if len(found) > 1 else "; imports"
    if "tensorrt" not in found:
        return Finding("builders", PARTIAL, f"{summary} (build-engine, check --engine; not deploy --build-engine)",
                       "pip install tensorrt (the version your Triton serves) for deploy --build-engine",
                       {"builders": found})
    return Finding("builders", OK, summary, facts={"builders": found})


def databases(storage: Finding) -> Finding:
    """What publish writes to (a Redis Cluster, RocksDB) and the servers/tools the test suite starts."""
    tools = {name: shutil.which(name) for name in ("redis-server", "redis-cli", "ldb")}
    missing = [name for name, path in tools.items() if path is None]
    facts = {"tools": tools, "rocksdb": storage.ok}
    rocksdb = "RocksDB: linked into libhps_storage.so" if storage.ok else "RocksDB: needs libhps_storage.so"
    if missing:
        packages = sorted({APT_PACKAGES[name] for name in missing})
        return Finding("redis / RocksDB", PARTIAL if storage.ok else MISSING,
                       f"{rocksdb}; not on PATH: {', '.join(missing)} (publish --volatile-db needs a reachable "
                       "Redis Cluster; the tests start one from redis-server)",
                       f"apt-get install {' '.join(packages)}", facts)
    status = OK if storage.ok else MISSING
    return Finding("redis / RocksDB", status, f"{rocksdb}; redis-server, redis-cli, ldb on PATH",
                   "" if storage.ok else BUILD_NATIVE, facts)


def polygraphy_extension() -> Finding:
    """The `polygraphy run --hps` extension: our entry point in `polygraphy.run.plugins`, and that it loads."""
    points = [e for e in metadata.entry_points(group="polygraphy.run.plugins") if e.name == "hps"]
    if not points:
        return Finding("polygraphy --hps", MISSING, "entry point polygraphy.run.plugins:hps not registered",
                       "pip install -e . (entry points are written at install time)")
    try:
        groups = points[0].load()()
    except Exception as exc:  # what Polygraphy itself would turn into "[W] Failed to load plugin"
        return Finding("polygraphy --hps", MISSING, f"{points[0].value} fails to load: {exc}",
                       "reinstall: pip install -e .")
    names = ", ".join(type(g).__name__ for g in groups)
    return Finding("polygraphy --hps", OK, f"{points[0].value} registered ({names})",
                   facts={"entry_point": points[0].value})


def toolchain(cuda_root: Path | None = None) -> Finding:
    """What `hps-surgeon build-native` needs: cmake, a C++ compiler, nvcc (CUDA_ROOT's when given), pkg-config
    and the C++ libraries."""
    facts: dict = {}
    lacking: list[str] = []
    cmake = shutil.which("cmake")
    facts["cmake"] = _tool_version(cmake, r"cmake version (\d+\.\d+(?:\.\d+)?)") if cmake else None
    if not cmake or tuple(int(x) for x in facts["cmake"].split(".")[:2]) < MIN_CMAKE:
        lacking.append("cmake")
    facts["c++"] = shutil.which("c++") or shutil.which("g++")
    if not facts["c++"]:
        lacking.append("c++")
    nvcc = find_nvcc(cuda_root)
    facts["nvcc"] = str(nvcc) if nvcc else None
    facts["cuda"] = _tool_version(str(nvcc), r"release (\d+\.\d+)") if nvcc else None
    facts["pkg-config"] = shutil.which("pkg-config")
    if not facts["pkg-config"]:
        lacking.append("pkg-config")
    for name, header in (("nlohmann_json", "nlohmann/json.hpp"), ("hiredis", "hiredis/hiredis.h"),
                         ("rocksdb", "rocksdb/db.h")):
        facts[name] = any((Path(d) / header).is_file() for d in ("/usr/include", "/usr/local/include"))
        if not facts[name]:
            lacking.append(name)
    trt = os.environ.get(TENSORRT_ENV, "")
    facts["tensorrt_headers"] = trt if trt and (Path(trt) / "include" / "NvInfer.h").is_file() else None
    have = f"cmake {facts['cmake']}, CUDA {facts['cuda']}" if cmake and nvcc else ""
    if facts["tensorrt_headers"]:
        glue = f"TensorRT headers: {trt}"
    elif trt:
        glue = f"TensorRT headers: none, ${TENSORRT_ENV}={trt} has no include/NvInfer.h (no TensorRT glue)"
    else:
        glue = f"TensorRT headers: none (${TENSORRT_ENV} or --tensorrt-root; without them no TensorRT glue)"
    apt = sorted({APT_PACKAGES[n] for n in lacking})
    fixes = [f"apt-get install {' '.join(apt)}"] if apt else []
    if not nvcc:
        fixes.append("install a CUDA toolkit (nvcc 12 or 13; https://developer.nvidia.com/cuda-downloads)")
    if lacking or not nvcc:
        missing = ", ".join(lacking + ([] if nvcc else ["nvcc"]))
        return Finding("build-native toolchain", MISSING, f"missing: {missing}" + (f"; {have}" if have else ""),
                       "; ".join(fixes), facts)
    return Finding("build-native toolchain", OK, f"{have}, {Path(facts['c++']).name}; {glue}", facts=facts)


def find_nvcc(cuda_root: Path | None = None) -> Path | None:
    """The nvcc a build would use: CUDA_ROOT/bin/nvcc, else $CUDACXX, else nvcc on PATH or in /usr/local/cuda."""
    if cuda_root is not None:
        path = Path(cuda_root) / "bin" / "nvcc"
        return path if path.is_file() else None
    for candidate in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _tool_version(path: str, pattern: str) -> str | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(pattern, out)
    return match.group(1) if match else None


def _module_version(module: str) -> str:
    for dist in metadata.packages_distributions().get(module, []):
        try:
            return f"{metadata.version(dist)} ({dist})"
        except metadata.PackageNotFoundError:
            continue
    return "(version unknown)"


def _load_error(load) -> str:
    """Why a native library does not load ("" when it does): the loader's line, naming where it looked, without
    its build hint (the finding's fix says what to do)."""
    try:
        load()
    except SurgeonError as exc:
        return str(exc).split("; build it with")[0]
    return ""
