// lookup_peers.cu: our lookup against HierarchicalKV and cuCollections on the same keys and table
// (issues 15, 18). Built by bench/peers/build.sh; results go to BENCHMARKS.md and bench/LOOKUP_RESULTS.md.
//
//   lookup_peers --lib ours=build/plugin/libhps_plugin.so [--lib pre=OLD.so] --json out.json
//                [--hier-sweep ROWS:BLOCKS,...,copy_engine]
//
// For each dim: a table of `rows` keys (a bijection of the row ids onto [0, 2^62), so no system sees
// sequential keys) and random float32 vectors, generated on the GPU, and the same vectors keyed by
// their row ids (the identity-keyed table every rewrite exports; systems marked _identity or
// _idkeys are built over it and given row ids as keys); key sets of batch x hotness
// keys, uniform or Zipf(s) over rows (rank -> row by a fixed affine permutation), 4 sets rotated so
// repeats do not measure a warm L2. Every system is checked bit-exact against the table before it is
// timed. Times are medians of CUDA-event intervals around one lookup call, with a GPU spin kernel
// queued first so the start event fires once the host has enqueued the call: device time of one
// call, also at the latency sizes (1024 x hotness and 1 x hotness keys). Copy floor: keys + rows read + rows written at the bandwidth of a 2 GiB
// device-to-device copy measured in the same run. PCIe floor of a hierarchical batch: the distinct
// rows it looked up times the measured miss rate times the row size, at the bandwidth of a pinned
// host-to-device copy (copy engine) measured in the same run.
#include "bench.hpp"
#include "peer_config.hpp"

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <sstream>
#include <thread>

#include <thrust/device_ptr.h>
#include <thrust/execution_policy.h>
#include <thrust/scan.h>
#include <thrust/sequence.h>
#include <thrust/sort.h>
#include <thrust/unique.h>

#include "hps_plugin/hps.h"

namespace bench {
namespace {

// ---------------------------------------------------------------- options

struct Options {
    std::vector<int> dims{16, 32, 64, 128};
    long long rows = 32'700'000;
    long long batch = 131072;
    int hotness = 26;
    int reps = 20;
    int latency_reps = 200;
    int warmup_batches = 200;  // hierarchical tables, Zipf keys, before timing
    int fresh_batches = 10;    // hierarchical tables: timed batches, each of fresh keys
    std::vector<std::pair<std::string, std::string>> libs;  // name, path; the first is "ours"
    std::vector<int> compare_dims{128};                      // dims where the other libs run too
    std::vector<int> compare_hier_dims{32};
    std::vector<std::string> variants{"all"};
    std::vector<std::string> systems{"lib", "hier", "variants", "cuco", "hkv", "hkv_hybrid"};
    std::vector<std::string> hier_sweep;  // extra hierarchical runs: HPS_HOST_READ shapes, "copy_engine"
    std::string workdir = "/dev/shm/hps_peers";
    std::string json;
    bool profile = false;  // one call of each kernel of interest (for ncu), no timing
};

std::vector<std::string> split(const std::string& s, char sep) {
    std::vector<std::string> out;
    std::stringstream in(s);
    for (std::string item; std::getline(in, item, sep);)
        if (!item.empty()) out.push_back(item);
    return out;
}

std::vector<int> ints(const std::string& s) {
    std::vector<int> out;
    for (const std::string& x : split(s, ',')) out.push_back(std::stoi(x));
    return out;
}

Options parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto val = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "%s needs a value\n", a.c_str());
                std::exit(1);
            }
            return argv[++i];
        };
        if (a == "--dims") o.dims = ints(val());
        else if (a == "--rows") o.rows = std::stoll(val());
        else if (a == "--batch") o.batch = std::stoll(val());
        else if (a == "--hotness") o.hotness = std::stoi(val());
        else if (a == "--reps") o.reps = std::stoi(val());
        else if (a == "--latency-reps") o.latency_reps = std::stoi(val());
        else if (a == "--warmup-batches") o.warmup_batches = std::stoi(val());
        else if (a == "--fresh-batches") o.fresh_batches = std::stoi(val());
        else if (a == "--lib") {
            const std::string v = val();
            const auto eq = v.find('=');
            if (eq == std::string::npos) o.libs.emplace_back(o.libs.empty() ? "ours" : v, v);
            else o.libs.emplace_back(v.substr(0, eq), v.substr(eq + 1));
        } else if (a == "--compare-dims") o.compare_dims = ints(val());
        else if (a == "--compare-hier-dims") o.compare_hier_dims = ints(val());
        else if (a == "--variants") o.variants = split(val(), ',');
        else if (a == "--systems") o.systems = split(val(), ',');
        else if (a == "--hier-sweep") o.hier_sweep = split(val(), ',');
        else if (a == "--workdir") o.workdir = val();
        else if (a == "--json") o.json = val();
        else if (a == "--profile") o.profile = true;
        else {
            std::fprintf(stderr, "unknown option %s (see the top of lookup_peers.cu)\n", a.c_str());
            std::exit(1);
        }
    }
    return o;
}

bool wants(const Options& o, const char* system) {
    return std::find(o.systems.begin(), o.systems.end(), system) != o.systems.end();
}

// ---------------------------------------------------------------- table and keys

