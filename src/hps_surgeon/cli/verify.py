"""`hps-surgeon verify ORIGINAL REWRITTEN --config C`: Polygraphy comparison of the two models, with the
keys each table saw."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import EXIT_FINDINGS, EXIT_INCONCLUSIVE, EXIT_OK
from ..verify import verify
from ..verify.compare import DEFAULT_BATCH_SIZES, FAILED, PASSED, VerifyReport
from ..verify.split import BACKENDS
from ..verify.coverage import MIN_DISTINCT_KEYS
from . import _options


def add_parser(commands) -> argparse.ArgumentParser:
    p = commands.add_parser(
        "verify", help="compare a rewritten model with the original (Polygraphy) and report the keys covered",
        epilog="exit codes: 0 PASSED; 1 FAILED (the outputs differ, or the rewritten model fails where the "
               "original runs); 2 bad input; 3 INCONCLUSIVE (outputs match, but a table saw fewer distinct "
               "existing keys than the floor); 4 internal error (a bug: please report it); 130 interrupted")
    p.add_argument("original", help="the model before rewrite")
    p.add_argument("rewritten", help="the rewritten model (model.onnx of rewrite's output)")
    p.add_argument("--config", required=True, help="hps_config.json of the rewritten model")
    p.add_argument("--backend", choices=BACKENDS, default="reference",
                   help="HPS_TRT lookups: CPU reference, or the CUDA plugin library (GPU machines)")
    p.add_argument("--batch-sizes", type=_options.positive_ints, nargs="+", default=[DEFAULT_BATCH_SIZES],
                   metavar="B", help="batch sizes of the generated feeds, e.g. 1,64 or 1 64 (default 1,64); inputs "
                                     "with static dims keep them")
    p.add_argument("--iterations", type=int, default=2, help="generated feeds per batch size (default 2); more are "
                                                             "added at the largest batch until each table reaches "
                                                             "the floor")
    p.add_argument("--max-keys-per-sample", type=int, default=None, metavar="N",
                   help="size of open dims past the batch (a history length); default: the config's largest "
                        "maxnum_catfeature_query_per_table_per_sample")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--inputs", metavar="FILE", help="feeds from a JSON file in Polygraphy's --load-inputs format "
                                                         "(polygraphy run --save-inputs), instead of generated ones")
    source.add_argument("--data-loader-script", metavar="SCRIPT[:FUNC]",
                        help="feeds from a Python script's function (load_data by default) yielding "
                             "{input name: array} dicts, as polygraphy run --data-loader-script takes")
    p.add_argument("--min-distinct-keys", type=int, default=MIN_DISTINCT_KEYS, metavar="N",
                   help=f"floor: distinct existing keys each table must see, or all its rows when fewer "
                        f"(default {MIN_DISTINCT_KEYS}); below it the verdict is INCONCLUSIVE")
    p.add_argument("--atol", type=float, default=1e-6, help="absolute tolerance (default 1e-6)")
    p.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (default 1e-5)")
    p.add_argument("--seed", type=int, default=1, help="seed of the generated feeds (default 1)")
    _options.add_json(p, "the report (verdict, errors per output, coverage per node and table)")
    _options.add_allow_path(p)
    p.add_argument("--verbose", action="store_true", help="show Polygraphy's logs, and tracebacks")
    return p


def run(args: argparse.Namespace) -> int:
    batch_sizes = tuple(b for group in args.batch_sizes for b in group)
    # an exception no check anticipated is the CLI's "internal error" (exit 4), its traceback with --verbose
    report = verify(args.original, args.rewritten, args.config, backend=args.backend,
                    iterations=args.iterations, batch_sizes=batch_sizes,
                    max_keys_per_sample=args.max_keys_per_sample, inputs=args.inputs,
                    data_loader_script=args.data_loader_script, min_distinct_keys=args.min_distinct_keys,
                    atol=args.atol, rtol=args.rtol, seed=args.seed, verbose=args.verbose)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _print(report)
    if report.verdict == PASSED:
        return EXIT_OK
    if report.verdict == FAILED:
        print(f"hps-surgeon: verify FAILED: {failure_text(report)}", file=sys.stderr)
        return EXIT_FINDINGS
    print(f"hps-surgeon: verify INCONCLUSIVE: {inconclusive_text(report)}", file=sys.stderr)
    return EXIT_INCONCLUSIVE


def _print(report: VerifyReport) -> None:
    for note in report.notes:
        print(f"note: {note}")
    for c in report.columns:
        if c.values.size:
            print(f"keys {c.column.label} -> {', '.join(c.nodes)}: {c.values.size} values found ({c.how})")
    for node in report.untraced:
        print(f"keys of {node}: not traced to any input column (coverage below says what reached it)")
    print("coverage:")
    _options.table(["node", "table", "rows", "distinct keys", "in table", "of rows", "not in table"],
                   [[c.node, c.table, c.rows, c.distinct, c.existing, f"{100 * c.fraction:.1f}%", c.missing]
                    for c in report.coverage])
    for out in report.outputs:
        nan = f", NaN in one output only at {out.nan_mismatches} position(s)" if out.nan_mismatches else ""
        print(f"output '{out.name}': max abs error {out.max_abs:.3g}, max rel error {out.max_rel:.3g}{nan}")
    if report.verdict == PASSED:
        batches = ", ".join(map(str, report.batch_sizes))
        print(f"PASSED: {report.iterations} feeds ({report.inputs}; batch sizes {batches}) match within atol "
              f"{report.atol:g}, rtol {report.rtol:g}; every table saw at least its floor of distinct keys")


def failure_text(report: VerifyReport) -> str:
    if report.failure:
        return report.failure
    worst = report.worst
    if worst.shape_mismatch:
        return f"output '{worst.name}' has another shape in the rewritten model"
    if worst.nan_mismatches:
        return (f"output '{worst.name}' differs: NaN in the original only at {worst.nan_original_only} position(s), "
                f"in the rewritten model only at {worst.nan_rewritten_only} (NaN in both at the same position counts "
                f"as equal); max abs error elsewhere {worst.max_abs:.3g}")
    return (f"output '{worst.name}' differs: max abs error {worst.max_abs:.3g}, max rel error {worst.max_rel:.3g} "
            f"(atol {report.atol:g}, rtol {report.rtol:g})")


def inconclusive_text(report: VerifyReport) -> str:
    short = report.short_tables
    first = short[0]
    more = f" (and {len(short) - 1} more table(s))" if len(short) > 1 else ""
    return (f"the outputs match, but table '{first.table}' (node {', '.join(first.nodes)}) saw {first.existing} "
            f"distinct existing key(s) of {first.rows}, below the floor of {first.floor}{more}; drive it with more "
            "samples (--inputs, --data-loader-script, --iterations, --batch-sizes) or lower --min-distinct-keys")

