"""verify (Polygraphy Comparator + HpsRunner) as users meet it: output, exit codes, samples, bad input,
and `polygraphy run --hps` through Polygraphy's own CLI.

Exit codes: 0 PASSED, 1 FAILED (a real mismatch), 2 bad input (one line), 3 INCONCLUSIVE.
Every fixture's pass/tamper pair is in test_fixtures.py; key tracing per structure in test_keyspace.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import hps_surgeon
from hps_surgeon.verify import verify

from support import FIXTURES, copy_rewrite, tampered_copy

DLRM = FIXTURES / "torch/dlrm_small_legacy.onnx"
THIRDPARTY = FIXTURES / "thirdparty/models"


@pytest.fixture(scope="module")
def dlrm(tmp_path_factory):
    out = tmp_path_factory.mktemp("dlrm") / "rw"
    hps_surgeon.rewrite(DLRM, out)
    return DLRM, out


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hps_surgeon", *map(str, args)], capture_output=True, text=True)


def verify_args(out, *more):
    return ["verify", DLRM, out / "model.onnx", "--config", out / "hps_config.json", *more]


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The whole of stderr, which must be exactly one `hps-surgeon: error:` line and no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hps-surgeon: error: "), proc.stderr
    return lines[0]


# --- what a user sees -------------------------------------------------------------------------------

def test_keys_are_traced_per_column_to_each_table(dlrm):
    source, out = dlrm
    report = verify(source, out / "model.onnx", out / "hps_config.json")
    rows = {n["node"]: n["rows"] for n in json.loads((out / "report.json").read_text())["hps_trt_nodes"]}
    columns = {c.column.index: c for c in report.columns}
    assert sorted(columns) == list(range(26))
    for index, found in columns.items():
        (node,) = found.nodes
        assert node == f"hps_trt//emb_l.{index}/Gather" and found.how == "identity"
        assert found.values.min() >= 0 and found.values.max() < rows[node]
    # every table saw min(64, rows) distinct keys at least, and none outside it
    assert all(t.existing >= min(64, t.rows) for t in report.tables)
    assert all(c.missing == 0 for c in report.coverage)


def test_cli_is_quiet_prints_coverage_and_passes(dlrm):
    _, out = dlrm
    proc = run(*verify_args(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "[I]" not in proc.stdout and "colored" not in proc.stdout  # no Polygraphy logs
    assert "  hps_trt//emb_l.1/Gather   emb_l_1_weight   20    20             20        100.0%   0" in proc.stdout
    assert "output 'click_probability': max abs error 0, max rel error 0" in proc.stdout
    assert "PASSED: 4 feeds (generated; batch sizes 1, 64) match within atol 1e-06, rtol 1e-05" in proc.stdout


def test_verbose_shows_polygraphy_logs(dlrm):
    _, out = dlrm
    proc = run(*verify_args(out, "--verbose", "--batch-sizes", "8"))
    assert proc.returncode == 0, proc.stderr
    assert "[I] onnxrt-original" in proc.stdout and "[I] hps-reference" in proc.stdout


def test_json_report(dlrm):
    _, out = dlrm
    proc = run(*verify_args(out, "--json", "--batch-sizes", "1,32", "--iterations", "3"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["verdict"] == "passed" and report["batch_sizes"] == [1, 32] and report["feeds"] >= 6
    assert report["shapes"] == {"dense_features": [[1, 13], [32, 13]], "sparse_keys": [[1, 26], [32, 26]]}
    (first,) = [c for c in report["coverage"] if c["node"] == "hps_trt//emb_l.0/Gather"]
    assert first["table"] == "emb_l_0_weight" and first["rows"] == 1000 and first["missing"] == 0
    assert first["existing"] == first["distinct"] >= 64 and first["fraction"] == first["existing"] / 1000
    assert len(report["key_columns"]) == 26 and report["untraced_nodes"] == []


def test_tampered_table_fails_with_exit_1_naming_the_node_and_key(dlrm, tmp_path):
    _, out = dlrm
    copy = tampered_copy(out, tmp_path / "rw", lambda rows: rows + 0.5)
    proc = run(*verify_args(copy))
    assert proc.returncode == 1
    assert proc.stderr.startswith(
        "hps-surgeon: verify FAILED: HPS_TRT node 'hps_trt//emb_l.0/Gather' returns another vector than the original "
        "lookup '/emb_l.0/Gather' for key 25 (row 25 of table 'emb_l_0_weight'; feed 0, sample 0, key 0 of the "
        "sample): ")
    assert "max abs error 0.5 (and 25 more node(s)); the model outputs differ too: output 'click_probability' " \
           "differs: max abs error" in proc.stderr


def test_one_wrong_row_fails_even_where_the_outputs_agree(dlrm, tmp_path):
    """One element of one row one ulp off: the outputs stay within tolerance, the lookup check does not."""
    source, out = dlrm
    copy = copy_rewrite(out, tmp_path / "rw")
    config = json.loads((copy / "hps_config.json").read_text())["models"][0]
    path = copy / config["sparse_files"][config["embedding_table_names"].index("emb_l_3_weight")] / "emb_vector"
    vectors = np.fromfile(path, dtype="<f4").reshape(-1, 16)
    vectors[7, 2] = np.nextafter(vectors[7, 2], np.float32(np.inf))
    vectors.tofile(path)
    report = verify(source, copy / "model.onnx", copy / "hps_config.json", batch_sizes=(64,), iterations=4)
    assert report.verdict == "failed" and report.outputs_match
    (wrong,) = report.wrong_lookups
    assert (wrong.node, wrong.original, wrong.key, wrong.row) == ("hps_trt//emb_l.3/Gather", "/emb_l.3/Gather", 7, 7)
    assert wrong.mismatched >= 1 and 0 < wrong.max_abs < 1e-6  # one element per time key 7 came up
    proc = run(*verify_args(copy, "--batch-sizes", "64", "--iterations", "4"))
    assert proc.returncode == 1
    assert proc.stderr.startswith("hps-surgeon: verify FAILED: HPS_TRT node 'hps_trt//emb_l.3/Gather' returns another "
                                  "vector than the original lookup '/emb_l.3/Gather' for key 7 (row 7 of table "
                                  "'emb_l_3_weight'; feed ")
    assert proc.stderr.rstrip().endswith("the model outputs agree within atol 1e-06, rtol 1e-05: only the per-lookup "
                                         "comparison sees this")


def test_a_batch_size_the_original_cannot_run_is_skipped_with_a_note(tmp_path):
    """deepctr-torch DCNMix ends in squeeze(): at batch 1 the original itself fails (torch too)."""
    source = THIRDPARTY / "deepctr_torch_dcnmix_squeeze_batch1_legacy.onnx"
    result = hps_surgeon.rewrite(source, tmp_path / "rw")
    proc = run("verify", source, result.model_path, "--config", result.config_path)
    assert proc.returncode == 0, proc.stderr
    assert ("note: batch size 1 skipped: the original model fails at it (node '/Concat_2' (Concat): "
            "input_rank == reference_rank was false. Ranks of input data are different") in proc.stdout
    assert "PASSED: 2 feeds (generated; batch sizes 64)" in proc.stdout
    proc = run("verify", source, result.model_path, "--config", result.config_path, "--batch-sizes", "1")
    assert proc.returncode == 2
    assert one_error_line(proc).startswith(
        f"hps-surgeon: error: {source}: the original model fails on the generated inputs at every batch size "
        "tried (batch 1: node '/Concat_2' (Concat):")


def test_an_original_that_needs_real_samples_says_so(tmp_path):
    """torchrec (dynamo): the jagged lengths must add up to the values; generated lengths do not."""
    source = THIRDPARTY / "torchrec_dlrm_kjt_static_dynamo.onnx"
    result = hps_surgeon.rewrite(source, tmp_path / "rw")
    proc = run("verify", source, result.model_path, "--config", result.config_path)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "node 'node_Split_92' (Split): Cannot split using values in 'split' attribute" in line
    assert line.endswith("or real samples with --inputs FILE or --data-loader-script SCRIPT")


# --- NaN: one rule everywhere -------------------------------------------------------------------------

def test_nan_in_one_output_only_is_a_mismatch_named_as_nan(tmp_path):
    """Keras 3 masked average: NaN in both for an all-padding row passes (test_fixtures); NaN rows in the
    rewritten tables only give NaN in the rewritten model only: FAILED, and the message says NaN."""
    source = THIRDPARTY / "keras3_masked_average_nan.onnx"
    result = hps_surgeon.rewrite(source, tmp_path / "rw")
    copy = tampered_copy(result.out_dir, tmp_path / "nan", lambda rows: rows * np.nan)
    proc = run("verify", source, copy / "model.onnx", "--config", copy / "hps_config.json")
    assert proc.returncode == 1
    assert proc.stderr.startswith("hps-surgeon: verify FAILED: HPS_TRT node 'hps_trt/functional_1/hist_emb_1/GatherV2' "
                                  "returns another vector than the original lookup")
    assert "max abs error inf; the model outputs differ too: output 'dense' differs: NaN in the original only at " \
           "0 position(s), in the rewritten model only at " in proc.stderr
    assert "(NaN in both at the same position counts as equal)" in proc.stderr
    report = verify(source, copy / "model.onnx", copy / "hps_config.json")
    (out,) = report.outputs
    assert report.verdict == "failed" and out.nan_rewritten_only > 0 and out.nan_original_only == 0
    (wrong,) = report.wrong_lookups
    assert wrong.key != 0 and wrong.max_abs == float("inf")  # row 0 (padding) stays; a NaN row is no NaN row


# --- user samples: --inputs (Polygraphy's JSON), --data-loader-script ------------------------------------

def test_inputs_saved_by_polygraphy_run_drive_verify_and_coverage_judges_them(dlrm, tmp_path):
    """Samples from `polygraphy run --save-inputs` with keys 0..19: tables of up to 40 rows reach their floor
    (half their rows), the 17 larger ones do not: INCONCLUSIVE (exit 3). The advice names what will not help
    (more of the same samples: the second half added no key) and the flags that accept what each table saw;
    following it PASSES."""
    source, out = dlrm
    samples = tmp_path / "inputs.json"
    saved = subprocess.run(["polygraphy", "run", str(source), "--onnxrt", "--save-inputs", str(samples),
                            "--input-shapes", "dense_features:[16,13]", "sparse_keys:[16,26]",
                            "--val-range", "sparse_keys:[0,19]", "--iterations", "8"], capture_output=True, text=True)
    assert saved.returncode == 0, saved.stdout[-2000:]
    proc = run(*verify_args(out, "--inputs", samples))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    message = proc.stderr.strip()
    assert message.startswith(
        "hps-surgeon: verify INCONCLUSIVE: the outputs and every compared lookup match, but table 'emb_l_0_weight' "
        "(node hps_trt//emb_l.0/Gather) saw 20 distinct existing key(s) of 1000, below its floor of 64 "
        "(--min-distinct-keys 64) (and 16 more table(s)); the second half of the 8 feeds added 1 new key(s): at that "
        "rate about 176 more feeds of the same traffic would reach the floor (fewer new keys come as a field is used "
        "up); or accept what it saw with --min-distinct-keys emb_l_0_weight=20; to accept what every short table "
        "saw: --min-distinct-keys emb_l_0_weight=20 --min-distinct-keys "), message
    assert "table 'emb_l_0_weight': 20 distinct existing key(s) of 1000, below its floor of 64" in proc.stdout
    accept = message.split("to accept what every short table saw: ")[1].split()
    assert accept[::2] == ["--min-distinct-keys"] * 17
    assert all(flag.endswith("=20") for flag in accept[1::2])  # each saw all of 0..19
    proc = run(*verify_args(out, "--inputs", samples, *accept))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "keys sparse_keys" not in proc.stdout  # the user's samples: nothing traced
    proc = run(*verify_args(out, "--inputs", samples, "--min-distinct-keys", "20"))
    assert proc.returncode == 0, proc.stderr
    assert f"PASSED: 8 feeds (--inputs {samples}; batch sizes 16)" in proc.stdout


def test_a_small_table_needs_half_its_rows_without_its_padding_row(dlrm, tmp_path):
    """Real samples over ids 1..10 of the 20-row tables (id 0 reserved, its row zeros as padding_idx leaves
    it): 10 of 19 counted rows is enough; 9 is not, and the advice's flag accepts it. (The other tables'
    floors are set to what the samples give them.)"""
    source, out = dlrm
    copy = copy_rewrite(out, tmp_path / "rw")
    config = json.loads((copy / "hps_config.json").read_text())["models"][0]
    path = copy / config["sparse_files"][config["embedding_table_names"].index("emb_l_1_weight")] / "emb_vector"
    vectors = np.fromfile(path, dtype="<f4").reshape(-1, 16)
    vectors[0] = 0.0
    vectors.tofile(path)
    rows = {t["name"]: t["rows"] for t in json.loads((out / "report.json").read_text())["tables"]}

    def samples(ids: int) -> list:
        rng = np.random.default_rng(0)
        keys = (1 + (np.arange(32)[:, None] + np.arange(26)[None, :]) % ids).astype(np.int64)
        return [{"dense_features": rng.standard_normal((32, 13)).astype(np.float32), "sparse_keys": keys}
                for _ in range(4)]

    from polygraphy.json import save_json

    for ids, verdict in ((10, "passed"), (9, "inconclusive")):
        save_json(samples(ids), str(tmp_path / f"s{ids}.json"))
        report = verify(source, copy / "model.onnx", copy / "hps_config.json", inputs=tmp_path / f"s{ids}.json",
                        table_floors={t: min(ids, r) for t, r in rows.items() if t != "emb_l_1_weight"})
        (table,) = [t for t in report.tables if t.table == "emb_l_1_weight"]
        assert (table.padding, table.floor, table.existing) == (1, 10, ids)
        assert table.rule == "half of its 19 rows; 1 all-zero padding row(s) not counted"
        assert report.verdict == verdict
    assert report.short_tables == (table,)
    report = verify(source, copy / "model.onnx", copy / "hps_config.json", inputs=tmp_path / "s9.json",
                    table_floors={t: min(9, r) for t, r in rows.items()})
    assert report.verdict == "passed"


def test_data_loader_script_drives_verify(dlrm, tmp_path):
    source, out = dlrm
    nodes = json.loads((out / "report.json").read_text())["hps_trt_nodes"]
    rows = [next(n["rows"] for n in nodes if n["node"] == f"hps_trt//emb_l.{i}/Gather") for i in range(26)]
    script = tmp_path / "feeds.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np
        ROWS = np.array({rows})

        def make_feeds():
            for i in range(12):
                keys = (np.arange(64)[:, None] + 64 * i) % ROWS[None, :]
                yield {{"dense_features": np.full((64, 13), 0.5, dtype=np.float32),
                        "sparse_keys": keys.astype(np.int64)}}
    """))
    proc = run(*verify_args(out, "--data-loader-script", f"{script}:make_feeds"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"PASSED: 12 feeds (--data-loader-script {script}:make_feeds; batch sizes 64)" in proc.stdout


@pytest.mark.parametrize("content, message", [
    (None, "--inputs {path}: no such file; pass a JSON file written by `polygraphy run --save-inputs`"),
    ("not json", "--inputs {path}: not Polygraphy input data ("),
    ('{"a": 1}', "--inputs {path}: expected a list of feeds (input name -> array), got a mapping"),
    ("[]", "--inputs {path}: holds no feeds"),
])
def test_unusable_inputs_file_is_one_line(dlrm, tmp_path, content, message):
    _, out = dlrm
    path = tmp_path / "inputs.json"
    if content is not None:
        path.write_text(content)
    proc = run(*verify_args(out, "--inputs", path))
    assert proc.returncode == 2
    assert one_error_line(proc).startswith("hps-surgeon: error: " + message.format(path=path))


@pytest.mark.parametrize("feed, message", [
    ({"dense_features": np.zeros((2, 13), np.float32)},
     "feed 0 lacks input 'sparse_keys' (the model takes dense_features, sparse_keys)"),
    ({"dense_features": np.zeros((2, 13), np.float32), "sparse_keys": np.zeros((2, 26), np.float32)},
     "feed 0: input 'sparse_keys' is float32, the model takes int64"),
    ({"dense_features": np.zeros((2, 12), np.float32), "sparse_keys": np.zeros((2, 26), np.int64)},
     "feed 0: input 'dense_features' has shape [2, 12], the model takes ['batch', 13]"),
    ({"dense_features": np.zeros((2, 13), np.float32), "sparse_keys": np.full((2, 26), 5000, np.int64)},
     "feed 0: the original model fails on it: node '/emb_l."),
])
def test_samples_that_do_not_fit_the_model_are_named(dlrm, tmp_path, feed, message):
    from polygraphy.json import save_json

    _, out = dlrm
    path = tmp_path / "inputs.json"
    save_json([feed], str(path))
    proc = run(*verify_args(out, "--inputs", path))
    assert proc.returncode == 2
    assert one_error_line(proc).startswith(f"hps-surgeon: error: --inputs {path}: {message}")


def test_data_loader_script_errors_are_one_line(dlrm, tmp_path):
    _, out = dlrm
    script = tmp_path / "broken.py"
    script.write_text("def load_data():\n    raise RuntimeError('no traffic today')\n")
    proc = run(*verify_args(out, "--data-loader-script", script))
    assert proc.returncode == 2
    assert one_error_line(proc) == (f"hps-surgeon: error: --data-loader-script {script}: load_data() failed: "
                                    "RuntimeError: no traffic today")
    proc = run(*verify_args(out, "--data-loader-script", tmp_path / "missing.py"))
    assert proc.returncode == 2 and "no such file" in one_error_line(proc)


# --- bad input: one line, exit 2, never a traceback --------------------------------------------------------

def _bad_files(dlrm, tmp_path):
    source, out = dlrm
    model_bytes = (out / "model.onnx").read_bytes()
    png = b"\x89PNG\r\n\x1a\n" + bytes(64)
    files = {"empty": b"", "truncated": model_bytes[: len(model_bytes) // 2], "png": png,
             "text": b"hello, this is not a model\n"}
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.onnx"
        paths[name].write_bytes(data)
    return paths


@pytest.mark.parametrize("kind", ["empty", "truncated", "png", "text"])
@pytest.mark.parametrize("which", ["original", "rewritten", "config"])
def test_unreadable_files_are_one_line(dlrm, tmp_path, kind, which):
    source, out = dlrm
    bad = _bad_files(dlrm, tmp_path)[kind]
    args = {"original": source, "rewritten": out / "model.onnx", "config": out / "hps_config.json"}
    args[which] = bad
    proc = run("verify", args["original"], args["rewritten"], "--config", args["config"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert str(bad) in one_error_line(proc)


def test_unrelated_or_swapped_models_are_refused(dlrm, tmp_path):
    source, out = dlrm
    other = FIXTURES / "torch/embedding_int64_legacy.onnx"
    proc = run("verify", other, out / "model.onnx", "--config", out / "hps_config.json")
    assert proc.returncode == 2
    assert one_error_line(proc) == (
        f"hps-surgeon: error: {out / 'model.onnx'} is not a rewrite of {other}: its outputs (click_probability) "
        "are not the original's (out); pass the model it was rewritten from")
    proc = run("verify", out / "model.onnx", source, "--config", out / "hps_config.json")
    assert proc.returncode == 2
    assert one_error_line(proc) == (
        f"hps-surgeon: error: {source}: has no HPS_TRT node (it looks like the original: pass rewrite's "
        "model.onnx second); pass the model.onnx written by hps-surgeon rewrite as REWRITTEN")
    proc = run("verify", source, out / "model.onnx", "--config", tmp_path / "nope.json")
    assert proc.returncode == 2
    assert one_error_line(proc) == f"hps-surgeon: error: {tmp_path / 'nope.json'}: no such file"
    assert run("verify", source, out / "model.onnx").returncode == 2  # --config is required


def test_an_attached_sparse_model_cannot_be_compared_and_says_why(tmp_path):
    """--hugectr-sparse-model: the rewrite takes keys where the original took embeddings."""
    source = FIXTURES / "hugectr/dlrm_sparse_input.onnx"
    result = hps_surgeon.rewrite(source, tmp_path / "rw", hugectr_sparse_models=[
        f"sparse_embedding1={FIXTURES / 'hugectr/sparse_embedding1_sparse_0.model'}:sum:2"])
    proc = run("verify", source, result.model_path, "--config", result.config_path)
    assert proc.returncode == 2
    assert one_error_line(proc).startswith(
        f"hps-surgeon: error: {result.model_path} takes input 'sparse_embedding1_keys', which dlrm_sparse_input.onnx "
        "does not (a --hugectr-sparse-model rewrite replaces an embedding input with keys")


def test_a_model_that_is_not_valid_onnx_is_named_by_op_and_node(dlrm, tmp_path):
    _, out = dlrm
    source = THIRDPARTY / "keras3_hashing_tf_ops.onnx"
    proc = run("verify", source, out / "model.onnx", "--config", out / "hps_config.json")
    assert proc.returncode == 2
    assert one_error_line(proc).startswith(
        f"hps-surgeon: error: {source}: not a valid ONNX model: node 'functional_1/hashing_1/hash' is "
        "StringToHashBucketFast, which ONNX does not define")


@pytest.mark.parametrize("option, message", [
    (["--batch-sizes", "0"], "argument --batch-sizes: '0': each value must be at least 1"),
    (["--iterations", "0"], "--iterations 0: must be at least 1"),
    (["--max-keys-per-sample", "0"], "--max-keys-per-sample 0: must be at least 1"),
    (["--min-distinct-keys", "-1"], "--min-distinct-keys -1: give N or TABLE=N, N a whole number >= 0"),
    (["--min-distinct-keys", "emb_l_0_weight=many"],
     "--min-distinct-keys emb_l_0_weight=many: give N or TABLE=N, N a whole number >= 0"),
    (["--min-distinct-keys", "emb_l_0_weigth=3"], "--min-distinct-keys emb_l_0_weigth=3: {config} has no table "
                                                  "'emb_l_0_weigth' (its tables: emb_l_0_weight, emb_l_10_weight, "),
])
def test_bad_options_are_usage_errors(dlrm, option, message):
    _, out = dlrm
    proc = run(*verify_args(out, *option))
    assert proc.returncode == 2
    assert message.format(config=out / "hps_config.json") in proc.stderr and "Traceback" not in proc.stderr


def test_native_backend_without_library_is_one_line(dlrm, monkeypatch):
    _, out = dlrm
    monkeypatch.setenv("HPS_SURGEON_PLUGIN_LIB", "/nonexistent/libhps_plugin.so")
    proc = run(*verify_args(out, "--backend", "native"))
    assert proc.returncode == 2
    assert "/nonexistent/libhps_plugin.so" in one_error_line(proc)


# --- polygraphy run --hps ---------------------------------------------------------------------------

def polygraphy_run(model, config, *more) -> subprocess.CompletedProcess:
    return subprocess.run(["polygraphy", "run", str(model), "--hps", "--hps-config", str(config), *map(str, more)],
                          capture_output=True, text=True)


def test_polygraphy_run_help_lists_hps_options():
    proc = subprocess.run(["polygraphy", "run", "-h"], capture_output=True, text=True)
    assert proc.returncode == 0
    for option in ("--hps-config", "--hps-original", "--hps-backend", "--hps-batch-sizes",
                   "--hps-max-keys-per-sample", "--hps-min-distinct-keys"):
        assert option in proc.stdout


def test_polygraphy_run_hps_draws_keys_from_the_tables_and_passes(dlrm):
    source, out = dlrm
    proc = polygraphy_run(out / "model.onnx", out / "hps_config.json", "--hps-original", source,
                          "--hps-batch-sizes", "1,32")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PASSED | simple | All outputs matched | Outputs: ['click_probability']" in proc.stdout
    assert ("| keys at hps_trt//emb_l.1/Gather (table emb_l_1_weight): 20 distinct, 20 of 20 rows (100.0%), "
            "0 not in the table") in proc.stdout
    assert "dense_features [dtype=float32, shape=(32, 13)]" in proc.stdout


def test_polygraphy_run_hps_takes_string_inputs(tmp_path):
    source = THIRDPARTY / "tfrs_dcn_stringlookup.onnx"
    result = hps_surgeon.rewrite(source, tmp_path / "rw")
    proc = polygraphy_run(result.model_path, result.config_path, "--hps-original", source)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PASSED | simple | All outputs matched" in proc.stdout


def test_polygraphy_run_hps_fails_on_tampered_table(dlrm, tmp_path):
    source, out = dlrm
    copy = tampered_copy(out, tmp_path / "rw", lambda rows: -rows)
    proc = polygraphy_run(copy / "model.onnx", copy / "hps_config.json", "--hps-original", source)
    assert proc.returncode == 1
    assert "FAILED | Output: 'click_probability'" in proc.stdout


def test_polygraphy_run_hps_with_few_keys_is_inconclusive(dlrm):
    """The user's --val-range keeps keys in 0..19: a 1000-row table saw at most 20 keys."""
    source, out = dlrm
    proc = polygraphy_run(out / "model.onnx", out / "hps_config.json", "--hps-original", source,
                          "--input-shapes", "dense_features:[4,13]", "sparse_keys:[4,26]",
                          "--val-range", "sparse_keys:[0,19]", "--iterations", "2")
    assert proc.returncode == 1
    assert "[!] INCONCLUSIVE: table 'emb_l_0_weight' saw " in proc.stderr
    assert "below the floor of 64 (--hps-min-distinct-keys)" in proc.stderr
    # Polygraphy compares each iteration as it streams; the run as a whole does not pass
    assert "[E] FAILED | Runtime" in proc.stdout and "PASSED | Runtime" not in proc.stdout


def test_polygraphy_run_gen_script_builds_the_hps_data_loader(dlrm):
    source, out = dlrm
    proc = polygraphy_run(out / "model.onnx", out / "hps_config.json", "--hps-original", source,
                          "--hps-batch-sizes", "2,8", "--hps-max-keys-per-sample", "3", "--gen-script", "-")
    assert proc.returncode == 0, proc.stderr
    assert "from hps_surgeon.verify.polygraphy_ext import HpsDataLoader" in proc.stdout
    assert (f"data_loader = HpsDataLoader('{out / 'model.onnx'}', '{out / 'hps_config.json'}', batch_sizes=(2, 8), "
            "iterations=2, max_keys_per_sample=3, min_distinct_keys=64, seed=1)") in proc.stdout


@pytest.mark.parametrize("more, message", [
    ([], "hps-surgeon: error: --hps needs --hps-config hps_config.json (written by hps-surgeon rewrite)"),
    (["--hps-config", "/nonexistent/hps_config.json"], "hps-surgeon: error: /nonexistent/hps_config.json: no such file"),
    (["--hps-batch-sizes", "0"], "hps-surgeon: error: --hps-batch-sizes 0: expected positive integers such as 1,64"),
])
def test_polygraphy_run_hps_bad_input_is_one_line_exit_2(dlrm, more, message):
    _, out = dlrm
    if more and more[0] == "--hps-batch-sizes":
        more = ["--hps-config", str(out / "hps_config.json"), *more]
    proc = subprocess.run(["polygraphy", "run", str(out / "model.onnx"), "--hps", *more], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == message


def test_polygraphy_run_hps_native_without_library_is_one_line(dlrm, monkeypatch):
    _, out = dlrm
    monkeypatch.setenv("HPS_SURGEON_PLUGIN_LIB", "/nonexistent/libhps_plugin.so")
    proc = polygraphy_run(out / "model.onnx", out / "hps_config.json", "--hps-backend", "native")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert one_error_line(proc).startswith("hps-surgeon: error: native HPS library not found (tried "
                                           "/nonexistent/libhps_plugin.so)")



def test_an_fp16_table_in_external_data_is_compared_at_its_own_dtype(tmp_path):
    """The exported table is the fp16 one widened to float32 exactly: the lookup check finds identical bits;
    one row off by one fp16 ulp (the smallest change the original could hold) fails, naming that key."""
    from support import lookup_model

    source = lookup_model(tmp_path / "src" / "m.onnx", rows=300, dim=16, external=True, table_dtype=np.float16)
    result = hps_surgeon.rewrite(source, tmp_path / "rw")
    report = verify(source, result.model_path, result.config_path)
    (check,) = report.lookups
    assert report.verdict == "passed" and (check.how, check.original, check.mismatched) == ("exposed", "lookup", 0)
    assert check.compared > 0
    copy = copy_rewrite(result.out_dir, tmp_path / "one")
    path = copy / json.loads((copy / "hps_config.json").read_text())["models"][0]["sparse_files"][0] / "emb_vector"
    vectors = np.fromfile(path, dtype="<f4").reshape(-1, 16)
    vectors[5, 3] = np.float32(np.nextafter(np.float16(vectors[5, 3]), np.float16(np.inf)))
    vectors.tofile(path)
    report = verify(source, copy / "model.onnx", copy / "hps_config.json")
    (wrong,) = report.wrong_lookups
    assert report.verdict == "failed" and (wrong.key, wrong.row) == (5, 5)


def test_a_node_without_provenance_is_compared_through_the_outputs_only_and_says_why(dlrm, tmp_path):
    """HPS_TRT nodes made by another tool carry no hps_surgeon.replaced_nodes: nothing names the lookup to
    compare with, so that node is checked through the model outputs only, in the table and the JSON."""
    import onnx

    source, out = dlrm
    copy = copy_rewrite(out, tmp_path / "rw")
    model = onnx.load(str(copy / "model.onnx"))
    (node,) = [n for n in model.graph.node if n.name == "hps_trt//emb_l.4/Gather"]
    del node.metadata_props[:]
    onnx.save(model, str(copy / "model.onnx"))
    proc = run(*verify_args(copy, "--json"))
    assert proc.returncode == 0, proc.stderr
    checks = {c["node"]: c for c in json.loads(proc.stdout)["lookups"]}
    assert checks["hps_trt//emb_l.4/Gather"]["how"] == "outputs only"
    assert checks["hps_trt//emb_l.4/Gather"]["reason"] == (
        "HPS_TRT node 'hps_trt//emb_l.4/Gather' carries no hps_surgeon.replaced_nodes provenance (made by another "
        "tool or an older hps-surgeon): nothing names the lookup it replaced")
    assert sum(c["how"] == "exposed" for c in checks.values()) == 25
    proc = run(*verify_args(copy))
    assert "vectors of hps_trt//emb_l.4/Gather: compared through the model outputs only: HPS_TRT node " in proc.stdout
    assert "25 of 26 HPS_TRT node(s) return exactly the original lookup's vectors" in proc.stdout
    assert any(line.startswith("  hps_trt//emb_l.4/Gather ") and line.rstrip().endswith("outputs only")
               for line in proc.stdout.splitlines())


def test_min_distinct_keys_takes_one_value_so_positionals_may_follow(dlrm):
    """`--min-distinct-keys 20 ORIGINAL ...`: the option takes one value (repeat it for more tables)."""
    source, out = dlrm
    proc = run("verify", "--min-distinct-keys", "20", "--min-distinct-keys", "emb_l_0_weight=30", source,
               out / "model.onnx", "--config", out / "hps_config.json", "--json")
    assert proc.returncode == 0, proc.stderr
    tables = {t["table"]: t for t in json.loads(proc.stdout)["tables"]}
    assert (tables["emb_l_0_weight"]["floor"], tables["emb_l_0_weight"]["rule"]) == (
        30, "--min-distinct-keys emb_l_0_weight=30")
    assert (tables["emb_l_1_weight"]["floor"], tables["emb_l_1_weight"]["rule"]) == (20, "--min-distinct-keys 20")