__host__ __device__ inline unsigned long long splitmix(unsigned long long x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

// A bijection of [0, 2^62): odd multipliers and xor-shifts modulo 2^62.
__host__ __device__ inline long long key_of_row(long long r) {
    constexpr unsigned long long kMask = (1ULL << 62) - 1;
    unsigned long long x = static_cast<unsigned long long>(r);
    x = (x * 0x9e3779b97f4a7c15ULL) & kMask;
    x ^= x >> 29;
    x = (x * 0xbf58476d1ce4e5b9ULL) & kMask;
    x ^= x >> 32;
    return static_cast<long long>(x);
}

__global__ void fill_table(long long rows, int dim, long long* keys, float* vectors) {
    const long long total = rows * dim;
    for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
         i += static_cast<long long>(gridDim.x) * blockDim.x) {
        const long long r = i / dim;
        const unsigned long long h = splitmix(static_cast<unsigned long long>(i) * 0x2545f4914f6cdd1dULL);
        vectors[i] = __uint_as_float(0x3f800000u | static_cast<unsigned>(h >> 41)) - 1.5f;  // [-0.5, 0.5)
        if (i % dim == 0) keys[r] = key_of_row(r);
    }
}

enum Dist { kUniform = 0, kZipf105, kZipf12, kNumDists };
const char* dist_name(int d) { return d == kUniform ? "uniform" : d == kZipf105 ? "zipf1.05" : "zipf1.2"; }
double dist_s(int d) { return d == kZipf105 ? 1.05 : 1.2; }

__global__ void zipf_weights(long long rows, double s, double* w) {
    for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < rows;
         i += static_cast<long long>(gridDim.x) * blockDim.x)
        w[i] = pow(static_cast<double>(i + 1), -s);
}

// rows[i], keys[i] for draw `seed`: uniform over rows, or Zipf by inverse CDF (cdf != null).
__global__ void draw_keys(unsigned long long seed, long long n, long long table_rows, const double* cdf,
                          long long perm_a, long long perm_b, int* rows, long long* keys, long long* ids) {
    for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<long long>(gridDim.x) * blockDim.x) {
        const unsigned long long h = splitmix(seed * 0x100000001b3ULL + static_cast<unsigned long long>(i));
        long long row;
        if (!cdf) {
            row = static_cast<long long>(__umul64hi(h, static_cast<unsigned long long>(table_rows)));
        } else {
            const double u = static_cast<double>(h >> 11) * 0x1.0p-53 * cdf[table_rows - 1];
            long long lo = 0, hi = table_rows - 1;  // first rank with cdf > u
            while (lo < hi) {
                const long long mid = (lo + hi) >> 1;
                if (cdf[mid] > u) hi = mid;
                else lo = mid + 1;
            }
            row = static_cast<long long>((static_cast<unsigned __int128>(lo) * perm_a + perm_b) % table_rows);
        }
        rows[i] = static_cast<int>(row);
        keys[i] = key_of_row(row);
        ids[i] = row;
    }
}

__global__ void count_mismatches(const float* out, const int* rows, long long n, const float* table, int dim,
                                 unsigned long long* bad) {
    unsigned long long mine = 0;
    for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n * dim;
         i += static_cast<long long>(gridDim.x) * blockDim.x) {
        const long long k = i / dim;
        const float want = table[static_cast<long long>(rows[k]) * dim + i % dim];
        mine += __float_as_uint(out[i]) != __float_as_uint(want);
    }
    if (mine) atomicAdd(bad, mine);
}

__global__ void spin(long long cycles) {
    const long long start = clock64();
    while (clock64() - start < cycles) {
    }
}

struct KeySet {
    int* rows = nullptr;
    long long* keys = nullptr;  // the scrambled table's keys of rows
    long long* ids = nullptr;   // the identity-keyed table's keys of rows (= rows)
    long long n = 0;
    const long long* for_system(const System& s) const { return s.identity_keys() ? ids : keys; }
};

class Keys {
public:
    Keys(long long table_rows, cudaStream_t s) : table_rows_(table_rows), s_(s) {
        // rank -> row: rank * a + b mod rows, a coprime with rows.
        perm_a_ = 2654435761LL % table_rows;
        while (std::gcd(perm_a_, table_rows) != 1) ++perm_a_;
        perm_b_ = table_rows / 3;
    }
    ~Keys() {
        for (auto& [d, c] : cdf_) BENCH_CK(cudaFree(c));
        for (KeySet& k : owned_) {
            BENCH_CK(cudaFree(k.rows));
            BENCH_CK(cudaFree(k.keys));
            BENCH_CK(cudaFree(k.ids));
        }
    }
    KeySet make(long long n) {
        KeySet k;
        k.n = n;
        BENCH_CK(cudaMalloc(&k.rows, n * sizeof(int)));
        BENCH_CK(cudaMalloc(&k.keys, n * sizeof(long long)));
        BENCH_CK(cudaMalloc(&k.ids, n * sizeof(long long)));
        owned_.push_back(k);
        return k;
    }
    void draw(int dist, unsigned long long seed, const KeySet& k) {
        const double* c = dist == kUniform ? nullptr : cdf(dist);
        draw_keys<<<1024, 256, 0, s_>>>(seed * 7 + dist, k.n, table_rows_, c, perm_a_, perm_b_, k.rows, k.keys, k.ids);
        BENCH_CK(cudaGetLastError());
    }
    // Share of draws that land on the `top` most probable rows (the static top-k hit rate).
    double top_share(int dist, long long top) {
        if (dist == kUniform) return static_cast<double>(top) / table_rows_;
        double at = 0, total = 0;
        BENCH_CK(cudaMemcpy(&at, cdf(dist) + std::max(0LL, top - 1), 8, cudaMemcpyDeviceToHost));
        BENCH_CK(cudaMemcpy(&total, cdf(dist) + table_rows_ - 1, 8, cudaMemcpyDeviceToHost));
        return top > 0 ? at / total : 0.0;
    }

private:
    const double* cdf(int dist) {
        auto it = cdf_.find(dist);
        if (it != cdf_.end()) return it->second;
        double* c = nullptr;
        BENCH_CK(cudaMalloc(&c, table_rows_ * sizeof(double)));
        zipf_weights<<<1024, 256, 0, s_>>>(table_rows_, dist_s(dist), c);
        thrust::inclusive_scan(thrust::cuda::par.on(s_), thrust::device_pointer_cast(c),
                               thrust::device_pointer_cast(c) + table_rows_, thrust::device_pointer_cast(c));
        cdf_[dist] = c;
        return c;
    }

