// redis_cluster.hpp: a Redis Cluster client on hiredis (Debian's libhiredis 0.14 has no cluster
// support, and no maintained C++ cluster client is packaged for Debian 12; HugeCTR used
// redis-plus-plus, which is not packaged). It does what HPS needs and no more:
//   - slot routing: CRC16 (XMODEM) of the key's hash tag modulo 16384, slot map from CLUSTER SLOTS;
//   - MOVED (slot map refreshed, command resent to the new owner) and ASK (ASKING + command to the
//     importing node, once) redirects, TRYAGAIN retried;
//   - pipelining: all commands for one slot are written in one go and their replies read after;
//   - a pool of connections per node (num_node_connections), AUTH on connect;
//   - a node that fails is marked down for `retry_after_ms`; requests for its slots fail fast with
//     NodeUnavailable in the meantime, and the first request after that reconnects (and reloads
//     the slot map, so a failover to a replica is picked up).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "host_table.hpp"

struct redisContext;
struct redisReply;

namespace hps::storage {

// A node (or the whole cluster) cannot be reached or reports CLUSTERDOWN: a transient condition,
// degraded to "unavailable" by lookups.
class NodeUnavailable : public Error {
public:
    explicit NodeUnavailable(const std::string& message) : Error(HPS_ERR_DATABASE, message) {}
};

struct ReplyDeleter {
    void operator()(redisReply* r) const;
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

// One command as binary-safe arguments (pointers must stay valid until exec returns).
struct Command {
    std::vector<const char*> argv;
    std::vector<size_t> argl;
    void add(const char* p, size_t n) { argv.push_back(p), argl.push_back(n); }
    void add(const std::string& s) { add(s.data(), s.size()); }
};

uint16_t crc16_xmodem(const char* data, size_t len);
// Hash slot of a key: CRC16 of its {hash tag} if it has a non-empty one, else of the whole key.
uint16_t key_slot(const std::string& key);

struct RedisClusterOptions {
    std::vector<std::pair<std::string, int>> seeds;  // "host:port,host:port"
    std::string user_name = "default";
    std::string password;
    size_t connections_per_node = 5;
    int connect_timeout_ms = 1000;
    int io_timeout_ms = 10000;
    int retry_after_ms = 1000;
};

// Parses HugeCTR's address string "host[:port],host[:port],..." (default port 7000, as
// VolatileDatabaseParams' default address "127.0.0.1:7000"). Throws HPS_ERR_CONFIG.
std::vector<std::pair<std::string, int>> parse_addresses(const std::string& address);

class RedisCluster {
public:
    // Connects to the first reachable seed and loads the slot map. Throws hps::Error with
    // HPS_ERR_DATABASE naming the addresses and the reason (unreachable, auth refused, not a cluster).
    explicit RedisCluster(RedisClusterOptions options);
    ~RedisCluster();
    RedisCluster(const RedisCluster&) = delete;
    RedisCluster& operator=(const RedisCluster&) = delete;

    // Sends cmds (all for keys of `slot`) as one pipeline to the slot's owner and returns one reply
    // per command, following redirects. Throws NodeUnavailable when the owner cannot be reached.
    std::vector<Reply> exec(uint16_t slot, const std::vector<Command>& cmds);
    // Sends one command to every master (KEYS, FLUSHALL in tests); returns one reply per master.
    std::vector<Reply> exec_on_masters(const Command& cmd);
    // "host:port" of the master serving a slot (tests and messages).
    std::string owner_of(uint16_t slot);
    size_t masters();

private:
    struct Node;
    struct Connection;
    Node* node_for(const std::string& host, int port);
    std::unique_ptr<Connection> acquire(Node& node);
    void release(Node& node, std::unique_ptr<Connection> c);
    redisContext* connect(Node& node);
    void load_slots(bool throw_on_failure);
    void maybe_reload_slots();
    Node* owner(uint16_t slot);

    RedisClusterOptions options_;
    std::mutex nodes_mutex_;
    std::vector<std::unique_ptr<Node>> nodes_;
    std::shared_mutex slots_mutex_;
    std::vector<Node*> slots_;  // 16384 entries
    std::chrono::steady_clock::time_point last_reload_{};
};

}  // namespace hps::storage
