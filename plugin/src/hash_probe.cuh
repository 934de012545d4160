// hash_probe.cuh: the key index's layout and hash, shared by the index build and the lookups.
//
// Open addressing, linear probing, 16-byte entries {int64 key, int32 row} (one probe touches one
// 32-byte sector), capacity a power of two >= 2 x rows. kEmptyKey marks a free slot; a table key
// equal to it is kept aside as the table's sentinel row.
#pragma once

#include <climits>

namespace hps {
namespace kernels {

constexpr long long kEmptyKey = LLONG_MIN;

struct alignas(16) Entry {
    long long key;
    int row;
    int pad;
};

__host__ __device__ __forceinline__ unsigned long long mix64(unsigned long long x) {
    // splitmix64 finaliser: spreads sequential keys (row ids are a common key scheme) over the table.
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

// First probe of key's hash slot (16 bytes: key + row in one sector); issued early, used later.
__device__ __forceinline__ longlong2 first_probe(const Entry* entries, unsigned long long mask, long long key) {
    const longlong2* e = reinterpret_cast<const longlong2*>(entries);
    return __ldg(e + (mix64(static_cast<unsigned long long>(key)) & mask));
}

// Row of key given the entry at its hash slot (continues linear probing if needed); -1 if absent.
__device__ __forceinline__ int probe_resolve(const Entry* entries, unsigned long long mask, int sentinel_row,
                                             long long key, longlong2 v) {
    if (key == kEmptyKey) return sentinel_row;
    unsigned long long h = mix64(static_cast<unsigned long long>(key)) & mask;
    const longlong2* e = reinterpret_cast<const longlong2*>(entries);
    while (true) {
        if (v.x == key) return static_cast<int>(v.y & 0xffffffffLL);
        if (v.x == kEmptyKey) return -1;
        h = (h + 1) & mask;
        v = __ldg(e + h);
    }
}

__device__ __forceinline__ int probe(const Entry* entries, unsigned long long mask, int sentinel_row, long long key) {
    return probe_resolve(entries, mask, sentinel_row, key, first_probe(entries, mask, key));
}

}  // namespace kernels
}  // namespace hps
