// table.cpp: what every Table does the same way, in terms of its own lookup().
#include "table.hpp"

#include "cuda_buffer.hpp"
#include "cuda_check.hpp"

namespace hps {

void Table::lookup_host(const void* keys, int key_bits, int64_t n, float* out) const {
    // Arguments the device lookup refuses (or n = 0) go to it unchanged, so each table answers them
    // with its own checks; past this, key_bits and n size the device copies.
    if ((key_bits != 32 && key_bits != 64) || n <= 0 || !keys || !out) {
        lookup(keys, key_bits, n, out, nullptr);
        return;
    }
    DeviceGuard guard(device());
    const size_t key_bytes = static_cast<size_t>(n) * static_cast<size_t>(key_bits / 8);
    const size_t out_floats = static_cast<size_t>(n) * static_cast<size_t>(dim());
    // Declared before the buffers, so it is destroyed after them (cudaFree waits for the device).
    Stream s = nonblocking_stream("lookup_host");
    DeviceBuffer<char> dkeys = device_buffer<char>(key_bytes, "lookup_host keys");
    DeviceBuffer<float> dout = device_buffer<float>(out_floats, "lookup_host output");
    HPS_CUDA(cudaMemcpyAsync(dkeys.get(), keys, key_bytes, cudaMemcpyHostToDevice, s.get()), "lookup_host");
    lookup(dkeys.get(), key_bits, n, dout.get(), s.get());
    HPS_CUDA(cudaMemcpyAsync(out, dout.get(), out_floats * sizeof(float), cudaMemcpyDeviceToHost, s.get()),
             "lookup_host (kernel or copy back)");
    HPS_CUDA(cudaStreamSynchronize(s.get()), "lookup_host (kernel or copy back)");
}

}  // namespace hps
