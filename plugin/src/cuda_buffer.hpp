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

template <typename T>
using DeviceBuffer = std::unique_ptr<T[], DeviceFree>;
template <typename T>
using PinnedBuffer = std::unique_ptr<T[], PinnedFree>;
using Stream = std::unique_ptr<CUstream_st, StreamDestroy>;

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

}  // namespace hps
