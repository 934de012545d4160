// gpu_driver.cpp: small end-to-end run of the C ABI for compute-sanitizer (memcheck, racecheck)
// and for a quick check without Python: writes a table, opens it resident and hierarchical,
// looks up int32/int64 keys (hits, misses, absent keys) on 4 streams, compares with the CPU.
// Two batch sizes: 3000 keys (resident tables: the small-batch kernel) and 60000 (the main one).
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

// Looks up n keys on 4 streams in both models and compares with the CPU; returns the mismatches.
int look_up_batches(const std::string& dir, int rows, int dim, const std::vector<float>& vecs, int n) {
    std::vector<long long> q64(n);
    std::vector<int> q32(n);
    for (int i = 0; i < n; ++i) {
        q64[i] = (i % 5 == 0) ? 3LL * (i * 7 % rows) + 6 : 3LL * ((i * 7919LL) % rows) + 5;  // 20% absent
        q32[i] = static_cast<int>(q64[i]);
    }
    int failures = 0;
    for (const char* model : {"res", "hier"}) {
        hps_table* t = nullptr;
        HK(hps_open((dir + "/hps.json").c_str(), model, 0, 0, &t));
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
                const long long k = q64[i];
                const bool present = k >= 5 && (k - 5) % 3 == 0 && (k - 5) / 3 < rows;
                for (int c = 0; c < dim; ++c) {
                    const float want = present ? vecs[static_cast<size_t>((k - 5) / 3) * dim + c] : -7.0f;
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
    std::filesystem::create_directories(dir + "/t0");
    std::vector<long long> keys(rows);
    std::vector<float> vecs(static_cast<size_t>(rows) * dim);
    for (int r = 0; r < rows; ++r) {
        keys[r] = 3LL * r + 5;  // keys 5, 8, 11, ...: others are absent
        for (int c = 0; c < dim; ++c) vecs[static_cast<size_t>(r) * dim + c] = static_cast<float>(r) * 0.5f + c;
    }
    std::ofstream(dir + "/t0/key", std::ios::binary).write(reinterpret_cast<char*>(keys.data()), rows * 8LL);
    std::ofstream(dir + "/t0/emb_vector", std::ios::binary)
        .write(reinterpret_cast<char*>(vecs.data()), static_cast<long long>(vecs.size()) * 4);
    std::ofstream(dir + "/hps.json") << R"({"supportlonglong": true, "models": [
      {"model": "res", "sparse_files": ["t0"], "embedding_vecsize_per_table": [)" << dim
                                      << R"(], "default_value_for_each_table": [-7.0], "gpucacheper": 1.0,
       "deployed_device_list": [0], "maxnum_catfeature_query_per_table_per_sample": [1]},
      {"model": "hier", "sparse_files": ["t0"], "embedding_vecsize_per_table": [)" << dim
                                      << R"(], "default_value_for_each_table": [-7.0], "gpucacheper": 0.1,
       "deployed_device_list": [0], "maxnum_catfeature_query_per_table_per_sample": [1]}]})";

    int failures = 0;
    for (const int n : {3000, 60000}) failures += look_up_batches(dir, rows, dim, vecs, n);
    std::printf("%s: %d mismatches\n", failures ? "FAILED" : "OK", failures);
    return failures ? 1 : 0;
}
