"""`verify --backend native` on every fixture: the CUDA plugin library serves HPS_TRT, exactly."""

from __future__ import annotations

import subprocess
import sys

import pytest

import hps_surgeon
from hps_surgeon.verify import verify

from support import FIXTURES
from test_coverage import COVERED
from test_fixtures import LOOKUPS

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("fixture", sorted({**LOOKUPS, **COVERED}))
def test_native_backend_matches_onnxruntime_exactly(gpu_lib, fixture, tmp_path):
    result = hps_surgeon.rewrite(FIXTURES / fixture, tmp_path / "rw")
    report = verify(FIXTURES / fixture, result.model_path, result.config_path, backend="native", iterations=2,
                    batch_sizes=(1, 64))
    assert report.passed
    assert [o.max_abs for o in report.outputs] == [0.0] * len(report.outputs)


def test_verify_cli_native_backend(gpu_lib, tmp_path):
    source = FIXTURES / "torch/dlrm_small_legacy.onnx"
    result = hps_surgeon.rewrite(source, tmp_path / "rw")
    proc = subprocess.run([sys.executable, "-m", "hps_surgeon", "verify", str(source), str(result.model_path),
                           "--config", str(result.config_path), "--backend", "native", "--batch-sizes", "1,1024"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "PASSED: 4 feeds (generated; batch sizes 1, 1024)" in proc.stdout
