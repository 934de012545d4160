// db_table.cu: see db_table.hpp.
#include "db_table.hpp"

#include <algorithm>
#include <type_traits>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <cub/device/device_radix_sort.cuh>

#include "cuda_buffer.hpp"
#include "db_kernels.cuh"
#include "storage/layout.hpp"
#include "storage/tiers.hpp"

namespace hps {

namespace {

constexpr int kThreads = 256;

int grid_for(long long warps, int sm_count) {
    const long long blocks = (warps * 32 + kThreads - 1) / kThreads;
    return static_cast<int>(std::max<long long>(1, std::min<long long>(blocks, static_cast<long long>(sm_count) * 16)));
}

// A work buffer grown to the largest lookup seen (device or pinned host memory).
template <typename T, bool kPinned>
struct Grown {
    std::unique_ptr<T[], std::conditional_t<kPinned, PinnedFree, DeviceFree>> buf;
    size_t cap = 0;
    T* at_least(size_t n, const char* what) {
        if (n > cap) {
            buf.reset();
            if constexpr (kPinned) buf = pinned_buffer<T>(n, cudaHostAllocDefault, what);
            else buf = device_buffer<T>(n, what);
            cap = n;
        }
        return buf.get();
    }
};
template <typename T>
using DeviceWork = Grown<T, false>;
template <typename T>
using PinnedWork = Grown<T, true>;

// Keys per kernel launch: miss-set slots and sort indices stay within 32 bits.
constexpr int64_t kSlice = int64_t(1) << 30;

}  // namespace

struct DbState {
    DeviceBuffer<long long> keys;
    DeviceBuffer<float> vectors;
    DeviceBuffer<unsigned> sketch;
    unsigned long long sketch_width = 0;
    DeviceBuffer<unsigned long long> counters;  // dbk::DbCounter
    PinnedBuffer<unsigned long long> h_counters;
    unsigned long long sets = 1;
    int dim = 0;
    // Work buffers of a lookup.
    DeviceWork<long long> miss_pos, miss_keys, miss_index, distinct;
    DeviceWork<unsigned long long> miss_slot;
    DeviceWork<float> values;
    DeviceWork<unsigned char> found;
    DeviceWork<unsigned> set_keys, set_keys_sorted, order, order_sorted;
    DeviceWork<char> sort_temp;
    PinnedWork<long long> h_distinct;
    PinnedWork<float> h_values;
    PinnedWork<unsigned char> h_found;
    dbk::CacheView view() const { return {keys.get(), vectors.get(), sets, dim}; }
    dbk::Sketch sketch_view() const { return {sketch.get(), sketch_width - 1}; }
};

DbTable::DbTable(const TableSpec& spec, const storage::DbConfig& db, int device)
    : spec_(spec), device_(device), key32_(db.key_width == storage::KeyWidth::k32) {
    for (const std::string* part : {&spec.model_name, &spec.table_name})
        if (!storage::valid_tag_part(*part))
            throw Error(HPS_ERR_CONFIG, spec.config_path + ": '" + *part +
                                            "' is not a valid HugeCTR table tag part ([A-Za-z0-9_-]{1,120}, "
                                            "hier_parameter_server.cpp:34); run hps-surgeon publish, which renames tables");
    tiers_ = std::make_unique<storage::TierStack>(db, storage::make_tag_name(spec.model_name, spec.table_name),
                                                  spec.emb_vec_size, spec.default_value, spec.sparse_dir);
    const int64_t rows = std::max<int64_t>(tiers_->rows(), 1);
    const double want = spec.gpucache ? spec.gpucacheper * static_cast<double>(rows) : 0.0;
    slots_ = std::max<int64_t>(dbk::kWays, static_cast<int64_t>(want + 0.999999));

    DeviceGuard guard(device);
    cudaDeviceProp prop;
    HPS_CUDA(cudaGetDeviceProperties(&prop, device), "db table");
    sm_count_ = prop.multiProcessorCount;
    auto s = std::make_unique<DbState>();
    s->dim = spec.emb_vec_size;
    s->sets = static_cast<unsigned long long>((slots_ + dbk::kWays - 1) / dbk::kWays);
    if (s->sets >= 0xffffffffULL)
        throw Error(HPS_ERR_CONFIG, spec.config_path + ": a GPU cache of " + std::to_string(slots_) +
                                        " slots for table '" + spec.table_name + "' is too large; lower gpucacheper");
    slots_ = static_cast<int64_t>(s->sets) * dbk::kWays;
    s->sketch_width = dbk::sketch_width(slots_);
    const std::string ctx = "GPU cache of table '" + spec.table_name + "' (" + tiers_->describe() + ")";
    s->keys = device_buffer<long long>(static_cast<size_t>(slots_), ctx);
    s->vectors = device_buffer<float>(static_cast<size_t>(slots_) * spec.emb_vec_size, ctx);
    s->sketch = device_buffer<unsigned>(s->sketch_width * dbk::kSketchRows, ctx + ", frequency sketch");
    s->counters = device_buffer<unsigned long long>(dbk::kNumDbCounters, ctx);
    s->h_counters = pinned_buffer<unsigned long long>(dbk::kNumDbCounters, cudaHostAllocDefault, ctx);
    HPS_CUDA(cudaMemset(s->sketch.get(), 0, s->sketch_width * dbk::kSketchRows * sizeof(unsigned)), ctx);
    dbk::clear_kernel<<<grid_for(slots_ / 32 + 1, sm_count_), kThreads>>>(s->keys.get(),
                                                                          static_cast<unsigned long long>(slots_), nullptr);
    HPS_CUDA(cudaGetLastError(), ctx);
    HPS_CUDA(cudaDeviceSynchronize(), ctx);
    s_ = std::move(s);

    const storage::RefreshParams refresh = storage::load_refresh_params(spec.config_path, spec.model_name);
    if (refresh.refresh_interval > 0 && refresh.cache_refresh_percentage_per_iteration > 0)
        refresh_thread_ = std::thread([this, refresh] { refresher(refresh); });
}

DbTable::~DbTable() {
    if (refresh_thread_.joinable()) {
        {
            std::lock_guard<std::mutex> lock(stop_mutex_);
            stop_ = true;
        }
        stop_cv_.notify_all();
        refresh_thread_.join();
    }
    DeviceGuard guard(device_, std::nothrow);
    s_.reset();
}

void DbTable::refresher(storage::RefreshParams params) {
    std::unique_lock<std::mutex> lock(stop_mutex_);
    auto wait = [&](double seconds) {
        return !stop_cv_.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return stop_; });
    };
    if (!wait(params.refresh_delay)) return;
    while (wait(params.refresh_interval)) {
        lock.unlock();
        try {
            refresh(params.cache_refresh_percentage_per_iteration);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "hps: refreshing table %s failed: %s\n", spec_.table_name.c_str(), e.what());
        }
        lock.lock();
    }
}

