// staged_lookup.hpp: the copy-engine miss path of a hierarchical table (staged_kernels.cuh): misses
// listed on the GPU, gathered from the host tier on host threads, copied in by the copy engine.
// It synchronises with the host (the zero-copy path does not) and serialises its lookups;
// GpuTable takes it for batches of at least copy_engine_min_keys() keys, outside graph capture.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>

#include <cuda_runtime.h>

#include "cuda_buffer.hpp"
#include "staged_kernels.cuh"

namespace hps {

// Batch size (keys) from which hierarchical lookups take the copy-engine path: the environment
// variable HPS_COPY_ENGINE_MIN_KEYS (a number of keys, or "never"), else never (the zero-copy kernel
// won at every batch size on the H200, BENCHMARKS.md section 4). Throws HPS_ERR_CONFIG for an
// unreadable value.
int64_t copy_engine_min_keys();

class StagedMissPath {
public:
    // host: the table's host tier (rows x dim floats, host address).
    StagedMissPath(int64_t rows, int dim, const float* host, const std::string& ctx);

    // Looks up n keys as GpuTable's hierarchical path would (same results, counters and cache
    // policy); p.vec / p.vec_shift must match vec4. Returns after the lookup's work is complete.
    void lookup(const kernels::Params& p, bool identity, bool vec4, int key_bits, const void* keys, long long n, float* out,
                int sm_count, cudaStream_t stream);

private:
    void finish(const kernels::Params& p, bool vec4, const kernels::StageLists& st, long long misses, size_t distinct,
                size_t max_distinct, float* out, int sm_count, cudaStream_t stream);
    void gather(const int* rows, size_t count, float* staging, cudaStream_t stream);

    int64_t rows_;
    int dim_;
    const float* host_;
    std::mutex mutex_;
    DeviceBuffer<int> stage_index_;
    DeviceBuffer<unsigned long long> counts_;
    PinnedBuffer<unsigned long long> h_counts_;
    DeviceBuffer<long long> miss_pos_;
    DeviceBuffer<int> miss_row_, distinct_rows_;
    DeviceBuffer<float> staging_;
    PinnedBuffer<int> h_rows_;
    PinnedBuffer<float> h_staging_;
    size_t cap_keys_ = 0, cap_distinct_ = 0, cap_staging_ = 0;
};

}  // namespace hps
