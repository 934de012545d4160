// ours_variants.cu: variants of our resident lookup for the tuning runs of issue 15, over the same
// device table as the peers (key index built by plugin/src/index_build.cuh, vectors = the table,
// slot = row). "lib" is the kernel and grid the library launches; the others change one thing:
//   u4 / u16            16-byte loads in flight per lane (the library: 8)
//   persistent          grid = one wave (SMs x resident blocks per SM) instead of 16 blocks per SM
//   chunkK / chunkK_mb4 K keys per warp instead of 32 (small batches: more warps, fewer rounds),
//                       _mb4: at most 64 registers so 4 blocks (32 warps) fit on an SM
//   bulk_rR_sS_wW       Hopper bulk copies: a warp probes R keys, lane i moves row i into shared
//                       memory with cp.async.bulk (completion on an mbarrier), then one lane writes the
//                       R contiguous output rows with one cp.async.bulk store; S chunks per warp in
//                       flight, W warps per block (shared memory: W x S x R x row bytes)
#include "bench.hpp"

#include <algorithm>
#include <functional>
#include <sstream>

#include "index_build.cuh"
#include "lookup_kernels.cuh"

namespace bench {
namespace {

using namespace hps::kernels;

namespace ptx {
__device__ __forceinline__ unsigned smem(const void* p) { return static_cast<unsigned>(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ void mbar_init(unsigned bar) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_fence_init() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
__device__ __forceinline__ void mbar_arrive_expect(unsigned bar, unsigned bytes) {
    asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}" ::"r"(bar), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(unsigned bar, unsigned parity) {
    unsigned done;
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
    return done != 0;
}
__device__ __forceinline__ void bulk_load(unsigned dst, const void* src, unsigned bytes, unsigned bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
}
__device__ __forceinline__ void bulk_store(void* dst, unsigned src, unsigned bytes) {
    asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(dst), "r"(src), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
    asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(N) : "memory");
}
__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;" ::: "memory"); }
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
}  // namespace ptx

// Waits for an mbarrier phase; gives up (and flags it) rather than hang the benchmark, and once
// anything has timed out, waits no more (the variant is then reported invalid).
__device__ __forceinline__ void wait_phase(unsigned bar, unsigned parity, unsigned* timeouts) {
    if (*reinterpret_cast<volatile unsigned*>(timeouts)) return;
    for (long long spin = 0; !ptx::mbar_try_wait(bar, parity); ++spin)
        if (spin > (1LL << 22)) {
            atomicAdd(timeouts, 1u);
            return;
        }
}

template <typename KeyT, int kRows, int kStages, int kWarps>
__global__ void __launch_bounds__(kWarps * 32)
    resident_bulk_kernel(Params p, const KeyT* __restrict__ keys, long long n, float* __restrict__ out,
                         unsigned* timeouts) {
    static_assert(kStages >= 2, "one chunk's rows load while the previous chunk's are stored");
    constexpr unsigned FULL = 0xffffffffu;
    constexpr int kShift = log2_of(kRows);
    extern __shared__ __align__(128) unsigned char smem[];
    __shared__ unsigned long long block_counts[kNumCounters];
    __shared__ __align__(8) unsigned long long bars[kWarps][kStages];
    zero_block_counts(block_counts);

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const unsigned row_bytes = static_cast<unsigned>(p.dim) * 4u;
    const int V = p.vec;  // float4 per row
    const unsigned stage_bytes = kRows * row_bytes;
    unsigned char* my = smem + static_cast<size_t>(warp) * kStages * stage_bytes;
    if (lane == 0) {
        for (int s = 0; s < kStages; ++s) ptx::mbar_init(ptx::smem(&bars[warp][s]));
        ptx::mbar_fence_init();
    }
    __syncwarp();

    const float4 dflt = splat<float4>(p.default_value);
    const char* cache = reinterpret_cast<const char*>(p.cache);
    unsigned long long c_cache = 0, c_absent = 0;
    const WarpChunks w = warp_chunks<kRows>(n);
    long long key_next = 0;
    load_chunk_key<kRows>(keys, n, w, w.first, lane, key_next);
    long long prev_chunk = -1;
    int prev_cnt = 0;
    int t = 0;
    auto store_chunk = [&](long long chunk, int cnt, int tt) {
        const int s = tt % kStages;
        wait_phase(ptx::smem(&bars[warp][s]), static_cast<unsigned>((tt / kStages) & 1), timeouts);
        __syncwarp();
        if (lane == 0) {
            ptx::bulk_store(out + (chunk << kShift) * p.dim, ptx::smem(my + s * stage_bytes), cnt * row_bytes);
            ptx::bulk_commit();
        }
    };
    for (long long chunk = w.first; chunk < w.count; chunk += w.stride, ++t) {
        const int cnt = static_cast<int>(min(static_cast<long long>(kRows), n - (chunk << kShift)));
        const long long key = key_next;
        load_chunk_key<kRows>(keys, n, w, chunk + w.stride, lane, key_next);
        const int row = lane < cnt ? probe(p.entries, p.mask, p.sentinel_row, key) : -1;
        const int s = t % kStages;
        unsigned char* stage = my + s * stage_bytes;
        // The store that last read this stage (kStages chunks ago) must be done with it.
        if (lane == 0) ptx::bulk_wait_read<kStages - 2>();
        __syncwarp();
        const unsigned found = __ballot_sync(FULL, row >= 0);
        if (lane == 0) ptx::mbar_arrive_expect(ptx::smem(&bars[warp][s]), __popc(found) * row_bytes);
        __syncwarp();
        if (row >= 0) {
            ptx::bulk_load(ptx::smem(stage + lane * row_bytes), cache + static_cast<long long>(row) * row_bytes,
                           row_bytes, ptx::smem(&bars[warp][s]));
            ++c_cache;
        } else if (lane < cnt) {
            float4* slot = reinterpret_cast<float4*>(stage + lane * row_bytes);
            for (int c = 0; c < V; ++c) slot[c] = dflt;
            ptx::fence_proxy_async();  // generic writes before the bulk store reads them
            ++c_absent;
        }
        if (prev_chunk >= 0) store_chunk(prev_chunk, prev_cnt, t - 1);
        prev_chunk = chunk;
        prev_cnt = cnt;
    }
    if (prev_chunk >= 0) store_chunk(prev_chunk, prev_cnt, t - 1);
    if (lane == 0) ptx::bulk_wait_all();
    __syncwarp();

    flush_resident_counts(block_counts, c_cache, c_absent, lane, p.counters);
}

// The same gather with the rows given (no keys, no hashing): what our kernel would take if the
// key index were free, i.e. the random-row gather ceiling under the copy floor.
__global__ void __launch_bounds__(kBlock) known_rows_kernel(const int* __restrict__ rows, long long n,
                                                             const float4* __restrict__ table, int V, int vec_shift,
                                                             float4* __restrict__ out) {
    constexpr unsigned FULL = 0xffffffffu;
    const int lane = threadIdx.x & 31;
    const WarpChunks w = warp_chunks<32>(n);
    for (long long chunk = w.first; chunk < w.count; chunk += w.stride) {
        const int cnt = static_cast<int>(min(32LL, n - (chunk << 5)));
        const int row = lane < cnt ? __ldg(rows + (chunk << 5) + lane) : -1;
        warp_copy_rows<HPS_UNROLL, false, float4>(
            cnt, V, vec_shift, lane, make_float4(0, 0, 0, 0),
            [&](int k, int c) -> const float4* {
                const int r = __shfl_sync(FULL, row, k);
                return r >= 0 ? table + static_cast<long long>(r) * V + c : nullptr;
            },
            out + (chunk << 5) * V);
    }
}

// The resident table state our kernels read (what GpuTable builds from the table files).
class OurIndex {
public:
    OurIndex(const Table& t, cudaStream_t stream) {
        unsigned long long cap = 64;
        while (cap < 2ULL * static_cast<unsigned long long>(t.rows)) cap <<= 1;
        BENCH_CK(cudaMalloc(&entries_, cap * sizeof(Entry)));
        BENCH_CK(cudaMalloc(&scalars_, (kNumCounters + 2) * sizeof(unsigned long long)));
        BENCH_CK(cudaMemsetAsync(scalars_, 0, (kNumCounters + 2) * sizeof(unsigned long long), stream));
        unsigned long long* dup = scalars_ + kNumCounters;  // reused: reset below
        BENCH_CK(cudaMemsetAsync(dup, 0xff, 8, stream));
        fill_empty_kernel<<<static_cast<unsigned>(std::min<unsigned long long>((cap + 255) / 256, 65535)), 256, 0, stream>>>(
            entries_, cap);
        build_kernel<<<static_cast<unsigned>(std::min<long long>((t.rows + 255) / 256, 65535)), 256, 0, stream>>>(
            entries_, cap - 1, t.keys, t.rows, 0, dup);
        BENCH_CK(cudaGetLastError());
        unsigned long long d = 0;
        BENCH_CK(cudaMemcpyAsync(&d, dup, 8, cudaMemcpyDeviceToHost, stream));
        BENCH_CK(cudaStreamSynchronize(stream));
        if (d != ~0ULL) {
            std::fprintf(stderr, "our index: duplicate key at row %llu\n", d);
            std::exit(3);
        }
        BENCH_CK(cudaMemset(scalars_, 0, (kNumCounters + 2) * sizeof(unsigned long long)));
        p_.entries = entries_;
        p_.mask = cap - 1;
        p_.sentinel_row = -1;  // keys are >= 0: none equals the empty marker
        p_.rows = t.rows;
        p_.dim = t.dim;
        p_.vec = t.dim % 4 == 0 ? t.dim / 4 : t.dim;
        p_.vec_shift = vec_shift_of(p_.vec);
        p_.default_value = 0.0f;
        p_.cache = const_cast<float*>(t.vectors);
        p_.slots = t.rows;
        p_.counters = scalars_;
        p_.hand = scalars_ + kNumCounters;
        p_.epoch = reinterpret_cast<unsigned*>(scalars_ + kNumCounters + 1);
    }
    ~OurIndex() {
        BENCH_CK(cudaFree(entries_));
        BENCH_CK(cudaFree(scalars_));
    }
    const Params& params() const { return p_; }

private:
    Entry* entries_ = nullptr;
    unsigned long long* scalars_ = nullptr;
    Params p_{};
};

using Launch = std::function<void(const Params&, const long long*, long long, float*, cudaStream_t)>;

class Variant final : public System {
public:
    Variant(std::shared_ptr<OurIndex> index, std::string name, Launch launch, std::string what)
        : index_(std::move(index)), name_(std::move(name)), launch_(std::move(launch)), what_(std::move(what)) {}
    std::string name() const override { return "ours_" + name_; }
    std::string describe() const override { return what_; }
    void lookup(const long long* keys, int64_t n, float* out, cudaStream_t stream) override {
        launch_(index_->params(), keys, static_cast<long long>(n), out, stream);
    }

private:
    std::shared_ptr<OurIndex> index_;
    std::string name_;
    Launch launch_;
    std::string what_;
};

int sm_count() {
    int dev = 0, sms = 0;
    BENCH_CK(cudaGetDevice(&dev));
    BENCH_CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    return sms;
}

// resident_kernel with a grid of `blocks_per_sm` x SMs (0: one wave at the kernel's occupancy).
template <int kChunk, int kUnroll, int kMinBlocks>
Launch lsu_launch(int blocks_per_sm) {
    return [blocks_per_sm](const Params& p, const long long* keys, long long n, float* out, cudaStream_t s) {
        auto kernel = resident_kernel<long long, float4, false, kChunk, kUnroll, kMinBlocks>;
        int per_sm = blocks_per_sm;
        if (per_sm == 0) BENCH_CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kBlock, 0));
        const long long chunks = (n + kChunk - 1) / kChunk;
        const long long want = (chunks + kBlock / 32 - 1) / (kBlock / 32);
        const int blocks = static_cast<int>(std::min<long long>(want, static_cast<long long>(sm_count()) * per_sm));
        kernel<<<blocks, kBlock, 0, s>>>(p, keys, n, out);
        BENCH_CK(cudaGetLastError());
    };
}

