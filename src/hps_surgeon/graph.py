"""Facts about an onnx-graphsurgeon graph that several stages ask: dtypes, constants, scopes."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs


def subgraphs(graph: gs.Graph):
    """The bodies of Loop/If/Scan nodes, at any depth (not `graph` itself)."""
    for node in graph.nodes:
        for value in node.attrs.values():
            for sub in (value if isinstance(value, list) else [value]):
                if isinstance(sub, gs.Graph):
                    yield sub
                    yield from subgraphs(sub)


def subgraph_nodes(graph: gs.Graph):
    """Nodes inside the bodies of Loop/If/Scan nodes, at any depth (not the main graph's own)."""
    for sub in subgraphs(graph):
        yield from sub.nodes


def all_tensors(graph: gs.Graph) -> dict[str, gs.Tensor]:
    """Tensors of the graph and of every subgraph by name (ONNX names are unique across scopes)."""
    tensors = dict(graph.tensors())
    for sub in subgraphs(graph):
        tensors.update({k: v for k, v in sub.tensors().items() if k not in tensors})
    return tensors


def is_constant(tensor: gs.Tensor) -> bool:
    return isinstance(tensor, gs.Constant) or _constant_node_value(tensor) is not None


def _constant_node_value(tensor: gs.Tensor) -> gs.Constant | None:
    """The tensor a Constant node gives `tensor` through its `value` attribute (not value_float & co.)."""
    if tensor.inputs and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        return value if isinstance(value, gs.Constant) else None
    return None


def dtype_name(tensor: gs.Tensor) -> str | None:
    dtype = tensor.dtype
    if dtype is None and _constant_node_value(tensor) is not None:
        dtype = _constant_node_value(tensor).dtype
    if dtype is None:
        return None
    if isinstance(dtype, int):
        return onnx.TensorProto.DataType.Name(dtype).lower()
    name = np.dtype(dtype).name
    return "bfloat16" if name in ("bfloat16", "V2") else name


def constant_values(tensor: gs.Tensor) -> np.ndarray | None:
    if isinstance(tensor, gs.Constant):
        return tensor.values
    value = _constant_node_value(tensor)
    return value.values if value is not None else None


def attribute_value(node: gs.Node, name: str):
    """A node's attribute, or the op's default for it when the node does not set it (None if neither)."""
    if name in node.attrs:
        return node.attrs[name]
    try:
        default = onnx.defs.get_schema(node.op, domain=node.domain or "").attributes[name].default_value
    except Exception:  # an op unknown to this onnx: no default to fall back on
        return None
    return onnx.helper.get_attribute_value(default) if default.type else None


#: ops whose output depends on their input's shape only, not its values
SHAPE_ONLY_OPS = ("Shape", "Size")


def reads_input_values(tensor: gs.Tensor, graph: gs.Graph) -> bool:
    """Whether the values of any input of `graph` reach `tensor` (through Shape/Size they do not).

    False for keys made from constants and shapes alone (torch's `Range` over a sequence length for a
    position table): whatever the feed, they are the same keys. Conservative where it cannot tell: a
    tensor of another scope, or a node with a subgraph (which may read outer values), counts as reading.
    """
    inputs = {t.name for t in graph.inputs}
    stack, seen = [tensor], set()
    while stack:
        current = stack.pop()
        if current.name in seen or isinstance(current, gs.Constant):
            continue
        seen.add(current.name)
        if current.name in inputs or not current.inputs:
            return True  # a graph input, or a value from outside this scope
        for producer in current.inputs:
            if producer.op in SHAPE_ONLY_OPS:
                continue
            if any(isinstance(v, gs.Graph) or (isinstance(v, list) and any(isinstance(g, gs.Graph) for g in v))
                   for v in producer.attrs.values()):
                return True
            stack.extend(producer.inputs)
    return False
