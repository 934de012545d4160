"""Stage 6: prove with Polygraphy that the rewritten model computes what the original computes.

Two runners go through Polygraphy's `Comparator`: its onnxruntime runner on the original model,
and `HpsRunner` on the rewritten model (HPS_TRT nodes served by a lookup backend, the rest by
onnxruntime). Inputs come from Polygraphy's `DataLoader`, with key inputs redrawn column by column
from the keys that really exist in the exported tables (`keyspace`), at batch 1 and batch B.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..errors import SurgeonError, errors
from ..hps import validate
from ..load import read_proto
from . import keyspace

#: who serves HPS_TRT lookups: the CPU reference, or the CUDA plugin library (hps.native)
BACKENDS = ("reference", "native")

@dataclass(frozen=True)
class OutputError:
    name: str
    max_abs: float
    max_rel: float


@dataclass(frozen=True)
class VerifyReport:
    passed: bool
    iterations: int  #: feeds compared (iterations x batch sizes)
    batch_sizes: tuple[int, ...]
    outputs: tuple[OutputError, ...]
    key_ranges: tuple[keyspace.KeyRange, ...]
    atol: float
    rtol: float

    @property
    def worst(self) -> OutputError | None:
        return max(self.outputs, key=lambda o: o.max_abs, default=None)


def verify(original: str | Path, rewritten: str | Path, config: str | Path, *, backend: str = "reference",
           iterations: int = 3, batch_size: int = 8, atol: float = 1e-6, rtol: float = 1e-5,
           seed: int = 1) -> VerifyReport:
    """Compare the two models on the same inputs; raise SurgeonError on unusable input."""
    original, rewritten, config = Path(original), Path(rewritten), Path(config)
    for path in (original, rewritten, config):
        if not path.is_file():
            raise SurgeonError(f"{path}: no such file")
    if iterations < 1 or batch_size < 1:
        raise SurgeonError("--iterations and --batch-size must be at least 1")
    problems = errors(validate.validate(rewritten, config))
    if problems:
        raise SurgeonError(f"{problems[0]} (and {len(problems) - 1} more)" if len(problems) > 1 else str(problems[0]))
    _check_pair(read_proto(original), original, read_proto(rewritten), rewritten)
    # Polygraphy and onnxruntime sessions are imported only when a verification runs.
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, SimpleCompareFunc

    from .runner import HpsRunner

    ranges = keyspace.rewritten_key_ranges(onnx.load_model(str(rewritten), load_external_data=False), config)
    feeds = make_feeds(original, ranges, iterations, (1, batch_size), seed)
    runners = [OnnxrtRunner(SessionFromOnnx(str(original)), name="onnxrt-original"),
               HpsRunner(rewritten, config, backend, name=f"hps-{backend}")]
    results = Comparator.run(runners, data_loader=feeds)
    compare = SimpleCompareFunc(atol=atol, rtol=rtol, infinities_compare_equal=True)
    accuracy = Comparator.compare_accuracy(results, compare_func=compare)
    outputs = _output_errors(results, runners)
    return VerifyReport(passed=bool(accuracy), iterations=len(feeds), batch_sizes=(1, batch_size),
                        outputs=outputs, key_ranges=tuple(ranges), atol=atol, rtol=rtol)


def _check_pair(original: onnx.ModelProto, original_path: Path, rewritten: onnx.ModelProto,
                rewritten_path: Path) -> None:
    """Both models are safe to load (read_proto) and take the same inputs, so one feed runs both."""
    names = {value.name for value in original.graph.input}
    missing = [value.name for value in rewritten.graph.input if value.name not in names]
    if missing:
        raise SurgeonError(f"{original_path}: has no input '{missing[0]}', which {rewritten_path} takes; pass the "
                           "model that was rewritten as ORIGINAL")


def make_feeds(model_path: Path, ranges: list[keyspace.KeyRange], iterations: int, batch_sizes: tuple[int, ...],
               seed: int) -> list[OrderedDict]:
    """Feeds from Polygraphy's DataLoader, with key inputs redrawn from their valid ranges."""
    from polygraphy.common import TensorMetadata
    from polygraphy.comparator import DataLoader

    model = onnx.load_model(str(model_path), load_external_data=False)
    rng = np.random.default_rng(seed)
    ranges_of = keyspace.by_input(ranges)
    feeds = []
    for batch in batch_sizes:
        meta = TensorMetadata()
        for value in model.graph.input:
            tensor_type = value.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else (batch if i == 0 else 1)
                     for i, d in enumerate(tensor_type.shape.dim)]
            meta.add(value.name, dtype=onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type), shape=shape)
        loader = DataLoader(seed=seed + batch, iterations=iterations, input_metadata=meta)
        for index in range(iterations):
            feed = OrderedDict(loader[index])
            for name, input_ranges in ranges_of.items():
                feed[name] = keyspace.draw_keys(feed[name].shape, feed[name].dtype, input_ranges, rng)
            feeds.append(feed)
    return feeds


def _output_errors(results, runners) -> tuple[OutputError, ...]:
    first, second = (results[r.name] for r in runners)
    worst: dict[str, OutputError] = {}
    for a, b in zip(first, second):
        for name, expected in a.items():
            expected, actual = np.asarray(expected, dtype=np.float64), np.asarray(b[name], dtype=np.float64)
            if expected.shape != actual.shape:
                worst[name] = OutputError(name, float("inf"), float("inf"))
                continue
            same = (expected == actual) | (np.isnan(expected) & np.isnan(actual))  # equal infinities too
            with np.errstate(invalid="ignore"):
                diff = np.where(same, 0.0, np.abs(expected - actual))
            max_abs = float(diff.max()) if diff.size else 0.0
            max_rel = float((diff / np.maximum(np.abs(expected), 1e-30)).max()) if diff.size else 0.0
            old = worst.get(name, OutputError(name, 0.0, 0.0))
            worst[name] = OutputError(name, max(old.max_abs, max_abs), max(old.max_rel, max_rel))
    return tuple(worst.values())
