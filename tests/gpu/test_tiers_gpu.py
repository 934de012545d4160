"""GPU tests of tables served from HugeCTR's database tiers (issue 14): GPU cache -> Redis Cluster
(3 masters of Debian's redis-server, started here) -> RocksDB -> default value, through
libhps_plugin.so. Every result is compared bit for bit with a numpy reference, outputs poisoned with
NaN first; tier counters are checked against what each tier holds. Skipped without a CUDA device
(and without redis-server: $HPS_REDIS_BIN or PATH, see tests/redis_servers.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from hps_gpu_helpers import RandomTable, lookup_cuda
from redis_servers import require_binary, start_cluster

pytestmark = pytest.mark.gpu

ROWS, DIM = 50_000, 32
MODEL, TAG = "tiers", "hps_et.tiers.t0"


@pytest.fixture(scope="module")
def storage(gpu_lib):
    """hps_surgeon.storage with its library loaded (after gpu_lib: no servers start on a CPU machine)."""
    from hps_surgeon import storage
    from hps_surgeon.storage import _native

    try:
        _native.load()
    except _native.StorageUnavailableError as exc:
        pytest.skip(str(exc))
    require_binary("redis-server")
    return storage


@pytest.fixture(scope="module")
def table(tmp_path_factory, gpu_lib) -> RandomTable:
    return RandomTable(tmp_path_factory.mktemp("tiers"), rows=ROWS, dim=DIM, seed=14, default=-2.5)


def _volatile(cluster, **extra) -> dict:
    return {"type": "redis_cluster", "address": cluster.address, "num_partitions": 4, "num_node_connections": 2,
            "initialize_after_startup": False, "cache_missed_embeddings": False, **extra}


def _persistent(path: Path) -> dict:
    return {"type": "rocks_db", "path": str(path), "initialize_after_startup": False}


def _config(folder: Path, table: RandomTable, ratio: float = 0.1, volatile=None, persistent=None, **model) -> Path:
    """hps_config.json of one table (model 'tiers', table 't0') with the given database sections."""
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"model": MODEL, "sparse_files": [str(table.folder)], "embedding_table_names": ["t0"],
             "embedding_vecsize_per_table": [DIM], "maxnum_catfeature_query_per_table_per_sample": [26],
             "default_value_for_each_table": [table.default], "deployed_device_list": [0], "max_batch_size": 4096,
             "hit_rate_threshold": 1.0, "gpucacheper": ratio, "gpucache": True, **model}
    config = {"supportlonglong": True, "models": [entry]}
    if volatile:
        config["volatile_db"] = volatile
    if persistent:
        config["persistent_db"] = persistent
    path = folder / "hps_config.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def published(tmp_path_factory, storage, table):
    """A cluster holding the first half of the rows, a RocksDB holding all of them."""
    folder = tmp_path_factory.mktemp("published")
    cluster = start_cluster(folder / "redis")
    try:
        with storage.Database.open("volatile_db", _volatile(cluster), 64, "redis") as db:
            db.publish(TAG, table.folder, DIM, rows=ROWS // 2)
        with storage.Database.open("persistent_db", _persistent(folder / "rocks"), 64, "rocksdb") as db:
            db.publish(TAG, table.folder, DIM)
        yield cluster, folder / "rocks"
    finally:
        cluster.stop()


def _topk_optimum(table: RandomTable, zipf: float, slots: int, found_rows_sample: int = 2_000_000) -> float:
    """Static top-k optimum of the draw distribution (estimated from a large sample of found keys)."""
    rng = np.random.default_rng(99)
    rows = (rng.zipf(zipf, size=found_rows_sample) - 1) % len(table.keys)
    counts = np.sort(np.bincount(rows, minlength=len(table.keys)))[::-1]
    return float(counts[:slots].sum() / counts.sum())


def test_first_lookup_fetches_each_distinct_key_once_from_the_right_tier(tmp_path, storage, table, published,
                                                                      torch_cuda, gpu_lib):
    cluster, rocks = published
    config = _config(tmp_path, table, volatile=_volatile(cluster), persistent=_persistent(rocks))
    keys = table.draw(100_000, absent_fraction=0.1, zipf=1.1)
    with gpu_lib.HpsTable.open(config, MODEL, 0) as h:
        np.testing.assert_array_equal(lookup_cuda(torch_cuda, h, keys, DIM), table.reference(keys))
        distinct = np.unique(keys)
        row_of = {int(k): r for r, k in enumerate(table.keys)}
        rows = np.array([row_of.get(int(k), -1) for k in distinct])
        tiers = h.tier_stats()
        # The cache started empty: every distinct key was asked of the tiers exactly once.
        assert tiers["volatile_hits"] == int(np.sum((rows >= 0) & (rows < ROWS // 2)))
        assert tiers["persistent_hits"] == int(np.sum(rows >= ROWS // 2))
        assert tiers["defaults"] == int(np.sum(rows < 0)) > 0
        assert tiers["unavailable"] == tiers["corrupt"] == 0
        s = h.stats()
        assert s.cache_hits == 0 and s.lookups == keys.size
        assert s.host_hits == int(np.sum(np.isin(keys, table.keys))) and s.not_found == keys.size - s.host_hits


@pytest.mark.parametrize("tiers", ["redis", "rocksdb", "redis+rocksdb"])
@pytest.mark.parametrize("zipf", [1.1, 1.3])
def test_lookups_exact_and_hit_rate_near_the_static_optimum(tmp_path, storage, table, published, torch_cuda, gpu_lib,
                                                           tiers, zipf):
    cluster, rocks = published
    volatile = _volatile(cluster) if "redis" in tiers else None
    persistent = _persistent(rocks) if "rocksdb" in tiers else None
    # Redis alone holds half the rows: the other half must come back as defaults.
    config = _config(tmp_path, table, volatile=volatile, persistent=persistent)

    def reference(keys: np.ndarray) -> np.ndarray:  # the table as the tiers hold it
        out = table.reference(keys)
        if tiers == "redis":
            out[~np.isin(keys, table.keys[: ROWS // 2])] = table.default
        return out

    with gpu_lib.HpsTable.open(config, MODEL, 0) as h:
        slots = h.cache_slots
        # The cache is sized on the rows the tiers hold (the largest tier's count).
        assert slots >= 0.1 * (ROWS // 2 if tiers == "redis" else ROWS)
        hits = found = 0
        for batch in range(6):
            keys = table.draw(200_000, absent_fraction=0.02, zipf=zipf)
            s0 = h.stats()
            np.testing.assert_array_equal(lookup_cuda(torch_cuda, h, keys, DIM), reference(keys))
            s1 = h.stats()
            assert s1.lookups - s0.lookups == keys.size
            assert (s1.cache_hits + s1.host_hits + s1.not_found) - (s0.cache_hits + s0.host_hits + s0.not_found) == keys.size
            if batch >= 3:  # after warm-up
                hits += s1.cache_hits - s0.cache_hits
                found += (s1.cache_hits - s0.cache_hits) + (s1.host_hits - s0.host_hits)
        rate = hits / found
        if tiers != "redis":  # with half the rows missing the optimum is another one
            optimum = _topk_optimum(table, zipf, slots)
            assert rate >= optimum - 0.05, (rate, optimum)
        assert 0.0 < rate <= 1.0
        s = h.stats()
        assert s.insertions <= s.host_hits and s.evictions <= s.insertions


def test_node_killed_then_back_degrades_to_rocksdb_and_reconnects(tmp_path, storage, table, torch_cuda, gpu_lib):
    cluster = start_cluster(tmp_path / "redis")
    try:
        with storage.Database.open("volatile_db", _volatile(cluster), 64, "redis") as db:
            db.publish(TAG, table.folder, DIM)
        with storage.Database.open("persistent_db", _persistent(tmp_path / "rocks"), 64, "rocksdb") as db:
            db.publish(TAG, table.folder, DIM)
        both = _config(tmp_path / "both", table, ratio=0.02, volatile=_volatile(cluster),
                       persistent=_persistent(tmp_path / "rocks"))
        redis_only = _config(tmp_path / "redis_only", table, ratio=0.02, volatile=_volatile(cluster))
        with gpu_lib.HpsTable.open(both, MODEL, 0) as h, gpu_lib.HpsTable.open(redis_only, MODEL, 0) as r:
            warm = table.draw(50_000)
            np.testing.assert_array_equal(lookup_cuda(torch_cuda, h, warm, DIM), table.reference(warm))
            victim = cluster.ports[1]
            cluster.kill_node(victim)
            keys = table.draw(100_000, absent_fraction=0.05)
            np.testing.assert_array_equal(lookup_cuda(torch_cuda, h, keys, DIM), table.reference(keys))  # RocksDB answers
            t = h.tier_stats()
            # Every key the dead node could not answer was asked of RocksDB: found there, or absent.
            assert t["unavailable"] > 0 and t["persistent_hits"] > 0
            assert t["persistent_hits"] + t["defaults"] >= t["unavailable"]

            # Without RocksDB below: the dead node's keys get the default value, counted, never garbage.
            got, want = lookup_cuda(torch_cuda, r, keys, DIM), table.reference(keys)
            wrong = np.any(got != want, axis=-1)
            assert wrong.any() and np.all(got[wrong] == np.float32(table.default))
            t = r.tier_stats()
            assert t["unavailable"] > 0 and t["defaults"] >= t["unavailable"]

            cluster.start_node(victim)  # back, empty (no persistence), same slots (nodes.conf kept)
            cluster.wait_ok()
            time.sleep(1.5)  # past the client's retry_after_ms for a node marked down
            before = h.tier_stats()
            keys = table.draw(100_000, absent_fraction=0.05)
            np.testing.assert_array_equal(lookup_cuda(torch_cuda, h, keys, DIM), table.reference(keys))
            after = h.tier_stats()
            assert after["unavailable"] == before["unavailable"]  # reconnected
            assert after["volatile_hits"] > before["volatile_hits"]
    finally:
        cluster.stop()


def test_online_update_seen_after_refresh(tmp_path, storage, table, published, torch_cuda, gpu_lib):
    cluster, rocks = published
    config = _config(tmp_path, table, ratio=0.2, volatile=_volatile(cluster), persistent=_persistent(rocks))
    sample = np.random.default_rng(3).choice(ROWS // 2, 2_000, replace=False)  # rows Redis holds
    keys = np.ascontiguousarray(table.keys[sample])
    new = np.full((keys.size, DIM), 42.0, dtype=np.float32)
    with gpu_lib.HpsTable.open(config, MODEL, 0) as h:
        for _ in range(3):  # seen often enough to be admitted
            lookup_cuda(torch_cuda, h, keys, DIM)
        with storage.Database.open("volatile_db", _volatile(cluster), 64, "redis") as db:
            db.insert(TAG, keys[:500], new[:500])
        got = lookup_cuda(torch_cuda, h, keys, DIM)
        stale = np.all(got[:500] == table.vectors[sample[:500]], axis=1)
        assert stale.sum() > 0  # cached rows keep their old vector until refreshed
        np.testing.assert_array_equal(got[500:], table.vectors[sample[500:]])
        assert h.refresh(1.0) > 0
        got = lookup_cuda(torch_cuda, h, keys, DIM)
        np.testing.assert_array_equal(got[:500], new[:500])
        np.testing.assert_array_equal(got[500:], table.vectors[sample[500:]])
        with storage.Database.open("volatile_db", _volatile(cluster), 64, "redis") as db:  # leave the table as it was
            db.insert(TAG, keys[:500], table.vectors[sample[:500]])


def test_rocksdb_update_by_another_process_and_background_refresh(tmp_path, storage, table, torch_cuda, gpu_lib):
    rocks = tmp_path / "rocks"
    with storage.Database.open("persistent_db", _persistent(rocks), 64, "rocksdb") as db:
        db.publish(TAG, table.folder, DIM)
    config = _config(tmp_path, table, ratio=0.2, persistent=_persistent(rocks), refresh_delay=0.0,
                     refresh_interval=0.2, cache_refresh_percentage_per_iteration=1.0)
    keys = np.ascontiguousarray(table.keys[:1_000])
    with gpu_lib.HpsTable.open(config, MODEL, 0) as h:
        for _ in range(3):
            np.testing.assert_array_equal(lookup_cuda(torch_cuda, h, keys, DIM), table.vectors[:1_000])
        assert h.stats().cache_hits > 0
        new = np.full((keys.size, DIM), -7.0, dtype=np.float32)
        # `hps-surgeon publish --update` opens the database as primary while the plugin reads it.
        with storage.Database.open("persistent_db", _persistent(rocks), 64, "rocksdb") as db:
            db.insert(TAG, keys, new)
        deadline = time.monotonic() + 20
        while not np.array_equal(lookup_cuda(torch_cuda, h, keys, DIM), new):
            assert time.monotonic() < deadline, "the background refresh did not bring the update in"
            time.sleep(0.2)
