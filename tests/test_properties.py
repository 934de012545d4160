"""Property-based tests: random DLRM-like graphs rewrite into valid models that compute the same thing.

A hypothesis strategy builds a model with onnx.helper: 1-8 tables (float32 or float16, initializer or
Constant node), int32/int64/float32 key inputs of rank 1-3 (batch dim "B", another name or unnamed;
trailing dims static 1-5 or a dynamic "N<k>"), lookups in every shape the patterns accept (plain
Gather, Cast on the keys, Identity on the table, torch DLRM's per-column `Gather(axis=1)`, tf2onnx's
flatten/unflatten), shared tables, tables with other readers (which must be kept), keys also read by
the dense part, and a random dense part (Cast/ReduceSum/Relu/Flatten/Add/Concat/MatMul); opset 13-21,
with or without value_info, tables inline or in external data. Properties checked for every model:

- `rewrite` writes a model that passes `onnx.checker` (full_check) and `validate` without errors;
- each generated lookup becomes one HPS_TRT node and `scan` of the original counts exactly those;
- tables are dropped from the model unless something else still reads them;
- the rewritten model (SplitRunner + ReferenceLookup) equals onnxruntime on the original bit for bit,
  at batch 1 and 3, on keys below the row count of every table they reach;
- rewriting the rewritten model finds nothing, writes nothing, and `scan` of it finds no lookup.

Profiles: "ci" (default, 200 examples) and "thorough" (500), picked with HYPOTHESIS_PROFILE. The bugs
the strategy found (shared glue, bfloat16 tables, external shape constants) are regression tests at
the end of this file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import hps_surgeon
from hps_surgeon.hps import validate
from hps_surgeon.errors import errors
from hps_surgeon.verify.runner import SplitRunner
from hps_surgeon.hps.reference import ReferenceLookup

from support import run_onnxruntime

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=200, **_COMMON)
settings.register_profile("thorough", max_examples=500, **_COMMON)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

OPSET = 17
MAX_N = 5  #: largest size drawn for a dynamic keys-per-sample dim
#: Let lookups share a Cast of their keys or an Identity of their table.
SHARE_GLUE = True
_TENSOR = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16,
           "int32": TensorProto.INT32, "int64": TensorProto.INT64}
_DTYPE_NAME = {v: k for k, v in _TENSOR.items()}


@dataclass
class KeyInput:
    name: str
    dtype: str
    shape: tuple  #: (batch dim, then static dims or a dynamic "N<k>" second dim)
    high: int | None = None  #: keys are drawn from [0, high): the fewest rows of any table they reach


@dataclass
class Case:
    """A generated model and what the test expects of it."""

    model: onnx.ModelProto
    keys: list[KeyInput]
    dense: dict[str, int]  #: float input name -> width
    lookups: int
    kept_tables: set[str]
    all_tables: set[str]
    max_keys_per_sample: int | None  #: for keys with a dynamic number per sample (at most MAX_N in that dim)
    external: bool  #: save the source with its tensors in external data
    recipe: list[str] = field(default_factory=list)

    def __repr__(self) -> str:  # hypothesis prints this on failure: the structure, not the weights
        return "Case(\n  " + "\n  ".join(self.recipe) + "\n)"


class _Builder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.recipe: list[str] = []
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def node(self, op: str, inputs: list[str], stem: str | None = None, **attrs) -> str:
        out = self.name(stem or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{out}_node", **attrs))
        shown = {k: (_DTYPE_NAME[v] if k == "to" else v) for k, v in attrs.items()}
        self.recipe.append(f"{out} = {op}({', '.join(inputs)}{''.join(f', {k}={v}' for k, v in shown.items())})")
        return out

    def const(self, stem: str, array: np.ndarray) -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(array, name))
        return name


@st.composite
def dlrm_models(draw) -> Case:
    b = _Builder(draw(st.integers(0, 2**32 - 1)))

    # tables
    tables = []  # (tensor name, rows, dim, dtype)
    for t in range(draw(st.integers(1, 8))):
        rows, dim = draw(st.integers(1, 200)), draw(st.integers(1, 64))
        dtype = draw(st.sampled_from(["float32", "float32", "float32", "float16"]))
        values = b.rng.standard_normal((rows, dim)).astype(dtype)
        name = f"table{t}"
        if draw(st.integers(0, 4)) == 0:  # a Constant node instead of an initializer
            b.nodes.append(helper.make_node("Constant", [], [name], name=f"{name}_const",
                                            value=numpy_helper.from_array(values, f"{name}_value")))
            b.recipe.append(f"{name} = Constant({dtype}[{rows}, {dim}])")
        else:
            b.inits.append(numpy_helper.from_array(values, name))
            b.recipe.append(f"{name}: initializer {dtype}[{rows}, {dim}]")
        tables.append((name, rows, dim, dtype))

    # key inputs; a dynamic second dim ("N0") needs --max-keys-per-sample
    keys = []
    for k in range(draw(st.integers(1, 3))):
        rank = draw(st.integers(1, 3))
        batch = draw(st.sampled_from(["B", "B", "batch", None]))  # None: a dim with no name or value
        shape = [batch, *(draw(st.integers(1, 5)) for _ in range(rank - 1))]
        if rank > 1 and draw(st.integers(0, 5)) == 0:
            shape[1] = f"N{k}"
        # float keys (keras Embedding on a float input) reach the table through a Cast
        keys.append(KeyInput(f"keys{k}", draw(st.sampled_from(["int32", "int64"] * 3 + ["float32"])), tuple(shape)))
        b.recipe.append(f"input {keys[-1].name}: {keys[-1].dtype}{shape}")

    # lookups: every table is looked up at least once; extra draws share tables
    table_ids = list(range(len(tables))) + draw(st.lists(st.integers(0, len(tables) - 1), max_size=4))
    table_ids = draw(st.permutations(table_ids))
    features = []  # (tensor, dtype, shape with "B" first)
    graph_outputs = []  # (tensor, dtype, shape)
    casts, weights = {}, {}  # shared Cast of keys / Identity of a table, reused by later lookups
    for table_id in table_ids:
        table, rows, dim, dtype = tables[table_id]
        key = draw(st.sampled_from(keys))
        key.high = rows if key.high is None else min(key.high, rows)
        static = all(isinstance(d, int) for d in key.shape[1:])
        styles = ["plain", "plain"] + (["column"] * (len(key.shape) > 1 and static)) + (["flat"] * static)
        style = draw(st.sampled_from(styles))
        ids, key_shape = key.name, key.shape
        if style == "column":  # torch DLRM: lS_i[:, i] -> Gather(table, .)
            column = draw(st.integers(0, key.shape[1] - 1))
            ids = b.node("Gather", [ids, b.const("col", np.array(column, dtype=np.int64))], "column", axis=1)
            key_shape = (key.shape[0], *key.shape[2:])
        if key.dtype == "float32" or draw(st.booleans()):
            to = draw(st.sampled_from(["int32", "int64"]))
            if (ids, to) not in casts or not SHARE_GLUE or draw(st.booleans()):
                casts[ids, to] = b.node("Cast", [ids], "keys_cast", to=_TENSOR[to])
            ids = casts[ids, to]
        if style == "flat":  # tf2onnx: Reshape([-1]) -> Gather -> Reshape(S)
            ids = b.node("Reshape", [ids, b.const("flat_shape", np.array([-1], dtype=np.int64))], "flat")
        weight = table
        if draw(st.booleans()):
            if table not in weights or not SHARE_GLUE or draw(st.booleans()):
                weights[table] = b.node("Identity", [table], "weight")
            weight = weights[table]
        emb = b.node("Gather", [weight, ids], "lookup", **({"axis": 0} if draw(st.booleans()) else {}))
        if style == "flat":
            n = int(np.prod(key_shape[1:], dtype=np.int64))
            target = draw(st.sampled_from([[-1, n, dim], [-1, n * dim], [-1, *key_shape[1:], dim]]))
            emb = b.node("Reshape", [emb, b.const("emb_shape", np.array(target, dtype=np.int64))], "unflat")
            emb_shape = ("B", *target[1:])
        else:
            emb_shape = (*key_shape, dim)
        if draw(st.integers(0, 3)) == 0:
            graph_outputs.append((emb, dtype, emb_shape))
        features.append((emb, dtype, emb_shape))

    # tables with other readers (e.g. a tied output projection): they must stay in the model
    kept = {tables[i][0] for i in draw(st.sets(st.integers(0, len(tables) - 1), max_size=2))}
    extras = []
    for table in sorted(kept):
        dtype = next(t[3] for t in tables if t[0] == table)
        src = table
        if draw(st.booleans()):  # through the lookup's own Identity, or a new one
            src = weights[table] if table in weights and draw(st.booleans()) else b.node("Identity", [table], "tied")
        total = b.node("ReduceSum", [src], "table_sum", keepdims=0)
        extras.append(b.node("Cast", [total], "table_sum_f32", to=TensorProto.FLOAT) if dtype != "float32"
                      else total)

    # keys read by the dense part too (the lookup must not take them away)
    for key in keys:
        if all(isinstance(d, int) for d in key.shape[1:]) and draw(st.integers(0, 4)) == 0:
            x = b.node("Cast", [key.name], "keys_f32", to=TensorProto.FLOAT)
            features.append((x, "float32", key.shape))

    # dense part
    flat = []
    for emb, dtype, shape in features:
        x = b.node("Cast", [emb], "emb_f32", to=TensorProto.FLOAT) if dtype != "float32" else emb
        dynamic = not all(isinstance(d, int) for d in shape[1:])
        if dynamic or (len(shape) >= 3 and draw(st.booleans())):  # sum-pool like EmbeddingBag
            x = b.node("ReduceSum", [x, b.const("axes", np.array([1], dtype=np.int64))], "pool", keepdims=0)
            shape = (shape[0], *shape[2:])
        if draw(st.integers(0, 2)) == 0:
            x = b.node("Relu", [x])
        width = int(np.prod(shape[1:]))
        flat.append((b.node("Flatten", [x], axis=1) if len(shape) != 2 else x, width))
    dense = {}
    for d in range(draw(st.integers(0, 2))):
        width = draw(st.integers(1, 16))
        dense[f"dense{d}"] = width
        flat.append((f"dense{d}", width))
        b.recipe.append(f"input dense{d}: float32['B', {width}]")
    flat = draw(st.permutations(flat))
    # pairwise Add of features of the same width (like DLRM's interaction, simplified)
    merged, widths = [], {}
    for tensor, width in flat:
        if width in widths and draw(st.booleans()):
            i = widths.pop(width)
            merged[i] = (b.node("Add", [merged[i][0], tensor]), width)
        else:
            widths[width] = len(merged)
            merged.append((tensor, width))
    x = b.node("Concat", [t for t, _ in merged], axis=1) if len(merged) > 1 else merged[0][0]
    width = sum(w for _, w in merged)
    hidden = draw(st.integers(1, 16))
    x = b.node("MatMul", [x, b.const("w", (b.rng.standard_normal((width, hidden)) / np.sqrt(width))
                                     .astype(np.float32))])
    x = b.node("Add", [x, b.const("bias", b.rng.standard_normal(hidden).astype(np.float32))])
    if draw(st.booleans()):
        x = b.node("Relu", [x])
    for extra in extras:
        x = b.node("Add", [x, extra], "plus_table_sum")
    out = b.node("Identity", [x], "out")
    b.recipe.append(f"outputs: {[out, *(t for t, _, _ in graph_outputs)]}")

    inputs = [helper.make_tensor_value_info(k.name, _TENSOR[k.dtype], list(k.shape)) for k in keys]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", w]) for n, w in dense.items()]
    outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["B", hidden])]
    outputs += [helper.make_tensor_value_info(t, _TENSOR[d], list(s)) for t, d, s in graph_outputs]
    graph = helper.make_graph(b.nodes, "dlrm", inputs, outputs, b.inits)
    opset = draw(st.integers(13, 21))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if draw(st.booleans()):  # exporters write value_info for intermediate tensors
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)  # the generator itself must be right
    external = draw(st.integers(0, 3)) == 0
    b.recipe.append(f"opset {opset}, {len(model.graph.value_info)} value_info, external data: {external}")
    dynamic = [MAX_N * int(np.prod(k.shape[2:], dtype=np.int64)) for k in keys
               if len(k.shape) > 1 and isinstance(k.shape[1], str)]
    return Case(model=model, keys=keys, dense=dense, lookups=len(table_ids), kept_tables=kept,
                max_keys_per_sample=max(dynamic) if dynamic else None, external=external,
                all_tables={t[0] for t in tables}, recipe=b.recipe)


def _feeds(case: Case, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for key in case.keys:
        shape = (batch, *(int(rng.integers(1, MAX_N + 1)) if isinstance(d, str) else d for d in key.shape[1:]))
        feeds[key.name] = rng.integers(0, key.high or 1, size=shape).astype(key.dtype)
    for name, width in case.dense.items():
        feeds[name] = rng.standard_normal((batch, width)).astype(np.float32)
    return feeds


def _tables_in(model: onnx.ModelProto) -> set[str]:
    names = {i.name for i in model.graph.initializer}
    names |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return names


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("properties")


_counter = iter(range(10**9))


@settings(PROFILE)
@given(case=dlrm_models(), key_dtype=st.sampled_from(["int32", "int64"]))
def test_random_dlrm_rewrites_validly_exactly_and_idempotently(workdir, case, key_dtype):
    root = workdir / f"case{next(_counter)}"
    root.mkdir()
    source = root / "model.onnx"
    # Small shape constants stay inline: onnxruntime cannot load a ReduceSum whose axes are external,
    # (hps_surgeon reads them: see the regression test at the end).
    onnx.save_model(case.model, str(source), save_as_external_data=case.external, location="model.onnx.data",
                    size_threshold=1024)
    note(f"source model: {source}")

    scanned = hps_surgeon.scan(source)
    assert len(scanned.lookups) == case.lookups, scanned.not_rewritable

    result = hps_surgeon.rewrite(source, root / "out", key_dtype=key_dtype,
                                 max_keys_per_sample=case.max_keys_per_sample)
    assert result.written
    onnx.checker.check_model(str(result.model_path), full_check=True)
    assert errors(validate.validate(result.model_path, result.config_path)) == []

    rewritten = onnx.load_model(str(result.model_path))
    hps_nodes = [n for n in rewritten.graph.node if n.op_type == "HPS_TRT"]
    assert len(hps_nodes) == len(scanned.lookups) == len(result.plan.lookups)
    assert {t.tensor for t in result.plan.tables} == case.all_tables
    assert {t.tensor for t in result.plan.tables if t.kept_in_model} == case.kept_tables
    remaining = _tables_in(rewritten) & case.all_tables
    assert remaining == case.kept_tables
    assert not [n.name for n in rewritten.graph.node if n.op_type == "Gather" and n.input[0] in case.all_tables]
    assert [i.name for i in rewritten.graph.input] == [i.name for i in case.model.graph.input]
    assert [o.name for o in rewritten.graph.output] == [o.name for o in case.model.graph.output]

    runner = SplitRunner(result.model_path, ReferenceLookup(result.config_path).lookup)
    for batch, seed in ((1, 0), (3, 1)):
        feeds = _feeds(case, batch, seed)
        expected = run_onnxruntime(source, feeds)
        actual = runner.run(feeds)
        for name, value in expected.items():
            assert actual[name].dtype == value.dtype, name
            assert actual[name].shape == value.shape, name
            np.testing.assert_array_equal(actual[name], value, err_msg=f"output {name}, batch {batch}")

    again = hps_surgeon.rewrite(result.model_path, root / "again", key_dtype=key_dtype)
    assert not again.written
    assert not (root / "again").exists()
    assert hps_surgeon.scan(result.model_path).lookups == ()


# --- known bugs, found by the property test; minimal reproducers --------------------------------

def _two_lookups(shared: str) -> onnx.ModelProto:
    """Two lookups sharing one glue node: a Cast of their keys or an Identity of their table."""
    tables = [numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "t0"),
              numpy_helper.from_array(np.arange(20, dtype=np.float32).reshape(4, 5), "t1")]
    if shared == "cast":
        nodes = [helper.make_node("Cast", ["k"], ["k64"], name="cast", to=TensorProto.INT64),
                 helper.make_node("Gather", ["t0", "k64"], ["e0"], name="lookup0"),
                 helper.make_node("Gather", ["t1", "k64"], ["e1"], name="lookup1")]
        dims = (3, 5)
    else:
        nodes = [helper.make_node("Identity", ["t0"], ["w"], name="weight"),
                 helper.make_node("Gather", ["w", "k"], ["e0"], name="lookup0"),
                 helper.make_node("Gather", ["w", "k"], ["e1"], name="lookup1")]
        dims = (3, 3)
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("k", TensorProto.INT32, ["B", 2])],
        [helper.make_tensor_value_info(f"e{i}", TensorProto.FLOAT, ["B", 2, d]) for i, d in enumerate(dims)],
        tables if shared == "cast" else tables[:1])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


@pytest.mark.parametrize("shared", ["cast", "identity"])
def test_lookups_sharing_glue_are_all_rewritten(shared, tmp_path):
    model = _two_lookups(shared)
    scanned = hps_surgeon.scan(model)
    assert len(scanned.lookups) + len(scanned.not_rewritable) == 2
    result = hps_surgeon.rewrite(model, tmp_path / "out")
    rewritten = onnx.load_model(str(result.model_path))
    assert [n.name for n in rewritten.graph.node if n.op_type == "Gather"] == []


def test_bfloat16_table_rewrites_exactly(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    values = np.random.default_rng(0).standard_normal((6, 3)).astype(ml_dtypes.bfloat16)
    graph = helper.make_graph(  # float32 output: onnxruntime's Python API cannot return bfloat16 arrays
        [helper.make_node("Gather", ["t", "k"], ["e16"], name="lookup"),
         helper.make_node("Cast", ["e16"], ["e"], name="widen", to=TensorProto.FLOAT)], "g",
        [helper.make_tensor_value_info("k", TensorProto.INT64, ["B", 2])],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["B", 2, 3])], [numpy_helper.from_array(values, "t")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.save_model(model, str(tmp_path / "m.onnx"))
    result = hps_surgeon.rewrite(tmp_path / "m.onnx", tmp_path / "out")
    feeds = {"k": np.array([[0, 5], [1, 2]], np.int64)}
    actual = SplitRunner(result.model_path, ReferenceLookup(result.config_path).lookup).run(feeds)
    expected = run_onnxruntime(tmp_path / "m.onnx", feeds)
    np.testing.assert_array_equal(actual["e"], expected["e"])


def test_shape_constants_in_external_data_are_read_from_the_model_folder(tmp_path, monkeypatch):
    inits = [numpy_helper.from_array(np.ones((4, 3), np.float32), "table"),
             numpy_helper.from_array(np.array([-1], np.int64), "flat_shape"),
             numpy_helper.from_array(np.array([-1, 2, 3], np.int64), "out_shape")]
    graph = helper.make_graph([  # tf2onnx's flat-keys lookup
        helper.make_node("Reshape", ["k", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("Gather", ["table", "flat"], ["g"], name="lookup"),
        helper.make_node("Reshape", ["g", "out_shape"], ["e"], name="unflatten")], "g",
        [helper.make_tensor_value_info("k", TensorProto.INT64, ["B", 2])],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["B", 2, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    (tmp_path / "src").mkdir()
    onnx.save_model(model, str(tmp_path / "src/m.onnx"), save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0)
    monkeypatch.chdir(tmp_path)
    assert len(hps_surgeon.scan(tmp_path / "src/m.onnx").lookups) == 1
