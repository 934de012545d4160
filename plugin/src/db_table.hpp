// db_table.hpp: a table served from HugeCTR's database tiers with a GPU cache in front
// (db_kernels.cuh for the cache, db_admission.cuh for what it keeps, storage/tiers.hpp for the tiers).
//
// Unlike GpuTable's resident and host-memory paths, a lookup here synchronises with the host
// (the missed keys go to Redis / RocksDB, as in HugeCTR's HPS), and lookups of one table are
// serialised. Online updates: refresh() re-reads cached rows from the tiers; a background
// thread does so every refresh_interval seconds when the config asks for it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "host_table.hpp"
#include "storage/db_config.hpp"
#include "table.hpp"

namespace hps {

namespace storage {
class TierStack;
}
struct DbState;  // device and staging buffers, defined in db_table.cu

class DbTable final : public Table {
public:
    DbTable(const TableSpec& spec, const storage::DbConfig& db, int device);
    ~DbTable() override;
    DbTable(const DbTable&) = delete;
    DbTable& operator=(const DbTable&) = delete;

    void lookup(const void* keys, int key_bits, int64_t n, float* out, cudaStream_t stream) const override;
    int device() const override { return device_; }
    int dim() const override { return spec_.emb_vec_size; }
    hps_stats_t stats() const override;
    hps_table_info_t info() const override;
    int64_t refresh(double fraction) const override;
    hps_tier_stats_t tier_stats() const override;

private:
    void lookup_slice(const void* keys, int key_bits, int64_t n, float* out, cudaStream_t stream) const;
    void admit(size_t distinct, cudaStream_t stream) const;
    void refresher(storage::RefreshParams params);

    TableSpec spec_;
    int device_ = 0;
    bool key32_ = false;
    int64_t slots_ = 0;
    int sm_count_ = 1;
    std::unique_ptr<storage::TierStack> tiers_;
    std::unique_ptr<DbState> s_;
    mutable std::mutex mutex_;  // one lookup / refresh at a time
    mutable unsigned epoch_ = 1;
    mutable uint64_t refresh_cursor_ = 0;
    mutable std::atomic<uint64_t> lookups_{0}, cache_hits_{0}, tier_hits_{0}, not_found_{0}, insertions_{0},
        evictions_{0};
    std::mutex stop_mutex_;
    std::condition_variable stop_cv_;
    bool stop_ = false;
    std::thread refresh_thread_;
};

}  // namespace hps