// The library's own launch (grid and kernel choice), whatever lookup_kernels.cuh says today.
Launch library_launch() {
    return [](const Params& p, const long long* keys, long long n, float* out, cudaStream_t s) {
        launch_resident(p, false, true, 64, keys, n, out, sm_count(), s);
        BENCH_CK(cudaGetLastError());
    };
}

template <int kRows, int kStages, int kWarps>
Launch bulk_launch(unsigned* timeouts) {
    return [timeouts](const Params& p, const long long* keys, long long n, float* out, cudaStream_t s) {
        auto kernel = resident_bulk_kernel<long long, kRows, kStages, kWarps>;
        const size_t smem = static_cast<size_t>(kWarps) * kStages * kRows * p.dim * 4;
        BENCH_CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
        int per_sm = 0;
        BENCH_CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kWarps * 32, smem));
        const long long chunks = (n + kRows - 1) / kRows;
        const long long want = (chunks + kWarps - 1) / kWarps;
        const int blocks = static_cast<int>(std::min<long long>(want, static_cast<long long>(sm_count()) * std::max(1, per_sm)));
        kernel<<<blocks, kWarps * 32, smem, s>>>(p, keys, n, out, timeouts);
        BENCH_CK(cudaGetLastError());
    };
}

struct Spec {
    const char* name;
    const char* what;
    std::function<Launch(unsigned*)> make;
};

