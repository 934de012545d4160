// db_config.hpp: the `volatile_db`, `persistent_db` and `update_source` sections of
// hps_config.json, read as HugeCTR's parser reads them (src/hps/inference_utils.cpp:383-504,
// defaults from include/hps/inference_utils.hpp:154-252). Fields are optional and keep
// HugeCTR's defaults; type names accept HugeCTR's aliases (inference_utils.cpp:849-960).
// Where HugeCTR silently falls back (an unknown type name), we refuse with a message instead.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "layout.hpp"

namespace hps::storage {

enum class DbType { Disabled, HashMap, ParallelHashMap, MultiProcessHashMap, RedisCluster, RocksDB };
enum class OverflowPolicy { EvictRandom, EvictLeastUsed, EvictOldest };
enum class UpdateSourceType { Null, KafkaMessageQueue };

const char* to_string(DbType t);
const char* to_string(OverflowPolicy p);
const char* to_string(UpdateSourceType t);

struct VolatileDbParams {
    // HugeCTR: absent section = parallel_hash_map; a section without "type" = disabled
    // (inference_utils.cpp:441). `present` tells the two apart.
    bool present = false;
    DbType type = DbType::ParallelHashMap;
    std::string address = "127.0.0.1:7000";
    std::string user_name = "default";
    std::string password;
    size_t num_partitions = 16;  // HugeCTR caps it at hardware_concurrency() (inference_utils.cpp:83-86)
    size_t allocation_rate = size_t(256) << 20;
    size_t num_node_connections = 5;
    size_t max_batch_size = 64 * 1024;
    bool enable_tls = false;
    std::string tls_ca_certificate = "cacertbundle.crt";
    std::string tls_client_certificate = "client_cert.pem";
    std::string tls_client_key = "client_key.pem";
    std::string tls_server_name_identification = "redis.localhost";
    size_t overflow_margin = std::numeric_limits<size_t>::max();
    OverflowPolicy overflow_policy = OverflowPolicy::EvictRandom;
    double overflow_resolution_target = 0.8;
    bool initialize_after_startup = true;
    double initial_cache_rate = 1.0;
    bool cache_missed_embeddings = false;
    std::vector<std::string> update_filters{"^hps_.+$"};
};

struct PersistentDbParams {
    bool present = false;
    DbType type = DbType::Disabled;
    std::string path = "/tmp/rocksdb";  // RocksDBBackendParams default (include/hps/rocksdb_backend.hpp:34)
    size_t num_threads = 16;
    bool read_only = false;
    size_t max_batch_size = 64 * 1024;
    bool initialize_after_startup = true;
    std::vector<std::string> update_filters{"^hps_.+$"};
    // Not a config field: lookups open the database as a RocksDB secondary instance (read-only,
    // takes no LOCK, catches up with writes of a primary on refresh), so `publish --update` can
    // write while the plugin serves.
    bool secondary = false;
};

struct UpdateSourceParams {
    bool present = false;
    UpdateSourceType type = UpdateSourceType::Null;
    std::string brokers = "127.0.0.1:9092";
    size_t metadata_refresh_interval_ms = 30000;
    size_t receive_buffer_size = 256 * 1024;
    size_t poll_timeout_ms = 500;
    size_t max_batch_size = 8 * 1024;
    size_t failure_backoff_ms = 50;
    size_t max_commit_interval = 32;
};

// Everything of the top level of hps_config.json that the database tiers need.
struct DbConfig {
    std::string config_path;  // for messages
    KeyWidth key_width = KeyWidth::k64;  // "supportlonglong"
    VolatileDbParams volatile_db;
    PersistentDbParams persistent_db;
    UpdateSourceParams update_source;

    // True when lookups must go through the database tiers instead of the sparse files.
    bool tiered() const;
};

// Per-model refresh settings of the GPU cache (inference_utils.cpp:552-615): refresh_delay and
// refresh_interval in seconds (0: no periodic refresh), cache_refresh_percentage_per_iteration
// of the cached rows re-read from the tiers per refresh.
struct RefreshParams {
    double cache_refresh_percentage_per_iteration = 0.0;
    double refresh_delay = 0.0;
    double refresh_interval = 0.0;
};
RefreshParams load_refresh_params(const std::string& config_path, const std::string& model_name);

// Parses the sections of an already loaded config (throws hps::Error(HPS_ERR_CONFIG) naming
// `path` and the field). `relative_to` resolves a relative persistent_db.path.
DbConfig parse_db_config(const nlohmann::json& root, const std::string& path);
DbConfig load_db_config(const std::string& config_path);

// One section parsed on its own (the C ABI opens a database from a section before the config
// holds it: `hps-surgeon publish`). `section` is "volatile_db" or "persistent_db".
DbConfig parse_db_section(const std::string& section, const std::string& json_text, bool support_long_long);

// The parsed values, with defaults filled in, as JSON (config round trips, diagnostics).
std::string describe(const DbConfig& config);

}  // namespace hps::storage
