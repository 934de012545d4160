"""The volatile tier's overflow policies against a real 3-master Redis Cluster.

HugeCTR (af9025667e) bounds each partition of a Redis table: after an insert leaves a partition
with more than `overflow_margin` entries, `resolve_overflow_` (src/hps/redis_backend.cpp:791-961)
deletes entries `max_batch_size` at a time, in the order of `overflow_policy`, until at most
round(overflow_margin x overflow_resolution_target) remain (include/hps/database_backend.hpp:309-314):
  evict_random      shuffled keys;
  evict_least_used  ascending access count (HINCRBY on insert and on every fetch), then the
                    survivors' counts are set to half the smallest surviving count (lines 898-913);
  evict_oldest      ascending last-access time (8-byte time_t, set on insert and on every fetch).
Access metadata lives in `hps_et{<tag>/p<part>}t`; fetches update it in the background.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from hps_surgeon.storage import Database

import hugectr_reference as ref
from conftest import redis_client

DIM = 4


def _open(cluster, policy: str, parts: int, margin: int, target: float, batch: int) -> Database:
    return Database.open("volatile_db", {
        "type": "redis_cluster", "address": cluster.address, "num_partitions": parts, "num_node_connections": 1, "max_batch_size": batch,
        "overflow_margin": margin, "overflow_policy": policy, "overflow_resolution_target": target}, 64, policy)


def _vectors(keys: np.ndarray) -> np.ndarray:
    return (keys[:, None] * 10 + np.arange(DIM)).astype(np.float32)


def _keys(first: int, count: int) -> np.ndarray:
    return np.arange(first, first + count, dtype=np.int64) * 7919


def _stored(client, tag: str, part: int, suffix: str = "v") -> dict[bytes, bytes]:
    return client.hgetall(ref.hash_name(tag, part, suffix))


def _size_after_inserts(n: int, margin: int, target: float, batch: int) -> int:
    """A partition's size after n new keys, inserted max_batch_size at a time, each batch followed by
    HugeCTR's overflow check and batched deletion (whichever keys the policy picks)."""
    size, goal = 0, int(margin * target + 0.5)
    for start in range(0, n, batch):
        size += min(batch, n - start)
        if size > margin:
            while size > goal:
                size -= min(batch, size)
    return size


def _wait_for(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_evict_random_prunes_each_partition_to_the_target(redis_cluster):
    tag = ref.tag("overflow_random", "t0")
    client = redis_client(redis_cluster)
    keys = _keys(1, 3000)
    with _open(redis_cluster, "evict_random", parts=2, margin=1000, target=0.45, batch=100) as db:
        db.insert(tag, keys, _vectors(keys))
        sizes = [client.hlen(ref.hash_name(tag, p)) for p in range(2)]
        per_part = [sum(ref.partition(k, True, 2) == p for k in keys.tolist()) for p in range(2)]
        assert min(per_part) > 1000  # both partitions overflowed
        assert sizes == [_size_after_inserts(n, margin=1000, target=0.45, batch=100) for n in per_part]
        values, status = db.fetch(tag, keys, DIM)
        kept = status == 0
        assert kept.sum() == sum(sizes) and set(np.unique(status).tolist()) == {0, 1}
        np.testing.assert_array_equal(values[kept], _vectors(keys)[kept])  # survivors intact, byte for byte
        for p in range(2):  # nothing else kept, and no metadata under evict_random
            assert all(ref.partition(int.from_bytes(k, "little", signed=True), True, 2) == p
                       for k in _stored(client, tag, p))
            assert not client.exists(ref.hash_name(tag, p, "t"))
        db.evict_table(tag)


def test_evict_least_used_keeps_the_keys_fetched_most_and_decays_counts(redis_cluster):
    tag = ref.tag("overflow_lfu", "t0")
    client = redis_client(redis_cluster)
    meta = ref.hash_name(tag, 0, "t")
    old, hot, new = _keys(1, 800), _keys(1, 300), _keys(5001, 300)
    with _open(redis_cluster, "evict_least_used", parts=1, margin=1000, target=0.5, batch=100) as db:
        db.insert(tag, old, _vectors(old))
        assert {client.hget(meta, ref.key_bytes(k, True)) for k in old[:5].tolist()} == {b"1"}  # HINCRBY on insert
        for _ in range(3):
            db.fetch(tag, hot, DIM)
        _wait_for(lambda: all(client.hget(meta, ref.key_bytes(k, True)) == b"4" for k in hot.tolist()),
                  "the access counts of the fetched keys (1 insert + 3 fetches)")
        db.insert(tag, new, _vectors(new))  # its last batch makes 1100 > 1000: pruned to 500, counts 1 first
        stored = _stored(client, tag, 0)
        assert len(stored) == 500
        assert {ref.key_bytes(k, True) for k in hot.tolist()} <= set(stored)
        # Survivors' counts: half the smallest surviving count (a count-1 key survives: 1 // 2 = 0).
        assert set(client.hgetall(meta).values()) == {b"0"}
        assert set(client.hgetall(meta)) == set(stored)
        db.evict_table(tag)


def test_evict_oldest_drops_the_keys_not_accessed_since_longest(redis_cluster):
    tag = ref.tag("overflow_oldest", "t0")
    client = redis_client(redis_cluster)
    meta = ref.hash_name(tag, 0, "t")
    old, touched, new = _keys(1, 600), _keys(1, 200), _keys(5001, 500)
    with _open(redis_cluster, "evict_oldest", parts=1, margin=1000, target=0.5, batch=100) as db:
        db.insert(tag, old, _vectors(old))
        first = client.hget(meta, ref.key_bytes(old[-1], True))
        assert len(first) == 8  # time_t, as HugeCTR writes it
        time.sleep(1.1)  # time_t has one-second resolution
        db.fetch(tag, touched, DIM)
        _wait_for(lambda: all(client.hget(meta, ref.key_bytes(k, True)) != first for k in touched.tolist()),
                  "the access times of the fetched keys")
        db.insert(tag, new, _vectors(new))  # last batch: 1100 > 1000, pruned to 500, untouched old keys first
        stored = _stored(client, tag, 0)
        assert len(stored) == 500
        assert not {ref.key_bytes(k, True) for k in old[200:].tolist()} & set(stored)
        times = {int.from_bytes(v, "little") for v in client.hgetall(meta).values()}
        assert min(times) > int.from_bytes(first, "little")
        db.evict_table(tag)


def test_no_overflow_below_the_margin(redis_cluster):
    tag = ref.tag("overflow_none", "t0")
    client = redis_client(redis_cluster)
    keys = _keys(1, 1000)
    with _open(redis_cluster, "evict_random", parts=1, margin=1000, target=0.5, batch=64) as db:
        db.insert(tag, keys, _vectors(keys))
        assert client.hlen(ref.hash_name(tag, 0)) == 1000  # == margin is not an overflow (size > margin is)
        db.evict_table(tag)
