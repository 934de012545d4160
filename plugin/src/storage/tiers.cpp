// tiers.cpp: see tiers.hpp.
#include "tiers.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <thread>
#include <vector>

#include "host_table.hpp"
#include "publish.hpp"

namespace hps::storage {

// One background thread copying missed keys up into the volatile DB; drops work when more than
// a few batches are queued (elevation is an optimisation, lookups must not wait for it).
struct TierStack::Elevator {
    std::mutex mutex;
    std::condition_variable cv;
    std::deque<std::pair<std::vector<int64_t>, std::vector<float>>> queue;
    bool stop = false;
    std::thread thread;
};

namespace {

bool has_sparse_files(const std::string& dir) {
    struct stat st;
    return !dir.empty() && stat((dir + "/key").c_str(), &st) == 0 && stat((dir + "/emb_vector").c_str(), &st) == 0;
}

void initialize(Backend& db, const std::string& tag, int32_t dim, const std::string& sparse_dir) {
    std::fprintf(stderr, "hps: %s has no table %s; loading it from %s (initialize_after_startup)\n", db.name(),
                 tag.c_str(), sparse_dir.c_str());
    publish_rows(db, tag, sparse_dir, dim, 0, -1, 64 * 1024, nullptr);
}

bool exists(const std::string& path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0;
}

// Lookups open RocksDB as a secondary instance (no LOCK; `publish --update` may write meanwhile).
// A table missing there is first loaded through a short-lived primary instance when
// initialize_after_startup allows it, as HugeCTR loads its databases at startup.
std::unique_ptr<Backend> open_rocksdb_for_lookups(const PersistentDbParams& p, KeyWidth width, const std::string& tag,
                                                  int32_t dim, const std::string& sparse_dir) {
    PersistentDbParams sp = p;
    sp.secondary = true;
    const bool may_load = !p.read_only && p.initialize_after_startup && has_sparse_files(sparse_dir);
    if (may_load) {
        bool present = false;
        if (exists(p.path)) present = open_persistent(sp, width)->has_table(tag);
        if (!present) {
            PersistentDbParams pp = p;
            initialize(*open_persistent(pp, width), tag, dim, sparse_dir);
        }
    }
    return open_persistent(sp, width);
}

}  // namespace

TierStack::TierStack(const DbConfig& config, const std::string& tag, int32_t dim, float default_value,
                     const std::string& sparse_dir)
    : tag_(tag), dim_(dim), default_value_(default_value), cache_missed_(false) {
    const uint32_t value_size = static_cast<uint32_t>(dim) * 4;
    const VolatileDbParams& v = config.volatile_db;
    const PersistentDbParams& p = config.persistent_db;
    if (v.present && v.type == DbType::RedisCluster) {
        volatile_db_ = open_volatile(v, config.key_width);
        if (v.initialize_after_startup && has_sparse_files(sparse_dir) && !volatile_db_->has_table(tag))
            initialize(*volatile_db_, tag, dim, sparse_dir);
        volatile_db_->check_table(tag, value_size);
    }
    if (p.present && p.type == DbType::RocksDB) {
        persistent_db_ = open_rocksdb_for_lookups(p, config.key_width, tag, dim, sparse_dir);
        if (!persistent_db_->has_table(tag))
            throw Error(HPS_ERR_DATABASE, "RocksDB at " + p.path + " has no column family '" + tag +
                                              "'; publish the table there (hps-surgeon publish --persistent-db " +
                                              p.path + ")");
        persistent_db_->check_table(tag, value_size);
    }
    if (!volatile_db_ && !persistent_db_)
        throw Error(HPS_ERR_CONFIG, config.config_path + ": no database tier configured for table " + tag);
    if (volatile_db_ && !persistent_db_ && !volatile_db_->has_table(tag))
        throw Error(HPS_ERR_DATABASE, "the Redis Cluster at " + v.address + " holds no table " + tag +
                                          "; publish it there (hps-surgeon publish --volatile-db redis://" + v.address + ")");
    cache_missed_ = volatile_db_ && persistent_db_ && v.cache_missed_embeddings;
    if (cache_missed_) {
        elevator_ = std::make_unique<Elevator>();
        elevator_->thread = std::thread([this] {
            Elevator& e = *elevator_;
            std::unique_lock<std::mutex> lock(e.mutex);
            while (true) {
                e.cv.wait(lock, [&] { return e.stop || !e.queue.empty(); });
                if (e.queue.empty()) return;
                auto [keys, values] = std::move(e.queue.front());
                e.queue.pop_front();
                lock.unlock();
                try {
                    volatile_db_->insert(tag_, keys.size(), keys.data(), reinterpret_cast<const char*>(values.data()),
                                         static_cast<uint32_t>(dim_) * 4);
                    elevated_ += keys.size();
                } catch (const Error&) {
                    // The volatile DB is unavailable: the keys stay served by the persistent one.
                }
                lock.lock();
            }
        });
    }
}

TierStack::~TierStack() {
    if (elevator_) {
        {
            std::lock_guard<std::mutex> lock(elevator_->mutex);
            elevator_->stop = true;
        }
        elevator_->cv.notify_all();
        elevator_->thread.join();
    }
}

std::string TierStack::describe() const {
    std::string s;
    if (volatile_db_) s += volatile_db_->name();
    if (persistent_db_) s += std::string(s.empty() ? "" : " -> ") + persistent_db_->name();
    return s;
}

int64_t TierStack::rows() {
    size_t r = 0;
    if (volatile_db_) r = std::max(r, volatile_db_->size(tag_));
    if (persistent_db_) r = std::max(r, persistent_db_->size(tag_));
    return static_cast<int64_t>(r);
}

void TierStack::fetch(size_t n, const int64_t* keys, float* values, uint8_t* found) {
    if (n == 0) return;
    const uint32_t value_size = static_cast<uint32_t>(dim_) * 4;
    char* out = reinterpret_cast<char*>(values);
    std::vector<uint8_t> status(n, kMissing);
    uint64_t unavailable = 0, corrupt = 0;
    // Indices (into keys) still to be found, and which of them the volatile DB said it lacks.
    std::vector<size_t> todo(n);
    for (size_t i = 0; i < n; ++i) todo[i] = i;
    std::vector<uint8_t> volatile_missing;
    if (volatile_db_) {
        const FetchCounts c = volatile_db_->fetch(tag_, n, keys, value_size, out, status.data());
        volatile_hits_ += c.found;
        unavailable += c.unavailable, corrupt += c.corrupt;
        todo.clear();
        for (size_t i = 0; i < n; ++i)
            if (status[i] != kFound) todo.push_back(i);
        volatile_missing.resize(n);
        for (size_t i = 0; i < n; ++i) volatile_missing[i] = status[i] == kMissing;
    }
    if (persistent_db_ && !todo.empty()) {
        // Dense sub-batch for the next tier, scattered back afterwards.
        std::vector<int64_t> sub_keys(todo.size());
        for (size_t j = 0; j < todo.size(); ++j) sub_keys[j] = keys[todo[j]];
        std::vector<char> sub_values(todo.size() * value_size);
        std::vector<uint8_t> sub_status(todo.size(), kMissing);
        const FetchCounts c =
            persistent_db_->fetch(tag_, todo.size(), sub_keys.data(), value_size, sub_values.data(), sub_status.data());
        persistent_hits_ += c.found;
        unavailable += c.unavailable, corrupt += c.corrupt;
        std::vector<int64_t> up_keys;
        std::vector<float> up_values;
        for (size_t j = 0; j < todo.size(); ++j) {
            const size_t i = todo[j];
            status[i] = sub_status[j];
            if (sub_status[j] != kFound) continue;
            std::memcpy(out + i * value_size, sub_values.data() + j * value_size, value_size);
            if (cache_missed_ && volatile_missing[i]) {
                up_keys.push_back(keys[i]);
                const float* v = reinterpret_cast<const float*>(sub_values.data() + j * value_size);
                up_values.insert(up_values.end(), v, v + dim_);
            }
        }
        if (!up_keys.empty()) elevate(std::move(up_keys), std::move(up_values));
    }
    uint64_t defaults = 0;
    for (size_t i = 0; i < n; ++i) {
        if (found) found[i] = status[i] == kFound;
        if (status[i] == kFound) continue;
        std::fill(values + i * dim_, values + (i + 1) * dim_, default_value_);
        ++defaults;
    }
    defaults_ += defaults;
    if (unavailable || corrupt) note_degradation(unavailable, corrupt);
}

void TierStack::catch_up() {
    if (persistent_db_) persistent_db_->catch_up();
}

void TierStack::insert(size_t n, const int64_t* keys, const float* values) {
    const char* v = reinterpret_cast<const char*>(values);
    if (!volatile_db_)
        throw Error(HPS_ERR_DATABASE, "table " + tag_ + " has no volatile tier to update in-process; "
                                      "write RocksDB with hps-surgeon publish --update, then refresh");
    volatile_db_->insert(tag_, n, keys, v, static_cast<uint32_t>(dim_) * 4);
}

void TierStack::elevate(std::vector<int64_t> keys, std::vector<float> values) {
    std::lock_guard<std::mutex> lock(elevator_->mutex);
    if (elevator_->queue.size() >= 4) return;
    elevator_->queue.emplace_back(std::move(keys), std::move(values));
    elevator_->cv.notify_one();
}

void TierStack::note_degradation(uint64_t unavailable, uint64_t corrupt) {
    unavailable_ += unavailable;
    corrupt_ += corrupt;
    std::lock_guard<std::mutex> lock(log_mutex_);
    const auto now = std::chrono::steady_clock::now();
    if (now - last_log_ < std::chrono::seconds(1)) return;
    last_log_ = now;
    std::fprintf(stderr,
                 "hps: table %s degraded: %llu key lookups unanswered (database unreachable), %llu stored values of the "
                 "wrong length; served from the next tier or the default value (totals: %llu, %llu)\n",
                 tag_.c_str(), static_cast<unsigned long long>(unavailable), static_cast<unsigned long long>(corrupt),
                 static_cast<unsigned long long>(unavailable_.load()), static_cast<unsigned long long>(corrupt_.load()));
}

TierStats TierStack::stats() const {
    TierStats s;
    s.volatile_hits = volatile_hits_;
    s.persistent_hits = persistent_hits_;
    s.defaults = defaults_;
    s.unavailable = unavailable_;
    s.corrupt = corrupt_;
    s.elevated = elevated_;
    return s;
}

}  // namespace hps::storage
