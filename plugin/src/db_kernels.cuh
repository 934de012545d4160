// db_kernels.cuh: the GPU cache of database-tier tables (Redis Cluster / RocksDB below it).
//
// The table's keys are not known on the GPU (they live in the databases), so the cache is keyed
// by the key itself: set-associative, 32 ways per set (one warp compares a whole set with one
// coalesced 256-byte load), LRU within a set by a per-slot stamp. A lookup is:
//   1. probe_kernel: one warp per key; a hit copies the cached vector to the output and stamps
//      the slot; a miss appends (key, output position) to the miss list;
//   2. the host reads the miss list, fetches the distinct missed keys from the tiers (parallel per
//      partition / node), and copies their vectors in with the copy engine;
//   3. fill_kernel scatters them to the output positions; admit_kernel inserts them, one warp per
//      set (the host groups the keys by set, so no two warps touch one set: no locks).
// Lookups of one table are serialised on the host, so no kernel runs concurrently with admissions.
#pragma once

#include <climits>

#include <cuda_runtime.h>

#include "hash_probe.cuh"

namespace hps {
namespace dbk {

constexpr int kWays = 32;
constexpr long long kFree = LLONG_MIN;  // empty way; a table key equal to it is never cached

struct CacheView {
    long long* keys;      // sets * kWays
    float* vectors;       // sets * kWays * dim
    unsigned* stamps;     // sets * kWays: last use (epoch)
    unsigned long long sets;
    int dim;
};

__host__ __device__ __forceinline__ unsigned long long set_of(long long key, unsigned long long sets) {
    return kernels::mix64(static_cast<unsigned long long>(key)) % sets;
}

// 32-bit key configs store keys as unsigned int (HugeCTR); the cache uses the same value.
template <typename KeyT>
__device__ __forceinline__ long long normalise(KeyT k, bool key32) {
    const long long v = static_cast<long long>(k);
    return key32 ? static_cast<long long>(static_cast<unsigned>(v)) : v;
}

template <typename KeyT>
__global__ void probe_kernel(CacheView c, const KeyT* __restrict__ keys, long long n, bool key32, unsigned epoch,
                             float* __restrict__ out, long long* miss_keys, long long* miss_pos,
                             unsigned long long* miss_count, unsigned long long* hits) {
    const int lane = threadIdx.x & 31;
    const long long warp = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const long long warps = (static_cast<long long>(gridDim.x) * blockDim.x) >> 5;
    unsigned long long my_hits = 0;
    for (long long i = warp; i < n; i += warps) {
        const long long key = normalise(keys[i], key32);
        const unsigned long long set = set_of(key, c.sets);
        const long long base = static_cast<long long>(set) * kWays;
        const unsigned match = key == kFree ? 0u : __ballot_sync(0xffffffffu, c.keys[base + lane] == key);
        if (match) {
            const long long slot = base + __ffs(match) - 1;
            const float* src = c.vectors + slot * c.dim;
            float* dst = out + i * c.dim;
            for (int d = lane; d < c.dim; d += 32) dst[d] = src[d];
            if (lane == 0) {
                c.stamps[slot] = epoch;
                ++my_hits;
            }
        } else if (lane == 0) {
            const unsigned long long at = atomicAdd(miss_count, 1ULL);
            miss_keys[at] = key;
            miss_pos[at] = i;
        }
    }
    if (lane == 0 && my_hits) atomicAdd(hits, my_hits);
}

// out[pos[m]] = values[src[m]] for every miss m (values: the fetched distinct keys' vectors).
__global__ void fill_kernel(const float* __restrict__ values, const long long* __restrict__ src,
                            const long long* __restrict__ pos, long long misses, int dim, float* __restrict__ out) {
    const int lane = threadIdx.x & 31;
    const long long warp = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const long long warps = (static_cast<long long>(gridDim.x) * blockDim.x) >> 5;
    for (long long m = warp; m < misses; m += warps) {
        const float* s = values + src[m] * dim;
        float* d = out + pos[m] * dim;
        for (int k = lane; k < dim; k += 32) d[k] = s[k];
    }
}

// One warp per segment order[begin[g] .. begin[g + 1]) of fetched keys that share a set (order
// indexes keys / values): each key takes a free way, else the least recently used one.
__global__ void admit_kernel(CacheView c, const long long* __restrict__ keys, const float* __restrict__ values,
                             const long long* __restrict__ order, const long long* __restrict__ begin, long long groups,
                             unsigned epoch, unsigned long long* evicted) {
    const int lane = threadIdx.x & 31;
    const long long warp = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const long long warps = (static_cast<long long>(gridDim.x) * blockDim.x) >> 5;
    unsigned long long my_evicted = 0;
    for (long long g = warp; g < groups; g += warps) {
        for (long long j = begin[g]; j < begin[g + 1]; ++j) {
            const long long u = order[j];
            const long long key = keys[u];
            if (key == kFree) continue;
            const long long base = static_cast<long long>(set_of(key, c.sets)) * kWays;
            const long long mine = c.keys[base + lane];
            // Victim: a free way, else the smallest stamp (ties: lowest way).
            const unsigned free_ways = __ballot_sync(0xffffffffu, mine == kFree);
            int way;
            if (free_ways) {
                way = __ffs(free_ways) - 1;
            } else {
                unsigned best = c.stamps[base + lane];
                int best_way = lane;
                for (int o = 16; o > 0; o >>= 1) {
                    const unsigned ob = __shfl_down_sync(0xffffffffu, best, o);
                    const int ow = __shfl_down_sync(0xffffffffu, best_way, o);
                    if (ob < best || (ob == best && ow < best_way)) best = ob, best_way = ow;
                }
                way = __shfl_sync(0xffffffffu, best_way, 0);
                if (lane == 0) ++my_evicted;
            }
            const long long slot = base + way;
            for (int d = lane; d < c.dim; d += 32) c.vectors[slot * c.dim + d] = values[u * c.dim + d];
            if (lane == 0) {
                c.keys[slot] = key;
                c.stamps[slot] = epoch;
            }
            __syncwarp();
        }
    }
    if (lane == 0 && my_evicted) atomicAdd(evicted, my_evicted);
}

// Overwrites the vectors of slots whose key is still `keys[i]` (refresh after online updates).
__global__ void refresh_kernel(CacheView c, const long long* __restrict__ slots, const long long* __restrict__ keys,
                               const float* __restrict__ values, long long n) {
    const int lane = threadIdx.x & 31;
    const long long warp = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const long long warps = (static_cast<long long>(gridDim.x) * blockDim.x) >> 5;
    for (long long i = warp; i < n; i += warps) {
        if (c.keys[slots[i]] != keys[i]) continue;
        for (int d = lane; d < c.dim; d += 32) c.vectors[slots[i] * c.dim + d] = values[i * c.dim + d];
    }
}

__global__ void clear_kernel(long long* keys, unsigned* stamps, unsigned long long n) {
    for (unsigned long long i = blockIdx.x * static_cast<unsigned long long>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<unsigned long long>(gridDim.x) * blockDim.x) {
        keys[i] = kFree;
        stamps[i] = 0;
    }
}

}  // namespace dbk
}  // namespace hps
