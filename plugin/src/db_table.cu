// db_table.cu: see db_table.hpp.
#include "db_table.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

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

// Distinct keys of a miss list and, per miss, the index of its key among them (open addressing).
void distinct(const long long* keys, size_t m, std::vector<long long>* uniq, std::vector<long long>* src) {
    size_t cap = 16;
    while (cap < 2 * m) cap <<= 1;
    std::vector<long long> slot_key(cap);
    std::vector<int64_t> slot_idx(cap, -1);
    uniq->clear();
    src->resize(m);
    for (size_t i = 0; i < m; ++i) {
        size_t h = kernels::mix64(static_cast<unsigned long long>(keys[i])) & (cap - 1);
        while (slot_idx[h] >= 0 && slot_key[h] != keys[i]) h = (h + 1) & (cap - 1);
        if (slot_idx[h] < 0) {
            slot_idx[h] = static_cast<int64_t>(uniq->size());
            slot_key[h] = keys[i];
            uniq->push_back(keys[i]);
        }
        (*src)[i] = slot_idx[h];
    }
}

template <typename T>
void grow_device(DeviceBuffer<T>& b, size_t& cap, size_t want, const char* what) {
    if (want <= cap) return;
    b = device_buffer<T>(want, what);
    cap = want;
}

template <typename T>
void grow_pinned(PinnedBuffer<T>& b, size_t& cap, size_t want, const char* what) {
    if (want <= cap) return;
    b = pinned_buffer<T>(want, cudaHostAllocDefault, what);
    cap = want;
}

}  // namespace

struct DbState {
    DeviceBuffer<long long> keys;
    DeviceBuffer<float> vectors;
    DeviceBuffer<unsigned> stamps;
    DeviceBuffer<unsigned long long> counters;  // miss count, hits, evictions
    unsigned long long sets = 1;
    // Work buffers, grown to the largest lookup seen.
    DeviceBuffer<long long> miss_keys, miss_pos, src, ukeys, order, begin;
    DeviceBuffer<float> values;
    size_t cap_miss = 0, cap_src = 0, cap_ukeys = 0, cap_order = 0, cap_begin = 0, cap_values = 0;
    PinnedBuffer<long long> h_miss, h_long;
    PinnedBuffer<float> h_values;
    PinnedBuffer<unsigned long long> h_counters;
    size_t cap_h_miss = 0, cap_h_long = 0, cap_h_values = 0;
    dbk::CacheView view() const { return {keys.get(), vectors.get(), stamps.get(), sets, dim}; }
    int dim = 0;
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
    slots_ = static_cast<int64_t>(s->sets) * dbk::kWays;
    const std::string ctx = "GPU cache of table '" + spec.table_name + "' (" + tiers_->describe() + ")";
    s->keys = device_buffer<long long>(static_cast<size_t>(slots_), ctx);
    s->stamps = device_buffer<unsigned>(static_cast<size_t>(slots_), ctx);
    s->vectors = device_buffer<float>(static_cast<size_t>(slots_) * spec.emb_vec_size, ctx);
    s->counters = device_buffer<unsigned long long>(3, ctx);
    s->h_counters = pinned_buffer<unsigned long long>(3, cudaHostAllocDefault, ctx);
    dbk::clear_kernel<<<grid_for(slots_ / 32 + 1, sm_count_), kThreads>>>(s->keys.get(), s->stamps.get(),
                                                                          static_cast<unsigned long long>(slots_));
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
    DbState& s = *s_;
    const int dim = spec_.emb_vec_size;
    const size_t un = static_cast<size_t>(n);
    if (un > s.cap_miss) {
        s.miss_keys = device_buffer<long long>(un, "miss list");
        s.miss_pos = device_buffer<long long>(un, "miss positions");
        s.cap_miss = un;
    }
    const unsigned epoch = ++epoch_;

    // 1. cache hits on the GPU, misses into a list.
    HPS_CUDA(cudaMemsetAsync(s.counters.get(), 0, 3 * sizeof(unsigned long long), stream), "lookup");
    const int grid = grid_for(n, sm_count_);
    if (key_bits == 64)
        dbk::probe_kernel<long long><<<grid, kThreads, 0, stream>>>(s.view(), static_cast<const long long*>(keys), n,
                                                                    key32_, epoch, out, s.miss_keys.get(), s.miss_pos.get(),
                                                                    s.counters.get(), s.counters.get() + 1);
    else
        dbk::probe_kernel<int><<<grid, kThreads, 0, stream>>>(s.view(), static_cast<const int*>(keys), n, key32_, epoch,
                                                              out, s.miss_keys.get(), s.miss_pos.get(), s.counters.get(),
                                                              s.counters.get() + 1);
    HPS_CUDA(cudaGetLastError(), "cache probe launch");
    HPS_CUDA(cudaMemcpyAsync(s.h_counters.get(), s.counters.get(), 2 * sizeof(unsigned long long),
                             cudaMemcpyDeviceToHost, stream), "lookup");
    HPS_CUDA(cudaStreamSynchronize(stream), "cache probe");
    const size_t misses = static_cast<size_t>(s.h_counters[0]);
    lookups_ += static_cast<uint64_t>(n);
    cache_hits_ += s.h_counters[1];
    if (misses == 0) return;

