"""Run a rewritten model: onnxruntime for the ONNX part, a lookup backend for HPS_TRT, as a
Polygraphy runner (`HpsRunner`).

onnxruntime cannot run HPS_TRT, so the graph is cut in two (`SplitRunner`): `pre` computes every
HPS_TRT node's keys, the backend looks them up (the CPU reference, or the CUDA plugin library),
and `post` takes the looked-up vectors as extra inputs.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from ..errors import SurgeonError
from ..hps.contract import HPS_OP, field_text
from ..hps.reference import ReferenceLookup
from .compare import BACKENDS

#: (model_name, table_id, keys) -> vectors of shape keys.shape + [emb_vec_size]
LookupFn = Callable[[str, int, np.ndarray], np.ndarray]


class SplitRunner:
    """Runs a model holding HPS_TRT nodes; `lookup` serves the nodes."""

    def __init__(self, model: str | Path | onnx.ModelProto, lookup: LookupFn):
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load_model(str(model))
        graph = gs.import_onnx(proto)
        self.lookup = lookup
        self.output_names = [t.name for t in graph.outputs]
        self.input_names = [t.name for t in graph.inputs]
        self.nodes = [(n.name, field_text(n.attrs["model_name"]), int(n.attrs["table_id"]), n.inputs[0].name,
                       n.outputs[0].name) for n in graph.nodes if n.op == HPS_OP]
        # Each half from a fresh import: Graph.copy() loses sequence types inside Loop bodies
        # (onnx-graphsurgeon 0.6.1), which breaks torch's EmbeddingBag exports.
        self.pre = self._session(self._pre_graph(gs.import_onnx(proto)))
        self.post = self._session(self._post_graph(gs.import_onnx(proto)))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = dict(feeds)
        if self.pre is not None:
            values.update(self._run(self.pre, values))
        for _, model_name, table_id, keys, out in self.nodes:
            values[out] = self.lookup(model_name, table_id, values[keys])
        values.update(self._run(self.post, values))
        return {name: values[name] for name in self.output_names}

    def _pre_graph(self, graph: gs.Graph) -> gs.Graph | None:
        tensors = graph.tensors()
        wanted = [tensors[keys] for _, _, _, keys, _ in self.nodes if keys not in self.input_names]
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
    def _session(graph: gs.Graph | None) -> ort.InferenceSession | None:
        if graph is None:
            return None
        options = ort.SessionOptions()
        options.log_severity_level = 3
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


class HpsRunner(BaseRunner):
    """Polygraphy runner for a model with HPS_TRT nodes (see `SplitRunner`)."""

    def __init__(self, model_path: str | Path, config_path: str | Path, backend: str = "reference",
                 name: str | None = None):
        super().__init__(name=name, prefix="hps-runner")
        self.model_path, self.config_path, self.backend = Path(model_path), Path(config_path), backend
        self._split: SplitRunner | None = None

    def activate_impl(self):
        self._split = SplitRunner(self.model_path, lookup_backend(self.config_path, self.backend))

    def get_input_metadata_impl(self):
        meta = TensorMetadata()
        model = onnx.load_model(str(self.model_path), load_external_data=False)
        for value in model.graph.input:
            tensor_type = value.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or -1) for d in tensor_type.shape.dim]
            meta.add(value.name, dtype=onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type), shape=shape)
        return meta

    def infer_impl(self, feed_dict):
        start = time.perf_counter()
        outputs = OrderedDict(self._split.run({k: np.asarray(v) for k, v in feed_dict.items()}))
        self.inference_time = time.perf_counter() - start  # Comparator sums it
        return outputs

    def deactivate_impl(self):
        self._split = None
