// zero_copy_bench.cu: how fast can a kernel read mapped pinned host memory (the host tier) on this
// machine? Random 512-byte rows vs sequential, cudaHostAlloc vs THP-backed mmap + cudaHostRegister.
// Dev tool behind bench/LOOKUP_RESULTS.md; not part of the library.   usage: zero_copy_bench [GiB]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/mman.h>

#include <cuda_runtime.h>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { std::printf("%s: %s\n", #x, cudaGetErrorString(e)); std::exit(1); } } while (0)

__device__ unsigned long long mix(unsigned long long x) {
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL; x ^= x >> 27; x *= 0x94d049bb133111ebULL; return x ^ (x >> 31);
}

// Each warp reads `iters` rows of `row_bytes` (random or sequential), 16 B per lane.
__global__ void read_rows(const float4* base, unsigned long long rows, int row_vec, int iters, int random, float4* sink) {
    const int lane = threadIdx.x & 31;
    const unsigned long long warp = (blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x) >> 5;
    const unsigned long long nw = (gridDim.x * (unsigned long long)blockDim.x) >> 5;
    float4 acc = make_float4(0, 0, 0, 0);
    for (int it = 0; it < iters; it += 4) {
        float4 v[4][4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            unsigned long long idx = warp + (unsigned long long)(it + u) * nw;
            unsigned long long r = random ? mix(idx) % rows : idx % rows;
#pragma unroll
            for (int c = 0; c < 4; ++c)
                if (lane + 32 * c < row_vec) v[u][c] = __ldcg(base + r * row_vec + lane + 32 * c);
                else v[u][c] = make_float4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < 4; ++u)
#pragma unroll
            for (int c = 0; c < 4; ++c) { acc.x += v[u][c].x; acc.y += v[u][c].y; }
    }
    if (acc.x == 12345.f) sink[0] = acc;
}

template <int R>
__global__ void __launch_bounds__(256) read_rows_r(const float4* base, unsigned long long rows, int iters, float4* sink) {
    const int lane = threadIdx.x & 31;
    const unsigned long long warp = (blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x) >> 5;
    const unsigned long long nw = (gridDim.x * (unsigned long long)blockDim.x) >> 5;
    float4 acc = make_float4(0, 0, 0, 0);
    for (int it = 0; it < iters; it += R) {
        float4 v[R];
#pragma unroll
        for (int u = 0; u < R; ++u) v[u] = __ldcg(base + (mix(warp + (unsigned long long)(it + u) * nw) % rows) * 32 + lane);
#pragma unroll
        for (int u = 0; u < R; ++u) acc.x += v[u].x;
    }
    if (acc.x == 12345.f) sink[0] = acc;
}

template <int R>
static double run_r(const void* host, unsigned long long bytes, float4* sink) {
    void* dptr; CK(cudaHostGetDevicePointer(&dptr, const_cast<void*>(host), 0));
    int per_sm = 0; CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, read_rows_r<R>, 256, 0));
    const int blocks = 132 * per_sm, iters = 64;
    cudaEvent_t a, b; CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b));
    read_rows_r<R><<<blocks, 256>>>((const float4*)dptr, bytes / 512, iters, sink);
    CK(cudaDeviceSynchronize());
    CK(cudaEventRecord(a));
    for (int k = 0; k < 3; ++k) read_rows_r<R><<<blocks, 256>>>((const float4*)dptr, bytes / 512, iters, sink);
    CK(cudaEventRecord(b)); CK(cudaEventSynchronize(b));
    float ms; CK(cudaEventElapsedTime(&ms, a, b));
    std::printf("  R=%d rows in flight per warp, %d warps/SM: %.1f GB/s\n", R, per_sm * 8,
                3.0 * blocks * 8 * iters * 512 / (ms * 1e-3) / 1e9);
    return 0;
}

static double run(const void* host, unsigned long long bytes, int row_bytes, int random, float4* sink) {
    void* dptr; CK(cudaHostGetDevicePointer(&dptr, const_cast<void*>(host), 0));
    const int row_vec = row_bytes / 16;
    const unsigned long long rows = bytes / row_bytes;
    const int blocks = 132 * 8, threads = 256, iters = 32;
    cudaEvent_t a, b; CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b));
    read_rows<<<blocks, threads>>>((const float4*)dptr, rows, row_vec, iters, random, sink);
    CK(cudaDeviceSynchronize());
    CK(cudaEventRecord(a));
    for (int k = 0; k < 3; ++k) read_rows<<<blocks, threads>>>((const float4*)dptr, rows, row_vec, iters, random, sink);
    CK(cudaEventRecord(b)); CK(cudaEventSynchronize(b));
    float ms; CK(cudaEventElapsedTime(&ms, a, b));
    const double moved = 3.0 * blocks * threads / 32 * iters * (double)row_bytes;  // rows up to 2048 B
    return moved / (ms * 1e-3) / 1e9;
}

int main(int argc, char** argv) {
    const unsigned long long gib = argc > 1 ? std::atoll(argv[1]) : 16;
    const unsigned long long bytes = gib << 30;
    float4* sink; CK(cudaMalloc(&sink, 16));
    void* h1; CK(cudaHostAlloc(&h1, bytes, cudaHostAllocMapped | cudaHostAllocPortable));
    std::memset(h1, 1, bytes);
    for (int rb : {512, 2048})
        std::printf("cudaHostAlloc %llu GiB: %d-byte rows random %.1f GB/s, sequential %.1f GB/s\n", gib, rb,
                    run(h1, bytes, rb, 1, sink), run(h1, bytes, rb, 0, sink));
    std::printf("cudaHostAlloc first 1 GiB only: 512-byte rows random %.1f GB/s\n", run(h1, 1ULL << 30, 512, 1, sink));
    std::printf("cudaHostAlloc %llu GiB, 512-byte random rows, in-flight sweep:\n", gib);
    run_r<2>(h1, bytes, sink); run_r<4>(h1, bytes, sink); run_r<8>(h1, bytes, sink); run_r<16>(h1, bytes, sink);
    run_r<32>(h1, bytes, sink);
    CK(cudaFreeHost(h1));
    void* h2 = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (h2 == MAP_FAILED) { std::printf("mmap failed\n"); return 1; }
    const int adv = madvise(h2, bytes, MADV_HUGEPAGE);
    std::memset(h2, 1, bytes);
    CK(cudaHostRegister(h2, bytes, cudaHostRegisterMapped | cudaHostRegisterPortable));
    std::system("grep AnonHugePages /proc/meminfo");
    std::printf("THP mmap (madvise %d) + cudaHostRegister %llu GiB: 512-byte rows random %.1f GB/s, sequential %.1f GB/s\n",
                adv, gib, run(h2, bytes, 512, 1, sink), run(h2, bytes, 512, 0, sink));
    CK(cudaHostUnregister(h2));
    munmap(h2, bytes);
    return 0;
}
