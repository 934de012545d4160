"""verify (Polygraphy Comparator + HpsRunner), and `polygraphy run --hps` through Polygraphy's own CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

import hps_surgeon
from hps_surgeon.verify import verify

from support import FIXTURES
from test_fixtures import LOOKUPS


@pytest.fixture(scope="module")
def dlrm(tmp_path_factory):
    out = tmp_path_factory.mktemp("dlrm") / "rw"
    hps_surgeon.rewrite(FIXTURES / "torch/dlrm_small_legacy.onnx", out)
    return FIXTURES / "torch/dlrm_small_legacy.onnx", out


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hps_surgeon", *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("fixture", sorted(LOOKUPS))
def test_verify_passes_on_every_fixture_pair_with_zero_error(fixture, tmp_path):
    result = hps_surgeon.rewrite(FIXTURES / fixture, tmp_path / "rw")
    report = verify(FIXTURES / fixture, result.model_path, result.config_path, iterations=2, batch_size=5)
    assert report.passed
    assert report.iterations == 4 and report.batch_sizes == (1, 5)
    assert [o.max_abs for o in report.outputs] == [0.0] * len(report.outputs)


def test_keys_are_drawn_per_column_from_each_table(dlrm):
    source, out = dlrm
    report = verify(source, out / "model.onnx", out / "hps_config.json", iterations=1)
    rows = {t["table_id"]: t["rows"] for t in __import__("json").loads((out / "report.json").read_text())["tables"]}
    by_column = {r.column: (r.low, r.high) for r in report.key_ranges}
    assert sorted(by_column) == list(range(26))
    # slot i reads table emb_l.i: keys span that table's full row range
    assert sorted(high + 1 for _, high in by_column.values()) == sorted(rows.values())
    assert all(low == 0 for low, _ in by_column.values())


def test_verify_cli_passes_and_prints_errors(dlrm):
    source, out = dlrm
    proc = run("verify", source, out / "model.onnx", "--config", out / "hps_config.json", "--batch-size", "16")
    assert proc.returncode == 0, proc.stderr
    assert "output 'click_probability': max abs error 0, max rel error 0" in proc.stdout
    assert "PASSED: 6 feeds (batch sizes 1, 16)" in proc.stdout


def tampered(out, tmp_path, table: str, change) -> object:
    """A copy of the rewrite output whose table `table` holds `change(vectors)` instead."""
    copy = tmp_path / "rw"
    shutil.copytree(out, copy)
    vectors = copy / f"tables/{table}/emb_vector"
    change(np.fromfile(vectors, dtype="<f4")).astype("<f4").tofile(vectors)
    return copy


def test_tampered_vector_fails_with_exit_1_naming_the_output(dlrm, tmp_path):
    source, out = dlrm
    copy = tampered(out, tmp_path, "emb_l_0_weight", lambda v: v + 0.5)
    proc = run("verify", source, copy / "model.onnx", "--config", copy / "hps_config.json")
    assert proc.returncode == 1
    assert "hps-surgeon: verify FAILED: output 'click_probability' differs: max abs error" in proc.stderr


def test_verify_usage_errors_exit_2(dlrm, tmp_path):
    source, out = dlrm
    missing = run("verify", source, tmp_path / "nope.onnx", "--config", out / "hps_config.json")
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"hps-surgeon: error: {tmp_path / 'nope.onnx'}: no such file"
    assert run("verify", source, out / "model.onnx").returncode == 2  # --config is required


def test_native_backend_without_library_is_a_clear_error(dlrm, monkeypatch):
    source, out = dlrm
    monkeypatch.setenv("HPS_SURGEON_PLUGIN_LIB", "/nonexistent/libhps_plugin.so")
    proc = run("verify", source, out / "model.onnx", "--config", out / "hps_config.json", "--backend", "native")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("hps-surgeon: error: ") and "libhps_plugin.so" in lines[-1]


def test_polygraphy_run_help_lists_hps():
    proc = subprocess.run(["polygraphy", "run", "-h"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "--hps-config" in proc.stdout and "--hps-original" in proc.stdout


def test_polygraphy_run_hps_compares_with_the_original(dlrm):
    source, out = dlrm
    proc = subprocess.run(
        ["polygraphy", "run", str(out / "model.onnx"), "--hps", "--hps-config", str(out / "hps_config.json"),
         "--hps-original", str(source), "--input-shapes", "dense_features:[4,13]", "sparse_keys:[4,26]",
         "--val-range", "sparse_keys:[0,19]", "--iterations", "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PASSED | simple | All outputs matched | Outputs: ['click_probability']" in proc.stdout
    assert "Passed: 2/2 iterations" in proc.stdout


def test_polygraphy_run_hps_fails_on_tampered_table(dlrm, tmp_path):
    source, out = dlrm
    copy = tampered(out, tmp_path, "emb_l_3_weight", lambda v: -v)
    proc = subprocess.run(
        ["polygraphy", "run", str(copy / "model.onnx"), "--hps", "--hps-config", str(copy / "hps_config.json"),
         "--hps-original", str(source), "--input-shapes", "dense_features:[4,13]", "sparse_keys:[4,26]",
         "--val-range", "sparse_keys:[0,19]"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "FAILED" in proc.stdout + proc.stderr
