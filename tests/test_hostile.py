"""Hostile input (issue 11): every case the security review found, each named by what it feeds.

`check` gates unreviewed contributions and `deploy` builds serving repositories from folders that
may come from elsewhere, so a bad input must give one line (`hps-surgeon: error: <where>: <what>;
<what to do>`, exit 2; check: `path:where: message`, exit 1) in every command, read nothing outside
the folder of the file that names it, and leave nothing behind. The random version of these cases
is tests/test_fuzz.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import hps_surgeon

from support import FIXTURES, copy_rewrite, set_string_attribute, skip_unless_required, tree

#: one table 'emb.weight' [1000, 16] float32, read by node '/emb/Gather' (torch.onnx, legacy exporter)
SOURCE = FIXTURES / "torch/embedding_int64_legacy.onnx"
DLRM = FIXTURES / "torch/dlrm_small_legacy.onnx"  # 26 tables, keys [B, 26]
TABLE = "emb.weight"
NODE = "hps_trt//emb/Gather"


def table_of(model: onnx.ModelProto) -> TensorProto:
    return next(t for t in model.graph.initializer if t.name == TABLE)


def edited(tmp_path: Path, edit, source: Path = SOURCE, external: bool = False) -> Path:
    """`source` with `edit(model)` applied (after moving tensors to external data when asked), in tmp_path/m/."""
    path = tmp_path / "m" / "m.onnx"
    path.parent.mkdir()
    model = onnx.load(str(source))
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=1024)
        model = onnx.load_model(str(path), load_external_data=False)
    edit(model)
    onnx.save_model(model, str(path))
    return path


def assert_refused_everywhere(cli, model: Path, message: str) -> None:
    """scan and rewrite: one error line, exit 2, nothing written; check: one problem line, exit 1."""
    before = tree(model.parent.parent)
    scanned = cli("scan", model)
    assert (scanned.code, scanned.error_line) == (2, f"hps-surgeon: error: {model}: {message}")
    rewritten = cli("rewrite", model, "--out", model.parent.parent / "out")
    assert (rewritten.code, rewritten.error_line) == (2, f"hps-surgeon: error: {model}: {message}")
    checked = cli("check", model)
    assert (checked.code, checked.out, checked.err) == (1, f"{model}:(file): {message}\n", "")
    assert tree(model.parent.parent) == before


def set_external(model: onnx.ModelProto, key: str, value: str | None) -> None:
    """Set (or with None remove) one external_data entry of the table."""
    tensor = table_of(model)
    kept = [e for e in tensor.external_data if e.key != key]
    del tensor.external_data[:]
    tensor.external_data.extend(kept)
    if value is not None:
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


# --- external-data fields ------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, problem", [
    ("offset", "-8", "external_data offset '-8' is not a non-negative integer below 2^63; re-export the model"),
    ("length", "-8", "external_data length '-8' is not a non-negative integer below 2^63; re-export the model"),
    ("offset", "1.5", "external_data offset '1.5' is not a non-negative integer below 2^63; re-export the model"),
    ("offset", str(2**63), f"external_data offset '{2**63}' is not a non-negative integer below 2^63; re-export the "
                           "model"),
    ("length", "100", "holds 100 bytes, but dims [1000, 16] of float need 64000; the tensor is truncated or its dims "
                      "are wrong — re-export the model"),
], ids=["negative offset", "negative length", "non-integer offset", "offset 2^63", "length shorter than the dims"])
def test_external_data_field(cli, tmp_path, key, value, problem):
    model = edited(tmp_path, lambda m: set_external(m, key, value), external=True)
    assert_refused_everywhere(cli, model, f"initializer '{TABLE}': {problem}")


def test_external_data_offset_past_the_end_without_a_length(cli, tmp_path):
    def edit(model):
        set_external(model, "length", None)
        set_external(model, "offset", "1000000000")
    model = edited(tmp_path, edit, external=True)
    size = (model.parent / "m.onnx.data").stat().st_size
    assert_refused_everywhere(cli, model, f"initializer '{TABLE}': external_data offset 1000000000 is past the end "
                                          f"of 'm.onnx.data' ({size} bytes); re-export the model or restore the "
                                          "data file")


def test_external_data_location_with_a_nul(cli, tmp_path):
    model = edited(tmp_path, lambda m: set_external(m, "location", "m.onnx.data\0.png"), external=True)
    assert_refused_everywhere(cli, model, f"initializer '{TABLE}': external_data location: 'm.onnx.data\\x00.png' "
                                          f"holds a NUL byte; name a file inside {model.parent}")


@pytest.mark.parametrize("location, make, problem", [
    ("sub", lambda d: (d / "sub").mkdir(), "'sub' is a folder, not a regular file; fix the path"),
    (".", None, "'.' is the folder {folder} itself; name a file inside it"),
    ("fifo", lambda d: os.mkfifo(d / "fifo"), "'fifo' is a FIFO, not a regular file; fix the path"),
    ("absent.data", None, "'absent.data' does not exist (looked for {folder}/absent.data); copy it there or fix "
                          "the path"),
], ids=["a folder", "dot", "a FIFO", "a missing file"])
def test_external_data_location_naming(cli, tmp_path, location, make, problem):
    """A folder, '.' or a FIFO is named as what it is (not "missing"); a FIFO is never opened (no hang)."""
    model = edited(tmp_path, lambda m: set_external(m, "location", location), external=True)
    if make:
        make(model.parent)
    assert_refused_everywhere(cli, model, f"initializer '{TABLE}': external_data location: "
                                          f"{problem.format(folder=model.parent)}")


@pytest.mark.parametrize("target", ["../SECRET", "/etc/passwd", "symlink"])
def test_external_data_location_outside_the_model_folder(cli, tmp_path, target):
    (tmp_path / "SECRET").write_bytes(b"S" * 64000)
    location = target
    if target == "symlink":
        location = "link.data"
    model = edited(tmp_path, lambda m: set_external(m, "location", location), external=True)
    if target == "symlink":
        os.symlink(tmp_path / "SECRET", model.parent / "link.data")
    real = {"../SECRET": tmp_path / "SECRET", "/etc/passwd": Path("/etc/passwd"), "symlink": tmp_path / "SECRET"}
    assert_refused_everywhere(cli, model, f"initializer '{TABLE}': external_data location: '{location}' leads "
                                          f"outside {model.parent} (to {real[target]}); refusing to read it — keep "
                                          "what m.onnx names inside its folder")


def test_external_data_absolute_path_inside_the_folder(cli, tmp_path):
    """Inside, but ONNX's own loaders (and so onnxruntime, TensorRT's parser) refuse absolute locations."""
    model = edited(tmp_path, lambda m: None, external=True)
    edited_again = onnx.load_model(str(model), load_external_data=False)
    set_external(edited_again, "location", str(model.parent / "m.onnx.data"))
    onnx.save_model(edited_again, str(model))
    assert_refused_everywhere(cli, model, f"initializer '{TABLE}': external_data location: "
                                          f"'{model.parent / 'm.onnx.data'}' is an absolute path; ONNX loaders take "
                                          "only a relative path to a file of its own — copy the data next to the "
                                          "model")


def test_external_data_file_with_a_second_hard_link(cli, tmp_path):
    """A hard link can lead anywhere (realpath cannot tell): onnx.load refuses such files, and so do we."""
    model = edited(tmp_path, lambda m: None, external=True)
    os.link(model.parent / "m.onnx.data", tmp_path / "elsewhere.data")
    assert_refused_everywhere(cli, model, f"initializer '{TABLE}': external_data location: 'm.onnx.data' is a file "
                                          "with 2 hard links; ONNX loaders take only a relative path to a file of its "
                                          "own — copy the data next to the model")


# --- declared dims against stored data -----------------------------------------------------------

def _dims(*dims):
    def edit(model):
        del table_of(model).dims[:]
        table_of(model).dims.extend(dims)
    return edit


def _typed(model):
    tensor = table_of(model)
    tensor.ClearField("raw_data")
    tensor.float_data.extend([0.5] * 100)


@pytest.mark.parametrize("edit, problem", [
    (_dims(1001, 16), "holds 64000 bytes, but dims [1001, 16] of float need 64064"),
    (_dims(999, 16), "holds 64000 bytes, but dims [999, 16] of float need 63936"),
    (_dims(1000, 32), "holds 64000 bytes, but dims [1000, 32] of float need 128000"),
    (_dims(1000, 2**40), "holds 64000 bytes, but dims [1000, 1099511627776] of float need 4398046511104000"),
    (lambda m: setattr(table_of(m), "raw_data", table_of(m).raw_data[:32000]),
     "holds 32000 bytes, but dims [1000, 16] of float need 64000"),
    (lambda m: table_of(m).ClearField("raw_data"), "holds 0 values in float_data, but dims [1000, 16] of float need "
                                                   "16000"),
    (_typed, "holds 100 values in float_data, but dims [1000, 16] of float need 16000"),
    (lambda m: setattr(table_of(m), "data_type", TensorProto.FLOAT16),
     "holds 64000 bytes, but dims [1000, 16] of float16 need 32000"),
    (lambda m: setattr(table_of(m), "data_type", TensorProto.BFLOAT16),
     "holds 64000 bytes, but dims [1000, 16] of bfloat16 need 32000"),
], ids=["rows+1", "rows-1", "dim x2", "dim 2^40", "raw_data halved", "raw_data missing", "short float_data",
        "float16 label on float32 data", "bfloat16 label on float32 data"])
def test_table_dims_against_stored_data(cli, tmp_path, edit, problem):
    model = edited(tmp_path, edit)
    assert_refused_everywhere(cli, model, f"initializer '{TABLE}': {problem}; the tensor is truncated or its dims "
                                          "are wrong — re-export the model")


def test_table_dims_against_external_data(cli, tmp_path):
    model = edited(tmp_path, _dims(1001, 16), external=True)
    assert_refused_everywhere(cli, model, f"initializer '{TABLE}': holds 64000 bytes, but dims [1001, 16] of float "
                                          "need 64064; the tensor is truncated or its dims are wrong — re-export the "
                                          "model")


def test_constant_node_with_bad_dims(cli, tmp_path):
    def edit(model):
        table = table_of(model)
        value = onnx.TensorProto()
        value.CopyFrom(table)
        value.dims[0] = 500
        model.graph.initializer.remove(table)
        model.graph.node.insert(0, helper.make_node("Constant", [], [TABLE], name="table_const", value=value))
    model = edited(tmp_path, edit)
    assert_refused_everywhere(cli, model, "node 'table_const' (Constant) attribute 'value': holds 64000 bytes, but "
                                          "dims [500, 16] of float need 32000; the tensor is truncated or its dims "
                                          "are wrong — re-export the model")


@pytest.mark.parametrize("data_type", [0, 999])
def test_table_with_an_undefined_data_type(cli, tmp_path, data_type):
    model = edited(tmp_path, lambda m: setattr(table_of(m), "data_type", data_type))
    assert_refused_everywhere(cli, model, f"initializer '{TABLE}': data_type {data_type} is not an ONNX dtype; "
                                          "re-export the model")


def test_table_with_a_negative_dim(cli, tmp_path):
    model = edited(tmp_path, _dims(-1000, -16))
    assert_refused_everywhere(cli, model, f"initializer '{TABLE}': dims [-1000, -16] hold a negative size; "
                                          "re-export the model")


def test_table_with_a_segment_field(cli, tmp_path):
    def edit(model):
        table_of(model).segment.begin, table_of(model).segment.end = 0, 1000
    model = edited(tmp_path, edit)
    assert_refused_everywhere(cli, model, f"initializer '{TABLE}': is a segment of a larger tensor, which "
                                          "hps-surgeon cannot read; re-export the model without segments")


@pytest.mark.parametrize("dims", [(1000, 0), (0, 16)], ids=["a dim of 0", "no rows"])
def test_table_with_a_zero_dim_is_kept_in_the_model(cli, tmp_path, dims):
    def edit(model):
        _dims(*dims)(model)
        table_of(model).raw_data = b""
    model = edited(tmp_path, edit)
    result = cli("rewrite", model, "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        f"{model}: no embedding lookup to rewrite; nothing written",
        f"  not rewritten: node '/emb/Gather': table '{TABLE}' has shape {list(dims)}; an HPS table needs at least "
        "one row and emb_vec_size >= 1: kept inside the model"]
    assert not (tmp_path / "out").exists()


# --- text, names, graph structure ----------------------------------------------------------------

def _invalid_utf8(tmp_path: Path, placeholder: str, edit) -> Path:
    """The source with `edit` giving some string field `placeholder`, then those bytes made invalid UTF-8."""
    model = edited(tmp_path, edit)
    data = model.read_bytes()
    assert data.count(placeholder.encode()) >= 1
    model.write_bytes(data.replace(placeholder.encode(), b"\xff" * len(placeholder)))
    return model


def test_node_name_that_is_not_utf8(cli, tmp_path):
    model = _invalid_utf8(tmp_path, "QQQQ", lambda m: setattr(m.graph.node[0], "name", "QQQQ"))
    assert_refused_everywhere(cli, model, "node #0 name is not valid UTF-8 text (b'\\xff\\xff\\xff\\xff'); rename "
                                          "it or re-export the model")


def test_table_name_that_is_not_utf8(cli, tmp_path):
    def edit(model):
        for node in model.graph.node:
            node.input[:] = ["QQQQQQQQ" if name == TABLE else name for name in node.input]
        table_of(model).name = "QQQQQQQQ"
    model = _invalid_utf8(tmp_path, "QQQQQQQQ", edit)
    index = [t.name for t in onnx.load(str(SOURCE)).graph.initializer].index(TABLE)
    shown = "b'" + "\\xff" * 8 + "'"
    assert_refused_everywhere(cli, model, f"initializer #{index} name is not valid UTF-8 text ({shown}); rename it "
                                          "or re-export the model")


def test_graph_with_a_cycle(cli, tmp_path):
    def edit(model):
        model.graph.node[0].input.append(model.graph.node[-1].output[0])
    model = edited(tmp_path, edit, source=DLRM)
    first = onnx.load(str(DLRM)).graph.node[0]
    assert_refused_everywhere(cli, model, f"node #0 '{first.name}' ({first.op_type}) is on a cycle: its inputs depend "
                                          "on its own outputs; ONNX graphs are acyclic — re-export the model")


def test_tensor_produced_by_two_nodes(cli, tmp_path):
    def edit(model):
        model.graph.node.append(helper.make_node("Identity", ["keys"], [model.graph.node[0].output[0]], name="again"))
    model = edited(tmp_path, edit)
    first = onnx.load(str(SOURCE)).graph.node[0]
    assert_refused_everywhere(cli, model, f"tensor '{first.output[0]}' is produced twice (node #0 and node "
                                          f"#{len(onnx.load(str(SOURCE)).graph.node)} 'again' (Identity)); ONNX graphs "
                                          "assign each tensor once — re-export the model")


def test_table_name_of_300_characters(cli, tmp_path):
    """HugeCTR names are at most 120 characters: the table folder gets a shortened name, no ENAMETOOLONG."""
    long = "t" * 300

    def edit(model):
        for node in model.graph.node:
            node.input[:] = [long if name == TABLE else name for name in node.input]
        table_of(model).name = long
    model = edited(tmp_path, edit)
    result = cli("rewrite", model, "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert [p.name for p in (tmp_path / "out/tables").iterdir()] == ["t" * 120]


def test_nodes_sharing_one_name_are_all_found(cli, tmp_path):
    """ONNX does not require distinct node names: 26 lookups named alike are 26 lookups, not 1."""
    def edit(model):
        for node in model.graph.node:
            node.name = "same"
    model = edited(tmp_path, edit, source=DLRM)
    assert len(hps_surgeon.scan(model).lookups) == 26
    result = cli("rewrite", model, "--out", tmp_path / "out")
    assert result.code == 0, result.err
    rewritten = onnx.load(str(tmp_path / "out/model.onnx"))
    names = [n.name for n in rewritten.graph.node if n.op_type == "HPS_TRT"]
    assert len(names) == len(set(names)) == 26
    count = len(onnx.load(str(DLRM)).graph.node) - 1
    assert (f"  note: {count} node(s) shared a name with an earlier node and were renamed so that each is told "
            "apart: 'same' -> 'same_1', 'same' -> 'same_2', 'same' -> 'same_3' and") in result.out


# --- rewrite folders: configs, tables, what deploy copies ----------------------------------------

@pytest.fixture(scope="module")
def rewrite_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rewrite") / "rw"
    hps_surgeon.rewrite(SOURCE, out, model_name="demo")
    return out


@pytest.fixture
def rw(rewrite_folder, tmp_path) -> Path:
    """A copy of a rewrite folder, with a SECRET file and an outside table beside it."""
    copy = copy_rewrite(rewrite_folder, tmp_path / "rw")
    (tmp_path / "SECRET").write_bytes(bytes(range(1, 256)) * 256)
    outside = tmp_path / "outside_table"
    outside.mkdir()
    (outside / "key").write_bytes((tmp_path / "SECRET").read_bytes()[:8000])
    (outside / "emb_vector").write_bytes((tmp_path / "SECRET").read_bytes()[:64000])
    return copy


def edit_config(folder: Path, change) -> None:
    config = json.loads((folder / "hps_config.json").read_text())
    change(config["models"][0])
    (folder / "hps_config.json").write_text(json.dumps(config))


#: what a refused absolute sparse_files entry adds: rewrite writes them, so a moved folder meets this
MOVED = (" (an absolute path, as rewrite writes them: point it at this folder, or rewrite with --relative-paths "
         "for a folder that moves)")


def assert_rw_refused(cli, rw: Path, line: str) -> None:
    """check: `line` as its one error (warnings and notes aside), exit 1; deploy and verify: `line` as their one
    error line, exit 2; nothing written."""
    before = tree(rw.parent)
    checked = cli("check", rw / "model.onnx")
    found = [text for text in checked.out.splitlines() if not re.search(r": (warning|note): ", text)]
    assert (checked.code, found, checked.err) == (1, [line], "")
    deployed = cli("deploy", rw, "--repo", rw.parent / "repo")
    assert (deployed.code, deployed.error_line) == (2, f"hps-surgeon: error: rewrite folder fails validation: {line}")
    verified = cli("verify", SOURCE, rw / "model.onnx", "--config", rw / "hps_config.json")
    assert (verified.code, verified.error_line) == (2, f"hps-surgeon: error: {line}")
    assert tree(rw.parent) == before


def test_sparse_files_outside_the_config_folder(cli, rw):
    edit_config(rw, lambda m: m.update(sparse_files=["../outside_table"]))
    assert_rw_refused(cli, rw, f"{rw / 'hps_config.json'}:models[0].sparse_files[0]: '../outside_table' leads outside "
                               f"{rw} (to {rw.parent / 'outside_table'}); refusing to read it — keep what "
                               "hps_config.json names inside its folder")


def test_sparse_files_absolute_outside(cli, rw):
    edit_config(rw, lambda m: m.update(sparse_files=[str(rw.parent / "outside_table")]))
    assert_rw_refused(cli, rw, f"{rw / 'hps_config.json'}:models[0].sparse_files[0]: "
                               f"'{rw.parent / 'outside_table'}' leads outside {rw} (to {rw.parent / 'outside_table'}); "
                               f"refusing to read it — keep what hps_config.json names inside its folder{MOVED}")


def test_rewrite_folder_copied_without_repointing(cli, rewrite_folder, tmp_path):
    """rewrite writes absolute sparse_files: a plain copy still names the original's tables, outside the copy."""
    copy = tmp_path / "copy"
    shutil.copytree(rewrite_folder, copy)
    table = rewrite_folder / "tables/emb_weight"
    assert_rw_refused(cli, copy, f"{copy / 'hps_config.json'}:models[0].sparse_files[0]: '{table}' leads outside "
                                 f"{copy} (to {table}); refusing to read it — keep what hps_config.json names inside "
                                 f"its folder{MOVED}")
    repointed = copy_rewrite(rewrite_folder, tmp_path / "repointed")
    assert (cli("check", repointed / "model.onnx").code, cli("check", rewrite_folder / "model.onnx").code) == (0, 0)


