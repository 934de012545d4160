// redis_cluster.cpp: see redis_cluster.hpp.
#include "redis_cluster.hpp"

#include <sys/time.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include <hiredis/hiredis.h>

namespace hps::storage {

constexpr size_t kSlots = 16384;
constexpr int kMaxRedirects = 5;

void ReplyDeleter::operator()(redisReply* r) const {
    if (r) freeReplyObject(r);
}

uint16_t crc16_xmodem(const char* data, size_t len) {
    // CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0; Redis Cluster's key-slot hash.
    uint16_t crc = 0;
    for (size_t i = 0; i < len; ++i) {
        crc ^= static_cast<uint16_t>(static_cast<uint8_t>(data[i])) << 8;
        for (int b = 0; b < 8; ++b) crc = (crc & 0x8000) ? static_cast<uint16_t>((crc << 1) ^ 0x1021) : static_cast<uint16_t>(crc << 1);
    }
    return crc;
}

uint16_t key_slot(const std::string& key) {
    const size_t open = key.find('{');
    if (open != std::string::npos) {
        const size_t close = key.find('}', open + 1);
        if (close != std::string::npos && close > open + 1)
            return crc16_xmodem(key.data() + open + 1, close - open - 1) % kSlots;
    }
    return crc16_xmodem(key.data(), key.size()) % kSlots;
}

std::vector<std::pair<std::string, int>> parse_addresses(const std::string& address) {
    std::vector<std::pair<std::string, int>> out;
    size_t start = 0;
    while (start <= address.size()) {
        size_t end = address.find_first_of(",;", start);
        if (end == std::string::npos) end = address.size();
        std::string item = address.substr(start, end - start);
        item.erase(0, item.find_first_not_of(" \t"));
        item.erase(item.find_last_not_of(" \t") + 1);
        if (!item.empty()) {
            int port = 7000;
            const size_t colon = item.rfind(':');
            std::string host = item;
            if (colon != std::string::npos) {
                host = item.substr(0, colon);
                const std::string p = item.substr(colon + 1);
                char* endp = nullptr;
                const long v = std::strtol(p.c_str(), &endp, 10);
                if (p.empty() || *endp != '\0' || v <= 0 || v > 65535)
                    throw Error(HPS_ERR_CONFIG, "volatile_db.address: '" + item + "' has no valid port (1-65535)");
                port = static_cast<int>(v);
            }
            if (host.empty()) throw Error(HPS_ERR_CONFIG, "volatile_db.address: '" + item + "' has no host");
            out.emplace_back(host, port);
        }
        start = end + 1;
    }
    if (out.empty()) throw Error(HPS_ERR_CONFIG, "volatile_db.address is empty; give host:port[,host:port...]");
    return out;
}

struct RedisCluster::Connection {
    redisContext* ctx = nullptr;
    ~Connection() {
        if (ctx) redisFree(ctx);
    }
    bool broken() const { return !ctx || ctx->err != 0; }
};

struct RedisCluster::Node {
    std::string host;
    int port = 0;
    std::mutex mutex;
    std::vector<std::unique_ptr<Connection>> idle;
    std::chrono::steady_clock::time_point down_until{};
    std::string last_error;
    std::string name() const { return host + ":" + std::to_string(port); }
};

namespace {

timeval to_timeval(int ms) {
    timeval tv;
    tv.tv_sec = ms / 1000;
    tv.tv_usec = (ms % 1000) * 1000;
    return tv;
}

std::string reply_text(const redisReply* r) {
    if (!r) return "(no reply)";
    if (r->type == REDIS_REPLY_ERROR || r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_STRING)
        return std::string(r->str, r->len);
    return "(reply type " + std::to_string(r->type) + ")";
}

bool starts_with(const redisReply* r, const char* prefix) {
    return r && r->type == REDIS_REPLY_ERROR && r->len >= std::strlen(prefix) &&
           std::memcmp(r->str, prefix, std::strlen(prefix)) == 0;
}

// "MOVED 3999 127.0.0.1:6381" -> (host, port); an empty host means "the node you asked".
bool parse_redirect(const redisReply* r, std::string* host, int* port) {
    const std::string text = reply_text(r);
    const size_t sp = text.rfind(' ');
    const size_t colon = text.rfind(':');
    if (sp == std::string::npos || colon == std::string::npos || colon < sp) return false;
    *host = text.substr(sp + 1, colon - sp - 1);
    *port = std::atoi(text.c_str() + colon + 1);
    return *port > 0;
}

}  // namespace

RedisCluster::RedisCluster(RedisClusterOptions options) : options_(std::move(options)), slots_(kSlots, nullptr) {
    if (options_.seeds.empty()) throw Error(HPS_ERR_CONFIG, "volatile_db.address names no Redis node");
    for (const auto& [host, port] : options_.seeds) node_for(host, port);
    load_slots(true);
}

RedisCluster::~RedisCluster() = default;

RedisCluster::Node* RedisCluster::node_for(const std::string& host, int port) {
    std::lock_guard<std::mutex> lock(nodes_mutex_);
    for (auto& n : nodes_)
        if (n->host == host && n->port == port) return n.get();
    nodes_.push_back(std::make_unique<Node>());
    nodes_.back()->host = host;
    nodes_.back()->port = port;
    return nodes_.back().get();
}

redisContext* RedisCluster::connect(Node& node) {
    redisContext* c = redisConnectWithTimeout(node.host.c_str(), node.port, to_timeval(options_.connect_timeout_ms));
    if (!c || c->err) {
        const std::string why = c ? c->errstr : "out of memory";
        if (c) redisFree(c);
        throw NodeUnavailable("Redis node " + node.name() + " is unreachable (" + why + ")");
    }
    redisSetTimeout(c, to_timeval(options_.io_timeout_ms));
    redisEnableKeepAlive(c);
    if (!options_.password.empty()) {
        // redis-plus-plus (HugeCTR's client) sends AUTH <password> for the default user and
        // AUTH <user> <password> otherwise.
        redisReply* r = nullptr;
        if (options_.user_name.empty() || options_.user_name == "default") {
            const char* argv[] = {"AUTH", options_.password.c_str()};
            const size_t argl[] = {4, options_.password.size()};
            r = static_cast<redisReply*>(redisCommandArgv(c, 2, argv, argl));
        } else {
            const char* argv[] = {"AUTH", options_.user_name.c_str(), options_.password.c_str()};
            const size_t argl[] = {4, options_.user_name.size(), options_.password.size()};
            r = static_cast<redisReply*>(redisCommandArgv(c, 3, argv, argl));
        }
        Reply reply(r);
        if (!reply) {
            const std::string why = c->errstr;
            redisFree(c);
            throw NodeUnavailable("Redis node " + node.name() + " dropped the connection during AUTH (" + why + ")");
        }
        if (reply->type == REDIS_REPLY_ERROR) {
            const std::string why = reply_text(reply.get());
            redisFree(c);
            throw Error(HPS_ERR_DATABASE, "Redis node " + node.name() + " refused AUTH as user '" + options_.user_name +
                                              "': " + why + "; check volatile_db.user_name and volatile_db.password");
        }
    }
    return c;
}

std::unique_ptr<RedisCluster::Connection> RedisCluster::acquire(Node& node) {
    {
        std::lock_guard<std::mutex> lock(node.mutex);
        if (!node.idle.empty()) {
            auto c = std::move(node.idle.back());
            node.idle.pop_back();
            return c;
        }
        if (std::chrono::steady_clock::now() < node.down_until)
            throw NodeUnavailable("Redis node " + node.name() + " is down (" + node.last_error + "); retrying after " +
                                  std::to_string(options_.retry_after_ms) + " ms");
    }
    auto c = std::make_unique<Connection>();
    try {
        c->ctx = connect(node);
    } catch (const NodeUnavailable& e) {
        std::lock_guard<std::mutex> lock(node.mutex);
        node.down_until = std::chrono::steady_clock::now() + std::chrono::milliseconds(options_.retry_after_ms);
        node.last_error = e.what();
        throw;
    }
    return c;
}

void RedisCluster::release(Node& node, std::unique_ptr<Connection> c) {
    if (!c || c->broken()) return;
    std::lock_guard<std::mutex> lock(node.mutex);
    if (node.idle.size() < options_.connections_per_node) node.idle.push_back(std::move(c));
}

void RedisCluster::load_slots(bool throw_on_failure) {
    std::vector<Node*> candidates;
    {
        std::lock_guard<std::mutex> lock(nodes_mutex_);
        for (auto& n : nodes_) candidates.push_back(n.get());
    }
    std::string reasons;
    for (Node* node : candidates) {
        std::unique_ptr<Connection> c;
        try {
            c = acquire(*node);
        } catch (const NodeUnavailable& e) {
            reasons += std::string(reasons.empty() ? "" : "; ") + e.what();
            continue;
        }
        Reply r(static_cast<redisReply*>(redisCommand(c->ctx, "CLUSTER SLOTS")));
        if (!r) {
            reasons += std::string(reasons.empty() ? "" : "; ") + node->name() + ": " + c->ctx->errstr;
            continue;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            const std::string text = reply_text(r.get());
            release(*node, std::move(c));
            if (text.find("cluster support disabled") != std::string::npos)
                throw Error(HPS_ERR_DATABASE, "Redis at " + node->name() +
                                                  " runs without cluster mode; HugeCTR's redis_cluster tier needs a Redis "
                                                  "Cluster (redis-server --cluster-enabled yes)");
            if (text.rfind("NOAUTH", 0) == 0)
                throw Error(HPS_ERR_DATABASE, "Redis node " + node->name() + " requires a password (" + text +
                                                  "); set volatile_db.password");
            throw Error(HPS_ERR_DATABASE, "Redis node " + node->name() + " refused CLUSTER SLOTS: " + text);
        }
        std::vector<Node*> map(kSlots, nullptr);
        size_t covered = 0;
        for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; ++i) {
            const redisReply* range = r->element[i];
            if (range->type != REDIS_REPLY_ARRAY || range->elements < 3) continue;
            const long long lo = range->element[0]->integer, hi = range->element[1]->integer;
            const redisReply* master = range->element[2];
            if (master->type != REDIS_REPLY_ARRAY || master->elements < 2) continue;
            std::string host = reply_text(master->element[0]);
            if (host.empty() || host == "?") host = node->host;  // Redis 7: empty = "the address you used"
            Node* owner = node_for(host, static_cast<int>(master->element[1]->integer));
            for (long long s = lo; s <= hi && s < static_cast<long long>(kSlots); ++s, ++covered) map[s] = owner;
        }
        release(*node, std::move(c));
        if (covered == 0) {
            reasons += std::string(reasons.empty() ? "" : "; ") + node->name() + " reports no slots assigned";
            continue;
        }
        std::unique_lock<std::shared_mutex> lock(slots_mutex_);
        slots_ = std::move(map);
        last_reload_ = std::chrono::steady_clock::now();
        return;
    }
    if (throw_on_failure) {
        std::string seeds;
        for (const auto& [h, p] : options_.seeds) seeds += (seeds.empty() ? "" : ",") + h + ":" + std::to_string(p);
        throw Error(HPS_ERR_DATABASE, "cannot load the Redis Cluster slot map from " + seeds + " (" + reasons +
                                          "); check volatile_db.address and that the cluster is up");
    }
}

