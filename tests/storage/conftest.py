"""Real Redis Clusters (3 masters on loopback ports) and rewrite outputs for the storage tests.

Every cluster is started by the tests and torn down after them, also when a test fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hps_surgeon import api
from hps_surgeon.storage import _native
from redis_servers import Cluster, start_cluster
from support import copy_rewrite, skip_unless_required

REPO = Path(__file__).resolve().parents[2]
DLRM = REPO / "fixtures" / "torch" / "dlrm_small_legacy.onnx"


@pytest.fixture(scope="session")
def storage_lib():
    """libhps_storage.so, loaded (the CMake build of plugin/ makes it)."""
    try:
        return _native.load()
    except _native.StorageUnavailableError as exc:
        skip_unless_required(str(exc))


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory, storage_lib):
    """A 3-master cluster shared by the tests that do not break it (tests use distinct model names)."""
    cluster = start_cluster(tmp_path_factory.mktemp("redis"))
    yield cluster
    cluster.stop()


@pytest.fixture
def own_cluster(tmp_path, storage_lib):
    """A cluster of this test alone (node kills, passwords)."""
    cluster = start_cluster(tmp_path / "redis")
    yield cluster
    cluster.stop()


def redis_client(cluster: Cluster):
    """redis-py's cluster client (an independent reader of what we wrote)."""
    pytest.importorskip("redis")
    from redis.cluster import RedisCluster

    return RedisCluster(host="127.0.0.1", port=cluster.ports[0], password=cluster.password or None)


@pytest.fixture(scope="session")
def dlrm_rewrite(tmp_path_factory) -> Path:
    """`hps-surgeon rewrite` of the torch DLRM fixture: 26 tables, int32 keys (supportlonglong false)."""
    out = tmp_path_factory.mktemp("dlrm") / "out"
    api.rewrite(str(DLRM), str(out), quiet=True)
    return out


@pytest.fixture
def rewrite_copy(dlrm_rewrite, tmp_path) -> Path:
    """A private copy of the DLRM rewrite (publish edits hps_config.json), its sparse_files pointing at its own
    tables (publish confines them to the config's folder)."""
    return copy_rewrite(dlrm_rewrite, tmp_path / "dlrm")


def set_model_name(rewrite_dir: Path, name: str) -> None:
    """Give the copy its own model name, so tables of different tests never share a tag."""
    import json

    path = rewrite_dir / "hps_config.json"
    config = json.loads(path.read_text())
    config["models"][0]["model"] = name
    path.write_text(json.dumps(config))