def test_sparse_files_absolute_inside_is_accepted(cli, rw, tmp_path):
    """The HugeCTR-parity rewrite writes absolute sparse_files: inside the config's folder they are fine."""
    edit_config(rw, lambda m: m.update(sparse_files=[str(rw / "tables/emb_weight")]))
    checked = cli("check", rw / "model.onnx")
    assert (checked.code, checked.out) == (0, "")
    deployed = cli("deploy", rw, "--repo", tmp_path / "repo")
    assert deployed.code == 0, deployed.err
    assert (tmp_path / "repo/demo/hps/tables/emb_weight/key").read_bytes() == \
        (rw / "tables/emb_weight/key").read_bytes()


def test_table_folder_symlinked_outside(cli, rw):
    shutil.rmtree(rw / "tables/emb_weight")
    os.symlink(rw.parent / "outside_table", rw / "tables/emb_weight")
    assert_rw_refused(cli, rw, f"{rw / 'hps_config.json'}:models[0].sparse_files[0]: '{rw / 'tables/emb_weight'}' "
                               f"leads outside {rw} (to {rw.parent / 'outside_table'}); refusing to read it — keep "
                               "what hps_config.json names inside its folder")


@pytest.mark.parametrize("file", ["key", "emb_vector"])
def test_table_file_symlinked_outside(cli, rw, file):
    """No byte of the outside file reaches any output (the review saw 8 of them in a check message)."""
    (rw / "tables/emb_weight" / file).unlink()
    os.symlink(rw.parent / "SECRET", rw / "tables/emb_weight" / file)
    path = rw / "tables/emb_weight" / file
    assert_rw_refused(cli, rw, f"{rw / 'model.onnx'}:{NODE}: table 0/{file}: '{path}' leads outside {rw} (to "
                               f"{rw.parent / 'SECRET'}); refusing to read it — keep what hps_config.json names "
                               "inside its folder")


