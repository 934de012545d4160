"""Which input values reach which keys: key tracing by evaluating the rewritten model's key subgraph.

One mechanism for every exporter. The part of the rewritten model that computes the HPS_TRT nodes'
keys (`SplitRunner.keys`) is run on candidate inputs, one *column* at a time (a position on an
input's last axis, or the whole of a rank-0/1 input):

1. Which keys a column drives, element by element: set the column to one value, then to another;
   the keys that change are driven by it. Then a binary code of the column's elements (group
   testing: log2(elements) runs) says which element each changed key came from. A node whose key
   count changes with the values (Unique, NonZero, a Split sized by the data) follows the column as
   a set of values instead.
2. Which input values reach keys that exist in the table, i.e. the key function inverted: the
   table's own keys first (identity, casts, a negative-id wrap), then bisection where the key
   function is monotone (offsets, Mod hashing: it rises by at most one per unit step, so bisection
   lands on the key itself), then a scan of small values (a lookup through a constant map); string
   inputs are drawn from the vocabularies of the CategoryMapper/LabelEncoder nodes that read them.

The result, `KeySpace`, holds per column the input values found and the key each reaches; feeds
are drawn from it (`feeds`). What really reached each node is measured while the comparison runs
(`coverage`), so a structure this cannot follow shows up as low coverage, never as a silent pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

#: a key that could not be computed (the key subgraph failed on that candidate)
MISSING = np.iinfo(np.int64).min
#: table keys inverted per column: enough for the coverage floor, few enough to stay fast
TARGETS = 256
#: small values scanned when neither the keys themselves nor bisection found enough inputs
SCAN = 4096
#: candidate (first, second) values that tell a key column from a column that drives no key
_NUMERIC_PAIRS = ((0, 1), (1, 2), (0, 2), (1, 3), (2, 5), (0, 7))
#: exactly representable integers per input dtype: bisection stays inside them
_EXACT_BITS = {"float16": 11, "float32": 24, "float64": 53, "int8": 7, "int16": 15, "int32": 31, "int64": 63,
               "uint8": 8, "uint16": 16, "uint32": 32, "uint64": 63}
_STRING_VOCABULARIES = {"CategoryMapper": "cats_strings", "LabelEncoder": "keys_strings"}


@dataclass(frozen=True)
class Column:
    """Position `index` on the last axis of `input`, or all of it when `index` is None."""

    input: str
    index: int | None

    @property
    def label(self) -> str:
        return self.input if self.index is None else f"{self.input}[..., {self.index}]"


@dataclass(frozen=True)
class ColumnKeys:
    """Input values of one column that reach keys existing in the tables of `nodes`."""

    column: Column
    nodes: tuple[str, ...]  #: HPS_TRT nodes these elements of the column reach
    values: np.ndarray  #: input values (int64 or str), each reaching an existing key of nodes[0]'s table
    keys: np.ndarray  #: the key each value reaches at nodes[0]
    elements: tuple[int, ...]  #: flat indices, in the input at `shape`, of the elements that reach `nodes`
    shape: tuple[int, ...]  #: the input's shape when traced
    as_set: bool  #: followed as a set of values (Unique/NonZero in between), not element by element
    how: str  #: how the values were found: identity, bisection, scan, vocabulary
    #: the keys found are every existing key the column reaches (the search fell short of its targets, or
    #: took in the whole table or vocabulary), not a sample of them
    complete: bool = False

    def to_dict(self) -> dict:
        numeric = not is_text(self.values.dtype) and self.values.size > 0
        return {"column": self.column.label, "nodes": list(self.nodes), "values": int(self.values.size),
                "low": int(self.values.min()) if numeric else None,
                "high": int(self.values.max()) if numeric else None, "how": self.how, "as_set": self.as_set,
                "complete": self.complete}


@dataclass(frozen=True)
class KeySpace:
    """What tracing found: per column, the input values reaching existing keys; nodes it could not reach."""

    columns: tuple[ColumnKeys, ...] = ()
    untraced: tuple[str, ...] = ()  #: HPS_TRT nodes no column was traced to

    def of_input(self, name: str) -> list[ColumnKeys]:
        return [c for c in self.columns if c.column.input == name]


Probe = Callable[[dict[str, np.ndarray]], "dict[str, np.ndarray] | None"]


def trace_keys(probe: Probe, base: dict[str, np.ndarray], tables: dict[str, np.ndarray],
               key_inputs: list[str], vocabularies: dict[str, list[str]], seed: int = 0) -> KeySpace:
    """Trace every column of `key_inputs` to the HPS_TRT nodes it drives.

    `probe(feed)` returns each node's keys (None when the key subgraph fails on that feed); `base` is
    a feed it runs on; `tables[node]` holds the sorted keys of the node's table.
    """
    if probe(base) is None:
        return KeySpace(untraced=tuple(sorted(tables)))
    tracer = _Tracer(probe, base, tables, vocabularies, np.random.default_rng(seed))
    found: list[ColumnKeys] = []
    for name in key_inputs:
        if base[name].dtype == bool:
            continue
        for column in columns_of(name, base[name].shape):
            found += tracer.trace(column)
    reached = {n for c in found if c.values.size for n in c.nodes}
    return KeySpace(tuple(found), tuple(sorted(set(tables) - reached)))


def columns_of(name: str, shape: tuple[int, ...]) -> list[Column]:
    if len(shape) < 2:
        return [Column(name, None)]
    return [Column(name, i) for i in range(shape[-1])]


def column_elements(column: Column, shape: tuple[int, ...]) -> np.ndarray:
    """Flat indices of the column's elements in an input of `shape`."""
    flat = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
    return flat.ravel() if column.index is None else flat[..., column.index].ravel()


