// gpu_table.hpp: one embedding table on one CUDA device: GPU cache + host tier + GPU key index.
//
// Layout (the kernels and the reasoning: lookup_kernels.cuh, host_tier_kernels.cuh, hash_probe.cuh):
//   key index  : none for identity tables (key r owns row r, r = 0..rows-1: every table a rewrite
//                exports; found by one pass over the key file when the table is opened): the row is
//                the key, after a bounds check. Other tables (HugeCTR sparse models, published
//                databases): an open-addressing hash in GPU memory, 16-byte entries {int64 key,
//                int32 row}, linear probing, capacity = next power of two >= 2 x rows. It indexes
//                every key of the table (not only cached ones), so a miss finds its host row without
//                a host round trip; it costs 32 bytes per row of GPU memory at worst.
//   resident   : gpucacheper x rows >= rows -> all vectors in GPU memory, slot == row, no host tier.
//   hierarchical: all vectors in mapped pinned host memory (the host tier, read by the miss path in
//                host-address order over PCIe), plus a GPU cache of `slots` vectors. row_slot[row]
//                and owner[slot] = (generation << 32 | row) map rows to slots; owner doubles as a
//                per-slot sequence lock so readers never return a vector that is being replaced.
//                Each lookup takes its scratch (the miss list) from the table's stream-ordered pool.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <cuda_runtime.h>

#include "host_table.hpp"
#include "hps_plugin/hps.h"
#include "table.hpp"

namespace hps {

struct DeviceState;  // the table's device memory, defined in gpu_table.cu
class StagedMissPath;
namespace kernels {
struct MissList;
}

class GpuTable final : public Table {
public:
    // Loads spec's table onto device (throws hps::Error).
    GpuTable(const TableSpec& spec, int device);
    ~GpuTable() override;
    GpuTable(const GpuTable&) = delete;
    GpuTable& operator=(const GpuTable&) = delete;

    // Asynchronous on stream; no host synchronisation and no cudaMalloc (graph-capturable: the
    // hierarchical path's scratch is stream-ordered), except on hierarchical tables for batches of at
    // least copy_engine_min_keys() keys outside graph capture, which take the copy-engine miss path
    // (staged_lookup.hpp) and return when the lookup is done.
    void lookup(const void* keys, int key_bits, int64_t n, float* out, cudaStream_t stream) const override;
    hps_stats_t stats() const override;
    hps_table_info_t info() const override;
    int device() const override { return device_; }
    int dim() const override { return spec_.emb_vec_size; }
    const TableSpec& spec() const { return spec_; }

private:
    // The miss list of a hierarchical lookup of up to `keys` keys: its bytes, and its layout over them.
    size_t miss_list_bytes(long long keys) const;
    kernels::MissList miss_list(char* scratch, long long keys) const;

    TableSpec spec_;
    int device_ = 0;
    int64_t rows_ = 0;
    int64_t slots_ = 0;
    bool resident_ = true;
    bool identity_ = false;  // key r is row r for every row: no key index
    int sm_count_ = 1;
    std::unique_ptr<DeviceState> s_;
    int64_t staged_min_keys_ = INT64_MAX;
    std::unique_ptr<StagedMissPath> staged_;  // hierarchical tables whose threshold is not "never"
};

}  // namespace hps
