"""Is a parsed model safe to use? Checked before any stage touches it, from the proto and file sizes only.

Every command that reads a model (through `load`) and `check` run these checks; no table byte is
read. Each failure is one `SurgeonError` line naming the file and the node, tensor or field:

- text: names, op types, domains and dim names are valid UTF-8 (for invalid UTF-8 in a proto2
  string field, protobuf hands back bytes, which fail far from their cause);
- stored tensors: a dtype ONNX defines, dims >= 0, stored data (raw bytes, typed values or
  external bytes) exactly what the dims and dtype need, no `segment`;
- external data: `location` obeys the confinement rule (`confine`) and is a regular file;
  `offset` and `length` are non-negative decimal integers; the range lies inside the file;
- graph: every tensor is produced once (ONNX's single assignment) and there is no cycle.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import AttributeProto, TensorProto

from . import confine
from .errors import SurgeonError

_FIX = "re-export the model"
#: elements per stored bit for the packed dtypes (others: numpy's itemsize); getattr: newer onnx only
_PACKED_BITS = {getattr(TensorProto, name): bits for name, bits in (
    ("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2), ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6))
    if hasattr(TensorProto, name)}
#: packed dtypes kept packed in int32_data too: values per int32 entry
_PACKED_PER_ENTRY = {dtype: 8 // bits for dtype, bits in _PACKED_BITS.items() if bits in (2, 4)}
_COMPLEX = {TensorProto.COMPLEX64, TensorProto.COMPLEX128}
_DTYPES = frozenset(TensorProto.DataType.values())
#: attribute types that hold tensors or graphs
_NESTED = {AttributeProto.TENSOR, AttributeProto.TENSORS, AttributeProto.SPARSE_TENSOR, AttributeProto.SPARSE_TENSORS,
           AttributeProto.GRAPH, AttributeProto.GRAPHS}
_DECIMAL = re.compile(r"[0-9]{1,19}")
_OFF_T_MAX = 2**63 - 1


@dataclass(frozen=True)
class ExternalRange:
    """Where an external tensor's bytes are: a regular file inside the model's folder, and a range in it."""

    file: Path  #: real path
    offset: int
    length: int


def check_model(proto: onnx.ModelProto, path: Path) -> None:
    """Raise SurgeonError for the first thing in `proto` (read from `path`) that is unsafe to use."""
    _check_model_text(proto, path)
    scopes = [(proto.graph, "")]
    while scopes:  # the graph, then the bodies of its Loop/If/Scan nodes at any depth
        graph, scope = scopes.pop()
        _check_graph_text(graph, path, scope)
        _check_value_types(graph, path, scope)
        for tensor, what in _stored_tensors(graph, scope):
            check_tensor(tensor, path, what)
        scopes += _check_nodes(graph, path, scope)
    for index, function in enumerate(proto.functions):
        _check_nodes_text(function.node, path, f"function #{index}: ")


def check_tensor(tensor: TensorProto, path: Path, what: str) -> ExternalRange | None:
    """Raise SurgeonError unless the stored data is what the dims and dtype need; the external range if any."""
    where = f"{path}: {what}"
    if tensor.data_type not in _DTYPES or tensor.data_type == TensorProto.UNDEFINED:
        raise SurgeonError(f"{where}: data_type {tensor.data_type} is not an ONNX dtype; {_FIX}")
    if tensor.HasField("segment"):
        raise SurgeonError(f"{where}: is a segment of a larger tensor, which hps-surgeon cannot read; {_FIX} "
                           "without segments")
    if any(d < 0 for d in tensor.dims):
        raise SurgeonError(f"{where}: dims {list(tensor.dims)} hold a negative size; {_FIX}")
    elements = 1
    for d in tensor.dims:
        elements *= d
    dtype = TensorProto.DataType.Name(tensor.data_type).lower()
    if tensor.data_location == TensorProto.EXTERNAL:
        found = external_range(tensor, path, what)
        stored, unit = found.length, "bytes"
        needed = _stored_bytes(tensor.data_type, elements)
    elif tensor.data_type == TensorProto.STRING:
        found, stored, unit, needed = None, len(tensor.string_data), "strings", elements
    elif tensor.HasField("raw_data"):
        found, stored, unit = None, len(tensor.raw_data), "bytes"
        needed = _stored_bytes(tensor.data_type, elements)
    else:
        field = onnx.helper.tensor_dtype_to_field(tensor.data_type)
        found, stored, unit = None, len(getattr(tensor, field)), f"values in {field}"
        needed = _typed_values(tensor.data_type, elements)
    if stored != needed:
        raise SurgeonError(f"{where}: holds {stored} {unit}, but dims {list(tensor.dims)} of {dtype} need {needed}; "
                           f"the tensor is truncated or its dims are wrong — {_FIX}")
    return found


def external_range(tensor: TensorProto, path: Path, what: str) -> ExternalRange:
    """The checked external-data reference of `tensor`: confined, a regular file, a range inside it."""
    info: dict[str, str] = {}
    for entry in tensor.external_data:
        if entry.key in info:
            raise SurgeonError(f"{path}: {what}: external_data names '{entry.key}' twice; {_FIX}")
        info[entry.key] = entry.value
    location = info.get("location", "")
    field = f"{what}: external_data location"
    file = confine.regular_file(path, field, location)
    # onnx.load takes only a relative location to a file that is neither a symlink nor hard-linked
    # (a hard link can lead anywhere: onnx/checker.cc); refuse what it refuses, so that a model that
    # passes here loads there too.
    on_disk = file.stat()
    refused = ("an absolute path" if os.path.isabs(location) else
               "a symbolic link" if os.path.islink(Path(path).parent / location) else
               f"a file with {on_disk.st_nlink} hard links" if on_disk.st_nlink > 1 else None)
    if refused:
        raise confine.PathRefused(path, field, f"{confine.shown(location)} is {refused}; ONNX loaders take only a "
                                               "relative path to a file of its own — copy the data next to the model")
    size = on_disk.st_size
    offset = _integer(info, "offset", 0, path, what)
    if offset > size:
        raise SurgeonError(f"{path}: {what}: external_data offset {offset} is past the end of '{location}' "
                           f"({size} bytes); {_FIX} or restore the data file")
    length = _integer(info, "length", size - offset, path, what)
    if offset + length > size:
        raise SurgeonError(f"{path}: external data file '{location}' is truncated: {what} needs bytes "
                           f"{offset}..{offset + length}, the file has {size}; restore the data file")
    return ExternalRange(file, offset, length)


def _integer(info: dict[str, str], key: str, default: int, path: Path, what: str) -> int:
    if key not in info:
        return default
    text = info[key]
    if not _DECIMAL.fullmatch(text) or int(text) > _OFF_T_MAX:
        raise SurgeonError(f"{path}: {what}: external_data {key} {_quoted(text)} is not a non-negative integer "
                           f"below 2^63; {_FIX}")
    return int(text)


def _stored_bytes(data_type: int, elements: int) -> int:
    bits = _PACKED_BITS.get(data_type)
    if bits is None:
        return elements * onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize
    return (elements * bits + 7) // 8


def _typed_values(data_type: int, elements: int) -> int:
    if data_type in _COMPLEX:
        return 2 * elements
    per_entry = _PACKED_PER_ENTRY.get(data_type, 1)
    return (elements + per_entry - 1) // per_entry


# --- where tensors and scopes are ----------------------------------------------------------------

def _stored_tensors(graph: onnx.GraphProto, scope: str) -> Iterator[tuple[TensorProto, str]]:
    """The graph's initializers (tensors in node attributes are checked by `_check_nodes`)."""
    for tensor in graph.initializer:
        yield tensor, f"{scope}initializer '{tensor.name}'"
    for sparse in graph.sparse_initializer:
        yield sparse.values, f"{scope}sparse initializer '{sparse.values.name}' values"
        yield sparse.indices, f"{scope}sparse initializer '{sparse.values.name}' indices"


