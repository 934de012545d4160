"""Every benchmark's hps_config.json passes our own config parser (issue 18: bench/peers wrote a config
without deployed_device_list after the parser began to require it, and stopped measuring anything
without a test noticing). The configs are built by the benchmarks' own code: bench/hps_configs.py
(bench_lookup.py), bench_storage.config, and bench/peers/peer_config.hpp compiled with g++."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hps_surgeon.hps import config as hps_config

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


def _table(folder: Path, dim: int, rows: int = 4) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.arange(rows, dtype="<i8").tofile(folder / "key")
    np.zeros((rows, dim), dtype="<f4").tofile(folder / "emb_vector")


def _loaded(path: Path) -> dict:
    config, problems = hps_config.load(path)
    errors = [str(p) for p in problems if p.severity == "error"]
    assert not errors, errors
    assert config is not None
    return config


@pytest.fixture
def bench_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    return importlib


def test_bench_lookup_config(tmp_path, bench_modules):
    hps_configs = bench_modules.import_module("hps_configs")
    _table(tmp_path / "tables" / "t0", 128)
    path = tmp_path / "hps_config.json"
    path.write_text(json.dumps(hps_configs.lookup_config(128)))
    config = _loaded(path)
    assert [m["model"] for m in config["models"]] == ["resident", "hier", "host"]
    assert [m["gpucacheper"] for m in config["models"]] == [1.0, 0.2, 0.0]


def test_bench_storage_config(tmp_path, bench_modules):
    bench_storage = bench_modules.import_module("bench_storage")
    _table(tmp_path / "t0", bench_storage.DIM)
    config = _loaded(bench_storage.config(tmp_path / "host.json", 0.1))
    assert config["models"][0]["max_batch_size"] == bench_storage.BATCH


def test_bench_peers_config(tmp_path):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("no g++ to compile bench/peers/peer_config.hpp")
    for name in ("t16", "t16_identity"):
        _table(tmp_path / name, 16)
    main = tmp_path / "print_config.cpp"
    main.write_text('#include <iostream>\n#include "peer_config.hpp"\nint main(int, char** argv) {\n'
                    '    const std::string dir = argv[1];\n'
                    '    std::cout << bench::peer_hps_config({{"resident", dir + "/t16", 1.0}, {"hier", dir + "/t16", 0.2},\n'
                    '        {"resident_identity", dir + "/t16_identity", 1.0}, {"hier_identity", dir + "/t16_identity", 0.2}},\n'
                    '        16, 131072, 26);\n}\n')
    exe = tmp_path / "print_config"
    subprocess.run([gxx, "-std=c++17", "-I", str(BENCH / "peers"), str(main), "-o", str(exe)], check=True)
    path = tmp_path / "hps_config_16.json"
    path.write_text(subprocess.run([str(exe), str(tmp_path)], check=True, capture_output=True, text=True).stdout)
    config = _loaded(path)
    assert [(m["model"], m["gpucacheper"]) for m in config["models"]] == [
        ("resident", 1.0), ("hier", 0.2), ("resident_identity", 1.0), ("hier_identity", 0.2)]
    assert all(m["deployed_device_list"] == [0] for m in config["models"])
