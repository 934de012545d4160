"""Pattern files (`patterns/<id>/pattern.yaml`) -> validated `PatternSpec`s.

Validation has two layers: `patterns/schema.json` for the shape of the file, then our own checks
that every name used is declared, every edge points somewhere, ops and attributes exist in ONNX,
and expressions stay inside the vocabulary of `expr`. Errors name the file and the field.
"""

from __future__ import annotations

import importlib.resources
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import onnx

from . import bounded, expr
from .errors import SurgeonError

# Ops a rewrite may put around HPS_TRT; all are in onnx-tensorrt's operator support list.
GLUE_OPS = ("Cast", "Reshape", "Shape", "Concat", "Slice", "ReduceSum", "ReduceMean")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtypes: tuple[str, ...] = ()  #: allowed dtypes; empty = any
    ranks: tuple[int, ...] = ()  #: allowed ranks; empty = any
    constant: bool = False
    why: str = ""


@dataclass(frozen=True)
class Ref:
    """An edge: `name` is an input, constant or node; `index` the node output it reads."""

    name: str
    index: int = 0

    def __str__(self) -> str:
        return self.name if self.index == 0 else f"{self.name}.{self.index}"


@dataclass(frozen=True)
class NodeSpec:
    name: str
    op: str
    inputs: tuple[Ref, ...]
    attrs: dict[str, tuple[Any, ...]] = field(default_factory=dict)  #: attribute -> allowed values
    optional: bool = False
    why: str = ""


@dataclass(frozen=True)
class Refusal:
    condition: Any  #: parsed expression
    reason: str  #: message template with {expr} fields


@dataclass(frozen=True)
class PatternSpec:
    """One validated pattern. `anchor` is the node producing the rewritten output."""

    id: str
    summary: str
    path: Path
    tensors: dict[str, TensorSpec]
    nodes: dict[str, NodeSpec]
    outputs: dict[str, Ref]
    anchor: str
    keys: str
    table: str
    out: str
    out_shape: Any = None  #: parsed expression giving a static reshape target for `out`, or None
    hoist: str | None = None  #: node re-applied to the looked-up rows when the lookup sits in a loop body
    key_map: str | None = None  #: constant mapping keys to table rows (HugeCTR's hash), folded into the export
    priority: int = 0
    glue_ops: tuple[str, ...] = GLUE_OPS  #: ops the rewrite may add around HPS_TRT (rewrite refuses others)
    candidate: tuple[str, int, tuple[str, ...], str | None] | None = None  #: (input, rank, dtypes, varying)
    where: tuple[tuple[str, Any], ...] = ()  #: (source text, parsed)
    refusals: tuple[Refusal, ...] = ()

    @property
    def optional_nodes(self) -> tuple[str, ...]:
        return tuple(n for n, spec in self.nodes.items() if spec.optional)


def builtin_patterns_dir() -> Path:
    return Path(str(importlib.resources.files("hps_surgeon.patterns")))


@cache
def _schema() -> dict:
    return json.loads((builtin_patterns_dir() / "schema.json").read_text())


def load_patterns(directory: Path | None = None) -> list[PatternSpec]:
    """Every `*/pattern.yaml` under `directory` (default: the patterns shipped with the package)."""
    directory = Path(directory) if directory else builtin_patterns_dir()
    files = sorted(directory.glob("*/pattern.yaml"))
    if not files:
        raise SurgeonError(f"{directory}: no */pattern.yaml files; point --patterns at a folder of pattern folders")
    return [load_pattern(f) for f in files]


