"""Every real-exporter fixture rewrites, passes the checker, and matches onnxruntime exactly; every fixture
(old and third-party) verifies with its coverage printed, and fails verify once its tables are tampered with."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

import hps_surgeon
from hps_surgeon.verify.runner import SplitRunner
from hps_surgeon.hps.reference import ReferenceLookup

from support import FIXTURES, random_feeds, run_onnxruntime, tampered_copy, tampered_row

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


# --- every fixture, old and new: verify passes with coverage, a tampered copy fails -----------------

THIRDPARTY = FIXTURES / "thirdparty"
MANIFEST = {e["file"]: e for e in yaml.safe_load((THIRDPARTY / "MANIFEST.yaml").read_text())["fixtures"]}
#: fixtures with no lookup to rewrite (fixtures/README.md says why)
NOTHING_TO_REWRITE = {"hugectr/dlrm_nonconstant_default.onnx", "hugectr/dlrm_sparse_input.onnx",
                      "torch/embedding_max_norm_dynamo.onnx"}
#: tf2onnx left TensorFlow ops in these: not ONNX, refused by scan and rewrite (test_cli_errors.py)
NOT_ONNX = {f"thirdparty/models/{name}" for name, e in MANIFEST.items()
            if e["framework_check"].startswith("not valid ONNX")}
REWRITE_OPTIONS = {"thirdparty/models/rechub_din_dynamic_history_dynamo.onnx": {"max_keys_per_sample": 6}}
#: the original runs only on jagged sizes that add up: real samples drive it (--inputs)
NEEDS_SAMPLES = {"thirdparty/models/torchrec_dlrm_kjt_static_dynamo.onnx"}
VERIFIABLE = sorted({str(p.relative_to(FIXTURES)) for p in [*FIXTURES.glob("*/*.onnx"), *THIRDPARTY.glob("models/*.onnx")]}
                    - NOTHING_TO_REWRITE - NOT_ONNX)


def torchrec_samples(path: Path, feeds: int = 48, seed: int = 0) -> Path:
    """torchrec KeyedJaggedTensor feeds (dense [4,4], values [16], lengths [12]) in Polygraphy's JSON format.

    Lengths are per feature (t_user, t_item, t_cat) then per sample and add up to the 16 values; each
    feature's values are keys of its table, cycling through it so every row comes up.
    """
    from polygraphy.json import save_json

    rng = np.random.default_rng(seed)
    rows = {"t_user": 50, "t_item": 80, "t_cat": 20}
    lengths = np.array([2, 1, 1, 1, 1, 2, 1, 1, 2, 2, 1, 1], dtype=np.int64)  # sums 5, 5, 6 per feature
    cursor = dict.fromkeys(rows, 0)
    samples = []
    for _ in range(feeds):
        values = []
        for feature, count in zip(rows, lengths.reshape(3, 4).sum(axis=1)):
            values += [(cursor[feature] + i) % rows[feature] for i in range(count)]
            cursor[feature] += int(count)
        samples.append(OrderedDict(dense=rng.standard_normal((4, 4)).astype(np.float32),
                                   values=np.array(values, dtype=np.int64), lengths=lengths))
    save_json(samples, str(path), description="torchrec samples")
    return path


def verify_cli(capsys, *args) -> tuple[int, str, str]:
    from hps_surgeon.cli import main

    code = main(["verify", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


SAMPLED = {f"thirdparty/models/{name}": THIRDPARTY / e["samples"]["file"] for name, e in MANIFEST.items()
           if "samples" in e}


def fixture_feeds(fixture: str, tmp_path: Path, source: str) -> list:
    """verify's feed options: generated, or the fixture's own real samples (--inputs)."""
    if source == "samples":
        return ["--inputs", SAMPLED[fixture]]
    return ["--inputs", torchrec_samples(tmp_path / "samples.json")] if fixture in NEEDS_SAMPLES else []


@pytest.mark.parametrize("fixture, source", [(f, "generated") for f in VERIFIABLE] +
                         [(f, "samples") for f in sorted(SAMPLED)])
def test_every_fixture_verifies_with_coverage_and_its_tampered_copies_fail(fixture, source, tmp_path, capsys):
    """Exit 0 with every table at its floor of distinct keys and every node's vectors bit-identical to
    the lookup it replaced; exit 1 once every row but row 0 changes (what a verify feeding only key 0,
    HugeCTR's own test, would pass); exit 1 again, naming the same node and key, when only one element
    of that one row is one ulp off, which no model output shows."""
    from hps_surgeon.verify import verify

    source_model = FIXTURES / fixture
    result = hps_surgeon.rewrite(source_model, tmp_path / "rw", **REWRITE_OPTIONS.get(fixture, {}))
    feeds = fixture_feeds(fixture, tmp_path, source)
    code, out, err = verify_cli(capsys, source_model, result.model_path, "--config", result.config_path, *feeds)
    assert code == 0, out + err
    assert "PASSED" in out and "coverage (vectors:" in out
    report = json.loads((result.out_dir / "report.json").read_text())
    nodes = [node["node"] for node in report["hps_trt_nodes"]]
    for node in nodes:
        assert node in out
    # every node's own vectors were compared with the lookup it replaced, none through the outputs only
    assert f"{len(nodes)} of {len(nodes)} HPS_TRT node(s) return exactly the original lookup's vectors" in out
    tampered = tampered_copy(result.out_dir, tmp_path / "tampered")
    code, out, err = verify_cli(capsys, source_model, tampered / "model.onnx", "--config",
                                tampered / "hps_config.json", *feeds)
    assert code == 1, out + err
    assert any(err.startswith(f"hps-surgeon: verify FAILED: HPS_TRT node '{node}' returns another vector than the "
                              "original lookup '") for node in nodes), err
    inputs = feeds[1] if feeds else None
    failed = verify(source_model, tampered / "model.onnx", tampered / "hps_config.json", inputs=inputs)
    wrong = failed.wrong_lookups[0]
    table = next(c.table for c in failed.coverage if c.node == wrong.node)
    one = tampered_row(result.out_dir, tmp_path / "one_row", table, wrong.row)
    found = verify(source_model, one / "model.onnx", one / "hps_config.json", inputs=inputs)
    assert found.verdict == "failed" and found.outputs_match, found.outputs
    readers = {c.node for c in found.coverage if c.table == table}
    assert {c.key for c in found.wrong_lookups} == {wrong.key} and {c.node for c in found.wrong_lookups} <= readers
    code, out, err = verify_cli(capsys, source_model, one / "model.onnx", "--config", one / "hps_config.json", *feeds)
    assert code == 1 and f"for key {wrong.key} (row {wrong.row} of table '{table}'; " in err, err
    assert err.rstrip().endswith("the model outputs agree within atol 1e-06, rtol 1e-05: only the per-lookup "
                                 "comparison sees this")

