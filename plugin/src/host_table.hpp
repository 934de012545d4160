// host_table.hpp: the host-only half of the lookup core: reading hps_config.json and the HugeCTR
// sparse-model folder. No CUDA here, so it is unit-tested on CPU-only CI machines.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "hps_plugin/hps.h"

namespace hps {

// Error carried inside the library; the C ABI turns it into (code, message).
class Error : public std::runtime_error {
public:
    Error(hps_status code, const std::string& message) : std::runtime_error(message), code_(code) {}
    hps_status code() const noexcept { return code_; }

private:
    hps_status code_;
};

// What hps_config.json says about one table of one model. Fields absent from the config take
// HugeCTR's defaults (HugeCTR/src/hps/inference_utils.cpp:513-632).
struct TableSpec {
    std::string config_path;   // as given
    std::string model_name;
    int32_t table_id = 0;
    std::string table_name;    // embedding_table_names[table_id], or HugeCTR's "sparse_embedding<id>"
    std::string sparse_dir;    // absolute as written, else resolved against the config file's folder
    int32_t emb_vec_size = 0;
    float default_value = 0.0f;  // 0.0 past the end of a short default_value_for_each_table, as HugeCTR
    bool gpucache = true;
    double gpucacheper = 0.2;  // fraction of rows the GPU cache holds (1 or more: the whole table)
    std::vector<int32_t> deployed_devices;
    int64_t max_batch_size = 64;
    int64_t max_keys_per_sample = 0;  // maxnum_catfeature_query_per_table_per_sample[table_id]
};

// Parses config_path as HugeCTR's parser does (what it requires, defaults and refuses: README "HPS
// config fields") and selects (model_name, table_id). Throws Error(HPS_ERR_CONFIG) with the file,
// the JSON path of the offending field, HugeCTR's reason where it has one, and what to do.
TableSpec parse_config(const std::string& config_path, const std::string& model_name, int32_t table_id);

// Where the parser's warnings go (sections we accept but do not serve, such as volatile_db): each
// distinct message once per process. Default: stderr. The TensorRT glue may route them to its logger.
using WarningSink = void (*)(const std::string& message);
void set_warning_sink(WarningSink sink);

// Sizes of a sparse-model folder, checked for consistency with emb_vec_size (HPS_ERR_TABLE_FILE).
struct TableFiles {
    std::string key_path;
    std::string vec_path;
    int64_t rows = 0;
};
TableFiles inspect_table_files(const TableSpec& spec);

// Reads `key` into keys[rows] and, when vectors is not null, `emb_vector` into vectors[rows * dim];
// the caller owns both buffers (pinned host memory in the library, plain vectors in tests).
void read_table_files(const TableFiles& files, int32_t dim, int64_t* keys, float* vectors);

// Reads vectors of rows [row0, row0 + count) into dst[count * dim] (streaming upload of resident tables).
void read_vector_rows(const TableFiles& files, int32_t dim, int64_t row0, int64_t count, float* dst);

}  // namespace hps
