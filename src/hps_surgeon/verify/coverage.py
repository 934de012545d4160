"""What a verification really tested: the keys that reached each HPS_TRT node while it ran.

Measured, never assumed: `SplitRunner.run` records every key a node receives, and here they are
counted against the node's table. A table whose distinct existing keys stay below its floor makes
the verdict INCONCLUSIVE whatever the outputs say. The floor asks for what the feeds could reach:

* `--min-distinct-keys TABLE=N`: N (at most the table's rows), whatever else holds;
* keys fixed by the graph (no input's values reach them: a position table read through `Range`):
  the keys the node received are all it can ever receive, so they are the floor;
* generated feeds, keys traced to input columns: N (default 64) or all the table's rows when fewer, or
  every key tracing found when that is all the inputs can reach (keys = Min(x, 3) reach 4 rows);
* otherwise (real samples, keys not traced): N, or half of the table's rows when it holds fewer
  than 2N, padding rows (all zeros: torch's padding_idx, an id a library reserves) not counted.
  Real traffic does not look up padding, and a field of 62 ids is seldom seen whole in a few
  hundred samples; half of a small table is still a real share of it, checked bit for bit.

With too few keys, `advice` says what will raise them: more of the same samples only when the
last feeds were still adding keys, otherwise other samples or a per-table floor.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SurgeonError
from ..hps import config as hps_config
from ..hps.tables import table_files
from .keyspace import TARGETS
from .split import LookupNode

#: default floor: distinct existing keys each table must see (see the module's docstring for smaller tables)
MIN_DISTINCT_KEYS = 64


@dataclass(frozen=True)
class Floors:
    """The floor's settings: `--min-distinct-keys N` and any number of `--min-distinct-keys TABLE=N`."""

    default: int = MIN_DISTINCT_KEYS
    tables: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, values: list[str] | None) -> Floors:
        """From the CLI's `--min-distinct-keys` values (`N` or `TABLE=N`, the last plain N wins)."""
        default, tables = MIN_DISTINCT_KEYS, {}
        for value in values or []:
            name, _, count = value.rpartition("=")
            try:
                number = int(count)
            except ValueError:
                number = -1
            if number < 0 or (name == "" and "=" in value):
                raise SurgeonError(f"--min-distinct-keys {value}: give N or TABLE=N, N a whole number >= 0")
            if name:
                tables[name] = number
            else:
                default = number
        return cls(default, tables)

    def check_tables(self, names: list[str], config: Path) -> None:
        unknown = [name for name in self.tables if name not in names]
        if unknown:
            raise SurgeonError(f"--min-distinct-keys {unknown[0]}={self.tables[unknown[0]]}: {config} has no table "
                               f"'{unknown[0]}' (its tables: {', '.join(names)})")


@dataclass(frozen=True)
class NodeCoverage:
    """Keys that reached one HPS_TRT node during the comparison."""

    node: str
    table: str  #: the table's name in the HPS config
    table_id: int
    rows: int  #: keys the table holds
    distinct: int  #: distinct keys that reached the node
    existing: int  #: of those, keys the table holds
    missing: int  #: of those, keys the table does not hold (served the default value)
    fixed: bool = False  #: its keys depend on no graph input's values

    @property
    def fraction(self) -> float:
        return self.existing / self.rows if self.rows else 1.0

    def to_dict(self) -> dict:
        return {**asdict(self), "fraction": round(self.fraction, 6)}


@dataclass(frozen=True)
class TableCoverage:
    """Keys that reached one table through all the nodes reading it, against the floor."""

    table: str
    table_id: int
    rows: int
    existing: int  #: distinct keys of the table that reached it
    floor: int
    nodes: tuple[str, ...]
    rule: str = ""  #: how the floor was set, in words
    padding: int = 0  #: rows whose vector is all zeros (not counted for a small table's floor)
    late: int = 0  #: distinct keys the second half of the feeds added (0: the feeds stopped finding keys)
    feeds: int = 0
    reachable: int | None = None  #: keys of the table tracing found the feeds could reach (or fixed); None: unknown
    complete: bool = False  #: `reachable` is every key the inputs can reach, not a sample

    @property
    def enough(self) -> bool:
        return self.existing >= self.floor

    def to_dict(self) -> dict:
        return {**asdict(self), "nodes": list(self.nodes), "enough": self.enough}