def vocabularies(model: onnx.ModelProto) -> dict[str, list[str]]:
    """String inputs -> the strings the model's CategoryMapper/LabelEncoder nodes downstream know."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    found: dict[str, list[str]] = {}
    for value in model.graph.input:
        if value.type.tensor_type.elem_type != onnx.TensorProto.STRING:
            continue
        strings: dict[str, None] = {}
        seen, stack = set(), [value.name]
        while stack:
            for node in readers.get(stack.pop(), []):
                if id(node) in seen:
                    continue
                seen.add(id(node))
                attribute = _STRING_VOCABULARIES.get(node.op_type)
                for attr in node.attribute:
                    if attr.name == attribute:
                        strings.update(dict.fromkeys(s.decode() for s in attr.strings))
                stack.extend(node.output)
        found[value.name] = list(strings)
    return found


@dataclass
class _Driven:
    """What one column drives: the nodes it changes and, per node, which of its elements reach which key."""

    first: object
    second: object
    as_set: set[str] = field(default_factory=set)
    #: node -> {element (index into the column's elements) -> first flat key position}
    positions: dict[str, dict[int, int]] = field(default_factory=dict)


class _Tracer:
    def __init__(self, probe: Probe, base: dict[str, np.ndarray], tables: dict[str, np.ndarray],
                 vocabularies: dict[str, list[str]], rng: np.random.Generator):
        self.probe, self.base, self.tables, self.vocabularies, self.rng = probe, base, tables, vocabularies, rng

    def trace(self, column: Column) -> list[ColumnKeys]:
        shape = self.base[column.input].shape
        elements = column_elements(column, shape)
        driven = self._driven(column, elements)
        if driven is None:
            return []
        groups: dict[tuple[str, ...], list[int]] = {}
        for index in range(elements.size):
            nodes = sorted(n for n, where in driven.positions.items() if index in where) + sorted(driven.as_set)
            if nodes:
                groups.setdefault(tuple(nodes), []).append(index)
        found = []
        for nodes, members in groups.items():
            values, keys, how, complete = self._invert(column, elements, np.asarray(members), nodes[0], driven)
            found.append(ColumnKeys(column, nodes, values, keys, tuple(int(e) for e in elements[members]),
                                    tuple(shape), nodes[0] in driven.as_set, how, complete))
        return found

    # --- 1. which keys the column drives ---------------------------------------------------------

    def _driven(self, column: Column, elements: np.ndarray) -> _Driven | None:
        for first, second in self._pairs(column):
            keys0 = self.probe(self._feed(column, elements, np.full(elements.size, first, dtype=object)))
            keys1 = self.probe(self._feed(column, elements, np.full(elements.size, second, dtype=object)))
            if keys0 is None or keys1 is None:
                continue
            changed = [n for n in keys0 if not _same(keys0[n], keys1[n])]
            if changed:
                break
        else:
            return None
        driven = _Driven(first, second, as_set={n for n in changed if keys0[n].shape != keys1[n].shape})
        codes = {n: np.zeros(keys0[n].size, dtype=np.int64) for n in changed if n not in driven.as_set}
        index = np.arange(elements.size)
        for bit in range(max(1, math.ceil(math.log2(max(elements.size, 2))))):
            values = np.where((index >> bit) & 1, np.asarray(second, dtype=object), np.asarray(first, dtype=object))
            keys = self.probe(self._feed(column, elements, values))
            for node in list(codes):
                if keys is None or keys[node].shape != keys0[node].shape:
                    driven.as_set.add(node)
                    del codes[node]
                else:
                    codes[node] |= (keys[node].ravel() != keys0[node].ravel()).astype(np.int64) << bit
        for node, code in codes.items():
            moved = np.flatnonzero(keys0[node].ravel() != keys1[node].ravel())
            if np.any(code[moved] >= elements.size):
                driven.as_set.add(node)  # keys mixing several elements: follow the values only
                continue
            where: dict[int, int] = {}
            for position, element in zip(moved.tolist(), code[moved].tolist()):
                where.setdefault(element, position)
            driven.positions[node] = where
        charted = set().union(*driven.positions.values()) if driven.positions else set()
        if len(charted) < elements.size or not self._predicts(column, elements, driven, keys0, keys1):
            # Some elements change keys but sit at no fixed position (Unique, NonZero): values only.
            driven.as_set.update(driven.positions)
            driven.positions.clear()
        return driven

    def _predicts(self, column: Column, elements: np.ndarray, driven: _Driven, keys0: dict, keys1: dict) -> bool:
        """Whether the element -> key position map predicts the keys of a random mix of the two values."""
        second = self.rng.random(elements.size) < 0.5
        values = np.where(second, np.asarray(driven.second, dtype=object), np.asarray(driven.first, dtype=object))
        keys = self.probe(self._feed(column, elements, values))
        if keys is None:
            return False
        for node, where in driven.positions.items():
            if keys[node].shape != keys0[node].shape:
                return False
            expected = keys0[node].ravel().copy()
            for element, position in where.items():
                if second[element]:
                    expected[position] = keys1[node].ravel()[position]
            moved = list(where.values())
            if not np.array_equal(keys[node].ravel()[moved], expected[moved]):
                return False
        return True

    def _pairs(self, column: Column):
        if is_text(self.base[column.input].dtype):
            vocabulary = self.vocabularies.get(column.input, [])
            yield from [tuple(vocabulary[:2])] if len(vocabulary) >= 2 else []
            yield from [("", vocabulary[0])] if vocabulary else []
            yield ("a", "b")
        else:
            yield from _NUMERIC_PAIRS

    def _feed(self, column: Column, elements: np.ndarray, values: np.ndarray,
              rest: object = None) -> dict[str, np.ndarray]:
        """The base feed with `values` in the first elements of the column (the rest of it set to `rest`)."""
        feed = dict(self.base)
        original = self.base[column.input]
        array = original.astype(object) if is_text(original.dtype) else original.copy()
        flat = array.reshape(-1)
        if rest is not None:
            flat[elements] = cast_values(np.full(elements.size, rest, dtype=object), array.dtype)
        flat[elements[:len(values)]] = cast_values(values, array.dtype)
        feed[column.input] = array
        return feed

    # --- 2. which input values reach existing keys -----------------------------------------------

    def _invert(self, column: Column, elements: np.ndarray, members: np.ndarray, node: str,
                driven: _Driven) -> tuple[np.ndarray, np.ndarray, str, bool]:
        table = self.tables[node]
        slots = elements[members]
        if node in driven.as_set:
            evaluate = self._set_evaluator(column, elements, slots, node, driven.first)
        else:
            where = driven.positions[node]
            evaluate = self._evaluator(column, elements, slots, np.array([where[m] for m in members]), node,
                                       driven.first)
        if is_text(self.base[column.input].dtype):
            return self._from_vocabulary(column, evaluate, table, node in driven.as_set)
        targets = self._targets(table, slots.size)
        keys = evaluate(targets)
        hit = keys == targets
        values, found, how = targets[hit], keys[hit], "identity"
        if node not in driven.as_set and not hit.all():
            more_values, more_keys = self._bisect(column, evaluate, targets[~hit])
            values, found = np.concatenate([values, more_values]), np.concatenate([found, more_keys])
            how = "bisection" if more_values.size else how
        if node not in driven.as_set and values.size < min(len(targets), 64):
            scanned = np.arange(SCAN, dtype=np.int64)
            scan_keys = evaluate(scanned)
            exists = _exists(scan_keys, table) & ~np.isin(scan_keys, found)
            _, first = np.unique(scan_keys[exists], return_index=True)
            if first.size:
                values = np.concatenate([values, scanned[exists][first]])
                found = np.concatenate([found, scan_keys[exists][first]])
                how = "scan"
        # fewer keys than aimed at: the column reaches no more; as many: a sample, unless that was the table
        complete = np.unique(found).size < len(targets) or len(targets) == table.size
        return values, found, how, complete

    def _targets(self, table: np.ndarray, slots: int) -> np.ndarray:
        count = min(table.size, max(64, 4 * slots), TARGETS)
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        picked = self.rng.choice(table.size, size=count, replace=False)
        # the extremes always: an off-by-one shows at the ends of a table
        picked = np.unique(np.concatenate([[0, table.size - 1], picked]))
        return np.asarray(table[picked], dtype=np.int64)

    def _bisect(self, column: Column, evaluate, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values v with key(v) == t, where key rises by at most one per unit step between two anchors."""
        bits = _EXACT_BITS.get(self.base[column.input].dtype.name, 31) - 1
        unsigned = self.base[column.input].dtype.kind == "u"
        powers = [1 << b for b in range(bits)]
        anchors = np.array(sorted({0, *powers, *([] if unsigned else [-p for p in powers])}), dtype=np.int64)
        at = evaluate(anchors)
        # a bracket (a_j, a_j+1) holds t when key(a_j) < t <= key(a_j+1); take the one nearest to 0
        valid = (at[:-1] != MISSING) & (at[1:] != MISSING)
        holds = valid & (at[:-1] < targets[:, None]) & (targets[:, None] <= at[1:])
        size = np.maximum(np.abs(anchors[:-1]), np.abs(anchors[1:])).astype(np.float64) - 0.5 * (anchors[:-1] >= 0)
        best = np.argmin(np.where(holds, size, np.inf), axis=1)
        active = holds.any(axis=1)
        low, high = anchors[best], anchors[best + 1]
        while True:
            open_ = active & (high - low > 1)
            if not open_.any():
                break
            middle = low[open_] + (high[open_] - low[open_]) // 2
            at_middle = evaluate(middle)
            failed = at_middle == MISSING
            idx = np.flatnonzero(open_)
            active[idx[failed]] = False
            below = ~failed & (at_middle < targets[open_])
            low[idx[below]] = middle[below]
            high[idx[~failed & ~below]] = middle[~failed & ~below]
        candidates = high[active]
        reached = evaluate(candidates) if candidates.size else np.zeros(0, dtype=np.int64)
        hit = reached == targets[active]
        return candidates[hit], reached[hit]

    def _from_vocabulary(self, column: Column, evaluate, table: np.ndarray,
                         as_set: bool) -> tuple[np.ndarray, np.ndarray, str, bool]:
        vocabulary = self.vocabularies.get(column.input, [])
        whole = len(vocabulary) <= SCAN
        if not whole:
            vocabulary = list(self.rng.choice(np.asarray(vocabulary, dtype=object), size=SCAN, replace=False))
        candidates = np.asarray(["", *vocabulary], dtype=object)
        if as_set:  # strings inside a set of keys cannot be told apart: draw the vocabulary unchecked
            return candidates, np.full(candidates.size, MISSING, dtype=np.int64), "vocabulary, unchecked", False
        keys = evaluate(candidates)
        exists = _exists(keys, table)
        _, first = np.unique(keys[exists], return_index=True)
        return candidates[exists][first], keys[exists][first], "vocabulary", whole

    def _evaluator(self, column: Column, elements: np.ndarray, slots: np.ndarray, positions: np.ndarray,
                   node: str, rest: object):
        """key(v) for many v at once: one candidate per element of the column that reaches `node`."""
        ordered = np.concatenate([slots, np.setdiff1d(elements, slots)])

        def run(values: np.ndarray) -> np.ndarray:
            keys = self.probe(self._feed(column, ordered, values, rest))
            if keys is not None:
                return keys[node].reshape(-1)[positions[:len(values)]].astype(np.int64)
            if len(values) == 1:
                return np.array([MISSING], dtype=np.int64)
            # Isolate the candidates the key subgraph fails on (a constant map's end, say); a run that
            # fails at both ends is taken as failing throughout, so a scan past a map costs two runs.
            if run(values[:1])[0] == MISSING and run(values[-1:])[0] == MISSING:
                return np.full(len(values), MISSING, dtype=np.int64)
            half = len(values) // 2
            return np.concatenate([run(values[:half]), run(values[half:])])

        def evaluate(values: np.ndarray) -> np.ndarray:
            out = [run(values[i:i + slots.size]) for i in range(0, len(values), slots.size)]
            return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

        return evaluate

    def _set_evaluator(self, column: Column, elements: np.ndarray, slots: np.ndarray, node: str, rest: object):
        """key(v) = v where keys are a set: a candidate counts if it shows up among the node's keys."""
        ordered = np.concatenate([slots, np.setdiff1d(elements, slots)])

        def evaluate(values: np.ndarray) -> np.ndarray:
            out = np.full(len(values), MISSING, dtype=np.int64)
            for i in range(0, len(values), slots.size):
                chunk = values[i:i + slots.size]
                keys = self.probe(self._feed(column, ordered, chunk, rest))
                if keys is not None:
                    seen = np.unique(keys[node].astype(np.int64))
                    out[i:i + len(chunk)] = np.where(np.isin(chunk, seen), chunk, MISSING)
            return out

        return evaluate


