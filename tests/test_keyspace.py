"""Key tracing (verify/keyspace.py) on small models, one per key structure exporters emit.

Each model is built with onnx.helper, rewritten, and verified; the test checks what the tracer
found for each input column (the values it inverts to, and how) and that the verification then saw
the keys it should: the mechanism is one (evaluate the key subgraph, invert it), the structures many.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import hps_surgeon
from hps_surgeon.verify import verify
from hps_surgeon.verify.keyspace import Column, column_elements

from support import tampered_copy


def build(path: Path, inputs: list, nodes: list, initializers: list, output: str = "out",
          opsets=(("", 17),)) -> Path:
    """A model reading `inputs`, computing `nodes`, with float output `output`."""
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model = onnx.shape_inference.infer_shapes(model)  # onnx.checker requires a shape on every graph output
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def table(name: str, rows: int, dim: int = 4, seed: int = 0) -> onnx.TensorProto:
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32), name)


def const(name: str, values, dtype=np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def rewritten_and_verified(source: Path, tmp_path: Path, **options):
    result = hps_surgeon.rewrite(source, tmp_path / "rw")
    report = verify(source, result.model_path, result.config_path, **options)
    return result, report


def by_column(report) -> dict[str, list]:
    found: dict[str, list] = {}
    for c in report.columns:
        found.setdefault(c.column.label, []).append(c)
    return found


def test_offsets_per_column_are_inverted_by_bisection(tmp_path):
    """pytorch-fm: x[B,2] + const[1,2] -> Gather(table[400]): column j reaches rows offset_j + x."""
    source = build(tmp_path / "m.onnx", [helper.make_tensor_value_info("x", TensorProto.INT64, ["B", 2])],
                   [helper.make_node("Add", ["x", "offsets"], ["k"]),
                    helper.make_node("Gather", ["emb", "k"], ["out"])],
                   [table("emb", 400), const("offsets", [[100, 250]])])
    _, report = rewritten_and_verified(source, tmp_path)
    assert report.passed
    columns = by_column(report)
    (first,), (second,) = columns["x[..., 0]"], columns["x[..., 1]"]
    assert first.how == second.how == "bisection"
    np.testing.assert_array_equal(first.values + 100, first.keys)
    np.testing.assert_array_equal(second.values + 250, second.keys)
    assert first.values.min() == -100 and second.values.max() == 149  # the table's ends, reached
    (table_coverage,) = report.tables
    assert table_coverage.existing >= 64 and report.coverage[0].missing == 0


def test_negative_id_wrap_and_float_input(tmp_path):
    """Keras 3: float x -> Cast(int32) -> Where(x < 0, x + rows, x) -> Gather: identity on x >= 0."""
    source = build(tmp_path / "m.onnx", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 1])],
                   [helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT32),
                    helper.make_node("Less", ["i", "zero"], ["neg"]),
                    helper.make_node("Add", ["i", "rows"], ["wrapped"]),
                    helper.make_node("Where", ["neg", "wrapped", "i"], ["k"]),
                    helper.make_node("Gather", ["emb", "k"], ["out"])],
                   [table("emb", 90), const("zero", 0, np.int32), const("rows", 90, np.int32)])
    _, report = rewritten_and_verified(source, tmp_path)
    assert report.passed
    (found,) = by_column(report)["x[..., 0]"]
    assert found.how == "identity" and found.values.min() >= 0
    assert report.tables[0].existing == 90


def test_a_lookup_through_a_constant_map_is_scanned(tmp_path):
    """ids -> Gather(const map) -> row: not monotone, so the small ids are scanned."""
    mapping = (np.arange(500) * 7 + 3) % 200
    source = build(tmp_path / "m.onnx", [helper.make_tensor_value_info("x", TensorProto.INT64, ["B", 3])],
                   [helper.make_node("Gather", ["map", "x"], ["mapped"]),
                    helper.make_node("Mod", ["mapped", "rows"], ["k"]),
                    helper.make_node("Gather", ["emb", "k"], ["out"])],
                   [table("emb", 200), const("map", mapping), const("rows", 200)])
    result, report = rewritten_and_verified(source, tmp_path)
    assert report.passed
    for label in ("x[..., 0]", "x[..., 1]", "x[..., 2]"):
        (found,) = by_column(report)[label]
        assert found.how == "scan"
        np.testing.assert_array_equal(mapping[found.values], found.keys)
    assert report.tables[0].existing >= 64


def test_unique_makes_a_set_and_identity_still_finds_the_keys(tmp_path):
    """tf's sparse lookups: Unique(ids) -> Gather(table): the key count follows the data."""
    source = build(tmp_path / "m.onnx", [helper.make_tensor_value_info("x", TensorProto.INT64, ["B", 2])],
                   [helper.make_node("Reshape", ["x", "flat"], ["ids"]),
                    helper.make_node("Unique", ["ids"], ["u", "", "inverse", ""], sorted=0),
                    helper.make_node("Gather", ["emb", "u"], ["rows"]),
                    helper.make_node("ReduceSum", ["rows"], ["out"], keepdims=0)],
                   [table("emb", 150), const("flat", [-1])])
    _, report = rewritten_and_verified(source, tmp_path)
    assert report.passed
    for label in ("x[..., 0]", "x[..., 1]"):
        (found,) = by_column(report)[label]
        assert found.as_set and found.how == "identity"
    assert report.tables[0].existing >= 64


