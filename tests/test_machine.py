"""`hps-surgeon doctor`, `hps-surgeon build-native` and what they read from a built library (issue 19).

doctor runs in a subprocess: a process keeps a native library loaded once it has loaded it, and each test
here sets up its own machine (library paths, PATH).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hps_surgeon.hps import native
from hps_surgeon.machine import native_build
from hps_surgeon.machine.libraries import NotASharedLibrary, read_library

from support import ROOT, skip_unless_required

TINY_KERNEL = '__global__ void k(int* p) { *p = 1; }\nextern "C" void launch(int* p) { k<<<1, 1>>>(p); }\n'


def hps_surgeon(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hps_surgeon", *map(str, args)], capture_output=True, text=True,
                          env=env)


@pytest.fixture
def bare_machine(tmp_path) -> dict[str, str]:
    """An environment with no native library, nothing on PATH (no nvidia-smi, redis, cmake) and no builder."""
    env = {k: v for k, v in os.environ.items() if k not in ("TENSORRT_ROOT", "CUDACXX")}
    (tmp_path / "bin").mkdir()
    env.update(PATH=str(tmp_path / "bin"), HPS_SURGEON_PLUGIN_LIB=str(tmp_path / "none" / "libhps_plugin.so"),
               HPS_SURGEON_STORAGE_LIB=str(tmp_path / "none" / "libhps_storage.so"))
    return env


def finding(report: dict, name: str) -> dict:
    return next(f for f in report["findings"] if f["name"] == name)


def test_doctor_names_each_missing_part_and_its_fix(bare_machine, tmp_path):
    done = hps_surgeon("doctor", env=bare_machine)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"hps-surgeon 0.1.0 doctor ({sys.executable})"
    plugin = next(i for i, line in enumerate(lines) if "libhps_plugin.so  " in line)
    assert lines[plugin].split() == ["missing", "libhps_plugin.so", "native", "HPS", "library", "not", "found",
                                     "(tried", f"{tmp_path}/none/libhps_plugin.so)"]
    assert lines[plugin + 1].split("fix: ")[1] == "hps-surgeon build-native (add --tensorrt-root DIR for the " \
                                                  "TensorRT glue)"
    assert re.search(r"^  missing  GPUs +none visible \(no nvidia-smi\)$", done.stdout, re.M)
    assert re.search(r"^  missing  redis / RocksDB +RocksDB: needs libhps_storage.so; not on PATH: redis-server, "
                     r"redis-cli, ldb .*\n +fix: apt-get install redis-server redis-tools rocksdb-tools$",
                     done.stdout, re.M)
    assert re.search(r"^  missing  build-native toolchain +missing: cmake, c\+\+, pkg-config", done.stdout, re.M)
    works = lines[lines.index("What works here:") + 1:]
    assert works[0] == "  yes  scan, rewrite, check, verify (reference backend), deploy"
    assert "  no   publish (RocksDB; Redis Cluster at --volatile-db)  (needs libhps_storage.so)" in works


def test_doctor_json_says_the_same_and_still_exits_0(bare_machine, tmp_path):
    done = hps_surgeon("doctor", "--json", env=bare_machine)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {f["name"]: f["status"] for f in report["findings"]} == {
        "python deps": "ok", "libhps_plugin.so": "missing", "libhps_storage.so": "missing", "GPUs": "missing",
        "builders": finding(report, "builders")["status"], "redis / RocksDB": "missing", "polygraphy --hps": "ok",
        "build-native toolchain": "missing"}
    storage = finding(report, "libhps_storage.so")
    assert (storage["path"], storage["origin"]) == (f"{tmp_path}/none/libhps_storage.so", "$HPS_SURGEON_STORAGE_LIB")
    assert finding(report, "polygraphy --hps")["entry_point"] == "hps_surgeon.verify.polygraphy_ext:argument_groups"
    assert [w["works"] for w in report["works"]][:1] == [True]


def test_doctor_reads_the_architectures_and_glue_the_build_put_in():
    """Cross-checked with the build's own record of what it compiled (CMakeCache.txt beside the library)."""
    lib = native.library_path()[0]
    if not lib.is_file():
        skip_unless_required(f"{lib} is not built (hps-surgeon build-native)")
    cache = (lib.parent / "CMakeCache.txt").read_text()
    archs = re.search(r"^CMAKE_CUDA_ARCHITECTURES:\w+=(.*)$", cache, re.M).group(1).split(";")
    glue = re.search(r"^HPS_NVINFER_INCLUDE:PATH=(.*)$", cache, re.M).group(1)
    env = {**os.environ, "HPS_SURGEON_PLUGIN_LIB": str(lib)}
    report = json.loads(hps_surgeon("doctor", "--json", env=env).stdout)
    plugin = finding(report, "libhps_plugin.so")
    assert plugin["sass"] == [f"sm_{a.split('-')[0]}" for a in archs if not a.endswith("-virtual")]
    assert plugin["ptx"] == [f"compute_{a.split('-')[0]}" for a in archs if "-" not in a or a.endswith("-virtual")]
    assert plugin["tensorrt_glue"] == (not glue.endswith("NOTFOUND"))
    assert plugin["status"] == ("ok" if plugin["tensorrt_glue"] else "partial")


