// tiers.hpp: HugeCTR's lookup order below the GPU cache for one table
// (HierParameterServer::lookup, src/hps/hier_parameter_server.cpp:772-851):
//   volatile DB (Redis Cluster) -> persistent DB (RocksDB) -> default value,
// with keys missed by the volatile DB but found in the persistent one copied up when
// cache_missed_embeddings is set (asynchronously, as HugeCTR's volatile_db_async_inserter_).
// Degradation: keys whose node is unreachable or whose stored value has the wrong length are
// asked of the next tier, and if no tier has them get the default value; both are counted and
// logged (at most once per second per table), never returned as garbage.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "backend.hpp"

namespace hps::storage {

struct TierStats {
    uint64_t volatile_hits = 0;     // keys served by the volatile DB
    uint64_t persistent_hits = 0;   // keys served by the persistent DB
    uint64_t defaults = 0;          // keys no tier had: default value
    uint64_t unavailable = 0;       // key lookups a tier could not answer (node down, I/O error)
    uint64_t corrupt = 0;           // stored values with the wrong length (ignored)
    uint64_t elevated = 0;          // keys copied up into the volatile DB (cache_missed_embeddings)
};

class TierStack {
public:
    // Opens the configured databases and checks the table's layout there (HPS_ERR_DATABASE on a
    // mismatch). When a database lacks the table and initialize_after_startup holds, the sparse
    // folder is loaded into it first (what HugeCTR does at startup); `publish` writes
    // initialize_after_startup = false because it has loaded them already.
    TierStack(const DbConfig& config, const std::string& tag, int32_t dim, float default_value,
              const std::string& sparse_dir);
    ~TierStack();

    // keys[0..n) -> values[n * dim]; found[i] (optional) = 1 when a tier had key i. Never throws
    // for an unreachable database.
    void fetch(size_t n, const int64_t* keys, float* values, uint8_t* found = nullptr);
    // Entries the tiers hold for the table (the largest of them; sizes the GPU cache).
    int64_t rows();
    // Writes updated rows into the volatile tier (the persistent one is opened read-only for
    // lookups; `hps-surgeon publish --update` writes it), for in-process update sources.
    void insert(size_t n, const int64_t* keys, const float* values);

    // Makes writes by other processes visible (RocksDB secondary catch-up); call before a refresh.
    void catch_up();

    TierStats stats() const;
    const std::string& tag() const { return tag_; }
    int32_t dim() const { return dim_; }
    std::string describe() const;  // "redis_cluster -> rocks_db" (messages)

private:
    void note_degradation(uint64_t unavailable, uint64_t corrupt);
    void elevate(std::vector<int64_t> keys, std::vector<float> values);

    std::string tag_;
    int32_t dim_;
    float default_value_;
    bool cache_missed_;
    std::unique_ptr<Backend> volatile_db_, persistent_db_;
    std::atomic<uint64_t> volatile_hits_{0}, persistent_hits_{0}, defaults_{0}, unavailable_{0}, corrupt_{0},
        elevated_{0};
    std::mutex log_mutex_;
    std::chrono::steady_clock::time_point last_log_{};
    struct Elevator;
    std::unique_ptr<Elevator> elevator_;
};

}  // namespace hps::storage
