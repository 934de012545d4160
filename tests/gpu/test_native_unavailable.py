"""CPU-only checks of hps_surgeon.native: importable without library or GPU, clear error on use."""

from __future__ import annotations

import pytest

from hps_surgeon.hps import native


def test_missing_library_message(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere" / "libhps_plugin.so"
    monkeypatch.setenv(native.ENV_LIBRARY, str(missing))
    monkeypatch.setattr(native._LIBRARY, "_cdll", None)
    with pytest.raises(native.NativeUnavailableError) as info:
        native.HpsTable.open(tmp_path / "hps_config.json", "dlrm", 0)
    assert str(info.value) == (f"native HPS library not found (tried {missing}); build it with `hps-surgeon "
                               "build-native` (`hps-surgeon doctor` lists what it needs) or set HPS_SURGEON_PLUGIN_LIB")


def test_library_path_env_wins(monkeypatch, tmp_path):
    monkeypatch.setenv(native.ENV_LIBRARY, str(tmp_path / "x.so"))
    path, origin = native.library_path()
    assert path == tmp_path / "x.so" and native.ENV_LIBRARY in origin
