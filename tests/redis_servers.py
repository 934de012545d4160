"""Real Redis Clusters for the tests: 3 masters of Debian's redis-server on loopback ports, started by
the tests and torn down after them. The binaries come from PATH, or from the folder named by
$HPS_REDIS_BIN (the device machine reaches no package registry: Debian's binaries are carried there,
with their libraries on LD_LIBRARY_PATH)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from support import skip_unless_required

ENV_BIN = "HPS_REDIS_BIN"


def require_binary(binary: str) -> str:
    """The path of a Redis binary; skips (fails where required) when it is not installed."""
    folder = os.environ.get(ENV_BIN)
    path = str(Path(folder) / binary) if folder and (Path(folder) / binary).exists() else shutil.which(binary)
    if path:
        return path
    skip_unless_required(f"{binary} is not installed (apt-get install redis-server rocksdb-tools, or point ${ENV_BIN} "
                         "at a folder holding it); .ci/run installs it")


def free_port_pair() -> int:
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
        args = [require_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
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
        out = subprocess.run([require_binary("redis-cli"), "-p", str(port or self.ports[0]), *auth, *args],
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
    cluster = Cluster(folder, [free_port_pair() for _ in range(3)], password)
    try:
        for port in cluster.ports:
            cluster.start_node(port)
        auth = ["-a", password, "--no-auth-warning"] if password else []
        subprocess.run([require_binary("redis-cli"), *auth, "--cluster", "create",
                        *[f"127.0.0.1:{p}" for p in cluster.ports], "--cluster-yes"],
                       capture_output=True, check=True, timeout=60)
        cluster.wait_ok()
    except BaseException:
        cluster.stop()
        raise
    return cluster
