"""Fixtures shared by the tests; helpers live in support.py."""

from pathlib import Path

import pytest

from support import CliRun, lookup_model, run_in_process


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
