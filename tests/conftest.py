"""Fixtures shared by the tests; helpers live in support.py."""

from pathlib import Path

import pytest

from support import lookup_model


@pytest.fixture
def one_lookup(tmp_path: Path) -> Path:
    return lookup_model(tmp_path / "src" / "one.onnx")
