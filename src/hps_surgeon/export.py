"""Stage 5: write the artifacts — tables in HugeCTR's sparse-model format, hps_config.json, the model.

Everything goes into a staging folder beside the destination and is moved into place only when
complete (`staged_output`), so a failure never leaves a half-written output. Table bytes are
streamed: float32 tables stored externally are copied file-to-file by the kernel
(`os.copy_file_range`), others in bounded chunks, so memory stays flat whatever the table size.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto
from tqdm import tqdm

from .errors import SurgeonError
from .load import LoadedModel, TensorSource, subgraphs
from .plan import Plan, TablePlan, mapped_keys

CONFIG_NAME = "hps_config.json"
MODEL_NAME = "model.onnx"
REPORT_NAME = "report.json"
_CHUNK_BYTES = 64 << 20
#: external data of the rewritten model smaller than this is stored inline in model.onnx.
INLINE_LIMIT = 64 << 20


@contextlib.contextmanager
def staged_output(out_dir: Path, force: bool) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces `out_dir`, on error it is removed."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SurgeonError(f"{out_dir}: exists and is not a folder; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise SurgeonError(f"{out_dir}: folder is not empty; pass --force to replace it or choose another --out")
    stage = make_stage(out_dir, "tmp", f"{out_dir}: cannot write there ({{reason}}); choose a writable --out")
    try:
        yield stage
        _replace(out_dir, stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def make_stage(target: Path, kind: str, error: str) -> Path:
    """An empty folder beside `target` (same filesystem, so the final move is a rename).

    `error` is the message raised when that is impossible; `{reason}` stands for the OS's reason.
    """
    parent = target.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.{kind}-", dir=parent))
    except OSError as exc:
        raise SurgeonError(error.format(reason=exc.strerror)) from None
    stage.chmod(0o755)  # mkdtemp makes 0700; a server reading the output may run as another user
    return stage


def _replace(out_dir: Path, stage: Path) -> None:
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=stage.parent))
        os.rename(out_dir, old / "content")
    os.rename(stage, out_dir)
    _fsync_dir(out_dir.absolute().parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_tables(loaded: LoadedModel, plan: Plan, folder: Path, quiet: bool = True) -> None:
    """One `tables/<name>/{key,emb_vector}` per table: int64 keys 0..rows-1, float32 rows in order."""
    total = sum(t.nbytes + t.rows * 8 for t in plan.tables)
    show = not quiet and os.isatty(2) and total >= (256 << 20)
    with tqdm(total=total, unit="B", unit_scale=True, desc="tables", disable=not show, leave=False) as bar:
        for table in plan.tables:
            if table.source_folder:
                _copy_folder(Path(table.source_folder), folder / table.folder, bar)
            elif table.key_map:
                _write_mapped_table(loaded.sources[table.tensor], loaded.sources[table.key_map], table,
                                    folder / table.folder, bar)
            else:
                _write_table(loaded.sources[table.tensor], table, folder / table.folder, bar)


def _write_table(source: TensorSource, table: TablePlan, folder: Path, bar: tqdm) -> None:
    folder.mkdir(parents=True)
    with open(folder / "key", "wb") as out:
        step = _CHUNK_BYTES // 8
        for start in range(0, table.rows, step):
            np.arange(start, min(start + step, table.rows), dtype="<i8").tofile(out)
            bar.update(min(step, table.rows - start) * 8)
        _fsync(out)
    with open(folder / "emb_vector", "wb") as out:
        if source.file is not None and source.data_type == TensorProto.FLOAT:
            _copy_range(source.file, source.offset, table.nbytes, out, bar.update)
        else:
            step = max(1, _CHUNK_BYTES // (table.dim * 4))
            for start in range(0, table.rows, step):
                rows = source.read_rows(start, min(start + step, table.rows))
                rows.astype("<f4", copy=False).tofile(out)
                bar.update(rows.nbytes)
        _fsync(out)


def _copy_folder(source: Path, folder: Path, bar: tqdm) -> None:
    folder.mkdir(parents=True)
    for name in ("key", "emb_vector"):
        with open(folder / name, "wb") as out:
            _copy_range(source / name, 0, (source / name).stat().st_size, out, bar.update)
            _fsync(out)


def _write_mapped_table(source: TensorSource, key_map: TensorSource, table: TablePlan, folder: Path,
                        bar: tqdm) -> None:
    """Key k with row key_map[k] of the table, for every key the map sends to a real row."""
    folder.mkdir(parents=True)
    mapping = key_map.read_all()
    keys = mapped_keys(mapping, source.shape[0])
    with open(folder / "key", "wb") as out:
        keys.astype("<i8").tofile(out)
        _fsync(out)
    step = max(1, _CHUNK_BYTES // (table.dim * 4))
    with open(folder / "emb_vector", "wb") as out:
        for start in range(0, keys.size, step):
            rows = source.read_row_indices(mapping[keys[start:start + step]])
            rows.astype("<f4", copy=False).tofile(out)
            bar.update(rows.nbytes)
        _fsync(out)


def _copy_range(src: Path, offset: int, length: int, out, progress=lambda n: None) -> None:
    with open(src, "rb") as f:
        done = 0
        while done < length:
            count = min(_CHUNK_BYTES * 4, length - done)
            try:
                copied = os.copy_file_range(f.fileno(), out.fileno(), count, offset + done)
            except OSError:  # e.g. filesystems that cannot: fall back to plain reads and writes
                copied = out.write(os.pread(f.fileno(), count, offset + done))
            if copied <= 0:
                raise SurgeonError(f"{src}: ended early while copying table bytes at offset {offset + done}")
            done += copied
            progress(copied)


def save_model(model: onnx.ModelProto, loaded: LoadedModel, folder: Path) -> Path:
    """Write `model.onnx`; external tensors still in use move to `model.onnx.data` (or inline if small)."""
    external = [t for t in _all_tensors(model.graph) if t.data_location == TensorProto.EXTERNAL]
    sizes = {id(t): _external_length(t, loaded) for t in external}
    inline = sum(sizes.values()) < INLINE_LIMIT
    data_path = folder / f"{MODEL_NAME}.data"
    with contextlib.ExitStack() as stack:
        data = None if inline or not external else stack.enter_context(open(data_path, "wb"))
        for tensor in external:
            info = _external_info(tensor)
            src = (loaded.base_dir / info["location"]).resolve()
            offset, length = int(info.get("offset", 0)), sizes[id(tensor)]
            if data is None:
                with open(src, "rb") as f:
                    tensor.raw_data = os.pread(f.fileno(), length, offset)
                del tensor.external_data[:]
                tensor.data_location = TensorProto.DEFAULT
                continue
            start = _align(data.tell())
            data.seek(start)
            _copy_range(src, offset, length, data)
            _set_external(tensor, data_path.name, start, length)
        if data is not None:
            _fsync(data)
    path = folder / MODEL_NAME
    onnx.save_model(model, str(path))
    return path


def _all_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    for scope in (graph, *subgraphs(graph)):
        yield from scope.initializer
        for node in scope.node:
            yield from (attr.t for attr in node.attribute if attr.type == onnx.AttributeProto.TENSOR)


def _external_info(tensor: TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def _external_length(tensor: TensorProto, loaded: LoadedModel) -> int:
    info = _external_info(tensor)
    if "length" in info:
        return int(info["length"])
    return (loaded.base_dir / info["location"]).stat().st_size - int(info.get("offset", 0))


def _set_external(tensor: TensorProto, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _align(offset: int, alignment: int = 4096) -> int:
    # Page-aligned tensors can be memory-mapped by readers (onnx does the same with align_offset).
    return (offset + alignment - 1) // alignment * alignment


def hps_config(plan: Plan) -> dict[str, Any]:
    """HugeCTR HPS configuration for the plan's tables (one `models` entry)."""
    options = plan.options
    return {
        # HugeCTR: false = 32-bit keys in the HPS backend, which its HPS_TRT plugin requires.
        "supportlonglong": options.key_dtype == "int64",
        "models": [{
            "model": options.model_name,
            "sparse_files": [t.folder for t in plan.tables],
            "num_of_worker_buffer_in_pool": 3,
            "embedding_table_names": [t.name for t in plan.tables],
            "embedding_vecsize_per_table": [t.dim for t in plan.tables],
            "maxnum_catfeature_query_per_table_per_sample": [t.max_keys_per_sample for t in plan.tables],
            "default_value_for_each_table": [t.default_value for t in plan.tables],
            "deployed_device_list": [0],
            "max_batch_size": options.max_batch_size,
            "cache_refresh_percentage_per_iteration": 0.2,
            # 1.0: always insert misses synchronously, so lookups stay exact at any hit rate.
            "hit_rate_threshold": 1.0,
            "gpucacheper": options.gpucache_ratio,
            "gpucache": True,
        }],
    }


def write_json(path: Path, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        _fsync(f)


def _fsync(f) -> None:
    f.flush()
    os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
