// redis_backend.cpp: HugeCTR's RedisClusterBackend layout (src/hps/redis_backend.cpp,
// include/hps/redis_backend_detail.hpp) on our cluster client. Per table tag and partition p:
//   hps_et{<tag>/p<p>}v  hash: key bytes -> value bytes (float32 vector)
//   hps_et{<tag>/p<p>}t  hash: key bytes -> access metadata, only for overflow policies that need it
//                        (evict_least_used: HINCRBY count; evict_oldest: 8-byte time_t), as
//                        HCTR_HPS_REDIS_INSERT_ writes them (redis_backend_detail.hpp:436-468).
// Work fans out per partition on the shared thread pool; each partition's batches go to the node
// owning its slot as one pipeline.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <deque>
#include <mutex>
#include <random>
#include <thread>

#include <hiredis/hiredis.h>

#include "backend.hpp"
#include "host_table.hpp"
#include "redis_cluster.hpp"
#include "thread_pool.hpp"

namespace hps::storage {
namespace {

// A fetch splits a partition into pieces of at least this many keys (one pipeline each).
constexpr size_t kMinPieceKeys = 4096;

// Keys of one partition, as indices into the caller's arrays, plus their encoded bytes.
struct PartKeys {
    std::vector<size_t> index;
    std::vector<char> bytes;
};

std::vector<PartKeys> split_by_partition(size_t n, const int64_t* keys, KeyWidth width, size_t parts) {
    std::vector<PartKeys> out(parts);
    const size_t kw = static_cast<size_t>(width);
    for (size_t i = 0; i < n; ++i) {
        PartKeys& p = out[partition_of(keys[i], width, parts)];
        p.index.push_back(i);
        const size_t at = p.bytes.size();
        p.bytes.resize(at + kw);
        encode_key(keys[i], width, p.bytes.data() + at);
    }
    return out;
}

// Refreshes access metadata after fetches (HugeCTR's queue_metadata_refresh_, redis_backend.cpp:1051)
// on one background thread, so lookups never wait for it.
class MetadataToucher {
public:
    using Task = std::function<void()>;
    MetadataToucher() : thread_([this] { run(); }) {}
    ~MetadataToucher() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
        }
        cv_.notify_all();
        thread_.join();
    }
    void submit(Task t) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (queue_.size() < 1024) queue_.push_back(std::move(t));  // drop when far behind: metadata is best effort
        cv_.notify_one();
    }

private:
    void run() {
        std::unique_lock<std::mutex> lock(mutex_);
        while (true) {
            cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
            if (queue_.empty()) return;
            Task t = std::move(queue_.front());
            queue_.pop_front();
            lock.unlock();
            try {
                t();
            } catch (const std::exception&) {
                // Same as HugeCTR (HCTR_PRINT_REDIS_ERRORS_): a failed metadata refresh is not fatal.
            }
            lock.lock();
        }
    }
    std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<Task> queue_;
    bool stop_ = false;
    std::thread thread_;
};

class RedisBackend final : public Backend {
public:
    RedisBackend(const VolatileDbParams& p, KeyWidth width) : params_(p), width_(width) {
        if (p.enable_tls)
            throw Error(HPS_ERR_CONFIG, "volatile_db.enable_tls is true, but Debian's hiredis 0.14 has no TLS support; "
                                        "reach the cluster over a trusted network or a TLS tunnel (stunnel) and set "
                                        "enable_tls to false");
        RedisClusterOptions o;
        o.seeds = parse_addresses(p.address);
        o.user_name = p.user_name;
        o.password = p.password;
        o.connections_per_node = p.num_node_connections;
        cluster_ = std::make_unique<RedisCluster>(std::move(o));
    }

    const char* name() const override { return "redis_cluster"; }
    KeyWidth key_width() const override { return width_; }

