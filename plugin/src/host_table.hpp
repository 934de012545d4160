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

// What hps_config.json says about one table of one model.
struct TableSpec {
    std::string config_path;   // as given
    std::string model_name;
    int32_t table_id = 0;
    std::string table_name;    // embedding_table_names[table_id], or "table<id>" if absent
    std::string sparse_dir;    // resolved against the config file's folder
    int32_t emb_vec_size = 0;
    float default_value = 0.0f;
    bool gpucache = true;
    double gpucacheper = 1.0;  // fraction of rows the GPU cache holds
    std::vector<int32_t> deployed_devices;
    int64_t max_batch_size = 0;
};

// Parses config_path and selects (model_name, table_id). Throws Error(HPS_ERR_CONFIG) with the
// file, the JSON path of the offending field, and what to do.
TableSpec parse_config(const std::string& config_path, const std::string& model_name, int32_t table_id);

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
