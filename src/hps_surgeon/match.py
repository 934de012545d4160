"""Stage 2: find pattern matches in a graph, and say why near misses failed.

Why our own matcher and not `onnx_graphsurgeon.GraphPattern`: patterns need optional nodes (an
absent Cast means its readers read the keys), constants that are Constant nodes as well as
initializers, and a reason for every failure; GraphPattern has none of these (STYLE.md 2.3).
The matcher walks backwards from the anchor (the node producing the rewritten output); each
tensor has one producer, so a variant (a choice of which optional nodes are present) matches at
most one way, and variants are tried most-absorbing first.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import expr
from .graph import attribute_value, dtype_name, is_constant, subgraph_nodes
from .spec import NodeSpec, PatternSpec, Ref, TensorSpec


@dataclass(frozen=True)
class Match:
    """A rewritable lookup: which pattern, which graph nodes, and the tensors the rewrite uses."""

    pattern: str
    anchor: str  #: graph node producing `out`
    variant: tuple[str, ...]  #: optional pattern nodes that were present
    nodes: tuple[str, ...]  #: graph node names matched, anchor last
    keys: str  #: tensor the HPS_TRT node reads
    table: str  #: constant tensor exported as the table
    out: str  #: tensor the HPS_TRT node (plus glue) produces
    out_shape: tuple[int, ...] | None = None  #: static reshape target for `out`; None = keys' shape + [D]
    hoist: str | None = None  #: loop-body node re-applied to the rows looked up in the main graph
    key_map: str | None = None  #: constant mapping keys to table rows, folded into the exported table
    size: int = 0  #: number of matched nodes (larger wins on overlap)
    priority: int = 0
    anchor_op: str = ""
    glue_ops: tuple[str, ...] = ()  #: ops the pattern lets the rewrite add around HPS_TRT


@dataclass(frozen=True)
class NearMiss:
    """A lookup that is not rewritten, and why."""

    pattern: str
    node: str
    op: str
    reason: str
    refused: bool = False  #: matched, then refused by a `refuse` rule (not a structural failure)
    table: str = ""  #: the table tensor, when known


@dataclass(frozen=True)
class MatchResult:
    matches: tuple[Match, ...]
    near_misses: tuple[NearMiss, ...]


class _Fail(Exception):
    def __init__(self, reason: str, progress: int):
        super().__init__(reason)
        self.reason, self.progress = reason, progress


@dataclass
class _Binder:
    """Binds one pattern variant at one anchor; raises _Fail with a reason and how far it got."""

    spec: PatternSpec
    present: frozenset[str]
    tensors: dict[str, gs.Tensor] = field(default_factory=dict)
    nodes: dict[str, gs.Node] = field(default_factory=dict)
    progress: int = 0

    def fail(self, reason: str, why: str = "") -> None:
        raise _Fail(f"{reason}; {why}" if why else reason, self.progress)

    def match_ref(self, ref: Ref, tensor: gs.Tensor) -> None:
        if ref.name in self.spec.tensors:
            self.bind_tensor(self.spec.tensors[ref.name], tensor)
        elif ref.name not in self.present:
            # Absent optional node: its readers read its first input directly.
            self.match_ref(self.spec.nodes[ref.name].inputs[0], tensor)
        else:
            self.match_node(self.spec.nodes[ref.name], ref.index, tensor)

    def match_node(self, node_spec: NodeSpec, index: int, tensor: gs.Tensor) -> None:
        producer = tensor.inputs[0] if tensor.inputs else None
        if producer is None or producer.op != node_spec.op:
            found = f"{producer.op} '{producer.name}'" if producer else _origin(tensor)
            self.fail(f"tensor '{tensor.name}' comes from {found}, not {node_spec.op}", node_spec.why)
        if len(producer.outputs) <= index or producer.outputs[index] is not tensor:
            self.fail(f"tensor '{tensor.name}' is not output {index} of {producer.op} '{producer.name}'")
        bound = self.nodes.get(node_spec.name)
        if bound is not None:
            if bound is not producer:
                self.fail(f"pattern node '{node_spec.name}' would be both '{bound.name}' and '{producer.name}'")
            return
        for attr, allowed in node_spec.attrs.items():
            actual = attribute_value(producer, attr)
            if not any(_attr_equal(actual, want) for want in allowed):
                wanted = " or ".join(str(v) for v in allowed)
                where = "" if node_spec.name == self.spec.anchor else f"node '{producer.name}' ({producer.op}): "
                self.fail(f"{where}{attr}={_show(attr, actual)}, pattern needs {wanted}", node_spec.why)
            self.progress += 1
        self.nodes[node_spec.name] = producer
        self.progress += 1
        if len(producer.inputs) > len(node_spec.inputs):
            self.fail(f"node '{producer.name}' ({producer.op}) has {len(producer.inputs)} inputs, the pattern "
                      f"expects {len(node_spec.inputs)}")
        for slot, ref in enumerate(node_spec.inputs):
            if slot >= len(producer.inputs) or producer.inputs[slot].name == "":
                self.fail(f"node '{producer.name}' ({producer.op}) has no input {slot}")
            self.match_ref(ref, producer.inputs[slot])

    def bind_tensor(self, tspec: TensorSpec, tensor: gs.Tensor) -> None:
        bound = self.tensors.get(tspec.name)
        if bound is not None:
            if bound is not tensor:
                self.fail(f"'{tspec.name}' would be both '{bound.name}' and '{tensor.name}'")
            return
        if tspec.constant and not is_constant(tensor):
            self.fail(f"'{tensor.name}' is {_origin(tensor)}, not a constant (initializer or Constant node)",
                      tspec.why)
        self.progress += 1
        dtype = dtype_name(tensor)
        if tspec.dtypes and dtype is not None and dtype not in tspec.dtypes:
            self.fail(f"'{tensor.name}' has dtype {dtype}, pattern needs {' or '.join(tspec.dtypes)}", tspec.why)
        self.progress += 1
        rank = len(tensor.shape) if tensor.shape is not None else None
        if tspec.ranks and rank is not None and rank not in tspec.ranks:
            wanted = " or ".join(str(r) for r in tspec.ranks)
            self.fail(f"'{tensor.name}' has rank {rank}, pattern needs {wanted}", tspec.why)
        self.progress += 1
        self.tensors[tspec.name] = tensor

    def value_of(self, name: str) -> Any:
        if name in self.tensors:
            return self.tensors[name]
        if name in self.nodes:
            return self.nodes[name]
        if name in self.spec.outputs:
            ref = self.spec.outputs[name]
            return self.nodes[ref.name].outputs[ref.index]
        if name in self.spec.nodes:  # an absent optional node stands for its first input
            return self.value_of(self.spec.nodes[name].inputs[0].name)
        return None


def find_matches(graph: gs.Graph, specs: list[PatternSpec], options: dict[str, Any] | None = None,
                 explain: bool = False, tables: Mapping[str, Any] | None = None) -> MatchResult:
    """Every match of every pattern at every node, and the best near miss of every node that looks
    like a lookup (the pattern's `candidate`; every node of the anchor's op with `explain`).

    Matches may overlap and near misses may name nodes another pattern matched: `plan.resolve`
    decides what is rewritten.
    """
    # What expressions see: option("...") values, and the constants' bytes for row predicates.
    options = {"options": dict(options or {}), "tables": tables or {}}
    found: list[Match] = []
    misses: dict[str, list[NearMiss | tuple[int, NearMiss]]] = {}
    top_level = set(graph.tensors())
    varies = _VariesWithInputs()
    for spec in specs:
        anchor_op = spec.nodes[spec.anchor].op
        # HPS_TRT lives in the main graph: a lookup inside a loop body is rewritten only by
        # hoisting it out (patterns with rewrite.hoist), never as one plugin call per iteration.
        nodes = subgraph_nodes(graph) if spec.hoist else graph.nodes
        for node in nodes:
            if node.op != anchor_op:
                continue
            outcome = _match_at(spec, node, options, explain, top_level, varies)
            if isinstance(outcome, Match):
                found.append(outcome)
            elif outcome is not None:
                misses.setdefault(node.name, []).append(outcome)
    near = [max(candidates, key=lambda c: c[0])[1] for candidates in misses.values()]
    return MatchResult(tuple(sorted(found, key=lambda m: (m.anchor, m.pattern))),
                       tuple(sorted(near, key=lambda n: n.node)))


def _match_at(spec: PatternSpec, node: gs.Node, options: dict, explain: bool, top_level: set[str],
              varies: _VariesWithInputs) -> Match | tuple[int, NearMiss] | None:
    out_ref = spec.outputs[spec.out]
    if len(node.outputs) <= out_ref.index:
        return None
    best: _Fail | None = None
    for present in _variants(spec):
        binder = _Binder(spec, present)
        try:
            binder.match_node(spec.nodes[spec.anchor], out_ref.index, node.outputs[out_ref.index])
            _check_where(spec, binder, options)
            if spec.hoist and binder.tensors[spec.keys].name not in top_level:
                binder.fail(f"keys '{binder.tensors[spec.keys].name}' are computed inside the loop body, so the "
                            "lookup cannot be hoisted into the main graph")
        except _Fail as failure:
            # Ties go to the less-absorbing variant: its failure names the slot itself.
            if best is None or failure.progress >= best.progress:
                best = failure
            continue
        refusal = _refusal(spec, binder, options)
        table = binder.tensors[spec.table].name
        if refusal:
            return (1 << 30, NearMiss(spec.id, node.name, node.op, refusal, refused=True, table=table))
        nodes = [binder.nodes[n].name for n in spec.nodes if n in binder.nodes and n != spec.anchor]
        out_shape = None
        if spec.out_shape is not None:
            out_shape = expr.evaluate(spec.out_shape, binder.value_of, expr.functions(options))
            if not isinstance(out_shape, list) or not all(isinstance(d, int) for d in out_shape):
                best = _Fail(f"rewrite.out_shape is {out_shape}, not a static shape", binder.progress)
                continue
        return Match(pattern=spec.id, anchor=node.name, variant=tuple(sorted(present & set(spec.optional_nodes))),
                     hoist=binder.nodes[spec.hoist].name if spec.hoist else None,
                     key_map=binder.tensors[spec.key_map].name if spec.key_map else None,
                     nodes=(*nodes, node.name), keys=binder.tensors[spec.keys].name, table=table,
                     out=binder.value_of(spec.out).name, out_shape=tuple(out_shape) if out_shape else None,
                     size=len(binder.nodes), priority=spec.priority, anchor_op=node.op, glue_ops=spec.glue_ops)
    if best is None or not (explain or _is_candidate(spec, node, varies)):
        return None
    reason = f"node '{node.name}' ({node.op}): {best.reason}; not rewritten"
    return (best.progress, NearMiss(spec.id, node.name, node.op, reason))


def _variants(spec: PatternSpec):
    optional = spec.optional_nodes
    required = frozenset(n for n in spec.nodes if n not in optional)
    for size in range(len(optional), -1, -1):
        for chosen in itertools.combinations(optional, size):
            yield required | frozenset(chosen)


def _check_where(spec: PatternSpec, binder: _Binder, options: dict) -> None:
    for text, tree in spec.where:
        if expr.evaluate(tree, binder.value_of, expr.functions(options)) is False:
            binder.fail(f"condition '{text}' does not hold")


def _refusal(spec: PatternSpec, binder: _Binder, options: dict) -> str:
    functions = expr.functions(options)
    for rule in spec.refusals:
        if expr.evaluate(rule.condition, binder.value_of, functions) is True:
            text = expr.format_message(rule.reason, binder.value_of, functions, expr.render)
            return f"node '{binder.nodes[spec.anchor].name}' ({binder.nodes[spec.anchor].op}): {text}"
    return ""


def _is_candidate(spec: PatternSpec, node: gs.Node, varies: _VariesWithInputs) -> bool:
    """Whether `node` looks like a lookup: its slot leading to the candidate input has that rank."""
    if spec.candidate is None:
        return False
    name, rank, dtypes, varying = spec.candidate
    slot = _slot_leading_to(spec, spec.nodes[spec.anchor], name)
    if slot is None or slot >= len(node.inputs):
        return False
    if varying is not None:
        key_slot = _slot_leading_to(spec, spec.nodes[spec.anchor], varying)
        if key_slot is None or key_slot >= len(node.inputs) or not varies(node.inputs[key_slot]):
            return False
    tensor = node.inputs[slot]
    while tensor.shape is None and tensor.inputs and tensor.inputs[0].op == "Identity":
        tensor = tensor.inputs[0].inputs[0]
    dtype = dtype_name(tensor)
    return (tensor.shape is not None and len(tensor.shape) == rank
            and (not dtypes or dtype is None or dtype in dtypes) and _could_be_table(tensor, varies))


def _could_be_table(tensor: gs.Tensor, varies: _VariesWithInputs) -> bool:
    """Whether a lookup's data could be a table: fixed rows, or values that do not depend on the inputs.

    Gathers over rows already looked up (tf's embedding_lookup_sparse re-expands its unique rows)
    or over a Concat of them have a row count that follows the data; reporting them as lookups
    that could not be rewritten reads as missed lookups.
    """
    rows = tensor.shape[0] if tensor.shape else None
    return is_constant(tensor) or not tensor.inputs or isinstance(rows, int) or not varies(tensor)


class _VariesWithInputs:
    """Whether a tensor's values depend on graph input values (not only on shapes and constants).

    Index arithmetic on shapes (an exporter's Shape -> Gather -> Mul -> Add) selects fixed
    positions, it does not look keys up; such Gathers are not reported as lookups. Answers are
    remembered for every tensor on the way, so one `find_matches` walks each tensor once: a chain
    of 10,000 key maps costs 10,000 steps, not 10,000 walks of up to 10,000.
    """

    def __init__(self) -> None:
        self._known: dict[int, bool] = {}

    def __call__(self, tensor: gs.Tensor) -> bool:
        known = self._known
        stack = [(tensor, False)]
        while stack:
            current, expanded = stack.pop()
            if id(current) in known:
                continue
            producer = current.inputs[0] if current.inputs else None
            if producer is None:
                known[id(current)] = not isinstance(current, gs.Constant)  # a graph input varies
            elif producer.op in ("Shape", "Size", "Constant"):
                known[id(current)] = False
            elif expanded:
                known[id(current)] = any(known.get(id(t), False) for t in producer.inputs)
            else:
                stack.append((current, True))
                stack.extend((t, False) for t in producer.inputs if id(t) not in known)
        return known[id(tensor)]


def _slot_leading_to(spec: PatternSpec, node_spec: NodeSpec, name: str) -> int | None:
    for slot, ref in enumerate(node_spec.inputs):
        current = ref
        while current.name in spec.nodes:
            current = spec.nodes[current.name].inputs[0]
        if current.name == name:
            return slot
    return None


def _origin(tensor: gs.Tensor) -> str:
    if tensor.inputs:
        return f"produced by {tensor.inputs[0].op} '{tensor.inputs[0].name}'"
    return "a graph input" if not isinstance(tensor, gs.Constant) else "a constant"


def _attr_equal(actual: Any, wanted: Any) -> bool:
    # Dtype-valued attributes (Cast's `to`) may be written by name in pattern files.
    if isinstance(wanted, str) and isinstance(actual, int):
        return actual in onnx.TensorProto.DataType.values() and onnx.TensorProto.DataType.Name(actual).lower() == wanted
    if isinstance(actual, (list, tuple, np.ndarray)):
        return list(np.asarray(actual).tolist()) == list(wanted if isinstance(wanted, (list, tuple)) else [wanted])
    return actual == wanted


def _show(attr: str, value: Any) -> str:
    if attr == "to" and isinstance(value, int) and value in onnx.TensorProto.DataType.values():
        return f"{value} ({onnx.TensorProto.DataType.Name(value).lower()})"
    return str(value)