void DbTable::lookup(const void* keys, int key_bits, int64_t n, float* out, cudaStream_t stream) const {
    if (key_bits != 32 && key_bits != 64)
        throw Error(HPS_ERR_INVALID_ARGUMENT, "key_bits = " + std::to_string(key_bits) + ": keys must be int32 (32) or int64 (64)");
    if (n < 0) throw Error(HPS_ERR_INVALID_ARGUMENT, "n = " + std::to_string(n) + " is negative");
    if (n == 0) return;
    if (!keys || !out) throw Error(HPS_ERR_INVALID_ARGUMENT, "keys or out is NULL with n = " + std::to_string(n));
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceGuard guard(device_);
    for (int64_t off = 0; off < n; off += kSlice)
        lookup_slice(static_cast<const char*>(keys) + off * (key_bits / 8), key_bits, std::min(kSlice, n - off),
                     out + off * spec_.emb_vec_size, stream);
}

void DbTable::lookup_slice(const void* keys, int key_bits, int64_t n, float* out, cudaStream_t stream) const {
    DbState& s = *s_;
    const int dim = spec_.emb_vec_size;
    const size_t un = static_cast<size_t>(n);
    const unsigned epoch = ++epoch_;
    unsigned long long* counters = s.counters.get();
    unsigned long long* h = s.h_counters.get();

    // 1. cache hits on the GPU; the misses into the miss list and their distinct keys into a list.
    unsigned long long cap = 1024;
    while (cap < 2 * static_cast<unsigned long long>(n)) cap <<= 1;
    const dbk::MissSet miss_set{s.miss_keys.at_least(cap, "miss set"), s.miss_index.at_least(cap + 1, "miss set"),
                                cap - 1};
    long long* miss_pos = s.miss_pos.at_least(un, "miss positions");
    unsigned long long* miss_slot = s.miss_slot.at_least(un, "miss slots");
    long long* distinct = s.distinct.at_least(un, "distinct missed keys");
    HPS_CUDA(cudaMemsetAsync(counters, 0, dbk::kNumDbCounters * sizeof(unsigned long long), stream), "lookup");
    dbk::clear_kernel<<<grid_for(static_cast<long long>(cap / 32 + 1), sm_count_), kThreads, 0, stream>>>(
        miss_set.keys, cap, miss_set.index + cap);
    HPS_CUDA(cudaGetLastError(), "miss set clear launch");
    const int grid = grid_for(n, sm_count_);
    if (key_bits == 64)
        dbk::probe_kernel<long long><<<grid, kThreads, 0, stream>>>(s.view(), s.sketch_view(), miss_set,
                                                                    static_cast<const long long*>(keys), n, key32_, epoch,
                                                                    out, miss_pos, miss_slot, distinct, counters);
    else
        dbk::probe_kernel<int><<<grid, kThreads, 0, stream>>>(s.view(), s.sketch_view(), miss_set,
                                                              static_cast<const int*>(keys), n, key32_, epoch, out,
                                                              miss_pos, miss_slot, distinct, counters);
    HPS_CUDA(cudaGetLastError(), "cache probe launch");
    HPS_CUDA(cudaMemcpyAsync(h, counters, dbk::kNumDbCounters * sizeof(unsigned long long), cudaMemcpyDeviceToHost,
                             stream), "lookup");
    HPS_CUDA(cudaStreamSynchronize(stream), "cache probe");
    const long long misses = static_cast<long long>(h[dbk::kMisses]);
    const size_t u = static_cast<size_t>(h[dbk::kDistinct]);
    lookups_ += static_cast<uint64_t>(n);
    cache_hits_ += h[dbk::kHits];
    if (misses == 0) return;

    // 2. each distinct missed key fetched once from the tiers, on host threads.
    long long* h_distinct = s.h_distinct.at_least(u, "distinct missed keys (host)");
    float* h_values = s.h_values.at_least(u * dim, "fetched vectors (host)");
    unsigned char* h_found = s.h_found.at_least(u, "found flags (host)");
    HPS_CUDA(cudaMemcpyAsync(h_distinct, distinct, u * 8, cudaMemcpyDeviceToHost, stream), "missed keys");
    HPS_CUDA(cudaStreamSynchronize(stream), "missed keys");
    tiers_->fetch(u, reinterpret_cast<const int64_t*>(h_distinct), h_values, h_found);

    // 3. vectors in with the copy engine, scattered to the output, the found ones admitted.
    float* values = s.values.at_least(u * dim, "fetched vectors");
    unsigned char* found = s.found.at_least(u, "found flags");
    HPS_CUDA(cudaMemcpyAsync(values, h_values, u * dim * sizeof(float), cudaMemcpyHostToDevice, stream),
             "fetched vectors to the GPU");
    HPS_CUDA(cudaMemcpyAsync(found, h_found, u, cudaMemcpyHostToDevice, stream), "found flags");
    dbk::fill_kernel<<<grid_for(misses, sm_count_), kThreads, 0, stream>>>(values, found, miss_set.index, miss_slot,
                                                                           miss_pos, misses, dim, out, counters);
    HPS_CUDA(cudaGetLastError(), "fill launch");
    if (spec_.gpucache) admit(u, stream);
    HPS_CUDA(cudaMemcpyAsync(h, counters, dbk::kNumDbCounters * sizeof(unsigned long long), cudaMemcpyDeviceToHost,
                             stream), "lookup");
    // The work buffers are reused by the next lookup, which may run on another stream.
    HPS_CUDA(cudaStreamSynchronize(stream), "lookup (fill / admission)");
    tier_hits_ += h[dbk::kFoundPositions];
    not_found_ += static_cast<uint64_t>(misses) - h[dbk::kFoundPositions];
    insertions_ += h[dbk::kInserted];
    evictions_ += h[dbk::kEvicted];
}

