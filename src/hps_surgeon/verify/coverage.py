"""What a verification really tested: the keys that reached each HPS_TRT node while it ran.

Measured, never assumed: `SplitRunner.run` records every key a node receives, and here they are
counted against the node's table. A verification whose tables saw fewer distinct existing keys
than the floor (`min(min_distinct_keys, rows)` per table) proved little whatever the outputs say:
its verdict is INCONCLUSIVE.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .split import LookupNode

#: default floor: distinct existing keys each table must see (or all its rows, when it has fewer)
MIN_DISTINCT_KEYS = 64


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
    existing: int
    floor: int
    nodes: tuple[str, ...]

    @property
    def enough(self) -> bool:
        return self.existing >= self.floor

    def to_dict(self) -> dict:
        return {**asdict(self), "nodes": list(self.nodes), "enough": self.enough}


def floor(rows: int, min_distinct_keys: int) -> int:
    return min(min_distinct_keys, rows)


def measure(nodes: list[LookupNode], seen: dict[str, list[np.ndarray]], tables: dict[str, np.ndarray],
            config: Path, min_distinct_keys: int) -> tuple[tuple[NodeCoverage, ...], tuple[TableCoverage, ...]]:
    """Per node and per table, the keys recorded in `seen` against the sorted table keys in `tables`."""
    names = _table_names(config)
    per_node, hits = [], {}
    for node in nodes:
        keys = np.unique(np.concatenate(seen.get(node.name) or [np.zeros(0, dtype=np.int64)]))
        table = tables[node.name]
        exists = _in_table(keys, table)
        name = names.get((node.model_name, node.table_id), f"table {node.table_id}")
        per_node.append(NodeCoverage(node.name, name, node.table_id, int(table.size), int(keys.size),
                                     int(exists.sum()), int((~exists).sum())))
        entry = hits.setdefault((node.model_name, node.table_id), [name, int(table.size), [], []])
        entry[2].append(keys[exists])
        entry[3].append(node.name)
    per_table = tuple(
        TableCoverage(name, table_id, rows, int(np.unique(np.concatenate(found)).size),
                      floor(rows, min_distinct_keys), tuple(readers))
        for (_, table_id), (name, rows, found, readers) in hits.items())
    return tuple(per_node), per_table


def _in_table(keys: np.ndarray, table: np.ndarray) -> np.ndarray:
    if table.size == 0:
        return np.zeros(keys.shape, dtype=bool)
    position = np.minimum(np.searchsorted(table, keys), table.size - 1)
    return np.asarray(table[position]) == keys


def _table_names(config: Path) -> dict[tuple[str, int], str]:
    data = json.loads(Path(config).read_text())
    names = {}
    for entry in data.get("models", []):
        for table_id, name in enumerate(entry.get("embedding_table_names", [])):
            names[entry.get("model"), table_id] = str(name)
    return names
