// gpu_driver.cpp: small end-to-end run of the C ABI for compute-sanitizer (memcheck, racecheck)
// and for a quick check without Python: writes two tables, one with scattered keys (hash index) and
// one keyed by row id (identity index), opens each resident and hierarchical, looks up int32/int64
// keys (hits, misses, absent keys) on 4 streams, compares with the CPU. Two batch sizes: 3000 keys
// (resident tables: the small-batch kernel) and 60000 (the main one).
//   usage: hps_gpu_driver <scratch dir> [rows] [dim]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "hps_plugin/hps.h"

#define CK(call)                                                                         \
    do {                                                                                 \
        cudaError_t e_ = (call);                                                         \
        if (e_ != cudaSuccess) {                                                         \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            std::exit(2);                                                                \
        }                                                                                \
    } while (0)
#define HK(call)                                                                          \
    do {                                                                                  \
        if ((call) != HPS_OK) {                                                           \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, hps_last_error()); \
            std::exit(3);                                                                 \
        }                                                                                 \
    } while (0)

// The two tables: t0 keys 5, 8, 11, ... (3r + 5: others are absent), t1 keys 0..rows-1.
struct Keying {
    bool identity;
    long long key_of(long long r) const { return identity ? r : 3 * r + 5; }
    // 20 % absent: between two keys of t0; below 0 or past the last row of t1.
    long long absent(int i, int rows) const { return identity ? (i % 2 ? rows + i : -1 - i) : 3LL * (i * 7 % rows) + 6; }
    long long row_of(long long k, int rows) const {
        if (identity) return k >= 0 && k < rows ? k : -1;
        return k >= 5 && (k - 5) % 3 == 0 && (k - 5) / 3 < rows ? (k - 5) / 3 : -1;
    }
};

