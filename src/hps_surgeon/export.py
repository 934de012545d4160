"""Stage 5: write the artifacts — the rewritten model, the tables in HugeCTR's sparse-model format,
hps_config.json and report.json — and check them before they are moved into place.

Everything goes into a staging folder (`staging.staged_output`); the caller moves it into place
only when complete, so a failure never leaves a half-written output.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto
from tqdm import tqdm

from . import wellformed
from .errors import SurgeonError, errors
from .hps import tables as table_files
from .hps import validate
from .hps.contract import CONFIG_NAME, DEFAULT_DOMAIN, DOMAIN_VERSION, HPS_OP, MODEL_NAME
from .load import LoadedModel, external_tensors
from .plan import Plan
from .staging import copy_range, fsync

#: external data of the rewritten model smaller than this is stored inline in model.onnx.
INLINE_LIMIT = 64 << 20


def report(source: Path, plan: Plan, removed_inputs: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """report.json: the plan (`Plan.to_dict`), where its output lives, and the graph inputs it removed
    (tables listed as inputs by exports with keep_initializers_as_inputs=True; every other input stays)."""
    data = {"source_model": str(source), "model": MODEL_NAME, "config": CONFIG_NAME, **plan.to_dict(),
            "removed_graph_inputs": list(removed_inputs)}
    if removed_inputs:
        data["notes"] = [*data["notes"], f"graph input(s) {', '.join(removed_inputs)} removed: they were tables, "
                                         "now served by HPS; every other graph input is kept"]
    return data


def write_tables(loaded: LoadedModel, plan: Plan, folder: Path, quiet: bool = True) -> None:
    """One `tables/<name>/{key,emb_vector}` per table of the plan."""
    total = sum(t.nbytes + t.rows * 8 for t in plan.tables)
    show = not quiet and os.isatty(2) and total >= (256 << 20)
    with tqdm(total=total, unit="B", unit_scale=True, desc="tables", disable=not show, leave=False) as bar:
        for table in plan.tables:
            target = folder / table.folder
            if table.source_folder:
                table_files.copy_table_folder(Path(table.source_folder), target, bar.update)
            elif table.key_map:
                table_files.write_mapped_table(loaded.sources[table.tensor], loaded.sources[table.key_map],
                                               table.dim, target, bar.update)
            else:
                table_files.write_row_table(loaded.sources[table.tensor], table.rows, table.dim, target, bar.update)


def write_model(model: onnx.ModelProto, loaded: LoadedModel, folder: Path) -> Path:
    """Write `model.onnx`; external tensors still in use move to `model.onnx.data` (or inline if small)."""
    external = list(external_tensors(model.graph))
    # the references still point at the source model's files: resolved under the confinement rule
    ranges = {id(t): wellformed.external_range(t, loaded.path, f"tensor '{t.name}'") for t in external}
    inline = sum(r.length for r in ranges.values()) < INLINE_LIMIT
    data_path = folder / f"{MODEL_NAME}.data"
    with contextlib.ExitStack() as stack:
        data = None if inline or not external else stack.enter_context(open(data_path, "wb"))
        for tensor in external:
            src, offset, length = ranges[id(tensor)].file, ranges[id(tensor)].offset, ranges[id(tensor)].length
            if data is None:
                with open(src, "rb") as f:
                    tensor.raw_data = os.pread(f.fileno(), length, offset)
                del tensor.external_data[:]
                tensor.data_location = TensorProto.DEFAULT
                continue
            start = _align(data.tell())
            data.seek(start)
            copy_range(src, offset, length, data)
            _set_external(tensor, data_path.name, start, length)
        if data is not None:
            fsync(data)
    path = folder / MODEL_NAME
    onnx.save_model(model, str(path))
    return path


def check_written(model_path: Path, config_path: Path, domain: str, source: Path) -> None:
    """The written output passes onnx.checker (full_check) and our own validation, or SurgeonError.

    The source passed the checker (`check_source`): a failure here is ours, said against `source`.
    """
    _check_onnx(model_path, domain, source)
    found = errors(validate.validate(model_path, config_path))
    if found:  # named relative to the output: the staging folder is gone when this is read
        problem = str(found[0]).replace(f"{model_path.parent}/", "")
        raise SurgeonError(f"{source}: its rewrite fails validation ({problem}); nothing was written — this is a bug "
                           "in hps-surgeon, please report it with the source model")


def check_source(loaded: LoadedModel) -> None:
    """The source model passes onnx.checker (full_check), or SurgeonError blaming it: checked before
    anything is staged, so that a model ONNX itself refuses is never taken for a bug of the rewrite."""
    try:
        if loaded.path.is_file():
            onnx.checker.check_model(str(loaded.path), full_check=True)
        else:  # an in-memory model (the Python API): its proto, external data left out
            onnx.checker.check_model(loaded.proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
        raise SurgeonError(f"{loaded.path}: fails onnx.checker ({_first_line(exc)}); it is not valid ONNX, so it "
                           "cannot be rewritten — fix or re-export the model") from None


def _first_line(exc: BaseException) -> str:
    """The checker's message in one line: its first, and the next when the first ends in ':' ("of node:")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]


def _check_onnx(path: Path, domain: str, source: Path) -> None:
    target = path
    if domain == "":
        # The checker rejects unknown ops in the default domain; check a copy with the nodes moved.
        proto = onnx.load_model(str(path), load_external_data=False)
        for node in proto.graph.node:
            if node.op_type == HPS_OP:
                node.domain = DEFAULT_DOMAIN
        proto.opset_import.append(onnx.helper.make_opsetid(DEFAULT_DOMAIN, DOMAIN_VERSION))
        target = path.with_name(f".{path.name}.checked")
        onnx.save_model(proto, str(target))
    try:
        onnx.checker.check_model(str(target), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
        raise SurgeonError(f"{source}: its rewrite fails onnx.checker ({_first_line(exc)}) although the source "
                           "passes it; nothing was written — this is a bug in hps-surgeon, please report it with the "
                           "source model") from None
    finally:
        if target != path:
            target.unlink(missing_ok=True)


def _set_external(tensor: TensorProto, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _align(offset: int, alignment: int = 4096) -> int:
    # Page-aligned tensors can be memory-mapped by readers (onnx does the same with align_offset).
    return (offset + alignment - 1) // alignment * alignment