def test_config_lists_of_different_lengths(cli, rw):
    """Reported as a problem line, never an IndexError in the node checks that index those lists."""
    edit_config(rw, lambda m: m.update(embedding_vecsize_per_table=[]))
    assert_rw_refused(cli, rw, f"{rw / 'hps_config.json'}:models[0].embedding_vecsize_per_table: has 0 entries, "
                               "sparse_files has 1; HugeCTR needs one per table (hier_parameter_server.cpp:259 "
                               "refuses another count) — give one per table")


def test_config_json_nested_100000_deep(cli, rw):
    """Refused from the text, before a recursive parser could exhaust the stack (RecursionError)."""
    (rw / "hps_config.json").write_text("[" * 100000 + "]" * 100000)
    assert_rw_refused(cli, rw, f"{rw / 'hps_config.json'}:(file): JSON nested 100000 levels deep; an HPS config "
                               "nests 4 and at most 32 are read — this is not an HPS config")


def test_model_name_that_is_not_utf8(cli, rw):
    set_string_attribute(rw / "model.onnx", "model_name", b"\xff\xfedemo\0")
    assert_rw_refused(cli, rw, f"{rw / 'model.onnx'}:{NODE}: attribute 'model_name' is not valid UTF-8 "
                               "(b'\\xff\\xfedemo\\x00') — the plugin compares it as text; re-run hps-surgeon rewrite")