    long long table_rows_;
    cudaStream_t s_;
    long long perm_a_ = 1, perm_b_ = 0;
    std::map<int, double*> cdf_;
    std::vector<KeySet> owned_;
};

// ---------------------------------------------------------------- our library through its C ABI

struct Lib {
    void* so = nullptr;
    std::string name, path, version;
    decltype(&hps_open) open;
    decltype(&hps_lookup) lookup;
    decltype(&hps_stats) stats;
    decltype(&hps_close) close;
    decltype(&hps_last_error) last_error;

    static Lib load(const std::string& name, const std::string& path) {
        Lib l;
        l.name = name;
        l.path = path;
        l.so = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (!l.so) {
            std::fprintf(stderr, "cannot load %s: %s\n", path.c_str(), dlerror());
            std::exit(1);
        }
        auto sym = [&](const char* s) {
            void* f = dlsym(l.so, s);
            if (!f) {
                std::fprintf(stderr, "%s: no symbol %s\n", path.c_str(), s);
                std::exit(1);
            }
            return f;
        };
        l.open = reinterpret_cast<decltype(&hps_open)>(sym("hps_open"));
        l.lookup = reinterpret_cast<decltype(&hps_lookup)>(sym("hps_lookup"));
        l.stats = reinterpret_cast<decltype(&hps_stats)>(sym("hps_stats"));
        l.close = reinterpret_cast<decltype(&hps_close)>(sym("hps_close"));
        l.last_error = reinterpret_cast<decltype(&hps_last_error)>(sym("hps_last_error"));
        l.version = reinterpret_cast<decltype(&hps_version)>(sym("hps_version"))();
        return l;
    }
};

class LibTable final : public System {
public:
    // label: the system's name after "ours_" (default: the model's name).
    LibTable(const Lib& lib, const std::string& config, const std::string& model, std::string label = "")
        : lib_(lib), model_(model), label_(label.empty() ? model : std::move(label)) {
        if (lib_.open(config.c_str(), model.c_str(), 0, 0, &h_) != HPS_OK) {
            std::fprintf(stderr, "%s: hps_open(%s): %s\n", lib_.name.c_str(), model.c_str(), lib_.last_error());
            std::exit(3);
        }
    }
    ~LibTable() override { lib_.close(h_); }
    std::string name() const override {
        return (lib_.name == "ours" ? std::string("ours") : "ours@" + lib_.name) + "_" + label_;
    }
    bool identity_keys() const override { return model_.find("identity") != std::string::npos; }
    void lookup(const long long* keys, int64_t n, float* out, cudaStream_t stream) override {
        if (lib_.lookup(h_, keys, 64, n, out, stream) != HPS_OK) {
            std::fprintf(stderr, "hps_lookup: %s\n", lib_.last_error());
            std::exit(3);
        }
    }
    hps_stats_t stats() const {
        hps_stats_t s{};
        lib_.stats(h_, &s);
        return s;
    }

private:
    const Lib& lib_;
    std::string model_, label_;
    hps_table* h_ = nullptr;
};

// HugeCTR sparse-model files of the table (key, emb_vector), written from the device table by 8
// threads, and of the identity-keyed table (keys 0..rows-1, the same emb_vector hard-linked); an
// hps_config.json with a resident (gpucacheper 1.0) and a hierarchical (0.2) model of each.
std::string write_table_files(const Options& o, const Table& t) {
    namespace fs = std::filesystem;
    const std::string dir = o.workdir + "/t" + std::to_string(t.dim), id_dir = dir + "_identity";
    fs::create_directories(dir);
    fs::create_directories(id_dir);
    auto write_fd = [](const std::string& path, size_t bytes) {
        const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
            std::fprintf(stderr, "cannot write %s\n", path.c_str());
            std::exit(1);
        }
        return fd;
    };
    auto dump = [&](const std::string& path, const void* dev, size_t bytes) {
        const int fd = write_fd(path, bytes);
        const size_t piece = size_t(64) << 20;
        const int threads = 8;
        std::vector<std::thread> pool;
        for (int w = 0; w < threads; ++w)
            pool.emplace_back([&, w] {
                void* host = nullptr;
                BENCH_CK(cudaMallocHost(&host, piece));
                for (size_t off = w * piece; off < bytes; off += threads * piece) {
                    const size_t m = std::min(piece, bytes - off);
                    BENCH_CK(cudaMemcpy(host, static_cast<const char*>(dev) + off, m, cudaMemcpyDeviceToHost));
                    if (pwrite(fd, host, m, static_cast<off_t>(off)) != static_cast<ssize_t>(m)) {
                        std::fprintf(stderr, "short write to %s\n", path.c_str());
                        std::exit(1);
                    }
                }
                BENCH_CK(cudaFreeHost(host));
            });
        for (auto& th : pool) th.join();
        ::close(fd);
    };
    dump(dir + "/key", t.keys, static_cast<size_t>(t.rows) * 8);
    dump(dir + "/emb_vector", t.vectors, static_cast<size_t>(t.rows) * t.dim * 4);
    {
        std::vector<long long> ids(static_cast<size_t>(t.rows));
        std::iota(ids.begin(), ids.end(), 0LL);
        const size_t bytes = ids.size() * 8;
        const int fd = write_fd(id_dir + "/key", bytes);
        if (pwrite(fd, ids.data(), bytes, 0) != static_cast<ssize_t>(bytes)) {
            std::fprintf(stderr, "short write to %s/key\n", id_dir.c_str());
            std::exit(1);
        }
        ::close(fd);
    }
    fs::create_hard_link(dir + "/emb_vector", id_dir + "/emb_vector");
    const std::string cfg = o.workdir + "/hps_config_" + std::to_string(t.dim) + ".json";
    std::ofstream(cfg) << peer_hps_config({{"resident", dir, 1.0},
                                           {"hier", dir, 0.2},
                                           {"resident_identity", id_dir, 1.0},
                                           {"hier_identity", id_dir, 0.2}},
                                          t.dim, o.batch, o.hotness);
    return cfg;
}

