"""HugeCTR sparse-model folders given with `--hugectr-sparse-model NAME=FOLDER[:combiner][:nnz]`.

Models converted with convert_embedding=False: the embedding output NAME is a graph input and its
table lives in the folder. An HPS_TRT lookup is attached that produces NAME from a new keys input,
`NAME_keys`:

    NAME_keys [B, slots(, nnz)] ── HPS_TRT ── [ReduceSum/ReduceMean over nnz] ── NAME [B, slots, D]

ReduceMean averages over all nnz positions, padding included, as hugectr2onnx's
convert_embedding=True graphs do.

Models converted with convert_embedding=True: NAME is an embedding whose table `NAME_embedding_table`
is read through hugectr2onnx's one key map for all embeddings. Folding the map stores every key it
sends to a row of the table, other tables' keys included; with the folder the table stores exactly
its own keys instead (checked against the map and the table first).

Either way the folder is copied into the output as it is (tables/<name>/), byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs

from .errors import SurgeonError
from .graph import dtype_name
from .hps.tables import KEY_FILE, VECTOR_FILE, TableSizeError, table_rows
from .load import LoadedModel
from .plan import LookupPlan, Options, Plan, TablePlan, lookup_notes

COMBINERS = ("sum", "mean")
PATTERN = "hugectr.sparse_model_folder"
#: a keys Cast, Reshapes to [B, N] and back, and the combiner over nnz
GLUE_OPS = ("Cast", "Reshape", "Shape", "Concat", "ReduceSum", "ReduceMean")


@dataclass(frozen=True)
class SparseModelInput:
    """One `--hugectr-sparse-model` argument."""

    input: str
    folder: Path
    combiner: str = "sum"
    nnz: int = 1


def parse_sparse_model(text: str) -> SparseModelInput:
    """`NAME=FOLDER[:combiner][:nnz]`, e.g. `sparse_embedding1=wdl0_sparse_2000.model:sum:2`."""
    name, sep, rest = text.partition("=")
    parts = rest.split(":") if sep else []
    if not name or not parts or not parts[0] or len(parts) > 3:
        raise SurgeonError(f"--hugectr-sparse-model '{text}': expected NAME=FOLDER[:combiner][:nnz]")
    combiner, nnz = "sum", 1
    for part in parts[1:]:
        if part in COMBINERS:
            combiner = part
        elif part.isdigit() and int(part) >= 1:
            nnz = int(part)
        else:
            raise SurgeonError(f"--hugectr-sparse-model '{text}': '{part}' is neither a combiner "
                               f"({'/'.join(COMBINERS)}) nor an nnz (a positive integer)")
    return SparseModelInput(name, Path(parts[0]), combiner, nnz)


def plan_attached(loaded: LoadedModel, spec: SparseModelInput, options: Options) -> tuple[TablePlan, LookupPlan]:
    """The table and lookup that produce `spec.input`; table ids are given by plan_rewrites."""
    tensor = _embedding_input(loaded, spec)
    batch, slots, dim = tensor.shape
    rows = _check_folder(spec, dim, f"the size of '{spec.input}'")
    keys = f"{spec.input}_keys"
    key_shape = (batch, slots) if spec.nnz == 1 else (batch, slots, spec.nnz)
    table = TablePlan(table_id=-1, tensor=spec.input, name=spec.input, rows=rows, dim=dim, source_dtype="float32",
                      max_keys_per_sample=slots * spec.nnz, kept_in_model=False, key_dtype=options.key_dtype,
                      default_value=options.default_value, source_folder=str(spec.folder))
    notes = [f"new input '{keys}' int64 {list(key_shape)} replaces input '{spec.input}'; table copied from "
             f"{spec.folder}", f"keys not in the table return the default value ({options.default_value})"]
    if spec.nnz > 1:
        notes.append(f"{spec.combiner} over the {spec.nnz} keys of each slot, padding included (as hugectr2onnx)")
    lookup = LookupPlan(
        node=f"hps_trt/{spec.input}", pattern=PATTERN, variant=(), replaced_nodes=(), anchor_op="",
        table=spec.input, table_id=-1, keys=keys, source_key_dtype="int64", key_dtype=options.key_dtype,
        key_shape=key_shape, glue_ops=GLUE_OPS,
        keys_per_sample=slots * spec.nnz, rows=rows, emb_vec_size=dim, output=spec.input, output_dtype="float32",
        out_shape=None, hoist=None, consumers=tuple(n.name for n in tensor.outputs), notes=tuple(notes),
        new_keys_input=True, combiner=spec.combiner if spec.nnz > 1 else None)
    return table, lookup


def is_embedding_input(loaded: LoadedModel, spec: SparseModelInput) -> bool:
    """Whether `spec` names a graph input (convert_embedding=False) rather than a key-mapped table."""
    return any(t.name == spec.input for t in loaded.graph.inputs)


def with_own_keys(loaded: LoadedModel, plan: Plan, specs: list[SparseModelInput]) -> Plan:
    """The plan with each key-mapped table named by a spec storing exactly its folder's keys and vectors."""
    tables = {t.table_id: t for t in plan.tables}
    for spec in specs:
        table = _keyed_table(loaded, plan, spec)
        rows = _check_folder(spec, table.dim, f"the size of '{table.tensor}'")
        _check_own_keys(loaded, table, spec, rows)
        tables[table.table_id] = replace(table, rows=rows, source_folder=str(spec.folder), other_tables_keys=(0, 0))
    lookups = []
    for lp in plan.lookups:
        table = tables[lp.table_id]
        if table.source_folder and table.key_map:
            notes = lookup_notes(table, lp.keys, lp.source_key_dtype, lp.key_shape, lp.hoist, lp.out_shape,
                                 lp.output_dtype)
            lp = replace(lp, rows=table.rows, notes=tuple(notes))
        lookups.append(lp)
    return replace(plan, tables=tuple(tables[t.table_id] for t in plan.tables), lookups=tuple(lookups))


