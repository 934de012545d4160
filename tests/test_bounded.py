"""Hostile input, second round (issue 21): work bounded by the input, whatever it says.

Files a user names are refused before they are parsed when a parser would run without bound
(`hps_surgeon/bounded.py`: size, nesting, YAML aliases, long integers, lists); generated feeds are
refused past their byte limits with the dim that asks for them; a chain of key maps is walked once.
Each case is one line with its exit code, and nothing is written.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import hps_surgeon

from support import FIXTURES, lookup_model, tree

SOURCE = FIXTURES / "torch/embedding_int64_legacy.onnx"  # keys [batch, 26] int64 -> table 'emb.weight'
PLAN_FIX = "fix the file or write a new one with --plan-out"


@pytest.fixture
def alarm():
    """A hang fails the test (SIGALRM after 60 s, the fuzz's limit per command) instead of stalling the suite."""
    def hang(signum, frame):
        raise TimeoutError("still running after 60 s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def assert_config_refused(cli, rw: Path, where: str, problem: str) -> None:
    """check: one problem line (exit 1); deploy, verify and publish: one error line (exit 2); nothing written."""
    config = rw / "hps_config.json"
    before = tree(rw.parent)
    line = f"{config}:{where}: {problem}"
    checked = cli("check", rw / "model.onnx")
    assert (checked.code, checked.out, checked.err) == (1, line + "\n", "")
    deployed = cli("deploy", rw, "--repo", rw.parent / "repo")
    assert (deployed.code, deployed.error_line) == (2, f"hps-surgeon: error: rewrite folder fails validation: {line}")
    verified = cli("verify", SOURCE, rw / "model.onnx", "--config", config)
    assert (verified.code, verified.error_line) == (2, f"hps-surgeon: error: {line}")
    published = cli("publish", rw, "--persistent-db", rw.parent / "db")
    assert (published.code, published.error_line) == (2, f"hps-surgeon: error: {line}")
    assert tree(rw.parent) == before


# --- HPS configs ---------------------------------------------------------------------------------

def test_config_ending_in_an_unterminated_string_of_escapes(cli, rw, alarm):
    """The nesting pre-scan is linear: its string pattern backtracked quadratically on `\\"` runs (150 s+)."""
    (rw / "hps_config.json").write_text('{"models": "' + '\\"' * 50_000)
    assert_config_refused(cli, rw, "line 1", "not valid JSON (Unterminated string starting at) — fix the file or "
                                             "re-run hps-surgeon rewrite")


def test_config_with_an_integer_of_5000_digits(cli, rw):
    text = (rw / "hps_config.json").read_text().replace('"max_batch_size": 1024', '"max_batch_size": ' + "9" * 5000)
    (rw / "hps_config.json").write_text(text)
    assert_config_refused(cli, rw, "(file)", "a number of 5000 digits; numbers here fit 64 bits — this is not an HPS "
                                             "config")


@pytest.mark.parametrize("field", ["model", "sparse_files", "embedding_table_names"])
def test_config_string_with_a_lone_surrogate(cli, rw, field):
    """JSON's "\\ud800" is no character: it can name no file and print on no terminal (was exit 4)."""
    config = json.loads((rw / "hps_config.json").read_text())
    entry = config["models"][0]
    entry[field] = "de\ud800mo" if field == "model" else ["tables/emb\ud800"]
    (rw / "hps_config.json").write_text(json.dumps(config))  # ensure_ascii: written as \ud800
    where = "models[0].model" if field == "model" else f"models[0].{field}[0]"
    assert_config_refused(cli, rw, where, "holds a lone surrogate (\\ud800-\\udfff), which is no character and can "
                                          "name no file — fix the string")


def test_config_larger_than_4_mib(cli, rw):
    config = json.loads((rw / "hps_config.json").read_text())
    config["padding"] = "x" * (4 << 20)
    (rw / "hps_config.json").write_text(json.dumps(config))
    assert_config_refused(cli, rw, "(file)", "larger than 4 MiB, the most read of such a file; pass the "
                                             "hps_config.json that rewrite wrote")


def test_config_with_a_device_list_of_2_20_entries(cli, rw, alarm):
    """Refused before the schema validates a million entries (or quotes them all in its message)."""
    config = json.loads((rw / "hps_config.json").read_text())
    config["models"][0]["deployed_device_list"] = [0] * (1 << 20)
    (rw / "hps_config.json").write_text(json.dumps(config))
    assert_config_refused(cli, rw, "models[0].deployed_device_list", "a list of 1048576 entries; HPS config lists "
                                                                     "hold one entry per table or GPU, at most 65536 "
                                                                     "are read — fix the file")


def test_config_with_more_gpus_than_hugectr_makes_caches_for(cli, rw):
    config = json.loads((rw / "hps_config.json").read_text())
    config["models"][0]["deployed_device_list"] = list(range(2000))
    (rw / "hps_config.json").write_text(json.dumps(config))
    assert_config_refused(cli, rw, "models[0].deployed_device_list", "has 2000 entries, more than the 1024 read — "
                                                                     "HugeCTR makes an embedding cache on every GPU "
                                                                     "listed (hier_parameter_server.cpp:646-649) — "
                                                                     "list the GPUs HPS serves")


def test_config_with_2000_models(cli, rw):
    config = json.loads((rw / "hps_config.json").read_text())
    config["models"] = [dict(config["models"][0], model=f"m{i}") for i in range(2000)]
    (rw / "hps_config.json").write_text(json.dumps(config))
    assert_config_refused(cli, rw, "models", "has 2000 entries, more than the 1024 read — one HPS serves them all "
                                             "from one process — split the config")


@pytest.mark.parametrize("value, problem", [
    ("many", "'many' is not of type 'integer'"),
    (10**9, "1000000000 is greater than the maximum of 1024"),
])
def test_persistent_db_num_threads(cli, rw, value, problem):
    """Was exit 4 (int('many')), and for 10^9 "internal error: Resource temporarily unavailable" naming no field."""
    config = json.loads((rw / "hps_config.json").read_text())
    config["persistent_db"] = {"type": "rocks_db", "path": "db", "num_threads": value}
    (rw / "hps_config.json").write_text(json.dumps(config))
    assert_config_refused(cli, rw, "persistent_db.num_threads", f"{problem} — see the README's table of HPS config "
                                                                "fields")


# --- plan files ----------------------------------------------------------------------------------

def _plan_refused(cli, tmp_path: Path, plan: Path | str, problem: str) -> None:
    before = tree(tmp_path)
    result = cli("rewrite", SOURCE, "--out", tmp_path / "out", "--plan", plan)
    assert (result.code, result.error_line) == (2, f"hps-surgeon: error: --plan {plan}: {problem}")
    assert tree(tmp_path) == before


@pytest.fixture
def plan(tmp_path) -> Path:
    path = tmp_path / "plan.yaml"
    hps_surgeon.rewrite(SOURCE, tmp_path / "out", dry_run=True, plan_out=path)
    return path


BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("content, problem", [
    (BILLION_LAUGHS, f"not valid YAML (an alias (*a) at line 2; aliases are not read (write the value out)); "
                     f"{PLAN_FIX}"),
    ("[" * 1000 + "]" * 1000, f"not valid YAML (nested more than 32 levels deep at line 1); {PLAN_FIX}"),
    ("rows: " + "9" * 5000, f"not valid YAML (an integer of 5000 digits at line 1); {PLAN_FIX}"),
    ("[1, 2, 3]", "holds a list, not the mapping of options, tables and hps_trt_nodes that --plan-out writes; write a "
                  "new one with --plan-out"),
    ("name: \"\\ud800\"", f"name: holds a lone surrogate (not a character); {PLAN_FIX}"),
])
def test_plan_file_that_would_not_parse_in_bounded_work(cli, tmp_path, alarm, content, problem):
    path = tmp_path / "plan.yaml"
    path.write_text(content)
    _plan_refused(cli, tmp_path, path, problem)


@pytest.mark.parametrize("encoding, problem", [
    ("utf-16", f"UTF-16 text; save it as UTF-8 ({PLAN_FIX})"),
    ("latin-1", f"not UTF-8 text (byte 0); {PLAN_FIX}"),
])
def test_plan_file_that_is_not_utf8(cli, tmp_path, plan, encoding, problem):
    plan.write_bytes(("é" + plan.read_text()).encode(encoding))
    _plan_refused(cli, tmp_path, plan, problem)


def test_plan_file_with_a_mapping_where_a_name_belongs(cli, tmp_path, plan):
    """Was exit 4 (unhashable type: 'dict')."""
    plan.write_text(plan.read_text().replace("name: emb_weight", "name: {a: 1}"))
    _plan_refused(cli, tmp_path, plan, "not a plan written by --plan-out (TablePlan field 'name' is a mapping, "
                                       "expected str); write a new one with --plan-out")


@pytest.mark.parametrize("kind", ["/dev/zero", "FIFO", "folder"])
def test_plan_file_that_is_not_a_regular_file(cli, tmp_path, alarm, kind):
    """/dev/zero ended in MemoryError, a FIFO blocked forever."""
    path = {"/dev/zero": Path("/dev/zero"), "FIFO": tmp_path / "fifo.yaml", "folder": tmp_path / "folder"}[kind]
    if kind == "FIFO":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    _plan_refused(cli, tmp_path, path, f"not a regular file; {PLAN_FIX}")


def test_plan_file_larger_than_16_mib(cli, tmp_path, plan):
    with open(plan, "a") as f:
        f.write("# " + "x" * (16 << 20) + "\n")
    _plan_refused(cli, tmp_path, plan, f"larger than 16 MiB, the most read of such a file; {PLAN_FIX}")


@pytest.mark.parametrize("kind, problem", [
    ("alias bomb", "not valid YAML (an alias (*a) at line 2; aliases are not read (write the value out)); fix the "
                   "pattern file"),
    ("FIFO", "not a regular file; fix the pattern file"),
])
def test_pattern_file_of_patterns_dir(cli, tmp_path, alarm, kind, problem):
    """`--patterns DIR` is the user's YAML too: the same bounds as a plan file."""
    path = tmp_path / "patterns/my.pattern/pattern.yaml"
    path.parent.mkdir(parents=True)
    if kind == "FIFO":
        os.mkfifo(path)
    else:
        path.write_text(BILLION_LAUGHS)
    result = cli("scan", SOURCE, "--patterns", tmp_path / "patterns")
    assert (result.code, result.error_line) == (2, f"hps-surgeon: error: {path}: {problem}")


# --- verify: --inputs files and generated feeds --------------------------------------------------

INPUTS_FIX = "pass a JSON file written by `polygraphy run --save-inputs` or polygraphy.json.save_json"


@pytest.mark.parametrize("content, problem", [
    ("[" * 100_000 + "]" * 100_000, f"JSON nested 100000 levels deep; Polygraphy's input data nests 5 and at most 32 "
                                    f"are read — {INPUTS_FIX}"),
    ("[1, 2, 3]", "feed 0 is int, not a mapping of input name -> array"),
    ('[{"keys": ' + "9" * 5000 + "}]", f"a number of 5000 digits; numbers here fit 64 bits — {INPUTS_FIX}"),
])
def test_inputs_file_refused_in_one_line(cli, rw, tmp_path, content, problem):
    """Deep nesting was a RecursionError and an array of ints an AttributeError, both "verify stopped" (exit 2)."""
    path = tmp_path / "inputs.json"
    path.write_text(content)
    result = cli("verify", SOURCE, rw / "model.onnx", "--config", rw / "hps_config.json", "--inputs", path)
    assert (result.code, result.error_line) == (2, f"hps-surgeon: error: --inputs {path}: {problem}")


@pytest.mark.parametrize("key_shape, shape", [
    ((2, 2**30), "[2, 1073741824] is 16.0 GiB (dim 1 = 1073741824, static in the model)"),
    (("B", 2**30), "[1, 1073741824] at batch 1 is 8.0 GiB (dim 1 = 1073741824, static in the model)"),
])
def test_generated_feed_past_its_byte_limit(cli, tmp_path, key_shape, shape):
    """A keys input declaring a static dim of 2^31 allocated 24 GB (the OOM killer ended it); [batch, 2^31] asked
    for 1 TiB. (2^30 here: 2^31 keys per sample exceed what a config can hold, maxnum_catfeature_query...)"""
    model = lookup_model(tmp_path / "m.onnx", key_shape=key_shape)
    out = tmp_path / "out"
    hps_surgeon.rewrite(model, out)
    result = cli("verify", model, out / "model.onnx", "--config", out / "hps_config.json")
    assert (result.code, result.error_line) == (
        2, f"hps-surgeon: error: input 'keys': shape {shape}; verify generates at most 256 MiB per input — lower "
           "--batch-sizes or --max-keys-per-sample, or pass your own samples with --inputs or --data-loader-script")


def test_keys_per_sample_past_what_hugectr_reads(cli, tmp_path):
    """A static keys dim of 2^31 went into maxnum_catfeature_query_per_table_per_sample, and the staged config's
    validation then called it a bug of the rewrite."""
    model = lookup_model(tmp_path / "m.onnx", key_shape=("B", 2**31))
    result = cli("rewrite", model, "--out", tmp_path / "out")
    assert (result.code, result.error_line) == (
        2, f"hps-surgeon: error: {model}: keys 'keys' of node 'lookup' hold 2147483648 keys per sample; HugeCTR reads "
           "maxnum_catfeature_query_per_table_per_sample as an int (at most 2147483647) — re-export the model with "
           "fewer keys per sample")
    assert not (tmp_path / "out").exists()


def test_generated_feeds_past_their_total_limit(cli, rw):
    result = cli("verify", SOURCE, rw / "model.onnx", "--config", rw / "hps_config.json", "--batch-sizes",
                 "1000000", "--iterations", "100")
    assert (result.code, result.error_line) == (
        2, "hps-surgeon: error: --iterations 100 at --batch-sizes 1000000 (and up to 64 more feeds at the largest) "
           "would generate 31.8 GiB of feeds; verify holds at most 2.0 GiB — lower --iterations or --batch-sizes")


# --- graphs ----------------------------------------------------------------------------------------

def _key_map_chain(path: Path, depth: int) -> Path:
    """keys -> Gather(map_0) -> ... -> Gather(map_{depth-1}) -> Gather(table): a chain of key maps."""
    nodes, initializers, keys = [], [], "keys"
    for i in range(depth):
        initializers.append(numpy_helper.from_array(np.arange(100, dtype=np.int64), f"map_{i}"))
        nodes.append(helper.make_node("Gather", [f"map_{i}", keys], [f"keys_{i}"], name=f"map_lookup_{i}"))
        keys = f"keys_{i}"
    initializers.append(numpy_helper.from_array(np.ones((100, 8), np.float32), "table"))
    nodes.append(helper.make_node("Gather", ["table", keys], ["out"], name="lookup"))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("keys", TensorProto.INT64, ["B", 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", 4, 8])], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_chain_of_10000_key_maps_is_walked_once(cli, tmp_path, alarm):
    """The matcher asked, for each of the 10,000 Gathers, whether its keys vary with the inputs by walking the
    chain above it (51 s to scan); the answer is now remembered per tensor, so each tensor is walked once."""
    from hps_surgeon.match import _VariesWithInputs
    from hps_surgeon.load import read_model

    model = _key_map_chain(tmp_path / "chain.onnx", 10_000)
    result = cli("scan", model)
    assert result.code == 0 and result.err == ""
    assert result.out.splitlines()[0] == f"{model}: 1 lookup(s) to rewrite, 0 not rewritable"
    varies = _VariesWithInputs()
    tensors = read_model(model).graph.tensors()
    assert varies(tensors["keys_9999"]) and varies(tensors["keys_0"]) and not varies(tensors["map_0"])
    assert len(varies._known) == len(tensors) - 2  # each tensor up the chain answered once (all but table, out)


def _reversed_nodes(model):
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))


def _node(model, op: str):
    return next(n for n in model.graph.node if n.op_type == op)


@pytest.mark.parametrize("edit, problem", [
    (_reversed_nodes, "Nodes in a graph must be topologically sorted, however input '/Flatten_output_0' of node: "
                      "name: /fc/Gemm OpType: Gemm)"),
    (lambda m: setattr(m, "ir_version", 99), "Your model ir_version 99 is higher than the checker's"),
    (lambda m: _node(m, "Gemm").input.__setitem__(0, ""), "Node (/fc/Gemm)'s input 0 is marked single but has an "
                                                          "empty string in the graph"),
    (lambda m: _node(m, "Gemm").input.__setitem__(0, "nowhere"), "Nodes in a graph must be topologically sorted, "
                                                                 "however input 'nowhere' of node: name: /fc/Gemm "
                                                                 "OpType: Gemm)"),
    (lambda m: _node(m, "Flatten").attribute[0].__setattr__("i", 5), "[ShapeInferenceError] Inference error(s): "
                                                                     "(op_type:Flatten, node name: /Flatten)"),
], ids=["nodes out of order", "ir_version 99", "empty input", "missing input", "axis 5"])
def test_invalid_source_is_blamed_before_anything_is_written(cli, tmp_path, edit, problem):
    """Models load accepts but onnx.checker refuses were staged and rewritten, then reported as a bug of the
    rewrite ("Please report this"), naming a staging file already deleted."""
    model = onnx.load(str(SOURCE))
    edit(model)
    path = tmp_path / "src" / "m.onnx"
    path.parent.mkdir()
    onnx.save(model, str(path))
    before = tree(tmp_path)
    for dry_run in ([], ["--dry-run", "--plan-out", tmp_path / "plan.yaml"]):
        result = cli("rewrite", path, "--out", tmp_path / "out", *dry_run)
        assert result.code == 2
        assert result.error_line.startswith(f"hps-surgeon: error: {path}: fails onnx.checker ({problem}")
        assert result.error_line.endswith("it is not valid ONNX, so it cannot be rewritten — fix or re-export the "
                                          "model")
        assert tree(tmp_path) == before


def test_domain_of_onnx_itself_is_refused(cli, tmp_path):
    result = cli("rewrite", SOURCE, "--out", tmp_path / "out", "--domain", "ai.onnx")
    assert (result.code, result.error_line) == (
        2, "hps-surgeon: error: --domain ai.onnx: a domain of ONNX's own operators, where no HPS_TRT is defined "
           "(onnx.checker refuses the node); use trt.plugins (the default) or '' (HugeCTR's layout)")
    assert not (tmp_path / "out").exists()

