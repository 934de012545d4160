// lookup_kernels.cuh: the resident lookup kernels and their launch, and what every lookup kernel
// shares (parameters, the row copy loop, the cache's admission policy, counters).
//
// Lookup: one warp handles 32 keys at a time. Each lane finds one key's row (identity tables: the key
// itself after a bounds check; others: one 16-byte probe of the hash index, the entry {key,row} sits
// in one 32-byte sector), then the warp copies the 32 vectors as a flat run of 16-byte elements:
// consecutive lanes read consecutive 16 bytes of a row and write consecutive 16 bytes of the output,
// eight loads in flight per lane before the stores, which is what keeps a random row gather close to
// device-to-device copy bandwidth.
//
// Hierarchical tables (gpucacheper < 1, host_tier_kernels.cuh): a key whose row is not cached is
// read from the mapped pinned host tier, in host-address order, then offered to the cache:
//   eviction policy = sampled-frequency LFU admission over a clock hand (TinyLFU-like):
//   - every lookup of a found key counts towards freq[row]: exactly while the count is below 32 (the
//     rows competing for the last cache slots are rare, so their counts must not be sampled away),
//     then with probability 1/8 (keeps same-address atomics on Zipf's hottest keys affordable);
//   - a missed row claims its row_slot entry (CAS -1 -> -2, so each row is inserted once however
//     often it repeats in the batch or across streams), then examines kProbes slots at the clock
//     hand; it takes an empty slot, or evicts the first occupant seen less often than itself;
//     otherwise it is not admitted. Counts are cumulative (saturating at 2^30): the cache converges
//     to the most frequent rows of a stationary distribution, and adapts slowly to drift.
//   - the slot's owner word (generation << 32 | row) is a sequence lock: the writer CASes it to
//     LOCKED, fences, copies the vector, fences, publishes (row, generation + 1). A reader loads it
//     before and after reading the vector; if it changed, the key is served as a miss (from the
//     host tier). So lookups on other streams running concurrently always return exact vectors.
#pragma once

#include <algorithm>
#include <type_traits>

#include <cuda_runtime.h>

#include "hash_probe.cuh"