// Looks up n keys on 4 streams in both models of a table and compares with the CPU; returns the
// mismatches.
int look_up_batches(const std::string& dir, Keying keying, int rows, int dim, const std::vector<float>& vecs, int n) {
    std::vector<long long> q64(n);
    std::vector<int> q32(n);
    for (int i = 0; i < n; ++i) {
        q64[i] = (i % 5 == 0) ? keying.absent(i, rows) : keying.key_of((i * 7919LL) % rows);
        q32[i] = static_cast<int>(q64[i]);
    }
    int failures = 0;
    const char* const models[2][2] = {{"res", "hier"}, {"res_id", "hier_id"}};
    for (const char* model : models[keying.identity]) {
        hps_table* t = nullptr;
        HK(hps_open((dir + "/hps.json").c_str(), model, 0, 0, &t));
        hps_table_info_t info{};
        HK(hps_table_info(t, &info));
        if (info.identity_keys != (keying.identity ? 1 : 0) && failures++ < 5)
            std::fprintf(stderr, "%s: identity_keys %d\n", model, info.identity_keys);
        const int S = 4;
        cudaStream_t st[S];
        long long* dk64 = nullptr;
        int* dk32 = nullptr;
        float* dout[S];
        CK(cudaMalloc(&dk64, n * 8));
        CK(cudaMalloc(&dk32, n * 4));
        CK(cudaMemcpy(dk64, q64.data(), n * 8, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dk32, q32.data(), n * 4, cudaMemcpyHostToDevice));
        for (int s = 0; s < S; ++s) {
            CK(cudaStreamCreateWithFlags(&st[s], cudaStreamNonBlocking));
            CK(cudaMalloc(&dout[s], static_cast<size_t>(n) * dim * 4));
        }
        for (int rep = 0; rep < 3; ++rep)
            for (int s = 0; s < S; ++s)
                HK(hps_lookup(t, (s % 2) ? static_cast<void*>(dk32) : static_cast<void*>(dk64), (s % 2) ? 32 : 64, n,
                              dout[s], st[s]));
        CK(cudaDeviceSynchronize());
        std::vector<float> got(static_cast<size_t>(n) * dim);
        for (int s = 0; s < S; ++s) {
            CK(cudaMemcpy(got.data(), dout[s], got.size() * 4, cudaMemcpyDeviceToHost));
            for (int i = 0; i < n; ++i) {
                const long long k = q64[i], r = keying.row_of(k, rows);
                for (int c = 0; c < dim; ++c) {
                    const float want = r >= 0 ? vecs[static_cast<size_t>(r) * dim + c] : -7.0f;
                    if (got[static_cast<size_t>(i) * dim + c] != want && failures++ < 5)
                        std::fprintf(stderr, "%s stream %d key %lld [%d]: got %f want %f\n", model, s, k, c,
                                     got[static_cast<size_t>(i) * dim + c], want);
                }
            }
        }
        std::vector<float> hout(static_cast<size_t>(n) * dim);
        HK(hps_lookup_host(t, q64.data(), 64, n, hout.data()));
        if (std::memcmp(hout.data(), got.data(), got.size() * 4) != 0) ++failures;
        HK(hps_lookup(t, dk64, 64, 0, nullptr, st[0]));  // n = 0
        hps_stats_t stats;
        HK(hps_stats(t, &stats));
        std::printf("%s: lookups %llu cache_hits %llu host_hits %llu not_found %llu insertions %llu evictions %llu\n",
                    model, (unsigned long long)stats.lookups, (unsigned long long)stats.cache_hits,
                    (unsigned long long)stats.host_hits, (unsigned long long)stats.not_found,
                    (unsigned long long)stats.insertions, (unsigned long long)stats.evictions);
        for (int s = 0; s < S; ++s) {
            CK(cudaStreamDestroy(st[s]));
            CK(cudaFree(dout[s]));
        }
        CK(cudaFree(dk64));
        CK(cudaFree(dk32));
        HK(hps_close(t));
    }
    return failures;
}

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s <scratch dir> [rows] [dim]\n", argv[0]);
        return 1;
    }
    const std::string dir = argv[1];
    const int rows = argc > 2 ? std::atoi(argv[2]) : 4096;
    const int dim = argc > 3 ? std::atoi(argv[3]) : 16;
    std::vector<float> vecs(static_cast<size_t>(rows) * dim);
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < dim; ++c) vecs[static_cast<size_t>(r) * dim + c] = static_cast<float>(r) * 0.5f + c;
    for (const Keying keying : {Keying{false}, Keying{true}}) {
        const std::string folder = dir + (keying.identity ? "/t1" : "/t0");
        std::filesystem::create_directories(folder);
        std::vector<long long> keys(rows);
        for (int r = 0; r < rows; ++r) keys[r] = keying.key_of(r);
        std::ofstream(folder + "/key", std::ios::binary).write(reinterpret_cast<char*>(keys.data()), rows * 8LL);
        std::ofstream(folder + "/emb_vector", std::ios::binary)
            .write(reinterpret_cast<char*>(vecs.data()), static_cast<long long>(vecs.size()) * 4);
    }
    std::ofstream config(dir + "/hps.json");
    config << R"({"supportlonglong": true, "models": [)";
    const char* const entries[4][3] = {{"res", "t0", "1.0"}, {"hier", "t0", "0.1"}, {"res_id", "t1", "1.0"},
                                       {"hier_id", "t1", "0.1"}};
    for (int m = 0; m < 4; ++m)
        config << (m ? "," : "") << R"(
      {"model": ")" << entries[m][0] << R"(", "sparse_files": [")" << entries[m][1]
               << R"("], "embedding_vecsize_per_table": [)" << dim
               << R"(], "default_value_for_each_table": [-7.0], "gpucacheper": )" << entries[m][2] << R"(,
       "deployed_device_list": [0], "maxnum_catfeature_query_per_table_per_sample": [1]})";
    config << "]}";
    config.close();

    int failures = 0;
    for (const Keying keying : {Keying{false}, Keying{true}})
        for (const int n : {3000, 60000}) failures += look_up_batches(dir, keying, rows, dim, vecs, n);
    std::printf("%s: %d mismatches\n", failures ? "FAILED" : "OK", failures);
    return failures ? 1 : 0;
}
