"""Validation of a model's HPS_TRT nodes against the plugin's contract and an hps_config.json.

Every problem is one line, `path:where: what is wrong — what to do`. `rewrite` validates its own
output before moving it into place; `verify` and `check` validate what they are given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import onnx
from onnx import AttributeProto, TensorProto

from .contract import ATTRIBUTES, HPS_OP, field_text

_KEY_DTYPES = {TensorProto.INT32: "int32", TensorProto.INT64: "int64"}
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class Problem:
    path: str
    where: str  #: node name, or a key path in the config
    message: str  #: what is wrong — what to do
    severity: str = "error"  #: "error" or "warning"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.path}:{self.where}: {prefix}{self.message}"


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def hps_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == HPS_OP]


def validate(model_path: str | Path, config_path: str | Path | None = None,
             model: onnx.ModelProto | None = None) -> list[Problem]:
    """Problems of every HPS_TRT node in the model; with `config_path`, also of the config and its files."""
    model_path = Path(model_path)
    if model is None:
        model = onnx.load_model(str(model_path), load_external_data=False)
    types = _value_types(model)
    config = None
    problems: list[Problem] = []
    if config_path is not None:
        config, config_problems = _load_config(Path(config_path))
        problems += config_problems
    for node in hps_nodes(model):
        problems += _check_node(str(model_path), node, types, config, Path(config_path) if config_path else None)
    return problems


# --- config --------------------------------------------------------------------------------------

@cache
def _config_schema() -> dict:
    return json.loads(resources.files("hps_surgeon").joinpath("hps_config.schema.json").read_text())


def _load_config(path: Path) -> tuple[dict | None, list[Problem]]:
    try:
        config = json.loads(path.read_text())
    except OSError as exc:
        return None, [Problem(str(path), "(file)", f"cannot read the HPS config ({exc.strerror}) — pass the "
                                                    "hps_config.json that rewrite wrote")]
    except json.JSONDecodeError as exc:
        return None, [Problem(str(path), f"line {exc.lineno}", f"not valid JSON ({exc.msg}) — fix the file or "
                                                                "re-run hps-surgeon rewrite")]
    found = sorted(jsonschema.Draft202012Validator(_config_schema()).iter_errors(config),
                   key=lambda e: [str(p) for p in e.absolute_path])
    problems = [Problem(str(path), _json_path(e.absolute_path), f"{e.message} — see HugeCTR's HPS configuration "
                                                                 "format") for e in found]
    if problems:
        return None, problems
    for index, model in enumerate(config["models"]):
        problems += _check_model_entry(path, index, model)
    return config, problems


def _json_path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _check_model_entry(path: Path, index: int, model: dict) -> list[Problem]:
    problems = []
    count = len(model["sparse_files"])
    for field in ("embedding_table_names", "embedding_vecsize_per_table",
                  "maxnum_catfeature_query_per_table_per_sample", "default_value_for_each_table"):
        if len(model[field]) != count:
            problems.append(Problem(str(path), f"models[{index}].{field}",
                                    f"has {len(model[field])} entries, sparse_files has {count} — one per table"))
    for t, file in enumerate(model["sparse_files"]):
        folder = path.parent / file
        if not (folder / "key").is_file() or not (folder / "emb_vector").is_file():
            problems.append(Problem(str(path), f"models[{index}].sparse_files[{t}]",
                                    f"'{file}' has no key and emb_vector files (looked in {folder}) — "
                                    "copy the table folder next to the config"))
    return problems


@dataclass(frozen=True)
class KeySummary:
    """What checks need to know of a `key` file: are its keys unique, and their span."""

    unique: bool
    low: int
    high: int


_KEY_CHUNK = 8 << 20  #: keys per read: 64 MiB, so memory stays flat whatever the table size


def key_summary(path: Path) -> KeySummary:
    """Summary of a HugeCTR `key` file (int64 little-endian), read in bounded chunks.

    Remembered per file version: verify and deploy validate a folder, then draw keys from the
    same files, and a 32 M-row table's keys are 256 MiB to read.
    """
    stat = Path(path).stat()
    return _key_summary(str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


@lru_cache(maxsize=256)
def _key_summary(path: str, _inode: int, size: int, _mtime_ns: int, _ctime_ns: int) -> KeySummary:
    keys = np.memmap(path, dtype="<i8", mode="r") if size else np.zeros(0, np.int64)
    if keys.size == 0:
        return KeySummary(True, 0, 0)
    increasing, previous, low, high = True, None, None, None
    for start in range(0, keys.size, _KEY_CHUNK):
        chunk = np.asarray(keys[start:start + _KEY_CHUNK])
        increasing = increasing and bool(np.all(chunk[1:] > chunk[:-1])) and (
            previous is None or chunk[0] > previous)
        previous = chunk[-1]
        low = chunk.min() if low is None else min(low, chunk.min())
        high = chunk.max() if high is None else max(high, chunk.max())
    # Strictly increasing keys (what rewrite writes) are unique; sort only when they are not.
    unique = increasing or np.unique(np.asarray(keys)).size == keys.size
    return KeySummary(unique, int(low), int(high))


# --- nodes ---------------------------------------------------------------------------------------

def _check_node(path: str, node: onnx.NodeProto, types: dict[str, Any], config: dict | None,
                config_path: Path | None) -> list[Problem]:
    where = node.name or f"(unnamed {HPS_OP})"
    problems = []

    def bad(message: str, severity: str = "error") -> None:
        problems.append(Problem(path, where, message, severity))

    attrs = {a.name: a for a in node.attribute}
    for name, kind in ATTRIBUTES.items():
        if name not in attrs:
            bad(f"missing attribute '{name}' ({_kind(kind)}) — add it or re-run hps-surgeon rewrite")
        elif attrs[name].type != kind:
            bad(f"attribute '{name}' is {_kind(attrs[name].type)}, must be {_kind(kind)} — "
                "re-run hps-surgeon rewrite")
    for name in sorted(set(attrs) - set(ATTRIBUTES)):
        bad(f"unexpected attribute '{name}'; HPS_TRT takes exactly {', '.join(ATTRIBUTES)} — remove it")
    if len(node.input) != 1 or len(node.output) != 1:
        bad(f"has {len(node.input)} input(s) and {len(node.output)} output(s); HPS_TRT takes 1 keys input "
            "and gives 1 output")
    if problems:
        return problems
    value = {name: onnx.helper.get_attribute_value(attrs[name]) for name in ATTRIBUTES}
    model_name, config_file = field_text(value["model_name"]), field_text(value["ps_config_file"])
    table_id, dim = value["table_id"], value["emb_vec_size"]
    key_type, out_type = types.get(node.input[0]), types.get(node.output[0])
    n = _check_keys(node, key_type, bad)
    _check_output(out_type, dim, n, bad)
    if config is None:
        return problems
    if Path(config_file).name != config_path.name:
        bad(f"ps_config_file is '{config_file}', not the config being checked ({config_path.name}) — the plugin "
            "will open that file instead", severity="warning")
    entry = next((m for m in config["models"] if m["model"] == model_name), None)
    if entry is None:
        bad(f"model_name '{model_name}' is not in {config_path.name} (it has: "
            f"{', '.join(m['model'] for m in config['models'])}) — fix model_name or the config")
        return problems
    tables_count = len(entry["sparse_files"])
    if not 0 <= table_id < tables_count:
        bad(f"table_id {table_id} is out of range: model '{model_name}' has {tables_count} table(s) — "
            f"use 0..{tables_count - 1}")
        return problems
    expected_dim = entry["embedding_vecsize_per_table"][table_id]
    if dim != expected_dim:
        bad(f"emb_vec_size {dim} differs from embedding_vecsize_per_table[{table_id}] = {expected_dim} in "
            f"{config_path.name} — make them equal")
    max_n = entry["maxnum_catfeature_query_per_table_per_sample"][table_id]
    if n is not None and max_n < n:
        bad(f"reads {n} keys per sample but maxnum_catfeature_query_per_table_per_sample[{table_id}] is "
            f"{max_n} — raise it to at least {n}")
    _check_table_files(config_path.parent / entry["sparse_files"][table_id], table_id, expected_dim,
                       key_type, bad)
    return problems


def _check_keys(node: onnx.NodeProto, key_type, bad) -> int | None:
    if key_type is None:
        return None
    dtype, shape = key_type
    if dtype not in _KEY_DTYPES:
        bad(f"keys '{node.input[0]}' are {TensorProto.DataType.Name(dtype).lower()}, HPS_TRT takes int32 or "
            "int64 — insert a Cast")
    if shape is not None and len(shape) != 2:
        bad(f"keys '{node.input[0]}' have rank {len(shape)}, HPS_TRT takes [batch, keys per sample] — "
            "insert a Reshape")
        return None
    return shape[1] if shape is not None and isinstance(shape[1], int) else None


def _check_output(out_type, dim: int, n: int | None, bad) -> None:
    if out_type is None or out_type[1] is None:
        return
    shape = out_type[1]
    if len(shape) != 3 or (isinstance(shape[2], int) and shape[2] != dim) or (
            n is not None and isinstance(shape[1], int) and shape[1] != n):
        bad(f"output shape is {list(shape)}, HPS_TRT gives [batch, {n if n is not None else 'N'}, {dim}] — "
            "fix the declared shape")


def _check_table_files(folder: Path, table_id: int, dim: int, key_type, bad) -> None:
    key_file, vector_file = folder / "key", folder / "emb_vector"
    if not key_file.is_file() or not vector_file.is_file():
        return  # already reported against the config
    key_bytes, vector_bytes = key_file.stat().st_size, vector_file.stat().st_size
    rows = key_bytes // 8
    if key_bytes % 8:
        bad(f"table {table_id}: {key_file} has {key_bytes} bytes, not a whole number of int64 keys — re-export")
        return
    if vector_bytes != rows * dim * 4:
        bad(f"table {table_id}: {vector_file} has {vector_bytes} bytes, expected {rows} rows x {dim} x 4 = "
            f"{rows * dim * 4} — the file is truncated or emb_vec_size is wrong; re-export the table")
    keys = key_summary(key_file)
    if not keys.unique:
        bad(f"table {table_id}: {key_file} holds duplicate keys — each key must appear once")
    if key_type is not None and key_type[0] == TensorProto.INT32 and (
            keys.high > _INT32_MAX or keys.low < -_INT32_MAX - 1):
        bad(f"table {table_id}: stored keys reach {keys.high}, beyond int32 keys of this node — "
            "rewrite with --key-dtype int64")


def _kind(kind: int) -> str:
    return {AttributeProto.STRING: "string", AttributeProto.INT: "int"}.get(kind, AttributeProto.AttributeType.Name(kind).lower())


def _value_types(model: onnx.ModelProto) -> dict[str, tuple[int, tuple | None]]:
    types = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        tensor_type = value.type.tensor_type
        if not tensor_type.elem_type:
            continue
        shape = None
        if tensor_type.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                          for d in tensor_type.shape.dim)
        types[value.name] = (tensor_type.elem_type, shape)
    return types
