"""Publishing a rewrite's tables into Redis Cluster / RocksDB in HugeCTR's HPS layout.

Order of work, so that a failure leaves nothing half-done that matters:
1. read the config and every table's files, open every database (address, password, path,
   lock) and check what each already holds for these tables (partition count, key width);
2. stream the rows in (chunked, pipelined per node, flat memory; an interrupted run leaves
   correct rows behind and is completed by running it again: writes are idempotent);
3. read a sample of rows back from every database and compare bytes with the files;
4. only then write the `volatile_db` / `persistent_db` sections into hps_config.json (atomically).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from hps_surgeon import confine
from hps_surgeon.errors import SurgeonError, errors
from hps_surgeon.hps import config as hps_config
from hps_surgeon.hps.config_fields import default_table_name
from hps_surgeon.hps.contract import CONFIG_NAME, hugectr_names
from hps_surgeon.hps.tables import KEY_FILE, VECTOR_FILE, TableSizeError, key_summary, table_files, table_rows
from hps_surgeon.outputs import database_folder

from . import _native
from .config import (DEFAULT_PARTITIONS, RedisTarget, persistent_section, volatile_section, write_config)

_SAMPLE_ROWS = 1024
#: Redis partitions per table, at most: the config schema's bound (hps_config.schema.json)
MAX_PARTITIONS = 65536


@dataclass(frozen=True)
class TableSource:
    """One table of the config, as it will be published."""

    model: str
    table_id: int
    name: str  #: embedding_table_names entry after renaming to HugeCTR's tag rule
    tag: str  #: "hps_et.<model>.<name>" ("" until every input is checked: `_tagged`)
    folder: Path  #: sparse-model folder (key, emb_vector)
    dim: int
    rows: int


@dataclass
class PublishReport:
    """What `publish` did."""

    config_path: Path
    tables: list[dict] = field(default_factory=list)  #: tag, rows, new_keys per database
    renamed: dict[str, str] = field(default_factory=dict)  #: old table name -> HugeCTR-valid name
    databases: list[str] = field(default_factory=list)  #: "redis_cluster 127.0.0.1:7000,..." / "rocks_db /path"
    seconds: float = 0.0
    bytes: int = 0  #: vector bytes written, over all databases
    update: bool = False

    def to_dict(self) -> dict:
        return {"config": str(self.config_path), "tables": self.tables, "renamed": self.renamed,
                "databases": self.databases, "seconds": round(self.seconds, 3), "bytes": self.bytes,
                "update": self.update}


def publish(rewrite_dir: str | os.PathLike[str], *, redis: RedisTarget | None = None,
            rocksdb: str | os.PathLike[str] | None = None, num_partitions: int | None = None,
            update: str | os.PathLike[str] | None = None, table: str | None = None, force: bool = False,
            progress: Callable[[int, int], None] | None = None) -> PublishReport:
    """Publish the tables of `rewrite_dir/hps_config.json` (or, with `update`, one folder of changed rows).

    `redis` / `rocksdb` name the targets of a full publish; `update` writes the rows of a sparse-model
    folder into the databases the config already names (table chosen by `table` or the folder's name).
    `force` drops what the databases hold for these tables first (a different partition count, say).
    Raises SurgeonError with one line naming the file/table/database and what to do.
    """
    config_path = Path(rewrite_dir) / CONFIG_NAME
    config = _read_config(config_path)
    key_bits = 64 if config.get("supportlonglong", True) else 32
    report = PublishReport(config_path, update=update is not None)
    tables = _tables(config_path, config, report.renamed)
    # what publish reads, which no database it writes may replace or mix into (outputs.py)
    inputs = [config_path.parent, *(t.folder for t in tables), *([Path(update)] if update is not None else [])]
    if update is not None:
        if redis is not None or rocksdb is not None or num_partitions is not None:
            raise SurgeonError("--update writes into the databases named in the config; drop --volatile-db, "
                               "--persistent-db and --num-partitions")
        sections = {s: config[s] for s in ("volatile_db", "persistent_db")
                    if isinstance(config.get(s), dict) and config[s].get("type") in _DB_TYPES[s]}
        if not sections:
            raise SurgeonError(f"{config_path}: has no redis_cluster volatile_db or rocks_db persistent_db section; "
                               "publish the tables first (hps-surgeon publish DIR --volatile-db/--persistent-db)")
        if "persistent_db" in sections:
            _configured_database(config_path, sections["persistent_db"], inputs)
        tables = [_update_source(tables, Path(update), table)]
    else:
        if redis is None and rocksdb is None:
            raise SurgeonError("nothing to publish to: give --volatile-db redis://host:port[,...] and/or "
                               "--persistent-db PATH")
        if num_partitions is not None and (redis is None or not 1 <= num_partitions <= MAX_PARTITIONS):
            raise SurgeonError(f"--num-partitions {num_partitions}: Redis partitions per table, 1 to {MAX_PARTITIONS}, "
                               "with --volatile-db" + ("" if redis is not None else "; add --volatile-db or drop it"))
        sections = {}
        if redis is not None:
            existing = config.get("volatile_db") if isinstance(config.get("volatile_db"), dict) else None
            partitions = num_partitions or (existing or {}).get("num_partitions", DEFAULT_PARTITIONS)
            sections["volatile_db"] = volatile_section(redis, partitions, existing)
        if rocksdb is not None:
            existing = config.get("persistent_db") if isinstance(config.get("persistent_db"), dict) else None
            folder = database_folder(rocksdb, "--persistent-db", inputs)
            sections["persistent_db"] = persistent_section(folder, existing)
    _check_keys(tables, key_bits)
    # every input is checked: only now is the storage library needed (HugeCTR's tags, the databases)
    tables = _tagged(tables, config_path)

    databases = _open(sections, key_bits, config_path)
    try:
        for source in tables:
            for name, db in databases.items():
                if force and update is None:
                    db.evict_table(source.tag)
                db.check_table(source.tag, source.dim)
        report.databases = [_label(name, sections[name]) for name in databases]
        start = time.perf_counter()
        total = sum(t.rows for t in tables) * len(databases)
        done_before = 0
        for source in tables:
            entry = {"tag": source.tag, "rows": source.rows, "folder": str(source.folder)}
            for name, db in databases.items():
                def step(done: int, _total: int, base: int = done_before) -> bool:
                    if progress:
                        progress(base + done, total)
                    return True

                rows, new = db.publish(source.tag, source.folder, source.dim, progress=step)
                entry[name] = {"rows": rows, "new_keys": new}
                done_before += rows
                report.bytes += rows * source.dim * 4
            report.tables.append(entry)
        report.seconds = time.perf_counter() - start
        for source in tables:
            for name, db in databases.items():
                _verify(db, name, sections[name], source, full=update is None)
    finally:
        for db in databases.values():
            db.close()
    if update is None:
        new_config = dict(config)
        new_config.update(sections)
        for model in new_config["models"]:
            model["embedding_table_names"] = [report.renamed.get(f"{model['model']}/{n}", n)
                                              for n in _names(model)]
        write_config(config_path, new_config)
    return report


_DB_TYPES = {"volatile_db": ("redis_cluster", "redis"), "persistent_db": ("rocks_db", "rocksdb", "rocks")}


def _read_config(path: Path) -> dict:
    """The config as written, read once; every field's type and every path (the confinement rule)
    checked before any is used. Table names HugeCTR refuses are no reason to stop: publish renames
    them (contract.hugectr_names)."""
    raw, config, problems = hps_config.read(path)
    found = [p for p in errors(problems) if config is None or ".embedding_table_names[" not in p.where]
    if found:
        raise SurgeonError(f"{found[0]}" + (f" (and {len(found) - 1} more)" if len(found) > 1 else ""))
    return raw


def _names(model: dict) -> list[str]:
    count = len(model.get("sparse_files", []))
    names = model.get("embedding_table_names")
    # HugeCTR's default names (inference_utils.cpp:627-632).
    return list(names) if isinstance(names, list) else [default_table_name(i) for i in range(count)]


def _tables(path: Path, config: dict, renamed: dict[str, str]) -> list[TableSource]:
    """Every table of the config (folder confined, file sizes checked), without its tag yet (`_tagged`)."""
    tables = []
    for index, model in enumerate(config["models"]):
        # _read_config refused invalid model names and per-table lists of different lengths
        name = model["model"]
        dims, names = model["embedding_vecsize_per_table"], _names(model)
        for table_id, (dim, old, new) in enumerate(zip(dims, names, hugectr_names(names))):
            if old != new:
                renamed[f"{name}/{old}"] = new
            # the confinement rule (confine.py): the table and its files lie inside the config's folder
            # (or a folder trusted with --allow-path)
            where = f"models[{index}].sparse_files[{table_id}]"
            folder = hps_config.table_folder(path, model, table_id)
            rows = _rows(*table_files(path, folder, where), dim, f"{path}: {where}")
            tables.append(TableSource(name, table_id, new, "", folder, dim, rows))
    return tables


def _rows(key_file: Path, vector_file: Path, dim: int, where: str) -> int:
    try:
        return table_rows(key_file, vector_file, dim)
    except TableSizeError as exc:
        raise SurgeonError(f"{where}: {exc}; re-export the table") from None


def _tagged(tables: list[TableSource], config_path: Path) -> list[TableSource]:
    """The tables with HugeCTR's tag ("hps_et.<model>.<table>", made by the storage library)."""
    try:
        return [replace(t, tag=_native.tag_name(t.model, t.name)) for t in tables]
    except _native.StorageUnavailableError as exc:
        raise SurgeonError(f"{config_path}: cannot publish its tables: {exc}") from None


def _configured_database(config_path: Path, section: dict, inputs: list[Path]) -> None:
    """--update writes the RocksDB that persistent_db.path names: confined as a table is, and an existing
    database (an update never creates one where nobody asked for it)."""
    path = confine.inside(config_path, "persistent_db.path", section.get("path"), trusted=True, verb="write")
    database_folder(path, f"{config_path}: persistent_db.path", inputs, existing=True)


def _update_source(tables: list[TableSource], folder: Path, table: str | None) -> TableSource:
    wanted = table or folder.name
    matches = [t for t in tables if wanted in (t.name, t.folder.name, str(t.table_id))]
    if len(matches) != 1:
        names = ", ".join(sorted({t.name for t in tables}))
        raise SurgeonError(f"--update {folder}: {'no' if not matches else 'more than one'} table named '{wanted}' in "
                           f"the config (tables: {names}); pass --table NAME")
    target = matches[0]
    key_file, vector_file = folder / KEY_FILE, folder / VECTOR_FILE
    for file in (key_file, vector_file):
        if not file.is_file():
            raise SurgeonError(f"--update {folder}: {file.name} is missing or not a regular file; pass a sparse-model "
                               "folder (key, emb_vector)")
    rows = _rows(key_file, vector_file, target.dim, f"--update {folder}")
    return replace(target, folder=folder, rows=rows)


def _check_keys(tables: list[TableSource], key_bits: int) -> None:
    for t in tables:
        if t.rows == 0:
            continue
        summary = key_summary(t.folder / "key")
        if not summary.unique:
            raise SurgeonError(f"{t.folder / 'key'}: holds duplicate keys; each key must appear once (re-export)")
        if key_bits == 32 and (summary.low < -(2**31) or summary.high >= 2**32):
            raise SurgeonError(f"{t.folder / 'key'}: keys span {summary.low}..{summary.high}, beyond the 32-bit keys "
                               "of this config (supportlonglong is false: HugeCTR stores unsigned int keys); "
                               "set supportlonglong to true")


def _open(sections: dict[str, dict], key_bits: int, config_path: Path) -> dict[str, _native.Database]:
    opened: dict[str, _native.Database] = {}
    try:
        for name, section in sections.items():
            params = dict(section)
            if name == "persistent_db" and not os.path.isabs(params.get("path", "/")):
                params["path"] = str(config_path.parent / params["path"])
            opened[name] = _native.Database.open(name, params, key_bits, _label(name, section))
    except BaseException:
        for db in opened.values():
            db.close()
        raise
    return opened


def _label(name: str, section: dict) -> str:
    return f"redis_cluster {section.get('address')}" if name == "volatile_db" else f"rocks_db {section.get('path')}"


def _verify(db: _native.Database, name: str, section: dict, source: TableSource, full: bool) -> None:
    """Sampled rows read back byte-exact; a full Redis publish must have stored every row."""
    if source.rows == 0:
        return
    rng = np.random.default_rng(source.rows)
    rows = np.unique(rng.integers(0, source.rows, size=min(_SAMPLE_ROWS, source.rows)))
    keys = np.asarray(np.memmap(source.folder / "key", dtype="<i8", mode="r")[rows])
    vectors = np.memmap(source.folder / "emb_vector", dtype="<f4", mode="r").reshape(source.rows, source.dim)[rows]
    values, status = db.fetch(source.tag, keys, source.dim)
    bad = np.flatnonzero((status != _native.FOUND) | np.any(values.view(np.uint32) != vectors.view(np.uint32), axis=1))
    if bad.size:
        raise SurgeonError(f"{_label(name, section)}: table {source.tag}: {bad.size} of {rows.size} sampled rows do not "
                           f"read back as written (first: key {int(keys[bad[0]])}, status {int(status[bad[0]])}); "
                           "check the database's eviction settings (overflow_margin, maxmemory)")
    if full and name == "volatile_db" and "overflow_margin" not in section:
        stored = db.size(source.tag)
        if stored < source.rows:
            raise SurgeonError(f"{_label(name, section)}: table {source.tag} holds {stored} of {source.rows} rows after "
                               "publishing; Redis evicted some (maxmemory policy?); raise maxmemory and re-run")
