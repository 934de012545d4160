"""Stage 1: read an ONNX model without reading its external data.

Initializers stored in external data files stay on disk; a `TensorSource` says where their bytes
are so that `export` can stream them later. Before anything uses the model, `wellformed` checks
it (text fields, tensor sizes, external-data references under the confinement rule, cycles).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
from onnx import TensorProto

from . import wellformed
from .errors import SurgeonError

# dtypes a table may have on disk, with the numpy type of their stored bytes. bfloat16 has no
# numpy type: its 16-bit patterns are widened to float32 by hand in `TensorSource.read_rows`.
_STORED = {
    TensorProto.FLOAT: np.dtype("<f4"),
    TensorProto.FLOAT16: np.dtype("<f2"),
    TensorProto.BFLOAT16: np.dtype("<u2"),
    TensorProto.DOUBLE: np.dtype("<f8"),
    TensorProto.INT8: np.dtype("i1"),
    TensorProto.UINT8: np.dtype("u1"),
    TensorProto.INT16: np.dtype("<i2"),
    TensorProto.INT32: np.dtype("<i4"),
    TensorProto.INT64: np.dtype("<i8"),
}


@dataclass(frozen=True)
class TensorSource:
    """Where one constant tensor's bytes live: an external file range, or inline in the proto."""

    name: str
    data_type: int  #: onnx TensorProto.DataType
    shape: tuple[int, ...]
    file: Path | None = None  #: external data file; None when the bytes are inline
    offset: int = 0
    length: int = 0
    proto: TensorProto | None = None  #: the inline tensor when `file` is None

    @property
    def dtype_name(self) -> str:
        return TensorProto.DataType.Name(self.data_type).lower()

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * _stored_dtype(self).itemsize

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a 2-D tensor as float32, reading only those bytes."""
        stored = _stored_dtype(self)
        row_items = int(np.prod(self.shape[1:], dtype=np.int64))
        if self.file is None:
            rows = onnx.numpy_helper.to_array(self.proto).reshape(self.shape[0], row_items)[start:stop]
            return np.ascontiguousarray(rows, dtype=np.float32)
        row_bytes = row_items * stored.itemsize
        with open(self.file, "rb") as f:
            raw = os.pread(f.fileno(), (stop - start) * row_bytes, self.offset + start * row_bytes)
        values = np.frombuffer(raw, dtype=stored).reshape(stop - start, row_items)
        if self.data_type == TensorProto.BFLOAT16:
            return (values.astype(np.uint32) << 16).view(np.float32)
        return values.astype(np.float32)

    def read_row_indices(self, rows: np.ndarray) -> np.ndarray:
        """The given rows of a 2-D tensor as float32 (random access: for key-mapped tables)."""
        if self.file is None:
            return np.asarray(onnx.numpy_helper.to_array(self.proto)[rows], dtype=np.float32)
        stored = _stored_dtype(self)
        table = np.memmap(self.file, dtype=stored, mode="r", offset=self.offset, shape=self.shape)
        values = np.asarray(table[rows])
        if self.data_type == TensorProto.BFLOAT16:
            return (values.astype(np.uint32) << 16).view(np.float32)
        return values.astype(np.float32)

    def read_all(self) -> np.ndarray:
        """The whole tensor in its own dtype (only for small tensors: shape glue, offsets)."""
        if self.file is None:
            return onnx.numpy_helper.to_array(self.proto)
        return np.fromfile(self.file, dtype=_stored_dtype(self), count=self.length // _stored_dtype(self).itemsize,
                           offset=self.offset).reshape(self.shape)


def _stored_dtype(source: TensorSource) -> np.dtype:
    try:
        return _STORED[source.data_type]
    except KeyError:
        raise SurgeonError(f"tensor '{source.name}': dtype {source.dtype_name} cannot be read as a table") from None


@dataclass(frozen=True)
class LoadedModel:
    """A parsed model: its proto (external data not loaded), its graph IR, and its constants' sources."""

    path: Path
    proto: onnx.ModelProto
    graph: gs.Graph
    sources: dict[str, TensorSource]  #: main-graph initializers and Constant-node outputs by tensor name
    notes: tuple[str, ...] = ()  #: what loading changed (nodes renamed to be told apart)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def opset(self) -> int:
        return next((o.version for o in self.proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def read_model(path: str | os.PathLike) -> LoadedModel:
    """Parse `path`, check every external-data reference, and import the graph.

    Raises SurgeonError for a missing or unparsable file, or a model `wellformed` refuses (an
    external-data location outside the model's folder, a tensor whose dims disagree with its data...).
    """
    path = Path(path)
    return load_proto(_parse(path), path)


def read_proto(path: str | os.PathLike) -> onnx.ModelProto:
    """Parse `path` and check its external-data references, without shape inference or graph import.

    The fast path for checks that only read node attributes (`hps-surgeon check`).
    """
    path = Path(path)
    proto = _parse(path)
    wellformed.check_model(proto, path)
    return proto


def load_proto(proto: onnx.ModelProto, path: Path) -> LoadedModel:
    """Like `read_model` for a model already in memory; external data resolves next to `path`."""
    wellformed.check_model(proto, path)
    sources = _sources(proto, path)
    proto = _with_inferred_shapes(proto)
    _inline_small_external(proto.graph, sources)
    notes = name_nodes_uniquely(proto.graph)
    return LoadedModel(path=path, proto=proto, graph=gs.import_onnx(proto), sources=sources, notes=notes)


def _sources(proto: onnx.ModelProto, path: Path) -> dict[str, TensorSource]:
    return {tensor.name: _source_of(tensor, path) for tensor in _main_graph_constants(proto.graph)}


#: external tensors up to this size (shape vectors, axes, offsets) are read at load time: patterns
#: compare their values. Larger ones (tables) stay on disk until export streams them.
SMALL_CONSTANT_BYTES = 64 << 10


def _inline_small_external(graph: onnx.GraphProto, sources: dict[str, TensorSource]) -> None:
    for tensor in graph.initializer:
        source = sources.get(tensor.name)
        if source is not None and source.file is not None and source.length <= SMALL_CONSTANT_BYTES:
            with open(source.file, "rb") as f:
                tensor.raw_data = os.pread(f.fileno(), source.length, source.offset)
            del tensor.external_data[:]
            tensor.data_location = TensorProto.DEFAULT


def name_nodes_uniquely(graph: onnx.GraphProto) -> tuple[str, ...]:
    """Give every node a name of its own; notes on the renamed ones.

    Plans, reports and error messages refer to nodes by name, and ONNX allows nodes without one or
    nodes sharing one: two lookups named alike would otherwise be taken for one (and only one of
    them rewritten). The first node keeps a shared name; later ones get `_<index>` appended.
    """
    nodes = [node for scope in (graph, *subgraphs(graph)) for node in scope.node]
    names = [node.name for node in nodes]
    taken = set(names)
    seen: set[str] = set()
    renamed: list[str] = []
    for index, original in enumerate(names):
        if original and original not in seen:
            seen.add(original)
            continue
        node = nodes[index]
        name = f"{original or node.op_type}_{index}"
        while name in taken:
            name += "_"
        node.name = name
        taken.add(name)
        seen.add(name)
        if original:
            renamed.append(f"'{original}' -> '{name}'")
    if not renamed:
        return ()
    shown = ", ".join(renamed[:3]) + (f" and {len(renamed) - 3} more" if len(renamed) > 3 else "")
    return (f"{len(renamed)} node(s) shared a name with an earlier node and were renamed so that each is told "
            f"apart: {shown}",)


def _with_inferred_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    # Exporters often omit intermediate types (a Cast's output, a Reshape's result); patterns check
    # dtypes and ranks, so infer what can be inferred. A model onnx cannot infer is used as it is.
    try:
        return onnx.shape_inference.infer_shapes(proto)
    except (onnx.shape_inference.InferenceError, ValueError):
        return proto


def _parse(path: Path) -> onnx.ModelProto:
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise SurgeonError(f"{path}: no such file; pass the path of an .onnx model") from None
    except OSError as exc:
        raise SurgeonError(f"{path}: cannot read the model ({exc.strerror}); pass the path of an .onnx model") from None
    if not stat.S_ISREG(mode):
        raise SurgeonError(f"{path}: not a regular file; pass the path of an .onnx model")
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except OSError as exc:
        raise SurgeonError(f"{path}: cannot read the model ({exc.strerror}); check the file's permissions") from None
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise SurgeonError(f"{path}: not a readable ONNX model ({_first_line(exc)}); "
                           "check that the file is complete and really is .onnx") from None
    # Arbitrary bytes sometimes parse as a protobuf; a real model always names its IR version and graph.
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise SurgeonError(f"{path}: not an ONNX model (no IR version or graph); "
                           "check that the file is complete and really is .onnx")
    return proto


#: the domains ONNX itself defines; an op there without a schema is not ONNX
_ONNX_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training")


def foreign_ops(proto: onnx.ModelProto) -> list[str]:
    """Why the model is not valid ONNX, one message per node whose op ONNX does not define.

    Converters keep what they cannot convert: tf2onnx leaves TensorFlow ops (LookupTableFindV2 for
    Keras IntegerLookup, StringToHashBucketFast for Hashing) in the default domain, where onnx and
    onnxruntime reject the model; finding lookups around them would only lead to later, stranger errors.
    """
    problems = []
    for graph in (proto.graph, *subgraphs(proto.graph)):
        for node in graph.node:
            if node.domain in _ONNX_DOMAINS and not onnx.defs.has(node.op_type, node.domain):
                problems.append(
                    f"not a valid ONNX model: node '{node.name}' is {node.op_type}, which ONNX does not define "
                    f"(domain '{node.domain or 'ai.onnx'}'); converters leave such ops when they cannot convert them "
                    "(tf2onnx keeps TensorFlow ops). Export the model without it (do that step outside the model) "
                    "and try again")
    return problems


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _main_graph_constants(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    tensor = TensorProto()
                    tensor.CopyFrom(attr.t)
                    tensor.name = node.output[0]
                    yield tensor


def subgraphs(graph: onnx.GraphProto):
    """The bodies of Loop/If/Scan nodes of a GraphProto, at any depth (not `graph` itself)."""
    for node in graph.node:
        for attr in node.attribute:
            inner = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in inner:
                yield sub
                yield from subgraphs(sub)


def external_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """The tensors stored in external data: initializers and tensor attributes (Constant values), every scope."""
    for scope in (graph, *subgraphs(graph)):
        stored = [*scope.initializer, *(attr.t for node in scope.node for attr in node.attribute
                                        if attr.type == onnx.AttributeProto.TENSOR)]
        yield from (t for t in stored if t.data_location == TensorProto.EXTERNAL)


def _source_of(tensor: TensorProto, model_path: Path) -> TensorSource:
    shape = tuple(int(d) for d in tensor.dims)
    if tensor.data_location != TensorProto.EXTERNAL:
        return TensorSource(tensor.name, tensor.data_type, shape, proto=tensor)
    found = wellformed.external_range(tensor, model_path, f"tensor '{tensor.name}'")
    return TensorSource(tensor.name, tensor.data_type, shape, file=found.file, offset=found.offset,
                        length=found.length)
