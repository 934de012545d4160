"""The hps_config.json model entries the benchmarks open our library with (no torch, no GPU: the CPU
test tests/test_bench_configs.py checks every benchmark's config against our config parser, so a
benchmark cannot silently stop running when the parser gains a rule). bench/peers writes the same
fields from C++ (bench/peers/peer_config.hpp), checked by the same test."""

from __future__ import annotations


def model_entry(name: str, sparse: str, dim: int, ratio: float, batch: int, slots: int) -> dict:
    """One single-table model with every field HugeCTR's parser requires, for batches of batch x slots keys."""
    return {"model": name, "sparse_files": [sparse], "num_of_worker_buffer_in_pool": 3,
            "embedding_table_names": ["t0"], "embedding_vecsize_per_table": [dim],
            "maxnum_catfeature_query_per_table_per_sample": [slots], "default_value_for_each_table": [0.0],
            "deployed_device_list": [0], "max_batch_size": batch, "cache_refresh_percentage_per_iteration": 0.2,
            "hit_rate_threshold": 1.0, "gpucacheper": ratio, "gpucache": True}


def lookup_config(dim: int) -> dict:
    """bench_lookup.py's config (tables/t0 beside it): the table resident, hierarchical (cache 0.2), host-only."""
    return {"supportlonglong": True,
            "models": [model_entry(name, "tables/t0", dim, ratio, batch=131072, slots=26)
                       for name, ratio in (("resident", 1.0), ("hier", 0.2), ("host", 0.0))]}