// Forwards to a system built over the identity-keyed table.
class IdentityKeyed final : public System {
public:
    explicit IdentityKeyed(std::unique_ptr<System> inner) : inner_(std::move(inner)) {}
    std::string name() const override { return inner_->name() + "_idkeys"; }
    std::string describe() const override { return inner_->describe(); }
    bool identity_keys() const override { return true; }
    void lookup(const long long* keys, int64_t n, float* out, cudaStream_t stream) override {
        inner_->lookup(keys, n, out, stream);
    }

private:
    std::unique_ptr<System> inner_;
};

}  // namespace

std::unique_ptr<System> over_identity_keys(std::unique_ptr<System> inner) {
    return std::make_unique<IdentityKeyed>(std::move(inner));
}

namespace {

// ---------------------------------------------------------------- measuring

struct Result {
    int dim;
    std::string dist, system, what;  // what: "batch", "latency1024", "latency1", "graph", ...
    long long n;
    double ms;
    long long mismatches;
    std::string note;
    double pcie_floor_ms = 0;  // hierarchical: the missed rows' bytes at the pinned copy's bandwidth
};

class Bench {
public:
    Bench(Options o) : o_(std::move(o)) {
        BENCH_CK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking));
        BENCH_CK(cudaMalloc(&bad_, sizeof(unsigned long long)));
        cudaDeviceProp prop;
        BENCH_CK(cudaGetDeviceProperties(&prop, 0));
        card_ = prop.name;
        int drv = 0, rt = 0;
        cudaDriverGetVersion(&drv);
        cudaRuntimeGetVersion(&rt);
        std::ostringstream v;
        v << "driver API " << drv / 1000 << "." << (drv % 1000) / 10 << ", runtime " << rt / 1000 << "."
          << (rt % 1000) / 10 << ", " << prop.multiProcessorCount << " SMs, L2 " << prop.l2CacheSize / (1 << 20)
          << " MiB, " << prop.totalGlobalMem / (1 << 30) << " GiB";
        versions_ = v.str();
        for (const auto& [name, path] : o_.libs) libs_.push_back(Lib::load(name, path));
    }

    int run() {
        std::printf("card: %s (%s)\n", card_.c_str(), versions_.c_str());
        for (const Lib& l : libs_) std::printf("library %s: %s (%s)\n", l.name.c_str(), l.path.c_str(), l.version.c_str());
        copy_bw_ = copy_bandwidth();
        std::printf("device-to-device copy: %.0f GB/s (read + write)\n", copy_bw_ / 1e9);
        h2d_bw_ = h2d_bandwidth();
        std::printf("pinned host-to-device copy: %.1f GB/s\n", h2d_bw_ / 1e9);
        for (int dim : o_.dims) run_dim(dim);
        if (!o_.json.empty()) write_json();
        summary();
        return failures_ ? 4 : 0;
    }

