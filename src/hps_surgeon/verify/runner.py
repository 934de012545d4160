"""`HpsRunner`: a rewritten model as a Polygraphy runner (`SplitRunner` under Polygraphy's BaseRunner API)."""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
from polygraphy.backend.base import BaseRunner
from polygraphy.backend.onnxrt import OnnxrtRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType

from .lookups import KEYS, ROWS
from .split import BACKENDS, LookupFn, LookupNode, SplitRunner, lookup_backend

__all__ = ["BACKENDS", "HpsRunner", "OriginalRunner", "LookupFn", "LookupNode", "SplitRunner", "lookup_backend"]


class OriginalRunner(OnnxrtRunner):
    """Polygraphy's onnxruntime runner, taking string inputs as object arrays.

    Polygraphy describes an onnxruntime string input as DataType.STRING (numpy `<U0`), which no array
    of actual strings matches, so its input check refuses every string feed (Keras StringLookup
    models). Object arrays are what onnxruntime takes and what HpsRunner describes.
    """

    def get_input_metadata(self, use_numpy_dtypes=None):
        meta = TensorMetadata()
        for name, info in super().get_input_metadata(use_numpy_dtypes).items():
            text = info.dtype == DataType.STRING or getattr(info.dtype, "kind", "") == "U"
            meta.add(name, dtype=np.dtype(object) if text else info.dtype, shape=info.shape)
        return meta


class HpsRunner(BaseRunner):
    """Polygraphy runner for a model with HPS_TRT nodes (see `SplitRunner`).

    Records the keys reaching each node (`seen`). With `min_distinct_keys`, it also reports them when
    deactivated (inside `polygraphy run`) and fails the run as INCONCLUSIVE when a table saw fewer
    distinct existing keys than its floor. With `lookups`, every inference also returns each node's
    keys and vectors (`lookups.KEYS`/`lookups.ROWS` + node name), for the per-lookup comparison.
    """

    def __init__(self, model_path: str | Path, config_path: str | Path, backend: str = "reference",
                 name: str | None = None, min_distinct_keys: int | None = None, lookups: bool = False):
        super().__init__(name=name, prefix="hps-runner")
        self.model_path, self.config_path, self.backend = Path(model_path), Path(config_path), backend
        self.min_distinct_keys = min_distinct_keys
        self.lookups = lookups
        self._split: SplitRunner | None = None
        #: node name -> the distinct keys it received, one array per inference (kept after deactivation)
        self.seen: dict[str, list[np.ndarray]] = {}

    def activate_impl(self):
        self._split = SplitRunner(self.model_path, lookup_backend(self.config_path, self.backend))

    def get_input_metadata_impl(self):
        meta = TensorMetadata()
        model = onnx.load_model(str(self.model_path), load_external_data=False)
        initializers = {t.name for t in model.graph.initializer}
        for value in model.graph.input:
            if value.name in initializers:
                continue
            tensor_type = value.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or -1) for d in tensor_type.shape.dim]
            meta.add(value.name, dtype=onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type), shape=shape)
        return meta

    def infer_impl(self, feed_dict):
        start = time.perf_counter()
        outputs = OrderedDict(self._split.run({k: np.asarray(v) for k, v in feed_dict.items()}))
        self.inference_time = time.perf_counter() - start  # Comparator sums it
        if self.lookups:
            for node, (keys, vectors) in self._split.looked_up.items():
                outputs[KEYS + node], outputs[ROWS + node] = keys, vectors
        return outputs

    def deactivate_impl(self):
        split, self._split = self._split, None
        for node, keys in split.seen.items():
            self.seen.setdefault(node, []).extend(keys)
        if self.min_distinct_keys is not None:
            self._report_coverage(split)

    def _report_coverage(self, split: SplitRunner) -> None:
        from polygraphy.logger import G_LOGGER

        from . import coverage, feeds

        nodes, tables = coverage.measure(split.nodes, self.seen, feeds.node_tables(split, self.config_path),
                                         self.config_path, self.min_distinct_keys)
        for c in nodes:
            G_LOGGER.info(f"{self.name:35} | keys at {c.node} (table {c.table}): {c.distinct} distinct, {c.existing} "
                          f"of {c.rows} rows ({100 * c.fraction:.1f}%), {c.missing} not in the table")
        short = [t for t in tables if not t.enough]
        if short:
            G_LOGGER.critical(
                f"INCONCLUSIVE: table '{short[0].table}' saw {short[0].existing} distinct existing key(s) of "
                f"{short[0].rows}, below the floor of {short[0].floor} (--hps-min-distinct-keys); a comparison on "
                "so few keys proves little. Drop --val-range/--input-shapes to draw keys from the tables, or "
                "load more samples")
