"""Stage 4: apply a `Plan` to a fresh copy of the graph (the only stage that mutates a graph).

Each lookup becomes: keys -> [Cast to the key dtype] -> [Reshape to [B, N]] -> HPS_TRT ->
[Reshape back to keys' shape + [D]] -> [Cast to the original output dtype] -> the original
output tensor, so every consumer and graph output keeps its name. Replaced nodes and unused
tables are dropped by `cleanup`. The glue uses only Cast, Reshape, Shape and Concat, all in
onnx-tensorrt's operator support list.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .errors import SurgeonError
from .graph import all_tensors, dtype_name, subgraphs
from .hps.contract import (DOMAIN_VERSION, HPS_OP, PROVENANCE_LOOKUP, PROVENANCE_PATTERN,
                           PROVENANCE_REPLACED)
from .load import LoadedModel, subgraphs as proto_subgraphs
from .plan import LookupPlan, Plan

_ONNX_TYPES = {"int32": onnx.TensorProto.INT32, "int64": onnx.TensorProto.INT64, "float32": onnx.TensorProto.FLOAT,
               "float16": onnx.TensorProto.FLOAT16, "bfloat16": onnx.TensorProto.BFLOAT16}


def rewrite_model(loaded: LoadedModel, plan: Plan) -> onnx.ModelProto:
    """The rewritten model; external-data references still point at the source model's files.

    Consumes `loaded.graph` (edited in place: a second import of a 100k-node graph costs seconds);
    `loaded.proto` and `loaded.sources` stay as they were.
    """
    graph = loaded.graph
    tensors = all_tensors(graph)
    inserted: dict[str, LookupPlan] = {}
    for lookup in plan.lookups:
        for name in _replace_lookup(graph, tensors, lookup, plan, loaded.opset):
            inserted[name] = lookup
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    model = gs.export_onnx(graph, do_type_check=True)
    _keep_initializer_inputs(loaded.proto, model)
    _copy_model_metadata(loaded.proto, model)
    if plan.options.domain and plan.lookups:
        _import_domain(model, plan.options.domain)
    _stamp_provenance(model.graph, inserted)
    return model


def _replace_lookup(graph: gs.Graph, tensors: dict[str, gs.Tensor], lookup: LookupPlan, plan: Plan,
                    opset: int) -> list[str]:
    """Insert the HPS_TRT node and its glue; the names of the nodes inserted."""
    out = tensors[lookup.output]
    if lookup.new_keys_input:  # the embedding output was an input: keys take its place
        keys = gs.Variable(lookup.keys, dtype=np.int64, shape=list(lookup.key_shape))
        graph.inputs = [keys if t is out else t for t in graph.inputs]
    else:
        keys = tensors[lookup.keys]
        _detach_from_producer(out)
    glue = _Glue(graph, lookup.node)
    batch = lookup.key_shape[0] if lookup.key_shape else 1
    flat_shape = [batch, lookup.keys_per_sample]
    flat_keys = glue.to_2d(glue.cast(keys, lookup.key_dtype), len(lookup.key_shape), flat_shape)
    hps_out = gs.Variable(f"{lookup.node}:output", dtype=np.float32,
                          shape=[batch, lookup.keys_per_sample, lookup.emb_vec_size])
    graph.nodes.append(gs.Node(
        op=HPS_OP, name=lookup.node, domain=plan.options.domain or None,
        attrs=_attributes(lookup, plan), inputs=[flat_keys], outputs=[hps_out]))
    glue.inserted.append(lookup.node)
    if lookup.out_shape is not None:
        result = glue.reshape_to(hps_out, list(lookup.out_shape))
    else:
        result = glue.from_2d(hps_out, keys, lookup.key_shape, lookup.emb_vec_size)
    if lookup.combiner:
        result = glue.reduce_last_key_axis(result, lookup.combiner, opset)
    result = glue.cast(result, lookup.output_dtype)
    if lookup.hoist:
        pick = _pick_inside_loop(graph, lookup.hoist, result, out)
        glue.inserted.append(pick.name)
        glue.ops.add(pick.op)
    else:
        glue.deliver(result, out)
    undeclared = sorted(glue.ops - set(lookup.glue_ops))
    if undeclared:
        raise SurgeonError(f"node '{lookup.replaced_nodes[-1]}': its rewrite needs {', '.join(undeclared)} around "
                           f"HPS_TRT, which pattern '{lookup.pattern}' does not allow (rewrite.glue_ops: "
                           f"{', '.join(lookup.glue_ops)}); add it to the pattern's glue_ops or fix the pattern")
    return glue.inserted


def _pick_inside_loop(graph: gs.Graph, pick_name: str, rows: gs.Tensor, out: gs.Tensor) -> gs.Node:
    """Re-apply the body's key selection (an axis-0 Slice) to the rows looked up in the main graph.

    Selecting keys then looking them up equals looking all keys up then selecting rows, because
    the lookup maps each key to one row in the same position along axis 0.
    """
    body, pick = _owner_of(graph, pick_name)
    body.nodes.append(gs.Node(op=pick.op, name=f"{pick.name}/rows", attrs=dict(pick.attrs),
                              inputs=[rows, *pick.inputs[1:]], outputs=[out]))
    return body.nodes[-1]


def _owner_of(graph: gs.Graph, node_name: str) -> tuple[gs.Graph, gs.Node]:
    for scope in (graph, *subgraphs(graph)):
        for node in scope.nodes:
            if node.name == node_name:
                return scope, node
    raise KeyError(node_name)


def _attributes(lookup: LookupPlan, plan: Plan) -> dict[str, Any]:
    end = "\0" if plan.options.nul_strings else ""
    model_name = plan.options.model_name
    return {"ps_config_file": plan.options.ps_config_file + end, "model_name": model_name + end,
            "table_id": lookup.table_id, "emb_vec_size": lookup.emb_vec_size}


def _detach_from_producer(tensor: gs.Tensor) -> None:
    # Swap in a placeholder rather than removing the slot: removing would shift the producer's
    # other outputs to different positions.
    for producer in list(tensor.inputs):
        slot = producer.outputs.index(tensor)
        producer.outputs[slot] = gs.Variable(f"{tensor.name}:replaced")


class _Glue:
    """Builds the small ONNX glue around one HPS_TRT node, named after it."""

    def __init__(self, graph: gs.Graph, prefix: str):
        self.graph, self.prefix = graph, prefix
        self.inserted: list[str] = []  #: names of the nodes added, for provenance
        self.ops: set[str] = set()  #: glue ops used, checked against the pattern's glue_ops

    def _node(self, op: str, inputs: list[gs.Tensor], dtype: Any, shape: Any, **attrs: Any) -> gs.Variable:
        out = gs.Variable(f"{self.prefix}/{op.lower()}{len(self.graph.nodes)}", dtype=dtype, shape=shape)
        self.graph.nodes.append(gs.Node(op=op, name=f"{out.name}_node", attrs=attrs, inputs=inputs,
                                        outputs=[out]))
        self.inserted.append(self.graph.nodes[-1].name)
        self.ops.add(op)
        return out

    def _const(self, name: str, values: list[int]) -> gs.Constant:
        return gs.Constant(f"{self.prefix}/{name}{len(self.graph.nodes)}", np.asarray(values, dtype=np.int64))

    def cast(self, tensor: gs.Tensor, dtype: str) -> gs.Tensor:
        if dtype_name(tensor) == dtype:
            return tensor
        # onnx's enum, not numpy's dtype: numpy has no bfloat16
        return self._node("Cast", [tensor], _ONNX_TYPES[dtype], tensor.shape, to=_ONNX_TYPES[dtype])

    def to_2d(self, keys: gs.Tensor, rank: int, shape: list[Any]) -> gs.Tensor:
        if rank == 2:
            return keys
        # [0, -1]: 0 copies the batch dim (allowzero=0), -1 flattens the rest into N.
        target = [0, -1] if rank > 2 else ([-1, 1] if rank == 1 else [1, 1])
        return self._node("Reshape", [keys, self._const("keys_shape", target)], keys.dtype, shape)

    def from_2d(self, emb: gs.Variable, keys: gs.Tensor, key_shape: tuple[Any, ...], dim: int) -> gs.Tensor:
        rank = len(key_shape)
        if rank == 2:
            return emb
        out_shape = [*key_shape, dim]
        if all(isinstance(d, int) for d in key_shape[1:]):
            target = self._const("out_shape", [0, *key_shape[1:], dim] if rank else [dim])
        else:
            key_dims = self._node("Shape", [keys], np.int64, [rank])
            target = self._node("Concat", [key_dims, self._const("dim", [dim])], np.int64, [rank + 1], axis=0)
        return self._node("Reshape", [emb, target], np.float32, out_shape)

    def reduce_last_key_axis(self, emb: gs.Tensor, combiner: str, opset: int) -> gs.Tensor:
        """Sum or mean over the keys' last axis ([B, slots, nnz, D] -> [B, slots, D])."""
        op = "ReduceSum" if combiner == "sum" else "ReduceMean"
        shape = list(emb.shape[:-2]) + [emb.shape[-1]] if emb.shape else None
        # Axes moved from attribute to input: ReduceSum in opset 13, ReduceMean in opset 18.
        if opset >= (13 if op == "ReduceSum" else 18):
            return self._node(op, [emb, self._const("axes", [-2])], np.float32, shape, keepdims=0)
        return self._node(op, [emb], np.float32, shape, keepdims=0, axes=[-2])

    def reshape_to(self, emb: gs.Variable, shape: list[int]) -> gs.Tensor:
        if shape[0] == -1 and shape[1:] == list(emb.shape[1:]):  # already [B, N, D]
            return emb
        return self._node("Reshape", [emb, self._const("out_shape", shape)], np.float32, None)

    def deliver(self, result: gs.Tensor, out: gs.Tensor) -> None:
        """Make `out` itself the last glue output so consumers and graph outputs keep their tensor."""
        producer = result.inputs[0]
        producer.outputs[producer.outputs.index(result)] = out
        if out.dtype is None:
            out.dtype = result.dtype
        if out.shape is None:  # shape inference cannot see through a plugin: declare it
            out.shape = result.shape


