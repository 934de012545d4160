"""Stage 3: turn matches into a `Plan` — every decision made, every error found, nothing written.

Overlapping matches are resolved here (the larger wins), and a table one refused lookup reads keeps
all its lookups. One table per distinct constant; lookups of the same constant share its
`table_id`. Errors the user must fix (a table dtype HPS cannot hold, an unknown number of keys per
sample) are raised here, before any file exists.

A plan is also a file a person reads and edits (`rewrite --plan-out`, `--plan`), as `polygraphy
plugin match` writes the config.yaml that `plugin replace` applies: `to_dict`/`from_dict` are its
one serialisation (report.json, the --dry-run print and the pattern snapshots come from it too).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx_graphsurgeon as gs
import yaml

from . import bounded
from .confine import shown
from .errors import SurgeonError
from .graph import all_tensors, dtype_name, reads_input_values
from .hps.contract import DEFAULT_DOMAIN, KEY_DTYPES, NAME_SYNTAX, TABLES_DIR, hugectr_name, hugectr_names
from .hps.tables import mapped_keys, own_key_counts
from .load import LoadedModel
from .match import Match, MatchResult, NearMiss
from .staging import replace_file

#: table dtypes HPS_TRT can serve; fp16/bf16 are widened to float32 exactly on export.
TABLE_DTYPES = ("float32", "float16", "bfloat16")


_INT32_MAX = 2**31 - 1
#: domains ONNX defines operators in ("" is the default one, which HugeCTR's layout uses on purpose)
_ONNX_DOMAINS = {"ai.onnx", "ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview.training"}


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
    min_table_rows: int = 0  #: tables with fewer rows stay inside the model
    relative_paths: bool = False  #: sparse_files relative to the config (relocatable; HugeCTR wants absolute)
    rewrite_fixed_keys: bool = False  #: also move tables read only through keys no input reaches (`hold_fixed_keys`)

    def as_match_options(self) -> dict[str, Any]:
        return {"key_dtype": self.key_dtype}

    def check(self) -> Options:
        """Self, when every number and name is valid; else SurgeonError naming the option."""
        if not NAME_SYNTAX.fullmatch(self.model_name):
            raise SurgeonError(f"--model-name '{self.model_name}': HugeCTR's HPS aborts on model names outside "
                               "[a-zA-Z0-9_-]{1,120} (hier_parameter_server.cpp:34-36); use letters, digits, '_' "
                               "and '-', at most 120")
        if not 1 <= self.max_batch_size <= _INT32_MAX:
            raise SurgeonError(f"--max-batch-size {self.max_batch_size}: must be 1 to {_INT32_MAX} (HugeCTR reads "
                               "it as an int)")
        if self.max_keys_per_sample is not None and not 1 <= self.max_keys_per_sample <= _INT32_MAX:
            raise SurgeonError(f"--max-keys-per-sample {self.max_keys_per_sample}: must be 1 to {_INT32_MAX} "
                               "(HugeCTR reads it as an int)")
        if not 0.0 < self.gpucache_ratio <= 1.0:
            raise SurgeonError(f"--gpucache-ratio {self.gpucache_ratio}: must be in (0, 1]")
        if self.min_table_rows < 0:
            raise SurgeonError(f"--min-table-rows {self.min_table_rows}: must be at least 0")
        if self.domain in _ONNX_DOMAINS:
            raise SurgeonError(f"--domain {self.domain}: a domain of ONNX's own operators, where no HPS_TRT is "
                               f"defined (onnx.checker refuses the node); use {DEFAULT_DOMAIN} (the default) or '' "
                               "(HugeCTR's layout)")
        if self.key_dtype not in KEY_DTYPES:
            raise SurgeonError(f"--key-dtype {self.key_dtype}: HPS_TRT keys are {' or '.join(KEY_DTYPES)}")
        return self


def default_model_name(model_path: Path) -> str:
    """The HPS model name when none is given: the model file's stem in HugeCTR's name syntax."""
    return hugectr_name(model_path.stem, "model")


@dataclass(frozen=True)
class TablePlan:
    table_id: int
    tensor: str  #: the initializer or Constant output holding the table
    name: str  #: embedding_table_names entry and folder name under tables/ (HugeCTR's name syntax)
    rows: int
    dim: int
    source_dtype: str
    max_keys_per_sample: int  #: maxnum_catfeature_query_per_table_per_sample
    kept_in_model: bool  #: still read by nodes that are not rewritten (e.g. tied output projection)
    key_dtype: str = "int32"  #: dtype of the keys its HPS_TRT nodes take
    other_readers: tuple[str, ...] = ()
    key_map: str | None = None  #: constant mapping keys to rows of `tensor` (HugeCTR's hash), folded into keys
    default_value: float = 0.0  #: default_value_for_each_table entry
    source_folder: str | None = None  #: a HugeCTR sparse-model folder copied as it is
    #: with `key_map`: how many stored keys (fewest, most) belong to other tables sharing the map
    other_tables_keys: tuple[int, int] | None = None

    @property
    def folder(self) -> str:
        return f"{TABLES_DIR}/{self.name}"

    @property
    def nbytes(self) -> int:
        return self.rows * self.dim * 4

    @property
    def identity(self) -> tuple[str, str | None, str | None]:
        """What a table is, whatever its name or id: the same in a plan file and in a fresh plan."""
        return (self.tensor, self.key_map, self.source_folder)


@dataclass(frozen=True)
class LookupPlan:
    """One HPS_TRT node to create."""

    node: str  #: name of the new HPS_TRT node
    pattern: str
    variant: tuple[str, ...]
    replaced_nodes: tuple[str, ...]  #: graph nodes the lookup consisted of, anchor last
    anchor_op: str  #: op of the node whose output the lookup replaces
    table: str
    table_id: int
    keys: str
    source_key_dtype: str  #: dtype of `keys` in the original graph
    key_dtype: str  #: dtype of the keys HPS_TRT takes (its table's)
    key_shape: tuple[Any, ...]
    keys_per_sample: int | None
    rows: int
    emb_vec_size: int
    output: str
    output_dtype: str
    out_shape: tuple[int, ...] | None  #: static reshape target of `output`; None = keys' shape + [D]
    hoist: str | None  #: loop-body node re-applied to the rows HPS_TRT looks up in the main graph
    consumers: tuple[str, ...]
    glue_ops: tuple[str, ...]  #: ops the pattern lets the rewrite add around HPS_TRT
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

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain data (report.json's body, the plan file); `from_dict` reads it back."""
        return {
            "options": _plain(dataclasses.asdict(self.options)),
            "tables": [{**_plain(dataclasses.asdict(t)), "folder": t.folder, "bytes": t.nbytes} for t in self.tables],
            "hps_trt_nodes": [_plain(dataclasses.asdict(lp)) for lp in self.lookups],
            "not_rewritten": [_plain(dataclasses.asdict(n)) for n in self.not_rewritten],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """Inverse of `to_dict`; raises KeyError/TypeError/ValueError on data of another shape."""
        return cls(options=_build(Options, data["options"]),
                   tables=tuple(_build(TablePlan, t) for t in data["tables"]),
                   lookups=tuple(_build(LookupPlan, lp) for lp in data["hps_trt_nodes"]),
                   not_rewritten=tuple(_build(NearMiss, n) for n in data["not_rewritten"]),
                   notes=tuple(data["notes"]))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _build(kind: type, data: dict[str, Any]) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"expected a mapping for {kind.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(kind)
    values = {}
    for f in dataclasses.fields(kind):
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise KeyError(f.name)
            continue
        value = data[f.name]
        if not _conforms(value, hints[f.name]):
            raise TypeError(f"{kind.__name__} field '{f.name}' is {_kind_of(value)}, expected "
                            f"{_type_text(hints[f.name])}")
        values[f.name] = tuple(tuple(v) if isinstance(v, list) else v for v in value) \
            if isinstance(value, list) else value
    return kind(**values)


def _conforms(value: Any, hint: Any) -> bool:
    """Whether plain data `value` (from YAML) has the dataclass field type `hint`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return _conforms(value, str | int | float | bool | None)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arg) for arg in args)
    if origin is tuple:
        if not isinstance(value, list):
            return False
        items = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        return len(items) == len(value) and all(_conforms(v, a) for v, a in zip(value, items))
    if hint is type(None):
        return value is None
    if hint in (int, float):  # a float field takes an integer (YAML writes 1.0 as 1.0, a person may write 1)
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _kind_of(value: Any) -> str:
    return {dict: "a mapping", list: "a list"}.get(type(value), f"{type(value).__name__} {shown(value)}")


def _type_text(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


# --- resolving matches ---------------------------------------------------------------------------

def resolve(result: MatchResult) -> MatchResult:
    """The matches to rewrite and the lookups left alone, from everything `find_matches` found.

    Overlaps go to the larger match (then the higher priority); a table one refused lookup reads
    keeps all its lookups; near misses are kept only for nodes no kept match rewrites.
    """
    matches = _resolve_overlaps(list(result.matches))
    matches, blocked = _drop_lookups_of_refused_tables(matches, result.near_misses)
    anchors = {m.anchor for m in matches}
    near = [*blocked, *(miss for miss in result.near_misses if miss.node not in anchors)]
    return MatchResult(tuple(matches), tuple(sorted(near, key=lambda n: n.node)))


def _resolve_overlaps(found: list[Match]) -> list[Match]:
    """Where one match's anchor lies inside another match, keep the larger (then higher priority).

    Sharing only glue is no conflict: two lookups may read keys through one Cast, or a table
    through one Identity; each gets its own HPS_TRT node and the shared node stays while read.
    """
    kept: list[Match] = []
    inside_kept: set[str] = set()  # every node of a kept match
    kept_anchors: set[str] = set()
    for match in sorted(found, key=lambda m: (-m.size, -m.priority, m.pattern, m.anchor)):
        if match.anchor not in inside_kept and kept_anchors.isdisjoint(match.nodes):
            kept.append(match)
            inside_kept.update(match.nodes)
            kept_anchors.add(match.anchor)
    return sorted(kept, key=lambda m: m.anchor)


def _drop_lookups_of_refused_tables(matches: list[Match],
                                    misses: tuple[NearMiss, ...]) -> tuple[list[Match], list[NearMiss]]:
    """A table one refused lookup reads stays in the model as it is: its other lookups stay too.

    (torch's max_norm renormalisation, for one, gathers the table's rows a second time.)
    """
    refused: dict[str, NearMiss] = {}
    for miss in misses:
        if miss.refused and miss.table:
            refused.setdefault(miss.table, miss)
    refused_nodes = {miss.node for miss in refused.values()}
    kept, blocked = [], []
    for match in matches:
        cause = refused.get(match.table)
        if cause is None:
            kept.append(match)
        elif match.anchor not in refused_nodes:  # a refused node is reported once, with its own reason
            blocked.append(NearMiss(match.pattern, match.anchor, cause.op,
                                    f"node '{match.anchor}': table '{match.table}' is also read by node "
                                    f"'{cause.node}', which is refused (see its reason); leaving every lookup of "
                                    "the table in place", refused=True, table=match.table))
    return kept, blocked


def hold_fixed_keys(graph: gs.Graph, result: MatchResult) -> MatchResult:
    """Leave in the model the tables every lookup of which reads keys that no graph input's values reach.

    Such keys are the same for every feed (recbole's SASRec position table reads `Range` over the
    sequence length): the table answers one fixed question, which TensorRT folds or serves from its
    own memory, so HPS adds a plugin call and a cache for nothing. A table that input-driven keys
    also read moves to HPS with all its lookups (`--rewrite-fixed-keys` moves the others too).
    """
    tensors = all_tensors(graph)
    fixed = [m for m in result.matches if not reads_input_values(tensors[m.keys], graph)]
    driven = {m.table for m in result.matches if m not in fixed}
    held = [m for m in fixed if m.table not in driven]
    if not held:
        return result
    misses = [NearMiss(m.pattern, m.anchor, m.anchor_op,
                       f"node '{m.anchor}' ({m.anchor_op}): its keys '{m.keys}' depend on no graph input's values "
                       f"(constants and shapes only, such as positions from Range): every inference reads the same "
                       f"rows of '{m.table}', which HPS would serve for nothing; kept in the model. Pass "
                       "--rewrite-fixed-keys to move it to HPS anyway", table=m.table) for m in held]
    return MatchResult(tuple(m for m in result.matches if m not in held),
                       tuple(sorted([*result.near_misses, *misses], key=lambda n: n.node)))


# --- planning ------------------------------------------------------------------------------------

def plan_rewrites(loaded: LoadedModel, found: MatchResult, options: Options,
                  attached: tuple[tuple[TablePlan, LookupPlan], ...] = ()) -> Plan:
    """Decide table ids, key handling and notes for every match; raise SurgeonError on what must be fixed."""
    options.check()
    resolved = resolve(found)
    if not options.rewrite_fixed_keys:
        resolved = hold_fixed_keys(loaded.graph, resolved)
    tensors = all_tensors(loaded.graph)
    replaced = {name for m in resolved.matches for name in m.nodes}
    table_order: dict[tuple[str, str | None], list[Match]] = {}
    for match in resolved.matches:
        table_order.setdefault((match.table, match.key_map), []).append(match)
    names = hugectr_names([table for table, _ in table_order])
    tables = []
    for table_id, ((tensor_name, key_map), users) in enumerate(table_order.items()):
        table = _plan_table(loaded, tensors, tensor_name, table_id, names[table_id], users, replaced, options)
        tables.append(_with_key_map(loaded, table, key_map) if key_map is not None else table)
    tables = _with_other_tables_keys(loaded, tables)
    lookups = [_plan_lookup(tensors, m, table, options) for table, users in zip(tables, table_order.values())
               for m in users]
    for table, lookup in attached:  # tables from HugeCTR sparse-model folders (see attach.py)
        table_id = len(tables)
        tables.append(replace(table, table_id=table_id, name=hugectr_names([*[t.name for t in tables], table.name])[-1]))
        lookups.append(replace(lookup, table_id=table_id))
    lookups.sort(key=lambda lp: lp.node)
    plan = Plan(options=options, tables=tuple(tables), lookups=tuple(lookups),
                not_rewritten=resolved.near_misses,
                notes=(*loaded.notes, *_global_notes(options)) if lookups else ())
    kept = {t.identity: f"table '{t.tensor}' has {t.rows} rows, fewer than --min-table-rows {options.min_table_rows}: "
            "kept inside the model" for t in plan.tables if t.rows < options.min_table_rows}
    # embedding_vecsize_per_table must be >= 1, and a table without rows has nothing for HPS to serve
    kept.update({t.identity: f"table '{t.tensor}' has shape [{t.rows}, {t.dim}]; an HPS table needs at least one row "
                 "and emb_vec_size >= 1: kept inside the model" for t in plan.tables if t.rows < 1 or t.dim < 1})
    return drop_tables(plan, kept)


def drop_tables(plan: Plan, reasons: dict[tuple, str]) -> Plan:
    """The plan without the tables whose identity is in `reasons`: their lookups stay in the model."""
    if not reasons:
        return plan
    kept_tables = [t for t in plan.tables if t.identity not in reasons]
    new_ids = {t.table_id: index for index, t in enumerate(kept_tables)}
    by_id = {t.table_id: t for t in plan.tables}
    misses = [NearMiss(lp.pattern, lp.replaced_nodes[-1] if lp.replaced_nodes else lp.node, lp.anchor_op,
                       f"node '{lp.replaced_nodes[-1] if lp.replaced_nodes else lp.node}': "
                       f"{reasons[by_id[lp.table_id].identity]}", table=lp.table)
              for lp in plan.lookups if lp.table_id not in new_ids]
    lookups = tuple(replace(lp, table_id=new_ids[lp.table_id]) for lp in plan.lookups if lp.table_id in new_ids)
    tables = tuple(replace(t, table_id=new_ids[t.table_id]) for t in kept_tables)
    notes = plan.notes if lookups else ()
    return replace(plan, tables=tables, lookups=lookups,
                   not_rewritten=tuple(sorted([*plan.not_rewritten, *misses], key=lambda n: n.node)), notes=notes)


def _with_key_map(loaded: LoadedModel, table: TablePlan, key_map: str) -> TablePlan:
    keys = mapped_keys(loaded.sources[key_map].read_all(), table.rows)
    default = float(loaded.sources[table.tensor].read_rows(0, 1).flat[0])
    return replace(table, rows=int(keys.size), key_map=key_map, default_value=default)


def _with_other_tables_keys(loaded: LoadedModel, tables: list[TablePlan]) -> list[TablePlan]:
    """Tables read through one shared HugeCTR key map, each told how many of its keys are other tables'."""
    by_map: dict[str, list[TablePlan]] = {}
    for table in tables:
        if table.key_map and not table.source_folder:
            by_map.setdefault(table.key_map, []).append(table)
    counted: dict[int, tuple[int, int]] = {}
    for key_map, group in by_map.items():
        own = own_key_counts(loaded.sources[key_map].read_all(),
                             {t.table_id: loaded.sources[t.tensor].shape[0] for t in group})
        for t in group:
            counted[t.table_id] = (t.rows - own[t.table_id][1], t.rows - own[t.table_id][0]) if own else (0, t.rows)
    return [replace(t, other_tables_keys=counted[t.table_id]) if t.table_id in counted else t for t in tables]


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
    if max(per_sample) > _INT32_MAX:
        widest = users[per_sample.index(max(per_sample))]
        raise SurgeonError(f"{loaded.path}: keys '{widest.keys}' of node '{widest.anchor}' hold {max(per_sample)} keys "
                           f"per sample; HugeCTR reads maxnum_catfeature_query_per_table_per_sample as an int (at "
                           f"most {_INT32_MAX}) — re-export the model with fewer keys per sample")
    readers = [n.name for n in _readers(tensor) if n.name not in replaced]
    return TablePlan(table_id=table_id, tensor=tensor.name, name=name, rows=rows, dim=dim, source_dtype=dtype,
                     max_keys_per_sample=max(per_sample), kept_in_model=bool(readers), key_dtype=options.key_dtype,
                     other_readers=tuple(readers), default_value=options.default_value)


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
    out_dtype = dtype_name(out) or table.source_dtype
    return LookupPlan(
        node=f"hps_trt/{match.anchor}", pattern=match.pattern, variant=match.variant, replaced_nodes=match.nodes,
        anchor_op=match.anchor_op, table=table.tensor, table_id=table.table_id, keys=keys.name,
        source_key_dtype=key_dtype, key_dtype=table.key_dtype, key_shape=key_shape,
        keys_per_sample=_keys_per_sample(key_shape), rows=table.rows, emb_vec_size=table.dim, output=out.name,
        output_dtype=out_dtype, out_shape=match.out_shape, hoist=match.hoist,
        consumers=tuple(n.name for n in out.outputs) or ("(graph output)",), glue_ops=match.glue_ops,
        notes=tuple(lookup_notes(table, keys.name, key_dtype, key_shape, match.hoist, match.out_shape, out_dtype)))


def lookup_notes(table: TablePlan, keys: str, source_key_dtype: str, key_shape: tuple[Any, ...],
                 hoist: str | None, out_shape: tuple[int, ...] | None, out_dtype: str) -> list[str]:
    """What a reader of the report should know about one lookup's rewrite."""
    if table.key_map and table.source_folder:
        notes = [f"HugeCTR key map '{table.key_map}' replaced by the table's own {table.rows} keys, copied with their "
                 f"vectors from {table.source_folder}: other tables' keys, which the shared map sends to rows of "
                 f"this table in ONNX, return the default value ({table.default_value}) as in HugeCTR's HPS"]
    elif table.key_map:
        notes = [f"HugeCTR key map '{table.key_map}' folded into the table: {table.rows} keys stored with the row "
                 f"the map gives them; keys it maps to 0 read row 0 in ONNX and the table's default value "
                 f"({table.default_value}) in HPS, the same numbers; keys outside the map fail in ONNX"]
        notes += _other_tables_note(table)
    else:
        notes = [f"keys outside [0, {table.rows - 1}] return the table's default value "
                 f"({table.default_value}) instead of ONNX Gather's error or negative-index wrap-around"]
    if table.key_dtype == "int64":
        notes.append("int64 keys make the config's supportlonglong true, which HugeCTR's HPS_TRT plugin refuses "
                     "(plugin/lookup_manager.cpp:133); hps-surgeon's plugin takes them — --key-dtype int32 for HugeCTR")
    if source_key_dtype != table.key_dtype:
        notes.append(f"keys cast from {source_key_dtype} to {table.key_dtype}" +
                     (" (keys beyond int32 wrap; HugeCTR's HPS_TRT takes int32 only)"
                      if table.key_dtype == "int32" and source_key_dtype == "int64" else ""))
    if hoist:
        notes.append(f"lookup hoisted out of its loop: one HPS_TRT over all of '{keys}' in the main graph, "
                     f"node '{hoist}' then picks the looked-up rows inside the loop")
        if len(key_shape) == 1:  # the bag's keys, not its samples, are HPS_TRT's batch
            notes.append(f"HPS_TRT sees each of the {key_shape[0]} keys as one sample: max_batch_size must "
                         "cover the most keys one inference looks up (--max-batch-size)")
    if len(key_shape) != 2 and out_shape is None:
        notes.append(f"keys of rank {len(key_shape)} reshaped to [B, N] for HPS_TRT and the output reshaped back")
    if table.source_dtype != "float32":
        notes.append(f"table converted from {table.source_dtype} to float32; output cast back to {out_dtype}")
    if table.kept_in_model:
        notes.append(f"table '{table.tensor}' is kept in the model: still read by {', '.join(table.other_readers)}")
    return notes


def _other_tables_note(table: TablePlan) -> list[str]:
    low, high = table.other_tables_keys or (0, 0)
    fix = (f"pass --hugectr-sparse-model {table.tensor.removesuffix('_embedding_table')}=FOLDER (the HugeCTR sparse "
           "model it was converted from) to store exactly the table's own keys")
    if high == 0:
        return []
    if (low, high) == (0, table.rows):
        return [f"the key map is shared: which of the {table.rows} keys are this table's own cannot be told from it; "
                f"{fix}"]
    count = f"{low}" if low == high else f"between {low} and {high}"
    return [f"the key map is shared by the model's HugeCTR embeddings (hugectr2onnx numbers each table's keys 1..n "
            f"in one map): {count} of the {table.rows} keys stored belong to other tables; they are kept since ONNX "
            f"reads this table's rows for them; {fix}"]


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


def _global_notes(options: Options) -> tuple[str, ...]:
    notes = []
    if options.domain == "":
        notes.append("HPS_TRT nodes are in the default ONNX domain (HugeCTR's layout): onnx.checker cannot check "
                     "them, so the checker ran on a copy with the nodes in domain 'trt.plugins'")
    return tuple(notes)


# --- the plan file -------------------------------------------------------------------------------

_PLAN_HEADER = """\
# hps-surgeon plan. Edit, then apply: hps-surgeon rewrite MODEL --plan THIS_FILE --out DIR
#   - delete a table's entry under `tables` to keep it inside the model (its lookups stay ONNX Gathers);
#   - change a table's `name` (HugeCTR's syntax: letters, digits, '_' and '-', at most 120);
#   - change a table's `key_dtype` (int32, or int64 for plugins that take 64-bit keys; HugeCTR's takes int32).
# Everything else records what the model holds; a plan that no longer fits the model is refused.
"""
_EDITABLE = ("name", "key_dtype")
_CHECKED = ("rows", "dim", "source_dtype")


def write_plan_file(plan: Plan, path: Path) -> None:
    """The plan as YAML at `path` (an output `outputs.output_file` accepted), replaced atomically."""
    text = _PLAN_HEADER + yaml.safe_dump(plan.to_dict(), sort_keys=False, width=120)
    try:
        replace_file(Path(path), text.encode(), f"--plan-out {path}: cannot write the plan ({{reason}}); choose "
                                                "another path")
    except OSError as exc:
        raise SurgeonError(f"--plan-out {path}: cannot write the plan ({exc.strerror}); choose another path") from None


def read_plan_file(path: Path) -> Plan:
    """The plan file at `path` (bounded.PLAN_MAX_BYTES, no YAML aliases, nesting and numbers bounded)."""
    label, fix = f"--plan {path}", "fix the file or write a new one with --plan-out"
    text = bounded.read_text(path, label, bounded.PLAN_MAX_BYTES, fix)
    data = bounded.load_yaml(text, label, fix)
    if not isinstance(data, dict):
        raise SurgeonError(f"{label}: holds {_kind_of(data)}, not the mapping of options, tables and hps_trt_nodes "
                           "that --plan-out writes; write a new one with --plan-out")
    try:
        return Plan.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        what = f"field {exc.args[0]} is missing" if isinstance(exc, KeyError) else str(exc)
        raise SurgeonError(f"--plan {path}: not a plan written by --plan-out ({what}); write a new one with "
                           "--plan-out") from None


def apply_plan_file(fresh: Plan, edited: Plan, path: Path) -> Plan:
    """`fresh` (planned from the model now) with the edits of `edited` (a plan file): tables dropped,
    renamed or given another key dtype. Anything else that differs means the file is stale: refused."""
    where = f"--plan {path}"
    current = {t.identity: t for t in fresh.tables}
    seen: set[tuple] = set()
    names: dict[str, int] = {}
    changes: dict[tuple, dict[str, Any]] = {}
    for index, table in enumerate(edited.tables):
        at = f"{where}: tables[{index}] (tensor '{table.tensor}')"
        now = current.get(table.identity)
        if now is None:
            raise SurgeonError(f"{at}: the model has no such table to rewrite now; write a new plan with --plan-out")
        if table.identity in seen:
            raise SurgeonError(f"{at}: listed twice; keep one entry per table")
        seen.add(table.identity)
        for name in _CHECKED:
            if getattr(table, name) != getattr(now, name):
                raise SurgeonError(f"{at}: {name} is {getattr(table, name)} in the plan but {getattr(now, name)} in "
                                   "the model; the plan is stale, write a new one with --plan-out")
        if not isinstance(table.name, str) or not NAME_SYNTAX.fullmatch(table.name):
            raise SurgeonError(f"{at}: name '{table.name}' is not a valid HugeCTR table name (letters, digits, '_' "
                               "and '-', 1 to 120 of them); HugeCTR's HPS aborts on it")
        if table.name in names:
            raise SurgeonError(f"{at}: name '{table.name}' is also the name of tables[{names[table.name]}]; table "
                               "names must be distinct")
        names[table.name] = index
        if table.key_dtype not in KEY_DTYPES:
            raise SurgeonError(f"{at}: key_dtype '{table.key_dtype}' is not one of {', '.join(KEY_DTYPES)}")
        changes[table.identity] = {k: getattr(table, k) for k in _EDITABLE}
    _check_lookups(fresh, edited, seen, where)
    planned = drop_tables(fresh, {t.identity: f"table '{t.tensor}' is not in {path}: kept inside the model"
                                  for t in fresh.tables if t.identity not in seen})
    tables = tuple(replace(t, **changes[t.identity]) for t in planned.tables)
    by_id = {t.table_id: t for t in tables}
    lookups = []
    for lp in planned.lookups:
        table = by_id[lp.table_id]
        notes = lookup_notes(table, lp.keys, lp.source_key_dtype, lp.key_shape, lp.hoist, lp.out_shape,
                             lp.output_dtype) if not lp.new_keys_input else list(lp.notes)
        lookups.append(replace(lp, key_dtype=table.key_dtype, notes=tuple(notes)))
    return replace(planned, tables=tables, lookups=tuple(lookups))


def _check_lookups(fresh: Plan, edited: Plan, kept: set[tuple], where: str) -> None:
    fresh_ids = {t.table_id: t.identity for t in fresh.tables}
    edited_ids = {t.table_id: t.identity for t in edited.tables}
    now = {lp.node: fresh_ids[lp.table_id] for lp in fresh.lookups if fresh_ids[lp.table_id] in kept}
    planned = {lp.node: edited_ids.get(lp.table_id) for lp in edited.lookups if edited_ids.get(lp.table_id) in kept}
    for node, identity in now.items():
        if node not in planned:
            raise SurgeonError(f"{where}: lookup '{node}' of table '{identity[0]}' is not in the plan; the plan is "
                               "stale (or a lookup was deleted: delete its table instead), write a new one")
        if planned[node] != identity:
            raise SurgeonError(f"{where}: lookup '{node}' reads table '{identity[0]}' in the model but "
                               f"'{planned[node][0]}' in the plan; the plan is stale, write a new one with --plan-out")
    for node in planned.keys() - now.keys():
        raise SurgeonError(f"{where}: lookup '{node}' is in the plan but not in the model; the plan is stale, "
                           "write a new one with --plan-out")
