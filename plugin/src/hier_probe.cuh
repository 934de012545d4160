// hier_probe.cuh: the first kernel of every hierarchical lookup (host_tier_kernels.cuh, and the
// copy-engine path of staged_kernels.cuh): hits served from the GPU cache, defaults for absent keys,
// misses handed to a sink that lists them for the path's own second half.
#pragma once

#include "lookup_kernels.cuh"

namespace hps {
namespace kernels {

// Reserves one place in a list for each lane with `mine`, one atomic per warp; returns the lane's
// place (meaningful only where mine is set). Called by the whole warp.
__device__ __forceinline__ unsigned long long warp_append(bool mine, unsigned long long* count, int lane) {
    constexpr unsigned FULL = 0xffffffffu;
    const unsigned m = __ballot_sync(FULL, mine);
    if (!m) return 0;
    const int leader = __ffs(m) - 1;
    unsigned long long base = 0;
    if (lane == leader) base = atomicAdd(count, static_cast<unsigned long long>(__popc(m)));
    base = __shfl_sync(FULL, base, leader);
    return base + __popc(m & ((1u << lane) - 1u));
}

// Lookup of n keys by a hierarchical table: key -> row (row_of); rows in the GPU cache copied out under
// the slot's sequence lock (a torn read becomes a miss), absent keys get the default value, host rows
// the default value for now, frequencies sampled; every miss goes to sink.record(miss, row, position,
// lane), called by the whole warp.
template <typename KeyT, typename VecT, bool kIdentity, typename Sink>
__global__ void __launch_bounds__(kBlock, HPS_HIER_MIN_BLOCKS)
    hier_probe_kernel(Params p, Sink sink, const KeyT* __restrict__ keys, long long n, float* __restrict__ out) {
    constexpr unsigned FULL = 0xffffffffu;
    __shared__ unsigned long long block_counts[kNumCounters];
    zero_block_counts(block_counts);

    const int lane = threadIdx.x & 31;
    const int V = p.vec;
    const WarpChunks w = warp_chunks<32>(n);
    const VecT dflt = splat<VecT>(p.default_value);
    const VecT* cache_v = reinterpret_cast<const VecT*>(p.cache);
    VecT* out_v = reinterpret_cast<VecT*>(out);
    unsigned long long c_cache = 0, c_host = 0, c_absent = 0;
    const unsigned epoch = ld_volatile(p.epoch);

    long long key_next = 0;
    load_chunk_key<32>(keys, n, w, w.first, lane, key_next);
    for (long long chunk = w.first; chunk < w.count; chunk += w.stride) {
        const long long i = (chunk << 5) + lane;
        const int cnt = static_cast<int>(min(32LL, n - (chunk << 5)));
        const long long key = key_next;
        load_chunk_key<32>(keys, n, w, chunk + w.stride, lane, key_next);
        const int row = lane < cnt ? row_of<kIdentity>(p, key) : -1;
        unsigned long long o1 = 0;
        int src = row_source(p, row, o1);
        __threadfence();  // owner word read (o1) before the vector reads
        // Host rows get the default value here and their vector from the miss path.
        warp_copy_rows<HPS_HIER_UNROLL, true, VecT>(
            cnt, V, p.vec_shift, lane, dflt,
            [&](int k, int c) -> const VecT* {
                const int s = __shfl_sync(FULL, src, k);
                return s >= 0 ? cache_v + static_cast<long long>(s) * V + c : nullptr;
            },
            out_v + (chunk << 5) * V);
        if (__any_sync(FULL, src >= 0)) {
            __threadfence();
            if (src >= 0 && ld_volatile(p.owner + src) != o1) src = -(row + 2);  // torn: served as a miss
        }
        if (row >= 0 && p.slots > 0) sample_frequency(p, row, i, epoch);
        if (src >= 0) ++c_cache;
        else if (src <= -2) ++c_host;
        else if (lane < cnt) ++c_absent;
        sink.record(src <= -2, row, i, lane);
    }

    flush_hier_counts(block_counts, lane, p, c_cache, c_host, c_absent);
}

}  // namespace kernels
}  // namespace hps
