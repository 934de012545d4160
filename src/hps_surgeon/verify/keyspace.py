"""Which values of a model's inputs are valid keys: ranges traced back from each HPS_TRT node.

A verification that draws keys from one range for a whole input (HugeCTR's own test draws
randint(0, 1), i.e. key 0 only) proves little. Here each HPS_TRT node's keys must lie in the
span of its table's stored keys; that interval is carried backwards through the glue between the
graph input and the node — Cast, Reshape, Squeeze, column picks (Gather on axis 1, Slice), offsets
(Add of a constant), hashing (Mod, Abs) — down to one interval per input column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph import constant_values
from ..hps import config as hps_config
from ..hps.contract import HPS_OP, field_text
from ..hps.tables import key_summary, table_files

#: keys reaching a table through Mod are valid for any input; draw them from this span.
HASHED_SPAN = (0, 1 << 20)
_SAME_VALUES = {"Cast", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}


@dataclass(frozen=True)
class KeyRange:
    """Keys for `input` (column `column` of its last axis, or all of it when None) lie in [low, high]."""

    input: str
    column: int | None
    low: int
    high: int


def rewritten_key_ranges(model: onnx.ModelProto, config: Path) -> list[KeyRange]:
    """Valid key ranges of a rewritten model's inputs: each table's stored key span, traced back."""
    graph = gs.import_onnx(model)
    config_data = json.loads(Path(config).read_text())
    wanted: dict[str, tuple[int, int]] = {}
    for node in graph.nodes:
        if node.op != HPS_OP:
            continue
        model_name = field_text(node.attrs["model_name"])
        entry = hps_config.model_entry(config_data, model_name)
        table_id = int(node.attrs["table_id"])
        folder = hps_config.table_folder(Path(config), entry, table_id)
        keys = key_summary(table_files(Path(config), folder, f"model '{model_name}' table {table_id}")[0])
        span = (keys.low, keys.high)
        old = wanted.get(node.inputs[0].name, span)
        wanted[node.inputs[0].name] = (max(span[0], old[0]), min(span[1], old[1]))
    return key_ranges(graph, wanted)


def key_ranges(graph: gs.Graph, wanted: dict[str, tuple[int, int]]) -> list[KeyRange]:
    """Ranges on graph inputs implied by `wanted`: tensor name -> inclusive (low, high) of valid keys."""
    tensors = graph.tensors()
    inputs = {t.name for t in graph.inputs}
    found: dict[tuple[str, int | None], tuple[int, int]] = {}
    for name, span in wanted.items():
        for key, (low, high) in _trace(tensors[name], span, None, inputs):
            old = found.get(key, (low, high))
            found[key] = (max(low, old[0]), min(high, old[1]))
    return [KeyRange(name, column, low, high) for (name, column), (low, high) in sorted(
        found.items(), key=lambda item: (item[0][0], -1 if item[0][1] is None else item[0][1]))]


def _trace(tensor: gs.Tensor, span: tuple[int, int], column: int | None, inputs: set[str]):
    if tensor.name in inputs:
        yield (tensor.name, column), span
        return
    if not tensor.inputs:
        return  # a constant: nothing to draw
    node = tensor.inputs[0]
    source = node.inputs[0] if node.inputs else None
    if source is None:
        return
    if node.op in _SAME_VALUES:
        # A reshape scatters columns: the range then holds for every column of the source.
        keep = column if node.op in ("Cast", "Identity") else None
        yield from _trace(source, span, keep, inputs)
    elif node.op == "Gather" and node.attrs.get("axis", 0) in (1, -1):
        picked = _scalar(node.inputs[1])
        yield from _trace(source, span, picked, inputs)
    elif node.op == "Slice":
        yield from _trace(source, span, _sliced_column(node), inputs)
    elif node.op == "Add":
        offset = constant_values(node.inputs[1])
        if offset is None:
            return
        offsets = np.atleast_1d(offset).astype(np.int64)
        if column is None and offsets.size > 1:
            for col, value in enumerate(offsets):
                yield from _trace(source, (span[0] - int(value), span[1] - int(value)), col, inputs)
        else:
            value = int(offsets[0] if offsets.size == 1 else offsets[column])
            yield from _trace(source, (span[0] - value, span[1] - value), column, inputs)
    elif node.op == "Mod":
        yield from _trace(source, HASHED_SPAN, column, inputs)
    elif node.op == "Abs":
        yield from _trace(source, (max(span[0], 0), span[1]), column, inputs)


def _scalar(tensor: gs.Tensor) -> int | None:
    values = constant_values(tensor)
    return int(values) if values is not None and np.ndim(values) == 0 else None


def _sliced_column(node: gs.Node) -> int | None:
    """The one column of the last axis a Slice keeps (tf2onnx's slot split), else None."""
    starts, ends = (constant_values(t) for t in node.inputs[1:3])
    axes = constant_values(node.inputs[3]) if len(node.inputs) > 3 else None
    if starts is None or ends is None:
        return None
    starts, ends = np.atleast_1d(starts), np.atleast_1d(ends)
    axes = np.arange(len(starts)) if axes is None else np.atleast_1d(axes)
    last = [i for i, axis in enumerate(axes) if axis in (1, -1)]
    if len(last) == 1 and ends[last[0]] - starts[last[0]] == 1:
        return int(starts[last[0]])
    return None


def by_input(ranges: list[KeyRange]) -> dict[str, list[KeyRange]]:
    """The ranges grouped by the input they constrain (what `draw_keys` takes for one input)."""
    grouped: dict[str, list[KeyRange]] = {}
    for r in ranges:
        grouped.setdefault(r.input, []).append(r)
    return grouped


def draw_keys(shape: tuple[int, ...], dtype: np.dtype, ranges: list[KeyRange], rng: np.random.Generator) -> np.ndarray:
    """An array of `shape` whose columns follow `ranges` (all for one input).

    Columns no range names are drawn from the whole-input range, or else from the first range.
    """
    whole = next(((r.low, r.high) for r in ranges if r.column is None), (ranges[0].low, ranges[0].high))
    values = rng.integers(whole[0], whole[1] + 1, size=shape, dtype=np.int64)
    for r in ranges:
        if r.column is not None and len(shape) >= 2 and r.column < shape[-1]:
            low, high = max(r.low, whole[0]), min(r.high, whole[1])
            if low > high:  # the whole-input range says nothing useful about this column
                low, high = r.low, r.high
            values[..., r.column] = rng.integers(low, high + 1, size=shape[:-1], dtype=np.int64)
    return values.astype(dtype)
