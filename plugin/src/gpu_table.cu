// gpu_table.cu: lookup kernels, key-index build and the GPU cache of one table.
//
// Lookup: one warp handles 32 keys at a time. Each lane hashes one key (one 16-byte probe, the
// entry {key,row} sits in one 32-byte sector), then the warp copies the 32 vectors as a flat run
// of 16-byte elements: consecutive lanes read consecutive 16 bytes of a row and write consecutive
// 16 bytes of the output, eight loads in flight per lane before the stores, which is what keeps a
// random row gather close to device-to-device copy bandwidth.
//
// Hierarchical tables (gpucacheper < 1): a key whose row is not cached is read straight from the
// mapped pinned host tier by the same kernel (no host synchronisation, nothing to capture besides
// one kernel), then offered to the cache by the same warp:
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
//     before and after reading the vector; if it changed, the key is re-read from the host tier.
//     So lookups on other streams running concurrently always return exact vectors.
#include "gpu_table.hpp"

#include <algorithm>
#include <climits>
#include <cstring>
#include <string>
#include <vector>

namespace hps {
namespace {

constexpr long long kEmptyKey = LLONG_MIN;  // hash-slot sentinel; a table key equal to it is kept aside
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

struct alignas(16) Entry {
    long long key;
    int row;
    int pad;
};

struct Params {
    const Entry* entries;
    unsigned long long mask;
    int sentinel_row;  // row of key == kEmptyKey, or -1
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

__device__ __forceinline__ unsigned long long mix64(unsigned long long x) {
    // splitmix64 finaliser: spreads sequential keys (row ids are a common key scheme) over the table.
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

// First probe of key's hash slot (16 bytes: key + row in one sector); issued early, used later.
__device__ __forceinline__ longlong2 first_probe(const Params& p, long long key) {
    const longlong2* e = reinterpret_cast<const longlong2*>(p.entries);
    return __ldg(e + (mix64(static_cast<unsigned long long>(key)) & p.mask));
}

// Row of key given the entry at its hash slot (continues linear probing if needed); -1 if absent.
__device__ __forceinline__ int probe_resolve(const Params& p, long long key, longlong2 v) {
    if (key == kEmptyKey) return p.sentinel_row;
    unsigned long long h = mix64(static_cast<unsigned long long>(key)) & p.mask;
    const longlong2* e = reinterpret_cast<const longlong2*>(p.entries);
    while (true) {
        if (v.x == key) return static_cast<int>(v.y & 0xffffffffLL);
        if (v.x == kEmptyKey) return -1;
        h = (h + 1) & p.mask;
        v = __ldg(e + h);
    }
}

__device__ __forceinline__ int probe(const Params& p, long long key) { return probe_resolve(p, key, first_probe(p, key)); }

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

__device__ __forceinline__ unsigned long long warp_sum(unsigned long long v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

// Copies a warp's run of rows into dst[0, cnt * V): element e comes from src(k, c), k = e / V,
// c = e % V (a null source means the default value); kU 16-byte loads in flight per lane before
// the stores. The output side is plain contiguous indexing on purpose: at ~3 TB/s the kernel is
// close to instruction-issue bound, and per-element address arithmetic showed up in the timings.
template <int kU, bool kL2Only, typename VecT, typename SrcFn>
__device__ __forceinline__ void warp_copy_rows(int cnt, int V, int vec_shift, int lane, VecT dflt, SrcFn src,
                                               VecT* dst) {
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
            if (e < E) {
                if (HPS_STREAM_STORES) __stcs(dst + e, v[u]);  // evict-first: keep L2 for hot rows and the index
                else dst[e] = v[u];
            }
        }
    }
}

// Resident tables: slot == row and the cache is never written after load (read-only loads).
template <typename KeyT, typename VecT>
__global__ void __launch_bounds__(kBlock, HPS_MIN_BLOCKS)
    resident_kernel(Params p, const KeyT* __restrict__ keys, long long n, float* __restrict__ out) {
    constexpr unsigned FULL = 0xffffffffu;
    __shared__ unsigned long long block_counts[kNumCounters];
    if (threadIdx.x < kNumCounters) block_counts[threadIdx.x] = 0;
    __syncthreads();

    const int lane = threadIdx.x & 31;
    const int V = p.vec;
    const long long warp_id = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const long long nwarps = (static_cast<long long>(gridDim.x) * blockDim.x) >> 5;
    const long long chunks = (n + 31) >> 5;
    const VecT dflt = splat<VecT>(p.default_value);
    const VecT* cache_v = reinterpret_cast<const VecT*>(p.cache);
    VecT* out_v = reinterpret_cast<VecT*>(out);
    unsigned long long c_cache = 0, c_absent = 0;

    // The next chunk's keys are loaded before this chunk's gather, so their latency hides behind it.
    long long key_next = 0;
    if (warp_id < chunks && (warp_id << 5) + lane < n) key_next = static_cast<long long>(keys[(warp_id << 5) + lane]);
    for (long long chunk = warp_id; chunk < chunks; chunk += nwarps) {
        const int cnt = static_cast<int>(min(32LL, n - (chunk << 5)));
        const long long key = key_next;
        const long long nxt = chunk + nwarps;
        if (nxt < chunks && (nxt << 5) + lane < n) key_next = static_cast<long long>(keys[(nxt << 5) + lane]);
        const int row = lane < cnt ? probe(p, key) : -1;
        const long long out_base = (chunk << 5) * V;
        warp_copy_rows<HPS_UNROLL, false, VecT>(
            cnt, V, p.vec_shift, lane, dflt,
            [&](int k, int c) -> const VecT* {
                const int r = __shfl_sync(FULL, row, k);
                return r >= 0 ? cache_v + static_cast<long long>(r) * V + c : nullptr;
            },
            out_v + out_base);
        if (row >= 0) ++c_cache;
        else if (lane < cnt) ++c_absent;
    }
    const unsigned long long w_cache = warp_sum(c_cache), w_absent = warp_sum(c_absent);
    if (lane == 0) {
        atomicAdd(&block_counts[kCacheHits], w_cache);
        atomicAdd(&block_counts[kNotFound], w_absent);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        atomicAdd(&p.counters[kLookups], block_counts[kCacheHits] + block_counts[kNotFound]);
        if (block_counts[kCacheHits]) atomicAdd(&p.counters[kCacheHits], block_counts[kCacheHits]);
        if (block_counts[kNotFound]) atomicAdd(&p.counters[kNotFound], block_counts[kNotFound]);
    }
}

// Hierarchical tables: each warp looks up 32 keys, then copies their rows from the GPU cache,
// the mapped host tier or the default value in one pass, then offers the host-tier rows to the
// cache. (A warp-specialised variant, producers handing host rows to consumer warps through a
// shared-memory ring, measured the same on H100 here, 8.0 ms at Zipf 1.05: the host tier's random
// 512-byte reads are bound by address translation near 21 GB/s, not by how they are issued.)
template <typename KeyT, typename VecT>
__global__ void __launch_bounds__(kBlock, HPS_HIER_MIN_BLOCKS)
    hier_kernel(Params p, const KeyT* __restrict__ keys, long long n, float* __restrict__ out) {
    constexpr unsigned FULL = 0xffffffffu;
    __shared__ unsigned long long block_counts[kNumCounters];
    if (threadIdx.x < kNumCounters) block_counts[threadIdx.x] = 0;
    __syncthreads();

    const int lane = threadIdx.x & 31;
    const int V = p.vec;
    const long long warp_id = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const long long nwarps = (static_cast<long long>(gridDim.x) * blockDim.x) >> 5;
    const long long chunks = (n + 31) >> 5;
    const VecT dflt = splat<VecT>(p.default_value);
    const VecT* cache_v = reinterpret_cast<const VecT*>(p.cache);
    const VecT* host_v = reinterpret_cast<const VecT*>(p.host);
    VecT* out_v = reinterpret_cast<VecT*>(out);
    unsigned long long c_cache = 0, c_host = 0, c_absent = 0, c_ins = 0, c_evict = 0;
    const unsigned epoch = ld_volatile(p.epoch);

    long long key_next = 0;
    if (warp_id < chunks && (warp_id << 5) + lane < n) key_next = static_cast<long long>(keys[(warp_id << 5) + lane]);
    for (long long chunk = warp_id; chunk < chunks; chunk += nwarps) {
        const long long i = (chunk << 5) + lane;
        const int cnt = static_cast<int>(min(32LL, n - (chunk << 5)));
        const long long key = key_next;
        const long long nxt = chunk + nwarps;
        if (nxt < chunks && (nxt << 5) + lane < n) key_next = static_cast<long long>(keys[(nxt << 5) + lane]);
        const int row = lane < cnt ? probe(p, key) : -1;
        // src >= 0: cache slot; -1: default value; <= -2: host row -(src + 2).
        int src = row >= 0 ? -(row + 2) : -1;
        unsigned long long o1 = 0;
        if (row >= 0 && p.slots > 0) {
            const int s = ld_volatile(p.row_slot + row);
            if (s >= 0) {
                o1 = ld_volatile(p.owner + s);
                if (static_cast<int>(static_cast<unsigned>(o1)) == row) src = s;
            }
        }
        __threadfence();  // owner word read (o1) before the vector reads
        const long long out_base = (chunk << 5) * V;
        warp_copy_rows<HPS_HIER_UNROLL, true, VecT>(
            cnt, V, p.vec_shift, lane, dflt,
            [&](int k, int c) -> const VecT* {
                const int s = __shfl_sync(FULL, src, k);
                if (s >= 0) return cache_v + static_cast<long long>(s) * V + c;
                return s == -1 ? nullptr : host_v + static_cast<long long>(-(s + 2)) * V + c;
            },
            out_v + out_base);

        // Sequence-lock check: a slot whose owner word changed while we read it may hold another
        // row's bytes; re-read those keys from the host tier (exact, rare).
        if (__any_sync(FULL, src >= 0)) {
            __threadfence();
            const bool torn = src >= 0 && ld_volatile(p.owner + src) != o1;
            unsigned tm = __ballot_sync(FULL, torn);
            if (tm) {
                __syncwarp();
                while (tm) {
                    const int k = __ffs(tm) - 1;
                    tm &= tm - 1;
                    const int r = __shfl_sync(FULL, row, k);
                    for (int c = lane; c < V; c += 32)
                        __stcs(out_v + out_base + static_cast<long long>(k) * V + c,
                               __ldcg(host_v + static_cast<long long>(r) * V + c));
                }
                if (torn) src = -(row + 2);
            }
        }
        // Frequency sample (see the policy at the top of the file).
        if (row >= 0 && p.slots > 0) {
            const unsigned f = ld_volatile(p.freq + row);
            bool count = f < kExactCountBelow;
            if (!count) {
                const unsigned long long h =
                    mix64(static_cast<unsigned long long>(i) ^ (static_cast<unsigned long long>(epoch) << 40) ^
                          (static_cast<unsigned long long>(row) << 1));
                count = (h & kSampleMask) == 0 && f < kFreqCap;
            }
            if (count) atomicAdd(p.freq + row, 1u);
        }
        if (src >= 0) ++c_cache;
        else if (src <= -2) ++c_host;
        else if (lane < cnt) ++c_absent;

        // Admission of the rows just served from the host tier.
        bool want = src <= -2 && p.slots > 0;
        if (want) want = ld_volatile(p.row_slot + row) == -1 && atomicCAS(p.row_slot + row, -1, kPending) == -1;
        const unsigned wm = __ballot_sync(FULL, want);
        if (!wm) continue;
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
        if (!cm) continue;
        __threadfence();  // locks visible before the vector bytes change
        __syncwarp();     // this warp's output stores visible to the copying lanes
        VecT* cache_w = reinterpret_cast<VecT*>(p.cache);
        while (cm) {
            const int k = __ffs(cm) - 1;
            cm &= cm - 1;
            const long long sl = __shfl_sync(FULL, slot, k);
            for (int c = lane; c < V; c += 32)
                __stcg(cache_w + sl * V + c, __ldcg(out_v + out_base + static_cast<long long>(k) * V + c));
        }
        __threadfence();  // vector bytes visible before the slot is published
        if (slot >= 0) {
            atomicExch(p.owner + slot, ((gen + 1ULL) << 32) | static_cast<unsigned>(row));
            atomicExch(p.row_slot + row, static_cast<int>(slot));
            ++c_ins;
        }
    }

    const unsigned long long w_cache = warp_sum(c_cache), w_host = warp_sum(c_host), w_absent = warp_sum(c_absent);
    const unsigned long long w_ins = warp_sum(c_ins), w_evict = warp_sum(c_evict);
    if (lane == 0) {
        atomicAdd(&block_counts[kCacheHits], w_cache);
        atomicAdd(&block_counts[kHostHits], w_host);
        atomicAdd(&block_counts[kNotFound], w_absent);
        atomicAdd(&block_counts[kInsertions], w_ins);
        atomicAdd(&block_counts[kEvictions], w_evict);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned long long total = block_counts[kCacheHits] + block_counts[kHostHits] + block_counts[kNotFound];
        atomicAdd(&p.counters[kLookups], total);
        for (int c = kCacheHits; c < kNumCounters; ++c)
            if (block_counts[c]) atomicAdd(&p.counters[c], block_counts[c]);
        if (blockIdx.x == 0) atomicAdd(p.epoch, 1u);
    }
}

__global__ void fill_empty_kernel(Entry* entries, unsigned long long count) {
    for (unsigned long long i = blockIdx.x * static_cast<unsigned long long>(blockDim.x) + threadIdx.x; i < count;
         i += static_cast<unsigned long long>(gridDim.x) * blockDim.x) {
        entries[i].key = kEmptyKey;
        entries[i].row = -1;
        entries[i].pad = 0;
    }
}

// Inserts keys[0..count) with rows row0 + i. dup[0] receives the smallest duplicated row, if any.
__global__ void build_kernel(Entry* entries, unsigned long long mask, const long long* keys, long long count,
                             long long row0, unsigned long long* dup) {
    for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < count;
         i += static_cast<long long>(gridDim.x) * blockDim.x) {
        const long long key = keys[i];
        if (key == kEmptyKey) continue;  // handled on the host (sentinel_row)
        unsigned long long h = mix64(static_cast<unsigned long long>(key)) & mask;
        while (true) {
            const unsigned long long prev = atomicCAS(reinterpret_cast<unsigned long long*>(&entries[h].key),
                                                      static_cast<unsigned long long>(kEmptyKey),
                                                      static_cast<unsigned long long>(key));
            if (prev == static_cast<unsigned long long>(kEmptyKey)) {
                entries[h].row = static_cast<int>(row0 + i);
                break;
            }
            if (prev == static_cast<unsigned long long>(key)) {
                atomicMin(dup, static_cast<unsigned long long>(row0 + i));
                break;
            }
            h = (h + 1) & mask;
        }
    }
}

[[noreturn]] void throw_cuda(cudaError_t err, const char* what, const std::string& context) {
    const hps_status code = (err == cudaErrorMemoryAllocation) ? HPS_ERR_OUT_OF_MEMORY : HPS_ERR_CUDA;
    throw Error(code, std::string(what) + " failed: " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")" +
                          (context.empty() ? "" : "; " + context));
}

#define HPS_CUDA(call, context)                              \
    do {                                                     \
        const cudaError_t hps_err_ = (call);                 \
        if (hps_err_ != cudaSuccess) throw_cuda(hps_err_, #call, context); \
    } while (0)

}  // namespace

struct DeviceState {
    Params p{};
    Entry* entries = nullptr;
    float* cache = nullptr;
    float* host = nullptr;  // pinned, mapped
    int* row_slot = nullptr;
    unsigned long long* owner = nullptr;
    unsigned* freq = nullptr;
    unsigned long long* scalars = nullptr;  // counters[kNumCounters], hand, epoch
};

DeviceGuard::DeviceGuard(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    if (previous_ != device) {
        const cudaError_t err = cudaSetDevice(device);
        if (err != cudaSuccess) throw_cuda(err, "cudaSetDevice", "device " + std::to_string(device));
    } else {
        previous_ = -1;  // nothing to restore
    }
}

DeviceGuard::~DeviceGuard() {
    if (previous_ >= 0) cudaSetDevice(previous_);
}

GpuTable::GpuTable(const TableSpec& spec, int device) : spec_(spec), device_(device), s_(new DeviceState) {
    const std::string ctx = "table '" + spec.table_name + "' of model '" + spec.model_name + "' on device " +
                            std::to_string(device);
    const TableFiles files = inspect_table_files(spec);
    rows_ = files.rows;
    const int dim = spec.emb_vec_size;
    const double want_slots = spec.gpucache ? spec.gpucacheper * static_cast<double>(rows_) : 0.0;
    slots_ = std::min<int64_t>(rows_, static_cast<int64_t>(want_slots + 0.999999));
    resident_ = (slots_ >= rows_);

    DeviceGuard guard(device);
    try {
        cudaDeviceProp prop;
        HPS_CUDA(cudaGetDeviceProperties(&prop, device), ctx);
        sm_count_ = prop.multiProcessorCount;

        // Keys: read on the host, checked for the hash sentinel, then indexed on the GPU.
        std::vector<long long> keys(static_cast<size_t>(rows_));
        const size_t row_bytes = static_cast<size_t>(dim) * sizeof(float);
        Params& p = s_->p;
        p.sentinel_row = -1;
        p.dim = dim;
        const bool vec4 = (dim % 4) == 0;
        p.vec = vec4 ? dim / 4 : dim;
        p.vec_shift = -1;
        for (int b = 0; b < 31; ++b)
            if ((1 << b) == p.vec) p.vec_shift = b;
        p.default_value = spec.default_value;

        if (resident_) {
            // Vectors stream through a pinned staging buffer into the cache; no host tier is kept.
            read_table_files(files, dim, reinterpret_cast<int64_t*>(keys.data()), nullptr);
            if (rows_ > 0) HPS_CUDA(cudaMalloc(&s_->cache, static_cast<size_t>(rows_) * row_bytes), ctx + ", GPU cache");
            const int64_t stage_rows = std::max<int64_t>(1, (int64_t(128) << 20) / static_cast<int64_t>(row_bytes));
            float* stage = nullptr;
            if (rows_ > 0) HPS_CUDA(cudaMallocHost(&stage, static_cast<size_t>(stage_rows) * row_bytes), ctx + ", staging");
            try {
                for (int64_t r = 0; r < rows_; r += stage_rows) {
                    const int64_t cnt = std::min(stage_rows, rows_ - r);
                    read_vector_rows(files, dim, r, cnt, stage);
                    HPS_CUDA(cudaMemcpy(s_->cache + r * dim, stage, static_cast<size_t>(cnt) * row_bytes,
                                        cudaMemcpyHostToDevice), ctx);
                }
            } catch (...) {
                cudaFreeHost(stage);
                throw;
            }
            cudaFreeHost(stage);
        } else {
            if (rows_ > 0)
                HPS_CUDA(cudaHostAlloc(&s_->host, static_cast<size_t>(rows_) * row_bytes,
                                       cudaHostAllocMapped | cudaHostAllocPortable),
                         ctx + ", pinned host tier of " + std::to_string(rows_ * int64_t(row_bytes)) + " bytes");
            read_table_files(files, dim, reinterpret_cast<int64_t*>(keys.data()), s_->host);
            if (rows_ > 0) {
                void* dptr = nullptr;
                HPS_CUDA(cudaHostGetDevicePointer(&dptr, s_->host, 0), ctx);
                p.host = static_cast<const float*>(dptr);
            }
            if (slots_ > 0) {
                HPS_CUDA(cudaMalloc(&s_->cache, static_cast<size_t>(slots_) * row_bytes), ctx + ", GPU cache");
                HPS_CUDA(cudaMalloc(&s_->owner, static_cast<size_t>(slots_) * 8), ctx);
                HPS_CUDA(cudaMemset(s_->owner, 0xff, static_cast<size_t>(slots_) * 8), ctx);  // row -1: empty
                HPS_CUDA(cudaMalloc(&s_->row_slot, static_cast<size_t>(rows_) * 4), ctx);
                HPS_CUDA(cudaMemset(s_->row_slot, 0xff, static_cast<size_t>(rows_) * 4), ctx);  // -1: not cached
                HPS_CUDA(cudaMalloc(&s_->freq, static_cast<size_t>(rows_) * 4), ctx);
                HPS_CUDA(cudaMemset(s_->freq, 0, static_cast<size_t>(rows_) * 4), ctx);
            }
        }
        for (int64_t r = 0; r < rows_; ++r)
            if (keys[static_cast<size_t>(r)] == kEmptyKey) {
                if (p.sentinel_row >= 0)
                    throw Error(HPS_ERR_TABLE_FILE, files.key_path + ": key " + std::to_string(kEmptyKey) +
                                                        " appears twice (rows " + std::to_string(p.sentinel_row) +
                                                        " and " + std::to_string(r) + "); keys must be unique");
                p.sentinel_row = static_cast<int>(r);
            }

        unsigned long long cap = 64;
        while (cap < 2ULL * static_cast<unsigned long long>(rows_)) cap <<= 1;
        p.mask = cap - 1;
        HPS_CUDA(cudaMalloc(&s_->entries, cap * sizeof(Entry)), ctx + ", key index");
        HPS_CUDA(cudaMalloc(&s_->scalars, (kNumCounters + 2) * sizeof(unsigned long long)), ctx);
        HPS_CUDA(cudaMemset(s_->scalars, 0, (kNumCounters + 2) * sizeof(unsigned long long)), ctx);
        fill_empty_kernel<<<std::min<unsigned long long>((cap + 255) / 256, 65535), 256>>>(s_->entries, cap);
        HPS_CUDA(cudaGetLastError(), ctx);
        if (rows_ > 0) {
            long long* dkeys = nullptr;
            unsigned long long* ddup = nullptr;
            HPS_CUDA(cudaMalloc(&dkeys, static_cast<size_t>(rows_) * 8), ctx);
            HPS_CUDA(cudaMalloc(&ddup, 8), ctx);
            const unsigned long long none = ~0ULL;
            unsigned long long dup = none;
            cudaError_t err = cudaMemcpy(dkeys, keys.data(), static_cast<size_t>(rows_) * 8, cudaMemcpyHostToDevice);
            if (err == cudaSuccess) err = cudaMemcpy(ddup, &none, 8, cudaMemcpyHostToDevice);
            if (err == cudaSuccess) {
                build_kernel<<<std::min<long long>((rows_ + 255) / 256, 65535), 256>>>(s_->entries, p.mask, dkeys,
                                                                                       rows_, 0, ddup);
                err = cudaGetLastError();
            }
            if (err == cudaSuccess) err = cudaMemcpy(&dup, ddup, 8, cudaMemcpyDeviceToHost);
            cudaFree(dkeys);
            cudaFree(ddup);
            if (err != cudaSuccess) throw_cuda(err, "building the key index", ctx);
            if (dup != none)
                throw Error(HPS_ERR_TABLE_FILE,
                            files.key_path + ": key " + std::to_string(keys[static_cast<size_t>(dup)]) +
                                " appears more than once (again at row " + std::to_string(dup) +
                                "); keys must be unique, re-export the table");
        }
        HPS_CUDA(cudaDeviceSynchronize(), ctx);

        p.entries = s_->entries;
        p.cache = s_->cache;
        p.row_slot = s_->row_slot;
        p.owner = s_->owner;
        p.freq = s_->freq;
        p.slots = resident_ ? rows_ : slots_;
        p.counters = s_->scalars;
        p.hand = s_->scalars + kNumCounters;
        p.epoch = reinterpret_cast<unsigned*>(s_->scalars + kNumCounters + 1);
    } catch (...) {
        release();
        throw;
    }
}

void GpuTable::release() noexcept {
    if (!s_) return;
    // cudaFree waits for in-flight kernels that may still read these buffers.
    cudaFree(s_->entries);
    cudaFree(s_->cache);
    cudaFreeHost(s_->host);
    cudaFree(s_->row_slot);
    cudaFree(s_->owner);
    cudaFree(s_->freq);
    cudaFree(s_->scalars);
    s_.reset();
}

GpuTable::~GpuTable() {
    int prev = -1;
    cudaGetDevice(&prev);
    cudaSetDevice(device_);
    release();
    if (prev >= 0) cudaSetDevice(prev);
}

namespace {
template <bool RESIDENT, typename KeyT, typename VecT>
void launch_one(const Params& p, const void* keys, long long n, float* out, int sm_count, cudaStream_t s) {
    auto kernel = RESIDENT ? resident_kernel<KeyT, VecT> : hier_kernel<KeyT, VecT>;
    const long long chunks = (n + 31) / 32;
    const long long want_blocks = (chunks + kBlock / 32 - 1) / (kBlock / 32);
    // Several waves of blocks, warps striding over the rest (see LOOKUP_RESULTS.md for the grid
    // sizes measured).
    const int blocks = static_cast<int>(std::min<long long>(want_blocks, static_cast<long long>(sm_count) * kBlocksPerSm));
    kernel<<<blocks, kBlock, 0, s>>>(p, static_cast<const KeyT*>(keys), n, out);
}

template <bool RESIDENT, typename KeyT>
void launch_typed(const Params& p, bool vec4, const void* keys, long long n, float* out, int sm_count, cudaStream_t s) {
    if (vec4)
        launch_one<RESIDENT, KeyT, float4>(p, keys, n, out, sm_count, s);
    else
        launch_one<RESIDENT, KeyT, float>(p, keys, n, out, sm_count, s);
}
}  // namespace

void GpuTable::lookup(const void* keys, int key_bits, int64_t n, float* out, cudaStream_t stream) const {
    if (key_bits != 32 && key_bits != 64)
        throw Error(HPS_ERR_INVALID_ARGUMENT, "key_bits = " + std::to_string(key_bits) + ": keys must be int32 (32) or int64 (64)");
    if (n < 0) throw Error(HPS_ERR_INVALID_ARGUMENT, "n = " + std::to_string(n) + " is negative");
    if (n == 0) return;
    if (!keys || !out) throw Error(HPS_ERR_INVALID_ARGUMENT, "keys or out is NULL with n = " + std::to_string(n));
    if (reinterpret_cast<uintptr_t>(keys) % (key_bits / 8) != 0)
        throw Error(HPS_ERR_INVALID_ARGUMENT, "keys pointer is not aligned to its key size");
    if (reinterpret_cast<uintptr_t>(out) % 4 != 0) throw Error(HPS_ERR_INVALID_ARGUMENT, "out pointer is not 4-byte aligned");
    // 16-byte loads and stores need 16-byte aligned rows in both the cache and out.
    const bool vec4 = (spec_.emb_vec_size % 4) == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
    Params p = s_->p;
    if (!vec4) p.vec = spec_.emb_vec_size;
    p.vec_shift = -1;
    for (int b = 0; b < 31; ++b)
        if ((1 << b) == p.vec) p.vec_shift = b;
    DeviceGuard guard(device_);
    const int sms = sm_count_;
    // Output positions travel as int32 inside the kernels: launch in slices of at most 2^30 keys.
    const int64_t kSlice = int64_t(1) << 30;
    for (int64_t off = 0; off < n; off += kSlice) {
        const long long m = static_cast<long long>(std::min(kSlice, n - off));
        const void* k = static_cast<const char*>(keys) + off * (key_bits / 8);
        float* o = out + off * spec_.emb_vec_size;
        if (resident_) {
            if (key_bits == 64) launch_typed<true, long long>(p, vec4, k, m, o, sms, stream);
            else launch_typed<true, int>(p, vec4, k, m, o, sms, stream);
        } else {
            if (key_bits == 64) launch_typed<false, long long>(p, vec4, k, m, o, sms, stream);
            else launch_typed<false, int>(p, vec4, k, m, o, sms, stream);
        }
        HPS_CUDA(cudaGetLastError(), "lookup kernel launch");
    }
}

void GpuTable::lookup_host(const void* keys, int key_bits, int64_t n, float* out) const {
    if (key_bits != 32 && key_bits != 64)
        throw Error(HPS_ERR_INVALID_ARGUMENT, "key_bits = " + std::to_string(key_bits) + ": keys must be int32 (32) or int64 (64)");
    if (n < 0) throw Error(HPS_ERR_INVALID_ARGUMENT, "n = " + std::to_string(n) + " is negative");
    if (n == 0) return;
    if (!keys || !out) throw Error(HPS_ERR_INVALID_ARGUMENT, "keys or out is NULL with n = " + std::to_string(n));
    DeviceGuard guard(device_);
    const size_t key_bytes = static_cast<size_t>(n) * static_cast<size_t>(key_bits / 8);
    const size_t out_bytes = static_cast<size_t>(n) * static_cast<size_t>(spec_.emb_vec_size) * sizeof(float);
    cudaStream_t s = nullptr;
    void* dkeys = nullptr;
    float* dout = nullptr;
    HPS_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "lookup_host");
    cudaError_t err = cudaMalloc(&dkeys, key_bytes);
    if (err == cudaSuccess) err = cudaMalloc(&dout, out_bytes);
    if (err == cudaSuccess) err = cudaMemcpyAsync(dkeys, keys, key_bytes, cudaMemcpyHostToDevice, s);
    std::string failed = "cudaMalloc/cudaMemcpy (lookup_host)";
    if (err == cudaSuccess) {
        try {
            lookup(dkeys, key_bits, n, dout, s);
        } catch (...) {
            cudaStreamSynchronize(s);
            cudaFree(dkeys);
            cudaFree(dout);
            cudaStreamDestroy(s);
            throw;
        }
        err = cudaMemcpyAsync(out, dout, out_bytes, cudaMemcpyDeviceToHost, s);
        if (err == cudaSuccess) err = cudaStreamSynchronize(s);
        failed = "lookup_host (kernel or copy back)";
    }
    cudaStreamSynchronize(s);
    cudaFree(dkeys);
    cudaFree(dout);
    cudaStreamDestroy(s);
    if (err != cudaSuccess) throw_cuda(err, failed.c_str(), "");
}

hps_stats_t GpuTable::stats() const {
    DeviceGuard guard(device_);
    unsigned long long c[kNumCounters] = {};
    // A plain copy on the legacy stream would wait for every stream; a non-blocking one only
    // reads whatever has completed, which is what counters mean for asynchronous work.
    cudaStream_t s = nullptr;
    HPS_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stats");
    cudaError_t err = cudaMemcpyAsync(c, s_->scalars, sizeof(c), cudaMemcpyDeviceToHost, s);
    if (err == cudaSuccess) err = cudaStreamSynchronize(s);
    cudaStreamDestroy(s);
    if (err != cudaSuccess) throw_cuda(err, "reading counters", "");
    hps_stats_t out{};
    out.lookups = c[kLookups];
    out.cache_hits = c[kCacheHits];
    out.host_hits = c[kHostHits];
    out.not_found = c[kNotFound];
    out.insertions = c[kInsertions];
    out.evictions = c[kEvictions];
    return out;
}

hps_table_info_t GpuTable::info() const {
    hps_table_info_t i{};
    i.rows = rows_;
    i.dim = spec_.emb_vec_size;
    i.device = device_;
    i.cache_slots = resident_ ? rows_ : slots_;
    i.resident = resident_ ? 1 : 0;
    i.default_value = spec_.default_value;
    return i;
}

}  // namespace hps