def load_pattern(path: Path) -> PatternSpec:
    path = Path(path)
    # `--patterns DIR` is the user's: read with bounded work, as plan files are
    text = bounded.read_text(path, str(path), bounded.PATTERN_MAX_BYTES, "fix the pattern file")
    data = bounded.load_yaml(text, str(path), "fix the pattern file")
    errors = sorted(jsonschema.Draft202012Validator(_schema()).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        where = ".".join(str(p) for p in errors[0].absolute_path) or "(top level)"
        raise SurgeonError(f"{path}: {where}: {errors[0].message}")
    try:
        return _build(path, data)
    except (ValueError, KeyError) as exc:
        raise SurgeonError(f"{path}: {exc.args[0] if exc.args else exc}") from None


def _build(path: Path, data: dict) -> PatternSpec:
    if data["id"] != path.parent.name:
        raise ValueError(f"id: '{data['id']}' differs from the folder name '{path.parent.name}'")
    tensors = {name: _tensor(name, body, constant=False) for name, body in data.get("inputs", {}).items()}
    tensors.update({name: _tensor(name, body, constant=True) for name, body in data.get("constants", {}).items()})
    nodes = {name: _node(name, body) for name, body in data["nodes"].items()}
    clash = set(tensors) & set(nodes)
    if clash:
        raise ValueError(f"nodes.{sorted(clash)[0]}: name also declared as an input or constant")
    outputs = {name: _ref(text) for name, text in data["outputs"].items()}
    declared = [*tensors, *nodes, *outputs]
    for node in nodes.values():
        for i, ref in enumerate(node.inputs):
            _check_ref(ref, tensors, nodes, f"nodes.{node.name}.in[{i}]")
    for name, ref in outputs.items():
        _check_ref(ref, tensors, nodes, f"outputs.{name}")
        if ref.name not in nodes:
            raise ValueError(f"outputs.{name}: '{ref}' must be a node output")
    _check_acyclic(nodes)
    rewrite = data["rewrite"]
    for key, allowed in (("keys", tensors), ("table", tensors), ("out", outputs)):
        if rewrite[key] not in allowed:
            raise ValueError(f"rewrite.{key} uses '{rewrite[key]}', not declared (declared: {', '.join(declared)})")
    if not tensors[rewrite["table"]].constant:
        raise ValueError(f"rewrite.table: '{rewrite['table']}' must be listed under constants")
    unknown_glue = set(rewrite.get("glue_ops", [])) - set(GLUE_OPS)
    if unknown_glue:
        raise ValueError(f"rewrite.glue_ops: {sorted(unknown_glue)} not among the ops a rewrite adds {list(GLUE_OPS)}")
    anchor = outputs[rewrite["out"]].name
    if "key_map" in rewrite and (rewrite["key_map"] not in tensors or not tensors[rewrite["key_map"]].constant):
        raise ValueError(f"rewrite.key_map: '{rewrite['key_map']}' must be listed under constants")
    hoist = rewrite.get("hoist")
    if hoist is not None and (hoist not in nodes or nodes[hoist].inputs[0].name != rewrite["keys"]):
        raise ValueError(f"rewrite.hoist: '{hoist}' must be a node whose first input is rewrite.keys "
                         f"('{rewrite['keys']}')")
    if nodes[anchor].optional:
        raise ValueError(f"nodes.{anchor}: the node producing rewrite.out cannot be optional")
    candidate = data.get("candidate")
    for key in ("input", "varying"):
        if candidate and key in candidate and candidate[key] not in tensors:
            raise ValueError(f"candidate.{key} uses '{candidate[key]}', not declared "
                             f"(declared: {', '.join(declared)})")
    return PatternSpec(
        id=data["id"], summary=data["summary"], path=path, tensors=tensors, nodes=nodes, outputs=outputs,
        anchor=anchor, keys=rewrite["keys"], table=rewrite["table"], out=rewrite["out"],
        out_shape=_parse(rewrite["out_shape"], declared, "rewrite.out_shape") if "out_shape" in rewrite else None,
        hoist=rewrite.get("hoist"), key_map=rewrite.get("key_map"),
        priority=data.get("priority", 0), glue_ops=tuple(rewrite.get("glue_ops", GLUE_OPS)),
        candidate=(candidate["input"], candidate["rank"], tuple(candidate.get("dtype", [])),
                   candidate.get("varying")) if candidate else None,
        where=tuple((text, _parse(text, declared, f"where: '{text}'")) for text in data.get("where", [])),
        refusals=tuple(_refusal(i, body, declared) for i, body in enumerate(data.get("refuse", []))),
    )


def _tensor(name: str, body: dict, constant: bool) -> TensorSpec:
    ranks = body.get("rank", [])
    return TensorSpec(name, tuple(body.get("dtype", [])), tuple(ranks if isinstance(ranks, list) else [ranks]),
                      constant, body.get("why", ""))


def _node(name: str, body: dict) -> NodeSpec:
    op = body["op"]
    if not onnx.defs.has(op):
        raise ValueError(f"nodes.{name}.op: '{op}' is not an ONNX operator")
    known = onnx.defs.get_schema(op).attributes
    attrs = {}
    for attr, allowed in body.get("attrs", {}).items():
        if attr not in known:
            raise ValueError(f"nodes.{name}.attrs.{attr}: {op} has no attribute '{attr}' (it has: {', '.join(known)})")
        attrs[attr] = tuple(allowed) if isinstance(allowed, list) else (allowed,)
    return NodeSpec(name, op, tuple(_ref(r) for r in body["in"]), attrs, body.get("optional", False),
                    body.get("why", ""))


def _ref(text: str) -> Ref:
    name, _, index = str(text).partition(".")
    if index and not index.isdigit():
        raise ValueError(f"'{text}' is not 'name' or 'name.N'")
    return Ref(name, int(index or 0))


def _check_ref(ref: Ref, tensors: dict, nodes: dict, where: str) -> None:
    if ref.name in tensors and ref.index == 0:
        return
    if ref.name not in nodes:
        declared = ", ".join([*tensors, *nodes])
        raise ValueError(f"{where} uses '{ref}', not declared (declared: {declared})")


def _check_acyclic(nodes: dict[str, NodeSpec]) -> None:
    state: dict[str, int] = {}

    def visit(name: str) -> None:
        if state.get(name) == 1:
            raise ValueError(f"nodes.{name}: the node edges form a cycle")
        if name in state or name not in nodes:
            return
        state[name] = 1
        for ref in nodes[name].inputs:
            visit(ref.name)
        state[name] = 2

    for name in nodes:
        visit(name)


def _parse(text: str, declared: list[str], where: str):
    try:
        return expr.parse(text, declared)
    except expr.ExprError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _refusal(index: int, body: dict, declared: list[str]) -> Refusal:
    condition = _parse(body["if"], declared, f"refuse[{index}].if")
    for text in expr.message_fields(body["reason"]):
        _parse(text, declared, f"refuse[{index}].reason")
    return Refusal(condition, body["reason"])
