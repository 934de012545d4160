"""Storage tiers: HugeCTR's Redis Cluster (volatile) and RocksDB (persistent) databases under the GPU cache.

The layout and the database clients live in the native library (``plugin/src/storage``,
``libhps_storage.so``); this package publishes tables through it and writes the config sections.
"""

from ._native import Database, StorageError, StorageUnavailableError, Tiers, describe_config, tag_name
from .config import RedisTarget, parse_redis_url
from .publish import PublishReport, publish

__all__ = ["Database", "PublishReport", "RedisTarget", "StorageError", "StorageUnavailableError", "Tiers",
           "describe_config", "parse_redis_url", "publish", "tag_name"]