    FetchCounts fetch(const std::string& tag, size_t n, const int64_t* keys, uint32_t value_size, char* values,
                      uint8_t* status) override {
        const size_t parts = params_.num_partitions;
        const auto split = split_by_partition(n, keys, width_, parts);
        const size_t kw = static_cast<size_t>(width_);
        // Each partition's keys in pieces, one pipeline (and connection) per piece, so that all host
        // threads parse replies even when there are fewer partitions than threads.
        struct Piece {
            size_t part, begin, end;
        };
        std::vector<Piece> pieces;
        const size_t threads = ThreadPool::shared().size();
        for (size_t part = 0; part < parts; ++part) {
            const size_t count = split[part].index.size();
            const size_t want = std::min((threads + parts - 1) / parts, (count + kMinPieceKeys - 1) / kMinPieceKeys);
            for (size_t k = 0; k < want; ++k) pieces.push_back({part, count * k / want, count * (k + 1) / want});
        }
        ThreadPool::shared().parallel_for(pieces.size(), [&](size_t task) {
            const Piece piece = pieces[task];
            const PartKeys& pk = split[piece.part];
            const std::string hkey = redis_hash_key(tag, piece.part, 'v');
            std::vector<Command> cmds;
            for (size_t b = piece.begin; b < piece.end; b += params_.max_batch_size) {
                Command c;
                c.add("HMGET", 5);
                c.add(hkey);
                for (size_t i = b; i < std::min(piece.end, b + params_.max_batch_size); ++i)
                    c.add(pk.bytes.data() + i * kw, kw);
                cmds.push_back(std::move(c));
            }
            std::vector<Reply> replies;
            try {
                replies = cluster_->exec(key_slot(hkey), cmds);
            } catch (const NodeUnavailable&) {
                for (size_t j = piece.begin; j < piece.end; ++j) status[pk.index[j]] = kUnavailable;
                return;
            }
            size_t at = piece.begin;
            for (const Reply& r : replies) {
                const size_t count = std::min(piece.end - at, params_.max_batch_size);
                for (size_t j = 0; j < count; ++j) {
                    const size_t i = pk.index[at + j];
                    const redisReply* e =
                        (r && r->type == REDIS_REPLY_ARRAY && j < r->elements) ? r->element[j] : nullptr;
                    if (!e) {
                        status[i] = kCorrupt;  // e.g. WRONGTYPE: the hash name holds something else
                    } else if (e->type == REDIS_REPLY_NIL) {
                        status[i] = kMissing;
                    } else if (e->type == REDIS_REPLY_STRING && e->len == value_size) {
                        std::memcpy(values + i * value_size, e->str, value_size);
                        status[i] = kFound;
                    } else {
                        status[i] = kCorrupt;
                    }
                }
                at += count;
            }
            if (params_.overflow_policy != OverflowPolicy::EvictRandom)
                touch(tag, piece.part, pk, piece.begin, piece.end, status);
        });
        return FetchCounts::of(n, status);
    }

    size_t insert(const std::string& tag, size_t n, const int64_t* keys, const char* values,
                  uint32_t value_size) override {
        const size_t parts = params_.num_partitions;
        const auto split = split_by_partition(n, keys, width_, parts);
        const size_t kw = static_cast<size_t>(width_);
        std::atomic<size_t> inserted{0};
        ThreadPool::shared().parallel_for(parts, [&](size_t part) {
            const PartKeys& pk = split[part];
            if (pk.index.empty()) return;
            const std::string hkey = redis_hash_key(tag, part, 'v');
            const std::string mkey = redis_hash_key(tag, part, 't');
            const time_t now = std::time(nullptr);
            std::vector<std::string> counts_one;
            size_t part_size = 0;
            for (size_t b = 0; b < pk.index.size(); b += params_.max_batch_size) {
                const size_t e = std::min(pk.index.size(), b + params_.max_batch_size);
                std::vector<Command> cmds;
                Command hset;
                hset.add("HSET", 4);
                hset.add(hkey);
                Command meta;
                if (params_.overflow_policy == OverflowPolicy::EvictOldest) {
                    meta.add("HSET", 4);
                    meta.add(mkey);
                }
                for (size_t i = b; i < e; ++i) {
                    const char* k = pk.bytes.data() + i * kw;
                    hset.add(k, kw);
                    hset.add(values + pk.index[i] * value_size, value_size);
                    if (params_.overflow_policy == OverflowPolicy::EvictOldest) {
                        meta.add(k, kw);
                        meta.add(reinterpret_cast<const char*>(&now), sizeof(time_t));
                    } else if (params_.overflow_policy == OverflowPolicy::EvictLeastUsed) {
                        Command inc;
                        inc.add("HINCRBY", 7);
                        inc.add(mkey);
                        inc.add(k, kw);
                        inc.add("1", 1);
                        cmds.push_back(std::move(inc));
                    }
                }
                if (!meta.argv.empty()) cmds.push_back(std::move(meta));
                cmds.push_back(std::move(hset));
                Command hlen;
                hlen.add("HLEN", 4);
                hlen.add(hkey);
                cmds.push_back(std::move(hlen));
                std::vector<Reply> replies;
                try {
                    replies = cluster_->exec(key_slot(hkey), cmds);
                } catch (const NodeUnavailable& ex) {
                    throw Error(HPS_ERR_DATABASE, "writing " + hkey + ": " + ex.what());
                }
                for (const Reply& r : replies)
                    if (!r || r->type == REDIS_REPLY_ERROR)
                        throw Error(HPS_ERR_DATABASE, "writing " + hkey + " failed: " +
                                                          (r ? std::string(r->str, r->len) : std::string("no reply")));
                inserted += static_cast<size_t>(std::max(0LL, replies[replies.size() - 2]->integer));
                part_size = static_cast<size_t>(std::max(0LL, replies.back()->integer));
                if (part_size > params_.overflow_margin) resolve_overflow(tag, part, part_size);
            }
        });
        return inserted;
    }

