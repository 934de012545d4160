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
    """Polygraphy runner for a model with HPS_TRT nodes (see `SplitRunner`)."""

    def __init__(self, model_path: str | Path, config_path: str | Path, backend: str = "reference",
                 name: str | None = None):
        super().__init__(name=name, prefix="hps-runner")
        self.model_path, self.config_path, self.backend = Path(model_path), Path(config_path), backend
        self._split: SplitRunner | None = None
        #: node name -> the distinct keys it received, one array per inference (kept after deactivation)
        self.seen: dict[str, list[np.ndarray]] = {}

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
        for node, keys in self._split.seen.items():
            self.seen.setdefault(node, []).extend(keys)
        self._split = None
