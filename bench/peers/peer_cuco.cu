// peer_cuco.cu: cuCollections' static_map as a lookup system for the peer benchmark: the hand-built
// alternative to an embedding cache. cuco::static_map<int64, int32> with its defaults (linear
// probing, 4-thread groups, its default hash) at load factor 0.5 maps key -> row; `find_async`
// writes the rows, then a gather kernel copies the rows' vectors: 32 lanes per row, each moving
// 16-byte pieces (rows with fewer than 32 pieces get that many lanes, so a warp still moves 512
// bytes per load).
#include "bench.hpp"

#include <sstream>

#include <cuco/static_map.cuh>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/transform_iterator.h>

namespace bench {
namespace {

using Map = cuco::static_map<long long, int>;

struct RowPair {
    const long long* keys;
    __host__ __device__ cuco::pair<long long, int> operator()(long long i) const {
        return {keys[i], static_cast<int>(i)};
    }
};

// One group of `lanes` threads per output row; row -1 (absent) gives zeros.
__global__ void gather_rows(const int* __restrict__ rows, long long n, const float4* __restrict__ table, int vec,
                            int lanes, float4* __restrict__ out) {
    const long long t = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    const long long i = t / lanes;
    if (i >= n) return;
    const int row = __ldg(rows + i);
    for (int c = static_cast<int>(t % lanes); c < vec; c += lanes)
        out[i * vec + c] = row >= 0 ? __ldg(table + static_cast<long long>(row) * vec + c) : make_float4(0, 0, 0, 0);
}

class Cuco final : public System {
public:
    Cuco(const Table& t, cudaStream_t stream)
        : table_(t),
          map_(cuco::extent<std::size_t>{2 * static_cast<std::size_t>(t.rows)}, cuco::empty_key<long long>{-1},
               cuco::empty_value<int>{-1}, {}, {}, {}, {}, {}, cuda::stream_ref{stream}) {
        if (t.dim % 4 != 0) {
            std::fprintf(stderr, "cuco gather: dim %d is not a multiple of 4\n", t.dim);
            std::exit(3);
        }
        auto pairs = thrust::make_transform_iterator(thrust::counting_iterator<long long>(0), RowPair{t.keys});
        inserted_ = map_.insert(pairs, pairs + t.rows, cuda::stream_ref{stream});
        if (static_cast<int64_t>(inserted_) != t.rows) {
            std::fprintf(stderr, "cuco inserted %zu of %lld keys\n", inserted_, static_cast<long long>(t.rows));
            std::exit(3);
        }
    }
    ~Cuco() override { BENCH_CK(cudaFree(rows_)); }

    std::string name() const override { return "cuco_find_gather"; }

    std::string describe() const override {
        std::ostringstream s;
        s << "cuco static_map capacity " << map_.capacity() << " (load factor "
          << static_cast<double>(inserted_) / map_.capacity() << ")";
        return s.str();
    }

    void lookup(const long long* keys, int64_t n, float* out, cudaStream_t stream) override {
        if (n > rows_n_) {
            BENCH_CK(cudaFree(rows_));
            BENCH_CK(cudaMalloc(&rows_, static_cast<size_t>(n) * sizeof(int)));
            rows_n_ = n;
        }
        map_.find_async(keys, keys + n, rows_, cuda::stream_ref{stream});
        const int vec = table_.dim / 4;
        const int lanes = vec < 32 ? vec : 32;
        const long long threads = n * lanes;
        gather_rows<<<static_cast<unsigned>((threads + 255) / 256), 256, 0, stream>>>(
            rows_, n, reinterpret_cast<const float4*>(table_.vectors), vec, lanes, reinterpret_cast<float4*>(out));
    }

private:
    Table table_;
    Map map_;
    size_t inserted_ = 0;
    int* rows_ = nullptr;
    int64_t rows_n_ = 0;
};

}  // namespace

std::unique_ptr<System> make_cuco(const Table& table, cudaStream_t stream) {
    return std::make_unique<Cuco>(table, stream);
}

}  // namespace bench