private:
    // Median time of `reps` copies of n bytes, after 3 warm-up copies.
    double median_copy_ms(void* dst, const void* src, size_t n, cudaMemcpyKind kind, int reps) {
        std::vector<float> t;
        for (int r = 0; r < reps + 3; ++r) {
            const float ms = timed([&] { BENCH_CK(cudaMemcpyAsync(dst, src, n, kind, s_)); });
            if (r >= 3) t.push_back(ms);
        }
        return median(t);
    }

    // A 2 GiB device-to-device copy, read + write: the copy floor's bandwidth.
    double copy_bandwidth() {
        const size_t n = size_t(2) << 30;
        void *a = nullptr, *b = nullptr;
        BENCH_CK(cudaMalloc(&a, n));
        BENCH_CK(cudaMalloc(&b, n));
        BENCH_CK(cudaMemsetAsync(a, 0x5a, n, s_));
        const double ms = median_copy_ms(b, a, n, cudaMemcpyDeviceToDevice, 20);
        BENCH_CK(cudaFree(a));
        BENCH_CK(cudaFree(b));
        return 2.0 * n / (ms * 1e-3);
    }

    // The copy engine moving 1 GiB of pinned host memory to the device: the PCIe floor's bandwidth.
    double h2d_bandwidth() {
        const size_t n = size_t(1) << 30;
        void *h = nullptr, *d = nullptr;
        BENCH_CK(cudaHostAlloc(&h, n, cudaHostAllocDefault));
        BENCH_CK(cudaMalloc(&d, n));
        std::memset(h, 0x5a, n);
        const double ms = median_copy_ms(d, h, n, cudaMemcpyHostToDevice, 10);
        BENCH_CK(cudaFree(d));
        BENCH_CK(cudaFreeHost(h));
        return n / (ms * 1e-3);
    }

    // Distinct rows of a key set (for the PCIe floor).
    long long distinct_rows(const KeySet& k) {
        int* tmp = nullptr;
        BENCH_CK(cudaMallocAsync(&tmp, k.n * sizeof(int), s_));
        BENCH_CK(cudaMemcpyAsync(tmp, k.rows, k.n * sizeof(int), cudaMemcpyDeviceToDevice, s_));
        auto first = thrust::device_pointer_cast(tmp);
        thrust::sort(thrust::cuda::par.on(s_), first, first + k.n);
        const long long d = thrust::unique(thrust::cuda::par.on(s_), first, first + k.n) - first;
        BENCH_CK(cudaFreeAsync(tmp, s_));
        BENCH_CK(cudaStreamSynchronize(s_));
        return d;
    }

    // Device time of what f enqueues: a ~100 us spin kernel goes first, so the host has enqueued all
    // of f's work (a peer's host-side calls included) by the time the start event fires.
    template <typename F>
    float timed(F&& f) {
        cudaEvent_t a, b;
        BENCH_CK(cudaEventCreate(&a));
        BENCH_CK(cudaEventCreate(&b));
        spin<<<1, 1, 0, s_>>>(200000);
        BENCH_CK(cudaEventRecord(a, s_));
        f();
        BENCH_CK(cudaEventRecord(b, s_));
        BENCH_CK(cudaEventSynchronize(b));
        float ms = 0;
        BENCH_CK(cudaEventElapsedTime(&ms, a, b));
        BENCH_CK(cudaEventDestroy(a));
        BENCH_CK(cudaEventDestroy(b));
        return ms;
    }

    static double median(std::vector<float> v) {
        std::sort(v.begin(), v.end());
        const size_t m = v.size() / 2;
        return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
    }

    double floor_ms(long long n, int dim) const { return (n * 8.0 + 2.0 * n * dim * 4.0) / copy_bw_ * 1e3; }

    long long mismatches(const KeySet& k, const float* out, const Table& t) {
        BENCH_CK(cudaMemsetAsync(bad_, 0, sizeof(unsigned long long), s_));
        count_mismatches<<<2048, 256, 0, s_>>>(out, k.rows, k.n, t.vectors, t.dim, bad_);
        unsigned long long h = 0;
        BENCH_CK(cudaMemcpyAsync(&h, bad_, sizeof(h), cudaMemcpyDeviceToHost, s_));
        BENCH_CK(cudaStreamSynchronize(s_));
        return static_cast<long long>(h);
    }

    void record(Result r) {
        const double fl = floor_ms(r.n, r.dim);
        std::printf("  %-9s %-28s %-12s n=%-8lld %9.4f ms  %6.3f Gkeys/s  %5.1f%% of floor%s%s\n", r.dist.c_str(),
                    r.system.c_str(), r.what.c_str(), r.n, r.ms, r.n / (r.ms * 1e-3) / 1e9, fl / r.ms * 100,
                    r.mismatches ? "  MISMATCHES " : "", r.note.empty() ? "" : ("  " + r.note).c_str());
        std::fflush(stdout);
        if (r.mismatches) ++failures_;
        results_.push_back(std::move(r));
    }

    // Exactness on every key set, then batch timings rotating the sets; latency at 1024 x hotness
    // and 1 x hotness when asked.
    void measure(System& sys, const Table& t, const std::vector<std::vector<KeySet>>& sets, float* out,
                 const std::vector<KeySet>* lat1024, const std::vector<KeySet>* lat1, int reps) {
        std::string desc = sys.describe();
        if (!desc.empty()) std::printf("  [%s] %s\n", sys.name().c_str(), desc.c_str());
        if (o_.profile) {  // one call per kernel of interest, for ncu: a uniform batch, a 1024 x 26 batch
            for (const KeySet* k : {&sets[kUniform][0], lat1024 ? &(*lat1024)[0] : nullptr}) {
                if (!k) continue;
                sys.lookup(k->for_system(sys), k->n, out, s_);
                const long long bad = mismatches(*k, out, t);
                std::printf("  profiled %s n=%lld: %s\n", sys.name().c_str(), k->n, bad ? "MISMATCHES" : "exact");
                failures_ += bad != 0;
            }
            return;
        }
        for (int d = 0; d < kNumDists; ++d) {
            long long bad = 0;
            for (const KeySet& k : sets[d]) {
                BENCH_CK(cudaMemsetAsync(out, 0xff, k.n * t.dim * 4, s_));  // NaN: unwritten rows fail
                sys.lookup(k.for_system(sys), k.n, out, s_);
                bad += mismatches(k, out, t);
            }
            for (int w = 0; w < 3; ++w) sys.lookup(sets[d][w % sets[d].size()].for_system(sys), sets[d][0].n, out, s_);
            std::vector<float> times;
            for (int r = 0; r < reps; ++r) {
                const KeySet& k = sets[d][r % sets[d].size()];
                times.push_back(timed([&] { sys.lookup(k.for_system(sys), k.n, out, s_); }));
            }
            record({t.dim, dist_name(d), sys.name(), "batch", sets[d][0].n, median(times), bad, ""});
        }
        for (const auto* lat : {lat1024, lat1}) {
            if (!lat) continue;
            long long bad = 0;
            for (const KeySet& k : *lat) {
                sys.lookup(k.for_system(sys), k.n, out, s_);
                bad += mismatches(k, out, t);
            }
            std::vector<float> times;
            for (int r = 0; r < o_.latency_reps + 20; ++r) {
                const KeySet& k = (*lat)[r % lat->size()];
                const float ms = timed([&] { sys.lookup(k.for_system(sys), k.n, out, s_); });
                if (r >= 20) times.push_back(ms);
            }
            record({t.dim, "uniform", sys.name(), lat == lat1024 ? "latency1024" : "latency1", (*lat)[0].n,
                    median(times), bad, ""});
        }
    }

    // Our gather loop on rows known in advance: the cost of the vectors alone.
    void measure_known_rows(const Table& t, const std::vector<std::vector<KeySet>>& sets, float* out) {
        for (int d = 0; d < kNumDists; ++d) {
            long long bad = 0;
            for (const KeySet& k : sets[d]) {
                BENCH_CK(cudaMemsetAsync(out, 0xff, k.n * t.dim * 4, s_));
                gather_known_rows(k.rows, k.n, t.vectors, t.dim, out, s_);
                bad += mismatches(k, out, t);
            }
            if (o_.profile) return;
            std::vector<float> times;
            for (int r = 0; r < o_.reps; ++r) {
                const KeySet& k = sets[d][r % sets[d].size()];
                times.push_back(timed([&] { gather_known_rows(k.rows, k.n, t.vectors, t.dim, out, s_); }));
            }
            record({t.dim, dist_name(d), "gather_rows_known", "batch", sets[d][0].n, median(times), bad,
                    "no hashing: rows given"});
        }
    }

    // One lookup captured in a CUDA graph; replayed with new keys copied into the captured buffer.
    void measure_graph(LibTable& sys, const Table& t, const std::vector<KeySet>& uniform, float* out) {
        const KeySet& k0 = uniform[0];
        long long* gkeys = nullptr;
        BENCH_CK(cudaMalloc(&gkeys, k0.n * 8));
        BENCH_CK(cudaMemcpyAsync(gkeys, k0.for_system(sys), k0.n * 8, cudaMemcpyDeviceToDevice, s_));
        sys.lookup(gkeys, k0.n, out, s_);
        BENCH_CK(cudaStreamSynchronize(s_));
        cudaGraph_t g;
        cudaGraphExec_t ge;
        BENCH_CK(cudaStreamBeginCapture(s_, cudaStreamCaptureModeThreadLocal));
        sys.lookup(gkeys, k0.n, out, s_);
        BENCH_CK(cudaStreamEndCapture(s_, &g));
        BENCH_CK(cudaGraphInstantiate(&ge, g, 0));
        long long bad = 0;
        for (size_t i = 1; i < uniform.size(); ++i) {
            BENCH_CK(cudaMemcpyAsync(gkeys, uniform[i].for_system(sys), k0.n * 8, cudaMemcpyDeviceToDevice, s_));
            BENCH_CK(cudaMemsetAsync(out, 0xff, k0.n * t.dim * 4, s_));
            BENCH_CK(cudaGraphLaunch(ge, s_));
            bad += mismatches(uniform[i], out, t);
        }
        std::vector<float> times;
        for (int r = 0; r < o_.reps; ++r) {
            BENCH_CK(cudaMemcpyAsync(gkeys, uniform[r % uniform.size()].for_system(sys), k0.n * 8,
                                     cudaMemcpyDeviceToDevice, s_));
            times.push_back(timed([&] { BENCH_CK(cudaGraphLaunch(ge, s_)); }));
        }
        record({t.dim, "uniform", sys.name(), "graph_replay", k0.n, median(times), bad, "keys copied in before each replay"});
        BENCH_CK(cudaGraphExecDestroy(ge));
        BENCH_CK(cudaGraphDestroy(g));
        BENCH_CK(cudaFree(gkeys));
    }

    // Hierarchical tables learn: warm up on fresh Zipf draws, then time fresh draws (re-used sets
    // would teach the cache their exact keys). For ours, the hit rate of the timed batches against
    // the static top-20% optimum, and the PCIe floor of the rows the misses read.
    void measure_hier(System& sys, LibTable* ours, const Table& t, Keys& keys, long long n, float* out) {
        std::string desc = sys.describe();
        if (!desc.empty()) std::printf("  [%s] %s\n", sys.name().c_str(), desc.c_str());
        KeySet k = keys.make(n);
        unsigned long long seed = 1'000'000ULL * t.dim;
        for (int d = 0; d < kNumDists; ++d) {
            const int warm = ours && d != kUniform ? o_.warmup_batches : 3;
            for (int w = 0; w < warm; ++w) {
                keys.draw(d, ++seed, k);
                sys.lookup(k.for_system(sys), n, out, s_);
            }
            BENCH_CK(cudaStreamSynchronize(s_));
            std::vector<float> times;
            long long bad = 0, hits = 0, looked = 0;
            double missed_distinct = 0;  // sum over the timed batches
            for (int r = 0; r < o_.fresh_batches; ++r) {
                keys.draw(d, ++seed, k);
                hps_stats_t s0{}, s1{};
                if (ours) {
                    BENCH_CK(cudaStreamSynchronize(s_));
                    s0 = ours->stats();
                }
                times.push_back(timed([&] { sys.lookup(k.for_system(sys), n, out, s_); }));
                if (ours) {
                    s1 = ours->stats();
                    hits += s1.cache_hits - s0.cache_hits;
                    looked += s1.lookups - s0.lookups;
                    const double miss_rate = static_cast<double>(s1.host_hits - s0.host_hits) /
                                             std::max<unsigned long long>(1, s1.lookups - s0.lookups);
                    missed_distinct += distinct_rows(k) * miss_rate;
                }
                if (r < 2) bad += mismatches(k, out, t);
            }
            std::string note;
            double pcie_ms = 0;
            if (ours) {
                const double rows_per_batch = missed_distinct / o_.fresh_batches;
                pcie_ms = rows_per_batch * t.dim * 4.0 / h2d_bw_ * 1e3;
                std::ostringstream s;
                s.precision(4);
                s << "hit rate " << static_cast<double>(hits) / std::max(1LL, looked) << " (static top-20% "
                  << keys.top_share(d, static_cast<long long>(std::ceil(0.2 * t.rows))) << "); ~"
                  << static_cast<long long>(rows_per_batch) << " distinct rows read from host, PCIe floor " << pcie_ms
                  << " ms";
                note = s.str();
            }
            Result res{t.dim, dist_name(d), sys.name(), "batch_fresh", n, median(times), bad, note};
            res.pcie_floor_ms = pcie_ms;
            record(std::move(res));
        }
    }

    void run_dim(int dim) {
        std::printf("\n=== dim %d: %lld rows (%.1f GB of vectors), batch %lld x %d ===\n", dim, o_.rows,
                    o_.rows * dim * 4.0 / 1e9, o_.batch, o_.hotness);
        long long* tkeys = nullptr;
        float* tvec = nullptr;
        BENCH_CK(cudaMalloc(&tkeys, o_.rows * 8));
        BENCH_CK(cudaMalloc(&tvec, static_cast<size_t>(o_.rows) * dim * 4));
        fill_table<<<4096, 256, 0, s_>>>(o_.rows, dim, tkeys, tvec);
        BENCH_CK(cudaGetLastError());
        const Table t{o_.rows, dim, tkeys, tvec};

        const long long n = o_.batch * o_.hotness;
        Keys keys(o_.rows, s_);
        std::vector<std::vector<KeySet>> sets(kNumDists);
        for (int d = 0; d < kNumDists; ++d)
            for (int i = 0; i < 4; ++i) {
                sets[d].push_back(keys.make(n));
                keys.draw(d, 100 + i, sets[d].back());
            }
        std::vector<KeySet> lat1024, lat1;
        for (int i = 0; i < 4; ++i) {
            lat1024.push_back(keys.make(1024LL * o_.hotness));
            keys.draw(kUniform, 200 + i, lat1024.back());
            lat1.push_back(keys.make(o_.hotness));
            keys.draw(kUniform, 300 + i, lat1.back());
        }
        float* out = nullptr;
        BENCH_CK(cudaMalloc(&out, static_cast<size_t>(n) * dim * 4));
        BENCH_CK(cudaStreamSynchronize(s_));
        std::printf("  floor: %.4f ms per batch (%.2f GB at %.0f GB/s); latency floors %.2f / %.3f us\n", floor_ms(n, dim),
                    (n * 8.0 + 2.0 * n * dim * 4) / 1e9, copy_bw_ / 1e9, floor_ms(1024LL * o_.hotness, dim) * 1e3,
                    floor_ms(o_.hotness, dim) * 1e3);

        const bool compare = std::find(o_.compare_dims.begin(), o_.compare_dims.end(), dim) != o_.compare_dims.end();
        const bool compare_hier =
            std::find(o_.compare_hier_dims.begin(), o_.compare_hier_dims.end(), dim) != o_.compare_hier_dims.end();
        std::string cfg;
        if (!libs_.empty() && !o_.profile && (wants(o_, "lib") || wants(o_, "hier"))) cfg = write_table_files(o_, t);
        if (!cfg.empty() && wants(o_, "lib"))
            for (size_t li = 0; li < libs_.size(); ++li) {
                if (li > 0 && !compare) continue;
                for (const char* model : {"resident", "resident_identity"}) {
                    LibTable res(libs_[li], cfg, model);
                    measure(res, t, sets, out, &lat1024, &lat1, o_.reps);
                    if (li == 0) measure_graph(res, t, sets[kUniform], out);
                }
            }
        if (wants(o_, "variants")) {
            measure_known_rows(t, sets, out);
            auto vs = make_our_variants(t, o_.variants, s_);
            for (auto& v : vs) measure(*v, t, sets, out, &lat1024, &lat1, o_.reps);
            if (bulk_timeouts()) {
                std::printf("  bulk-copy variants timed out waiting %u times: their figures are invalid\n", bulk_timeouts());
                ++failures_;
            }
        }
        if (wants(o_, "cuco")) {
            measure(*make_cuco(t, s_), t, sets, out, &lat1024, &lat1, o_.reps);
            long long* ids = nullptr;
            BENCH_CK(cudaMalloc(&ids, o_.rows * 8));
            thrust::sequence(thrust::cuda::par.on(s_), thrust::device_pointer_cast(ids),
                             thrust::device_pointer_cast(ids) + o_.rows, 0LL);
            {
                auto c = over_identity_keys(make_cuco(Table{o_.rows, dim, ids, tvec}, s_));
                measure(*c, t, sets, out, &lat1024, &lat1, o_.reps);
            }
            BENCH_CK(cudaFree(ids));
        }
        if (wants(o_, "hkv")) {
            auto h = make_hkv(t, 1.0, s_);
            measure(*h, t, sets, out, &lat1024, &lat1, o_.reps);
        }
        if (!cfg.empty() && wants(o_, "hier"))
            for (size_t li = 0; li < libs_.size(); ++li) {
                if (li > 0 && !compare_hier) continue;
                for (const char* model : {"hier", "hier_identity"}) {
                    LibTable hier(libs_[li], cfg, model);
                    measure_hier(hier, &hier, t, keys, n, out);
                }
            }
        if (!cfg.empty() && wants(o_, "hier"))
            for (const std::string& shape : o_.hier_sweep) {
                // Other walks of the miss list (HPS_HOST_READ) and the copy-engine path, identity keys.
                const bool ce = shape == "copy_engine";
                const char* var = ce ? "HPS_COPY_ENGINE_MIN_KEYS" : "HPS_HOST_READ";
                setenv(var, ce ? "0" : shape.c_str(), 1);
                {
                    LibTable hier(libs_[0], cfg, "hier_identity", "hier_identity_" + (ce ? shape : "r" + shape));
                    measure_hier(hier, &hier, t, keys, n, out);
                }
                unsetenv(var);
            }
        if (wants(o_, "hkv_hybrid") && !o_.profile) {
            auto h = make_hkv(t, 0.2, s_);
            measure_hier(*h, nullptr, t, keys, n, out);
        }
        if (!cfg.empty()) std::filesystem::remove_all(o_.workdir);
        BENCH_CK(cudaFree(out));
        BENCH_CK(cudaFree(tkeys));
        BENCH_CK(cudaFree(tvec));
    }

    const Result* find(int dim, const std::string& dist, const std::string& system, const std::string& what) const {
        for (const Result& r : results_)
            if (r.dim == dim && r.dist == dist && r.system == system && r.what == what) return &r;
        return nullptr;
    }

    void summary() {
        std::printf("\nsummary (%s; copy %.0f GB/s, pinned H2D %.1f GB/s): ms per batch of %lld keys "
                    "[peer time / ours]\n", card_.c_str(), copy_bw_ / 1e9, h2d_bw_ / 1e9, o_.batch * o_.hotness);
        auto ratio = [&](const Result* peer, const Result* ours) { return peer && ours ? peer->ms / ours->ms : 0.0; };
        for (int dim : o_.dims)
            for (int d = 0; d < kNumDists; ++d) {
                const std::string dist = dist_name(d);
                std::printf("dim %3d %-8s floor %.3f", dim, dist.c_str(), floor_ms(o_.batch * o_.hotness, dim));
                for (const auto& [ours_name, cuco_name] :
                     {std::pair{"ours_resident", "cuco_find_gather"}, {"ours_resident_identity", "cuco_find_gather_idkeys"}}) {
                    const Result* ours = find(dim, dist, ours_name, "batch");
                    const Result* cuco = find(dim, dist, cuco_name, "batch");
                    if (ours) std::printf(" | %s %.3f", ours_name, ours->ms);
                    if (cuco) std::printf(" | %s %.3f [%.2fx]", cuco_name, cuco->ms, ratio(cuco, ours));
                }
                const Result* hkv = find(dim, dist, "hkv_find_hbm", "batch");
                if (hkv) std::printf(" | hkv_find_hbm %.3f [%.2fx]", hkv->ms, ratio(hkv, find(dim, dist, "ours_resident", "batch")));
                const Result* hy = find(dim, dist, "hkv_find_hybrid", "batch_fresh");
                for (const char* h : {"ours_hier", "ours_hier_identity"}) {
                    const Result* hier = find(dim, dist, h, "batch_fresh");
                    if (hier)
                        std::printf(" | %s %.3f (PCIe floor %.3f) [HKV hybrid %.2fx]", h, hier->ms, hier->pcie_floor_ms,
                                    ratio(hy, hier));
                }
                if (hy) std::printf(" | hkv_hybrid %.3f", hy->ms);
                std::printf("\n");
            }
        for (int dim : o_.dims)
            for (const char* what : {"latency1024", "latency1"}) {
                std::printf("dim %3d %-11s", dim, what);
                for (const Result& r : results_)
                    if (r.dim == dim && r.what == what) std::printf(" %s %.1fus", r.system.c_str(), r.ms * 1e3);
                std::printf("\n");
            }
        std::printf("%s\n", failures_ ? "FAILED: mismatches or timeouts above" : "all lookups exact");
    }

    void write_json() {
        std::ofstream j(o_.json);
        j << "{\"card\": \"" << card_ << "\", \"versions\": \"" << versions_ << "\", \"copy_GBps\": " << copy_bw_ / 1e9
          << ", \"h2d_GBps\": " << h2d_bw_ / 1e9
          << ", \"rows\": " << o_.rows << ", \"batch\": " << o_.batch << ", \"hotness\": " << o_.hotness
          << ", \"libs\": [";
        for (size_t i = 0; i < libs_.size(); ++i)
            j << (i ? ", " : "") << "{\"name\": \"" << libs_[i].name << "\", \"version\": \"" << libs_[i].version << "\"}";
        j << "], \"results\": [\n";
        for (size_t i = 0; i < results_.size(); ++i) {
            const Result& r = results_[i];
            j << (i ? ",\n" : "") << " {\"dim\": " << r.dim << ", \"dist\": \"" << r.dist << "\", \"system\": \""
              << r.system << "\", \"what\": \"" << r.what << "\", \"n\": " << r.n << ", \"ms\": " << r.ms
              << ", \"floor_ms\": " << floor_ms(r.n, r.dim) << ", \"mismatches\": " << r.mismatches << ", \"note\": \""
              << r.note << "\", \"pcie_floor_ms\": " << r.pcie_floor_ms << "}";
        }
        j << "]}\n";
    }

    Options o_;
    cudaStream_t s_ = nullptr;
    unsigned long long* bad_ = nullptr;
    std::string card_, versions_;
    std::vector<Lib> libs_;
    double copy_bw_ = 0, h2d_bw_ = 0;
    std::vector<Result> results_;
    int failures_ = 0;
};

}  // namespace
}  // namespace bench

int main(int argc, char** argv) {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);  // a log that survives a timeout
    bench::Bench b(bench::parse(argc, argv));
    return b.run();
}