def _with_external_data(rw: Path, location: str) -> None:
    """The rewrite folder's model with one more (large) initializer, stored at `location`."""
    model = onnx.load(str(rw / "model.onnx"))
    model.graph.initializer.append(numpy_helper.from_array(np.ones((64, 64), np.float32), "big"))
    model.graph.node.append(helper.make_node("Identity", ["big"], ["big_out"], name="big_identity"))
    model.graph.output.append(helper.make_tensor_value_info("big_out", TensorProto.FLOAT, [64, 64]))
    onnx.save_model(model, str(rw / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
                    size_threshold=4096)
    model = onnx.load_model(str(rw / "model.onnx"), load_external_data=False)
    for entry in model.graph.initializer[-1].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(model, str(rw / "model.onnx"))


@pytest.mark.parametrize("location", ["../../../PAYLOAD.bin", "/etc/passwd"])
def test_deploy_of_external_data_outside_the_rewrite_folder(cli, rw, location):
    """The review's deploy wrote ../../../PAYLOAD.bin beside the repository (exit 0), or crashed on /etc/passwd."""
    _with_external_data(rw, location)
    payload = (rw / location).resolve()
    if location.startswith(".."):
        payload.write_bytes(b"P" * 16384)
    before = tree(rw.parent.parent)
    result = cli("deploy", rw, "--repo", rw.parent / "repo")
    assert (result.code, result.error_line) == (
        2, f"hps-surgeon: error: {rw / 'model.onnx'}: initializer 'big': external_data location: '{location}' leads "
           f"outside {rw} (to {payload}); refusing to read it — keep what model.onnx names inside its folder")
    assert tree(rw.parent.parent) == before
    checked = cli("check", rw / "model.onnx")
    assert checked.code == 1 and f"external_data location: '{location}' leads outside" in checked.out


def test_deploy_copies_external_data_inside_the_repository(cli, rw, tmp_path):
    _with_external_data(rw, "sub/../model.onnx.data")
    result = cli("deploy", rw, "--repo", tmp_path / "repo")
    assert result.code == 0, result.err
    deployed = onnx.load(str(tmp_path / "repo/demo/hps/model.onnx"))  # loads its external data from hps/
    big = next(t for t in deployed.graph.initializer if t.name == "big")
    np.testing.assert_array_equal(numpy_helper.to_array(big), np.ones((64, 64), np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SECRET", "outside_table", "repo", "rw"]


# --- NaN -----------------------------------------------------------------------------------------

def test_all_nan_table_is_a_warning_of_check(cli, rw):
    vectors = rw / "tables/emb_weight/emb_vector"
    vectors.write_bytes(np.full(16000, np.nan, np.float32).tobytes())
    result = cli("check", rw / "model.onnx")
    assert (result.code, result.out.splitlines()) == (0, [
        f"{rw / 'model.onnx'}:{NODE}: warning: table 0: {vectors} holds NaN or infinite values in its first 1000 rows "
        "(check reads only the first 64 KiB of each table) — lookups of those keys return them; re-export the table"])


def test_nan_default_value_is_a_warning_of_check(cli, rw):
    edit_config(rw, lambda m: m.update(default_value_for_each_table=[float("nan")]))
    result = cli("check", rw / "model.onnx")
    assert (result.code, result.out.splitlines()) == (0, [
        f"{rw / 'model.onnx'}:{NODE}: warning: default_value_for_each_table[0] is nan in hps_config.json: every key "
        "missing from the table returns it — make it a finite number"])


# --- verify with files that are not the models it needs -----------------------------------------

@pytest.mark.parametrize("which", ["original", "rewritten"])
@pytest.mark.parametrize("content, problem", [
    (b"", "not an ONNX model (no IR version or graph); check that the file is complete and really is .onnx"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "not a readable ONNX model (Error parsing message with type "
                                        "'onnx.ModelProto': Wire format was corrupt); check that the file is "
                                        "complete and really is .onnx"),
    ("truncated", "not a readable ONNX model (Error parsing message with type 'onnx.ModelProto': Wire format was "
                  "corrupt); check that the file is complete and really is .onnx"),
], ids=["empty", "PNG", "truncated"])
def test_verify_with_a_file_that_is_not_a_model(cli, rw, which, content, problem):
    bad = rw.parent / "bad.onnx"
    bad.write_bytes((rw / "model.onnx").read_bytes()[:300] if content == "truncated" else content)
    original, rewritten = (bad, rw / "model.onnx") if which == "original" else (SOURCE, bad)
    result = cli("verify", original, rewritten, "--config", rw / "hps_config.json")
    assert (result.code, result.error_line) == (2, f"hps-surgeon: error: {bad}: {problem}")


def test_verify_with_an_unrelated_original(cli, rw):
    result = cli("verify", DLRM, rw / "model.onnx", "--config", rw / "hps_config.json")
    assert (result.code, result.error_line) == (
        2, f"hps-surgeon: error: {rw / 'model.onnx'} is not a rewrite of {DLRM}: its outputs (out) are not the "
           "original's (click_probability); pass the model it was rewritten from")


# --- output folders ------------------------------------------------------------------------------

def _hostile_out(tmp_path: Path, kind: str) -> str:
    if kind == "dangling symlink":
        os.symlink(tmp_path / "nowhere", tmp_path / "link")
        return str(tmp_path / "link")
    if kind == "symlink loop":
        os.symlink(tmp_path / "loop", tmp_path / "loop")
        return str(tmp_path / "loop")
    return str(tmp_path / ("x" * 300))


@pytest.mark.parametrize("kind", ["dangling symlink", "symlink loop", "300-byte name"])
@pytest.mark.parametrize("command", ["rewrite", "deploy"])
def test_output_folder_that_cannot_be_one(cli, rw, tmp_path, kind, command):
    out = _hostile_out(tmp_path, kind)
    option = "--out" if command == "rewrite" else "--repo"
    before = tree(tmp_path)
    result = cli(command, SOURCE if command == "rewrite" else rw, option, out)
    expected = {
        "dangling symlink": f"{option} {out}: a symbolic link to nothing (or a loop of links); remove it or choose "
                            f"another {option}",
        "symlink loop": f"{option} {out}: a symbolic link to nothing (or a loop of links); remove it or choose "
                        f"another {option}",
        "300-byte name": f"{option} {'x' * 40}...: the name is 300 bytes; names are at most 255 bytes and the staging "
                         "folder beside it adds 16 — choose a shorter name"}[kind]
    assert (result.code, result.error_line) == (2, f"hps-surgeon: error: {expected}")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("command", ["rewrite", "deploy"])
def test_empty_output_folder_name(cli, rw, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    option = "--out" if command == "rewrite" else "--repo"
    before = tree(tmp_path)
    result = cli(command, SOURCE if command == "rewrite" else rw, option, "")
    assert (result.code, result.error_line) == (2, f"hps-surgeon: error: {option} '': an empty path; name the "
                                                   "output folder")
    assert tree(tmp_path) == before


def test_output_folder_dot_is_the_working_folder(cli, tmp_path, monkeypatch):
    """`--out .` writes into the working folder (no EBUSY, no `..old-*` beside it), replacing it only with --force."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = cli("rewrite", SOURCE, "--out", ".")
    assert result.code == 0, result.err
    assert sorted(p.name for p in work.iterdir()) == ["hps_config.json", "model.onnx", "report.json", "tables"]
    monkeypatch.chdir(work)  # the folder was replaced (moved into place whole): a new shell is in the new one
    again = cli("rewrite", SOURCE, "--out", ".")
    assert (again.code, again.error_line) == (2, f"hps-surgeon: error: {work}: folder is not empty; pass --force "
                                                 "to replace it or choose another --out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


@pytest.mark.parametrize("through", ["a symlinked parent", "a symlink to the folder"])
def test_rewrite_output_passes_the_confinement_rule_where_it_lands(cli, tmp_path, through):
    """rewrite validates in its staging folder, then writes the absolute sparse_files of --out: reached
    through a symlink or not, they resolve inside the folder that holds the config once it is moved."""
    (tmp_path / "real").mkdir()
    if through == "a symlinked parent":
        os.symlink(tmp_path / "real", tmp_path / "link")
        out = tmp_path / "link" / "out"
    else:
        (tmp_path / "real" / "out").mkdir()
        os.symlink(tmp_path / "real" / "out", tmp_path / "link")
        out = tmp_path / "link"
    assert cli("rewrite", SOURCE, "--out", out, "--model-name", "demo").code == 0
    landed = tmp_path / "real" / "out"
    config = json.loads((landed / "hps_config.json").read_text())
    assert [Path(f).resolve() for f in config["models"][0]["sparse_files"]] == [landed / "tables/emb_weight"]
    for model in (out / "model.onnx", landed / "model.onnx"):
        assert (cli("check", model).out, cli("check", model).code) == ("", 0)
    assert cli("deploy", out, "--repo", tmp_path / "repo").code == 0
    assert (tmp_path / "repo/demo/hps/tables/emb_weight/key").read_bytes() == \
        (landed / "tables/emb_weight/key").read_bytes()


def test_deploy_never_creates_anything_outside_the_repository(cli, rw, tmp_path):
    """Staging happens inside --repo; a failed deploy removes the folders it created for it."""
    parent = tmp_path / "deep" / "er"
    result = cli("deploy", rw, "--repo", parent / "repo", "--max-batch", "999999")
    assert result.code == 2
    assert not (tmp_path / "deep").exists()
    result = cli("deploy", rw, "--repo", parent / "repo")
    assert result.code == 0, result.err
    assert sorted(p.name for p in (parent / "repo").iterdir()) == ["demo", "start_triton.sh"]
    assert sorted(p.name for p in parent.iterdir()) == ["repo"]


def test_deploy_of_a_rewrite_folder_whose_model_is_a_symlink_outside(cli, rw, tmp_path):
    """deploy serialises the model it reads into the repository: it must be the folder's own."""
    elsewhere = tmp_path / "elsewhere.onnx"
    shutil.move(rw / "model.onnx", elsewhere)
    os.symlink(elsewhere, rw / "model.onnx")
    result = cli("deploy", rw, "--repo", tmp_path / "repo")
    assert (result.code, result.error_line) == (
        2, f"hps-surgeon: error: {rw / 'model.onnx'}: a symbolic link out of the rewrite folder (to {elsewhere}); "
           "refusing to deploy it — copy the file into the folder")
    assert not (tmp_path / "repo").exists()


def test_check_with_a_fifo_as_config_does_not_block(cli, rw, tmp_path):
    os.mkfifo(tmp_path / "fifo.json")
    result = cli("check", rw / "model.onnx", "--config", tmp_path / "fifo.json")
    assert (result.code, result.out) == (1, f"{tmp_path / 'fifo.json'}:(file): not a regular file — pass the "
                                            "hps_config.json that rewrite wrote\n")


def test_constant_node_whose_tensor_attribute_is_not_named_value(cli, tmp_path):
    """A Constant giving the table through another attribute is not taken for a table (was a KeyError)."""
    def edit(model):
        table = table_of(model)
        model.graph.initializer.remove(table)
        node = helper.make_node("Constant", [], [TABLE], name="table_const", value=table)
        node.attribute[0].name = "valuf"
        model.graph.node.insert(0, node)
    model = edited(tmp_path, edit)
    result = cli("scan", model)
    assert (result.code, result.out, result.err) == (0, f"{model}: 0 lookup(s) to rewrite, 0 not rewritable\n", "")


def test_publish_of_sparse_files_outside_the_config_folder(cli, rw, tmp_path):
    """publish copies tables into databases: the same rule, before the database is opened."""
    from hps_surgeon.storage import _native
    try:
        _native.load()
    except _native.StorageUnavailableError as exc:
        skip_unless_required(str(exc))
    edit_config(rw, lambda m: m.update(sparse_files=["../outside_table"]))
    result = cli("publish", rw, "--persistent-db", tmp_path / "db")
    assert (result.code, result.error_line) == (
        2, f"hps-surgeon: error: {rw / 'hps_config.json'}:models[0].sparse_files[0]: '../outside_table' leads outside "
           f"{rw} (to {rw.parent / 'outside_table'}); refusing to read it — keep what hps_config.json names inside its "
           "folder")
    assert not (tmp_path / "db").exists()