def _keyed_table(loaded: LoadedModel, plan: Plan, spec: SparseModelInput) -> TablePlan:
    keyed = [t for t in plan.tables if t.key_map]
    found = [t for t in keyed if spec.input in (t.tensor, t.tensor.removesuffix("_embedding_table"))]
    if not found:
        raise SurgeonError(f"--hugectr-sparse-model: '{spec.input}' is not an input of {loaded.path} (inputs: "
                           f"{', '.join(t.name for t in loaded.graph.inputs)}) nor an embedding read through a HugeCTR "
                           f"key map (embeddings: {', '.join(t.tensor for t in keyed) or 'none'})")
    return found[0]


def _check_own_keys(loaded: LoadedModel, table: TablePlan, spec: SparseModelInput, rows: int) -> None:
    """The folder is the one the table was converted from: hugectr2onnx gives entry i of its key
    file row i + 1 of the table (onnx_converter/hugectr2onnx/hugectr_loader.py:226-237)."""
    where = f"--hugectr-sparse-model {spec.input}={spec.folder}"
    keys = np.fromfile(spec.folder / KEY_FILE, dtype="<i8")
    key_map = loaded.sources[table.key_map].read_all()
    inside = (keys >= 0) & (keys < key_map.size)
    expected = np.arange(1, rows + 1)
    mapped = np.where(inside, key_map[np.where(inside, keys, 0)], -1)
    wrong = np.flatnonzero(mapped != expected)
    if wrong.size:
        i = int(wrong[0])
        raise SurgeonError(f"{where}: key {keys[i]} (entry {i} of {spec.folder / KEY_FILE}) maps to row {mapped[i]} "
                           f"of '{table.tensor}' in '{table.key_map}' where hugectr2onnx puts it at row {i + 1}: the "
                           f"folder is not the sparse model '{table.tensor}' was converted from")
    vectors = np.fromfile(spec.folder / VECTOR_FILE, dtype="<f4").reshape(rows, table.dim)
    stored = loaded.sources[table.tensor].read_rows(1, rows + 1)
    differs = np.flatnonzero(np.any(vectors.view("<i4") != stored.astype("<f4").view("<i4"), axis=1))
    if differs.size:
        i = int(differs[0])
        raise SurgeonError(f"{where}: vector {i} of {spec.folder / VECTOR_FILE} differs from row {i + 1} of "
                           f"'{table.tensor}': the folder is not the sparse model the table was converted from")


def _embedding_input(loaded: LoadedModel, spec: SparseModelInput) -> gs.Tensor:
    tensor = next(t for t in loaded.graph.inputs if t.name == spec.input)
    shape = tensor.shape or []
    if dtype_name(tensor) != "float32" or len(shape) != 3 or not all(isinstance(d, int) for d in shape[1:]):
        raise SurgeonError(f"--hugectr-sparse-model: input '{spec.input}' is {dtype_name(tensor)} {list(shape)}; "
                           "an embedding output is float32 [batch, slots, emb_vec_size] with static slots and size")
    return tensor


def _check_folder(spec: SparseModelInput, dim: int, dim_from: str) -> int:
    key_file, vector_file = spec.folder / KEY_FILE, spec.folder / VECTOR_FILE
    if not key_file.is_file() or not vector_file.is_file():
        raise SurgeonError(f"--hugectr-sparse-model: {spec.folder} has no key and emb_vector files; pass a "
                           "HugeCTR sparse-model folder")
    try:
        return table_rows(key_file, vector_file, dim)
    except TableSizeError as exc:
        raise SurgeonError(f"--hugectr-sparse-model: {exc} ({dim} is {dim_from}); pass the sparse model of this "
                           "embedding") from None
