// db_kernels.cuh: the GPU cache of database-tier tables (Redis Cluster / RocksDB below it).
//
// The table's keys are not known on the GPU (they live in the databases), so the cache is keyed
// by the key itself: set-associative, 32 ways per set (one warp compares a whole set with one
// coalesced 256-byte load); which keys stay is decided by frequency (db_admission.cuh). A lookup:
//   1. probe_kernel: one warp per key; counts the key in the frequency sketch; a hit copies the
//      cached vector to the output; a miss enters the batch's miss set (distinct keys, on the GPU,
//      so the host only ever handles each missed key once) and the miss list (output position,
//      miss-set slot);
//   2. the host copies the distinct missed keys out, fetches them from the tiers (in parallel per
//      partition / node) into pinned memory, and copies their vectors in with the copy engine;
//   3. fill_kernel scatters them to the output positions; the found ones are sorted by set (CUB
//      radix sort) and admit_kernel offers them, one warp per set (no two warps touch one set: no
//      locks).
// Lookups of one table are serialised on the host, so no kernel runs concurrently with admissions.
#pragma once

#include <climits>

#include <cuda_runtime.h>

#include "db_admission.cuh"
#include "hash_probe.cuh"

namespace hps {
namespace dbk {

constexpr int kWays = 32;
constexpr long long kFree = LLONG_MIN;  // empty way; a table key equal to it is never cached
constexpr long long kUnclaimed = -1;    // MissSet::index of the kFree key's slot before it is seen

// Counters of one lookup (device memory, zeroed before the probe).
enum DbCounter { kMisses = 0, kHits, kDistinct, kFoundPositions, kInserted, kEvicted, kNumDbCounters };

struct CacheView {
    long long* keys;      // sets * kWays
    float* vectors;       // sets * kWays * dim
    unsigned long long sets;
    int dim;
};

// The distinct missed keys of one lookup: open addressing on the key (kFree = empty slot), plus one
// extra slot (mask + 1) for the key equal to kFree itself. index[slot] = the key's position in the
// distinct-key list, written by the warp that inserted it (read only by later kernels).
struct MissSet {
    long long* keys;   // mask + 1 slots
    long long* index;  // mask + 2 slots
    unsigned long long mask;
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

// Counts one lookup of key in the sketch (sampled as db_admission.cuh says; conservative update).
__device__ __forceinline__ void count_lookup(const Sketch& s, long long key, long long position, unsigned epoch) {
    const unsigned f = estimate(s, key);
    if (!counts_lookup(f, sample_hash(position, epoch, key))) return;
    for (int r = 0; r < kSketchRows; ++r) {
        unsigned* c = s.counts + sketch_index(s, key, r);
        if (*reinterpret_cast<volatile unsigned*>(c) == f) atomicAdd(c, 1u);
    }
}

// Enters key into the miss set; returns its slot. The first warp to insert a key appends it to
// distinct[] (count: counters[kDistinct]).
__device__ __forceinline__ unsigned long long miss_slot_of(const MissSet& m, long long key, long long* distinct,
                                                           unsigned long long* counters) {
    if (key == kFree) {
        const unsigned long long slot = m.mask + 1;
        if (atomicCAS(reinterpret_cast<unsigned long long*>(m.index + slot), static_cast<unsigned long long>(kUnclaimed),
                      static_cast<unsigned long long>(-2LL)) == static_cast<unsigned long long>(kUnclaimed)) {
            const unsigned long long u = atomicAdd(counters + kDistinct, 1ULL);
            distinct[u] = key;
            m.index[slot] = static_cast<long long>(u);
        }
        return slot;
    }
    // A hash independent of set_of's: keys of one cache set must not share miss-set probes.
    unsigned long long h = kernels::mix64(static_cast<unsigned long long>(key) ^ 0x5bd1e9955bd1e995ULL) & m.mask;
    while (true) {
        const long long cur = *reinterpret_cast<volatile long long*>(m.keys + h);
        if (cur == key) return h;
        if (cur == kFree) {
            const unsigned long long prev = atomicCAS(reinterpret_cast<unsigned long long*>(m.keys + h),
                                                      static_cast<unsigned long long>(kFree),
                                                      static_cast<unsigned long long>(key));
            if (prev == static_cast<unsigned long long>(kFree)) {
                const unsigned long long u = atomicAdd(counters + kDistinct, 1ULL);
                distinct[u] = key;
                m.index[h] = static_cast<long long>(u);
                return h;
            }
            if (static_cast<long long>(prev) == key) return h;
        }
        h = (h + 1) & m.mask;
    }
}

template <typename KeyT>
__global__ void probe_kernel(CacheView c, Sketch sketch, MissSet m, const KeyT* __restrict__ keys, long long n,
                             bool key32, unsigned epoch, float* __restrict__ out, long long* miss_pos,
                             unsigned long long* miss_slot, long long* distinct, unsigned long long* counters) {
    const int lane = threadIdx.x & 31;
    const long long warp = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const long long warps = (static_cast<long long>(gridDim.x) * blockDim.x) >> 5;
    unsigned long long my_hits = 0;
    for (long long i = warp; i < n; i += warps) {
        const long long key = normalise(keys[i], key32);
        if (lane == 0) count_lookup(sketch, key, i, epoch);
        const long long base = static_cast<long long>(set_of(key, c.sets)) * kWays;
        const unsigned match = key == kFree ? 0u : __ballot_sync(0xffffffffu, c.keys[base + lane] == key);
        if (match) {
            const long long slot = base + __ffs(match) - 1;
            const float* src = c.vectors + slot * c.dim;
            float* dst = out + i * c.dim;
            for (int d = lane; d < c.dim; d += 32) dst[d] = src[d];
            if (lane == 0) ++my_hits;
        } else if (lane == 0) {
            const unsigned long long slot = miss_slot_of(m, key, distinct, counters);
            const unsigned long long at = atomicAdd(counters + kMisses, 1ULL);
            miss_pos[at] = i;
            miss_slot[at] = slot;
        }
    }
    if (lane == 0 && my_hits) atomicAdd(counters + kHits, my_hits);
}

// out[miss_pos[k]] = values[index[miss_slot[k]]] for every miss k (values: the fetched distinct
// keys' vectors, default-filled where no tier had the key); counts the positions found.
__global__ void fill_kernel(const float* __restrict__ values, const unsigned char* __restrict__ found,
                            const long long* __restrict__ index, const unsigned long long* __restrict__ miss_slot,
                            const long long* __restrict__ miss_pos, long long misses, int dim, float* __restrict__ out,
                            unsigned long long* counters) {
    const int lane = threadIdx.x & 31;
    const long long warp = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const long long warps = (static_cast<long long>(gridDim.x) * blockDim.x) >> 5;
    unsigned long long my_found = 0;
    for (long long k = warp; k < misses; k += warps) {
        const long long u = index[miss_slot[k]];
        const float* s = values + u * dim;
        float* d = out + miss_pos[k] * dim;
        for (int e = lane; e < dim; e += 32) d[e] = s[e];
        if (lane == 0) my_found += found[u];
    }
    if (lane == 0 && my_found) atomicAdd(counters + kFoundPositions, my_found);
}

// Sort input of the admission: each distinct key's set, or `sets` (sorted last, skipped) when no
// tier had it (defaults are not cached).
__global__ void candidates_kernel(const long long* __restrict__ distinct, const unsigned char* __restrict__ found,
                                  long long count, unsigned long long sets, unsigned* set_keys, unsigned* order) {
    for (long long u = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; u < count;
         u += static_cast<long long>(gridDim.x) * blockDim.x) {
        set_keys[u] = static_cast<unsigned>(found[u] ? set_of(distinct[u], sets) : sets);
        order[u] = static_cast<unsigned>(u);
    }
}

// One warp per run of candidates sharing a set (set_keys sorted; order: their distinct indices).
// Each candidate takes a free way, else replaces the way of the lowest frequency estimate if it is
// estimated more frequent itself (db_admission.cuh), else is not admitted.
__global__ void admit_kernel(CacheView c, Sketch sketch, const long long* __restrict__ distinct,
                             const float* __restrict__ values, const unsigned* __restrict__ set_keys,
                             const unsigned* __restrict__ order, long long count, unsigned long long* counters) {
    const int lane = threadIdx.x & 31;
    const long long warp = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const long long warps = (static_cast<long long>(gridDim.x) * blockDim.x) >> 5;
    unsigned long long my_inserted = 0, my_evicted = 0;
    for (long long j = warp; j < count; j += warps) {
        const unsigned set = set_keys[j];
        if (set >= c.sets || (j > 0 && set_keys[j - 1] == set)) continue;  // not a run's first
        const long long base = static_cast<long long>(set) * kWays;
        for (long long k = j; k < count && set_keys[k] == set; ++k) {
            const long long u = order[k];
            const long long key = distinct[u];
            if (key == kFree) continue;
            const long long mine = c.keys[base + lane];
            const unsigned free_ways = __ballot_sync(0xffffffffu, mine == kFree);
            int way;
            if (free_ways) {
                way = __ffs(free_ways) - 1;
            } else {
                // The way of the lowest estimate (ties: the lowest way).
                unsigned best = estimate(sketch, mine);
                int best_way = lane;
                for (int o = 16; o > 0; o >>= 1) {
                    const unsigned ob = __shfl_down_sync(0xffffffffu, best, o);
                    const int ow = __shfl_down_sync(0xffffffffu, best_way, o);
                    if (ob < best || (ob == best && ow < best_way)) best = ob, best_way = ow;
                }
                best = __shfl_sync(0xffffffffu, best, 0);
                way = __shfl_sync(0xffffffffu, best_way, 0);
                if (!admits(estimate(sketch, key), best)) continue;  // same decision on every lane
                if (lane == 0) ++my_evicted;
            }
            const long long slot = base + way;
            for (int d = lane; d < c.dim; d += 32) c.vectors[slot * c.dim + d] = values[u * c.dim + d];
            if (lane == 0) {
                c.keys[slot] = key;
                ++my_inserted;
            }
            __syncwarp();  // the way's new key visible to the whole warp before the next candidate
        }
    }
    if (lane == 0 && my_inserted) atomicAdd(counters + kInserted, my_inserted);
    if (lane == 0 && my_evicted) atomicAdd(counters + kEvicted, my_evicted);
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

// Fills n keys with kFree; with claim != nullptr also resets the miss set's extra slot.
__global__ void clear_kernel(long long* keys, unsigned long long n, long long* claim) {
    for (unsigned long long i = blockIdx.x * static_cast<unsigned long long>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<unsigned long long>(gridDim.x) * blockDim.x)
        keys[i] = kFree;
    if (claim && blockIdx.x == 0 && threadIdx.x == 0) *claim = kUnclaimed;
}

}  // namespace dbk
}  // namespace hps
