// index_build.cuh: fills the key index (hash_probe.cuh) on the GPU when a table is loaded.
#pragma once

#include "hash_probe.cuh"

namespace hps {
namespace kernels {

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

}  // namespace kernels
}  // namespace hps
