"""Fixtures for the native-plugin GPU tests: skip cleanly without the library or a CUDA device."""

from __future__ import annotations

import pytest

from hps_surgeon.hps import native


@pytest.fixture(scope="session")
def gpu_lib():
    """The loaded native library; skips when it is missing or sees no CUDA device."""
    try:
        native.load_library()
        count = native.device_count()
    except native.NativeUnavailableError as exc:
        pytest.skip(str(exc))
    if count == 0:
        pytest.skip("no CUDA device visible to the native library")
    return native


@pytest.fixture(scope="session")
def torch_cuda(gpu_lib):
    """torch with CUDA, or skip (device-array tests need a framework to make CUDA arrays)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    return torch
