"""`hps-surgeon` command line: parses arguments, calls the API, prints. No logic of its own.

Exit codes: 0 success; 1 findings (verify mismatch, check problems); 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import api, deploy
from .storage import command as publish_command
from .check import check_models
from .errors import EXIT_FINDINGS, EXIT_INPUT, EXIT_OK, SurgeonError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except SurgeonError as exc:
        print(f"hps-surgeon: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except BrokenPipeError:  # `hps-surgeon scan m.onnx | head`: the reader left, nothing to report
        sys.stderr.close()
        return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hps-surgeon",
        description="Rewrite the embedding lookups of ONNX recommendation models into HPS_TRT nodes for "
                    "NVIDIA's Hierarchical Parameter Server, export the tables, verify and deploy the result.",
        epilog="exit codes: 0 success; 1 verify found a mismatch or check found a problem; 2 bad input or usage")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    scan = commands.add_parser("scan", help="list embedding lookups and whether they can be rewritten")
    scan.add_argument("model", help="ONNX model")
    scan.add_argument("--json", action="store_true", help="print JSON instead of a table")
    scan.add_argument("--patterns", help="folder of pattern folders (default: the built-in patterns)")
    scan.set_defaults(run=_scan)

    rewrite = commands.add_parser("rewrite", help="rewrite lookups into HPS_TRT nodes and export the tables")
    rewrite.add_argument("model", help="ONNX model")
    rewrite.add_argument("--out", required=True, help="output folder (must be empty or absent; see --force)")
    rewrite.add_argument("--model-name", help="HPS model name (default: the model file's stem)")
    rewrite.add_argument("--key-dtype", choices=["int32", "int64"], default="int32",
                         help="dtype of HPS_TRT keys (HugeCTR's plugin takes int32 only; default int32)")
    rewrite.add_argument("--max-batch-size", type=int, default=1024, help="HPS max_batch_size (default 1024)")
    rewrite.add_argument("--max-keys-per-sample", type=int,
                         help="keys per sample per table, needed when the keys' shape is dynamic")
    rewrite.add_argument("--gpucache-ratio", type=float, default=1.0,
                         help="share of each table kept in the GPU cache, gpucacheper (default 1.0)")
    rewrite.add_argument("--domain", default="trt.plugins",
                         help="ONNX domain of HPS_TRT nodes (default trt.plugins; '' = HugeCTR's default domain)")
    rewrite.add_argument("--no-nul-strings", dest="nul_strings", action="store_false",
                         help="do not end string attributes with NUL (HugeCTR's samples do)")
    rewrite.add_argument("--ps-config-file", help="path written into the nodes (default: OUT/hps_config.json, absolute)")
    rewrite.add_argument("--patterns", help="folder of pattern folders (default: the built-in patterns)")
    rewrite.add_argument("--hugectr-sparse-model", action="append", default=[], metavar="INPUT=FOLDER[:combiner][:nnz]",
                         help="attach an HPS_TRT lookup producing embedding input INPUT from HugeCTR sparse-model "
                              "FOLDER (models converted with convert_embedding=False); repeatable")
    rewrite.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    rewrite.add_argument("--json", action="store_true", help="print the report as JSON")
    rewrite.add_argument("--dry-run", action="store_true",
                         help="plan and check everything, print what would be written, write nothing")
    rewrite.add_argument("--quiet", action="store_true", help="no progress bar")
    rewrite.set_defaults(run=_rewrite)

    verify = commands.add_parser("verify", help="compare a rewritten model with the original (Polygraphy)")
    verify.add_argument("original", help="the model before rewrite")
    verify.add_argument("rewritten", help="the rewritten model (model.onnx of rewrite's output)")
    verify.add_argument("--config", required=True, help="hps_config.json of the rewritten model")
    verify.add_argument("--backend", choices=["reference", "native"], default="reference",
                        help="HPS_TRT lookups: CPU reference, or the CUDA plugin library (GPU machines)")
    verify.add_argument("--iterations", type=int, default=3, help="feeds per batch size (default 3)")
    verify.add_argument("--batch-size", type=int, default=8, help="batch size besides 1 (default 8)")
    verify.add_argument("--atol", type=float, default=1e-6, help="absolute tolerance (default 1e-6)")
    verify.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (default 1e-5)")
    verify.add_argument("--seed", type=int, default=1, help="seed of the input data (default 1)")
    verify.set_defaults(run=_verify)

    check = commands.add_parser("check", help="validate models for a pre-commit hook (exit 1 on any problem)")
    check.add_argument("models", nargs="+", help="ONNX models")
    check.add_argument("--config", help="hps_config.json to validate against (default: hps_config.json beside "
                                        "each model, if any)")
    check.add_argument("--require-rewritten", action="store_true",
                       help="fail when an embedding lookup larger than --max-table-mb is not rewritten")
    check.add_argument("--max-table-mb", type=float, default=0.0,
                       help="with --require-rewritten: tables up to this size may stay plain lookups")
    check.add_argument("--json", action="store_true", help="print problems as JSON")
    check.set_defaults(run=_check)

    deploy.add_parser(commands)  # deploy.py owns its own arguments (issue 6)
    publish_command.add_parser(commands)  # storage/command.py owns its own arguments (issue 14)
    return parser


def _scan(args: argparse.Namespace) -> int:
    result = api.scan(args.model, patterns=args.patterns)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return EXIT_OK
    print(f"{result.model}: {len(result.lookups)} lookup(s) to rewrite, "
          f"{len(result.not_rewritable)} not rewritable")
    if result.lookups:
        rows = [(e.node, e.pattern, e.table, f"{e.rows} x {e.dim}", _size(e.nbytes), e.table_dtype, e.key_dtype)
                for e in result.lookups]
        _table(("node", "pattern", "table", "rows x dim", "bytes", "dtype", "keys"), rows)
    if result.not_rewritable:
        print("not rewritable:")
        for miss in result.not_rewritable:
            print(f"  [{miss.pattern}] {miss.reason}")
    return EXIT_OK


def _rewrite(args: argparse.Namespace) -> int:
    result = api.rewrite(
        args.model, args.out, model_name=args.model_name, key_dtype=args.key_dtype,
        max_batch_size=args.max_batch_size, max_keys_per_sample=args.max_keys_per_sample,
        gpucache_ratio=args.gpucache_ratio, domain=args.domain, nul_strings=args.nul_strings,
        ps_config_file=args.ps_config_file, force=args.force, quiet=args.quiet or args.json,
        patterns=args.patterns, hugectr_sparse_models=args.hugectr_sparse_model, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"written": result.written, "out_dir": str(result.out_dir), **result.report}, indent=2))
        return EXIT_OK
    plan = result.plan
    if args.dry_run and plan.lookups:
        print(f"dry run: would rewrite {len(plan.lookups)} lookup(s), {len(plan.tables)} table(s) "
              f"({_size(sum(t.nbytes for t in plan.tables))}) into {result.out_dir}; nothing written")
        for lookup in plan.lookups:
            print(f"  {lookup.node}: table {lookup.table_id} '{lookup.table}' {lookup.rows} x {lookup.emb_vec_size}, "
                  f"keys '{lookup.keys}' [{lookup.pattern}]")
    elif not result.written:
        print(f"{args.model}: no embedding lookup to rewrite; nothing written")
    else:
        total = sum(t.nbytes for t in plan.tables)
        print(f"rewrote {len(plan.lookups)} lookup(s) into HPS_TRT nodes, "
              f"{len(plan.tables)} table(s), {_size(total)} -> {result.out_dir}")
        print(f"  model:  {result.model_path}")
        print(f"  config: {result.config_path}  (model_name '{plan.options.model_name}')")
        print(f"  tables: {result.out_dir / 'tables'}/ ({len(plan.tables)} folder(s): key, emb_vector)")
        print(f"  report: {result.out_dir / 'report.json'}")
        for note in plan.notes:
            print(f"  note: {note}")
    for miss in plan.not_rewritten:
        print(f"  not rewritten: {miss.reason}")
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from .verify import verify  # Polygraphy is imported only by the commands that use it

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


def _check(args: argparse.Namespace) -> int:
    problems = check_models(args.models, config=args.config, require_rewritten=args.require_rewritten,
                            max_table_mb=args.max_table_mb)
    if args.json:
        print(json.dumps([{"path": p.path, "where": p.where, "message": p.message, "severity": p.severity}
                          for p in problems], indent=2))
    else:
        for problem in problems:
            print(problem)
    return EXIT_FINDINGS if any(p.severity == "error" for p in problems) else EXIT_OK


def _size(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} GiB"


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