const std::vector<Spec>& specs() {
    static const std::vector<Spec> all = {
        {"lib", "the library's kernel choice and grid (launch_resident, hashed keys)", [](unsigned*) { return library_launch(); }},
        {"u8", "32 keys/warp, 8 loads in flight, 16 blocks/SM grid (the tuned kernel)",
         [](unsigned*) { return lsu_launch<32, 8, 1>(16); }},
        {"u16", "16 loads in flight", [](unsigned*) { return lsu_launch<32, 16, 1>(16); }},
        {"u4", "4 loads in flight", [](unsigned*) { return lsu_launch<32, 4, 1>(16); }},
        {"persistent", "grid = one wave", [](unsigned*) { return lsu_launch<32, 8, 1>(0); }},
        {"chunk16", "16 keys/warp", [](unsigned*) { return lsu_launch<16, 8, 1>(16); }},
        {"chunk8", "8 keys/warp", [](unsigned*) { return lsu_launch<8, 8, 1>(16); }},
        {"chunk8_mb4", "8 keys/warp, <= 64 registers", [](unsigned*) { return lsu_launch<8, 8, 4>(16); }},
        {"chunk4_mb4", "4 keys/warp, <= 64 registers", [](unsigned*) { return lsu_launch<4, 8, 4>(16); }},
        {"bulk_r32_s2_w2", "bulk copies, 32 rows x 2 stages, 2 warps/block",
         [](unsigned* t) { return bulk_launch<32, 2, 2>(t); }},
        {"bulk_r32_s3_w2", "bulk copies, 32 rows x 3 stages, 2 warps/block",
         [](unsigned* t) { return bulk_launch<32, 3, 2>(t); }},
        {"bulk_r16_s3_w4", "bulk copies, 16 rows x 3 stages, 4 warps/block",
         [](unsigned* t) { return bulk_launch<16, 3, 4>(t); }},
        {"bulk_r8_s4_w4", "bulk copies, 8 rows x 4 stages, 4 warps/block",
         [](unsigned* t) { return bulk_launch<8, 4, 4>(t); }},
    };
    return all;
}

