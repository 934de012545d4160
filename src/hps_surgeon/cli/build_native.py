"""`hps-surgeon build-native`: build libhps_plugin.so and libhps_storage.so where hps-surgeon finds them."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from ..errors import EXIT_FINDINGS, EXIT_OK
from ..machine import native_build
from ..machine.probes import TENSORRT_ENV


def add_parser(commands) -> argparse.ArgumentParser:
    p = commands.add_parser(
        "build-native", help="build the native plugin and storage libraries (CMake, nvcc) in one command",
        description="Checks the toolchain, then configures, builds (and with --test, tests) plugin/ with CMake into "
                    "<checkout>/build/plugin, where hps-surgeon looks first. Exit codes: 0 built; 1 a build step "
                    "failed (its output is above); 2 something it needs is missing (named).")
    p.add_argument("--cuda-arch", metavar="LIST",
                   help="CUDA architectures, CMake style: '86', '90;100', 'native' (default: the plugin's fatbin, "
                        "75;80;86;89;90;100;120; 70 needs --cuda-root of a CUDA 12 toolkit)")
    p.add_argument("--tensorrt-root", type=Path, metavar="DIR",
                   help=f"TensorRT folder with include/NvInfer.h: adds the TensorRT glue (default: ${TENSORRT_ENV})")
    p.add_argument("--cuda-root", type=Path, metavar="DIR", help="CUDA toolkit to build with (default: nvcc on PATH)")
    p.add_argument("--build-dir", type=Path, metavar="DIR", help="build folder (default: <checkout>/build/plugin)")
    p.add_argument("--source", type=Path, metavar="DIR", help="the plugin's sources (default: <checkout>/plugin)")
    p.add_argument("--install", type=Path, metavar="PREFIX",
                   help="also install into PREFIX/lib (/usr/local/hps_trt is where hps-surgeon and HugeCTR look)")
    p.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2, help="parallel compile jobs")
    p.add_argument("--test", action="store_true", help="also build and run the plugin's host-only tests (ctest)")
    p.add_argument("--fresh", action="store_true", help="configure from scratch (another --cuda-root, a stale cache)")
    p.add_argument("--print-commands", action="store_true", help="print the cmake commands, run nothing")
    p.add_argument("--quiet", action="store_true",
                   help="no build output; a failing step is one line with its first error (CMake's, the compiler's)")
    return p


def run(args: argparse.Namespace) -> int:
    source = native_build.plugin_source(args.source)
    trt = args.tensorrt_root or (Path(os.environ[TENSORRT_ENV]) if os.environ.get(TENSORRT_ENV) else None)
    build = native_build.NativeBuild(
        source=source, build_dir=args.build_dir or native_build.default_build_dir(source), cuda_archs=args.cuda_arch,
        tensorrt_root=trt.resolve() if trt else None, cuda_root=args.cuda_root.resolve() if args.cuda_root else None,
        jobs=args.jobs, run_tests=args.test, install_prefix=args.install, fresh=args.fresh)
    if args.print_commands:
        print("\n".join(shlex.join(step) for step in build.commands()))
        return EXIT_OK
    native_build.preflight(build)
    try:
        built = native_build.run(build, quiet=args.quiet)
    except native_build.BuildFailed as exc:
        print(f"hps-surgeon: error: build-native: {exc}; `hps-surgeon doctor` lists what the build needs",
              file=sys.stderr)
        return EXIT_FINDINGS
    for name, contents in built.items():
        gpu = ", ".join([f"sm_{a}" for a in contents.sass] + [f"compute_{a}" for a in contents.ptx])
        extra = f"; CUDA {gpu}; TensorRT glue: {'yes' if contents.tensorrt_glue else 'no'}" if gpu else ""
        print(f"built {contents.path}{extra}")
    exports = native_build.where_found(build)
    if exports:
        print("hps-surgeon looks elsewhere first; to use these:\n  " + "\n  ".join(exports))
    return EXIT_OK
