"""What the example notebooks share: where they write, the CLI as a user runs it, whether a step can run
here (else the reason, from `hps-surgeon doctor`'s probes), and a one-node Redis Cluster for `publish`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from hps_surgeon.machine import probes

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"


def work_dir(name: str) -> Path:
    """An empty folder for one notebook's outputs: $HPS_EXAMPLES_WORK/NAME, else examples/work/NAME."""
    folder = Path(os.environ.get("HPS_EXAMPLES_WORK", Path(__file__).parent / "work")) / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def hps(*args) -> None:
    """`hps-surgeon ARGS...`, printing what it prints; raises when it exits with an error."""
    done = subprocess.run([sys.executable, "-m", "hps_surgeon", *map(str, args)], capture_output=True, text=True)
    print(done.stdout + done.stderr, end="")
    if done.returncode != 0:
        raise RuntimeError(f"hps-surgeon {args[0]} exited {done.returncode}")


def cannot_build_engines() -> str:
    """Why build-engine cannot run here ("" when it can): a builder and the plugin with its TensorRT glue."""
    builders, plugin = probes.builders(), probes.plugin_library()
    missing = [f"{f.name}: {f.summary} (fix: {f.fix})" for f in (builders, plugin)
               if f.status == probes.MISSING or (f is plugin and not f.ok)]
    return "; ".join(missing)


def cannot_publish() -> str:
    """Why publish to Redis cannot run here ("" when it can): libhps_storage.so and redis-server, redis-cli."""
    storage = probes.storage_library()
    missing = [] if storage.ok else [f"{storage.name}: {storage.summary} (fix: {storage.fix})"]
    missing += [f"{tool} is not on PATH (apt-get install redis-server redis-tools)"
                for tool in ("redis-server", "redis-cli") if shutil.which(tool) is None]
    return "; ".join(missing)


@contextmanager
def redis_cluster(folder: Path):
    """A Redis Cluster of one node on a free loopback port, holding every slot; yields its redis:// URL and
    stops it afterwards. (Production clusters have several nodes: `publish --volatile-db` takes them all.)"""
    port = _free_port_pair()
    folder.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                               "--cluster-config-file", "nodes.conf", "--dir", str(folder), "--save", "",
                               "--appendonly", "no", "--logfile", str(folder / "redis.log")])
    cli = ["redis-cli", "-p", str(port)]
    try:
        while subprocess.run([*cli, "PING"], capture_output=True, text=True).stdout.strip() != "PONG":
            if server.poll() is not None:
                raise RuntimeError(f"redis-server did not start: {(folder / 'redis.log').read_text()}")
            time.sleep(0.05)
        subprocess.run([*cli, "CLUSTER", "ADDSLOTSRANGE", "0", "16383"], check=True, capture_output=True)
        while "cluster_state:ok" not in subprocess.run([*cli, "CLUSTER", "INFO"], capture_output=True, text=True).stdout:
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


def _free_port_pair() -> int:
    """A loopback port p <= 55535 with p + 10000 (the cluster bus port Redis opens beside it) also free."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port > 55535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
                return port
            except OSError:
                continue
    raise RuntimeError("no free pair of loopback ports for a Redis Cluster node")