def is_text(dtype: np.dtype) -> bool:
    """A string dtype: object arrays in feeds (what onnxruntime and our runners take), or numpy str."""
    return np.dtype(dtype).kind in "OUS"


def cast_values(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Candidate values (ints, or strings) as an input of `dtype` holds them."""
    if is_text(dtype):
        return np.asarray([str(v) for v in values], dtype=object)
    return np.asarray(values, dtype=np.int64 if dtype.kind in "iub" else np.float64).astype(dtype)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _exists(keys: np.ndarray, table: np.ndarray) -> np.ndarray:
    if table.size == 0:
        return np.zeros(keys.shape, dtype=bool)
    position = np.minimum(np.searchsorted(table, keys), table.size - 1)
    return (np.asarray(table[position]) == keys) & (keys != MISSING)


# --- key ranges, for deploy's perf_analyzer data ----------------------------------------------------

@dataclass(frozen=True)
class KeyRange:
    """Keys for `input` (column `column` of its last axis, or all of it when None) lie in [low, high]."""

    input: str
    column: int | None
    low: int
    high: int


def by_input(ranges: list[KeyRange]) -> dict[str, list[KeyRange]]:
    """The ranges grouped by the input they constrain (what `draw_keys` takes for one input)."""
    grouped: dict[str, list[KeyRange]] = {}
    for r in ranges:
        grouped.setdefault(r.input, []).append(r)
    return grouped


def draw_keys(shape: tuple[int, ...], dtype: np.dtype, ranges: list[KeyRange], rng: np.random.Generator) -> np.ndarray:
    """An array of `shape` whose columns follow `ranges` (all for one input).

    Columns no range names are drawn from the whole-input range, or else from the first range.
    """
    whole = next(((r.low, r.high) for r in ranges if r.column is None), (ranges[0].low, ranges[0].high))
    values = rng.integers(whole[0], whole[1] + 1, size=shape, dtype=np.int64)
    for r in ranges:
        if r.column is not None and len(shape) >= 2 and r.column < shape[-1]:
            values[..., r.column] = rng.integers(r.low, r.high + 1, size=shape[:-1], dtype=np.int64)
    return values.astype(dtype)


__all__ = ["Column", "ColumnKeys", "KeyRange", "KeySpace", "by_input", "columns_of", "draw_keys",
           "trace_keys", "vocabularies"]