    // 2. distinct missed keys fetched from the tiers on host threads.
    grow_pinned(s.h_miss, s.cap_h_miss, misses, "miss list (host)");
    HPS_CUDA(cudaMemcpyAsync(s.h_miss.get(), s.miss_keys.get(), misses * 8, cudaMemcpyDeviceToHost, stream), "misses");
    HPS_CUDA(cudaStreamSynchronize(stream), "misses");
    std::vector<long long> uniq, src;
    distinct(s.h_miss.get(), misses, &uniq, &src);
    const size_t u = uniq.size();
    grow_pinned(s.h_values, s.cap_h_values, u * dim, "fetched vectors (host)");
    std::vector<uint8_t> found(u);
    tiers_->fetch(u, reinterpret_cast<const int64_t*>(uniq.data()), s.h_values.get(), found.data());
    uint64_t found_positions = 0;
    for (size_t m = 0; m < misses; ++m) found_positions += found[static_cast<size_t>(src[m])];
    tier_hits_ += found_positions;
    not_found_ += misses - found_positions;

    // 3. vectors in with the copy engine, scattered to the output, admitted to the cache grouped by
    // set (at most kWays keys per set: more could not stay anyway).
    std::vector<long long> order, begin;
    {
        std::vector<std::pair<unsigned long long, long long>> by_set;
        by_set.reserve(u);
        for (size_t i = 0; i < u; ++i)
            if (found[i]) by_set.emplace_back(dbk::set_of(uniq[i], s.sets), static_cast<long long>(i));
        std::sort(by_set.begin(), by_set.end());
        for (size_t i = 0; i < by_set.size();) {
            size_t j = i;
            while (j < by_set.size() && by_set[j].first == by_set[i].first) ++j;
            begin.push_back(static_cast<long long>(order.size()));
            for (size_t k = (j - i > static_cast<size_t>(dbk::kWays) ? j - dbk::kWays : i); k < j; ++k)
                order.push_back(by_set[k].second);
            i = j;
        }
        begin.push_back(static_cast<long long>(order.size()));
    }
    const size_t longs = misses + u + order.size() + begin.size();
    grow_pinned(s.h_long, s.cap_h_long, longs, "index lists (host)");
    long long* h = s.h_long.get();
    std::memcpy(h, src.data(), misses * 8);
    std::memcpy(h + misses, uniq.data(), u * 8);
    std::memcpy(h + misses + u, order.data(), order.size() * 8);
    std::memcpy(h + misses + u + order.size(), begin.data(), begin.size() * 8);
    grow_device(s.src, s.cap_src, misses, "miss sources");
    grow_device(s.ukeys, s.cap_ukeys, u, "distinct missed keys");
    grow_device(s.order, s.cap_order, std::max<size_t>(order.size(), 1), "admission order");
    grow_device(s.begin, s.cap_begin, begin.size(), "admission groups");
    grow_device(s.values, s.cap_values, u * dim, "fetched vectors");
    HPS_CUDA(cudaMemcpyAsync(s.values.get(), s.h_values.get(), u * dim * sizeof(float), cudaMemcpyHostToDevice, stream),
             "fetched vectors to the GPU");
    HPS_CUDA(cudaMemcpyAsync(s.src.get(), h, misses * 8, cudaMemcpyHostToDevice, stream), "miss sources");
    HPS_CUDA(cudaMemcpyAsync(s.ukeys.get(), h + misses, u * 8, cudaMemcpyHostToDevice, stream), "missed keys");
    if (!order.empty())
        HPS_CUDA(cudaMemcpyAsync(s.order.get(), h + misses + u, order.size() * 8, cudaMemcpyHostToDevice, stream), "order");
    HPS_CUDA(cudaMemcpyAsync(s.begin.get(), h + misses + u + order.size(), begin.size() * 8, cudaMemcpyHostToDevice,
                             stream), "groups");
    dbk::fill_kernel<<<grid_for(static_cast<long long>(misses), sm_count_), kThreads, 0, stream>>>(
        s.values.get(), s.src.get(), s.miss_pos.get(), static_cast<long long>(misses), dim, out);
    HPS_CUDA(cudaGetLastError(), "fill launch");
    const long long groups = static_cast<long long>(begin.size()) - 1;
    if (groups > 0 && spec_.gpucache) {
        dbk::admit_kernel<<<grid_for(groups, sm_count_), kThreads, 0, stream>>>(
            s.view(), s.ukeys.get(), s.values.get(), s.order.get(), s.begin.get(), groups, epoch, s.counters.get() + 2);
        HPS_CUDA(cudaGetLastError(), "admission launch");
        insertions_ += order.size();
    }
    HPS_CUDA(cudaMemcpyAsync(s.h_counters.get() + 2, s.counters.get() + 2, 8, cudaMemcpyDeviceToHost, stream), "lookup");
    // The staging buffers are reused by the next lookup, which may run on another stream.
    HPS_CUDA(cudaStreamSynchronize(stream), "lookup (fill / admission)");
    evictions_ += s.h_counters[2];
}

void DbTable::lookup_host(const void* keys, int key_bits, int64_t n, float* out) const {
    if (n <= 0 || !keys || !out) {
        lookup(keys, key_bits, n, out, nullptr);
        return;
    }
    DeviceGuard guard(device_);
    const size_t key_bytes = static_cast<size_t>(n) * static_cast<size_t>(key_bits / 8);
    const size_t out_floats = static_cast<size_t>(n) * static_cast<size_t>(spec_.emb_vec_size);
    Stream s = nonblocking_stream("lookup_host");
    DeviceBuffer<char> dkeys = device_buffer<char>(key_bytes, "lookup_host keys");
    DeviceBuffer<float> dout = device_buffer<float>(out_floats, "lookup_host output");
    HPS_CUDA(cudaMemcpyAsync(dkeys.get(), keys, key_bytes, cudaMemcpyHostToDevice, s.get()), "lookup_host");
    lookup(dkeys.get(), key_bits, n, dout.get(), s.get());
    HPS_CUDA(cudaMemcpyAsync(out, dout.get(), out_floats * sizeof(float), cudaMemcpyDeviceToHost, s.get()), "lookup_host");
    HPS_CUDA(cudaStreamSynchronize(s.get()), "lookup_host");
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
