// host_tier_kernels.cuh: lookups of hierarchical tables, whose missed rows are read from the mapped
// host tier in host-address order.
//
// Reading random rows of mapped host memory is capped by address translation far below PCIe (issue 4
// measured ~21 GB/s for random 512-byte rows on the H100 VM, and HKV's hybrid find, which sorts its
// host reads, ran 3-11x faster than our key-order reads in issue 15). The same rows read in address
// order move at PCIe speed. So a lookup is four kernels on one stream, with no host synchronisation
// and nothing allocated but the caller's scratch (capturable in a CUDA graph):
//   1. hier_probe_kernel: key -> row (row_of); rows in the GPU cache copied out under the slot's
//      sequence lock (a torn read becomes a miss), absent keys get the default value, frequencies
//      sampled; each miss goes to the miss sink. For this path the sink is the MissList: the miss is
//      appended as (row << 32 | output position) and counted in its bucket, row >> shift (at most
//      2^16 buckets of consecutive rows);
//   2. bucket_scan_kernel: exclusive scan of the bucket counts (one block, cub::BlockScan);
//   3. bucket_scatter_kernel: the misses in bucket order, a counting sort by row (order inside a
//      bucket, <= rows / 2^15 consecutive rows, is whatever the atomics give);
//   4. host_read_kernel: warps walk the ordered list front to back a few rows at a time, so the host
//      rows being read at any moment lie in a narrow address range; each warp copies its rows host ->
//      output, then offers them to the cache (offer_rows).
// The copy-engine path (staged_kernels.cuh) uses the same probe kernel (hier_probe.cuh) with another
// sink.
#pragma once

#include <cub/block/block_scan.cuh>

#include "hier_probe.cuh"

namespace hps {
namespace kernels {

// A lookup's misses, in per-lookup scratch memory (GpuTable allocates it from its stream-ordered pool).
struct MissList {
    unsigned long long* entries;  // (row << 32) | output position, in probe order
    unsigned long long* ordered;  // the same entries in bucket order
    unsigned* bucket_count;       // misses per bucket (zeroed before the probe)
    unsigned* bucket_next;        // next free place of each bucket in `ordered`
    unsigned long long* count;    // misses listed (zeroed before the probe)
    int shift;                    // bucket of a row: row >> shift
    int buckets;

