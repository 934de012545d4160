"""Per-lookup comparison: every HPS_TRT node's vectors against the original lookup it replaced, exactly.

Model outputs can hide a wrong table: an untrained DIN's output sits near 0.507 whatever its
embeddings hold, and a saturated sigmoid or an attention that ignores a field does the same to a
trained one. So besides the outputs, each HPS_TRT node's own output is compared with the output of
the node it replaced, on the same feeds:

* `expose` marks that output as an extra output of the original model (the node named last in the
  HPS_TRT node's `hps_surgeon.replaced_nodes` provenance, rewrite.py). A lookup rewrite hoisted out
  of a Loop (torch's legacy EmbeddingBag) replaced a Gather inside the body, which no graph output
  can reach: its rows are recomputed in the main graph by the same Gather on the same table and the
  keys the body slices. Either way a Cast to float32 follows, which is exact for the fp16/bf16
  tables export widens (so comparing there is comparing at their own dtype) and is the rounding
  export applies to float64 ones.
* `HpsRunner(lookups=True)` returns each node's keys and vectors as extra outputs.
* `check` compares them bit for bit (NaN equal to NaN): the rewrite copies vectors, so anything
  else is a wrong table, and the first wrong key is named with its row in the exported table.

A node whose original cannot be exposed (no provenance, the replaced node is gone, a body table
the main graph cannot read) is compared through the model outputs only, and the report says why.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import helper

from ..hps.contract import HPS_OP, PROVENANCE_LOOKUP, PROVENANCE_REPLACED
from ..load import name_nodes_uniquely, subgraphs

#: prefixes of the extra outputs: the original's rows, and HpsRunner's keys and vectors per node
EXPECTED, KEYS, ROWS = "hps_surgeon.verify/expected/", "hps_surgeon.verify/keys/", "hps_surgeon.verify/rows/"
EXPOSED, RECOMPUTED, OUTPUTS_ONLY = "exposed", "recomputed", "outputs only"


@dataclass(frozen=True)
class LookupSource:
    """Where the original's answer for one HPS_TRT node comes from."""

    node: str  #: the HPS_TRT node
    original: str  #: the node of the original model it replaced ("" when unknown)
    how: str  #: exposed (that node's output), recomputed (same Gather in the main graph) or outputs only
    reason: str = ""  #: why outputs only


@dataclass(frozen=True)
class LookupCheck:
    """One HPS_TRT node's vectors against the original lookup's, over every feed."""

    node: str
    original: str
    how: str  #: see LookupSource
    reason: str  #: why outputs only ("" otherwise)
    compared: int  #: vector elements compared
    mismatched: int  #: of those, elements not bit-identical
    max_abs: float  #: largest absolute difference (0.0 when identical)
    key: int | None = None  #: first key whose vector differs
    row: int | None = None  #: its row in the exported table (key/emb_vector files); None: not in the table
    feed: int | None = None  #: the feed it was in
    sample: int | None = None  #: its sample (first axis of the node's keys) in that feed
    slot: int | None = None  #: its position among the sample's keys

    @property
    def exact(self) -> bool:
        return self.how != OUTPUTS_ONLY and self.mismatched == 0

    @property
    def failed(self) -> bool:
        return self.mismatched > 0

    def to_dict(self) -> dict:
        return asdict(self)


def expose(original: onnx.ModelProto, rewritten: onnx.ModelProto) -> tuple[onnx.ModelProto, tuple[LookupSource, ...]]:
    """A copy of the original with each replaced lookup's rows as an extra float32 output `EXPECTED + node`."""
    model = onnx.ModelProto()
    model.CopyFrom(original)
    graph = model.graph
    name_nodes_uniquely(graph)  # as rewrite's loader named them: provenance uses those names
    main = {n.name: n for n in graph.node if n.name}
    inner = {n.name: (scope, n) for scope in subgraphs(graph) for n in scope.node if n.name}
    constants = {t.name for t in graph.initializer}
    sources = []
    for node in (n for n in rewritten.graph.node if n.op_type == HPS_OP):
        props = {p.key: p.value for p in node.metadata_props}
        source = _source(node, props, main, inner, constants, rewritten.graph)
        if isinstance(source, str):
            sources.append(LookupSource(node.name, _anchor(props), OUTPUTS_ONLY, source))
            continue
        how, rows, extra_nodes, extra_tensors = source
        graph.node.extend(extra_nodes)
        graph.initializer.extend(extra_tensors)
        graph.node.append(helper.make_node("Cast", [rows], [EXPECTED + node.name], to=onnx.TensorProto.FLOAT,
                                           name=f"{EXPECTED}{node.name}/cast"))
        graph.output.append(helper.make_tensor_value_info(EXPECTED + node.name, onnx.TensorProto.FLOAT, None))
        sources.append(LookupSource(node.name, _anchor(props), how))
    return model, tuple(sources)


def _anchor(props: dict[str, str]) -> str:
    try:
        replaced = json.loads(props.get(PROVENANCE_REPLACED, "[]"))
    except ValueError:
        return ""
    return str(replaced[-1]) if replaced else ""


