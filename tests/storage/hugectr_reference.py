"""HugeCTR's HPS database layout, written out again in Python from HugeCTR's source (af9025667e),
independently of our C++ implementation, to check the bytes it writes.

- tag:        "hps_et." + model + "." + table           src/hps/hier_parameter_server.cpp:41-44
- Redis hash: "hps_et{" + tag + "/p" + part + "}v"      src/hps/redis_backend.cpp:35-41
- partition:  rrxmrrxmsx_0(key) % num_partitions         include/hps/database_backend_detail.hpp:53-64
- key bytes:  the native Key: long long (8 bytes) when supportlonglong, else unsigned int (4 bytes)
              (hier_parameter_server.cpp:66-70; modelloader.cpp casts with static_cast<unsigned>)
- value:      embedding_vecsize x float32, raw        redis_backend_detail.hpp:438-442
- RocksDB:    one column family named by the tag, same key/value bytes   src/hps/rocksdb_backend.cpp:193-234
"""

from __future__ import annotations

import numpy as np

_M64 = (1 << 64) - 1


def _rotr(x: int, n: int) -> int:
    return ((x >> n) | (x << (64 - n))) & _M64


def rrxmrrxmsx_0(x: int) -> int:
    x &= _M64
    x ^= _rotr(x, 25) ^ _rotr(x, 50)
    x = (x * 0xA24BAED4963EE407) & _M64
    x ^= _rotr(x, 24) ^ _rotr(x, 49)
    x = (x * 0x9FB21C651E98DF25) & _M64
    return x ^ (x >> 28)


def tag(model: str, table: str) -> str:
    return f"hps_et.{model}.{table}"


def hash_name(tag_name: str, part: int, suffix: str = "v") -> str:
    return f"hps_et{{{tag_name}/p{part}}}{suffix}"


def key_bytes(key: int, long_keys: bool) -> bytes:
    return int(key).to_bytes(8, "little", signed=True) if long_keys else (int(key) & 0xFFFFFFFF).to_bytes(4, "little")


def partition(key: int, long_keys: bool, parts: int) -> int:
    value = int(key) & _M64 if long_keys else int(key) & 0xFFFFFFFF
    return rrxmrrxmsx_0(value) % parts


def expected_redis(keys: np.ndarray, vectors: np.ndarray, tag_name: str, long_keys: bool, parts: int
                   ) -> dict[bytes, dict[bytes, bytes]]:
    """{hash name: {key bytes: value bytes}} for a table, as HugeCTR would store it."""
    out: dict[bytes, dict[bytes, bytes]] = {}
    for key, vec in zip(keys.tolist(), vectors):
        name = hash_name(tag_name, partition(key, long_keys, parts)).encode()
        out.setdefault(name, {})[key_bytes(key, long_keys)] = np.asarray(vec, dtype="<f4").tobytes()
    return out