// Offers the u fetched keys (s.distinct, s.values, s.found) to the cache, grouped by set.
void DbTable::admit(size_t u, cudaStream_t stream) const {
    DbState& s = *s_;
    unsigned* set_keys = s.set_keys.at_least(u, "admission sets");
    unsigned* order = s.order.at_least(u, "admission order");
    unsigned* set_keys_sorted = s.set_keys_sorted.at_least(u, "admission sets");
    unsigned* order_sorted = s.order_sorted.at_least(u, "admission order");
    dbk::candidates_kernel<<<grid_for(static_cast<long long>(u / 32 + 1), sm_count_), kThreads, 0, stream>>>(
        s.distinct.buf.get(), s.found.buf.get(), static_cast<long long>(u), s.sets, set_keys, order);
    HPS_CUDA(cudaGetLastError(), "admission launch");
    int end_bit = 1;
    while (end_bit < 32 && (s.sets >> end_bit) != 0) ++end_bit;  // keys go up to `sets` (not found)
    const int items = static_cast<int>(u);
    size_t temp_bytes = 0;
    HPS_CUDA(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, set_keys, set_keys_sorted, order, order_sorted, items,
                                             0, end_bit, stream),
             "admission sort");
    char* temp = s.sort_temp.at_least(std::max<size_t>(temp_bytes, 1), "admission sort");
    HPS_CUDA(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, set_keys, set_keys_sorted, order, order_sorted, items, 0,
                                             end_bit, stream),
             "admission sort");
    dbk::admit_kernel<<<grid_for(static_cast<long long>(u), sm_count_), kThreads, 0, stream>>>(
        s.view(), s.sketch_view(), s.distinct.buf.get(), s.values.buf.get(), set_keys_sorted, order_sorted,
        static_cast<long long>(u), s.counters.get());
    HPS_CUDA(cudaGetLastError(), "admission launch");
}

