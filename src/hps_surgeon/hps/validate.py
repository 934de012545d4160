"""Validation of a model's HPS_TRT nodes against the plugin's contract and an hps_config.json.

Every problem is one line, `path:where: what is wrong — what to do`. `rewrite` validates its own
output before moving it into place; `verify` and `check` validate what they are given.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import onnx
from onnx import AttributeProto, TensorProto

from .. import confine
from ..errors import Problem
from ..load import read_proto
from . import config as hps_config
from .contract import ATTRIBUTES, HPS_OP, NAME_SYNTAX, field_text
from .tables import check_table_files

_KEY_DTYPES = {TensorProto.INT32: "int32", TensorProto.INT64: "int64"}


def hps_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == HPS_OP]


def validate(model_path: str | Path, config_path: str | Path | None = None,
             model: onnx.ModelProto | None = None) -> list[Problem]:
    """Problems of every HPS_TRT node in the model; with `config_path`, also of the config and its files."""
    model_path = Path(model_path)
    if model is None:
        model = read_proto(model_path)  # SurgeonError for a model that is unsafe to read
    types = _value_types(model)
    config = None
    problems: list[Problem] = []
    if config_path is not None:
        config, config_problems = hps_config.load(Path(config_path))
        problems += config_problems
    nodes = hps_nodes(model)
    names = [n.name for n in nodes]
    for index, node in enumerate(nodes):
        # a name two nodes share does not say which one: add the node's place among the HPS_TRT nodes
        where = (node.name if names.count(node.name) == 1 else f"{node.name} (HPS_TRT #{index})") if node.name \
            else f"(unnamed {HPS_OP} #{index})"
        problems += _check_node(str(model_path), where, node, types, config,
                                Path(config_path) if config_path else None)
    return problems


# --- nodes ---------------------------------------------------------------------------------------

def _check_node(path: str, where: str, node: onnx.NodeProto, types: dict[str, Any], config: dict | None,
                config_path: Path | None) -> list[Problem]:
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
    for name, kind in ATTRIBUTES.items():
        if name in attrs and attrs[name].type == kind == AttributeProto.STRING and not _decodes(attrs[name].s):
            bad(f"attribute '{name}' is not valid UTF-8 ({attrs[name].s[:40]!r}) — the plugin compares it as text; "
                "re-run hps-surgeon rewrite")
    if problems:
        return problems
    value = {name: onnx.helper.get_attribute_value(attrs[name]) for name in ATTRIBUTES}
    model_name, config_file = field_text(value["model_name"]), field_text(value["ps_config_file"])
    table_id, dim = value["table_id"], value["emb_vec_size"]
    key_type, out_type = types.get(node.input[0]), types.get(node.output[0])
    n = _check_keys(node, key_type, bad)
    _check_output(out_type, dim, n, bad)
    if not NAME_SYNTAX.fullmatch(model_name):
        bad(f"attribute model_name '{model_name}' is not a valid HugeCTR model name: HugeCTR's HPS aborts unless names "
            "match [a-zA-Z0-9_-]{1,120} (hier_parameter_server.cpp:34-36) — rewrite with a valid --model-name")
    if config is None:
        return problems
    if Path(config_file).name != config_path.name:
        bad(f"ps_config_file is '{config_file}', not the config being checked ({config_path.name}) — the plugin "
            "will open that file instead", severity="warning")
    entry = hps_config.model_entry(config, model_name)
    if entry is None:
        bad(f"model_name '{model_name}' is not in {config_path.name} (it has: "
            f"{', '.join(repr(m['model']) for m in config['models'])}) — fix model_name or the config")
        return problems
    tables_count = len(entry["sparse_files"])
    if not 0 <= table_id < tables_count:
        bad(f"table_id {table_id} is out of range: model '{model_name}' has {tables_count} table(s) — "
            f"use 0..{tables_count - 1}")
        return problems
    default = hps_config.table_default(entry, table_id)
    if not math.isfinite(default):
        bad(f"default_value_for_each_table[{table_id}] is {default} in {config_path.name}: every key missing from "
            "the table returns it — make it a finite number", severity="warning")
    expected_dim = entry["embedding_vecsize_per_table"][table_id]
    if dim != expected_dim:
        bad(f"emb_vec_size {dim} differs from embedding_vecsize_per_table[{table_id}] = {expected_dim} in "
            f"{config_path.name} — make them equal")
    max_n = entry["maxnum_catfeature_query_per_table_per_sample"][table_id]
    if n is not None and max_n < n:
        bad(f"reads {n} keys per sample but maxnum_catfeature_query_per_table_per_sample[{table_id}] is "
            f"{max_n} — raise it to at least {n}")
    _check_hugectr_limits(key_type, config, entry, table_id, bad)
    try:
        folder = hps_config.table_folder(config_path, entry, table_id)
    except confine.PathRefused:
        return problems  # reported against the config, which names the folder
    check_table_files(config_path, folder, table_id, expected_dim, key_type, bad)
    return problems


def _decodes(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


def _check_hugectr_limits(key_type, config: dict, entry: dict, table_id: int, bad) -> None:
    """Warnings for lookups HugeCTR's plugin would skip, returning success with the output unwritten."""
    if key_type is None:
        return
    dtype, shape = key_type
    if dtype in _KEY_DTYPES and (dtype == TensorProto.INT64) != config["supportlonglong"]:
        bad(f"keys are {_KEY_DTYPES[dtype]} but supportlonglong is {str(config['supportlonglong']).lower()}: HugeCTR's "
            "plugin skips such lookups (\"Input tensor dtype should be consistent with HPS configuration\", "
            "plugin/lookup_manager.cpp:212); ours serves them", severity="warning")
    if shape is None or len(shape) != 2 or not all(isinstance(d, int) for d in shape):
        return
    limit = entry["max_batch_size"] * entry["maxnum_catfeature_query_per_table_per_sample"][table_id]
    if shape[0] * shape[1] > limit:
        bad(f"looks up {shape[0]} x {shape[1]} keys, more than max_batch_size {entry['max_batch_size']} x "
            f"maxnum_catfeature_query_per_table_per_sample[{table_id}] = {limit}: HugeCTR's plugin skips such lookups "
            "(plugin/lookup_manager.cpp:197-204); ours serves them — raise max_batch_size", severity="warning")


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