def _stamp_provenance(graph: onnx.GraphProto, inserted: dict[str, LookupPlan]) -> None:
    """metadata_props on every inserted node: which pattern, which nodes it replaced, which HPS_TRT it serves.

    Node metadata survives tools that copy the model (deploy, onnx.save); onnxscript's rewriter
    tags what it inserts the same way.
    """
    for scope in (graph, *proto_subgraphs(graph)):
        for node in scope.node:
            lookup = inserted.get(node.name)
            if lookup is None:
                continue
            for key, value in ((PROVENANCE_PATTERN, lookup.pattern),
                               (PROVENANCE_REPLACED, json.dumps(list(lookup.replaced_nodes))),
                               (PROVENANCE_LOOKUP, lookup.node)):
                entry = node.metadata_props.add()
                entry.key, entry.value = key, value


def _keep_initializer_inputs(source: onnx.ModelProto, model: onnx.ModelProto) -> None:
    """Put back the graph inputs that have an initializer, unless the initializer went (a table now in HPS).

    Exports with keep_initializers_as_inputs=True list every weight as a graph input as well;
    onnx-graphsurgeon's import drops such inputs, and with them the names users may feed.
    """
    initializers = {t.name for t in model.graph.initializer}
    present = {value.name: value for value in model.graph.input}
    inputs = []
    for value in source.graph.input:
        if value.name in present:
            inputs.append(present.pop(value.name))
        elif value.name in initializers:
            inputs.append(onnx.ValueInfoProto())
            inputs[-1].CopyFrom(value)
    inputs.extend(present.values())  # inputs the rewrite created (keys of a HugeCTR sparse model)
    del model.graph.input[:]
    model.graph.input.extend(inputs)


def removed_table_inputs(source: onnx.ModelProto, plan: Plan) -> list[str]:
    """Graph inputs of the source that are tables the rewrite takes out of the model."""
    gone = {t.tensor for t in plan.tables if not t.kept_in_model}
    return [value.name for value in source.graph.input if value.name in gone]


def _copy_model_metadata(source: onnx.ModelProto, target: onnx.ModelProto) -> None:
    target.ir_version = source.ir_version
    target.producer_name, target.producer_version = source.producer_name, source.producer_version
    target.domain, target.model_version, target.doc_string = source.domain, source.model_version, source.doc_string
    del target.opset_import[:]
    target.opset_import.extend(source.opset_import)
    del target.metadata_props[:]
    target.metadata_props.extend(source.metadata_props)
    del target.functions[:]
    target.functions.extend(source.functions)


def _import_domain(model: onnx.ModelProto, domain: str) -> None:
    if not any(o.domain == domain for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(domain, DOMAIN_VERSION))
