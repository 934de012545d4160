"""Run a rewritten model: onnxruntime for the ONNX part, a lookup backend for HPS_TRT.

onnxruntime cannot run HPS_TRT, so the graph is cut in two (`SplitRunner`): `pre` computes every
HPS_TRT node's keys, the backend looks them up (the CPU reference, or the CUDA plugin library),
and `post` takes the looked-up vectors as extra inputs. `runner.HpsRunner` wraps it for Polygraphy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from ..errors import SurgeonError
from ..graph import reads_input_values
from ..hps.contract import HPS_OP, field_text
from ..hps.reference import ReferenceLookup

#: who serves HPS_TRT lookups: the CPU reference, or the CUDA plugin library (hps.native)
BACKENDS = ("reference", "native")
#: (model_name, table_id, keys) -> vectors of shape keys.shape + [emb_vec_size]
LookupFn = Callable[[str, int, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class LookupNode:
    """One HPS_TRT node of a model: which table it reads, and its key and output tensors."""

    name: str
    model_name: str
    table_id: int
    keys: str
    output: str


class SplitRunner:
    """Runs a model holding HPS_TRT nodes; `lookup` serves the nodes.

    `keys` runs only the part that computes the nodes' keys (what key tracing probes); `run`
    records the keys that reach each node in `seen` (what coverage reports).
    """

    def __init__(self, model: str | Path | onnx.ModelProto, lookup: LookupFn | None):
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load_model(str(model))
        graph = gs.import_onnx(proto)
        self.lookup = lookup
        self.output_names = [t.name for t in graph.outputs]
        self.input_names = [t.name for t in graph.inputs]
        self.nodes = [LookupNode(n.name, field_text(n.attrs["model_name"]), int(n.attrs["table_id"]),
                                 n.inputs[0].name, n.outputs[0].name) for n in graph.nodes if n.op == HPS_OP]
        self.seen: dict[str, list[np.ndarray]] = {node.name: [] for node in self.nodes}
        tensors = graph.tensors()
        #: nodes whose keys no graph input's values reach: every feed gives them the same keys
        self.fixed_keys = frozenset(n.name for n in self.nodes if not reads_input_values(tensors[n.keys], graph))
        #: node name -> (keys, vectors) of the last `run`, what the per-lookup comparison checks
        self.looked_up: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        # Each half from a fresh import: Graph.copy() loses sequence types inside Loop bodies
        # (onnx-graphsurgeon 0.6.1), which breaks torch's EmbeddingBag exports.
        # Key tracing runs the small key part hundreds of times: one thread, no start-up per run.
        self.pre = self._session(self._pre_graph(gs.import_onnx(proto)), threads=1)
        self.post = self._session(self._post_graph(gs.import_onnx(proto))) if lookup is not None else None

    def keys(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The keys each HPS_TRT node receives for `feeds`, by node name (raises what onnxruntime raises)."""
        values = dict(feeds)
        if self.pre is not None:
            values.update(self._run(self.pre, values))
        return {node.name: np.asarray(values[node.keys]) for node in self.nodes}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = dict(feeds)
        if self.pre is not None:
            values.update(self._run(self.pre, values))
        for node in self.nodes:
            keys = np.asarray(values[node.keys])
            self.seen[node.name].append(np.unique(keys.astype(np.int64)))
            values[node.output] = self.lookup(node.model_name, node.table_id, keys)
            self.looked_up[node.name] = (keys, values[node.output])
        values.update(self._run(self.post, values))
        return {name: values[name] for name in self.output_names}

    def _pre_graph(self, graph: gs.Graph) -> gs.Graph | None:
        tensors = graph.tensors()
        wanted = list({node.keys: tensors[node.keys] for node in self.nodes if node.keys not in self.input_names}.values())
        if not wanted:
            return None
        graph.outputs = wanted
        graph.cleanup(remove_unused_graph_inputs=True, recurse_subgraphs=False)
        if any(n.op == HPS_OP for n in graph.nodes):
            raise SurgeonError("an HPS_TRT node's keys depend on another HPS_TRT node's output; "
                               "the CPU runner supports independent lookups only")
        return graph

    def _post_graph(self, graph: gs.Graph) -> gs.Graph:
        looked_up = []
        for node in [n for n in graph.nodes if n.op == HPS_OP]:
            out = node.outputs[0]
            node.outputs.clear()
            node.inputs.clear()
            out.dtype = np.float32
            looked_up.append(out)
        graph.inputs = [*graph.inputs, *looked_up]
        graph.cleanup(remove_unused_graph_inputs=True, recurse_subgraphs=False)
        return graph

    @staticmethod
    def _session(graph: gs.Graph | None, threads: int = 0) -> ort.InferenceSession | None:
        if graph is None:
            return None
        options = ort.SessionOptions()
        options.log_severity_level = 4  # failures come back as exceptions; no second copy on stderr
        options.intra_op_num_threads = threads
        return ort.InferenceSession(gs.export_onnx(graph).SerializeToString(), options,
                                    providers=["CPUExecutionProvider"])

    @staticmethod
    def _run(session: ort.InferenceSession, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in session.get_outputs()]
        feeds = {i.name: values[i.name] for i in session.get_inputs()}
        return dict(zip(names, session.run(names, feeds)))


def lookup_backend(config_path: str | Path, backend: str) -> LookupFn:
    """The function serving HPS_TRT nodes: the CPU reference, or the CUDA plugin library."""
    if backend == "reference":
        return ReferenceLookup(config_path).lookup
    if backend == "native":
        return _native_lookup(Path(config_path))
    raise SurgeonError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")


def _native_lookup(config_path: Path) -> LookupFn:
    from ..hps import native

    native.load_library()  # fail now, with the library path tried, not in the middle of a comparison
    tables: dict[tuple[str, int], native.HpsTable] = {}

    def lookup(model_name: str, table_id: int, keys: np.ndarray) -> np.ndarray:
        if (model_name, table_id) not in tables:
            tables[model_name, table_id] = native.HpsTable.open(config_path, model_name, table_id)
        return tables[model_name, table_id].lookup_host(np.ascontiguousarray(keys))

    return lookup
