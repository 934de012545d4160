"""The database sections of hps_config.json: built from command-line targets, written atomically.

Sections use HugeCTR's field names and values (``HugeCTR/src/hps/inference_utils.cpp`` 383-504);
reading them back is the native parser's job (``describe_config``), so the rules live in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from hps_surgeon.errors import SurgeonError, shown
from hps_surgeon.staging import replace_file

#: HugeCTR's documented default partition count for Redis (docs hps_database_backend.md, num_partitions).
DEFAULT_PARTITIONS = 8
#: HugeCTR's default connections per node; it requires num_partitions >= num_node_connections
#: (src/hps/redis_backend.cpp:78).
DEFAULT_NODE_CONNECTIONS = 5


@dataclass(frozen=True)
class RedisTarget:
    """Where `--volatile-db redis://[user:password@]host:port[,host:port...]` points."""

    address: str  #: HugeCTR's "host:port,host:port"
    user_name: str = "default"
    password: str = ""


def parse_redis_url(url: str) -> RedisTarget:
    """`redis://[user[:password]@]host:port[,host:port...]` -> RedisTarget (SurgeonError on anything else)."""
    if not url.startswith("redis://"):
        raise SurgeonError(f"--volatile-db {shown(url)}: expected redis://host:port[,host:port...] "
                           "(rediss:// is not supported: Debian's hiredis has no TLS)")
    rest = url[len("redis://"):]
    user, password = "default", ""
    if "@" in rest:
        creds, rest = rest.rsplit("@", 1)
        name, _, secret = creds.partition(":")  # redis://[user]:password@... or redis://user@...
        user, password = unquote(name) or "default", unquote(secret)
    nodes = [n.strip() for n in rest.strip("/").split(",") if n.strip()]
    if not nodes:
        raise SurgeonError(f"--volatile-db {shown(url)}: names no host:port")
    for node in nodes:
        host, _, port = node.rpartition(":")
        if not host or not port.isascii() or not port.isdigit() or not 0 < int(port[:6]) < 65536:
            raise SurgeonError(f"--volatile-db {shown(url)}: {shown(node)} is not host:port")
        try:
            urlsplit(f"redis://{node}")  # rejects malformed IPv6 literals
        except ValueError as exc:
            raise SurgeonError(f"--volatile-db {shown(url)}: {shown(node)} is not host:port ({exc})") from None
    return RedisTarget(",".join(nodes), user, password)


def volatile_section(target: RedisTarget, num_partitions: int, existing: dict | None) -> dict:
    """volatile_db for a Redis Cluster; fields of an existing redis section (overflow, filters) are kept."""
    section = dict(existing) if existing and existing.get("type") in ("redis_cluster", "redis") else {}
    section.update({
        "type": "redis_cluster",
        "address": target.address,
        "user_name": target.user_name,
        "password": target.password,
        "num_partitions": num_partitions,
        "num_node_connections": min(int(section.get("num_node_connections", DEFAULT_NODE_CONNECTIONS)), num_partitions),
        "max_batch_size": int(section.get("max_batch_size", 65536)),
        # publish has loaded the tables: do not load the sparse files again at every start
        # (HugeCTR's own JSON parser ignores this field and always loads them).
        "initialize_after_startup": False,
    })
    return section


def persistent_section(path: Path, existing: dict | None) -> dict:
    """persistent_db for a RocksDB folder (absolute path); fields of an existing rocks_db section are kept."""
    section = dict(existing) if existing and existing.get("type") in ("rocks_db", "rocksdb", "rocks") else {}
    section.update({
        "type": "rocks_db",
        "path": str(path.absolute()),
        "num_threads": int(section.get("num_threads", 16)),
        # HugeCTR writes the sparse files into its databases at startup, which a read-only
        # RocksDB refuses; keep it writable for HugeCTR (our plugin reads it lock-free anyway).
        "read_only": False,
        "max_batch_size": int(section.get("max_batch_size", 65536)),
        "initialize_after_startup": False,
    })
    return section


def write_config(path: Path, config: dict) -> None:
    """Replace hps_config.json atomically (temp file in the same folder, fsync, rename)."""
    replace_file(path, (json.dumps(config, indent=2) + "\n").encode())
