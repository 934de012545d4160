// test_db_admission.cu: the database-tier GPU cache's admission policy (db_admission.cuh), run on the
// host (no CUDA call: CPU-only CI runs it through ctest). A sequential model of one lookup
// (db_kernels.cuh: probe_kernel counts and probes every key, then admit_kernel offers the distinct
// missed keys set by set) over Zipf batches larger than the cache; its hit rate must come within
// two points of the static top-k optimum, as the host-memory tier's does (BENCHMARKS.md section 3).
//
//   test_db_admission [rows] [cache_ratio] [batch] [batches]   (defaults: 100000 0.1 100000 8)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <unordered_map>
#include <vector>

#include "check.hpp"
#include "db_admission.cuh"
#include "db_kernels.cuh"

namespace {

using namespace hps;

// Zipf(s) over ranks 0..rows-1, ranks mapped to random 63-bit keys.
struct Zipf {
    std::vector<double> cdf;
    std::vector<long long> keys;
    Zipf(long long rows, double s, std::mt19937_64& rng) : cdf(rows), keys(rows) {
        double sum = 0;
        for (long long r = 0; r < rows; ++r) cdf[r] = (sum += std::pow(static_cast<double>(r + 1), -s));
        for (double& c : cdf) c /= sum;
        for (long long& k : keys) k = static_cast<long long>(rng() >> 1);
    }
    long long draw(std::mt19937_64& rng) const {
        const double u = std::uniform_real_distribution<double>(0, 1)(rng);
        const size_t r = std::lower_bound(cdf.begin(), cdf.end(), u) - cdf.begin();
        return keys[std::min(r, keys.size() - 1)];
    }
    double topk(long long k) const { return k > 0 ? cdf[std::min<size_t>(k, cdf.size()) - 1] : 0.0; }
};

// The cache and sketch of one table, updated as the kernels update them (sequentially).
struct Model {
    unsigned long long sets;
    std::vector<long long> way_keys;
    std::vector<unsigned> counts;
    dbk::Sketch sketch;
    unsigned epoch = 0;

    explicit Model(long long slots)
        : sets((slots + dbk::kWays - 1) / dbk::kWays), way_keys(sets * dbk::kWays, dbk::kFree) {
        const unsigned long long width = dbk::sketch_width(static_cast<long long>(sets) * dbk::kWays);
        counts.assign(width * dbk::kSketchRows, 0);
        sketch = {counts.data(), width - 1};
    }

    void count(long long pos, long long key) {
        const unsigned f = dbk::estimate(sketch, key);
        if (!dbk::counts_lookup(f, dbk::sample_hash(pos, epoch, key))) return;
        for (int r = 0; r < dbk::kSketchRows; ++r) {
            unsigned& c = counts[dbk::sketch_index(sketch, key, r)];
            if (c == f) ++c;  // conservative update
        }
    }

    // One lookup; returns the hits.
    long long lookup(const std::vector<long long>& keys) {
        ++epoch;
        long long hits = 0;
        std::vector<long long> misses;
        std::unordered_map<long long, bool> seen;
        for (size_t i = 0; i < keys.size(); ++i) {
            count(static_cast<long long>(i), keys[i]);
            const long long* ways = &way_keys[dbk::set_of(keys[i], sets) * dbk::kWays];
            if (std::find(ways, ways + dbk::kWays, keys[i]) != ways + dbk::kWays) {
                ++hits;
            } else if (seen.emplace(keys[i], true).second) {
                misses.push_back(keys[i]);
            }
        }
        // Distinct misses grouped by set, in first-miss order within a set (a stable sort by set).
        std::stable_sort(misses.begin(), misses.end(), [&](long long a, long long b) {
            return dbk::set_of(a, sets) < dbk::set_of(b, sets);
        });
        for (long long key : misses) admit(key);
        return hits;
    }

