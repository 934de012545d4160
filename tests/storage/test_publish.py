"""`hps-surgeon publish` into a real 3-master Redis Cluster and a real RocksDB, read back byte for byte
against HugeCTR's layout (hugectr_reference.py) with independent readers: redis-py / redis-cli and
RocksDB's own `ldb` tool."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hps_surgeon import cli
from hps_surgeon.storage import Database, Tiers, describe_config, publish
from hps_surgeon.storage.config import parse_redis_url

import hugectr_reference as ref
from conftest import redis_client, set_model_name
from support import skip_unless_required


def _table(rewrite_dir: Path, table_id: int) -> tuple[np.ndarray, np.ndarray, int]:
    config = json.loads((rewrite_dir / "hps_config.json").read_text())
    model = config["models"][0]
    folder = rewrite_dir / model["sparse_files"][table_id]
    dim = model["embedding_vecsize_per_table"][table_id]
    keys = np.fromfile(folder / "key", dtype="<i8")
    return keys, np.fromfile(folder / "emb_vector", dtype="<f4").reshape(keys.size, dim), dim


def test_publish_redis_layout_is_hugectrs(rewrite_copy, redis_cluster, capsys):
    set_model_name(rewrite_copy, "layout")
    # A config from elsewhere may name tables HugeCTR's tag rule rejects: publish renames them.
    config = json.loads((rewrite_copy / "hps_config.json").read_text())
    config["models"][0]["embedding_table_names"] = [n.replace("_", ".", 2) for n in
                                                    config["models"][0]["embedding_table_names"]]
    (rewrite_copy / "hps_config.json").write_text(json.dumps(config))
    code = cli.main(["publish", str(rewrite_copy), "--volatile-db", redis_cluster.url, "--num-partitions", "6",
                     "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "published 26 table(s)" in out
    assert "renamed 26 table(s) to HugeCTR's tag rule [A-Za-z0-9_-]: 'emb.l.0_weight' -> 'emb_l_0_weight', " in out

    config = json.loads((rewrite_copy / "hps_config.json").read_text())
    assert config["supportlonglong"] is False  # the DLRM rewrite uses int32 keys: 4-byte keys in Redis
    names = config["models"][0]["embedding_table_names"]
    assert names[0] == "emb_l_0_weight" and len(set(names)) == 26
    client = redis_client(redis_cluster)
    for table_id in range(26):
        keys, vectors, _ = _table(rewrite_copy, table_id)
        expected = ref.expected_redis(keys, vectors, ref.tag("layout", names[table_id]), long_keys=False, parts=6)
        for hash_name, fields in expected.items():
            assert client.hgetall(hash_name) == fields, hash_name
        # Nothing else: no metadata hash under evict_random, no partition beyond num_partitions.
        for part in range(7):
            name = ref.hash_name(ref.tag("layout", names[table_id]), part)
            assert client.exists(name) == (name.encode() in expected)
            assert not client.exists(ref.hash_name(ref.tag("layout", names[table_id]), part, "t"))
    # The partitions of one table spread over all three masters.
    owners = {redis_cluster.cli("CLUSTER", "KEYSLOT", ref.hash_name(ref.tag("layout", names[0]), p)) for p in range(6)}
    assert len(owners) == 6
    masters = {client.get_node_from_key(ref.hash_name(ref.tag("layout", names[0]), p)).port for p in range(6)}
    assert masters == set(redis_cluster.ports)
    # redis-cli, following redirects, agrees on a partition's size.
    first = ref.hash_name(ref.tag("layout", names[0]), 0)
    assert int(redis_cluster.cli("-c", "HLEN", first)) == len(ref.expected_redis(
        *_table(rewrite_copy, 0)[:2], ref.tag("layout", names[0]), False, 6).get(first.encode(), {}))


def test_publish_writes_config_sections_read_back_by_the_native_parser(rewrite_copy, redis_cluster, tmp_path):
    set_model_name(rewrite_copy, "sections")
    rocks = tmp_path / "rocks"
    report = publish(rewrite_copy, redis=parse_redis_url(redis_cluster.url), rocksdb=rocks, num_partitions=4)
    assert len(report.tables) == 26 and report.bytes == 2 * sum(
        _table(rewrite_copy, t)[1].nbytes for t in range(26))
    config = json.loads((rewrite_copy / "hps_config.json").read_text())
    assert config["volatile_db"] == {
        "type": "redis_cluster", "address": redis_cluster.address, "user_name": "default", "password": "",
        "num_partitions": 4, "num_node_connections": 4, "max_batch_size": 65536, "initialize_after_startup": False}
    assert config["persistent_db"] == {"type": "rocks_db", "path": str(rocks), "num_threads": 16, "read_only": False,
                                       "max_batch_size": 65536, "initialize_after_startup": False}
    parsed = describe_config(rewrite_copy / "hps_config.json")
    assert parsed["volatile_db"]["type"] == "redis_cluster" and parsed["volatile_db"]["num_partitions"] == 4
    assert parsed["volatile_db"]["overflow_policy"] == "evict_random"  # HugeCTR's default, filled in
    assert parsed["persistent_db"] == {
        "present": True, "type": "rocks_db", "path": str(rocks), "num_threads": 16, "read_only": False,
        "max_batch_size": 65536, "initialize_after_startup": False, "update_filters": ["^hps_.+$"]}
    assert parsed["update_source"]["type"] == "null"
    # The rest of the config is untouched.
    before = json.loads(((rewrite_copy.parent / "dlrm").parent / "dlrm" / "hps_config.json").read_text())
    assert before["models"][0]["sparse_files"] == config["models"][0]["sparse_files"]


def test_rocksdb_round_trip_read_back_with_ldb(rewrite_copy, tmp_path, storage_lib):
    ldb = shutil.which("ldb") or shutil.which("rocksdb_ldb")
    if ldb is None:
        skip_unless_required("ldb is not installed (apt-get install rocksdb-tools); .ci/run installs it")
    set_model_name(rewrite_copy, "rocks")
    rocks = tmp_path / "rocks"
    assert cli.main(["publish", str(rewrite_copy), "--persistent-db", str(rocks), "--quiet"]) == 0
    names = json.loads((rewrite_copy / "hps_config.json").read_text())["models"][0]["embedding_table_names"]
    out = subprocess.run([ldb, f"--db={rocks}", "list_column_families"], capture_output=True, text=True, check=True)
    for name in names:
        assert ref.tag("rocks", name) in out.stdout  # one column family per tag (rocksdb_backend.cpp:104-114)
    for table_id in (0, 7, 25):
        keys, vectors, _ = _table(rewrite_copy, table_id)
        scan = subprocess.run([ldb, f"--db={rocks}", f"--column_family={ref.tag('rocks', names[table_id])}", "scan",
                               "--hex"], capture_output=True, text=True, check=True).stdout
        stored = {}
        for line in scan.splitlines():
            k, v = line.split(" : ")
            stored[bytes.fromhex(k[2:])] = bytes.fromhex(v[2:])
        assert stored == {ref.key_bytes(k, False): np.asarray(v, "<f4").tobytes() for k, v in zip(keys, vectors)}
    # And back through our reader: every key found, bytes equal.
    with Database.open_config(rewrite_copy / "hps_config.json", "persistent_db") as db:
        keys, vectors, dim = _table(rewrite_copy, 3)
        values, status = db.fetch(ref.tag("rocks", names[3]), keys, dim)
        assert (status == 0).all() and values.tobytes() == vectors.tobytes()


def test_republish_is_idempotent_and_update_overwrites_rows(rewrite_copy, redis_cluster, tmp_path):
    set_model_name(rewrite_copy, "again")
    rocks = tmp_path / "rocks"
    target = parse_redis_url(redis_cluster.url)
    first = publish(rewrite_copy, redis=target, rocksdb=rocks)
    second = publish(rewrite_copy, redis=target, rocksdb=rocks)
    assert sum(t["volatile_db"]["new_keys"] for t in first.tables) == sum(t["rows"] for t in first.tables)
    assert sum(t["volatile_db"]["new_keys"] for t in second.tables) == 0  # HSET overwrote, added nothing

    keys, vectors, dim = _table(rewrite_copy, 2)
    folder_name = Path(json.loads((rewrite_copy / "hps_config.json").read_text())["models"][0]["sparse_files"][2]).name
    changed = tmp_path / "delta" / folder_name  # --update finds the table by the folder's name
    changed.mkdir(parents=True)
    pick = np.arange(0, keys.size, 3)
    new_vectors = vectors[pick] * -2.0 + 1.0
    keys[pick].astype("<i8").tofile(changed / "key")
    new_vectors.astype("<f4").tofile(changed / "emb_vector")
    with Tiers(rewrite_copy / "hps_config.json", "again", 2) as tiers:  # a serving reader, opened before the update
        # the database lies outside the rewrite folder: its owner trusts it for the update to write there
        assert cli.main(["publish", str(rewrite_copy), "--update", str(changed), "--allow-path", str(rocks),
                         "--quiet"]) == 0
        tiers.catch_up()
        got = tiers.fetch(keys, dim)
    want = vectors.copy()
    want[pick] = new_vectors
    assert got.tobytes() == want.tobytes()


def test_publish_interrupted_then_rerun_completes(rewrite_copy, redis_cluster):
    set_model_name(rewrite_copy, "interrupted")
    config_before = (rewrite_copy / "hps_config.json").read_text()
    calls = []

    def stop_after_first_chunk(done, total):
        calls.append(done)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        publish(rewrite_copy, redis=parse_redis_url(redis_cluster.url), progress=stop_after_first_chunk)
    assert (rewrite_copy / "hps_config.json").read_text() == config_before  # nothing half-written
    client = redis_client(redis_cluster)
    assert client.keys("hps_et{hps_et.interrupted.*") != []  # some rows did land
    publish(rewrite_copy, redis=parse_redis_url(redis_cluster.url))
    names = json.loads((rewrite_copy / "hps_config.json").read_text())["models"][0]["embedding_table_names"]
    for table_id in range(26):
        keys, vectors, _ = _table(rewrite_copy, table_id)
        for name, fields in ref.expected_redis(keys, vectors, ref.tag("interrupted", names[table_id]), False, 8).items():
            assert client.hgetall(name) == fields


def test_cli_reports_interrupt_with_exit_130(rewrite_copy, redis_cluster, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("hps_surgeon.cli.publish.publish", interrupted)
    assert cli.main(["publish", str(rewrite_copy), "--volatile-db", redis_cluster.url]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hps-surgeon: error: publish interrupted; the rows written so far are valid and hps_config.json is "
                   "unchanged; run the same command again to complete it"]
