"""Faults and bad input of the storage tiers, against real servers: every bad input is one line and
exit code 2 with hps_config.json untouched; degradations are counted, never garbage."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hps_surgeon import cli
from hps_surgeon.storage import Tiers, publish
from hps_surgeon.storage.config import parse_redis_url

import hugectr_reference as ref
from conftest import redis_client, set_model_name


def _fails(capsys, argv: list[str], config: Path) -> str:
    before = config.read_text()
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hps-surgeon: error: "), captured.err
    assert config.read_text() == before  # nothing half-written
    return lines[0]


def _table(rewrite_dir: Path, table_id: int):
    model = json.loads((rewrite_dir / "hps_config.json").read_text())["models"][0]
    folder = rewrite_dir / model["sparse_files"][table_id]
    keys = np.fromfile(folder / "key", dtype="<i8")
    dim = model["embedding_vecsize_per_table"][table_id]
    return keys, np.fromfile(folder / "emb_vector", dtype="<f4").reshape(keys.size, dim), dim, model


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wrong_address_is_one_line(rewrite_copy, capsys, storage_lib):
    port = _closed_port()
    line = _fails(capsys, ["publish", str(rewrite_copy), "--volatile-db", f"redis://127.0.0.1:{port}"],
                  rewrite_copy / "hps_config.json")
    assert f"cannot load the Redis Cluster slot map from 127.0.0.1:{port}" in line
    assert "Connection refused" in line and "check volatile_db.address" in line


def test_bad_urls_and_options(rewrite_copy, capsys, storage_lib):
    config = rewrite_copy / "hps_config.json"
    assert "expected redis://host:port" in _fails(capsys, ["publish", str(rewrite_copy), "--volatile-db", "127.0.0.1:1"],
                                                 config)
    assert "'127.0.0.1' is not host:port" in _fails(
        capsys, ["publish", str(rewrite_copy), "--volatile-db", "redis://127.0.0.1"], config)
    assert "nothing to publish to" in _fails(capsys, ["publish", str(rewrite_copy)], config)
    line = _fails(capsys, ["publish", str(rewrite_copy / "nope"), "--persistent-db", "/tmp/x"],
                  config)
    assert line == (f"hps-surgeon: error: {rewrite_copy / 'nope/hps_config.json'}:(file): no such file; pass the "
                    "hps_config.json that rewrite wrote")


def test_standalone_redis_is_refused(rewrite_copy, capsys, tmp_path, storage_lib):
    port = _closed_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        line = _fails(capsys, ["publish", str(rewrite_copy), "--volatile-db", f"redis://127.0.0.1:{port}"],
                      rewrite_copy / "hps_config.json")
        assert "runs without cluster mode" in line
    finally:
        proc.terminate()
        proc.wait(10)


def test_wrong_password(rewrite_copy, own_cluster, capsys):
    for port in own_cluster.ports:
        own_cluster.cli("CONFIG", "SET", "requirepass", "s3cret", port=port)
    own_cluster.password = "s3cret"
    config = rewrite_copy / "hps_config.json"
    line = _fails(capsys, ["publish", str(rewrite_copy), "--volatile-db", f"redis://:wrong@{own_cluster.address}"],
                  config)
    assert "refused AUTH as user 'default'" in line and "check volatile_db.user_name and volatile_db.password" in line
    line = _fails(capsys, ["publish", str(rewrite_copy), "--volatile-db", f"redis://{own_cluster.address}"], config)
    assert "requires a password" in line and "set volatile_db.password" in line
    set_model_name(rewrite_copy, "auth")
    assert cli.main(["publish", str(rewrite_copy), "--volatile-db", own_cluster.url, "--quiet"]) == 0
    assert json.loads(config.read_text())["volatile_db"]["password"] == "s3cret"


def test_partition_count_mismatch(rewrite_copy, redis_cluster, capsys):
    set_model_name(rewrite_copy, "parts")
    config = rewrite_copy / "hps_config.json"
    assert cli.main(["publish", str(rewrite_copy), "--volatile-db", redis_cluster.url, "--num-partitions", "4",
                     "--quiet"]) == 0
    capsys.readouterr()
    line = _fails(capsys, ["publish", str(rewrite_copy), "--volatile-db", redis_cluster.url, "--num-partitions", "8"],
                  config)
    assert "published with a different num_partitions" in line or "more than num_partitions" in line
    assert "hps-surgeon publish --force" in line
    # A config edited to another count is refused when the table is opened, not read wrongly.
    edited = json.loads(config.read_text())
    edited["volatile_db"].update(num_partitions=3, num_node_connections=3)
    config.write_text(json.dumps(edited))
    with pytest.raises(Exception, match="more than num_partitions = 3|different num_partitions"):
        Tiers(config, "parts", 0)
    # --force drops the old layout and publishes the new one.
    assert cli.main(["publish", str(rewrite_copy), "--volatile-db", redis_cluster.url, "--num-partitions", "8",
                     "--force", "--quiet"]) == 0
    names = json.loads(config.read_text())["models"][0]["embedding_table_names"]
    client = redis_client(redis_cluster)
    keys, vectors, _, _ = _table(rewrite_copy, 0)
    expected = ref.expected_redis(keys, vectors, ref.tag("parts", names[0]), False, 8)
    for part in range(8):
        name = ref.hash_name(ref.tag("parts", names[0]), part)
        assert client.hgetall(name) == expected.get(name.encode(), {})


def test_rocksdb_locked_missing_and_read_only(rewrite_copy, tmp_path, capsys, storage_lib):
    config = rewrite_copy / "hps_config.json"
    rocks = tmp_path / "rocks"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from hps_surgeon.storage import Database;"
         f"db = Database.open('persistent_db', {{'type': 'rocks_db', 'path': '{rocks}'}}, 64, 'holder');"
         "print('open', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, env={**os.environ})
    try:
        assert holder.stdout.readline().strip() == b"open"
        line = _fails(capsys, ["publish", str(rewrite_copy), "--persistent-db", str(rocks)], config)
        assert f"cannot open RocksDB at {rocks}" in line and "another process holds its LOCK" in line
    finally:
        holder.kill()
        holder.wait(10)
    line = _fails(capsys, ["publish", str(rewrite_copy), "--persistent-db", str(tmp_path / "no" / "such" / "db")],
                  config)
    assert "cannot open RocksDB" in line and "folder or its parent is missing" in line
    # read_only over a folder without the table, and over no folder at all.
    set_model_name(rewrite_copy, "ro")
    assert cli.main(["publish", str(rewrite_copy), "--persistent-db", str(rocks), "--quiet"]) == 0
    edited = json.loads(config.read_text())
    edited["persistent_db"]["read_only"] = True
    edited["models"][0]["model"] = "other"
    config.write_text(json.dumps(edited))
    with pytest.raises(Exception, match="has no column family 'hps_et.other.emb_l_0_weight'"):
        Tiers(config, "other", 0)
    edited["persistent_db"]["path"] = str(tmp_path / "absent")
    config.write_text(json.dumps(edited))
    with pytest.raises(Exception, match="does not exist and read_only is true"):
        Tiers(config, "other", 0)


def test_corrupt_value_length_falls_through_and_is_counted(rewrite_copy, redis_cluster, tmp_path):
    set_model_name(rewrite_copy, "corrupt")
    publish(rewrite_copy, redis=parse_redis_url(redis_cluster.url), rocksdb=tmp_path / "rocks")
    keys, vectors, dim, model = _table(rewrite_copy, 1)
    tag = ref.tag("corrupt", model["embedding_table_names"][1])
    bad_key = int(keys[5])
    client = redis_client(redis_cluster)
    client.hset(ref.hash_name(tag, ref.partition(bad_key, False, 8)), ref.key_bytes(bad_key, False), b"\x00" * 7)
    with Tiers(rewrite_copy / "hps_config.json", "corrupt", 1) as tiers:
        got = tiers.fetch(keys, dim)
        stats = tiers.stats()
    assert got.tobytes() == vectors.tobytes()  # the corrupt value was ignored; RocksDB had the row
    assert stats["corrupt"] == 1 and stats["persistent_hits"] == 1 and stats["volatile_hits"] == keys.size - 1
    # Without RocksDB the key gets the default value, counted, never the 7 bytes.
    config = json.loads((rewrite_copy / "hps_config.json").read_text())
    del config["persistent_db"]
    (rewrite_copy / "hps_config.json").write_text(json.dumps(config))
    with Tiers(rewrite_copy / "hps_config.json", "corrupt", 1) as tiers:
        got = tiers.fetch(keys, dim)
        stats = tiers.stats()
    want = vectors.copy()
    want[5] = model["default_value_for_each_table"][1]
    assert got.tobytes() == want.tobytes() and stats["corrupt"] == 1 and stats["defaults"] == 1


def test_node_killed_mid_run(rewrite_copy, own_cluster, tmp_path):
    set_model_name(rewrite_copy, "killed")
    publish(rewrite_copy, redis=parse_redis_url(own_cluster.url), rocksdb=tmp_path / "rocks", num_partitions=6)
    config_path = rewrite_copy / "hps_config.json"
    only_redis = rewrite_copy / "redis_only.json"
    config = json.loads(config_path.read_text())
    (rewrite_copy / "redis_only.json").write_text(json.dumps({k: v for k, v in config.items() if k != "persistent_db"}))
    keys, vectors, dim, model = _table(rewrite_copy, 0)
    tag = ref.tag("killed", model["embedding_table_names"][0])
    with Tiers(config_path, "killed", 0) as both, Tiers(only_redis, "killed", 0) as redis_only:
        assert both.fetch(keys, dim).tobytes() == vectors.tobytes()
        victim = own_cluster.ports[1]
        own_cluster.kill_node(victim)
        # Keys of partitions on the dead node: RocksDB answers; without it, defaults (counted).
        assert both.fetch(keys, dim).tobytes() == vectors.tobytes()
        assert both.stats()["unavailable"] > 0 and both.stats()["persistent_hits"] > 0
        client_ports = {p: own_cluster.cli("CLUSTER", "KEYSLOT", ref.hash_name(tag, p)) for p in range(6)}
        dead_parts = {p for p, slot in client_ports.items()
                      if str(victim) in own_cluster.cli("CLUSTER", "SLOTS", port=own_cluster.ports[0])
                      and _owner(own_cluster, int(slot)) == victim}
        got = redis_only.fetch(keys, dim)
        on_dead = np.array([ref.partition(int(k), False, 6) in dead_parts for k in keys])
        assert on_dead.any() and not on_dead.all()
        assert got[~on_dead].tobytes() == vectors[~on_dead].tobytes()
        assert np.all(got[on_dead] == model["default_value_for_each_table"][0])
        assert redis_only.stats()["unavailable"] >= int(on_dead.sum())
        # The node comes back (empty: no persistence); re-publishing refills it and the open
        # handles reconnect by themselves.
        own_cluster.start_node(victim)
        own_cluster.wait_ok()
        publish(rewrite_copy, redis=parse_redis_url(own_cluster.url), rocksdb=tmp_path / "rocks", num_partitions=6)
        time.sleep(1.1)  # past the retry interval of a node marked down
        before = redis_only.stats()["volatile_hits"]
        assert redis_only.fetch(keys, dim).tobytes() == vectors.tobytes()
        assert redis_only.stats()["volatile_hits"] - before == keys.size


def _owner(cluster, slot: int) -> int:
    for line in cluster.cli("CLUSTER", "NODES", port=cluster.ports[0]).splitlines():
        parts = line.split()
        for r in parts[8:]:
            lo, _, hi = r.partition("-")
            if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                return int(parts[1].split(":")[1].split("@")[0])
    return -1