    void admit(long long key) {
        long long* ways = &way_keys[dbk::set_of(key, sets) * dbk::kWays];
        int victim = -1;
        unsigned victim_f = 0;
        for (int w = 0; w < dbk::kWays; ++w) {
            if (ways[w] == dbk::kFree) {
                ways[w] = key;
                return;
            }
            const unsigned f = dbk::estimate(sketch, ways[w]);
            if (victim < 0 || f < victim_f) victim = w, victim_f = f;
        }
        if (dbk::admits(dbk::estimate(sketch, key), victim_f)) ways[victim] = key;
    }
};

void hit_rate_near_optimum(long long rows, double ratio, long long batch, int batches, double s) {
    std::mt19937_64 rng(42);
    const Zipf zipf(rows, s, rng);
    Model model(static_cast<long long>(ratio * static_cast<double>(rows)));
    const long long slots = static_cast<long long>(model.sets) * dbk::kWays;
    std::vector<long long> keys(batch);
    long long hits = 0, looked = 0;
    for (int b = 0; b < batches; ++b) {
        for (long long& k : keys) k = zipf.draw(rng);
        const long long h = model.lookup(keys);
        if (b >= 2) hits += h, looked += batch;  // after two warm-up batches
    }
    const double rate = static_cast<double>(hits) / static_cast<double>(looked);
    const double optimum = zipf.topk(slots);
    std::printf("zipf %.2f, %lld rows, %lld slots, batches of %lld: hit rate %.4f, static top-k optimum %.4f\n", s, rows,
                slots, batch, rate, optimum);
    CHECK(rate >= optimum - 0.02);
    CHECK(rate <= optimum + 0.01);  // a model that cannot beat the optimum by more than sampling noise
}

void sketch_never_underestimates_exact_counts() {
    // A cache of 8192 slots (sketch width 65536 per row) seeing 8192 distinct keys 24 times each on
    // average: the load per key of a cache that holds a tenth of the keys it is asked for.
    Model model(8192);
    std::mt19937_64 rng(7);
    std::unordered_map<long long, unsigned> truth;
    for (long long i = 0; i < 200000; ++i) {
        const long long key = static_cast<long long>(rng() % 8192);
        model.count(i, key);
        ++truth[key];
    }
    long long under = 0, excess = 0, exact_keys = 0;
    for (const auto& [key, n] : truth) {
        if (n >= hps::kernels::kExactCountBelow) continue;
        const unsigned f = dbk::estimate(model.sketch, key);
        under += f < n;
        excess += f > n ? f - n : 0;
        ++exact_keys;
    }
    std::printf("sketch: %lld keys counted exactly, mean excess %.3f\n", exact_keys,
                static_cast<double>(excess) / static_cast<double>(exact_keys));
    // Count-min never underestimates while every lookup is counted; collisions add little.
    CHECK(exact_keys > 1000);
    CHECK(under == 0);
    CHECK(excess * 4 < exact_keys);  // under a quarter of a count on average
}

void sampling_above_the_exact_range() {
    long long counted = 0;
    for (long long i = 0; i < 80000; ++i) counted += dbk::counts_lookup(1000, dbk::sample_hash(i, 3, 12345));
    CHECK(counted > 9000 && counted < 11000);  // about one in eight
    CHECK(dbk::counts_lookup(hps::kernels::kExactCountBelow - 1, 1));
    CHECK(!dbk::counts_lookup(hps::kernels::kFreqCap, 0));
    CHECK(dbk::admits(5, 4) && !dbk::admits(4, 4));
}

}  // namespace

int main(int argc, char** argv) {
    const long long rows = argc > 1 ? std::atoll(argv[1]) : 100000;
    const double ratio = argc > 2 ? std::atof(argv[2]) : 0.1;
    const long long batch = argc > 3 ? std::atoll(argv[3]) : 100000;
    const int batches = argc > 4 ? std::atoi(argv[4]) : 8;
    sketch_never_underestimates_exact_counts();
    sampling_above_the_exact_range();
    for (double s : {1.05, 1.2}) hit_rate_near_optimum(rows, ratio, batch, batches, s);
    if (g_failures) std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return g_failures;
}
