"""HugeCTR models converted with convert_embedding=False: the embedding output is a graph input
and its table lives in a HugeCTR sparse-model folder. `--hugectr-sparse-model INPUT=FOLDER[:combiner][:nnz]`
attaches an HPS_TRT lookup that produces INPUT from a new keys input, `INPUT_keys`.

    INPUT_keys [B, slots(, nnz)] ── HPS_TRT ── [ReduceSum/ReduceMean over nnz] ── INPUT [B, slots, D]

The folder is copied into the output as it is (tables/<INPUT>/), so the output folder is
self-contained. ReduceMean averages over all nnz positions, padding included, as hugectr2onnx's
convert_embedding=True graphs do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx_graphsurgeon as gs

from .errors import SurgeonError
from .graph import dtype_name
from .hps.tables import KEY_FILE, VECTOR_FILE
from .load import LoadedModel
from .plan import LookupPlan, Options, TablePlan

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
    """`INPUT=FOLDER[:combiner][:nnz]`, e.g. `sparse_embedding1=wdl0_sparse_2000.model:sum:2`."""
    name, sep, rest = text.partition("=")
    parts = rest.split(":") if sep else []
    if not name or not parts or not parts[0] or len(parts) > 3:
        raise SurgeonError(f"--hugectr-sparse-model '{text}': expected INPUT=FOLDER[:combiner][:nnz]")
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
    rows = _check_folder(spec, dim)
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


def _embedding_input(loaded: LoadedModel, spec: SparseModelInput) -> gs.Tensor:
    inputs = {t.name: t for t in loaded.graph.inputs}
    tensor = inputs.get(spec.input)
    if tensor is None:
        raise SurgeonError(f"--hugectr-sparse-model: '{spec.input}' is not an input of {loaded.path} "
                           f"(inputs: {', '.join(inputs)})")
    shape = tensor.shape or []
    if dtype_name(tensor) != "float32" or len(shape) != 3 or not all(isinstance(d, int) for d in shape[1:]):
        raise SurgeonError(f"--hugectr-sparse-model: input '{spec.input}' is {dtype_name(tensor)} {list(shape)}; "
                           "an embedding output is float32 [batch, slots, emb_vec_size] with static slots and size")
    return tensor


def _check_folder(spec: SparseModelInput, dim: int) -> int:
    key_file, vector_file = spec.folder / KEY_FILE, spec.folder / VECTOR_FILE
    if not key_file.is_file() or not vector_file.is_file():
        raise SurgeonError(f"--hugectr-sparse-model: {spec.folder} has no key and emb_vector files; pass a "
                           "HugeCTR sparse-model folder")
    rows, extra = divmod(key_file.stat().st_size, 8)
    if extra or vector_file.stat().st_size != rows * dim * 4:
        raise SurgeonError(f"--hugectr-sparse-model: {vector_file} has {vector_file.stat().st_size} bytes, expected "
                           f"{rows} keys x {dim} (the size of '{spec.input}') x 4 = {rows * dim * 4}")
    return rows