namespace hps {
namespace kernels {

constexpr int kLockedRow = -2;              // owner row while a slot is being written
constexpr int kPending = -2;                // row_slot while a row is being inserted
constexpr int kProbes = 2;                  // clock-hand slots examined per admission attempt
constexpr unsigned kExactCountBelow = 32;   // rows seen fewer times are counted exactly
constexpr unsigned kSampleMask = 7;         // above that, 1 lookup in 8 is counted
constexpr unsigned kFreqCap = 1u << 30;
constexpr int kBlock = 256;
// Tuning knobs (compile-time; bench/LOOKUP_RESULTS.md records the variants measured on H100).
#ifndef HPS_UNROLL
#define HPS_UNROLL 8  // 16-byte loads in flight per lane before the stores
#endif
#ifndef HPS_MIN_BLOCKS
#define HPS_MIN_BLOCKS 1  // __launch_bounds__ min blocks per SM (caps registers)
#endif
#ifndef HPS_HIER_UNROLL
#define HPS_HIER_UNROLL 8
#endif
#ifndef HPS_BLOCKS_PER_SM
#define HPS_BLOCKS_PER_SM 16  // grid = SMs x this (capped by the work)
#endif
constexpr int kBlocksPerSm = HPS_BLOCKS_PER_SM;
#ifndef HPS_STREAM_STORES
#define HPS_STREAM_STORES 1
#endif
#ifndef HPS_HIER_MIN_BLOCKS
#define HPS_HIER_MIN_BLOCKS 1
#endif

enum Counter { kLookups = 0, kCacheHits, kHostHits, kNotFound, kInsertions, kEvictions, kNumCounters };

struct Params {
    const Entry* entries;  // hash index (null for identity tables)
    unsigned long long mask;
    int sentinel_row;  // row of key == kEmptyKey, or -1
    long long rows;    // table rows (the identity index's bound)
    int dim;           // floats per row
    int vec;           // VecT elements per row
    int vec_shift;     // log2(vec) when vec is a power of two, else -1
    float default_value;
    float* cache;
    const float* host;  // device-visible address of the mapped host tier (hierarchical)
    int* row_slot;
    unsigned long long* owner;
    unsigned* freq;
    unsigned long long* hand;
    long long slots;
    unsigned long long* counters;
    unsigned* epoch;
};

template <typename T>
__device__ __forceinline__ T ld_volatile(const T* p) {
    return *reinterpret_cast<const volatile T*>(p);
}

template <typename VecT>
__device__ __forceinline__ VecT splat(float v);
template <>
__device__ __forceinline__ float4 splat<float4>(float v) { return make_float4(v, v, v, v); }
template <>
__device__ __forceinline__ float splat<float>(float v) { return v; }

// Row of key (-1: not in the table). Identity tables (key r is row r, what every rewrite exports)
// need no index: a bounds check is the whole lookup; other tables probe the hash index.
template <bool kIdentity>
__device__ __forceinline__ int row_of(const Params& p, long long key) {
    if constexpr (kIdentity)
        return static_cast<unsigned long long>(key) < static_cast<unsigned long long>(p.rows) ? static_cast<int>(key) : -1;
    else
        return probe(p.entries, p.mask, p.sentinel_row, key);
}

// Frequency sample of one lookup of a found row (see the policy at the top of the file); i: the
// lookup's position in the batch.
__device__ __forceinline__ void sample_frequency(const Params& p, int row, long long i, unsigned epoch) {
    const unsigned f = ld_volatile(p.freq + row);
    bool count = f < kExactCountBelow;
    if (!count) {
        const unsigned long long h = mix64(static_cast<unsigned long long>(i) ^
                                           (static_cast<unsigned long long>(epoch) << 40) ^
                                           (static_cast<unsigned long long>(row) << 1));
        count = (h & kSampleMask) == 0 && f < kFreqCap;
    }
    if (count) atomicAdd(p.freq + row, 1u);
}

// Where a lookup of `row` (-1: absent key) is served from: src >= 0, the cache slot holding it
// (o1: the slot's owner word as read, to be compared again after the copy: a sequence lock);
// -1, the default value; <= -2, host row -(src + 2).
__device__ __forceinline__ int row_source(const Params& p, int row, unsigned long long& o1) {
    int src = row >= 0 ? -(row + 2) : -1;
    if (row >= 0 && p.slots > 0) {
        const int s = ld_volatile(p.row_slot + row);
        if (s >= 0) {
            o1 = ld_volatile(p.owner + s);
            if (static_cast<int>(static_cast<unsigned>(o1)) == row) src = s;
        }
    }
    return src;
}

// Admission (see the policy at the top of the file), called by a whole warp: each lane with
// `offer` set offers `row` to the cache; its vector is at `vector` (the output row it was just
// copied to, or a staging buffer), written by this warp.
template <typename VecT>
__device__ __forceinline__ void offer_rows(const Params& p, bool offer, int row, const VecT* vector, int lane,
                                           unsigned long long& c_ins, unsigned long long& c_evict) {
    constexpr unsigned FULL = 0xffffffffu;
    const int V = p.vec;
    bool want = offer && p.slots > 0;
    if (want) want = ld_volatile(p.row_slot + row) == -1 && atomicCAS(p.row_slot + row, -1, kPending) == -1;
    const unsigned wm = __ballot_sync(FULL, want);
    if (!wm) return;
    const int leader = __ffs(wm) - 1;
    unsigned long long base = 0;
    if (lane == leader) base = atomicAdd(p.hand, static_cast<unsigned long long>(__popc(wm)) * kProbes);
    base = __shfl_sync(FULL, base, leader);
    long long slot = -1;
    unsigned long long gen = 0;
    if (want) {
        const unsigned rank = __popc(wm & ((1u << lane) - 1u));
        const unsigned f = ld_volatile(p.freq + row);
        for (int t = 0; t < kProbes && slot < 0; ++t) {
            const long long c =
                static_cast<long long>((base + rank * kProbes + t) % static_cast<unsigned long long>(p.slots));
            const unsigned long long o = ld_volatile(p.owner + c);
            const int orow = static_cast<int>(static_cast<unsigned>(o));
            if (orow == kLockedRow) continue;
            if (orow >= 0 && !(f > ld_volatile(p.freq + orow))) continue;
            const unsigned long long locked = (o & 0xffffffff00000000ULL) | static_cast<unsigned>(kLockedRow);
            if (atomicCAS(p.owner + c, o, locked) == o) {
                slot = c;
                gen = o >> 32;
                if (orow >= 0) {
                    // Readers that still map orow to this slot fail the owner check.
                    atomicCAS(p.row_slot + orow, static_cast<int>(c), -1);
                    ++c_evict;
                }
            }
        }
        if (slot < 0) atomicExch(p.row_slot + row, -1);
    }
    unsigned cm = __ballot_sync(FULL, slot >= 0);
    if (!cm) return;
    __threadfence();  // locks visible before the vector bytes change
    __syncwarp();     // this warp's stores of the vectors visible to the copying lanes
    VecT* cache_w = reinterpret_cast<VecT*>(p.cache);
    while (cm) {
        const int k = __ffs(cm) - 1;
        cm &= cm - 1;
        const long long sl = __shfl_sync(FULL, slot, k);
        const VecT* from = reinterpret_cast<const VecT*>(
            __shfl_sync(FULL, reinterpret_cast<unsigned long long>(vector), k));
        for (int c = lane; c < V; c += 32) __stcg(cache_w + sl * V + c, __ldcg(from + c));
    }
    __threadfence();  // vector bytes visible before the slot is published
    if (slot >= 0) {
        atomicExch(p.owner + slot, ((gen + 1ULL) << 32) | static_cast<unsigned>(row));
        atomicExch(p.row_slot + row, static_cast<int>(slot));
        ++c_ins;
    }
}

// Block-wide sums of the per-lookup counters, flushed to the table's counters once per block.
__device__ __forceinline__ void zero_block_counts(unsigned long long* block_counts) {
    if (threadIdx.x < kNumCounters) block_counts[threadIdx.x] = 0;
    __syncthreads();
}

// A warp's walk over the batch in chunks of kChunk keys (chunk c = keys [c kChunk, (c + 1) kChunk)):
// it starts at its global warp index and strides by the number of warps in the grid. Lane i < kChunk
// holds key i of the chunk. 32 keys per warp for throughput; fewer spread a small batch over more
// warps, which is what its latency needs (launch_resident_typed chooses).
struct WarpChunks {
    long long first, stride, count;
};
__host__ __device__ constexpr int log2_of(int pow2) { return pow2 > 1 ? 1 + log2_of(pow2 >> 1) : 0; }
template <int kChunk>
__device__ __forceinline__ WarpChunks warp_chunks(long long n) {
    static_assert(kChunk >= 1 && kChunk <= 32 && (kChunk & (kChunk - 1)) == 0, "kChunk: a power of two <= 32");
    constexpr int kShift = log2_of(kChunk);
    return {(static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5,
            (static_cast<long long>(gridDim.x) * blockDim.x) >> 5, (n + kChunk - 1) >> kShift};
}

// Loads this lane's key of `chunk` into key, if the chunk has one for this lane. Each chunk's keys
// are loaded one chunk ahead, so the load's latency hides behind the previous chunk's gather.
template <int kChunk, typename KeyT>
__device__ __forceinline__ void load_chunk_key(const KeyT* __restrict__ keys, long long n, const WarpChunks& w,
                                               long long chunk, int lane, long long& key) {
    constexpr int kShift = log2_of(kChunk);
    if (chunk < w.count && (kChunk == 32 || lane < kChunk) && (chunk << kShift) + lane < n)
        key = static_cast<long long>(keys[(chunk << kShift) + lane]);
}

__device__ __forceinline__ unsigned long long warp_sum(unsigned long long v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

// A resident lookup's counts (found, not found) of this lane -> the block -> the table's counters,
// one global atomic per counter and block. Every thread of the block must call it.
__device__ __forceinline__ void flush_resident_counts(unsigned long long* block_counts, unsigned long long c_cache,
                                                      unsigned long long c_absent, int lane,
                                                      unsigned long long* counters) {
    const unsigned long long w_cache = warp_sum(c_cache), w_absent = warp_sum(c_absent);
    if (lane == 0) {
        atomicAdd(&block_counts[kCacheHits], w_cache);
        atomicAdd(&block_counts[kNotFound], w_absent);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        atomicAdd(&counters[kLookups], block_counts[kCacheHits] + block_counts[kNotFound]);
        if (block_counts[kCacheHits]) atomicAdd(&counters[kCacheHits], block_counts[kCacheHits]);
        if (block_counts[kNotFound]) atomicAdd(&counters[kNotFound], block_counts[kNotFound]);
    }
}

// A hierarchical lookup's counts of this lane (cache hits, host hits, not found) -> the block -> the
// table's counters, one global atomic per counter and block; the first block advances the epoch.
// Every thread of the block must call it.
__device__ __forceinline__ void flush_hier_counts(unsigned long long* block_counts, int lane, const Params& p,
                                                  unsigned long long c_cache, unsigned long long c_host,
                                                  unsigned long long c_absent) {
    const unsigned long long w_cache = warp_sum(c_cache), w_host = warp_sum(c_host), w_absent = warp_sum(c_absent);
    if (lane == 0) {
        atomicAdd(&block_counts[kCacheHits], w_cache);
        atomicAdd(&block_counts[kHostHits], w_host);
        atomicAdd(&block_counts[kNotFound], w_absent);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned long long total = block_counts[kCacheHits] + block_counts[kHostHits] + block_counts[kNotFound];
        atomicAdd(&p.counters[kLookups], total);
        for (int c = kCacheHits; c <= kNotFound; ++c)
            if (block_counts[c]) atomicAdd(&p.counters[c], block_counts[c]);
        if (blockIdx.x == 0) atomicAdd(p.epoch, 1u);
    }
}

// An admission's counts (insertions, evictions) of this lane -> the block -> the table's counters,
// one global atomic per counter and block. Every thread of the block must call it.
__device__ __forceinline__ void flush_admission_counts(unsigned long long* block_counts, int lane, const Params& p,
                                                       unsigned long long c_ins, unsigned long long c_evict) {
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

// Copies a warp's run of cnt rows, element e of the run (row k = e / V, component c = e % V) from
// src(k, c) (null: the default value) to dst(k, c, e); kU 16-byte loads in flight per lane before the
// stores. The element arithmetic is plain on purpose: at ~3 TB/s the kernel is close to
// instruction-issue bound, and per-element address arithmetic showed up in the timings.
template <int kU, bool kL2Only, typename VecT, typename SrcFn, typename DstFn>
__device__ __forceinline__ void warp_scatter_rows(int cnt, int V, int vec_shift, int lane, VecT dflt, SrcFn src,
                                                  DstFn dst) {
    const int E = cnt * V;
    for (int e0 = 0; e0 < E; e0 += 32 * kU) {
        VecT v[kU];
#pragma unroll
        for (int u = 0; u < kU; ++u) {
            const int e = e0 + u * 32 + lane;
            int k = vec_shift >= 0 ? (e >> vec_shift) : (e / V);
            k = min(k, 31);  // lanes past E still take part in the shuffles inside src()
            const VecT* s = src(k, e - k * V);
            // kL2Only: the row may be rewritten by another SM (hierarchical cache); L1 is not
            // coherent, so read through L2 only. Otherwise the read-only path.
            if (e < E) v[u] = s ? (kL2Only ? __ldcg(s) : __ldg(s)) : dflt;
        }
#pragma unroll
        for (int u = 0; u < kU; ++u) {
            const int e = e0 + u * 32 + lane;
            int k = vec_shift >= 0 ? (e >> vec_shift) : (e / V);
            k = min(k, 31);  // as above: dst() may shuffle too
            VecT* d = dst(k, e - k * V, e);
            if (e < E) {
                if (HPS_STREAM_STORES) __stcs(d, v[u]);  // evict-first: keep L2 for hot rows and the index
                else *d = v[u];
            }
        }
    }
}

// warp_scatter_rows into the contiguous run dst[0, cnt * V).
template <int kU, bool kL2Only, typename VecT, typename SrcFn>
__device__ __forceinline__ void warp_copy_rows(int cnt, int V, int vec_shift, int lane, VecT dflt, SrcFn src,
                                               VecT* dst) {
    warp_scatter_rows<kU, kL2Only, VecT>(cnt, V, vec_shift, lane, dflt, src, [dst](int, int, int e) { return dst + e; });
}

// Resident tables: slot == row and the cache is never written after load (read-only loads).
// kIdentity: row = key (row_of); kChunk keys per warp and chunk, kUnroll loads in flight per lane,
// kMinBlocks per SM (a register cap).
template <typename KeyT, typename VecT, bool kIdentity, int kChunk = 32, int kUnroll = HPS_UNROLL,
          int kMinBlocks = HPS_MIN_BLOCKS>
__global__ void __launch_bounds__(kBlock, kMinBlocks)
    resident_kernel(Params p, const KeyT* __restrict__ keys, long long n, float* __restrict__ out) {
    constexpr int kShift = log2_of(kChunk);
    constexpr unsigned FULL = 0xffffffffu;
    __shared__ unsigned long long block_counts[kNumCounters];
    zero_block_counts(block_counts);

    const int lane = threadIdx.x & 31;
    const int V = p.vec;
    const WarpChunks w = warp_chunks<kChunk>(n);
    const VecT dflt = splat<VecT>(p.default_value);
    const VecT* cache_v = reinterpret_cast<const VecT*>(p.cache);
    VecT* out_v = reinterpret_cast<VecT*>(out);
    unsigned long long c_cache = 0, c_absent = 0;

    long long key_next = 0;
    load_chunk_key<kChunk>(keys, n, w, w.first, lane, key_next);
    for (long long chunk = w.first; chunk < w.count; chunk += w.stride) {
        const int cnt = static_cast<int>(min(static_cast<long long>(kChunk), n - (chunk << kShift)));
        const long long key = key_next;
        load_chunk_key<kChunk>(keys, n, w, chunk + w.stride, lane, key_next);
        const int row = lane < cnt ? row_of<kIdentity>(p, key) : -1;
        const long long out_base = (chunk << kShift) * V;
        warp_copy_rows<kUnroll, false, VecT>(
            cnt, V, p.vec_shift, lane, dflt,
            [&](int k, int c) -> const VecT* {
                const int r = __shfl_sync(FULL, row, k);
                return r >= 0 ? cache_v + static_cast<long long>(r) * V + c : nullptr;
            },
            out_v + out_base);
        if (row >= 0) ++c_cache;
        else if (lane < cnt) ++c_absent;
    }
    flush_resident_counts(block_counts, c_cache, c_absent, lane, p.counters);
}

// Params::vec_shift for a row of vec elements: log2(vec) when vec is a power of two, else -1.
inline int vec_shift_of(int vec) {
    for (int b = 0; b < 31; ++b)
        if ((1 << b) == vec) return b;
    return -1;
}

// Small resident batches (latency): 8 keys per warp under a 64-register cap (4 blocks, 32 warps
// per SM), used while the batch fits in one such wave: every SM gets work and each warp copies its
// rows in one round of loads, where 32-key chunks would leave SMs idle and take 4 rounds at dim 128
// (H200, 1024 x 26 keys at dim 128: 15.4 us against 17.8; bench/LOOKUP_RESULTS.md).
constexpr int kSmallChunk = 8;
constexpr int kSmallMinBlocks = 4;
constexpr long long kSmallKeysPerSm = static_cast<long long>(kSmallMinBlocks) * (kBlock / 32) * kSmallChunk;

// Blocks of kBlock threads for n keys in chunks of kChunk per warp, at most max_blocks (warps
// stride over the rest).
template <int kChunk>
int chunk_grid(long long n, long long max_blocks) {
    const long long chunks = (n + kChunk - 1) / kChunk;
    const long long want_blocks = (chunks + kBlock / 32 - 1) / (kBlock / 32);
    return static_cast<int>(std::max<long long>(1, std::min<long long>(want_blocks, max_blocks)));
}

template <typename KeyT, typename VecT, bool kIdentity>
void launch_resident_typed(const Params& p, const void* keys, long long n, float* out, int sm_count, cudaStream_t s) {
    const KeyT* k = static_cast<const KeyT*>(keys);
    if (n <= static_cast<long long>(sm_count) * kSmallKeysPerSm) {
        const int grid = chunk_grid<kSmallChunk>(n, static_cast<long long>(sm_count) * kSmallMinBlocks);
        resident_kernel<KeyT, VecT, kIdentity, kSmallChunk, HPS_UNROLL, kSmallMinBlocks><<<grid, kBlock, 0, s>>>(p, k, n, out);
        return;
    }
    // Several waves of blocks, warps striding over the rest (see LOOKUP_RESULTS.md for the grid
    // sizes measured).
    const int grid = chunk_grid<32>(n, static_cast<long long>(sm_count) * kBlocksPerSm);
    resident_kernel<KeyT, VecT, kIdentity><<<grid, kBlock, 0, s>>>(p, k, n, out);
}

// Calls f(KeyT{}, VecT{}, std::bool_constant<kIdentity>{}) for the runtime choices: int32 or int64
// keys (key_bits), 16-byte or 4-byte elements (vec4), identity or hashed index.
template <typename F>
void dispatch_lookup(int key_bits, bool vec4, bool identity, F&& f) {
    auto by_index = [&](auto key, auto vec) {
        if (identity) f(key, vec, std::true_type{});
        else f(key, vec, std::false_type{});
    };
    auto by_vec = [&](auto key) {
        if (vec4) by_index(key, float4{});
        else by_index(key, float{});
    };
    if (key_bits == 64) by_vec(0LL);
    else by_vec(0);
}

// One resident lookup of n keys (int32 or int64 by key_bits) into out; p.vec / p.vec_shift must
// match vec4 (16-byte elements when true). Enqueues one kernel on s; the caller checks the launch.
inline void launch_resident(const Params& p, bool identity, bool vec4, int key_bits, const void* keys, long long n,
                            float* out, int sm_count, cudaStream_t s) {
    dispatch_lookup(key_bits, vec4, identity, [&](auto key, auto vec, auto index) {
        launch_resident_typed<decltype(key), decltype(vec), decltype(index)::value>(p, keys, n, out, sm_count, s);
    });
}

}  // namespace kernels
}  // namespace hps
