// staged_kernels.cuh: the copy-engine miss path of hierarchical tables (staged_lookup.hpp).
//
// The default path (host_tier_kernels.cuh) reads missed rows from mapped host memory in address
// order; this one moves them with the copy engine instead, at the price of a host round trip:
//   1. hier_probe_kernel (hier_probe.cuh) with StageLists as its miss sink: each miss appended
//      to the miss list (output position, row), each distinct missed row once to the row list
//      (stage_index[row] = its place there);
//   2. the host gathers the listed rows from the host tier into pinned memory on its threads and
//      copies them in with the copy engine, piece by piece (gather of one piece overlaps the copy
//      of the previous one);
//   3. stage_fill_kernel scatters them to the output; stage_admit_kernel offers them to the cache
//      with the same admission (offer_rows) and clears stage_index for the next lookup.
#pragma once

#include "hier_probe.cuh"

namespace hps {
namespace kernels {

struct StageLists {
    int* stage_index;            // per table row: its place in rows[] during a lookup, else -1
    int* rows;                   // distinct missed rows
    long long* miss_pos;         // per miss: output position
    int* miss_row;               // per miss: its row
    unsigned long long* counts;  // [0] misses, [1] distinct rows

    // The miss sink of hier_probe_kernel; called by the whole warp.
    __device__ __forceinline__ void record(bool miss, int row, long long position, int lane) const {
        if (miss && atomicCAS(stage_index + row, -1, kPending) == -1) {
            const unsigned long long u = atomicAdd(counts + 1, 1ULL);
            rows[u] = row;
            stage_index[row] = static_cast<int>(u);
        }
        const unsigned long long at = warp_append(miss, counts, lane);
        if (miss) {
            miss_pos[at] = position;
            miss_row[at] = row;
        }
    }
};

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
        offer_rows<VecT>(p, mine, row, staging + u * p.vec, lane, c_ins, c_evict);
        if (mine) st.stage_index[row] = -1;
    }
    flush_admission_counts(block_counts, lane, p, c_ins, c_evict);
}

}  // namespace kernels
}  // namespace hps
