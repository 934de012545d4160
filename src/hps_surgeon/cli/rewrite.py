"""`hps-surgeon rewrite MODEL --out DIR`: lookups into HPS_TRT nodes, tables and config exported."""

from __future__ import annotations

import argparse
import json

from ..api import rewrite
from ..errors import EXIT_OK
from ..hps.contract import DEFAULT_DOMAIN, KEY_DTYPES, REPORT_NAME, TABLES_DIR
from . import _options


def add_parser(commands) -> argparse.ArgumentParser:
    p = commands.add_parser("rewrite", help="rewrite lookups into HPS_TRT nodes and export the tables")
    p.add_argument("model", help="ONNX model")
    p.add_argument("--out", required=True, help="output folder (must be empty or absent; see --force)")
    p.add_argument("--model-name", help="HPS model name (default: the model file's stem)")
    p.add_argument("--key-dtype", choices=KEY_DTYPES, default="int32",
                   help="dtype of HPS_TRT keys (HugeCTR's plugin takes int32 only; default int32)")
    p.add_argument("--max-batch-size", type=int, default=1024, help="HPS max_batch_size (default 1024)")
    p.add_argument("--max-keys-per-sample", type=int,
                   help="keys per sample per table, needed when the keys' shape is dynamic")
    p.add_argument("--gpucache-ratio", type=float, default=1.0,
                   help="share of each table kept in the GPU cache, gpucacheper (default 1.0)")
    p.add_argument("--min-table-rows", type=int, default=0,
                   help="keep tables with fewer rows inside the model (TensorRT serves them; default 0)")
    p.add_argument("--rewrite-fixed-keys", action="store_true",
                   help="also move tables whose keys depend on no graph input's values (a position table read "
                        "through Range); by default they stay in the model, each with its reason in the report")
    p.add_argument("--domain", default=DEFAULT_DOMAIN,
                   help=f"ONNX domain of HPS_TRT nodes (default {DEFAULT_DOMAIN}; '' = HugeCTR's default domain)")
    p.add_argument("--no-nul-strings", dest="nul_strings", action="store_false",
                   help="do not end string attributes with NUL (HugeCTR's samples do)")
    p.add_argument("--relative-paths", action="store_true",
                   help="write sparse_files relative to hps_config.json (a relocatable folder; our plugin reads them, "
                        "HugeCTR's HPS would look in its working directory); default: absolute paths")
    p.add_argument("--ps-config-file", help="path written into the nodes (default: OUT/hps_config.json, absolute)")
    p.add_argument("--hugectr-sparse-model", action="append", default=[], metavar="NAME=FOLDER[:combiner][:nnz]",
                   help="HugeCTR sparse-model FOLDER of embedding NAME: attach an HPS_TRT lookup producing input NAME "
                        "(convert_embedding=False), or store exactly the folder's keys for the table of NAME instead "
                        "of every key of hugectr2onnx's shared key map (convert_embedding=True); repeatable")
    p.add_argument("--plan-out", metavar="PLAN.yaml",
                   help="write the plan as an editable file (drop, rename tables, set key dtypes); with --dry-run "
                        "nothing else is written")
    p.add_argument("--plan", metavar="PLAN.yaml", help="apply an edited plan written by --plan-out")
    p.add_argument("--dry-run", action="store_true",
                   help="plan and check everything, print what would be written, write nothing")
    _options.add_patterns(p)
    _options.add_force(p, "replace a non-empty output folder")
    _options.add_json(p, "the report")
    _options.add_quiet(p)
    return p


def run(args: argparse.Namespace) -> int:
    result = rewrite(
        args.model, args.out, model_name=args.model_name, key_dtype=args.key_dtype,
        max_batch_size=args.max_batch_size, max_keys_per_sample=args.max_keys_per_sample,
        gpucache_ratio=args.gpucache_ratio, domain=args.domain, nul_strings=args.nul_strings,
        ps_config_file=args.ps_config_file, relative_paths=args.relative_paths, min_table_rows=args.min_table_rows,
        rewrite_fixed_keys=args.rewrite_fixed_keys, force=args.force,
        quiet=args.quiet or args.json, patterns=args.patterns, hugectr_sparse_models=args.hugectr_sparse_model,
        dry_run=args.dry_run, plan_file=args.plan, plan_out=args.plan_out)
    report = result.report
    if args.json:
        print(json.dumps({"written": result.written, "out_dir": str(result.out_dir), **report}, indent=2))
        return EXIT_OK
    tables, lookups = report["tables"], report["hps_trt_nodes"]
    total = _options.size(sum(t["bytes"] for t in tables))
    if args.dry_run and lookups:
        print(f"dry run: would rewrite {len(lookups)} lookup(s), {len(tables)} table(s) ({total}) into "
              f"{result.out_dir}; nothing written")
        for lookup in lookups:
            print(f"  {lookup['node']}: table {lookup['table_id']} '{lookup['table']}' {lookup['rows']} x "
                  f"{lookup['emb_vec_size']}, keys '{lookup['keys']}' [{lookup['pattern']}]")
    elif not result.written:
        print(f"{args.model}: no embedding lookup to rewrite; nothing written")
    else:
        print(f"rewrote {len(lookups)} lookup(s) into HPS_TRT nodes, {len(tables)} table(s), {total} -> "
              f"{result.out_dir}")
        print(f"  model:  {result.model_path}")
        print(f"  config: {result.config_path}  (model_name '{report['options']['model_name']}')")
        print(f"  tables: {result.out_dir / TABLES_DIR}/ ({len(tables)} folder(s): key, emb_vector)")
        print(f"  report: {result.out_dir / REPORT_NAME}")
        for note in report["notes"]:
            print(f"  note: {note}")
    if args.plan_out:
        print(f"  plan:   {args.plan_out} (edit it, then rewrite with --plan {args.plan_out})")
    for miss in report["not_rewritten"]:
        print(f"  not rewritten: {miss['reason']}")
    return EXIT_OK
