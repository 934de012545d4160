"""validate + `hps-surgeon check` (the pre-commit gate): one test per kind of broken model or config."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

import hps_surgeon
from hps_surgeon.hps.validate import validate

from support import FIXTURES, ROOT


@pytest.fixture(scope="module")
def rewritten(rewrite_folder) -> Path:
    return rewrite_folder  # conftest's: the rewrite of torch/embedding_int64_legacy.onnx, model 'demo'


@pytest.fixture
def copy(tmp_path) -> Path:
    """A rewrite of its own to break (a copied folder would still name the original tables: paths are absolute)."""
    target = tmp_path / "out"
    hps_surgeon.rewrite(FIXTURES / "torch/embedding_int64_legacy.onnx", target, model_name="demo")
    return target


def check(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hps_surgeon", "check", *map(str, args)], capture_output=True,
                          text=True)


def hps_node(model: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == "HPS_TRT")


def edit_model(folder: Path, change) -> Path:
    path = folder / "model.onnx"
    model = onnx.load(str(path))
    change(model)
    onnx.save(model, str(path))
    return path


def test_clean_rewrite_output_has_no_problems(rewritten):
    assert validate(rewritten / "model.onnx", rewritten / "hps_config.json") == []
    proc = check(rewritten / "model.onnx")  # finds hps_config.json beside the model
    assert (proc.returncode, proc.stdout) == (0, "")


def test_malformed_config_json(copy):
    (copy / "hps_config.json").write_text('{"supportlonglong": false,\n "models": [}')
    proc = check(copy / "model.onnx")
    assert proc.returncode == 1
    assert proc.stdout.strip() == (f"{copy / 'hps_config.json'}:line 2: not valid JSON (Expecting value) — fix the "
                                   "file or re-run hps-surgeon rewrite")


def test_config_missing_field_names_it(copy):
    config = json.loads((copy / "hps_config.json").read_text())
    del config["models"][0]["embedding_vecsize_per_table"]
    config["models"][0]["max_batch_size"] = "1024"
    (copy / "hps_config.json").write_text(json.dumps(config))
    lines = check(copy / "model.onnx").stdout.strip().splitlines()
    assert lines == [
        f"{copy / 'hps_config.json'}:models[0]: 'embedding_vecsize_per_table' is missing; HugeCTR's HPS refuses the "
        "config (\"[Parser] No Such Key: embedding_vecsize_per_table\", inference_utils.cpp:579) — add it",
        f"{copy / 'hps_config.json'}:models[0].max_batch_size: '1024' is not of type 'integer' — see the README's "
        "table of HPS config fields"]


def test_missing_sparse_files(copy):
    shutil.rmtree(copy / "tables")
    proc = check(copy / "model.onnx")
    assert proc.returncode == 1
    assert proc.stdout.strip() == (f"{copy / 'hps_config.json'}:models[0].sparse_files[0]: '{copy / 'tables/emb_weight'}' "
                                   f"has no key and emb_vector files (looked in {copy / 'tables/emb_weight'}) — copy "
                                   "the table folder there or fix the path")


def test_truncated_emb_vector(copy):
    vectors = copy / "tables/emb_weight/emb_vector"
    vectors.write_bytes(vectors.read_bytes()[:-4])
    proc = check(copy / "model.onnx")
    assert proc.returncode == 1
    assert proc.stdout.strip() == (f"{copy / 'model.onnx'}:hps_trt//emb/Gather: table 0: {vectors} has 63996 bytes, "
                                   "expected 1000 rows x 16 x 4 = 64000 — the file is truncated or emb_vec_size is "
                                   "wrong; re-export the table")


def test_duplicate_keys(copy):
    keys = copy / "tables/emb_weight/key"
    data = bytearray(keys.read_bytes())
    data[8:16] = data[0:8]
    keys.write_bytes(bytes(data))
    assert check(copy / "model.onnx").stdout.strip() == (
        f"{copy / 'model.onnx'}:hps_trt//emb/Gather: table 0: {keys} holds duplicate keys — each key must appear once")


def test_mismatched_emb_vec_size(copy):
    def change(model):
        next(a for a in hps_node(model).attribute if a.name == "emb_vec_size").i = 32
    path = edit_model(copy, change)
    lines = check(path).stdout.strip().splitlines()
    assert f"{path}:hps_trt//emb/Gather: emb_vec_size 32 differs from embedding_vecsize_per_table[0] = 16 in " \
           "hps_config.json — make them equal" in lines


def test_wrong_key_dtype(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("HPS_TRT", ["keys"], ["emb"], name="hps", domain="trt.plugins", ps_config_file="c.json",
                          model_name="m", table_id=0, emb_vec_size=4)], "g",
        [helper.make_tensor_value_info("keys", TensorProto.FLOAT, ["B", 3])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["B", 3, 4])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("trt.plugins", 1)]), str(path))
    proc = check(path)
    assert proc.returncode == 1
    assert proc.stdout.strip() == (f"{path}:hps: keys 'keys' are float, HPS_TRT takes int32 or int64 — insert a Cast")


def test_missing_attribute(copy):
    def change(model):
        node = hps_node(model)
        kept = [a for a in node.attribute if a.name != "table_id"]
        del node.attribute[:]
        node.attribute.extend(kept)
    path = edit_model(copy, change)
    proc = check(path)
    assert proc.returncode == 1
    assert proc.stdout.strip() == (f"{path}:hps_trt//emb/Gather: missing attribute 'table_id' (int) — add it or "
                                   "re-run hps-surgeon rewrite")


def test_model_that_cannot_be_loaded(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 3)
    proc = check(bad)
    assert proc.returncode == 1
    assert proc.stdout.strip().startswith(f"{bad}:(file): not a readable ONNX model (")


def test_wrong_ps_config_file_is_a_warning_only(copy):
    def change(model):
        next(a for a in hps_node(model).attribute if a.name == "ps_config_file").s = b"/srv/other.json\0"
    path = edit_model(copy, change)
    proc = check(path)
    assert proc.returncode == 0
    assert proc.stdout.strip() == (f"{path}:hps_trt//emb/Gather: warning: ps_config_file is '/srv/other.json', not "
                                   "the config being checked (hps_config.json) — the plugin will open that file instead")


def test_require_rewritten_fails_on_plain_lookups_above_the_threshold(tmp_path):
    source = FIXTURES / "torch/shared_table_legacy.onnx"
    proc = check(source, "--require-rewritten")
    assert proc.returncode == 1
    assert proc.stdout.strip().splitlines() == [
        f"{source}:/emb/Gather: embedding lookup of table 'emb.weight' (0.0 MiB) is not rewritten into HPS_TRT — "
        "run hps-surgeon rewrite",
        f"{source}:/emb_1/Gather: embedding lookup of table 'emb.weight' (0.0 MiB) is not rewritten into HPS_TRT — "
        "run hps-surgeon rewrite"]
    assert check(source, "--require-rewritten", "--max-table-mb", "1").returncode == 0


def test_check_json(copy):
    shutil.rmtree(copy / "tables")
    data = json.loads(check(copy / "model.onnx", "--json").stdout)
    assert [(p["where"], p["severity"]) for p in data] == [("models[0].sparse_files[0]", "error")]


def test_pre_commit_hook_end_to_end(tmp_path):
    pytest.importorskip("pre_commit")
    repo = tmp_path / "user_repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    # Folders committed to a repository move with it: --relative-paths (check warns, passes).
    for folder in ("good", "bad"):
        hps_surgeon.rewrite(FIXTURES / "torch/embedding_int64_legacy.onnx", repo / folder, relative_paths=True)
    bad = repo / "bad"
    (bad / "tables/emb_weight/emb_vector").write_bytes(b"\0" * 12)
    git("add", ".")
    hook = lambda *files: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "pre_commit", "try-repo", str(ROOT), "hps-surgeon-check", "--files", *files],
        cwd=repo, capture_output=True, text=True)
    passed = hook("good/model.onnx")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "hps-surgeon check" in passed.stdout and "Passed" in passed.stdout
    failed = hook("good/model.onnx", "bad/model.onnx")
    assert failed.returncode == 1
    assert "bad/model.onnx:hps_trt//emb/Gather: table 0:" in failed.stdout
    assert "expected 1000 rows x 16 x 4 = 64000" in failed.stdout