    size_t evict(const std::string& tag, size_t n, const int64_t* keys) override {
        const size_t parts = params_.num_partitions;
        const auto split = split_by_partition(n, keys, width_, parts);
        const size_t kw = static_cast<size_t>(width_);
        std::atomic<size_t> deleted{0};
        ThreadPool::shared().parallel_for(parts, [&](size_t part) {
            const PartKeys& pk = split[part];
            if (pk.index.empty()) return;
            const std::string hkey = redis_hash_key(tag, part, 'v');
            const std::string mkey = redis_hash_key(tag, part, 't');
            std::vector<Command> cmds;
            for (size_t b = 0; b < pk.index.size(); b += params_.max_batch_size) {
                for (const std::string* h : {&hkey, &mkey}) {
                    Command c;
                    c.add("HDEL", 4);
                    c.add(*h);
                    for (size_t i = b; i < std::min(pk.index.size(), b + params_.max_batch_size); ++i)
                        c.add(pk.bytes.data() + i * kw, kw);
                    cmds.push_back(std::move(c));
                }
            }
            const auto replies = exec_checked(hkey, cmds);
            for (size_t r = 0; r < replies.size(); r += 2) deleted += static_cast<size_t>(replies[r]->integer);
        });
        return deleted;
    }

    size_t evict_table(const std::string& tag) override {
        std::atomic<size_t> deleted{0};
        ThreadPool::shared().parallel_for(params_.num_partitions, [&](size_t part) {
            const std::string hkey = redis_hash_key(tag, part, 'v');
            const std::string mkey = redis_hash_key(tag, part, 't');
            Command hlen, del_v, del_t;
            hlen.add("HLEN", 4), hlen.add(hkey);
            del_v.add("DEL", 3), del_v.add(hkey);
            del_t.add("DEL", 3), del_t.add(mkey);
            const auto replies = exec_checked(hkey, {hlen, del_v, del_t});
            deleted += static_cast<size_t>(replies[0]->integer);
        });
        return deleted;
    }

    size_t size(const std::string& tag) override {
        std::atomic<size_t> total{0};
        ThreadPool::shared().parallel_for(params_.num_partitions, [&](size_t part) {
            const std::string hkey = redis_hash_key(tag, part, 'v');
            Command hlen;
            hlen.add("HLEN", 4), hlen.add(hkey);
            total += static_cast<size_t>(exec_checked(hkey, {hlen})[0]->integer);
        });
        return total;
    }

