// staged_lookup.cu: see staged_lookup.hpp.
#include "staged_lookup.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "staged_kernels.cuh"
#include "storage/thread_pool.hpp"

namespace hps {

namespace {

// Never by default: the zero-copy path (host reads in address order, host_tier_kernels.cuh) was 3.3x
// faster with uniform keys and 1.1-1.9x with Zipf 1.05 on the H100, and the copy engine won only at
// Zipf 1.2 (0.86 vs 1.15 ms at dim 16), where both were far ahead of HKV (BENCHMARKS.md section 3).
// The path stays for machines whose mapped host reads are slower than their host threads' gather
// plus the copy engine.
constexpr int64_t kCopyEngineMinKeys = INT64_MAX;

// Rows per piece of the gather: one piece is copied in while the next one is gathered.
constexpr size_t kPieceRows = 16384;

}  // namespace

int64_t copy_engine_min_keys() {
    const char* env = std::getenv("HPS_COPY_ENGINE_MIN_KEYS");
    if (!env || !*env) return kCopyEngineMinKeys;
    if (std::strcmp(env, "never") == 0) return INT64_MAX;
    char* end = nullptr;
    const long long v = std::strtoll(env, &end, 10);
    if (*end != '\0' || v < 0)
        throw Error(HPS_ERR_CONFIG, std::string("HPS_COPY_ENGINE_MIN_KEYS='") + env +
                                        "' is not a number of keys >= 0 or 'never'; unset it for the measured default");
    return v;
}

StagedMissPath::StagedMissPath(int64_t rows, int dim, const float* host, const std::string& ctx)
    : rows_(rows), dim_(dim), host_(host) {
    stage_index_ = device_buffer<int>(static_cast<size_t>(rows), ctx + ", copy-engine miss path");
    HPS_CUDA(cudaMemset(stage_index_.get(), 0xff, static_cast<size_t>(rows) * sizeof(int)), ctx);  // -1: not listed
    counts_ = device_buffer<unsigned long long>(2, ctx);
    h_counts_ = pinned_buffer<unsigned long long>(2, cudaHostAllocDefault, ctx);
}

void StagedMissPath::gather(const int* rows, size_t count, float* staging, cudaStream_t stream) {
    storage::ThreadPool& pool = storage::ThreadPool::shared();
    const size_t row_bytes = static_cast<size_t>(dim_) * sizeof(float);
    for (size_t b = 0; b < count; b += kPieceRows) {
        const size_t e = std::min(count, b + kPieceRows);
        const size_t tasks = std::min<size_t>(pool.size() * 2, (e - b + 255) / 256);
        pool.parallel_for(tasks, [&](size_t t) {
            for (size_t r = b + (e - b) * t / tasks; r < b + (e - b) * (t + 1) / tasks; ++r)
                std::memcpy(h_staging_.get() + r * dim_, host_ + static_cast<size_t>(rows[r]) * dim_, row_bytes);
        });
        HPS_CUDA(cudaMemcpyAsync(staging + b * dim_, h_staging_.get() + b * dim_, (e - b) * row_bytes,
                                 cudaMemcpyHostToDevice, stream),
                 "copy-engine miss path (rows to the GPU)");
    }
}

void StagedMissPath::lookup(const kernels::Params& p, bool identity, bool vec4, int key_bits, const void* keys, long long n,
                            float* out, int sm_count, cudaStream_t stream) {
    using namespace kernels;
    std::lock_guard<std::mutex> lock(mutex_);
    const size_t un = static_cast<size_t>(n);
    if (un > cap_keys_) {
        miss_pos_.reset(), miss_row_.reset();
        miss_pos_ = device_buffer<long long>(un, "miss positions");
        miss_row_ = device_buffer<int>(un, "miss rows");
        cap_keys_ = un;
    }
    const size_t max_distinct = std::min<size_t>(un, static_cast<size_t>(rows_));
    if (max_distinct > cap_distinct_) {
        distinct_rows_.reset();
        distinct_rows_ = device_buffer<int>(max_distinct, "missed rows");
        h_rows_.reset();
        h_rows_ = pinned_buffer<int>(max_distinct, cudaHostAllocDefault, "missed rows (host)");
        cap_distinct_ = max_distinct;
    }
    const StageLists st{stage_index_.get(), distinct_rows_.get(), miss_pos_.get(), miss_row_.get(), counts_.get()};
    HPS_CUDA(cudaMemsetAsync(counts_.get(), 0, 2 * sizeof(unsigned long long), stream), "copy-engine miss path");
    dispatch_lookup(key_bits, vec4, identity, [&](auto key, auto vec, auto index) {
        using KeyT = decltype(key);
        hier_probe_kernel<KeyT, decltype(vec), decltype(index)::value, StageLists>
            <<<chunk_grid<32>(n, static_cast<long long>(sm_count) * kBlocksPerSm), kBlock, 0, stream>>>(
                p, st, static_cast<const KeyT*>(keys), n, out);
    });
    HPS_CUDA(cudaGetLastError(), "copy-engine miss path (probe launch)");
    HPS_CUDA(cudaMemcpyAsync(h_counts_.get(), counts_.get(), 2 * sizeof(unsigned long long), cudaMemcpyDeviceToHost,
                             stream), "copy-engine miss path");
    HPS_CUDA(cudaStreamSynchronize(stream), "copy-engine miss path (probe)");
    const long long misses = static_cast<long long>(h_counts_[0]);
    const size_t distinct = static_cast<size_t>(h_counts_[1]);
    if (misses == 0) return;

    try {
        finish(p, vec4, st, misses, distinct, max_distinct, out, sm_count, stream);
    } catch (...) {
        // Rows left listed would never be listed again: unlist them all before reporting the error.
        HPS_CUDA_NOEXCEPT(cudaStreamSynchronize(stream));
        HPS_CUDA_NOEXCEPT(cudaMemset(stage_index_.get(), 0xff, static_cast<size_t>(rows_) * sizeof(int)));
        throw;
    }
}

void StagedMissPath::finish(const kernels::Params& p, bool vec4, const kernels::StageLists& st, long long misses,
                            size_t distinct, size_t max_distinct, float* out, int sm_count, cudaStream_t stream) {
    using namespace kernels;
    HPS_CUDA(cudaMemcpyAsync(h_rows_.get(), distinct_rows_.get(), distinct * sizeof(int), cudaMemcpyDeviceToHost, stream),
             "copy-engine miss path (missed rows)");
    if (distinct * dim_ > cap_staging_) {
        // Grown with headroom: the distinct misses of a batch vary a little from batch to batch.
        const size_t want = std::min(max_distinct, distinct + distinct / 4) * static_cast<size_t>(dim_);
        h_staging_.reset();
        h_staging_ = pinned_buffer<float>(want, cudaHostAllocDefault, "missed vectors (host)");
        staging_.reset();
        staging_ = device_buffer<float>(want, "missed vectors");
        cap_staging_ = want;
    }
    HPS_CUDA(cudaStreamSynchronize(stream), "copy-engine miss path (missed rows)");
    gather(h_rows_.get(), distinct, staging_.get(), stream);

    const int fill_grid = static_cast<int>(std::max<long long>(
        1, std::min<long long>((misses * 32 + kBlock - 1) / kBlock, static_cast<long long>(sm_count) * kBlocksPerSm)));
    const long long admit_warps = (static_cast<long long>(distinct) + 31) / 32;
    const int admit_grid = static_cast<int>(std::max<long long>(
        1, std::min<long long>((admit_warps * 32 + kBlock - 1) / kBlock, static_cast<long long>(sm_count) * kBlocksPerSm)));
    if (vec4) {
        const float4* staging = reinterpret_cast<const float4*>(staging_.get());
        stage_fill_kernel<float4><<<fill_grid, kBlock, 0, stream>>>(p.vec, st, staging, misses, out);
        stage_admit_kernel<float4><<<admit_grid, kBlock, 0, stream>>>(p, st, staging, static_cast<long long>(distinct));
    } else {
        const float* staging = staging_.get();
        stage_fill_kernel<float><<<fill_grid, kBlock, 0, stream>>>(p.vec, st, staging, misses, out);
        stage_admit_kernel<float><<<admit_grid, kBlock, 0, stream>>>(p, st, staging, static_cast<long long>(distinct));
    }
    HPS_CUDA(cudaGetLastError(), "copy-engine miss path (fill / admission launch)");
    // The lists and staging buffers are reused by the next lookup, which may run on another stream.
    HPS_CUDA(cudaStreamSynchronize(stream), "copy-engine miss path (fill / admission)");
}

}  // namespace hps