def _attribute_tensors(node: onnx.NodeProto, attr: onnx.AttributeProto, scope: str):
    where = f"{scope}node '{node.name}' ({node.op_type}) attribute '{attr.name}'"
    if attr.type == AttributeProto.TENSOR:
        yield attr.t, where
    elif attr.type == AttributeProto.TENSORS:
        yield from ((t, f"{where}[{i}]") for i, t in enumerate(attr.tensors))
    elif attr.type == AttributeProto.SPARSE_TENSOR:
        yield attr.sparse_tensor.values, f"{where} values"
        yield attr.sparse_tensor.indices, f"{where} indices"


# --- text ----------------------------------------------------------------------------------------

def _check_model_text(proto: onnx.ModelProto, path: Path) -> None:
    for field in ("producer_name", "producer_version", "domain", "doc_string"):
        _text(getattr(proto, field), path, f"model {field}")
    for index, opset in enumerate(proto.opset_import):
        _text(opset.domain, path, f"opset_import #{index} domain")
    for index, prop in enumerate(proto.metadata_props):
        _text(prop.key, path, f"metadata_props #{index} key")
        _text(prop.value, path, f"metadata_props #{index} value")


def _check_graph_text(graph: onnx.GraphProto, path: Path, scope: str) -> None:
    _text(graph.name, path, f"{scope}graph name")
    _text(graph.doc_string, path, f"{scope}graph doc_string")
    for kind, values in (("input", graph.input), ("output", graph.output), ("value_info", graph.value_info)):
        for index, value in enumerate(values):
            where = f"{scope}graph {kind} #{index}"
            _text(value.name, path, f"{where} name")
            _text(value.doc_string, path, f"{where} doc_string")
            if value.type.HasField("tensor_type"):
                for dim in value.type.tensor_type.shape.dim:
                    _text(dim.dim_param, path, f"{where} dim_param")
    for index, tensor in enumerate(graph.initializer):
        _check_tensor_text(tensor, path, f"{scope}initializer #{index}")


