// db_admission.cuh: admission policy of the database-tier GPU cache (db_kernels.cuh), the same
// policy as the host-memory tier's (lookup_kernels.cuh: sampled-frequency LFU admission), adapted to
// a cache that has no row numbers:
//   - frequencies: the host-memory tier counts per row; here rows are unknown (the keys live in
//     Redis / RocksDB), so lookups count into a count-min sketch keyed by the key (kSketchRows rows
//     of counters, conservative update: only the rows holding the minimum are incremented). Counting
//     is sampled exactly as there: every lookup while the estimate is below kExactCountBelow, then
//     one in kSampleMask + 1; counts saturate at kFreqCap and never age;
//   - admission: the host-memory tier examines kProbes slots at a clock hand; this cache is
//     set-associative, so the candidate examines the 32 ways of its set (one warp, one load): it takes
//     a free way, else evicts the way whose key has the lowest estimate if the candidate's own
//     estimate is higher, else it is not admitted.
// Without admission control (what this cache did first: insert every miss, evict the least recently
// used way), a batch with more distinct misses than slots flushed the hot keys every time.
// The functions are __host__ __device__ so the host-only test (plugin/tests/test_db_admission.cu)
// runs this policy on CPU-only CI and checks its hit rate against the static top-k optimum.
#pragma once

#include "hash_probe.cuh"
#include "lookup_kernels.cuh"

namespace hps {
namespace dbk {

constexpr int kSketchRows = 2;
// Counters per sketch row per cache slot (rounded up to a power of two): collisions then add well
// under one count to a key's estimate at the hit rates measured (test_db_admission.cu).
constexpr int kSketchWidthPerSlot = 8;

struct Sketch {
    unsigned* counts;          // kSketchRows x (mask + 1)
    unsigned long long mask;   // width - 1, width a power of two
};

__host__ __device__ __forceinline__ unsigned long long sketch_index(const Sketch& s, long long key, int r) {
    // Independent hashes per row: the key mixed with a per-row odd constant, then mixed again.
    const unsigned long long h = kernels::mix64(static_cast<unsigned long long>(key) ^
                                                (0x9e3779b97f4a7c15ULL * static_cast<unsigned long long>(r + 1)));
    return static_cast<unsigned long long>(r) * (s.mask + 1) + (h & s.mask);
}

__host__ __device__ __forceinline__ unsigned estimate(const Sketch& s, long long key) {
    unsigned f = s.counts[sketch_index(s, key, 0)];
    for (int r = 1; r < kSketchRows; ++r) {
        const unsigned c = s.counts[sketch_index(s, key, r)];
        f = c < f ? c : f;
    }
    return f;
}

// Whether this lookup of a key whose estimate is f is counted; sample_hash: any hash of the lookup
// (position, batch, key) that varies between lookups of the same key.
__host__ __device__ __forceinline__ bool counts_lookup(unsigned f, unsigned long long sample_hash) {
    if (f < kernels::kExactCountBelow) return true;
    return (sample_hash & kernels::kSampleMask) == 0 && f < kernels::kFreqCap;
}

__host__ __device__ __forceinline__ unsigned long long sample_hash(long long position, unsigned epoch, long long key) {
    return kernels::mix64(static_cast<unsigned long long>(position) ^ (static_cast<unsigned long long>(epoch) << 40) ^
                          (static_cast<unsigned long long>(key) << 1));
}

// A candidate seen f_candidate times replaces a way seen f_victim times only when strictly more
// frequent (as in lookup_kernels.cuh: ties keep the resident key, so equal keys do not churn).
__host__ __device__ __forceinline__ bool admits(unsigned f_candidate, unsigned f_victim) {
    return f_candidate > f_victim;
}

// Sketch width for a cache of `slots` slots: a power of two >= kSketchWidthPerSlot x slots.
inline unsigned long long sketch_width(long long slots) {
    unsigned long long w = 1024;
    while (w < static_cast<unsigned long long>(slots) * kSketchWidthPerSlot) w <<= 1;
    return w;
}

}  // namespace dbk
}  // namespace hps
