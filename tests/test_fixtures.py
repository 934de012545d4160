"""Every real-exporter fixture rewrites, passes the checker, and matches onnxruntime exactly."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import hps_surgeon
from hps_surgeon.verify.runner import SplitRunner
from hps_surgeon.hps.reference import ReferenceLookup

from support import FIXTURES, random_feeds, run_onnxruntime

# fixture -> number of lookups it holds (from fixtures/README.md)
LOOKUPS = {
    **{f"torch/{name}_{exporter}.onnx": count
       for name, count in [("embedding_int64", 1), ("embedding_int32", 1), ("embedding_padding_idx", 1),
                           ("embedding_rank1", 1), ("embedding_rank3", 1), ("shared_table", 2),
                           ("tied_weights", 1), ("dlrm_small", 26)]
       for exporter in ("legacy", "dynamo")},
    "tf/keras_embedding_int32.onnx": 1,
    "tf/keras_embedding_float_input.onnx": 1,
    "tf/keras_embedding_int64.onnx": 1,
    "tf/tf_nn_embedding_lookup.onnx": 1,
    "tf/tf_nn_embedding_lookup_reshaped.onnx": 1,
    "tf/tf_nn_embedding_lookup_reshaped_embedding_only.onnx": 1,
    "tf/tf_dlrm_small.onnx": 8,
}
TABLES = {"torch/shared_table_legacy.onnx": 1, "torch/shared_table_dynamo.onnx": 1}


@pytest.mark.parametrize("fixture", sorted(LOOKUPS))
@pytest.mark.parametrize("key_dtype", ["int32", "int64"])
def test_fixture_rewrites_and_matches_onnxruntime(fixture, key_dtype, tmp_path):
    source = FIXTURES / fixture
    result = hps_surgeon.rewrite(source, tmp_path / "out", key_dtype=key_dtype)

    rewritten = onnx.load_model(str(result.model_path))
    hps_nodes = [n for n in rewritten.graph.node if n.op_type == "HPS_TRT"]
    assert len(hps_nodes) == LOOKUPS[fixture]
    assert len(result.plan.tables) == TABLES.get(fixture, LOOKUPS[fixture])
    assert not [n for n in rewritten.graph.node if n.op_type == "Gather" and n.input[0] in
                {t.tensor for t in result.plan.tables}]
    original = onnx.load_model(str(source), load_external_data=False)
    assert [o.name for o in rewritten.graph.output] == [o.name for o in original.graph.output]
    assert [i.name for i in rewritten.graph.input] == [i.name for i in original.graph.input]
    for node in hps_nodes:
        keys_type = next(v for v in [*rewritten.graph.value_info, *rewritten.graph.input]
                         if v.name == node.input[0]).type.tensor_type
        assert onnx.helper.tensor_dtype_to_np_dtype(keys_type.elem_type) == np.dtype(key_dtype)
        assert len(keys_type.shape.dim) == 2

    min_rows = min(t.rows for t in result.plan.tables)
    runner = SplitRunner(result.model_path, ReferenceLookup(result.config_path).lookup)
    for batch, seed in ((1, 0), (7, 1), (64, 2)):
        feeds = random_feeds(source, batch, key_high=min_rows, seed=seed)
        expected = run_onnxruntime(source, feeds)
        actual = runner.run(feeds)
        for name, value in expected.items():
            assert actual[name].shape == value.shape, name
            np.testing.assert_array_equal(actual[name], value, err_msg=f"{fixture}: output {name}")


@pytest.mark.parametrize("fixture", ["torch/shared_table_legacy.onnx", "torch/shared_table_dynamo.onnx"])
def test_shared_table_is_exported_once_and_both_nodes_use_its_id(fixture, tmp_path):
    result = hps_surgeon.rewrite(FIXTURES / fixture, tmp_path / "out")
    report = json.loads((result.out_dir / "report.json").read_text())
    assert [n["table_id"] for n in report["hps_trt_nodes"]] == [0, 0]
    assert [t["tensor"] for t in report["tables"]] == ["emb.weight"]
    config = json.loads(result.config_path.read_text())
    assert config["models"][0]["maxnum_catfeature_query_per_table_per_sample"] == [26]


def test_dlrm_rewrite_keeps_dense_part_and_drops_every_table(tmp_path):
    source = FIXTURES / "torch/dlrm_small_legacy.onnx"
    result = hps_surgeon.rewrite(source, tmp_path / "out")
    rewritten = onnx.load_model(str(result.model_path))
    initializers = {t.name for t in rewritten.graph.initializer}
    assert not any(name.startswith("emb_l.") for name in initializers)
    assert {"top_l.0.weight", "bot_l.0.weight"} <= initializers or any("Gemm" == n.op_type for n in rewritten.graph.node)
    config = json.loads(result.config_path.read_text())["models"][0]
    assert config["maxnum_catfeature_query_per_table_per_sample"] == [1] * 26
    assert sorted(config["embedding_vecsize_per_table"]) == [16] * 26