def floor(rows: int, min_distinct_keys: int) -> int:
    """What generated feeds aim at per table: N distinct keys, or every row of a smaller table."""
    return min(min_distinct_keys, rows)


def measure(nodes: list[LookupNode], seen: dict[str, list[np.ndarray]], tables: dict[str, np.ndarray],
            config: Path, floors: Floors | int, reachable: dict[str, tuple[np.ndarray, bool]] | None = None,
            fixed: frozenset[str] = frozenset()) -> tuple[tuple[NodeCoverage, ...], tuple[TableCoverage, ...]]:
    """Per node and per table, the keys recorded in `seen` against the sorted table keys in `tables`.

    `reachable`: per node, the keys generated feeds could reach (traced), and whether they are all the
    inputs can reach or a sample; `fixed`: nodes whose keys no input's values reach.
    """
    floors = floors if isinstance(floors, Floors) else Floors(floors)
    names = table_names(config)
    per_node, hits = [], {}
    for node in nodes:
        keys = np.unique(np.concatenate(seen.get(node.name) or [np.zeros(0, dtype=np.int64)]))
        table = tables[node.name]
        exists = _in_table(keys, table)
        name = names.get((node.model_name, node.table_id), f"table {node.table_id}")
        per_node.append(NodeCoverage(node.name, name, node.table_id, int(table.size), int(keys.size),
                                     int(exists.sum()), int((~exists).sum()), node.name in fixed))
        entry = hits.setdefault((node.model_name, node.table_id), _Hits(name, table))
        entry.add(node.name, seen.get(node.name) or [], reachable, node.name in fixed)
    return tuple(per_node), tuple(entry.coverage(model, table_id, floors, config)
                                  for (model, table_id), entry in hits.items())


class _Hits:
    """The keys of one table that reached any of its nodes, feed by feed, and those its feeds could reach."""

    def __init__(self, name: str, table: np.ndarray):
        self.name, self.table = name, table
        self.readers: list[str] = []
        self.per_feed: list[list[np.ndarray]] = []
        self.fixed = True  #: no input's values reach any of its nodes' keys
        self.reach: list[np.ndarray] | None = []  #: keys the feeds could reach; None: not known
        self.complete = True  #: `reach` holds every key the inputs can reach, not a sample

    def add(self, node: str, feeds: list[np.ndarray], reachable: dict[str, tuple[np.ndarray, bool]] | None,
            fixed: bool) -> None:
        self.readers.append(node)
        for index, keys in enumerate(feeds):
            if index == len(self.per_feed):
                self.per_feed.append([])
            self.per_feed[index].append(keys[_in_table(keys, self.table)])
        self.fixed = self.fixed and fixed
        if self.reach is None:
            return
        if fixed:
            self.reach.extend(feeds)
        elif reachable is not None and node in reachable:
            keys, complete = reachable[node]
            self.reach.append(np.asarray(keys, dtype=np.int64))
            self.complete = self.complete and complete
        else:
            self.reach = None

    @property
    def reachable(self) -> int | None:
        if self.reach is None:
            return None
        keys = np.unique(np.concatenate(self.reach or [np.zeros(0, dtype=np.int64)]))
        return int(_in_table(keys, self.table).sum())

    def coverage(self, model: str, table_id: int, floors: Floors, config: Path) -> TableCoverage:
        found = [k for feed in self.per_feed for k in feed]
        existing = int(np.unique(np.concatenate(found or [np.zeros(0, dtype=np.int64)])).size)
        half = len(self.per_feed) // 2
        early = [k for feed in self.per_feed[:half] for k in feed] or [np.zeros(0, dtype=np.int64)]
        late = existing - int(np.unique(np.concatenate(early)).size) if half else existing
        rows, reachable = int(self.table.size), self.reachable
        padding = 0
        if self.name in floors.tables:
            asked = floors.tables[self.name]
            value, rule = min(asked, rows), f"--min-distinct-keys {self.name}={asked}"
        elif self.fixed:
            value, rule = existing, "its keys depend on no input: every key it can receive"
        elif reachable is not None and self.complete and reachable < min(floors.default, rows):
            value, rule = reachable, f"every key the inputs can reach, {reachable}"
        elif reachable is not None:
            value = min(floors.default, rows)
            rule = f"--min-distinct-keys {floors.default}" if value == floors.default else f"all its {rows} rows"
        else:
            padding = zero_rows(config, model, table_id) if rows < 2 * floors.default else 0
            eligible = rows - padding
            if eligible >= 2 * floors.default:
                value, rule = floors.default, f"--min-distinct-keys {floors.default}"
            else:
                value = min(floors.default, math.ceil(eligible / 2))
                rule = f"half of its {eligible} rows" + (
                    f"; {padding} all-zero padding row(s) not counted" if padding else "")
        return TableCoverage(self.name, table_id, rows, existing, value, tuple(self.readers), rule, padding, late,
                             len(self.per_feed), reachable, reachable is not None and self.complete)


