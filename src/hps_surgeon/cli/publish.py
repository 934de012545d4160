"""`hps-surgeon publish`: the command-line face of `storage.publish` (arguments in, summary out)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from tqdm import tqdm

from ..errors import EXIT_INTERRUPTED, EXIT_OK
from ..storage.config import parse_redis_url
from ..storage.publish import publish
from ._options import add_allow_path, add_force, add_json, add_quiet

HELP = "publish a rewrite's tables into Redis Cluster / RocksDB in HugeCTR's layout"


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = commands.add_parser(
        "publish", help=HELP, description=HELP + ", then add volatile_db / persistent_db to its hps_config.json.",
        epilog="exit codes: 0 published; 2 bad input or a database refused (address, password, lock, "
               "partition count); 130 interrupted (re-run the same command to complete it)")
    p.add_argument("rewrite_dir", help="folder written by `hps-surgeon rewrite --out` (hps_config.json, tables/)")
    p.add_argument("--volatile-db", metavar="redis://HOST:PORT[,HOST:PORT...]",
                   help="Redis Cluster to publish to (redis://[user:password@]host:port,...)")
    p.add_argument("--persistent-db", metavar="PATH", help="RocksDB folder to publish to (created if missing)")
    p.add_argument("--num-partitions", type=int,
                   help="Redis partitions per table (default: the config's, else 8 as HugeCTR documents)")
    p.add_argument("--update", metavar="TABLE_DIR",
                   help="publish the changed rows in this sparse-model folder (key, emb_vector) into the databases "
                        "the config names, while the plugin serves")
    p.add_argument("--table", help="with --update: the table's name (default: TABLE_DIR's folder name)")
    add_allow_path(p)
    add_force(p, "drop what the databases hold for these tables first (e.g. another partition count)")
    add_json(p, "the report")
    add_quiet(p)
    return p


def run(args: argparse.Namespace) -> int:
    redis = parse_redis_url(args.volatile_db) if args.volatile_db else None
    show = not (args.quiet or args.json) and os.isatty(2)
    with tqdm(total=0, unit="row", unit_scale=True, desc="publish", disable=not show, leave=False) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            report = publish(args.rewrite_dir, redis=redis, rocksdb=args.persistent_db,
                             num_partitions=args.num_partitions, update=args.update, table=args.table,
                             force=args.force, progress=progress)
        except KeyboardInterrupt:
            bar.close()
            print("hps-surgeon: error: publish interrupted; the rows written so far are valid and hps_config.json is "
                  "unchanged; run the same command again to complete it", file=sys.stderr)
            return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return EXIT_OK
    rate = report.bytes / report.seconds / 1e6 if report.seconds > 0 else 0.0
    what = "updated" if report.update else "published"
    print(f"{what} {len(report.tables)} table(s), {report.bytes / 1e6:.1f} MB in {report.seconds:.2f} s "
          f"({rate:.0f} MB/s) to {'; '.join(report.databases)}")
    for entry in report.tables:
        print(f"  {entry['tag']}: {entry['rows']} rows from {entry['folder']}")
    if report.renamed:
        pairs = [f"'{old.split('/', 1)[1]}' -> '{new}'" for old, new in report.renamed.items()]
        shown = ", ".join(pairs[:3]) + (f", ... ({len(pairs) - 3} more)" if len(pairs) > 3 else "")
        print(f"  renamed {len(pairs)} table(s) to HugeCTR's tag rule [A-Za-z0-9_-]: {shown} "
              "(embedding_table_names; lookups use table_id, so the model is unchanged)")
    if not report.update:
        print(f"  config: {report.config_path} (volatile_db / persistent_db written)")
    return EXIT_OK
