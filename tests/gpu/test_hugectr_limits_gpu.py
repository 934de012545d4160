"""Where HugeCTR's HPS_TRT plugin skips a lookup and returns success (garbage outputs), ours serves it
exactly (issue 12, items 5 and 6), on the GPU through the native library:

- more keys than max_batch_size x maxnum_catfeature_query_per_table_per_sample
  (HugeCTR/src/hps/plugin/lookup_manager.cpp:197-204);
- a GPU outside deployed_device_list (lookup_manager.cpp:168-172);
- int32 keys at the edges: -1 (HugeCTR's empty-slot key on its int32 path,
  HugeCTR/include/hps/embedding_cache.hpp:83), -2^31 and 2^31-1, stored or not.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from hps_gpu_helpers import write_table

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("ratio", [1.0, 0.1], ids=["resident", "hierarchical"])
def test_limits_hugectr_breaks_on_are_served_exactly(tmp_path, gpu_lib, ratio):
    rng = np.random.default_rng(7)
    keys = np.concatenate([[-1, -(2**31), 2**31 - 1], np.arange(10, 10 + 997)]).astype(np.int64)
    vectors = rng.standard_normal((keys.size, 4), dtype=np.float32)
    write_table(tmp_path / "tables" / "t0", keys, vectors)
    config = tmp_path / "hps_config.json"
    config.write_text(json.dumps({"supportlonglong": False, "models": [{
        "model": "m", "sparse_files": ["tables/t0"], "embedding_vecsize_per_table": [4],
        "maxnum_catfeature_query_per_table_per_sample": [1], "default_value_for_each_table": [-2.5],
        "deployed_device_list": [7], "max_batch_size": 1, "gpucacheper": ratio}]}))
    # 50,000 keys where HugeCTR serves at most 1 x 1, on device 0 where HugeCTR serves only device 7
    query = np.concatenate([keys, [-2, 2**31 - 2, 5, 0], rng.choice(keys, 50_000 - keys.size - 4)]).astype(np.int32)
    rows = {int(k): r for r, k in enumerate(keys)}
    expected = np.array([vectors[rows[int(k)]] if int(k) in rows else np.full(4, -2.5, np.float32) for k in query])
    with gpu_lib.HpsTable.open(config, "m", 0, device=0) as table:
        for _ in range(3):  # the hierarchical cache admits rows between rounds
            np.testing.assert_array_equal(table.lookup_host(query), expected)
