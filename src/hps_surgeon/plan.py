"""Stage 3: turn matches into a `Plan` — every decision made, every error found, nothing written.

One table per distinct constant; lookups of the same constant share its `table_id`. Errors the
user must fix (a table dtype HPS cannot hold, an unknown number of keys per sample) are raised
here, before any file exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from .contract import DEFAULT_DOMAIN
from .errors import SurgeonError
from .load import LoadedModel
from .graph import all_tensors, dtype_name
from .match import Match, NearMiss

#: table dtypes HPS_TRT can serve; fp16/bf16 are widened to float32 exactly on export.
TABLE_DTYPES = ("float32", "float16", "bfloat16")
KEY_DTYPES = ("int32", "int64")


@dataclass(frozen=True)
class Options:
    """What `rewrite` was asked for (CLI flags and API keywords)."""

    model_name: str = ""
    key_dtype: str = "int32"  #: HugeCTR's HPS_TRT takes int32 keys only; int64 for plugins that take both
    max_batch_size: int = 1024
    max_keys_per_sample: int | None = None
    gpucache_ratio: float = 1.0
    domain: str = DEFAULT_DOMAIN  #: "" = HugeCTR's default-domain layout
    nul_strings: bool = True  #: HugeCTR's samples end string attributes with NUL
    ps_config_file: str = ""  #: path written into each node; default: the output's hps_config.json
    default_value: float = 0.0

    def as_match_options(self) -> dict[str, Any]:
        return {"key_dtype": self.key_dtype}


@dataclass(frozen=True)
class TablePlan:
    table_id: int
    tensor: str  #: the initializer or Constant output holding the table
    name: str  #: embedding_table_names entry and folder name under tables/
    rows: int
    dim: int
    dtype: str
    max_keys_per_sample: int  #: maxnum_catfeature_query_per_table_per_sample
    kept: bool  #: still read by nodes that are not rewritten (e.g. tied output projection)
    other_readers: tuple[str, ...] = ()
    key_map: str | None = None  #: constant mapping keys to rows of `tensor` (HugeCTR's hash), folded into keys
    default_value: float = 0.0  #: default_value_for_each_table entry
    source_folder: str | None = None  #: a HugeCTR sparse-model folder copied as it is (no tensor in the model)

    @property
    def folder(self) -> str:
        return f"tables/{self.name}"

    @property
    def nbytes(self) -> int:
        return self.rows * self.dim * 4


@dataclass(frozen=True)
class LookupPlan:
    """One HPS_TRT node to create."""

    node: str  #: name of the new HPS_TRT node
    pattern: str
    variant: tuple[str, ...]
    replaced: tuple[str, ...]  #: graph nodes the lookup consisted of
    table: str
    table_id: int
    keys: str
    key_dtype: str  #: dtype of `keys` in the original graph
    key_shape: tuple[Any, ...]
    keys_per_sample: int | None
    rows: int
    emb_vec_size: int
    output: str
    output_dtype: str
    out_shape: tuple[int, ...] | None  #: static reshape target of `output`; None = keys' shape + [D]
    hoist: str | None  #: loop-body node re-applied to the rows HPS_TRT looks up in the main graph
    consumers: tuple[str, ...]
    notes: tuple[str, ...] = ()
    new_keys_input: bool = False  #: `keys` is a graph input to create; `output` stops being an input
    combiner: str | None = None  #: "sum"/"mean" over the keys' last axis after the lookup (HugeCTR nnz)


@dataclass(frozen=True)
class Plan:
    options: Options
    tables: tuple[TablePlan, ...]
    lookups: tuple[LookupPlan, ...]
    not_rewritten: tuple[NearMiss, ...] = ()
    notes: tuple[str, ...] = field(default=())


def plan_rewrites(loaded: LoadedModel, matches: tuple[Match, ...], near_misses: tuple[NearMiss, ...],
                  options: Options, attached: tuple[tuple[TablePlan, LookupPlan], ...] = ()) -> Plan:
    """Decide table ids, key handling and notes for every match; raise SurgeonError on what must be fixed."""
    if options.key_dtype not in KEY_DTYPES:
        raise SurgeonError(f"--key-dtype {options.key_dtype}: HPS_TRT keys are {' or '.join(KEY_DTYPES)}")
    tensors = all_tensors(loaded.graph)
    replaced = {name for m in matches for name in m.nodes}
    table_order: dict[tuple[str, str | None], list[Match]] = {}
    for match in matches:
        table_order.setdefault((match.table, match.key_map), []).append(match)
    names = _unique_names([table for table, _ in table_order])
    tables, lookups = [], []
    for table_id, ((tensor_name, key_map), users) in enumerate(table_order.items()):
        table = _plan_table(loaded, tensors, tensor_name, table_id, names[table_id], users, replaced, options)
        if key_map is not None:
            table = _with_key_map(loaded, table, key_map)
        tables.append(table)
        lookups.extend(_plan_lookup(tensors, m, table, options) for m in users)
    for table, lookup in attached:  # tables from HugeCTR sparse-model folders (see attach.py)
        table_id = len(tables)
        tables.append(replace(table, table_id=table_id, name=_unique_names([*[t.name for t in tables], table.name])[-1]))
        lookups.append(replace(lookup, table_id=table_id))
    lookups.sort(key=lambda lp: lp.node)
    return Plan(options=options, tables=tuple(tables), lookups=tuple(lookups),
                not_rewritten=near_misses,
                notes=_global_notes(options) if lookups else ())


def mapped_keys(key_map: np.ndarray, rows: int) -> np.ndarray:
    """Keys a HugeCTR-style map sends to a real row: 0 means missing, rows past the table do not exist."""
    return np.flatnonzero((key_map > 0) & (key_map < rows)).astype(np.int64)


def _with_key_map(loaded: LoadedModel, table: TablePlan, key_map: str) -> TablePlan:
    keys = mapped_keys(loaded.sources[key_map].read_all(), table.rows)
    default = float(loaded.sources[table.tensor].read_rows(0, 1).flat[0])
    return replace(table, rows=int(keys.size), key_map=key_map, default_value=default)


def _plan_table(loaded: LoadedModel, tensors: dict[str, gs.Tensor], tensor_name: str, table_id: int, name: str,
                users: list[Match], replaced: set[str], options: Options) -> TablePlan:
    tensor = tensors[tensor_name]
    dtype = dtype_name(tensor)
    anchor = users[0].anchor
    if dtype not in TABLE_DTYPES:
        raise SurgeonError(f"{loaded.path}: table '{tensor.name}' (read by node '{anchor}') has dtype {dtype}; "
                           f"HPS_TRT tables are float32 (float16/bfloat16 are converted). Re-export the table "
                           f"as float32.")
    rows, dim = (int(d) for d in tensor.shape)
    per_sample = [_keys_per_sample(_shape(tensors[m.keys])) for m in users]
    if any(n is None for n in per_sample):
        if options.max_keys_per_sample is None:
            raise SurgeonError(f"{loaded.path}: keys '{users[per_sample.index(None)].keys}' of node "
                               f"'{users[per_sample.index(None)].anchor}' have a dynamic number of keys per "
                               f"sample; pass --max-keys-per-sample N (maxnum_catfeature_query_per_table_per_sample).")
        per_sample = [options.max_keys_per_sample if n is None else n for n in per_sample]
    readers = [n.name for n in _readers(tensor) if n.name not in replaced]
    return TablePlan(table_id=table_id, tensor=tensor.name, name=name, rows=rows, dim=dim, dtype=dtype,
                     max_keys_per_sample=max(per_sample), kept=bool(readers), other_readers=tuple(readers),
                     default_value=options.default_value)


def _readers(tensor: gs.Tensor):
    """Nodes reading the table, looking through Identity/Constant wrappers."""
    for reader in tensor.outputs:
        if reader.op == "Identity":
            yield reader
            yield from _readers(reader.outputs[0])
        else:
            yield reader


def _plan_lookup(tensors: dict[str, gs.Tensor], match: Match, table: TablePlan, options: Options) -> LookupPlan:
    keys, out = tensors[match.keys], tensors[match.out]
    key_dtype = dtype_name(keys) or "unknown"
    key_shape = _shape(keys)
    if key_shape is None:
        raise SurgeonError(f"keys '{keys.name}' of node '{match.anchor}' have unknown rank; run onnx shape "
                           f"inference on the model or give the input a shape.")
    if table.key_map:
        notes = [f"HugeCTR key map '{table.key_map}' folded into the table: {table.rows} keys stored with the row "
                 f"the map gives them; keys it maps to 0 read row 0 in ONNX and the table's default value "
                 f"({table.default_value}) in HPS, the same numbers; keys outside the map fail in ONNX"]
    else:
        notes = [f"keys outside [0, {table.rows - 1}] return the table's default value "
                 f"({table.default_value}) instead of ONNX Gather's error or negative-index wrap-around"]
    if key_dtype != options.key_dtype:
        notes.append(f"keys cast from {key_dtype} to {options.key_dtype}" +
                     (" (keys beyond int32 wrap; HugeCTR's HPS_TRT takes int32 only)"
                      if options.key_dtype == "int32" and key_dtype == "int64" else ""))
    if match.hoist:
        notes.append(f"lookup hoisted out of its loop: one HPS_TRT over all of '{keys.name}' in the main graph, "
                     f"node '{match.hoist}' then picks the looked-up rows inside the loop")
        if len(key_shape) == 1:  # the bag's keys, not its samples, are HPS_TRT's batch
            notes.append(f"HPS_TRT sees each of the {key_shape[0]} keys as one sample: max_batch_size must "
                         "cover the most keys one inference looks up (--max-batch-size)")
    if len(key_shape) != 2 and match.out_shape is None:
        notes.append(f"keys of rank {len(key_shape)} reshaped to [B, N] for HPS_TRT and the output reshaped back")
    out_dtype = dtype_name(out) or table.dtype
    if table.dtype != "float32":
        notes.append(f"table converted from {table.dtype} to float32; output cast back to {out_dtype}")
    if table.kept:
        notes.append(f"table '{table.tensor}' is kept in the model: still read by {', '.join(table.other_readers)}")
    consumers = tuple(n.name for n in out.outputs) or ("(graph output)",)
    return LookupPlan(
        node=f"hps_trt/{match.anchor}", pattern=match.pattern, variant=match.variant, replaced=match.nodes,
        table=table.tensor, table_id=table.table_id, keys=keys.name, key_dtype=key_dtype, key_shape=key_shape,
        keys_per_sample=_keys_per_sample(key_shape), rows=table.rows, emb_vec_size=table.dim,
        output=out.name, output_dtype=out_dtype, out_shape=match.out_shape, hoist=match.hoist, consumers=consumers,
        notes=tuple(notes))


def _shape(tensor: gs.Tensor) -> tuple[Any, ...] | None:
    if tensor.shape is None:
        return None
    return tuple(int(d) if isinstance(d, int) and d >= 0 else (d if isinstance(d, str) else None)
                 for d in tensor.shape)


def _keys_per_sample(shape: tuple[Any, ...] | None) -> int | None:
    """N of the [B, N] keys HPS_TRT sees: trailing dims flattened; rank 0 and 1 give N = 1."""
    if shape is None:
        return None
    trailing = shape[1:]
    if any(not isinstance(d, int) for d in trailing):
        return None
    n = 1
    for d in trailing:
        n *= d
    return n


def _unique_names(tensor_names: list[str]) -> list[str]:
    """Folder-safe, distinct table names, in the order given."""
    names: list[str] = []
    for tensor in tensor_names:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", tensor).strip("._") or "table"
        name, suffix = base, 1
        while name in names:
            suffix += 1
            name = f"{base}_{suffix}"
        names.append(name)
    return names


def _global_notes(options: Options) -> tuple[str, ...]:
    notes = []
    if options.domain == "":
        notes.append("HPS_TRT nodes are in the default ONNX domain (HugeCTR's layout): onnx.checker cannot check "
                     "them, so the checker ran on a copy with the nodes in domain 'trt.plugins'")
    return tuple(notes)
