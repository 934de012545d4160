"""`hps-surgeon verify ORIGINAL REWRITTEN --config C`: Polygraphy comparison of the two models."""

from __future__ import annotations

import argparse
import sys

from ..errors import EXIT_FINDINGS, EXIT_OK
from ..verify import verify
from ..verify.compare import BACKENDS


def add_parser(commands) -> argparse.ArgumentParser:
    p = commands.add_parser("verify", help="compare a rewritten model with the original (Polygraphy)")
    p.add_argument("original", help="the model before rewrite")
    p.add_argument("rewritten", help="the rewritten model (model.onnx of rewrite's output)")
    p.add_argument("--config", required=True, help="hps_config.json of the rewritten model")
    p.add_argument("--backend", choices=BACKENDS, default="reference",
                   help="HPS_TRT lookups: CPU reference, or the CUDA plugin library (GPU machines)")
    p.add_argument("--iterations", type=int, default=3, help="feeds per batch size (default 3)")
    p.add_argument("--batch-size", type=int, default=8, help="batch size besides 1 (default 8)")
    p.add_argument("--atol", type=float, default=1e-6, help="absolute tolerance (default 1e-6)")
    p.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (default 1e-5)")
    p.add_argument("--seed", type=int, default=1, help="seed of the input data (default 1)")
    return p


def run(args: argparse.Namespace) -> int:
    report = verify(args.original, args.rewritten, args.config, backend=args.backend, iterations=args.iterations,
                    batch_size=args.batch_size, atol=args.atol, rtol=args.rtol, seed=args.seed)
    for r in report.key_ranges:
        where = r.input if r.column is None else f"{r.input}[..., {r.column}]"
        print(f"keys {where}: drawn from [{r.low}, {r.high}]")
    for out in report.outputs:
        print(f"output '{out.name}': max abs error {out.max_abs:.3g}, max rel error {out.max_rel:.3g}")
    if report.passed:
        print(f"PASSED: {report.iterations} feeds (batch sizes {', '.join(map(str, report.batch_sizes))}) "
              f"match within atol {report.atol:g}, rtol {report.rtol:g}")
        return EXIT_OK
    worst = report.worst
    print(f"hps-surgeon: verify FAILED: output '{worst.name}' differs: max abs error {worst.max_abs:.3g}, "
          f"max rel error {worst.max_rel:.3g} (atol {report.atol:g}, rtol {report.rtol:g})", file=sys.stderr)
    return EXIT_FINDINGS