    std::vector<std::string> find_tables(const std::string& model) override {
        // KEYS on every master (HugeCTR asks one node only, redis_backend.cpp:649, and so misses
        // tables whose partition 0 lives elsewhere).
        const std::string pattern = std::string(kTagPrefix) + "{" + kTagPrefix + "." + model + ".*/p*}v";
        Command keys;
        keys.add("KEYS", 4), keys.add(pattern);
        std::vector<std::string> tags;
        for (const Reply& r : cluster_->exec_on_masters(keys)) {
            for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; ++i) {
                const std::string name(r->element[i]->str, r->element[i]->len);
                const size_t open = name.find('{'), slash = name.rfind('/');
                if (open == std::string::npos || slash == std::string::npos || slash < open) continue;
                const std::string tag = name.substr(open + 1, slash - open - 1);
                if (std::find(tags.begin(), tags.end(), tag) == tags.end()) tags.push_back(tag);
            }
        }
        std::sort(tags.begin(), tags.end());
        return tags;
    }

    void check_table(const std::string& tag, uint32_t value_size) override {
        // A table written with another num_partitions would be read in the wrong hashes (most keys
        // missed, silently): sample stored keys of each partition and check they hash to it, and
        // look for partitions beyond num_partitions. Also check key and value widths.
        const size_t parts = params_.num_partitions;
        const size_t kw = static_cast<size_t>(width_);
        std::mutex mutex;
        std::string problem;
        ThreadPool::shared().parallel_for(parts + 1, [&](size_t part) {
            const std::string hkey = redis_hash_key(tag, part, 'v');
            std::vector<Command> cmds(1);
            if (part == parts) {
                cmds[0].add("EXISTS", 6), cmds[0].add(hkey);
            } else {
                cmds[0].add("HRANDFIELD", 10), cmds[0].add(hkey), cmds[0].add("8", 1), cmds[0].add("WITHVALUES", 10);
            }
            const auto replies = exec_checked(hkey, cmds);
            const redisReply* r = replies[0].get();
            std::string found;
            if (part == parts) {
                if (r->integer > 0)
                    found = hkey + " exists: the table was published with more than num_partitions = " +
                            std::to_string(parts) + " partitions; set volatile_db.num_partitions to that value, or "
                            "re-publish (hps-surgeon publish --force)";
            } else {
                // A single odd value is a corrupt entry (counted by fetch); all sampled ones odd is
                // a table of another layout.
                size_t sampled = 0, bad_key = 0, bad_value = 0;
                size_t seen_key = 0, seen_value = 0;
                for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2, ++sampled) {
                    const redisReply* k = r->element[i];
                    const redisReply* v = r->element[i + 1];
                    if (k->len != kw) ++bad_key, seen_key = k->len;
                    if (v->len != value_size) ++bad_value, seen_value = v->len;
                    if (k->len == kw && found.empty()) {
                        const int64_t key = decode_key(k->str, width_);
                        const size_t want = partition_of(key, width_, parts);
                        if (want != part)
                            found = hkey + " holds key " + std::to_string(key) + ", which belongs to partition " +
                                    std::to_string(want) + " of " + std::to_string(parts) +
                                    ": the table was published with a different num_partitions; set "
                                    "volatile_db.num_partitions to that value, or re-publish (hps-surgeon publish --force)";
                    }
                }
                if (sampled > 0 && bad_key == sampled)
                    found = hkey + " holds " + std::to_string(seen_key) + "-byte keys, the config's supportlonglong = " +
                            (width_ == KeyWidth::k64 ? "true" : "false") + " reads " + std::to_string(kw) +
                            "-byte keys; fix supportlonglong or re-publish (hps-surgeon publish --force)";
                else if (sampled > 0 && bad_value == sampled)
                    found = hkey + " holds " + std::to_string(seen_value) + "-byte values, the table's vectors are " +
                            std::to_string(value_size) + " bytes (emb_vec_size x 4); fix embedding_vecsize_per_table or "
                            "re-publish (hps-surgeon publish --force)";
            }
            if (!found.empty()) {
                std::lock_guard<std::mutex> lock(mutex);
                if (problem.empty()) problem = found;
            }
        });
        if (!problem.empty())
            throw Error(HPS_ERR_DATABASE, "Redis table " + tag + ": " + problem);
    }