int64_t DbTable::refresh(double fraction) const {
    if (!(fraction > 0.0 && fraction <= 1.0))
        throw Error(HPS_ERR_INVALID_ARGUMENT, "refresh fraction " + std::to_string(fraction) + " must lie in (0, 1]");
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceGuard guard(device_);
    DbState& s = *s_;
    tiers_->catch_up();
    const unsigned long long count =
        std::max<unsigned long long>(1, static_cast<unsigned long long>(fraction * static_cast<double>(s.sets) + 0.5));
    const unsigned long long first = refresh_cursor_ % s.sets;
    const unsigned long long sets = std::min(count, s.sets - first);
    refresh_cursor_ = (first + sets) % s.sets;
    const size_t ways = static_cast<size_t>(sets) * dbk::kWays;
    Stream st = nonblocking_stream("refresh");
    std::vector<long long> keys(ways);
    HPS_CUDA(cudaMemcpyAsync(keys.data(), s.keys.get() + first * dbk::kWays, ways * 8, cudaMemcpyDeviceToHost, st.get()),
             "refresh");
    HPS_CUDA(cudaStreamSynchronize(st.get()), "refresh");
    std::vector<long long> slots, live;
    for (size_t i = 0; i < ways; ++i)
        if (keys[i] != dbk::kFree) slots.push_back(static_cast<long long>(first * dbk::kWays + i)), live.push_back(keys[i]);
    if (live.empty()) return 0;
    const int dim = spec_.emb_vec_size;
    std::vector<float> values(live.size() * dim);
    tiers_->fetch(live.size(), reinterpret_cast<const int64_t*>(live.data()), values.data());
    DeviceBuffer<long long> dslots = device_buffer<long long>(slots.size(), "refresh");
    DeviceBuffer<long long> dkeys = device_buffer<long long>(live.size(), "refresh");
    DeviceBuffer<float> dvalues = device_buffer<float>(values.size(), "refresh");
    HPS_CUDA(cudaMemcpyAsync(dslots.get(), slots.data(), slots.size() * 8, cudaMemcpyHostToDevice, st.get()), "refresh");
    HPS_CUDA(cudaMemcpyAsync(dkeys.get(), live.data(), live.size() * 8, cudaMemcpyHostToDevice, st.get()), "refresh");
    HPS_CUDA(cudaMemcpyAsync(dvalues.get(), values.data(), values.size() * 4, cudaMemcpyHostToDevice, st.get()), "refresh");
    dbk::refresh_kernel<<<grid_for(static_cast<long long>(live.size()), sm_count_), kThreads, 0, st.get()>>>(
        s.view(), dslots.get(), dkeys.get(), dvalues.get(), static_cast<long long>(live.size()));
    HPS_CUDA(cudaGetLastError(), "refresh launch");
    HPS_CUDA(cudaStreamSynchronize(st.get()), "refresh");
    return static_cast<int64_t>(live.size());
}

hps_stats_t DbTable::stats() const {
    hps_stats_t out{};
    out.lookups = lookups_;
    out.cache_hits = cache_hits_;
    out.host_hits = tier_hits_;
    out.not_found = not_found_;
    out.insertions = insertions_;
    out.evictions = evictions_;
    return out;
}

hps_tier_stats_t DbTable::tier_stats() const {
    const storage::TierStats t = tiers_->stats();
    return hps_tier_stats_t{t.volatile_hits, t.persistent_hits, t.defaults, t.unavailable, t.corrupt, t.elevated};
}

hps_table_info_t DbTable::info() const {
    hps_table_info_t i{};
    i.rows = tiers_->rows();
    i.dim = spec_.emb_vec_size;
    i.device = device_;
    i.cache_slots = slots_;
    i.resident = 0;
    i.default_value = spec_.default_value;
    return i;
}

}  // namespace hps
