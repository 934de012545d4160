// peer_hkv.cu: HierarchicalKV (NVIDIA-Merlin) as a lookup system for the peer benchmark.
//
// The table is HKV's default throughput mode: LRU, 128-slot buckets, capacity the next power of
// two >= 2 x rows (load factor <= 0.5, HKV's own benchmark point; no key is evicted), Sm80 kernels
// (HKV has no Sm90 tuning). `find` copies each found key's value into the output buffer.
// Hybrid mode: max_hbm_for_vectors = hbm_share x (capacity x dim x 4 bytes); HKV places whole
// buckets, so that share of the keys has its values in HBM, the rest in mapped pinned host memory.
#include "bench.hpp"

#include <algorithm>
#include <sstream>

#include <merlin_hashtable.cuh>

namespace bench {
namespace {

using Key = uint64_t;  // HKV's benchmark key type; our keys are < 2^62, so the bits are the same
using HkvTable = nv::merlin::HashTable<Key, float, uint64_t, nv::merlin::EvictStrategy::kLru, nv::merlin::Sm80>;

class Hkv final : public System {
public:
    Hkv(const Table& t, double hbm_share, cudaStream_t stream) : dim_(t.dim), hbm_share_(hbm_share) {
        capacity_ = 128;
        while (capacity_ < 2 * static_cast<size_t>(t.rows)) capacity_ <<= 1;
        nv::merlin::HashTableOptions o;
        o.init_capacity = capacity_;
        o.max_capacity = capacity_;
        o.dim = static_cast<size_t>(t.dim);
        o.max_bucket_size = 128;
        const double value_bytes = static_cast<double>(capacity_) * t.dim * sizeof(float);
        o.max_hbm_for_vectors = static_cast<size_t>(hbm_share * value_bytes);
        hbm_bytes_ = o.max_hbm_for_vectors;
        table_ = std::make_unique<HkvTable>();
        table_->init(o);
        // Insert every row in batches.
        const int64_t batch = int64_t(1) << 22;
        for (int64_t r = 0; r < t.rows; r += batch) {
            const int64_t m = std::min(batch, t.rows - r);
            table_->insert_or_assign(static_cast<size_t>(m), reinterpret_cast<const Key*>(t.keys + r),
                                     t.vectors + r * t.dim, nullptr, stream);
        }
        BENCH_CK(cudaStreamSynchronize(stream));
        size_ = table_->size(stream);
        BENCH_CK(cudaStreamSynchronize(stream));
        if (static_cast<int64_t>(size_) != t.rows) {
            std::fprintf(stderr, "HKV holds %zu keys after inserting %lld (evictions?)\n", size_,
                         static_cast<long long>(t.rows));
            std::exit(3);
        }
    }
    ~Hkv() override {
        BENCH_CK(cudaFree(founds_));
    }

    std::string name() const override { return hbm_share_ >= 1.0 ? "hkv_find_hbm" : "hkv_find_hybrid"; }

    std::string describe() const override {
        std::ostringstream s;
        s << "HKV capacity " << capacity_ << " (load factor " << static_cast<double>(size_) / capacity_
          << "), values in HBM: " << hbm_bytes_ / 1e9 << " GB"
          << (hbm_share_ >= 1.0 ? " (all)" : " (hybrid, rest in pinned host memory)");
        return s.str();
    }

    void lookup(const long long* keys, int64_t n, float* out, cudaStream_t stream) override {
        if (n > founds_n_) {
            BENCH_CK(cudaFree(founds_));
            BENCH_CK(cudaMalloc(&founds_, static_cast<size_t>(n)));
            founds_n_ = n;
        }
        table_->find(static_cast<size_t>(n), reinterpret_cast<const Key*>(keys), out, founds_, nullptr, stream);
    }

private:
    int dim_;
    double hbm_share_;
    size_t capacity_ = 0, size_ = 0, hbm_bytes_ = 0;
    std::unique_ptr<HkvTable> table_;
    bool* founds_ = nullptr;
    int64_t founds_n_ = 0;
};

}  // namespace

std::unique_ptr<System> make_hkv(const Table& table, double hbm_share, cudaStream_t stream) {
    return std::make_unique<Hkv>(table, hbm_share, stream);
}

}  // namespace bench