def test_read_library_lists_the_code_nvcc_put_in(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("no nvcc to compile a library with known architectures")
    (tmp_path / "k.cu").write_text(TINY_KERNEL)
    subprocess.run([nvcc, "-shared", "-Xcompiler", "-fPIC", "-gencode", "arch=compute_75,code=sm_75",
                    "-gencode", "arch=compute_90,code=sm_90", "-gencode", "arch=compute_120,code=compute_120",
                    str(tmp_path / "k.cu"), "-o", str(tmp_path / "libk.so")], check=True)
    contents = read_library(tmp_path / "libk.so")
    assert (contents.sass, contents.ptx, contents.tensorrt_glue) == ((75, 90), (120,), False)
    assert "launch" in contents.exports
    # sm_75 runs on 7.5 only; sm_90 on 9.x; compute_120 PTX is JIT-compiled on 12.0 and later
    assert [contents.runs_on(*cc) for cc in ((7, 5), (8, 0), (8, 6), (9, 0), (10, 0), (12, 0), (12, 1))] == \
        [True, False, False, True, False, True, True]


def test_read_library_refuses_a_file_that_is_not_a_library(tmp_path):
    (tmp_path / "lib.so").write_bytes(b"not an ELF file at all, but long enough to hold an ELF header......")
    with pytest.raises(NotASharedLibrary, match=f"^{tmp_path}/lib.so is not a 64-bit little-endian ELF file$"):
        read_library(tmp_path / "lib.so")


def test_read_library_refuses_a_truncated_library(tmp_path):
    (tmp_path / "lib.so").write_bytes(Path(sys.executable).resolve().read_bytes()[:256])
    with pytest.raises(NotASharedLibrary, match=f"^{tmp_path}/lib.so is a damaged ELF file \\("):
        read_library(tmp_path / "lib.so")


def test_build_native_default_commands(cli, monkeypatch):
    monkeypatch.delenv("TENSORRT_ROOT", raising=False)
    result = cli("build-native", "--print-commands", "-j", "2")
    build = ROOT / "build" / "plugin"
    assert (result.code, result.err) == (0, "")
    assert result.out.splitlines() == [
        f"cmake -S {ROOT / 'plugin'} -B {build} -DCMAKE_BUILD_TYPE=Release -DHPS_BUILD_TESTS=OFF -DTENSORRT_ROOT= "
        "-UCMAKE_CUDA_ARCHITECTURES",
        f"cmake --build {build} -j 2"]


def test_build_native_options_reach_cmake(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORRT_ROOT", "/elsewhere")  # --tensorrt-root wins over it
    result = cli("build-native", "--print-commands", "-j", "3", "--cuda-arch", "70", "--cuda-root", tmp_path / "cuda12",
                 "--tensorrt-root", tmp_path / "trt", "--build-dir", tmp_path / "b", "--test", "--install",
                 tmp_path / "prefix", "--fresh")
    b = tmp_path / "b"
    assert result.out.splitlines() == [
        f"cmake -S {ROOT / 'plugin'} -B {b} -DCMAKE_BUILD_TYPE=Release -DHPS_BUILD_TESTS=ON -DTENSORRT_ROOT={tmp_path}"
        f"/trt -DCMAKE_CUDA_ARCHITECTURES=70 -DCMAKE_CUDA_COMPILER={tmp_path}/cuda12/bin/nvcc "
        f"-DCUDAToolkit_ROOT={tmp_path}/cuda12 --fresh",
        f"cmake --build {b} -j 3",
        f"ctest --test-dir {b} --output-on-failure",
        f"cmake --install {b} --prefix {tmp_path}/prefix"]


def test_build_native_names_what_is_missing_before_cmake_starts(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    result = cli("build-native", "--build-dir", tmp_path / "b", "--tensorrt-root", tmp_path)
    assert result.code == 2
    assert result.error_line.startswith("hps-surgeon: error: build-native cannot start: missing: cmake, c++, "
                                        "pkg-config")
    assert result.error_line.endswith(f"; --tensorrt-root {tmp_path}: no include/NvInfer.h there (TensorRT's "
                                      "headers: the TensorRT SDK's include/ or github.com/NVIDIA/TensorRT's include/)")
    assert not (tmp_path / "b").exists()


def test_build_native_outside_a_checkout_says_where_the_sources_are(cli, tmp_path):
    result = cli("build-native", "--source", tmp_path)
    assert (result.code, result.error_line) == (2, f"hps-surgeon: error: {tmp_path}: no CMakeLists.txt of the plugin; "
                                                   "build-native builds from a source checkout (git clone the "
                                                   "repository, pip install -e . there) or pass --source "
                                                   "<checkout>/plugin")


def test_v100_with_cuda_13_is_one_cmake_error(cli, tmp_path):
    """CUDA 13 has no sm_70: configuring for it stops at once, saying which toolkit to use instead."""
    nvcc = shutil.which("nvcc")
    if nvcc is None or shutil.which("cmake") is None:
        pytest.skip("needs cmake and nvcc")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    if not re.search(r"release 1[3-9]\.", version):
        pytest.skip("nvcc is older than CUDA 13: it still targets sm_70")
    result = cli("build-native", "--quiet", "--cuda-arch", "70", "--build-dir", tmp_path / "b")
    assert result.code == 1
    assert re.fullmatch(
        f"hps-surgeon: error: build-native: `cmake -S {ROOT / 'plugin'} ...` exited 1 — CMake Error at "
        r"cmake/CudaArchitectures.cmake:\d+ \(message\): CUDA architecture 70 needs a CUDA 12 nvcc: CUDA 1\d\.\d "
        r"\(\S+/nvcc\) targets 75 and newer only. For V100 configure a fresh build folder with "
        r"-DCMAKE_CUDA_COMPILER=<CUDA 12.x>/bin/nvcc \(or: hps-surgeon build-native --cuda-arch 70 --cuda-root "
        r"<CUDA 12.x>\), or drop 70 from CMAKE_CUDA_ARCHITECTURES.; `hps-surgeon doctor` lists what the build needs",
        result.error_line), result.error_line
    assert not (tmp_path / "b" / "libhps_plugin.so").exists()


def test_libraries_built_elsewhere_are_named_for_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("HPS_SURGEON_PLUGIN_LIB", raising=False)
    monkeypatch.delenv("HPS_SURGEON_STORAGE_LIB", raising=False)
    build = native_build.NativeBuild(source=ROOT / "plugin", build_dir=tmp_path / "b")
    assert native_build.where_found(build) == [f"export HPS_SURGEON_PLUGIN_LIB={tmp_path}/b/libhps_plugin.so",
                                               f"export HPS_SURGEON_STORAGE_LIB={tmp_path}/b/libhps_storage.so"]
    in_tree = native_build.NativeBuild(source=ROOT / "plugin", build_dir=native_build.default_build_dir(ROOT / "plugin"))
    if (in_tree.build_dir / "libhps_plugin.so").exists() and (in_tree.build_dir / "libhps_storage.so").exists():
        assert native_build.where_found(in_tree) == []


def test_build_native_refuses_a_cuda_root_without_nvcc(cli, tmp_path):
    result = cli("build-native", "--cuda-root", tmp_path, "--cuda-arch", "70", "--build-dir", tmp_path / "b")
    assert result.code == 2
    assert result.error_line.endswith(f"; --cuda-root {tmp_path}: no bin/nvcc there")
    assert not (tmp_path / "b").exists()


def test_doctor_flags_a_gpu_the_plugin_has_no_code_for(tmp_path):
    """A stand-in nvidia-smi lists a V100 and an H100 (no GPU here); the plugin built here has the default fatbin,
    which has code for 9.0 and not for 7.0."""
    lib = native.library_path()[0]
    if not lib.is_file():
        skip_unless_required(f"{lib} is not built (hps-surgeon build-native)")
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\nprintf '0, Tesla V100-SXM2-32GB, 7.0\\n1, NVIDIA H100 80GB HBM3, 9.0\\n'\n")
    smi.chmod(0o755)
    env = {**os.environ, "PATH": f"{smi.parent}{os.pathsep}{os.environ['PATH']}", "HPS_SURGEON_PLUGIN_LIB": str(lib)}
    report = json.loads(hps_surgeon("doctor", "--json", env=env).stdout)
    gpus = finding(report, "GPUs")
    assert gpus["gpus"] == [{"index": 0, "name": "Tesla V100-SXM2-32GB", "compute_capability": "7.0"},
                            {"index": 1, "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}]
    covers = read_library(lib)
    if covers.runs_on(7, 0) or not covers.runs_on(9, 0):
        pytest.skip(f"{lib} was built for {covers.sass}: this test needs 9.0 without 7.0 (the default fatbin)")
    assert (gpus["status"], gpus["summary"], gpus["fix"]) == (
        "partial", "0: Tesla V100-SXM2-32GB (7.0); 1: NVIDIA H100 80GB HBM3 (9.0); libhps_plugin.so has no code for 7.0",
        "hps-surgeon build-native --cuda-arch '70' --cuda-root <CUDA 12 toolkit>")


def test_doctor_imports_the_builder_build_engine_would_use(bare_machine):
    report = json.loads(hps_surgeon("doctor", "--json", env=bare_machine).stdout)
    builders = finding(report, "builders")
    if importlib.util.find_spec("tensorrt_rtx") is None:
        assert (builders["status"], builders["summary"]) == ("missing", "neither tensorrt nor tensorrt_rtx is installed")
        skip_unless_required("TensorRT-RTX is not installed: only the report of its absence was checked")
    if importlib.util.find_spec("tensorrt") is not None:
        assert builders["status"] == "ok" and "; build-engine uses TensorRT " in builders["summary"]
        return
    assert builders["status"] == "partial"
    assert re.fullmatch(r"tensorrt_rtx 1\.7\.1\.116 \(tensorrt_rtx_cu13\); imports \(build-engine, check --engine; "
                        r"not deploy --build-engine\)", builders["summary"]), builders["summary"]