    // Called by the whole warp; position: the key's place in this launch (< 2^32).
    __device__ __forceinline__ void record(bool miss, int row, long long position, int lane) const {
        const unsigned long long at = warp_append(miss, count, lane);
        if (!miss) return;
        entries[at] = (static_cast<unsigned long long>(row) << 32) | static_cast<unsigned>(position);
        atomicAdd(bucket_count + (row >> shift), 1u);
    }
};

constexpr int kScanThreads = 1024;

// bucket_next = exclusive prefix sums of bucket_count; one block of kScanThreads.
__global__ void __launch_bounds__(kScanThreads) bucket_scan_kernel(MissList ml) {
    using Scan = cub::BlockScan<unsigned, kScanThreads>;
    __shared__ typename Scan::TempStorage scan_storage;
    const int per_thread = (ml.buckets + kScanThreads - 1) / kScanThreads;
    const int first = static_cast<int>(threadIdx.x) * per_thread;
    const int last = min(ml.buckets, first + per_thread);
    unsigned mine = 0;
    for (int b = first; b < last; ++b) mine += ml.bucket_count[b];
    unsigned before = 0;
    Scan(scan_storage).ExclusiveSum(mine, before);
    for (int b = first; b < last; ++b) {
        ml.bucket_next[b] = before;
        before += ml.bucket_count[b];
    }
}

// ordered = entries in bucket order.
__global__ void bucket_scatter_kernel(MissList ml) {
    const unsigned long long m = *ml.count;
    for (unsigned long long i = blockIdx.x * static_cast<unsigned long long>(blockDim.x) + threadIdx.x; i < m;
         i += static_cast<unsigned long long>(gridDim.x) * blockDim.x) {
        const unsigned long long e = ml.entries[i];
        const unsigned at = atomicAdd(ml.bucket_next + (static_cast<int>(e >> 32) >> ml.shift), 1u);
        ml.ordered[at] = e;
    }
}

// The ordered misses, rows_per_step (a power of two <= 32) at a time per warp, warps in list order:
// host row -> output, then offered to the cache.
template <typename VecT>
__global__ void __launch_bounds__(kBlock, HPS_HIER_MIN_BLOCKS)
    host_read_kernel(Params p, MissList ml, int step_shift, float* __restrict__ out) {
    constexpr unsigned FULL = 0xffffffffu;
    __shared__ unsigned long long block_counts[kNumCounters];
    zero_block_counts(block_counts);

    const int lane = threadIdx.x & 31;
    const int V = p.vec;
    const long long m = static_cast<long long>(*ml.count);
    const long long steps = (m + (1LL << step_shift) - 1) >> step_shift;
    const VecT* host_v = reinterpret_cast<const VecT*>(p.host);
    VecT* out_v = reinterpret_cast<VecT*>(out);
    unsigned long long c_ins = 0, c_evict = 0;
    const long long first = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const long long stride = (static_cast<long long>(gridDim.x) * blockDim.x) >> 5;
    for (long long step = first; step < steps; step += stride) {
        const long long u = (step << step_shift) + lane;
        const bool mine = lane < (1 << step_shift) && u < m;
        const int cnt = static_cast<int>(min(static_cast<long long>(1 << step_shift), m - (step << step_shift)));
        const unsigned long long e = mine ? ml.ordered[u] : 0;
        const int row = static_cast<int>(e >> 32);
        const int position = static_cast<int>(static_cast<unsigned>(e));
        warp_scatter_rows<HPS_HIER_UNROLL, true, VecT>(
            cnt, V, p.vec_shift, lane, splat<VecT>(0.0f),
            [&](int k, int c) -> const VecT* {
                return host_v + static_cast<long long>(__shfl_sync(FULL, row, k)) * V + c;
            },
            [&](int k, int c, int) -> VecT* {
                return out_v + static_cast<long long>(__shfl_sync(FULL, position, k)) * V + c;
            });
        offer_rows<VecT>(p, mine, row, out_v + static_cast<long long>(position) * V, lane, c_ins, c_evict);
    }
    flush_admission_counts(block_counts, lane, p, c_ins, c_evict);
}

// How host_read_kernel walks the list: rows per warp step (a power of two <= 32) and blocks per SM.
struct HostReadShape {
    int rows_per_step = 8;
    int blocks_per_sm = 2;
};

// Enqueues the four kernels of one lookup of n keys (n < 2^32) on s. ml's bucket_count and count
// must be zero; the caller checks the launches.
template <typename KeyT, typename VecT, bool kIdentity>
void launch_hierarchical_typed(const Params& p, const MissList& ml, HostReadShape shape, const void* keys,
                               long long n, float* out, int sm_count, cudaStream_t s) {
    hier_probe_kernel<KeyT, VecT, kIdentity, MissList>
        <<<chunk_grid<32>(n, static_cast<long long>(sm_count) * kBlocksPerSm), kBlock, 0, s>>>(
            p, ml, static_cast<const KeyT*>(keys), n, out);
    bucket_scan_kernel<<<1, kScanThreads, 0, s>>>(ml);
    const long long scatter_blocks = std::min<long long>((n + kBlock - 1) / kBlock, static_cast<long long>(sm_count) * 8);
    bucket_scatter_kernel<<<static_cast<int>(scatter_blocks), kBlock, 0, s>>>(ml);
    int step_shift = 0;
    while ((2 << step_shift) <= std::min(shape.rows_per_step, 32)) ++step_shift;
    const long long steps = (n + (1LL << step_shift) - 1) >> step_shift;
    const long long read_blocks = std::min<long long>((steps + kBlock / 32 - 1) / (kBlock / 32),
                                                      static_cast<long long>(sm_count) * shape.blocks_per_sm);
    host_read_kernel<VecT><<<static_cast<int>(read_blocks), kBlock, 0, s>>>(p, ml, step_shift, out);
}

inline void launch_hierarchical(const Params& p, const MissList& ml, HostReadShape shape, bool identity, bool vec4,
                                int key_bits, const void* keys, long long n, float* out, int sm_count, cudaStream_t s) {
    dispatch_lookup(key_bits, vec4, identity, [&](auto key, auto vec, auto index) {
        launch_hierarchical_typed<decltype(key), decltype(vec), decltype(index)::value>(p, ml, shape, keys, n, out,
                                                                                        sm_count, s);
    });
}

}  // namespace kernels
}  // namespace hps
