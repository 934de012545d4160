"""The plan as a file a person edits (rewrite --plan-out / --plan), --min-table-rows, provenance on
inserted nodes, and the patterns' glue_ops being enforced."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

import hps_surgeon
from hps_surgeon.errors import SurgeonError
from hps_surgeon.hps.contract import PROVENANCE_LOOKUP, PROVENANCE_PATTERN, PROVENANCE_REPLACED
from hps_surgeon.hps.reference import ReferenceLookup
from hps_surgeon.plan import Plan
from hps_surgeon.verify.runner import SplitRunner

from support import FIXTURES, random_feeds, run_onnxruntime

DLRM = FIXTURES / "torch/dlrm_small_legacy.onnx"


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hps_surgeon", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def dlrm_plan(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("plan")
    proc = run_cli("rewrite", DLRM, "--out", folder / "out", "--dry-run", "--plan-out", folder / "plan.yaml")
    assert proc.returncode == 0, proc.stderr
    assert not (folder / "out").exists()  # --dry-run: the plan file is the only thing written
    return folder / "plan.yaml"


def edited(plan_file: Path, tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(plan_file.read_text())
    edit(data)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_plan_file_round_trips_and_equals_the_report(dlrm_plan, tmp_path):
    plan = Plan.from_dict(yaml.safe_load(dlrm_plan.read_text()))
    assert Plan.from_dict(plan.to_dict()) == plan
    result = hps_surgeon.rewrite(DLRM, tmp_path / "out")
    report = json.loads((tmp_path / "out/report.json").read_text())
    options = {**result.plan.to_dict()["options"], "ps_config_file": plan.options.ps_config_file}
    assert {**plan.to_dict(), "options": options} == {k: v for k, v in report.items()
                                                      if k not in ("source_model", "model", "config",
                                                                   "removed_graph_inputs")} | {
        "options": options}
    assert len(plan.tables) == 26 and len(plan.lookups) == 26


def test_edited_plan_drops_renames_and_sets_key_dtype(dlrm_plan, tmp_path):
    def edit(data):
        del data["tables"][0:2]  # emb_l.0 (1000 rows) and emb_l.1 stay inside the model
        data["tables"][0]["name"] = "ads-category"
        data["tables"][1]["key_dtype"] = "int64"
    plan = edited(dlrm_plan, tmp_path, edit)
    proc = run_cli("rewrite", DLRM, "--out", tmp_path / "out", "--plan", plan)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    config = json.loads((out / "hps_config.json").read_text())["models"][0]
    assert len(config["sparse_files"]) == 24
    assert config["embedding_table_names"][0] == "ads-category"
    assert config["sparse_files"][0] == str(out / "tables/ads-category")
    assert json.loads((out / "hps_config.json").read_text())["supportlonglong"] is True

    model = onnx.load(str(out / "model.onnx"))
    hps = [n for n in model.graph.node if n.op_type == "HPS_TRT"]
    assert len(hps) == 24
    kept = {n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[0].startswith("emb_l.")}
    assert kept == {"emb_l.0.weight", "emb_l.1.weight"}
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    report = json.loads((out / "report.json").read_text())
    by_table = {t["tensor"]: t for t in report["tables"]}
    assert by_table["emb_l.11.weight"]["key_dtype"] == "int64"
    int64_node = next(lp for lp in report["hps_trt_nodes"] if lp["table"] == "emb_l.11.weight")
    hps_node = next(n for n in hps if n.name == int64_node["node"])
    assert types[hps_node.input[0]] == TensorProto.INT64
    assert {n["node"] for n in report["not_rewritten"]} == {"/emb_l.0/Gather", "/emb_l.1/Gather"}
    assert all(f"is not in {plan}: kept inside the model" in n["reason"] for n in report["not_rewritten"])

    runner = SplitRunner(out / "model.onnx", ReferenceLookup(out / "hps_config.json").lookup)
    for batch in (1, 4):
        feeds = random_feeds(DLRM, batch, key_high=20, seed=batch)
        expected = run_onnxruntime(DLRM, feeds)
        for name, value in runner.run(feeds).items():
            np.testing.assert_array_equal(value, expected[name])


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["tables"][3].update(rows=601),
     "tables[3] (tensor 'emb_l.11.weight'): rows is 601 in the plan but 600 in the model; the plan is stale, "
     "write a new one with --plan-out"),
    (lambda d: d["tables"][0].update(tensor="emb.weight"),
     "tables[0] (tensor 'emb.weight'): the model has no such table to rewrite now; write a new plan with --plan-out"),
    (lambda d: d["tables"][2].update(name="emb.l.10"),
     "tables[2] (tensor 'emb_l.10.weight'): name 'emb.l.10' is not a valid HugeCTR table name (letters, digits, "
     "'_' and '-', 1 to 120 of them); HugeCTR's HPS aborts on it"),
    (lambda d: d["tables"][2].update(name="emb_l_0_weight"),
     "tables[2] (tensor 'emb_l.10.weight'): name 'emb_l_0_weight' is also the name of tables[0]; table names must "
     "be distinct"),
    (lambda d: d["tables"][1].update(key_dtype="int16"),
     "tables[1] (tensor 'emb_l.1.weight'): key_dtype 'int16' is not one of int32, int64"),
    (lambda d: d["hps_trt_nodes"].pop(5),
     "lookup 'hps_trt//emb_l.13/Gather' of table 'emb_l.13.weight' is not in the plan; the plan is stale (or a "
     "lookup was deleted: delete its table instead), write a new one"),
])
def test_plan_that_does_not_fit_is_refused_naming_table_and_field(dlrm_plan, tmp_path, edit, message):
    plan = edited(dlrm_plan, tmp_path, edit)
    proc = run_cli("rewrite", DLRM, "--out", tmp_path / "out", "--plan", plan)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"hps-surgeon: error: --plan {plan}: {message}"
    assert not (tmp_path / "out").exists()


def test_plan_that_is_not_a_plan_is_one_line(tmp_path):
    bad = tmp_path / "plan.yaml"
    bad.write_text("tables: [1, 2\n")
    proc = run_cli("rewrite", DLRM, "--out", tmp_path / "out", "--plan", bad)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith(f"hps-surgeon: error: --plan {bad}: not valid YAML (")
    bad.write_text("tables: []\n")
    proc = run_cli("rewrite", DLRM, "--out", tmp_path / "out", "--plan", bad)
    assert proc.stderr.strip() == (f"hps-surgeon: error: --plan {bad}: not a plan written by --plan-out (field "
                                   "options is missing); write a new one with --plan-out")


def test_min_table_rows_keeps_small_tables_in_the_model(dlrm_plan, tmp_path):
    rows = {t["tensor"]: t["rows"] for t in yaml.safe_load(dlrm_plan.read_text())["tables"]}
    small = {tensor for tensor, n in rows.items() if n < 100}
    assert 0 < len(small) < len(rows)
    result = hps_surgeon.rewrite(DLRM, tmp_path / "out", min_table_rows=100)
    assert {t.tensor for t in result.plan.tables} == set(rows) - small
    assert [t.table_id for t in result.plan.tables] == list(range(26 - len(small)))
    reasons = {n.table: n.reason for n in result.plan.not_rewritten}
    assert reasons["emb_l.1.weight"] == ("node '/emb_l.1/Gather': table 'emb_l.1.weight' has 20 rows, fewer than "
                                         "--min-table-rows 100: kept inside the model")
    assert set(reasons) == set(small)
    feeds = random_feeds(DLRM, 3, key_high=20)
    runner = SplitRunner(result.model_path, ReferenceLookup(result.config_path).lookup)
    expected = run_onnxruntime(DLRM, feeds)
    for name, value in runner.run(feeds).items():
        np.testing.assert_array_equal(value, expected[name])


def test_every_inserted_node_carries_provenance(tmp_path):
    result = hps_surgeon.rewrite(FIXTURES / "torch/embedding_bag_sum_offsets_legacy.onnx", tmp_path / "out")
    model = onnx.load(str(result.model_path))
    report = {lp["node"]: lp for lp in result.report["hps_trt_nodes"]}
    stamped = []
    for scope in [model.graph, *(a.g for n in model.graph.node for a in n.attribute if a.type == a.GRAPH)]:
        for node in scope.node:
            props = {p.key: p.value for p in node.metadata_props}
            if node.op_type == "HPS_TRT" or props:
                lookup = report[props[PROVENANCE_LOOKUP]]
                assert props[PROVENANCE_PATTERN] == lookup["pattern"]
                assert json.loads(props[PROVENANCE_REPLACED]) == lookup["replaced_nodes"]
                stamped.append(node.op_type)
    # the HPS_TRT node, its key glue, and the hoisted pick re-applied inside the loop
    assert "HPS_TRT" in stamped and "Slice" in stamped and len(stamped) >= 3
    onnx.checker.check_model(str(result.model_path), full_check=True)


def test_rewrite_refuses_glue_the_pattern_did_not_declare(tmp_path):
    pattern = yaml.safe_load((hps_surgeon.spec.builtin_patterns_dir() / "generic.embedding.gather/pattern.yaml")
                             .read_text())
    pattern["rewrite"]["glue_ops"] = ["Reshape"]
    folder = tmp_path / "patterns/generic.embedding.gather"
    folder.mkdir(parents=True)
    (folder / "pattern.yaml").write_text(yaml.safe_dump(pattern))
    table = numpy_helper.from_array(np.ones((10, 4), np.float32), "table")
    graph = helper.make_graph([helper.make_node("Gather", ["table", "keys"], ["out"], name="lookup")], "g",
                              [helper.make_tensor_value_info("keys", TensorProto.INT64, ["B", 2])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", 2, 4])], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(SurgeonError) as info:
        hps_surgeon.rewrite(model, tmp_path / "out", patterns=tmp_path / "patterns")
    assert str(info.value) == ("node 'lookup': its rewrite needs Cast around HPS_TRT, which pattern "
                               "'generic.embedding.gather' does not allow (rewrite.glue_ops: Reshape); add it to "
                               "the pattern's glue_ops or fix the pattern")
    assert not (tmp_path / "out").exists()


def test_top_level_exposes_the_commands_without_importing_polygraphy():
    code = ("import sys, hps_surgeon as h; "
            "assert all(callable(getattr(h, n)) for n in ('scan', 'rewrite', 'verify', 'check', 'deploy')); "
            "from hps_surgeon.verify import verify, HpsRunner; "
            "print('polygraphy.backend.base' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"  # only HpsRunner, asked for by name, brought Polygraphy in
    proc = subprocess.run([sys.executable, "-c", "import sys, hps_surgeon.cli; print('polygraphy' in sys.modules)"],
                          capture_output=True, text=True)
    assert proc.stdout.strip() == "False"