void RedisCluster::maybe_reload_slots() {
    {
        std::shared_lock<std::shared_mutex> lock(slots_mutex_);
        if (std::chrono::steady_clock::now() - last_reload_ < std::chrono::milliseconds(options_.retry_after_ms)) return;
    }
    try {
        load_slots(false);
    } catch (const Error&) {
        // Keep the old map; the next failure tries again.
    }
}

RedisCluster::Node* RedisCluster::owner(uint16_t slot) {
    std::shared_lock<std::shared_mutex> lock(slots_mutex_);
    Node* n = slots_[slot];
    if (!n) throw NodeUnavailable("no Redis node serves hash slot " + std::to_string(slot) + " (cluster incomplete)");
    return n;
}

std::string RedisCluster::owner_of(uint16_t slot) { return owner(slot)->name(); }

size_t RedisCluster::masters() {
    std::shared_lock<std::shared_mutex> lock(slots_mutex_);
    std::vector<Node*> distinct;
    for (Node* n : slots_)
        if (n && std::find(distinct.begin(), distinct.end(), n) == distinct.end()) distinct.push_back(n);
    return distinct.size();
}

namespace {

// Writes cmds (with an ASKING before each when `asking`) and reads one reply per command.
// Returns false (connection broken) if any read fails.
bool round_trip(redisContext* c, const std::vector<const Command*>& cmds, bool asking, std::vector<Reply>* out) {
    for (const Command* cmd : cmds) {
        if (asking) redisAppendCommand(c, "ASKING");
        redisAppendCommandArgv(c, static_cast<int>(cmd->argv.size()), const_cast<const char**>(cmd->argv.data()),
                               cmd->argl.data());
    }
    out->clear();
    for (size_t i = 0; i < cmds.size(); ++i) {
        void* r = nullptr;
        if (asking) {
            if (redisGetReply(c, &r) != REDIS_OK) return false;
            freeReplyObject(r);
            r = nullptr;
        }
        if (redisGetReply(c, &r) != REDIS_OK) return false;
        out->emplace_back(static_cast<redisReply*>(r));
    }
    return true;
}

}  // namespace

