"""The CLI end to end: outputs, exit codes, and one test per kind of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hps_surgeon import cli, export, load

from support import FIXTURES, lookup_model


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hps_surgeon", *map(str, args)], capture_output=True, text=True)


def error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_rewrite_writes_exactly_the_documented_files(one_lookup, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("rewrite", one_lookup, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert listing(out) == ["hps_config.json", "model.onnx", "report.json", "tables/table/emb_vector",
                            "tables/table/key"]
    assert "rewrote 1 lookup(s) into HPS_TRT nodes, 1 table(s)" in proc.stdout
    assert str(out / "model.onnx") in proc.stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_table_files_hold_row_index_keys_and_the_table_bytes(one_lookup, tmp_path):
    out = tmp_path / "out"
    assert run_cli("rewrite", one_lookup, "--out", out).returncode == 0
    table = numpy_helper.to_array(onnx.load(str(one_lookup)).graph.initializer[0])
    np.testing.assert_array_equal(np.fromfile(out / "tables/table/key", dtype="<i8"), np.arange(100))
    assert (out / "tables/table/emb_vector").read_bytes() == table.astype("<f4").tobytes()


def test_config_is_hugectr_hps_format(one_lookup, tmp_path):
    out = tmp_path / "out"
    assert run_cli("rewrite", one_lookup, "--out", out, "--model-name", "ctr", "--max-batch-size", "64",
                   "--gpucache-ratio", "0.5").returncode == 0
    config = json.loads((out / "hps_config.json").read_text())
    assert config == {"supportlonglong": False, "models": [{
        "model": "ctr", "sparse_files": [str(out / "tables/table")], "num_of_worker_buffer_in_pool": 3,
        "embedding_table_names": ["table"], "embedding_vecsize_per_table": [8],
        "maxnum_catfeature_query_per_table_per_sample": [4], "default_value_for_each_table": [0.0],
        "deployed_device_list": [0], "max_batch_size": 64, "cache_refresh_percentage_per_iteration": 0.2,
        "hit_rate_threshold": 1.0, "gpucacheper": 0.5, "gpucache": True}]}


def test_node_attributes_domain_and_nul_strings(one_lookup, tmp_path):
    out = tmp_path / "out"
    assert run_cli("rewrite", one_lookup, "--out", out).returncode == 0
    model = onnx.load(str(out / "model.onnx"))
    cast, node = model.graph.node
    assert (cast.op_type, node.input[0]) == ("Cast", cast.output[0])
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert (node.op_type, node.domain) == ("HPS_TRT", "trt.plugins")
    assert attrs == {"ps_config_file": str((out / "hps_config.json").absolute()).encode() + b"\0",
                     "model_name": b"one\0", "table_id": 0, "emb_vec_size": 8}
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 17), ("trt.plugins", 1)}
    hps_out = next(v for v in [*model.graph.value_info, *model.graph.output] if v.name == node.output[0])
    assert hps_out.type.tensor_type.elem_type == TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in hps_out.type.tensor_type.shape.dim] == ["B", 4, 8]


def test_hugectr_layout_default_domain_without_nul(one_lookup, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("rewrite", one_lookup, "--out", out, "--domain", "", "--no-nul-strings", "--key-dtype", "int64")
    assert proc.returncode == 0, proc.stderr
    assert "onnx.checker cannot check them" in proc.stdout
    (node,) = onnx.load(str(out / "model.onnx")).graph.node
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert node.domain == "" and attrs["model_name"] == b"one"
    assert json.loads((out / "hps_config.json").read_text())["supportlonglong"] is True


def test_report_lists_each_node(one_lookup, tmp_path):
    out = tmp_path / "out"
    assert run_cli("rewrite", one_lookup, "--out", out).returncode == 0
    report = json.loads((out / "report.json").read_text())
    (entry,) = report["hps_trt_nodes"]
    assert entry["pattern"] == "generic.embedding.gather"
    assert entry["replaced_nodes"] == ["lookup"]
    assert (entry["table"], entry["table_id"], entry["rows"], entry["emb_vec_size"]) == ("table", 0, 100, 8)
    assert (entry["key_dtype"], entry["source_key_dtype"]) == ("int32", "int64")
    assert any("default value" in note for note in entry["notes"])


def test_scan_table_and_json(one_lookup):
    proc = run_cli("scan", one_lookup)
    assert proc.returncode == 0
    assert "1 lookup(s) to rewrite, 0 not rewritable" in proc.stdout
    assert "lookup  generic.embedding.gather  table  100 x 8     3.1 KiB" in proc.stdout
    data = json.loads(run_cli("scan", one_lookup, "--json").stdout)
    assert data["lookups"][0]["rows"] == 100 and data["not_rewritable"] == []


def test_python_m_and_console_script_agree(one_lookup):
    assert cli.main(["scan", str(one_lookup), "--json"]) == 0


# --- bad input: one clear line, exit 2, nothing written -------------------------------------

def test_not_an_onnx_file(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model\n" * 10)
    proc = run_cli("rewrite", bad, "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert error_line(proc).startswith(f"hps-surgeon: error: {bad}: not")
    assert not (tmp_path / "out").exists()


def test_truncated_protobuf(one_lookup, tmp_path):
    data = one_lookup.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    proc = run_cli("scan", cut)
    assert proc.returncode == 2
    assert error_line(proc).startswith(f"hps-surgeon: error: {cut}: not a readable ONNX model (")


def test_missing_file(tmp_path):
    proc = run_cli("scan", tmp_path / "absent.onnx")
    assert proc.returncode == 2
    assert error_line(proc) == f"hps-surgeon: error: {tmp_path / 'absent.onnx'}: no such file; pass the path of an .onnx model"


def test_missing_external_data_file(tmp_path):
    model = lookup_model(tmp_path / "m" / "ext.onnx", external=True)
    (model.parent / "ext.onnx.data").unlink()
    proc = run_cli("rewrite", model, "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert error_line(proc) == (f"hps-surgeon: error: {model}: initializer 'table': external_data location: "
                                f"'ext.onnx.data' does not exist (looked for {model.parent / 'ext.onnx.data'}); "
                                "copy it there or fix the path")
    assert not (tmp_path / "out").exists()


def test_external_data_outside_model_folder_is_refused(tmp_path):
    model_path = lookup_model(tmp_path / "m" / "ext.onnx", external=True)
    model = onnx.load_model(str(model_path), load_external_data=False)
    os.rename(model_path.parent / "ext.onnx.data", tmp_path / "secret.bin")
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../secret.bin"
    onnx.save_model(model, str(model_path))
    proc = run_cli("scan", model_path)
    assert proc.returncode == 2
    assert error_line(proc) == (f"hps-surgeon: error: {model_path}: initializer 'table': external_data location: "
                                f"'../secret.bin' leads outside {model_path.parent} (to {tmp_path / 'secret.bin'}); "
                                "refusing to read it — keep what ext.onnx names inside its folder")


def test_truncated_external_data(tmp_path):
    model = lookup_model(tmp_path / "m" / "ext.onnx", external=True)
    data = model.parent / "ext.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    proc = run_cli("scan", model)
    assert proc.returncode == 2
    assert error_line(proc) == (f"hps-surgeon: error: {model}: external data file 'ext.onnx.data' is truncated: "
                                "initializer 'table' needs bytes 0..3200, the file has 100; restore the data file")


def test_unsupported_table_dtype(tmp_path):
    model = lookup_model(tmp_path / "f64.onnx", table_dtype=np.float64)
    proc = run_cli("rewrite", model, "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert error_line(proc) == (f"hps-surgeon: error: {model}: table 'table' (read by node 'lookup') has dtype "
                                "float64; HPS_TRT tables are float32 (float16/bfloat16 are converted). "
                                "Re-export the table as float32.")
    assert not (tmp_path / "out").exists()


def _model_with_computed_table(path: Path) -> Path:
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((50, 4)).astype(np.float32), "table")
    scale = numpy_helper.from_array(np.float32(2.0), "scale")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["table", "scale"], ["scaled"], name="scale_table"),
         helper.make_node("Gather", ["scaled", "keys"], ["computed"], name="computed_lookup"),
         helper.make_node("Gather", ["table", "keys"], ["plain"], name="plain_lookup")], "g",
        [helper.make_tensor_value_info("keys", TensorProto.INT64, ["B", 3])],
        [helper.make_tensor_value_info("computed", TensorProto.FLOAT, ["B", 3, None]),
         helper.make_tensor_value_info("plain", TensorProto.FLOAT, ["B", 3, None])], [table, scale])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_non_constant_table_is_reported_and_left_unchanged(tmp_path):
    model = _model_with_computed_table(tmp_path / "computed.onnx")
    scan = run_cli("scan", model)
    assert "1 lookup(s) to rewrite, 1 not rewritable" in scan.stdout
    assert ("node 'computed_lookup' (Gather): 'scaled' is produced by Mul 'scale_table', not a constant "
            "(initializer or Constant node)") in scan.stdout
    out = tmp_path / "out"
    assert run_cli("rewrite", model, "--out", out).returncode == 0
    ops = [(n.name, n.op_type) for n in onnx.load(str(out / "model.onnx")).graph.node]
    assert ("computed_lookup", "Gather") in ops and ("scale_table", "Mul") in ops
    assert ("hps_trt/plain_lookup", "HPS_TRT") in ops
    # the table is still read by the Mul, so it stays in the model
    assert "table" in {t.name for t in onnx.load(str(out / "model.onnx")).graph.initializer}


def test_out_dir_not_writable(one_lookup, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_cli("rewrite", one_lookup, "--out", blocker / "out")
    assert proc.returncode == 2
    assert error_line(proc).startswith(f"hps-surgeon: error: {blocker / 'out'}: cannot write there (")


def test_out_dir_not_empty_needs_force(one_lookup, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = run_cli("rewrite", one_lookup, "--out", out)
    assert proc.returncode == 2
    assert error_line(proc) == (f"hps-surgeon: error: {out}: folder is not empty; pass --force to replace it "
                                "or choose another --out")
    assert listing(out) == ["keep.txt"]
    assert run_cli("rewrite", one_lookup, "--out", out, "--force").returncode == 0
    assert "keep.txt" not in listing(out)


def test_dry_run_plans_and_writes_nothing(one_lookup, tmp_path):
    proc = run_cli("rewrite", one_lookup, "--out", tmp_path / "out", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"dry run: would rewrite 1 lookup(s), 1 table(s) (3.1 KiB) into {tmp_path / 'out'}; nothing written",
        "  hps_trt/lookup: table 0 'table' 100 x 8, keys 'keys' [generic.embedding.gather]"]
    assert not (tmp_path / "out").exists()
    report = json.loads(run_cli("rewrite", one_lookup, "--out", tmp_path / "out", "--dry-run", "--json").stdout)
    assert report["written"] is False and report["hps_trt_nodes"][0]["table"] == "table"


def test_out_dir_holding_the_source_is_refused_even_with_force(one_lookup):
    proc = run_cli("rewrite", one_lookup, "--out", one_lookup.parent, "--force")
    assert proc.returncode == 2
    assert error_line(proc) == (f"hps-surgeon: error: --out {one_lookup.parent}: holds the input {one_lookup}; "
                                "writing there would replace or mix into what is read — choose another --out")
    assert one_lookup.exists()


def test_dynamic_keys_per_sample_needs_max_keys_per_sample(tmp_path):
    model = lookup_model(tmp_path / "dyn.onnx", key_shape=("B", "N"))
    proc = run_cli("rewrite", model, "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert error_line(proc) == (f"hps-surgeon: error: {model}: keys 'keys' of node 'lookup' have a dynamic number "
                                "of keys per sample; pass --max-keys-per-sample N "
                                "(maxnum_catfeature_query_per_table_per_sample).")
    assert not (tmp_path / "out").exists()
    ok = run_cli("rewrite", model, "--out", tmp_path / "out", "--max-keys-per-sample", "12")
    assert ok.returncode == 0
    config = json.loads((tmp_path / "out/hps_config.json").read_text())
    assert config["models"][0]["maxnum_catfeature_query_per_table_per_sample"] == [12]


def test_model_without_lookups_exits_zero_and_writes_nothing(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph), str(model))
    proc = run_cli("rewrite", model, "--out", tmp_path / "out")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"{model}: no embedding lookup to rewrite; nothing written"
    assert not (tmp_path / "out").exists()


def test_failure_after_staging_leaves_nothing(one_lookup, tmp_path, monkeypatch):
    import hps_surgeon.api as api
    from hps_surgeon.errors import SurgeonError

    def broken_check(model_path, config_path, domain, source):
        raise SurgeonError("checker exploded")

    monkeypatch.setattr(export, "check_written", broken_check)
    with pytest.raises(SurgeonError, match="checker exploded"):
        api.rewrite(one_lookup, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_large_external_data_moves_to_the_output_folder(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((64, 8)).astype(np.float32), "table")
    dense = numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "dense")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "keys"], ["emb"], name="lookup"),
         helper.make_node("MatMul", ["emb", "dense"], ["y"], name="mlp")], "g",
        [helper.make_tensor_value_info("keys", TensorProto.INT64, ["B", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 2, 3])], [table, dense])
    source = tmp_path / "src" / "m.onnx"
    source.parent.mkdir()
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source),
                    save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
                    size_threshold=0)
    # as if the dense weights were large: neither read at load time nor inlined on save
    monkeypatch.setattr(export, "INLINE_LIMIT", 0)
    monkeypatch.setattr(load, "SMALL_CONSTANT_BYTES", 0)
    import hps_surgeon
    result = hps_surgeon.rewrite(source, tmp_path / "out")
    assert listing(result.out_dir) == ["hps_config.json", "model.onnx", "model.onnx.data", "report.json",
                                       "tables/table/emb_vector", "tables/table/key"]
    loaded = onnx.load(str(result.model_path))  # resolves model.onnx.data next to it
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[0]), numpy_helper.to_array(dense))


def test_rewrite_of_a_rewritten_model_finds_nothing(tmp_path):
    import hps_surgeon
    first = hps_surgeon.rewrite(FIXTURES / "torch/dlrm_small_legacy.onnx", tmp_path / "a")
    second = hps_surgeon.rewrite(first.model_path, tmp_path / "b")
    assert not second.written and not (tmp_path / "b").exists()


def test_an_exception_no_check_anticipated_is_one_line_and_exit_4(one_lookup, cli, monkeypatch):
    """The CLI's last resort (not a fix): a bug is one line and exit 4, not a traceback in a pre-commit
    hook's output; exit 3 stays verify's INCONCLUSIVE. HPS_SURGEON_DEBUG=1 re-raises it."""
    from hps_surgeon.cli import scan as scan_command

    def broken(*args, **kwargs):
        raise RuntimeError("a state no check anticipated\nsecond line")

    monkeypatch.setattr(scan_command, "scan", broken)
    with pytest.raises(RuntimeError):
        cli("scan", one_lookup)  # the `cli` fixture sets HPS_SURGEON_DEBUG=1
    monkeypatch.delenv("HPS_SURGEON_DEBUG")
    result = cli("scan", one_lookup)
    assert (result.code, result.out) == (4, "")
    assert result.error_line == ("hps-surgeon: error: internal error (RuntimeError: a state no check anticipated "
                                 "second line); this is a bug in hps-surgeon — please report it with the command "
                                 "and input (set HPS_SURGEON_DEBUG=1 for the traceback)")
