"""`hps-surgeon verify ORIGINAL REWRITTEN --config C`: Polygraphy comparison of the two models, with the
keys each table saw."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import EXIT_FINDINGS, EXIT_INCONCLUSIVE, EXIT_OK
from ..verify import verify
from ..verify.compare import DEFAULT_BATCH_SIZES, FAILED, PASSED, VerifyReport
from ..verify import lookups
from ..verify.split import BACKENDS
from ..verify.coverage import MIN_DISTINCT_KEYS, Floors, advice
from . import _options


def add_parser(commands) -> argparse.ArgumentParser:
    p = commands.add_parser(
        "verify", help="compare a rewritten model with the original (Polygraphy) and report the keys covered",
        epilog="exit codes: 0 PASSED; 1 FAILED (an HPS_TRT node returns other vectors than the lookup it "
               "replaced, the outputs differ, or the rewritten model fails where the original runs); 2 bad input; "
               "3 INCONCLUSIVE (outputs and lookups match, but a table saw fewer distinct existing keys than its "
               "floor); 4 internal error (a bug: please report it); 130 interrupted")
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
    p.add_argument("--min-distinct-keys", action="append", metavar="N|TABLE=N",
                   help=f"floor: distinct existing keys each table must see, N (default {MIN_DISTINCT_KEYS}); with "
                        "real samples or untraced keys a table of fewer than 2N rows needs half its rows (all-zero "
                        "padding rows not counted), with generated feeds all its rows or every key the inputs can "
                        "reach when fewer; TABLE=N sets one table's floor (names as in the config's "
                        "embedding_table_names); repeat the option for more tables. Below it the verdict is "
                        "INCONCLUSIVE")
    p.add_argument("--atol", type=float, default=1e-6, help="absolute tolerance (default 1e-6)")
    p.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (default 1e-5)")
    p.add_argument("--seed", type=int, default=1, help="seed of the generated feeds (default 1)")
    _options.add_json(p, "the report (verdict, errors per output, coverage per node and table)")
    _options.add_allow_path(p)
    p.add_argument("--verbose", action="store_true", help="show Polygraphy's logs, and tracebacks")
    return p


def run(args: argparse.Namespace) -> int:
    batch_sizes = tuple(b for group in args.batch_sizes for b in group)
    floors = Floors.parse(args.min_distinct_keys)
    # an exception no check anticipated is the CLI's "internal error" (exit 4), its traceback with --verbose
    report = verify(args.original, args.rewritten, args.config, backend=args.backend,
                    iterations=args.iterations, batch_sizes=batch_sizes,
                    max_keys_per_sample=args.max_keys_per_sample, inputs=args.inputs,
                    data_loader_script=args.data_loader_script, min_distinct_keys=floors.default,
                    table_floors=floors.tables,
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
    fixed = {c.node for c in report.coverage if c.fixed}
    for node in report.untraced:
        if node not in fixed:
            print(f"keys of {node}: not traced to any input column (coverage below says what reached it)")
    for c in report.coverage:
        if c.fixed:
            print(f"keys of {c.node}: depend on no input's values; the {c.distinct} it received are every key it "
                  "can receive")
    checks = {c.node: c for c in report.lookups}
    print("coverage (vectors: each HPS_TRT node's output against the lookup it replaced, bit for bit):")
    _options.table(["node", "table", "rows", "distinct keys", "in table", "of rows", "not in table", "vectors"],
                   [[c.node, c.table, c.rows, c.distinct, c.existing, f"{100 * c.fraction:.1f}%", c.missing,
                     _vectors(checks.get(c.node))] for c in report.coverage])
    for check in report.lookups:
        if check.how == lookups.OUTPUTS_ONLY:
            print(f"vectors of {check.node}: compared through the model outputs only: {check.reason}")
        elif check.failed:
            print(f"vectors of {check.node}: {lookup_text(report, check)}")
    for t in report.short_tables:
        print(f"table '{t.table}': {t.existing} distinct existing key(s) of {t.rows}, below its floor of {t.floor} "
              f"({t.rule})")
    for out in report.outputs:
        nan = f", NaN in one output only at {out.nan_mismatches} position(s)" if out.nan_mismatches else ""
        print(f"output '{out.name}': max abs error {out.max_abs:.3g}, max rel error {out.max_rel:.3g}{nan}")
    if report.verdict == PASSED:
        batches = ", ".join(map(str, report.batch_sizes))
        exact = sum(c.exact for c in report.lookups)
        print(f"PASSED: {report.iterations} feeds ({report.inputs}; batch sizes {batches}) match within atol "
              f"{report.atol:g}, rtol {report.rtol:g}; {exact} of {len(report.lookups)} HPS_TRT node(s) return "
              "exactly the original lookup's vectors; every table saw at least its floor of distinct keys")


def _vectors(check) -> str:
    if check is None:
        return ""
    if check.how == lookups.OUTPUTS_ONLY:
        return "outputs only"
    if check.failed:
        return f"{check.mismatched} of {check.compared} differ"
    return f"{check.compared} identical"


def failure_text(report: VerifyReport) -> str:
    if report.failure:
        return report.failure
    wrong = report.wrong_lookups
    if wrong:
        more = f" (and {len(wrong) - 1} more node(s))" if len(wrong) > 1 else ""
        outputs = ("the model outputs differ too: " + _output_text(report) if not report.outputs_match
                   else f"the model outputs agree within atol {report.atol:g}, rtol {report.rtol:g}: only the "
                   "per-lookup comparison sees this")
        return f"HPS_TRT node '{wrong[0].node}' {lookup_text(report, wrong[0])}{more}; {outputs}"
    return _output_text(report)


def lookup_text(report: VerifyReport, check) -> str:
    """What one wrong HPS_TRT node returned: the first wrong key, where it was, by how much."""
    table = next((c.table for c in report.coverage if c.node == check.node), "?")
    if check.key is None:
        return f"differs from the original lookup '{check.original}': {check.reason}"
    row = f"row {check.row} of table '{table}'" if check.row is not None else f"not in table '{table}'"
    return (f"returns another vector than the original lookup '{check.original}' for key {check.key} ({row}; "
            f"feed {check.feed}, sample {check.sample}, key {check.slot} of the sample): {check.mismatched} of "
            f"{check.compared} element(s) differ, max abs error {check.max_abs:.3g}")


def _output_text(report: VerifyReport) -> str:
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
    every = (f"; to accept what every short table saw: "
             f"{' '.join(f'--min-distinct-keys {t.table}={t.existing}' for t in short)}" if len(short) > 1 else "")
    return (f"the outputs and every compared lookup match, but table '{first.table}' (node {', '.join(first.nodes)}) "
            f"saw {first.existing} distinct existing key(s) of {first.rows}, below its floor of {first.floor} "
            f"({first.rule}){more}; {advice(first, report.inputs == 'generated')}{every}")

