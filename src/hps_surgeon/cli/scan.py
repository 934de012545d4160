"""`hps-surgeon scan MODEL`: the lookups rewrite would replace, and those it would not."""

from __future__ import annotations

import argparse
import json

from ..api import scan
from ..errors import EXIT_OK
from . import _options


def add_parser(commands) -> argparse.ArgumentParser:
    p = commands.add_parser("scan", help="list embedding lookups and whether they can be rewritten")
    p.add_argument("model", help="ONNX model")
    _options.add_json(p, "the lookups")
    _options.add_patterns(p)
    return p


def run(args: argparse.Namespace) -> int:
    result = scan(args.model, patterns=args.patterns)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return EXIT_OK
    print(f"{result.model}: {len(result.lookups)} lookup(s) to rewrite, "
          f"{len(result.not_rewritable)} not rewritable")
    if result.lookups:
        rows = [(e.node, e.pattern, e.table, f"{e.rows} x {e.dim}", _options.size(e.nbytes), e.table_dtype,
                 e.key_dtype) for e in result.lookups]
        _options.table(("node", "pattern", "table", "rows x dim", "bytes", "dtype", "keys"), rows)
    if result.not_rewritable:
        print("not rewritable:")
        for miss in result.not_rewritable:
            print(f"  [{miss.pattern}] {miss.reason}")
    return EXIT_OK