def _check_nodes_text(nodes, path: Path, scope: str, first: int = 0) -> None:
    """Raise for the first string field of `nodes` (the first numbered `first`) that is not text."""
    for index, node in enumerate(nodes, start=first):
        where = f"{scope}node #{index}"
        for field in ("name", "op_type", "domain", "doc_string"):
            _text(getattr(node, field), path, f"{where} {field}")
        for kind in ("input", "output"):
            for slot, name in enumerate(getattr(node, kind)):
                _text(name, path, f"{where} {kind} {slot}")
        for attr in node.attribute:
            _text(attr.name, path, f"{where} attribute name")
            _text(attr.ref_attr_name, path, f"{where} attribute ref_attr_name")
            if attr.type == AttributeProto.TENSOR:
                _check_tensor_text(attr.t, path, f"{where} attribute '{attr.name}'")
        for prop in node.metadata_props:
            _text(prop.key, path, f"{where} metadata_props key")
            _text(prop.value, path, f"{where} metadata_props value")


def _check_tensor_text(tensor: TensorProto, path: Path, where: str) -> None:
    _text(tensor.name, path, f"{where} name")
    for entry in tensor.external_data:
        _text(entry.key, path, f"{where} external_data key")
        _text(entry.value, path, f"{where} external_data value")


def _text(value: object, path: Path, where: str) -> None:
    # upb returns bytes for a proto2 string field that is not valid UTF-8
    if not isinstance(value, str):
        shown = repr(value)[:60]
        raise SurgeonError(f"{path}: {where} is not valid UTF-8 text ({shown}); rename it or {_FIX}")


def _quoted(text: str) -> str:
    return "'" + text[:40].encode("unicode_escape").decode("ascii") + ("...'" if len(text) > 40 else "'")


def _check_value_types(graph: onnx.GraphProto, path: Path, scope: str) -> None:
    for kind, values in (("input", graph.input), ("output", graph.output), ("value_info", graph.value_info)):
        for value in values:
            dtype = _unknown_dtype(value.type)
            if dtype is not None:
                raise SurgeonError(f"{path}: {scope}graph {kind} '{value.name}' has element type {dtype}, which is "
                                   f"not an ONNX dtype; {_FIX}")
            if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type == TensorProto.UNDEFINED:
                raise SurgeonError(f"{path}: {scope}graph {kind} '{value.name}' is a tensor without an element type "
                                   f"(onnx.checker refuses it); {_FIX}")


