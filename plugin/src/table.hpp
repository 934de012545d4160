// table.hpp: what the C ABI needs of an opened table, whichever storage serves its misses:
//   GpuTable (gpu_table.hpp): resident, or a GPU cache over the whole table in pinned host memory;
//   DbTable  (db_table.hpp):  a GPU cache over HugeCTR's database tiers (Redis Cluster, RocksDB).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "hps_plugin/hps.h"

namespace hps {

class Table {
public:
    virtual ~Table() = default;
    // Looks up n keys (device memory) into out (device memory) on stream. Checks its arguments
    // before it touches the stream, and does nothing for n = 0.
    virtual void lookup(const void* keys, int key_bits, int64_t n, float* out, cudaStream_t stream) const = 0;
    // Host buffers in and out; synchronous: lookup() on device copies of keys and out.
    void lookup_host(const void* keys, int key_bits, int64_t n, float* out) const;
    virtual int device() const = 0;
    virtual int dim() const = 0;  // emb_vec_size
    virtual hps_stats_t stats() const = 0;
    virtual hps_table_info_t info() const = 0;
    // Re-reads `fraction` of the cached rows from the storage below (online updates); returns the
    // rows refreshed. Tables whose storage cannot change under them refresh nothing.
    virtual int64_t refresh(double fraction) const {
        (void)fraction;
        return 0;
    }
    // Counters of the database tiers (all zero for tables without them).
    virtual hps_tier_stats_t tier_stats() const { return hps_tier_stats_t{}; }
};

}  // namespace hps