def test_one_input_feeding_three_tables_element_by_element(tmp_path):
    """torchrec (legacy): values[16] -> Split([7,4,5]) -> three tables: each element finds its own."""
    sizes = [7, 4, 5]
    source = build(tmp_path / "m.onnx", [helper.make_tensor_value_info("values", TensorProto.INT64, [16])],
                   [helper.make_node("Split", ["values", "sizes"], ["a", "b", "c"]),
                    helper.make_node("Gather", ["t_a", "a"], ["ea"]),
                    helper.make_node("Gather", ["t_b", "b"], ["eb"]),
                    helper.make_node("Gather", ["t_c", "c"], ["ec"]),
                    helper.make_node("Concat", ["ea", "eb", "ec"], ["out"], axis=0)],
                   [table("t_a", 50), table("t_b", 80, seed=1), table("t_c", 20, seed=2), const("sizes", sizes)])
    _, report = rewritten_and_verified(source, tmp_path)
    assert report.passed
    groups = {c.nodes[0]: c.elements for c in by_column(report)["values"]}
    assert sorted(groups.values()) == [tuple(range(0, 7)), tuple(range(7, 11)), tuple(range(11, 16))]
    # static dims: one feed shape; feeds were added until every table reached its floor
    assert report.batch_sizes == (16,) and all(t.enough for t in report.tables)
    assert report.iterations > 2


def test_strings_come_from_the_category_mapper_vocabulary(tmp_path):
    """Keras StringLookup: string[B,1] -> CategoryMapper -> Gather: only words of the vocabulary reach rows."""
    words = [f"city{i}" for i in range(30)]
    source = build(tmp_path / "m.onnx", [helper.make_tensor_value_info("city", TensorProto.STRING, ["B", 1])],
                   [helper.make_node("CategoryMapper", ["city"], ["k"], domain="ai.onnx.ml", cats_strings=words,
                                     cats_int64s=list(range(1, 31)), default_int64=0),
                    helper.make_node("Gather", ["emb", "k"], ["out"])],
                   [table("emb", 31)], opsets=(("", 17), ("ai.onnx.ml", 2)))
    _, report = rewritten_and_verified(source, tmp_path)
    assert report.passed
    (found,) = by_column(report)["city[..., 0]"]
    assert found.how == "vocabulary" and set(found.values) == {"", *words}  # "" is out of vocabulary: row 0
    assert report.tables[0].existing == 31


def test_a_column_that_reaches_no_key_is_left_to_the_data_loader(tmp_path):
    """deepctr-torch: X[:, 0] is dense, X[:, 1] holds ids as floats (Slice -> Cast -> Gather)."""
    source = build(tmp_path / "m.onnx", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["B", 2])],
                   [helper.make_node("Slice", ["X", "one", "two", "axis1"], ["ids_f"]),
                    helper.make_node("Cast", ["ids_f"], ["ids"], to=TensorProto.INT64),
                    helper.make_node("Gather", ["emb", "ids"], ["e"]),
                    helper.make_node("ReduceSum", ["e", "axes"], ["s"], keepdims=0),
                    helper.make_node("Add", ["s", "X"], ["out"])],
                   [table("emb", 70), const("one", [1]), const("two", [2]), const("axis1", [1]),
                    const("axes", [2])])
    _, report = rewritten_and_verified(source, tmp_path)
    assert report.passed
    assert sorted(by_column(report)) == ["X[..., 1]"]


def test_rows_no_input_can_reach_are_not_asked_for(tmp_path):
    """keys = Min(x, 3): only rows 0-3 of 100 can ever be looked up. Tracing finds exactly those, the floor
    asks for them (not for 64 rows no feed can reach), and verify passes saying so. A wrong row among them
    fails; wrong rows the model can never read do not change what it computes."""
    source = build(tmp_path / "m.onnx", [helper.make_tensor_value_info("x", TensorProto.INT64, ["B", 2])],
                   [helper.make_node("Min", ["x", "three"], ["k"]),
                    helper.make_node("Gather", ["emb", "k"], ["out"])],
                   [table("emb", 100), const("three", 3)])
    result, report = rewritten_and_verified(source, tmp_path)
    assert report.verdict == "passed"
    (seen,) = report.tables
    assert (seen.existing, seen.rows, seen.floor) == (4, 100, 4)
    assert seen.rule == "every key the inputs can reach, 4" and seen.complete
    copy = tampered_copy(result.out_dir, tmp_path / "tampered")  # rows 1-99
    assert verify(source, copy / "model.onnx", copy / "hps_config.json").verdict == "failed"
    unreachable = tampered_copy(result.out_dir, tmp_path / "unreachable",
                                lambda rows: np.concatenate([rows[:3], rows[3:] + 1.0]))  # rows 4-99 only
    assert verify(source, unreachable / "model.onnx", unreachable / "hps_config.json").verdict == "passed"