def _unknown_dtype(type_proto: onnx.TypeProto) -> int | None:
    """An element type of `type_proto` (at any nesting) that ONNX does not define (0, unset, is defined)."""
    kind = type_proto.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        dtype = getattr(type_proto, kind).elem_type
        return dtype if dtype not in _DTYPES else None
    if kind in ("sequence_type", "optional_type"):
        return _unknown_dtype(getattr(type_proto, kind).elem_type)
    if kind == "map_type":
        key = type_proto.map_type.key_type
        return key if key not in _DTYPES else _unknown_dtype(type_proto.map_type.value_type)
    return None


# --- the nodes: one pass ------------------------------------------------------------------------

def _check_nodes(graph: onnx.GraphProto, path: Path, scope: str) -> list[tuple[onnx.GraphProto, str]]:
    """Text, tensors in attributes, single assignment and acyclicity of a graph's nodes; their bodies.

    One pass that reads each field once: on a 100k-node graph, protobuf field access is the cost.
    """
    bodies = []
    given = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    producer: dict[str, int] = {}
    reads: list[list[str]] = []
    later: list[str] = []  # inputs not produced by an earlier node: out of order, or from outside
    for index, node in enumerate(graph.node):
        inputs, outputs = list(node.input), list(node.output)
        try:
            "".join((node.name, node.op_type, node.domain, *inputs, *outputs))  # TypeError on bytes
        except TypeError:
            _check_nodes_text([node], path, scope, first=index)
        if node.metadata_props:
            _check_nodes_text([node], path, scope, first=index)
        for attr in node.attribute:
            if type(attr.name) is not str or type(attr.ref_attr_name) is not str:
                _check_nodes_text([node], path, scope, first=index)
            if attr.type in _NESTED:
                for tensor, what in _attribute_tensors(node, attr, scope):
                    check_tensor(tensor, path, what)
                for body in [attr.g] if attr.type == AttributeProto.GRAPH else attr.graphs:
                    inputs += _body_reads(body)  # what a body reads from outside is its node's input too
                    bodies.append((body, f"{scope}node '{node.name}' attribute '{attr.name}': "))
        later += [name for name in inputs if name not in producer and name not in given]
        for name in outputs:
            if not name:
                continue  # an omitted optional output
            if name in producer or name in given:
                first = f"node #{producer[name]}" if name in producer else "a graph input or initializer"
                raise SurgeonError(f"{path}: {scope}tensor '{name}' is produced twice ({first} and node #{index} "
                                   f"'{node.name}' ({node.op_type})); ONNX graphs assign each tensor once — {_FIX}")
            producer[name] = index
        reads.append(inputs)
    if any(name in producer for name in later):  # not in topological order: look for a cycle
        _check_acyclic(graph, reads, producer, path, scope)
    return bodies


def _check_acyclic(graph: onnx.GraphProto, reads: list[list[str]], producer: dict[str, int], path: Path,
                   scope: str) -> None:
    users: list[list[int]] = [[] for _ in reads]
    waiting = [0] * len(reads)
    for index, names in enumerate(reads):
        for source in {producer[name] for name in names if name in producer}:
            users[source].append(index)
            waiting[index] += 1
    ready = [index for index, count in enumerate(waiting) if count == 0]
    while ready:
        for user in users[ready.pop()]:
            waiting[user] -= 1
            if waiting[user] == 0:
                ready.append(user)
    stuck = next((index for index, count in enumerate(waiting) if count), None)
    if stuck is not None:
        node = graph.node[stuck]
        raise SurgeonError(f"{path}: {scope}node #{stuck} '{node.name}' ({node.op_type}) is on a cycle: its inputs "
                           f"depend on its own outputs; ONNX graphs are acyclic — {_FIX}")


def _body_reads(body: onnx.GraphProto) -> list[str]:
    """Every tensor name the nodes of a Loop/If/Scan body (and of its own bodies) read."""
    names = []
    for node in body.node:
        names += node.input
        for attr in node.attribute:
            for inner in [attr.g] if attr.type == AttributeProto.GRAPH else attr.graphs:
                names += _body_reads(inner)
    return names