private:
    std::vector<Reply> exec_checked(const std::string& hkey, const std::vector<Command>& cmds) {
        std::vector<Reply> replies;
        try {
            replies = cluster_->exec(key_slot(hkey), cmds);
        } catch (const NodeUnavailable& ex) {
            throw Error(HPS_ERR_DATABASE, std::string("Redis: ") + ex.what());
        }
        for (const Reply& r : replies)
            if (!r || r->type == REDIS_REPLY_ERROR)
                throw Error(HPS_ERR_DATABASE, "Redis " + hkey + ": " + (r ? std::string(r->str, r->len) : "no reply"));
        return replies;
    }

    // Access metadata of the keys pk[begin, end) that were found.
    void touch(const std::string& tag, size_t part, const PartKeys& pk, size_t begin, size_t end, const uint8_t* status) {
        auto keys = std::make_shared<std::vector<char>>();
        const size_t kw = static_cast<size_t>(width_);
        for (size_t j = begin; j < end; ++j)
            if (status[pk.index[j]] == kFound) keys->insert(keys->end(), pk.bytes.begin() + j * kw, pk.bytes.begin() + (j + 1) * kw);
        if (keys->empty()) return;
        const OverflowPolicy policy = params_.overflow_policy;
        const time_t now = std::time(nullptr);
        toucher_.submit([this, tag, part, keys, policy, now] {
            const std::string mkey = redis_hash_key(tag, part, 't');
            const size_t kw2 = static_cast<size_t>(width_);
            const size_t count = keys->size() / kw2;
            std::vector<Command> cmds;
            if (policy == OverflowPolicy::EvictOldest) {
                Command c;
                c.add("HSET", 4), c.add(mkey);
                for (size_t i = 0; i < count; ++i) c.add(keys->data() + i * kw2, kw2), c.add(reinterpret_cast<const char*>(&now), sizeof(time_t));
                cmds.push_back(std::move(c));
            } else {
                for (size_t i = 0; i < count; ++i) {
                    Command c;
                    c.add("HINCRBY", 7), c.add(mkey), c.add(keys->data() + i * kw2, kw2), c.add("1", 1);
                    cmds.push_back(std::move(c));
                }
            }
            cluster_->exec(key_slot(mkey), cmds);
        });
    }

    // HugeCTR's resolve_overflow_ (redis_backend.cpp:791-961): prune the partition to
    // overflow_margin x overflow_resolution_target entries (rounded, database_backend.hpp:309-314),
    // deleting max_batch_size victims at a time, in the policy's order. One deliberate difference:
    // evict_random lists the keys of the value hash; HugeCTR lists the metadata hash (line 813),
    // which evict_random never writes, so its random eviction never evicts anything.
    void resolve_overflow(const std::string& tag, size_t part, size_t part_size) {
        const std::string hkey = redis_hash_key(tag, part, 'v');
        const std::string mkey = redis_hash_key(tag, part, 't');
        const size_t target =
            static_cast<size_t>(static_cast<double>(params_.overflow_margin) * params_.overflow_resolution_target + 0.5);
        const size_t kw = static_cast<size_t>(width_);
        std::vector<std::string> victims;  // key bytes, in eviction order
        std::vector<long long> victim_meta;  // their access counts (evict_least_used)
        if (params_.overflow_policy == OverflowPolicy::EvictRandom) {
            Command c;
            c.add("HKEYS", 5), c.add(hkey);
            const auto r = exec_checked(hkey, {c});
            for (size_t i = 0; i < r[0]->elements; ++i) victims.emplace_back(r[0]->element[i]->str, r[0]->element[i]->len);
            std::shuffle(victims.begin(), victims.end(), std::mt19937_64(std::random_device{}()));
        } else {
            Command c;
            c.add("HGETALL", 7), c.add(mkey);
            const auto r = exec_checked(hkey, {c});
            std::vector<std::pair<long long, std::string>> metas;
            for (size_t i = 0; i + 1 < r[0]->elements; i += 2) {
                const redisReply* v = r[0]->element[i + 1];
                long long m = 0;
                if (params_.overflow_policy == OverflowPolicy::EvictOldest && v->len == sizeof(time_t)) {
                    time_t t;
                    std::memcpy(&t, v->str, sizeof t);
                    m = static_cast<long long>(t);
                } else {
                    m = std::atoll(std::string(v->str, v->len).c_str());
                }
                metas.emplace_back(m, std::string(r[0]->element[i]->str, r[0]->element[i]->len));
            }
            std::sort(metas.begin(), metas.end());
            for (auto& m : metas) victims.push_back(std::move(m.second)), victim_meta.push_back(m.first);
        }
        size_t b = 0;
        for (; b < victims.size() && part_size > target; b += params_.max_batch_size) {
            Command dm, dv, hl;
            dm.add("HDEL", 4), dm.add(mkey);
            dv.add("HDEL", 4), dv.add(hkey);
            for (size_t i = b; i < std::min(victims.size(), b + params_.max_batch_size); ++i) {
                if (victims[i].size() != kw) continue;
                dm.add(victims[i]), dv.add(victims[i]);
            }
            hl.add("HLEN", 4), hl.add(hkey);
            const auto r = exec_checked(hkey, {dm, dv, hl});
            part_size = static_cast<size_t>(std::max(0LL, r.back()->integer));
        }
        // LFU decay (redis_backend.cpp:898-913): the survivors' counts are all set to half of the
        // smallest surviving count, so old popularity does not shield keys forever.
        if (params_.overflow_policy == OverflowPolicy::EvictLeastUsed && b < victims.size()) {
            const std::string decayed = std::to_string(victim_meta[b] / 2);
            for (size_t s = b; s < victims.size(); s += params_.max_batch_size) {
                Command set;
                set.add("HSET", 4), set.add(mkey);
                for (size_t i = s; i < std::min(victims.size(), s + params_.max_batch_size); ++i)
                    if (victims[i].size() == kw) set.add(victims[i]), set.add(decayed);
                if (set.argv.size() > 2) exec_checked(mkey, {set});
            }
        }
    }

    VolatileDbParams params_;
    KeyWidth width_;
    std::unique_ptr<RedisCluster> cluster_;
    MetadataToucher toucher_;
};

}  // namespace

std::unique_ptr<Backend> make_redis_backend(const VolatileDbParams& params, KeyWidth width) {
    return std::make_unique<RedisBackend>(params, width);
}

}  // namespace hps::storage
