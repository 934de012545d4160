// cuda_check.hpp: CUDA error handling of the lookup core.
//   HPS_CUDA(call, context)  throws hps::Error naming the call, the CUDA error and what it was for;
//   HPS_CUDA_NOEXCEPT(call)  for destructors and deleters, which can neither throw nor return: the
//                            failure goes to stderr and the runtime's last error is cleared, so it
//                            does not surface later in someone else's call;
//   DeviceGuard              sets the current device for a scope (a nothrow form for destructors).
#pragma once

#include <cstdio>
#include <new>
#include <string>

#include <cuda_runtime.h>

#include "host_table.hpp"  // hps::Error

namespace hps {

[[noreturn]] inline void throw_cuda(cudaError_t err, const char* what, const std::string& context) {
    cudaGetLastError();  // the error is reported here; later calls must not see it again
    const hps_status code = (err == cudaErrorMemoryAllocation) ? HPS_ERR_OUT_OF_MEMORY : HPS_ERR_CUDA;
    throw Error(code, std::string(what) + " failed: " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")" +
                          (context.empty() ? "" : "; " + context));
}

inline void report_cuda_noexcept(cudaError_t err, const char* what) noexcept {
    cudaGetLastError();
    // At process exit the runtime may already be gone; that is not worth a line.
    if (err != cudaErrorCudartUnloading)
        std::fprintf(stderr, "hps_plugin: %s failed: %s (%s)\n", what, cudaGetErrorName(err), cudaGetErrorString(err));
}

#define HPS_CUDA(call, context)                                            \
    do {                                                                   \
        const cudaError_t hps_err_ = (call);                               \
        if (hps_err_ != cudaSuccess) ::hps::throw_cuda(hps_err_, #call, context); \
    } while (0)

#define HPS_CUDA_NOEXCEPT(call)                                                  \
    do {                                                                         \
        const cudaError_t hps_err_ = (call);                                     \
        if (hps_err_ != cudaSuccess) ::hps::report_cuda_noexcept(hps_err_, #call); \
    } while (0)

// Sets the current device for the scope and restores the caller's afterwards (TensorRT and
// frameworks own the current device of their threads; we must not change it behind their back).
class DeviceGuard {
public:
    explicit DeviceGuard(int device) : previous_(current()) {
        if (previous_ == device) {
            previous_ = -1;  // nothing to restore
            return;
        }
        const cudaError_t err = cudaSetDevice(device);
        if (err != cudaSuccess) throw_cuda(err, "cudaSetDevice", "device " + std::to_string(device));
    }
    // For destructors: a device that cannot be selected is reported, not thrown.
    DeviceGuard(int device, std::nothrow_t) noexcept : previous_(current()) {
        if (previous_ == device) {
            previous_ = -1;
            return;
        }
        HPS_CUDA_NOEXCEPT(cudaSetDevice(device));
    }
    ~DeviceGuard() {
        if (previous_ >= 0) HPS_CUDA_NOEXCEPT(cudaSetDevice(previous_));
    }
    DeviceGuard(const DeviceGuard&) = delete;
    DeviceGuard& operator=(const DeviceGuard&) = delete;

private:
    static int current() noexcept {
        int device = -1;
        if (cudaGetDevice(&device) != cudaSuccess) {
            cudaGetLastError();
            device = -1;
        }
        return device;
    }

    int previous_;
};

}  // namespace hps
