"""`hps-surgeon check MODEL...`: the pre-commit gate (exit 1 on any problem)."""

from __future__ import annotations

import argparse
import json

from ..check import check_models
from ..errors import EXIT_FINDINGS, EXIT_OK
from . import _options


def add_parser(commands) -> argparse.ArgumentParser:
    p = commands.add_parser("check", help="validate models for a pre-commit hook (exit 1 on any problem)")
    p.add_argument("models", nargs="+", help="ONNX models")
    p.add_argument("--config", help="hps_config.json to validate against (default: hps_config.json beside "
                                    "each model, if any)")
    p.add_argument("--require-rewritten", action="store_true",
                   help="fail when an embedding lookup larger than --max-table-mb is not rewritten")
    p.add_argument("--max-table-mb", type=float, default=0.0,
                   help="with --require-rewritten: tables up to this size may stay plain lookups")
    p.add_argument("--engine", action="store_true",
                   help="also parse and build each rewritten model with the installed NVIDIA builder and the HPS_TRT "
                        "plugin (TensorRT-RTX needs no GPU)")
    _options.add_allow_path(p)
    _options.add_engine(p)
    _options.add_json(p, "problems")
    return p


def run(args: argparse.Namespace) -> int:
    problems = check_models(args.models, config=args.config, require_rewritten=args.require_rewritten,
                            max_table_mb=args.max_table_mb,
                            engine=_options.engine_options(args) if args.engine else None)
    if args.json:
        print(json.dumps([{"path": p.path, "where": p.where, "message": p.message, "severity": p.severity}
                          for p in problems], indent=2))
    else:
        for problem in problems:
            print(problem)
    return EXIT_FINDINGS if any(p.severity == "error" for p in problems) else EXIT_OK
