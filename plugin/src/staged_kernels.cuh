// staged_kernels.cuh: the copy-engine miss path of hierarchical tables (staged_lookup.hpp).
//
// hier_kernel (lookup_kernels.cuh) reads missed rows straight from mapped host memory, which this
// VM caps near 21 GB/s for random 512-byte rows; the copy engine moves contiguous host memory at
// about 55 GB/s. This path trades the zero-copy reads for a host round trip:
//   1. stage_probe_kernel: hits copied from the GPU cache (same sequence-locked reads as
//      hier_kernel; a torn read becomes a miss), frequencies sampled as hier_kernel samples them,
//      each miss appended to the miss list (output position, row), each distinct missed row once to
//      the row list (stage_index[row] = its place there);
//   2. the host gathers the listed rows from the host tier into pinned memory on its threads and
//      copies them in with the copy engine, piece by piece (gather of one piece overlaps the copy
//      of the previous one);
//   3. stage_fill_kernel scatters them to the output; stage_admit_kernel offers them to the cache
//      with hier_kernel's admission (offer_rows) and clears stage_index for the next lookup.
#pragma once

#include "lookup_kernels.cuh"

namespace hps {
namespace kernels {

struct StageLists {
    int* stage_index;            // per table row: its place in rows[] during a lookup, else -1
    int* rows;                   // distinct missed rows
    long long* miss_pos;         // per miss: output position
    int* miss_row;               // per miss: its row
    unsigned long long* counts;  // [0] misses, [1] distinct rows
};

template <typename KeyT, typename VecT>
__global__ void __launch_bounds__(kBlock, HPS_HIER_MIN_BLOCKS)
    stage_probe_kernel(Params p, StageLists st, const KeyT* __restrict__ keys, long long n, float* __restrict__ out) {
    constexpr unsigned FULL = 0xffffffffu;
    __shared__ unsigned long long block_counts[kNumCounters];
    zero_block_counts(block_counts);

    const int lane = threadIdx.x & 31;
    const int V = p.vec;
    const VecT dflt = splat<VecT>(p.default_value);
    const VecT* cache_v = reinterpret_cast<const VecT*>(p.cache);
    VecT* out_v = reinterpret_cast<VecT*>(out);
    unsigned long long c_cache = 0, c_host = 0, c_absent = 0;
    const unsigned epoch = ld_volatile(p.epoch);
    const long long first = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const long long stride = (static_cast<long long>(gridDim.x) * blockDim.x) >> 5;
    for (long long chunk = first; chunk < (n + 31) >> 5; chunk += stride) {
        const long long i = (chunk << 5) + lane;
        const int cnt = static_cast<int>(min(32LL, n - (chunk << 5)));
        const int row = lane < cnt ? probe(p.entries, p.mask, p.sentinel_row, static_cast<long long>(keys[i])) : -1;
        unsigned long long o1 = 0;
        int src = row_source(p, row, o1);
        __threadfence();  // owner word read (o1) before the vector reads
        const long long out_base = (chunk << 5) * V;
        // Host rows get the default value here and their vector in stage_fill_kernel.
        warp_copy_rows<HPS_HIER_UNROLL, true, VecT>(
            cnt, V, p.vec_shift, lane, dflt,
            [&](int k, int c) -> const VecT* {
                const int s = __shfl_sync(FULL, src, k);
                return s >= 0 ? cache_v + static_cast<long long>(s) * V + c : nullptr;
            },
            out_v + out_base);
        if (__any_sync(FULL, src >= 0)) {
            __threadfence();
            if (src >= 0 && ld_volatile(p.owner + src) != o1) src = -(row + 2);  // torn: served as a miss
        }
        if (row >= 0 && p.slots > 0) sample_frequency(p, row, i, epoch);
        if (src >= 0) ++c_cache;
        else if (src <= -2) ++c_host;
        else if (lane < cnt) ++c_absent;

        const bool host = src <= -2;
        if (host && atomicCAS(st.stage_index + row, -1, kPending) == -1) {
            const unsigned long long u = atomicAdd(st.counts + 1, 1ULL);
            st.rows[u] = row;
            st.stage_index[row] = static_cast<int>(u);
        }
        const unsigned hm = __ballot_sync(FULL, host);
        if (hm) {
            const int leader = __ffs(hm) - 1;
            unsigned long long base = 0;
            if (lane == leader) base = atomicAdd(st.counts, static_cast<unsigned long long>(__popc(hm)));
            base = __shfl_sync(FULL, base, leader);
            if (host) {
                const unsigned long long at = base + __popc(hm & ((1u << lane) - 1u));
                st.miss_pos[at] = i;
                st.miss_row[at] = row;
            }
        }
    }

    flush_hier_counts<kNotFound>(block_counts, lane, p, c_cache, c_host, c_absent);
}

// out[miss_pos[m]] = staging[stage_index[miss_row[m]]], one warp per miss.
template <typename VecT>
__global__ void stage_fill_kernel(int V, StageLists st, const VecT* __restrict__ staging, long long misses,
                                  float* __restrict__ out) {
    const int lane = threadIdx.x & 31;
    VecT* out_v = reinterpret_cast<VecT*>(out);
    const long long warps = (static_cast<long long>(gridDim.x) * blockDim.x) >> 5;
    for (long long m = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; m < misses; m += warps) {
        const long long u = st.stage_index[st.miss_row[m]];
        const VecT* s = staging + u * V;
        VecT* d = out_v + st.miss_pos[m] * V;
        for (int c = lane; c < V; c += 32) __stcs(d + c, __ldg(s + c));
    }
}

// Offers the distinct rows (32 per warp, lane k: rows[32w + k]) to the cache and clears their
// stage_index entries.
template <typename VecT>
__global__ void stage_admit_kernel(Params p, StageLists st, const VecT* __restrict__ staging, long long count) {
    __shared__ unsigned long long block_counts[kNumCounters];
    zero_block_counts(block_counts);
    const int lane = threadIdx.x & 31;
    unsigned long long c_ins = 0, c_evict = 0;
    const long long stride = (static_cast<long long>(gridDim.x) * blockDim.x) >> 5;
    for (long long w = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; w < (count + 31) >> 5;
         w += stride) {
        const long long u = (w << 5) + lane;
        const bool mine = u < count;
        const int row = mine ? st.rows[u] : -1;
        offer_rows<VecT>(p, mine, row, staging + (w << 5) * p.vec, lane, c_ins, c_evict);
        if (mine) st.stage_index[row] = -1;
    }
    const unsigned long long w_ins = warp_sum(c_ins), w_evict = warp_sum(c_evict);
    if (lane == 0) {
        atomicAdd(&block_counts[kInsertions], w_ins);
        atomicAdd(&block_counts[kEvictions], w_evict);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        if (block_counts[kInsertions]) atomicAdd(&p.counters[kInsertions], block_counts[kInsertions]);
        if (block_counts[kEvictions]) atomicAdd(&p.counters[kEvictions], block_counts[kEvictions]);
    }
}

}  // namespace kernels
}  // namespace hps
