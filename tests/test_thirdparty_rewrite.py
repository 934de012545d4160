"""scan and rewrite on the third-party fixtures, where issue 10 found them wrong: non-lookups reported as
missed lookups, models that are not ONNX taken for models, graph inputs lost."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

import hps_surgeon
from hps_surgeon.errors import SurgeonError

from support import FIXTURES

MODELS = FIXTURES / "thirdparty/models"


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hps_surgeon", *map(str, args)], capture_output=True, text=True)


def test_scan_reports_only_gathers_whose_data_could_be_a_table():
    """tf.feature_column: 4 more Gathers read rows already looked up (or a Concat of them): not lookups."""
    source = MODELS / "tf_feature_column_identity_embedding.onnx"
    found = hps_surgeon.scan(source)
    assert len(found.lookups) == 2 and found.not_rewritable == ()
    proc = run("scan", source)
    assert proc.returncode == 0 and "2 lookup(s) to rewrite, 0 not rewritable" in proc.stdout
    assert "not rewritable:" not in proc.stdout


def test_a_table_refused_at_run_time_is_still_reported():
    """The filter above keeps what is a table: torch's max_norm renormalises a real table at lookup time."""
    reasons = {m.node for m in hps_surgeon.scan(FIXTURES / "torch/embedding_max_norm_dynamo.onnx").not_rewritable}
    assert {"node_embedding", "node_Gather_2"} <= reasons


@pytest.mark.parametrize("fixture, node, op", [
    ("keras3_integerlookup_tf_ops.onnx", "functional_1/integer_lookup_1/None_Lookup/LookupTableFindV2/table_handle",
     "HashTableV2"),
    ("keras3_hashing_tf_ops.onnx", "functional_1/hashing_1/hash", "StringToHashBucketFast"),
    ("tf_feature_column_hash_bucket_tf_ops.onnx", "model/dense_features/city_embedding/lookup",
     "StringToHashBucketFast"),
])
@pytest.mark.parametrize("command", ["scan", "rewrite"])
def test_tensorflow_ops_left_by_tf2onnx_are_named(fixture, node, op, command, tmp_path):
    source = MODELS / fixture
    args = [command, source] + (["--out", tmp_path / "out"] if command == "rewrite" else [])
    proc = run(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"hps-surgeon: error: {source}: not a valid ONNX model: node '{node}' is {op}, "
                               "which ONNX does not define (domain 'ai.onnx')")
    assert not (tmp_path / "out").exists()
    with pytest.raises(SurgeonError, match=f"node '{node}' is {op}"):
        hps_surgeon.scan(source)


def test_graph_inputs_that_are_not_removed_tables_are_kept(tmp_path):
    """keep_initializers_as_inputs=True: 16 inputs (X and 15 weights); the 8 tables go, the rest stay."""
    source = MODELS / "deepctr_torch_deepfm_initializer_inputs_legacy.onnx"
    result = hps_surgeon.rewrite(source, tmp_path / "rw")
    original = [i.name for i in onnx.load(str(source)).graph.input]
    tables = sorted(t.tensor for t in result.plan.tables)
    assert len(original) == 16 and len(tables) == 8
    assert [i.name for i in onnx.load(str(result.model_path)).graph.input] == [n for n in original if n not in tables]
    report = json.loads((result.out_dir / "report.json").read_text())
    assert sorted(report["removed_graph_inputs"]) == tables
    assert any(note.startswith("graph input(s) embedding_dict.c0.weight,") for note in report["notes"])
    onnx.checker.check_model(str(result.model_path), full_check=True)
