// bench.hpp: what the peer benchmark's translation units share (issue 15). Each lookup system
// answers the same question: n int64 keys in device memory -> n x dim float32 rows in device
// memory, asynchronously on a stream.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#define BENCH_CK(call)                                                                                  \
    do {                                                                                                \
        const cudaError_t bench_err_ = (call);                                                          \
        if (bench_err_ != cudaSuccess) {                                                                \
            std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(bench_err_)); \
            std::exit(2);                                                                               \
        }                                                                                               \
    } while (0)

namespace bench {

// The table every system is built from: keys[r] (distinct, in [0, 2^62); or r itself, the identity-keyed
// table every rewrite exports) owns row r of vectors.
struct Table {
    int64_t rows = 0;
    int dim = 0;
    const long long* keys = nullptr;  // device, rows
    const float* vectors = nullptr;   // device, rows x dim
};

class System {
public:
    virtual ~System() = default;
    virtual std::string name() const = 0;
    // out[i] = vector of keys[i]; every key of the benchmark is present in the table.
    virtual void lookup(const long long* keys, int64_t n, float* out, cudaStream_t stream) = 0;
    // A line on what was built (memory, load factor, placement), for the log.
    virtual std::string describe() const { return ""; }
    // True when it is built over the identity-keyed table (key r owns row r) and so must be given
    // row ids as keys; false: the table's scrambled keys.
    virtual bool identity_keys() const { return false; }
};

// `inner`, built over the identity-keyed table, named name + "_idkeys".
std::unique_ptr<System> over_identity_keys(std::unique_ptr<System> inner);

// HierarchicalKV: values in HBM (hbm_share 1) or HKV's hybrid mode with hbm_share of the value
// storage in HBM and the rest in pinned host memory.
std::unique_ptr<System> make_hkv(const Table& table, double hbm_share, cudaStream_t stream);
// cuco::static_map<int64, int32> find (key -> row) + a gather kernel (32 lanes per row, or one
// lane per 16 bytes when the row has fewer than 32 of them).
std::unique_ptr<System> make_cuco(const Table& table, cudaStream_t stream);

// Our lookup kernels, instantiated here from plugin/src with their tuning as template arguments,
// over the same device table (resident layout: slot = row). `names` picks variants ("all" for all).
std::vector<std::unique_ptr<System>> make_our_variants(const Table& table, const std::vector<std::string>& names,
                                                       cudaStream_t stream);
std::vector<std::string> our_variant_names();
// out[i] = table row rows[i] with our gather loop, no hashing (the random-row gather ceiling).
void gather_known_rows(const int* rows, long long n, const float* table, int dim, float* out, cudaStream_t stream);
// How often a bulk-copy variant gave up waiting for its copies (must stay 0).
unsigned bulk_timeouts();

}  // namespace bench