std::vector<Reply> RedisCluster::exec(uint16_t slot, const std::vector<Command>& cmds) {
    std::vector<Reply> replies(cmds.size());
    std::vector<size_t> pending(cmds.size());
    for (size_t i = 0; i < cmds.size(); ++i) pending[i] = i;
    Node* target = owner(slot);
    bool asking = false;
    for (int attempt = 0; !pending.empty(); ++attempt) {
        if (attempt > kMaxRedirects)
            throw NodeUnavailable("hash slot " + std::to_string(slot) + " keeps being redirected (cluster resharding?)");
        std::vector<const Command*> batch;
        for (size_t i : pending) batch.push_back(&cmds[i]);
        std::unique_ptr<Connection> c;
        try {
            c = acquire(*target);
        } catch (const NodeUnavailable&) {
            maybe_reload_slots();
            throw;
        }
        std::vector<Reply> got;
        if (!round_trip(c->ctx, batch, asking, &got)) {
            const std::string why = c->ctx->errstr;
            {
                std::lock_guard<std::mutex> lock(target->mutex);
                target->down_until = std::chrono::steady_clock::now() + std::chrono::milliseconds(options_.retry_after_ms);
                target->last_error = why;
                target->idle.clear();  // the other connections of a dead node are dead too
            }
            maybe_reload_slots();
            throw NodeUnavailable("Redis node " + target->name() + " failed during a request (" + why + ")");
        }
        release(*target, std::move(c));
        std::vector<size_t> again;
        Node* next = nullptr;
        bool next_asking = false;
        for (size_t k = 0; k < got.size(); ++k) {
            redisReply* r = got[k].get();
            if (starts_with(r, "MOVED") || starts_with(r, "ASK")) {
                std::string host;
                int port = 0;
                if (!parse_redirect(r, &host, &port)) throw Error(HPS_ERR_DATABASE, "bad redirect: " + reply_text(r));
                if (host.empty()) host = target->host;
                next = node_for(host, port);
                next_asking = starts_with(r, "ASK ");
                if (!next_asking) {
                    std::unique_lock<std::shared_mutex> lock(slots_mutex_);
                    slots_[slot] = next;  // the full map is reloaded below
                }
                again.push_back(pending[k]);
            } else if (starts_with(r, "TRYAGAIN")) {
                again.push_back(pending[k]);
            } else if (starts_with(r, "CLUSTERDOWN")) {
                throw NodeUnavailable("Redis Cluster is down for hash slot " + std::to_string(slot) + " (" + reply_text(r) + ")");
            } else {
                replies[pending[k]] = std::move(got[k]);
            }
        }
        if (!again.empty() && next && !next_asking) maybe_reload_slots();
        if (!again.empty() && !next) std::this_thread::sleep_for(std::chrono::milliseconds(10));  // TRYAGAIN
        if (next) target = next;
        asking = next_asking;
        pending = std::move(again);
    }
    return replies;
}

std::vector<Reply> RedisCluster::exec_on_masters(const Command& cmd) {
    std::vector<Node*> masters;
    {
        std::shared_lock<std::shared_mutex> lock(slots_mutex_);
        for (Node* n : slots_)
            if (n && std::find(masters.begin(), masters.end(), n) == masters.end()) masters.push_back(n);
    }
    std::vector<Reply> out;
    for (Node* node : masters) {
        auto c = acquire(*node);
        std::vector<Reply> got;
        if (!round_trip(c->ctx, {&cmd}, false, &got))
            throw NodeUnavailable("Redis node " + node->name() + " failed during a request (" + c->ctx->errstr + ")");
        release(*node, std::move(c));
        out.push_back(std::move(got[0]));
    }
    return out;
}

}  // namespace hps::storage
