"""`hps-surgeon build-engine REWRITE_DIR --out FILE.plan`: an engine built by TensorRT or TensorRT-RTX.

Exit codes: 0 engine written; 1 the parser or builder refused the model (one line per problem,
nothing written); 2 bad input, or no builder / plugin library to build with.
"""

from __future__ import annotations

import argparse
import sys

from ..deploy.engine import EngineBuild, build_engine
from ..errors import EXIT_FINDINGS, EXIT_OK
from . import _options


def add_parser(commands) -> argparse.ArgumentParser:
    p = commands.add_parser(
        "build-engine", help="build a TensorRT engine from a rewrite folder with the HPS_TRT plugin (TensorRT, or "
                             "TensorRT-RTX ahead of time without a GPU)",
        epilog="exit codes: 0 engine written; 1 the parser or builder refused the model; 2 bad input or no builder")
    p.add_argument("rewrite_dir", metavar="REWRITE_DIR", help="output folder of hps-surgeon rewrite")
    p.add_argument("--out", required=True, help="engine file to write (e.g. model.plan)")
    _options.add_batch(p)
    p.add_argument("--fp16", action="store_true", help="TensorRT's FP16 flag (builders with weakly typed networks)")
    _options.add_engine(p)
    _options.add_allow_path(p)
    _options.add_force(p, "replace an existing --out")
    _options.add_quiet(p)
    return p


def run(args: argparse.Namespace) -> int:
    progress = None if args.quiet else _options.progress_line()
    build = build_engine(args.rewrite_dir, args.out, _options.engine_options(args, fp16=args.fp16),
                         args.min_batch, args.opt_batch, args.max_batch, force=args.force, progress=progress)
    if progress is not None:
        progress.done()
    return report(build, args.out)


def report(build: EngineBuild, out: str) -> int:
    """What was built with what, or every problem; shared with `deploy --build-engine`."""
    print(f"builder: {build.builder}, for {build.targets}; plugin {build.plugin_lib}")
    shapes = ", ".join(f"{name} {low}..{high} (opt {mid})" for name, (low, mid, high) in build.profile.shapes.items())
    print(f"profile: {shapes}")
    if build.ok:
        print(f"built {out} ({_options.size(len(build.plan))}) in {build.seconds:.1f} s: {build.plugin_layers} "
              f"HPS_TRT plugin layer(s) for {build.hps_nodes} node(s)")
        return EXIT_OK
    for problem in build.problems:
        print(problem)
    print(f"hps-surgeon: build-engine FAILED: {len(build.problems)} problem(s); no engine written", file=sys.stderr)
    return EXIT_FINDINGS
