// cuda_buffer.hpp: owning handles for device memory, pinned host memory and streams, each a
// std::unique_ptr with a deleter (the way cuCollections owns its storage), so every exit path of
// a constructor or a call releases what it allocated, and nothing is released twice.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include <cuda_runtime.h>

#include "cuda_check.hpp"

namespace hps {

struct DeviceFree {
    // cudaFree waits for in-flight kernels that may still read the buffer.
    void operator()(void* p) const noexcept { HPS_CUDA_NOEXCEPT(cudaFree(p)); }
};
struct PinnedFree {
    void operator()(void* p) const noexcept { HPS_CUDA_NOEXCEPT(cudaFreeHost(p)); }
};
struct StreamDestroy {
    void operator()(cudaStream_t s) const noexcept { HPS_CUDA_NOEXCEPT(cudaStreamDestroy(s)); }
};
struct MemPoolDestroy {
    // Allocations still outstanding are released by the runtime once they are freed.
    void operator()(cudaMemPool_t p) const noexcept { HPS_CUDA_NOEXCEPT(cudaMemPoolDestroy(p)); }
};

template <typename T>
using DeviceBuffer = std::unique_ptr<T[], DeviceFree>;
template <typename T>
using PinnedBuffer = std::unique_ptr<T[], PinnedFree>;
using Stream = std::unique_ptr<CUstream_st, StreamDestroy>;
using MemPool = std::unique_ptr<CUmemPoolHandle_st, MemPoolDestroy>;

// count elements of device memory (none for count 0); `what` names the buffer in the error.
template <typename T>
DeviceBuffer<T> device_buffer(size_t count, const std::string& what) {
    T* p = nullptr;
    if (count > 0) HPS_CUDA(cudaMalloc(&p, count * sizeof(T)), what + " (" + std::to_string(count * sizeof(T)) + " bytes)");
    return DeviceBuffer<T>(p);
}

// count elements of page-locked host memory; flags as for cudaHostAlloc.
template <typename T>
PinnedBuffer<T> pinned_buffer(size_t count, unsigned flags, const std::string& what) {
    T* p = nullptr;
    if (count > 0)
        HPS_CUDA(cudaHostAlloc(&p, count * sizeof(T), flags), what + " (" + std::to_string(count * sizeof(T)) + " bytes)");
    return PinnedBuffer<T>(p);
}

// A non-blocking stream: it does not wait for, or hold up, the legacy default stream.
inline Stream nonblocking_stream(const std::string& what) {
    cudaStream_t s = nullptr;
    HPS_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), what);
    return Stream(s);
}

// A stream-ordered memory pool on `device` that keeps what it was given (no release threshold):
// per-call scratch comes from it without a cudaMalloc, and in a CUDA graph capture its allocations
// become the graph's own memory nodes.
inline MemPool device_pool(int device, const std::string& what) {
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    cudaMemPool_t pool = nullptr;
    HPS_CUDA(cudaMemPoolCreate(&pool, &props), what);
    MemPool owned(pool);
    unsigned long long keep = ~0ULL;
    HPS_CUDA(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep), what);
    return owned;
}

// Stream-ordered scratch from a pool, freed (in stream order) when the scope ends, thrown out or not.
class PoolScratch {
public:
    PoolScratch(cudaMemPool_t pool, size_t bytes, cudaStream_t stream, const std::string& what) : stream_(stream) {
        HPS_CUDA(cudaMallocFromPoolAsync(&ptr_, bytes, pool, stream), what + " (" + std::to_string(bytes) + " bytes)");
    }
    ~PoolScratch() { HPS_CUDA_NOEXCEPT(cudaFreeAsync(ptr_, stream_)); }
    PoolScratch(const PoolScratch&) = delete;
    PoolScratch& operator=(const PoolScratch&) = delete;
    char* get() const { return static_cast<char*>(ptr_); }

private:
    void* ptr_ = nullptr;
    cudaStream_t stream_;
};

}  // namespace hps