unsigned* timeout_counter() {
    static unsigned* counter = [] {
        unsigned* c = nullptr;
        BENCH_CK(cudaMalloc(&c, sizeof(unsigned)));
        BENCH_CK(cudaMemset(c, 0, sizeof(unsigned)));
        return c;
    }();
    return counter;
}

}  // namespace

std::vector<std::string> our_variant_names() {
    std::vector<std::string> names;
    for (const Spec& s : specs()) names.push_back(s.name);
    return names;
}

std::vector<std::unique_ptr<System>> make_our_variants(const Table& table, const std::vector<std::string>& names,
                                                       cudaStream_t stream) {
    if (table.dim % 4 != 0) {
        std::fprintf(stderr, "our variants: dim %d is not a multiple of 4\n", table.dim);
        std::exit(3);
    }
    auto index = std::make_shared<OurIndex>(table, stream);
    std::vector<std::unique_ptr<System>> out;
    for (const Spec& s : specs()) {
        const bool wanted = std::find(names.begin(), names.end(), "all") != names.end() ||
                            std::find(names.begin(), names.end(), s.name) != names.end();
        if (wanted) out.push_back(std::make_unique<Variant>(index, s.name, s.make(timeout_counter()), s.what));
    }
    return out;
}

void gather_known_rows(const int* rows, long long n, const float* table, int dim, float* out, cudaStream_t stream) {
    const int V = dim / 4;
    const long long blocks = std::min<long long>((n + kBlock - 1) / kBlock, static_cast<long long>(sm_count()) * kBlocksPerSm);
    known_rows_kernel<<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(
        rows, n, reinterpret_cast<const float4*>(table), V, vec_shift_of(V), reinterpret_cast<float4*>(out));
    BENCH_CK(cudaGetLastError());
}

unsigned bulk_timeouts() {
    unsigned h = 0;
    BENCH_CK(cudaMemcpy(&h, timeout_counter(), sizeof(h), cudaMemcpyDeviceToHost));
    return h;
}

}  // namespace bench
