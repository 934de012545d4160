"""Fixtures shared by the tests; helpers live in support.py."""

from pathlib import Path

import pytest

import hps_surgeon

from support import FIXTURES, CliRun, copy_rewrite, lookup_model, run_in_process


@pytest.fixture
def one_lookup(tmp_path: Path) -> Path:
    return lookup_model(tmp_path / "src" / "one.onnx")


@pytest.fixture
def cli(capfd, monkeypatch):
    """Run `hps-surgeon ARGS...` in this process; returns a CliRun (exit code, stdout, stderr)."""
    monkeypatch.setenv("HPS_SURGEON_DEBUG", "1")

    def run(*argv) -> CliRun:
        return run_in_process(capfd, argv)

    return run


@pytest.fixture(scope="module")
def rewrite_folder(tmp_path_factory) -> Path:
    """The rewrite of torch/embedding_int64_legacy.onnx (keys [batch, 26], one table of 1000 x 16), model 'demo'."""
    out = tmp_path_factory.mktemp("rewrite") / "rw"
    hps_surgeon.rewrite(FIXTURES / "torch/embedding_int64_legacy.onnx", out, model_name="demo")
    return out


@pytest.fixture
def rw(rewrite_folder, tmp_path) -> Path:
    """A copy of `rewrite_folder` to change, its config pointing at its own tables."""
    return copy_rewrite(rewrite_folder, tmp_path / "rw")