def _source(node: onnx.NodeProto, props: dict[str, str], main: dict, inner: dict, constants: set[str],
            rewritten: onnx.GraphProto):
    """(how, rows tensor, nodes to add, initializers to add), or why the original cannot be exposed."""
    anchor = _anchor(props)
    if not anchor:
        return (f"HPS_TRT node '{node.name}' carries no {PROVENANCE_REPLACED} provenance (made by another tool or "
                "an older hps-surgeon): nothing names the lookup it replaced")
    if anchor in main:
        return EXPOSED, main[anchor].output[0], [], []
    if anchor not in inner:
        return f"node '{anchor}', which HPS_TRT node '{node.name}' replaced, is not in the original model"
    scope, gather = inner[anchor]
    keys = _keys_before_glue(node, rewritten)
    producers = {out: n for n in scope.node for out in n.output}
    pick = producers.get(gather.input[1]) if gather.op_type == "Gather" and len(gather.input) > 1 else None
    if pick is None or pick.op_type != "Slice" or pick.input[0] != keys:
        return (f"node '{anchor}' ({gather.op_type}), which HPS_TRT node '{node.name}' replaced, lies inside a "
                f"subgraph and does not gather rows of a Slice of the keys '{keys}': its output cannot be exposed")
    table, added = gather.input[0], []
    if table not in constants:
        body_table = next((t for t in scope.initializer if t.name == table), None)
        if body_table is None:
            return (f"table '{table}' of node '{anchor}' is computed inside a subgraph: the original rows cannot "
                    "be recomputed in the main graph")
        added = [onnx.TensorProto()]
        added[0].CopyFrom(body_table)
        added[0].name = table = f"{EXPECTED}{node.name}/table"
    axis = [a for a in gather.attribute if a.name == "axis"]
    recompute = helper.make_node("Gather", [table, keys], [f"{EXPECTED}{node.name}/rows"],
                                 name=f"{EXPECTED}{node.name}/gather",
                                 axis=helper.get_attribute_value(axis[0]) if axis else 0)
    return RECOMPUTED, recompute.output[0], [recompute], added


def _keys_before_glue(node: onnx.NodeProto, graph: onnx.GraphProto) -> str:
    """The tensor the rewrite's Cast/Reshape glue turned into `node`'s keys: the lookup's keys in both models."""
    producers = {out: n for n in graph.node for out in n.output}
    name = node.input[0]
    while name in producers:
        glue = producers[name]
        if {p.key: p.value for p in glue.metadata_props}.get(PROVENANCE_LOOKUP) != node.name:
            break
        name = glue.input[0]
    return name


def split_results(run):
    """The IterationResults of one runner without the extra outputs, and those extras per iteration."""
    from polygraphy.comparator.struct import IterationResult

    plain, extras = [], []
    for result in run:
        kept = OrderedDict((k, v) for k, v in result.items() if not k.startswith((EXPECTED, KEYS, ROWS)))
        extras.append({k: np.asarray(v) for k, v in result.items() if k not in kept})
        plain.append(IterationResult(outputs=kept, runtime=result.runtime, runner_name=result.runner_name))
    return plain, extras


def check(sources: tuple[LookupSource, ...], expected: list[dict], actual: list[dict],
          tables: dict[str, np.ndarray]) -> tuple[LookupCheck, ...]:
    """Each node's vectors (`actual`, HpsRunner's extras per feed) against the original's (`expected`)."""
    return tuple(_check_node(s, expected, actual, tables[s.node]) if s.how != OUTPUTS_ONLY
                 else LookupCheck(s.node, s.original, s.how, s.reason, 0, 0, 0.0) for s in sources)


def _check_node(source: LookupSource, expected: list[dict], actual: list[dict], table: np.ndarray) -> LookupCheck:
    compared = mismatched = 0
    max_abs, first = 0.0, None
    for feed, (want_all, got_all) in enumerate(zip(expected, actual)):
        got, keys = got_all[ROWS + source.node], got_all[KEYS + source.node]
        dim = got.shape[-1] if got.ndim else 1
        want = np.asarray(want_all[EXPECTED + source.node], dtype=np.float32)
        if want.size != got.size:
            return LookupCheck(source.node, source.original, source.how,
                               f"the original lookup gave {want.size} elements, HPS_TRT {got.size}: the rewrite's "
                               "keys are not the lookup's", compared + got.size, compared + got.size, float("inf"),
                               feed=feed)
        want, got = want.reshape(-1, dim), np.asarray(got, dtype=np.float32).reshape(-1, dim)
        same = (want.view(np.uint32) == got.view(np.uint32)) | (np.isnan(want) & np.isnan(got))
        compared += same.size
        mismatched += int((~same).sum())
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.where(same, 0.0, np.abs(want.astype(np.float64) - got.astype(np.float64)))
        max_abs = max(max_abs, float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0)))
        wrong = np.flatnonzero(~same.all(axis=1))
        if first is None and wrong.size:
            first = (feed, int(wrong[0]), keys)
    if first is None:
        return LookupCheck(source.node, source.original, source.how, "", compared, 0, 0.0)
    feed, position, keys = first
    per_sample = int(keys.shape[-1]) if keys.ndim >= 2 else 1
    key = int(np.asarray(keys).reshape(-1)[position])
    return LookupCheck(source.node, source.original, source.how, "", compared, mismatched, max_abs, key,
                       _row(table, key), feed, position // per_sample, position % per_sample)


def _row(table: np.ndarray, key: int) -> int | None:
    at = int(np.searchsorted(table, key))
    return at if at < table.size and int(table[at]) == key else None
