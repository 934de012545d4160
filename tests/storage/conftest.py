"""Real Redis Clusters (3 masters on loopback ports) and rewrite outputs for the storage tests.

Every cluster is started by the tests and torn down after them, also when a test fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hps_surgeon import api
from hps_surgeon.storage import _native

REPO = Path(__file__).resolve().parents[2]
DLRM = REPO / "fixtures" / "torch" / "dlrm_small_legacy.onnx"


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path:
        return path
    message = f"{binary} is not installed (apt-get install redis-server rocksdb-tools); .ci/run installs it"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def storage_lib():
    """libhps_storage.so, loaded (the CMake build of plugin/ makes it)."""
    try:
        return _native.load()
    except _native.StorageUnavailableError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def _free_port_pair() -> int:
    """A port p with p and its cluster bus port p + 10000 both free on 127.0.0.1."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port > 55000:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _ping(port: int, password: str = "") -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            if password:
                s.sendall(f"AUTH {password}\r\n".encode())
                s.recv(64)
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class Cluster:
    """A running 3-master Redis Cluster started by the tests."""

    folder: Path
    ports: list[int]
    password: str = ""
    procs: dict[int, subprocess.Popen] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.address}"

    def start_node(self, port: int) -> None:
        node_dir = self.folder / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        args = [_require("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", "1000",
                "--cluster-require-full-coverage", "no", "--dir", str(node_dir), "--save", "", "--appendonly", "no",
                "--protected-mode", "no", "--logfile", str(node_dir / "redis.log")]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        self.procs[port] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _ping(port, self.password):
            if self.procs[port].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {port} did not start: {(node_dir / 'redis.log').read_text()}")
            time.sleep(0.05)

    def kill_node(self, port: int) -> None:
        """SIGKILL, as a crash (no persistence configured: the node's data is gone)."""
        proc = self.procs.pop(port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def cli(self, *args: str, port: int | None = None) -> str:
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        out = subprocess.run([_require("redis-cli"), "-p", str(port or self.ports[0]), *auth, *args],
                             capture_output=True, check=True, timeout=60)
        return out.stdout.decode()

    def wait_ok(self, port: int | None = None) -> None:
        deadline = time.monotonic() + 30
        for p in ([port] if port else self.ports):
            while "cluster_state:ok" not in self.cli("CLUSTER", "INFO", port=p):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster not ok on port {p}: {self.cli('CLUSTER', 'INFO', port=p)}")
                time.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()


def start_cluster(folder: Path, password: str = "") -> Cluster:
    cluster = Cluster(folder, [_free_port_pair() for _ in range(3)], password)
    try:
        for port in cluster.ports:
            cluster.start_node(port)
        auth = ["-a", password, "--no-auth-warning"] if password else []
        subprocess.run([_require("redis-cli"), *auth, "--cluster", "create",
                        *[f"127.0.0.1:{p}" for p in cluster.ports], "--cluster-yes"],
                       capture_output=True, check=True, timeout=60)
        cluster.wait_ok()
    except BaseException:
        cluster.stop()
        raise
    return cluster


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
    redis = pytest.importorskip("redis")
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
    """A private copy of the DLRM rewrite (publish edits hps_config.json)."""
    target = tmp_path / "dlrm"
    shutil.copytree(dlrm_rewrite, target)
    return target


def set_model_name(rewrite_dir: Path, name: str) -> None:
    """Give the copy its own model name, so tables of different tests never share a tag."""
    import json

    path = rewrite_dir / "hps_config.json"
    config = json.loads(path.read_text())
    config["models"][0]["model"] = name
    path.write_text(json.dumps(config))
