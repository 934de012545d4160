// db_config.cpp: parsing of volatile_db / persistent_db / update_source (see db_config.hpp).
#include "db_config.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <thread>
#include <utility>

#include <nlohmann/json.hpp>

#include "host_table.hpp"

namespace hps::storage {
namespace {

using nlohmann::json;

[[noreturn]] void bad(const std::string& path, const std::string& what) { throw Error(HPS_ERR_CONFIG, path + ": " + what); }

template <typename T>
void field(const std::string& path, const json& section, const std::string& where, const char* name, T* out) {
    const auto it = section.find(name);
    if (it == section.end()) return;
    try {
        if constexpr (std::is_same_v<T, size_t>) {
            // HugeCTR reads these as size_t: a negative number is no valid value.
            if (!it->is_number_integer() || it->template get<long long>() < 0) throw json::type_error::create(302, "", nullptr);
        }
        *out = it->template get<T>();
    } catch (const json::exception&) {
        bad(path, where + "." + name + " has the wrong type (" + it->dump() + ")");
    }
}

template <typename E>
E named(const std::string& path, const json& section, const std::string& where, const char* name, E dflt,
        const std::vector<std::pair<E, std::vector<const char*>>>& names) {
    const auto it = section.find(name);
    if (it == section.end()) return dflt;
    if (!it->is_string()) bad(path, where + "." + name + " must be a string, got " + it->dump());
    const std::string value = it->get<std::string>();
    std::string known;
    for (const auto& [e, aliases] : names)
        for (const char* alias : aliases) {
            if (value == alias) return e;
            known += std::string(known.empty() ? "" : ", ") + alias;
        }
    bad(path, where + "." + name + " is \"" + value + "\", not one of " + known +
                  " (HugeCTR would silently fall back to its default); fix the name");
}

DbType db_type(const std::string& path, const json& s, const std::string& where, DbType dflt) {
    // Aliases: inference_utils.cpp:849-902 (get_hps_database_type).
    return named<DbType>(path, s, where, "type", dflt,
                         {{DbType::Disabled, {"disabled", "disable", "none"}},
                          {DbType::HashMap, {"hash_map", "hashmap", "hash", "map"}},
                          {DbType::ParallelHashMap, {"parallel_hash_map", "parallel_hashmap", "parallel_hash", "parallel_map"}},
                          {DbType::MultiProcessHashMap,
                           {"multi_process_hash_map", "multi_process_hashmap", "multi_process_hash", "multi_process_map"}},
                          {DbType::RedisCluster, {"redis_cluster", "redis"}},
                          {DbType::RocksDB, {"rocks_db", "rocksdb", "rocks"}}});
}

std::vector<std::string> filters(const std::string& path, const json& s, const std::string& where,
                                 std::vector<std::string> dflt) {
    const auto it = s.find("update_filters");
    if (it == s.end()) return dflt;
    if (!it->is_array()) bad(path, where + ".update_filters must be a list of regular expressions");
    std::vector<std::string> out;
    for (const auto& f : *it) {
        if (!f.is_string()) bad(path, where + ".update_filters holds " + f.dump() + ", not a string");
        out.push_back(f.get<std::string>());
    }
    return out;
}

void parse_volatile(const std::string& path, const json& s, VolatileDbParams& p) {
    const std::string w = "volatile_db";
    if (!s.is_object()) bad(path, w + " must be an object");
    p.present = true;
    p.type = db_type(path, s, w, DbType::Disabled);  // inference_utils.cpp:441
    field(path, s, w, "address", &p.address);
    field(path, s, w, "user_name", &p.user_name);
    field(path, s, w, "password", &p.password);
    field(path, s, w, "num_partitions", &p.num_partitions);
    field(path, s, w, "allocation_rate", &p.allocation_rate);
    field(path, s, w, "num_node_connections", &p.num_node_connections);
    field(path, s, w, "max_batch_size", &p.max_batch_size);
    field(path, s, w, "enable_tls", &p.enable_tls);
    field(path, s, w, "tls_ca_certificate", &p.tls_ca_certificate);
    field(path, s, w, "tls_client_certificate", &p.tls_client_certificate);
    field(path, s, w, "tls_client_key", &p.tls_client_key);
    field(path, s, w, "tls_server_name_identification", &p.tls_server_name_identification);
    field(path, s, w, "overflow_margin", &p.overflow_margin);
    p.overflow_policy = named<OverflowPolicy>(path, s, w, "overflow_policy", p.overflow_policy,
                                              {{OverflowPolicy::EvictRandom, {"evict_random", "random"}},
                                               {OverflowPolicy::EvictLeastUsed, {"evict_least_used", "least_used"}},
                                               {OverflowPolicy::EvictOldest, {"evict_oldest", "oldest"}}});
    field(path, s, w, "overflow_resolution_target", &p.overflow_resolution_target);
    field(path, s, w, "initialize_after_startup", &p.initialize_after_startup);
    field(path, s, w, "initial_cache_rate", &p.initial_cache_rate);
    field(path, s, w, "cache_missed_embeddings", &p.cache_missed_embeddings);
    p.update_filters = filters(path, s, w, p.update_filters);
    if (p.num_partitions == 0) bad(path, w + ".num_partitions must be at least 1");
    if (p.max_batch_size == 0) bad(path, w + ".max_batch_size must be at least 1");
    if (p.type == DbType::RedisCluster && p.num_node_connections == 0)
        bad(path, w + ".num_node_connections must be at least 1");
    // HugeCTR's RedisClusterBackend refuses the same (src/hps/redis_backend.cpp:78).
    if (p.type == DbType::RedisCluster && p.num_partitions < p.num_node_connections)
        bad(path, w + ".num_partitions (" + std::to_string(p.num_partitions) + ") is below num_node_connections (" +
                      std::to_string(p.num_node_connections) +
                      "); HugeCTR requires num_partitions >= num_node_connections");
    if (!(p.overflow_resolution_target > 0.0 && p.overflow_resolution_target < 1.0))
        bad(path, w + ".overflow_resolution_target must lie strictly between 0 and 1");
}

void parse_persistent(const std::string& path, const json& s, PersistentDbParams& p) {
    const std::string w = "persistent_db";
    if (!s.is_object()) bad(path, w + " must be an object");
    p.present = true;
    p.type = db_type(path, s, w, p.type);
    field(path, s, w, "path", &p.path);
    field(path, s, w, "num_threads", &p.num_threads);
    field(path, s, w, "read_only", &p.read_only);
    field(path, s, w, "max_batch_size", &p.max_batch_size);
    field(path, s, w, "initialize_after_startup", &p.initialize_after_startup);
    p.update_filters = filters(path, s, w, p.update_filters);
    if (p.max_batch_size == 0) bad(path, w + ".max_batch_size must be at least 1");
    if (p.num_threads == 0) bad(path, w + ".num_threads must be at least 1");
    if (p.type != DbType::Disabled && p.type != DbType::RocksDB)
        bad(path, w + ".type is " + to_string(p.type) + "; the persistent tier is \"rocks_db\" or \"disabled\"");
}

void parse_update_source(const std::string& path, const json& s, UpdateSourceParams& p) {
    const std::string w = "update_source";
    if (!s.is_object()) bad(path, w + " must be an object");
    p.present = true;
    p.type = named<UpdateSourceType>(path, s, w, "type", p.type,
                                     {{UpdateSourceType::Null, {"null", "none"}},
                                      {UpdateSourceType::KafkaMessageQueue, {"kafka_message_queue", "kafka_mq", "kafka"}}});
    field(path, s, w, "brokers", &p.brokers);
    field(path, s, w, "metadata_refresh_interval_ms", &p.metadata_refresh_interval_ms);
    field(path, s, w, "receive_buffer_size", &p.receive_buffer_size);
    field(path, s, w, "poll_timeout_ms", &p.poll_timeout_ms);
    field(path, s, w, "max_batch_size", &p.max_batch_size);
    field(path, s, w, "failure_backoff_ms", &p.failure_backoff_ms);
    field(path, s, w, "max_commit_interval", &p.max_commit_interval);
}

std::string dirname_of(const std::string& path) {
    const auto pos = path.find_last_of('/');
    if (pos == std::string::npos) return ".";
    return pos == 0 ? "/" : path.substr(0, pos);
}

}  // namespace

const char* to_string(DbType t) {
    switch (t) {
        case DbType::Disabled: return "disabled";
        case DbType::HashMap: return "hash_map";
        case DbType::ParallelHashMap: return "parallel_hash_map";
        case DbType::MultiProcessHashMap: return "multi_process_hash_map";
        case DbType::RedisCluster: return "redis_cluster";
        case DbType::RocksDB: return "rocks_db";
    }
    return "?";
}

const char* to_string(OverflowPolicy p) {
    switch (p) {
        case OverflowPolicy::EvictRandom: return "evict_random";
        case OverflowPolicy::EvictLeastUsed: return "evict_least_used";
        case OverflowPolicy::EvictOldest: return "evict_oldest";
    }
    return "?";
}

const char* to_string(UpdateSourceType t) { return t == UpdateSourceType::Null ? "null" : "kafka_message_queue"; }

bool DbConfig::tiered() const {
    const bool vdb = volatile_db.present && volatile_db.type != DbType::Disabled;
    const bool pdb = persistent_db.present && persistent_db.type != DbType::Disabled;
    return vdb || pdb;
}

DbConfig parse_db_config(const json& root, const std::string& path) {
    DbConfig c;
    c.config_path = path;
    VolatileDbParams& v = c.volatile_db;
    v.num_partitions = std::min<size_t>(v.num_partitions, std::max(1u, std::thread::hardware_concurrency()));
    if (!root.is_object()) bad(path, "top level must be an object");
    const auto sl = root.find("supportlonglong");
    if (sl != root.end()) {
        if (!sl->is_boolean()) bad(path, "supportlonglong must be true or false, got " + sl->dump());
        c.key_width = sl->get<bool>() ? KeyWidth::k64 : KeyWidth::k32;
    }
    if (const auto it = root.find("volatile_db"); it != root.end()) parse_volatile(path, *it, v);
    if (const auto it = root.find("persistent_db"); it != root.end()) parse_persistent(path, *it, c.persistent_db);
    if (const auto it = root.find("update_source"); it != root.end()) parse_update_source(path, *it, c.update_source);
    PersistentDbParams& p = c.persistent_db;
    if (!p.path.empty() && p.path[0] != '/') p.path = dirname_of(path) + "/" + p.path;
    return c;
}

DbConfig load_db_config(const std::string& config_path) {
    std::ifstream in(config_path);
    if (!in) throw Error(HPS_ERR_CONFIG, config_path + ": cannot open the HPS config (" + std::strerror(errno) + ")");
    json root;
    try {
        in >> root;
    } catch (const json::parse_error& e) {
        bad(config_path, std::string("not valid JSON: ") + e.what());
    }
    return parse_db_config(root, config_path);
}

RefreshParams load_refresh_params(const std::string& config_path, const std::string& model_name) {
    std::ifstream in(config_path);
    json root;
    try {
        in >> root;
    } catch (const json::exception& e) {
        bad(config_path, std::string("not valid JSON: ") + e.what());
    }
    RefreshParams r;
    const auto models = root.find("models");
    if (models == root.end() || !models->is_array()) return r;
    for (const auto& m : *models) {
        if (!m.is_object() || m.value("model", std::string()) != model_name) continue;
        const std::string w = "models[\"" + model_name + "\"]";
        field(config_path, m, w, "cache_refresh_percentage_per_iteration", &r.cache_refresh_percentage_per_iteration);
        field(config_path, m, w, "refresh_delay", &r.refresh_delay);
        field(config_path, m, w, "refresh_interval", &r.refresh_interval);
        if (r.cache_refresh_percentage_per_iteration < 0 || r.cache_refresh_percentage_per_iteration > 1)
            bad(config_path, w + ".cache_refresh_percentage_per_iteration must lie in [0, 1]");
        if (r.refresh_delay < 0 || r.refresh_interval < 0)
            bad(config_path, w + ".refresh_delay and refresh_interval must not be negative (seconds)");
    }
    return r;
}

DbConfig parse_db_section(const std::string& section, const std::string& json_text, bool support_long_long) {
    json s;
    try {
        s = json::parse(json_text);
    } catch (const json::parse_error& e) {
        bad("(" + section + ")", std::string("not valid JSON: ") + e.what());
    }
    if (section != "volatile_db" && section != "persistent_db")
        throw Error(HPS_ERR_INVALID_ARGUMENT, "section must be volatile_db or persistent_db, not '" + section + "'");
    json root = {{"supportlonglong", support_long_long}, {section, s}};
    return parse_db_config(root, "(" + section + ")");
}

std::string describe(const DbConfig& c) {
    const VolatileDbParams& v = c.volatile_db;
    const PersistentDbParams& p = c.persistent_db;
    const UpdateSourceParams& u = c.update_source;
    json out = {
        {"supportlonglong", c.key_width == KeyWidth::k64},
        {"volatile_db",
         {{"present", v.present}, {"type", to_string(v.type)}, {"address", v.address}, {"user_name", v.user_name},
          {"password_set", !v.password.empty()}, {"num_partitions", v.num_partitions},
          {"allocation_rate", v.allocation_rate}, {"num_node_connections", v.num_node_connections},
          {"max_batch_size", v.max_batch_size}, {"enable_tls", v.enable_tls},
          {"overflow_margin", v.overflow_margin}, {"overflow_policy", to_string(v.overflow_policy)},
          {"overflow_resolution_target", v.overflow_resolution_target},
          {"initialize_after_startup", v.initialize_after_startup}, {"initial_cache_rate", v.initial_cache_rate},
          {"cache_missed_embeddings", v.cache_missed_embeddings}, {"update_filters", v.update_filters}}},
        {"persistent_db",
         {{"present", p.present}, {"type", to_string(p.type)}, {"path", p.path}, {"num_threads", p.num_threads},
          {"read_only", p.read_only}, {"max_batch_size", p.max_batch_size},
          {"initialize_after_startup", p.initialize_after_startup}, {"update_filters", p.update_filters}}},
        {"update_source",
         {{"present", u.present}, {"type", to_string(u.type)}, {"brokers", u.brokers},
          {"metadata_refresh_interval_ms", u.metadata_refresh_interval_ms},
          {"receive_buffer_size", u.receive_buffer_size}, {"poll_timeout_ms", u.poll_timeout_ms},
          {"max_batch_size", u.max_batch_size}, {"failure_backoff_ms", u.failure_backoff_ms},
          {"max_commit_interval", u.max_commit_interval}}},
    };
    return out.dump();
}

}  // namespace hps::storage