def advice(table: TableCoverage, generated: bool) -> str:
    """What will bring `table` to its floor, in words, ending with the flag that accepts what it saw."""
    accept = f"--min-distinct-keys {table.table}={table.existing}"
    if generated and table.reachable is not None and table.reachable < table.floor:
        more = (f"key tracing found {table.reachable} of its keys, fewer than the floor, and generated feeds draw "
                f"from those (tracing samples max(64, 4 x the largest batch) keys per column, at most {TARGETS}): "
                "raise the largest --batch-sizes, pass real samples (--inputs, --data-loader-script), or lower "
                "--min-distinct-keys")
    elif generated and table.reachable is not None:
        more = (f"the generated feeds reached {table.existing} of the {table.reachable} keys traced: raise "
                "--iterations or the largest --batch-sizes")
    elif generated:
        more = ("its keys were not traced to an input column, so generated feeds cannot aim at its rows: pass real "
                "samples that reach them (--inputs, --data-loader-script)")
    elif table.feeds < 2:
        more = "only one feed was passed: more samples of the same traffic will raise it"
    elif table.late > 0:
        rate = table.late / (table.feeds - table.feeds // 2)
        more = (f"the second half of the {table.feeds} feeds added {table.late} new key(s): at that rate about "
                f"{math.ceil((table.floor - table.existing) / rate)} more feeds of the same traffic would reach the "
                "floor (fewer new keys come as a field is used up)")
    else:
        more = (f"the second half of the {table.feeds} feeds added no new key: more of the same traffic will not "
                "raise it; pass samples that reach other rows, or drop --inputs/--data-loader-script to generate "
                "feeds drawn from the table")
    return f"{more}; or accept what it saw with {accept}"


def zero_rows(config: Path, model_name: str, table_id: int) -> int:
    """Rows of a table whose vector is all zeros (padding: torch's padding_idx, an id reserved by a library)."""
    data = json.loads(Path(config).read_text())
    entry = hps_config.model_entry(data, model_name)
    folder = hps_config.table_folder(Path(config), entry, table_id)
    vectors_file = table_files(Path(config), folder, f"model '{model_name}' table {table_id}")[1]
    dim = int(entry["embedding_vecsize_per_table"][table_id])
    vectors = np.fromfile(vectors_file, dtype="<f4")
    return int(np.count_nonzero(~vectors.reshape(-1, dim).any(axis=1))) if dim else 0


def _in_table(keys: np.ndarray, table: np.ndarray) -> np.ndarray:
    if table.size == 0:
        return np.zeros(keys.shape, dtype=bool)
    position = np.minimum(np.searchsorted(table, keys), table.size - 1)
    return np.asarray(table[position]) == keys


def table_names(config: Path) -> dict[tuple[str, int], str]:
    data = json.loads(Path(config).read_text())
    names = {}
    for entry in data.get("models", []):
        for table_id, name in enumerate(entry.get("embedding_table_names", [])):
            names[entry.get("model"), table_id] = str(name)
    return names
