// peer_config.hpp: the hps_config.json lookup_peers opens our library with (no CUDA, so the CPU test
// tests/test_bench_configs.py compiles it and checks the result against our config parser: a
// benchmark whose config the parser refuses measures nothing).
#pragma once

#include <sstream>
#include <string>
#include <vector>

namespace bench {

struct PeerModel {
    std::string name;    // "model" of the entry
    std::string folder;  // the table's sparse-model folder (key, emb_vector)
    double gpucacheper;  // 1.0: resident
};

// One single-table model per entry, every field HugeCTR's parser requires, sized for batch x hotness keys.
inline std::string peer_hps_config(const std::vector<PeerModel>& models, int dim, long long batch, int hotness) {
    std::ostringstream j;
    j << "{\"supportlonglong\": true, \"models\": [";
    for (size_t i = 0; i < models.size(); ++i) {
        const PeerModel& m = models[i];
        j << (i ? ",\n" : "\n") << " {\"model\": \"" << m.name << "\", \"sparse_files\": [\"" << m.folder
          << "\"], \"num_of_worker_buffer_in_pool\": 3, \"embedding_table_names\": [\"t0\"],"
          << " \"embedding_vecsize_per_table\": [" << dim << "], \"maxnum_catfeature_query_per_table_per_sample\": ["
          << hotness << "], \"default_value_for_each_table\": [0.0], \"deployed_device_list\": [0],"
          << " \"max_batch_size\": " << batch << ", \"cache_refresh_percentage_per_iteration\": 0.2,"
          << " \"hit_rate_threshold\": 1.0, \"gpucacheper\": " << m.gpucacheper << ", \"gpucache\": true}";
    }
    j << "]}\n";
    return j.str();
}

}  // namespace bench