def test_column_elements_follow_the_last_axis():
    np.testing.assert_array_equal(column_elements(Column("x", 1), (2, 3)), [1, 4])
    np.testing.assert_array_equal(column_elements(Column("x", None), (4,)), [0, 1, 2, 3])
    np.testing.assert_array_equal(column_elements(Column("x", 0), (2, 2, 2)), [0, 2, 4, 6])


@pytest.mark.parametrize("dim_param", ["L", None])
def test_open_sequence_dims_take_max_keys_per_sample(dim_param, tmp_path):
    """torch-rechub DIN: hist[B, L] with L open: fed at the configured keys per sample, or at the option."""
    source = build(tmp_path / "m.onnx", [helper.make_tensor_value_info("hist", TensorProto.INT64, ["B", dim_param])],
                   [helper.make_node("Gather", ["emb", "hist"], ["e"]),
                    helper.make_node("ReduceSum", ["e", "axes"], ["out"], keepdims=0)],
                   [table("emb", 100), const("axes", [1])])
    result = hps_surgeon.rewrite(source, tmp_path / "rw", max_keys_per_sample=6)
    report = verify(source, result.model_path, result.config_path)
    assert report.passed and report.shapes["hist"] == [[1, 6], [64, 6]]
    report = verify(source, result.model_path, result.config_path, max_keys_per_sample=3)
    assert report.shapes["hist"] == [[1, 3], [64, 3]]


# --- keys no input's values reach (issue 20, item 3) ---------------------------------------------------

def _positions_model(path: Path, add_input: bool, second_reader: bool = False) -> Path:
    """x [B, L] int64; positions = Range(0, Shape(x)[1]) (+ x when add_input) look up `pos` [16, 4].

        x ── Shape ── Gather(1) ── Range(0, ·, 1) ──[Add x]── Gather(pos) ── out
    """
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "one"], ["length"], axis=0),
             helper.make_node("Range", ["zero", "length", "one"], ["positions"])]
    keys = "positions"
    if add_input:
        nodes.append(helper.make_node("Add", ["x", "positions"], ["shifted"]))
        keys = "shifted"
    looked_up = "rows" if second_reader else "out"
    nodes.append(helper.make_node("Gather", ["pos", keys], [looked_up], name="position_lookup"))
    if second_reader:
        nodes += [helper.make_node("Gather", ["pos", "x"], ["by_x"], name="input_lookup"),
                  helper.make_node("Add", ["rows", "by_x"], ["out"])]
    return build(path, [helper.make_tensor_value_info("x", TensorProto.INT64, ["B", 4])], nodes,
                 [table("pos", 16), const("zero", 0), const("one", 1)])


def test_keys_from_range_over_a_shape_stay_in_the_model(tmp_path):
    source = _positions_model(tmp_path / "m.onnx", add_input=False)
    found = hps_surgeon.scan(source)
    assert found.lookups == ()
    (held,) = found.not_rewritable
    assert held.node == "position_lookup" and "its keys 'positions' depend on no graph input's values" in held.reason
    result = hps_surgeon.rewrite(source, tmp_path / "rw")
    assert not result.written and [m["node"] for m in result.report["not_rewritten"]] == ["position_lookup"]


@pytest.mark.parametrize("add_input, second_reader", [(True, False), (False, True)])
def test_keys_an_input_moves_or_a_table_an_input_also_reads_are_rewritten(add_input, second_reader, tmp_path):
    """x + positions reads x's values; a fixed-key lookup of a table that x also reads goes along with it."""
    source = _positions_model(tmp_path / "m.onnx", add_input, second_reader)
    found = hps_surgeon.scan(source)
    assert found.not_rewritable == () and len(found.lookups) == 1 + second_reader
    result, report = rewritten_and_verified(source, tmp_path, batch_sizes=(8,))
    assert report.verdict == "passed"
    fixed = {c.node: c.fixed for c in report.coverage}
    assert fixed == ({"hps_trt/position_lookup": True, "hps_trt/input_lookup": False} if second_reader
                     else {"hps_trt/position_lookup": False})
