"""Pattern coverage across exporters (EmbeddingBag, TF pooling/sparse lookups, HugeCTR layouts,
fused and hashed keys, shared and tied tables, refusals): exact numerics and honest reasons."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import hps_surgeon
from hps_surgeon.verify.runner import SplitRunner
from hps_surgeon.hps.reference import ReferenceLookup
from hps_surgeon.verify import verify

from support import FIXTURES, run_onnxruntime

BAGS = [f"torch/embedding_bag_{case}_{exporter}.onnx"
        for case in ("sum_2d", "mean_2d", "max_2d", "sum_offsets", "mean_offsets", "max_offsets", "sum_psw_2d",
                     "sum_psw_offsets")
        for exporter in ("legacy", "dynamo")]
# fixture -> patterns of its HPS_TRT nodes
COVERED = {
    **{bag: ["torch.embedding_bag.loop_slice" if bag.endswith("_legacy.onnx") else "generic.embedding.gather"]
       for bag in BAGS},
    **{f"torch/{case}_{exporter}.onnx": ["generic.embedding.gather"]
       for case in ("fused_table_offsets", "hashed_remainder", "hashed_abs_remainder")
       for exporter in ("legacy", "dynamo")},
    "tf/keras_embedding_global_avg_pool.onnx": ["generic.embedding.gather"],
    "tf/keras_embedding_reduce_sum.onnx": ["generic.embedding.gather"],
    **{f"tf/tf_nn_{safe}embedding_lookup_sparse_{combiner}.onnx": ["generic.embedding.gather"]
       for safe in ("", "safe_") for combiner in ("sum", "mean", "sqrtn")},
    "hugectr/dlrm_convert_embedding_sum.onnx": ["hugectr2onnx.embedding.hashed"],
    "hugectr/dlrm_convert_embedding_mean.onnx": ["hugectr2onnx.embedding.hashed"],
    "hugectr/wdl_convert_embedding.onnx": ["hugectr2onnx.embedding.hashed"] * 2,
}


@pytest.mark.parametrize("fixture", sorted(COVERED))
def test_rewrite_is_exact_and_scan_counts_match(fixture, tmp_path):
    source = FIXTURES / fixture
    result = hps_surgeon.rewrite(source, tmp_path / "rw")
    assert sorted(lp.pattern for lp in result.plan.lookups) == sorted(COVERED[fixture])
    assert len(hps_surgeon.scan(source).lookups) == len(COVERED[fixture])
    rewritten = onnx.load(str(result.model_path))
    assert sum(n.op_type == "HPS_TRT" for n in rewritten.graph.node) == len(COVERED[fixture])
    # verify (numerics and coverage) runs on every fixture in test_fixtures.py


def _offsets_feeds(source, rows, seed):
    """1-D keys with offsets: 5 bags, bag 2 empty; per-sample weights where the model takes them."""
    rng = np.random.default_rng(seed)
    inputs = {i.name for i in onnx.load(str(source), load_external_data=False).graph.input}
    feeds = {"keys": rng.integers(0, rows, size=12).astype(np.int64),
             "offsets": np.array([0, 3, 5, 5, 9], dtype=np.int64)}
    if "weights" in inputs:
        feeds["weights"] = rng.standard_normal(12).astype(np.float32)
    return feeds


@pytest.mark.parametrize("fixture", [b for b in BAGS if "offsets" in b and "max_offsets_legacy" not in b])
def test_embedding_bag_offsets_with_an_empty_bag(fixture, tmp_path):
    # (max_offsets_legacy gives -inf for an empty bag where torch gives 0: an exporter bug,
    # fixtures/README.md; the rewrite keeps it bit for bit, checked by the test above)
    source = FIXTURES / fixture
    result = hps_surgeon.rewrite(source, tmp_path / "rw")
    runner = SplitRunner(result.model_path, ReferenceLookup(result.config_path).lookup)
    for seed in range(3):
        feeds = _offsets_feeds(source, result.plan.tables[0].rows, seed)
        expected = run_onnxruntime(source, feeds)
        actual = runner.run(feeds)
        for name, value in expected.items():
            np.testing.assert_array_equal(actual[name], value)
        assert not np.any(expected["pooled"][2])  # the empty bag


def test_legacy_embedding_bag_is_hoisted_out_of_its_loop(tmp_path):
    result = hps_surgeon.rewrite(FIXTURES / "torch/embedding_bag_sum_offsets_legacy.onnx", tmp_path / "rw")
    graph = onnx.load(str(result.model_path)).graph
    assert [n.op_type for n in graph.node].count("HPS_TRT") == 1
    (loop,) = [n for n in graph.node if n.op_type == "Loop"]
    body = loop.attribute[0].g
    assert not any(n.op_type == "HPS_TRT" for n in body.node)
    assert not any(n.op_type == "Gather" and n.input[0] == "bag.weight" for n in body.node)
    assert "bag.weight" not in {t.name for t in graph.initializer}
    (rows,) = [n for n in body.node if n.name == "/bag/Slice_1/rows"]
    assert rows.op_type == "Slice" and rows.output == ["/bag/Gather_4_output_0"]
    assert any("hoisted out of its loop" in note for note in result.plan.lookups[0].notes)


def test_max_norm_is_refused_with_its_reason(tmp_path):
    source = FIXTURES / "torch/embedding_max_norm_dynamo.onnx"
    scan = hps_surgeon.scan(source)
    assert scan.lookups == ()
    reasons = {m.node: m.reason for m in scan.not_rewritable}
    assert reasons["node_embedding"].startswith(
        "node 'node_embedding' (Gather): nn.Embedding(max_norm=...) renormalises the rows of 'detach' at lookup time")
    assert "table 'detach' is also read by node 'node_embedding', which is refused" in reasons["node_Gather_2"]
    result = hps_surgeon.rewrite(source, tmp_path / "rw")
    assert not result.written and not (tmp_path / "rw").exists()


def test_hugectr_hash_is_folded_into_the_exported_keys(tmp_path):
    source = FIXTURES / "hugectr/dlrm_convert_embedding_sum.onnx"
    model = onnx.load(str(source))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    key_map, table = init["key_to_indice_hash_all_tables"], init["sparse_embedding1_embedding_table"]
    result = hps_surgeon.rewrite(source, tmp_path / "rw")
    folder = result.out_dir / result.plan.tables[0].folder
    keys = np.fromfile(folder / "key", dtype="<i8")
    np.testing.assert_array_equal(keys, np.flatnonzero(key_map))
    np.testing.assert_array_equal(np.fromfile(folder / "emb_vector", dtype="<f4").reshape(-1, 8), table[key_map[keys]])
    rewritten = onnx.load(str(result.model_path))
    assert "key_to_indice_hash_all_tables" not in {t.name for t in rewritten.graph.initializer}
    assert [n.op_type for n in rewritten.graph.node][:5] == ["Cast", "Reshape", "HPS_TRT", "Reshape", "ReduceSum"]
    assert json.loads(result.config_path.read_text())["models"][0]["default_value_for_each_table"] == [0.0]


def test_hugectr_nonconstant_default_row_is_refused():
    scan = hps_surgeon.scan(FIXTURES / "hugectr/dlrm_nonconstant_default.onnx")
    assert scan.lookups == ()
    (refusal,) = [m for m in scan.not_rewritable if m.pattern == "hugectr2onnx.embedding.hashed"]
    assert refusal.refused and refusal.reason == (
        "node 'Gather_1' (Gather): row 0 of 'sparse_embedding1_embedding_table', which keys missing from "
        "'key_to_indice_hash_all_tables' read, is not one constant across its components; HPS_TRT's "
        "default_value_for_each_table is one number per table")


SPARSE_FOLDER = FIXTURES / "hugectr/sparse_embedding1_sparse_0.model"


@pytest.mark.parametrize("combiner,nnz", [("sum", 1), ("sum", 3), ("mean", 2)])
def test_hugectr_sparse_model_folder_attaches_a_lookup(combiner, nnz, tmp_path):
    source = FIXTURES / "hugectr/dlrm_sparse_input.onnx"
    result = hps_surgeon.rewrite(source, tmp_path / "rw",
                                 hugectr_sparse_models=[f"sparse_embedding1={SPARSE_FOLDER}:{combiner}:{nnz}"])
    model = onnx.load(str(result.model_path))
    assert [i.name for i in model.graph.input] == ["dense", "sparse_embedding1_keys"]
    folder = result.out_dir / result.plan.tables[0].folder
    assert (folder / "emb_vector").read_bytes() == (SPARSE_FOLDER / "emb_vector").read_bytes()
    stored = np.fromfile(SPARSE_FOLDER / "key", dtype="<i8")
    vectors = np.fromfile(SPARSE_FOLDER / "emb_vector", dtype="<f4").reshape(-1, 8)
    rng = np.random.default_rng(nnz)
    shape = (5, 4) if nnz == 1 else (5, 4, nnz)
    keys = np.where(rng.random(shape) < 0.8, rng.choice(stored, size=shape), 5000)  # some missing keys
    looked_up = np.where((keys == stored[np.minimum(np.searchsorted(stored, keys), stored.size - 1)])[..., None],
                         vectors[np.minimum(np.searchsorted(stored, keys), stored.size - 1)], 0.0).astype(np.float32)
    embedding = looked_up if nnz == 1 else (looked_up.sum(2) if combiner == "sum" else looked_up.mean(2))
    dense = rng.standard_normal((5, 13)).astype(np.float32)
    expected = run_onnxruntime(source, {"dense": dense, "sparse_embedding1": embedding.astype(np.float32)})
    actual = SplitRunner(result.model_path, ReferenceLookup(result.config_path).lookup).run(
        {"dense": dense, "sparse_embedding1_keys": keys.astype(np.int64)})
    np.testing.assert_allclose(actual["output"], expected["output"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("arg,message", [
    ("sparse_embedding1", "--hugectr-sparse-model 'sparse_embedding1': expected NAME=FOLDER[:combiner][:nnz]"),
    (f"sparse_embedding1={SPARSE_FOLDER}:max", f"--hugectr-sparse-model 'sparse_embedding1={SPARSE_FOLDER}:max': "
     "'max' is neither a combiner (sum/mean) nor an nnz (a positive integer)"),
    (f"dense_x={SPARSE_FOLDER}", "--hugectr-sparse-model: 'dense_x' is not an input of"),
    (f"dense={SPARSE_FOLDER}", "--hugectr-sparse-model: input 'dense' is float32 [None, 13]; an embedding output"),
    (f"sparse_embedding1={FIXTURES}", f"--hugectr-sparse-model: {FIXTURES} has no key and emb_vector files"),
])
def test_hugectr_sparse_model_bad_arguments(arg, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hps_surgeon", "rewrite", str(FIXTURES / "hugectr/dlrm_sparse_input.onnx"),
                           "--out", str(tmp_path / "rw"), "--hugectr-sparse-model", arg], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"hps-surgeon: error: {message}")
    assert not (tmp_path / "rw").exists()


def test_tied_table_is_kept_for_its_other_reader_and_reported(tmp_path):
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((50, 4)).astype(np.float32), "emb.weight")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb.weight", "keys"], ["h"], name="lookup"),
         helper.make_node("Transpose", ["emb.weight"], ["w_t"], name="tie", perm=[1, 0]),
         helper.make_node("MatMul", ["h", "w_t"], ["logits"], name="project")], "tied",
        [helper.make_tensor_value_info("keys", TensorProto.INT64, ["B", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 3, 50])], [weight])
    source = tmp_path / "tied.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    result = hps_surgeon.rewrite(source, tmp_path / "rw")
    assert "emb.weight" in {t.name for t in onnx.load(str(result.model_path)).graph.initializer}
    report = json.loads((result.out_dir / "report.json").read_text())
    assert report["tables"][0]["kept_in_model"] is True
    assert "table 'emb.weight' is kept in the model: still read by tie" in report["hps_trt_nodes"][0]["notes"]
    assert verify(source, result.model_path, result.config_path).passed


WDL = FIXTURES / "hugectr/wdl_convert_embedding.onnx"
WIDE_FOLDER, DEEP_FOLDER = FIXTURES / "hugectr/wdl_wide_sparse_0.model", FIXTURES / "hugectr/wdl_deep_sparse_1.model"


def test_shared_hugectr_key_map_reports_other_tables_keys(tmp_path):
    # hugectr2onnx fills one map for all embeddings, numbering each table's keys 1..n
    # (HugeCTR onnx_converter/hugectr2onnx/hugectr_loader.py:154, :226-237): folding it into the wide
    # table (rows 1..100) also stores the deep table's keys numbered 1..100.
    result = hps_surgeon.rewrite(WDL, tmp_path / "rw")
    report = json.loads((result.out_dir / "report.json").read_text())
    assert [(t["tensor"], t["rows"], t["other_tables_keys"]) for t in report["tables"]] == [
        ("wide_embedding_embedding_table", 175, [100, 100]), ("deep_embedding_embedding_table", 225, [75, 75])]
    wide = next(lp for lp in report["hps_trt_nodes"] if lp["table_id"] == 0)
    assert ("the key map is shared by the model's HugeCTR embeddings (hugectr2onnx numbers each table's keys 1..n in "
            "one map): 100 of the 175 keys stored belong to other tables; they are kept since ONNX reads this table's "
            "rows for them; pass --hugectr-sparse-model wide_embedding=FOLDER (the HugeCTR sparse model it was "
            "converted from) to store exactly the table's own keys") in wide["notes"]


def test_sparse_model_folders_give_each_hashed_table_exactly_its_own_keys(tmp_path):
    result = hps_surgeon.rewrite(WDL, tmp_path / "rw", hugectr_sparse_models=[
        f"wide_embedding={WIDE_FOLDER}", f"deep_embedding_embedding_table={DEEP_FOLDER}"])
    for table, folder in zip(result.plan.tables, (WIDE_FOLDER, DEEP_FOLDER)):
        for name in ("key", "emb_vector"):  # byte-identical to HugeCTR's own sparse files
            assert (result.out_dir / table.folder / name).read_bytes() == (folder / name).read_bytes()
    assert [(t.rows, t.other_tables_keys) for t in result.plan.tables] == [(75, (0, 0)), (150, (0, 0))]
    assert result.plan.lookups[0].notes[0] == (
        f"HugeCTR key map 'key_to_indice_hash_all_tables' replaced by the table's own 75 keys, copied with their "
        f"vectors from {WIDE_FOLDER}: other tables' keys, which the shared map sends to rows of this table in ONNX, "
        "return the default value (0.0) as in HugeCTR's HPS")
    # keys drawn from each table's own key span: the two spans do not overlap, so ONNX agrees exactly
    assert verify(WDL, result.model_path, result.config_path, iterations=2, batch_sizes=(1, 6)).passed


def _tampered_folder(tmp_path, change):
    folder = tmp_path / "wide.model"
    folder.mkdir()
    keys = np.fromfile(WIDE_FOLDER / "key", dtype="<i8")
    vectors = np.fromfile(WIDE_FOLDER / "emb_vector", dtype="<f4")
    keys, vectors = change(keys.copy(), vectors.copy())
    keys.astype("<i8").tofile(folder / "key")
    vectors.astype("<f4").tofile(folder / "emb_vector")
    return folder


@pytest.mark.parametrize("change, message", [
    (lambda k, v: (k[::-1], v[::-1]), "key {k} (entry 0 of {folder}/key) maps to row 75 of "
     "'wide_embedding_embedding_table' in 'key_to_indice_hash_all_tables' where hugectr2onnx puts it at row 1: the "
     "folder is not the sparse model 'wide_embedding_embedding_table' was converted from"),
    (lambda k, v: (k, np.where(np.arange(v.size) == 3, v + 1, v)), "vector 3 of {folder}/emb_vector differs from "
     "row 4 of 'wide_embedding_embedding_table': the folder is not the sparse model the table was converted from"),
], ids=["key order", "vector"])
def test_sparse_model_folder_of_another_table_is_refused(tmp_path, change, message):
    folder = _tampered_folder(tmp_path, change)
    last_key = int(np.fromfile(WIDE_FOLDER / "key", dtype="<i8")[-1])
    with pytest.raises(hps_surgeon.SurgeonError) as info:
        hps_surgeon.rewrite(WDL, tmp_path / "rw", hugectr_sparse_models=[f"wide_embedding={folder}"])
    assert str(info.value) == f"--hugectr-sparse-model wide_embedding={folder}: " + message.format(
        k=last_key, folder=folder)
    assert not (tmp_path / "rw").exists()


def test_sparse_model_name_that_is_neither_input_nor_embedding(tmp_path):
    with pytest.raises(hps_surgeon.SurgeonError) as info:
        hps_surgeon.rewrite(WDL, tmp_path / "rw", hugectr_sparse_models=[f"tall_embedding={WIDE_FOLDER}"])
    assert str(info.value) == (
        f"--hugectr-sparse-model: 'tall_embedding' is not an input of {WDL} (inputs: dense, wide_data, deep_data) nor "
        "an embedding read through a HugeCTR key map (embeddings: wide_embedding_embedding_table, "
        "deep_embedding_embedding_table)")


def test_a_floor_above_what_tracing_sampled_is_not_lowered_and_the_advice_says_why(tmp_path):
    """At batch 1 tracing samples 64 of a 90-row table's keys: asked for 65, verify does not settle for the
    64 it sampled (they are not all the inputs reach); it says so, and the batch size it names fixes it."""
    source = FIXTURES / "torch/dlrm_small_legacy.onnx"
    result = hps_surgeon.rewrite(source, tmp_path / "rw")
    report = verify(source, result.model_path, result.config_path, batch_sizes=(1,), iterations=1,
                    min_distinct_keys=65)
    assert report.verdict == "inconclusive"
    short = {t.table: t for t in report.short_tables}
    table = short["emb_l_16_weight"]
    assert (table.rows, table.floor, table.complete) == (90, 65, False) and table.reachable < 65
    proc = subprocess.run([sys.executable, "-m", "hps_surgeon", "verify", source, result.model_path, "--config",
                           result.config_path, "--batch-sizes", "1", "--iterations", "1", "--min-distinct-keys", "65"],
                          capture_output=True, text=True)
    assert proc.returncode == 3
    assert "fewer than the floor, and generated feeds draw from those (tracing samples max(64, 4 x the largest " \
           "batch) keys per column, at most 256): raise the largest --batch-sizes" in proc.stderr
    report = verify(source, result.model_path, result.config_path, batch_sizes=(1, 64), min_distinct_keys=65)
    assert report.verdict == "passed"
