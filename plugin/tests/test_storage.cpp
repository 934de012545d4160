// test_storage.cpp: host-only tests of the storage layer's pure parts: HugeCTR's names and hash,
// Redis Cluster key slots, and the database sections' parser. (Backends against real Redis and
// RocksDB are tested from Python: tests/storage/.)
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "check.hpp"
#include "db_config.hpp"
#include "host_table.hpp"
#include "layout.hpp"
#include "redis_cluster.hpp"

namespace {

using namespace hps::storage;

std::string config_error(const std::string& text) {
    try {
        parse_db_config(nlohmann::json::parse(text), "c.json");
    } catch (const hps::Error& e) {
        return e.what();
    }
    return "";
}

void test_names() {
    // hier_parameter_server.cpp:41-44 and redis_backend.cpp:39.
    CHECK(make_tag_name("dlrm", "t0") == "hps_et.dlrm.t0");
    CHECK(redis_hash_key("hps_et.dlrm.t0", 3, 'v') == "hps_et{hps_et.dlrm.t0/p3}v");
    CHECK(redis_hash_key("hps_et.dlrm.t0", 12, 't') == "hps_et{hps_et.dlrm.t0/p12}t");
    CHECK(valid_tag_part("emb_0-a"));
    CHECK(!valid_tag_part("emb.weight"));
    CHECK(!valid_tag_part(""));
    CHECK(!valid_tag_part(std::string(121, 'a')));
}

void test_keys() {
    char b[8];
    encode_key(-2, KeyWidth::k64, b);
    CHECK(static_cast<unsigned char>(b[0]) == 0xfe && static_cast<unsigned char>(b[7]) == 0xff);
    CHECK(decode_key(b, KeyWidth::k64) == -2);
    encode_key(0x1'0000'0005LL, KeyWidth::k32, b);  // static_cast<unsigned>: upper bits dropped
    CHECK(decode_key(b, KeyWidth::k32) == 5);
    // The partition of a 32-bit key is that of its zero-extended value.
    CHECK(partition_of(5, KeyWidth::k32, 7) == partition_of(0x1'0000'0005LL, KeyWidth::k32, 7));
    CHECK(rrxmrrxmsx_0(0) == 0);
}

void test_slots() {
    // Redis Cluster specification: CRC16 (XMODEM) check value of "123456789" is 0x31C3.
    CHECK(crc16_xmodem("123456789", 9) == 0x31C3);
    // `redis-cli CLUSTER KEYSLOT foo` = 12182; hash tags select the hashed part.
    CHECK(key_slot("foo") == 12182);
    CHECK(key_slot("{user1000}.following") == key_slot("{user1000}.followers"));
    CHECK(key_slot("foo{}{bar}") == (crc16_xmodem("foo{}{bar}", 10) % 16384));
    CHECK(key_slot("hps_et{hps_et.m.t/p0}v") == key_slot("hps_et{hps_et.m.t/p0}t"));
}

void test_addresses() {
    const auto a = parse_addresses("127.0.0.1:7003,localhost;host-b");
    CHECK(a.size() == 3);
    CHECK(a[0].first == "127.0.0.1" && a[0].second == 7003);
    CHECK(a[1].first == "localhost" && a[1].second == 7000);
    CHECK(a[2].first == "host-b" && a[2].second == 7000);
    bool threw = false;
    try {
        parse_addresses("127.0.0.1:notaport");
    } catch (const hps::Error& e) {
        threw = std::string(e.what()).find("no valid port") != std::string::npos;
    }
    CHECK(threw);
}

void test_config() {
    // No sections: HugeCTR's defaults, not tiered (host memory, as VolatileDatabaseParams' parallel_hash_map).
    auto c = parse_db_config(nlohmann::json::parse(R"({"supportlonglong": false, "models": []})"), "/x/c.json");
    CHECK(!c.tiered());
    CHECK(c.key_width == KeyWidth::k32);
    CHECK(!c.volatile_db.present && c.volatile_db.type == DbType::ParallelHashMap);
    // A volatile_db section without a type is disabled (inference_utils.cpp:441).
    c = parse_db_config(nlohmann::json::parse(R"({"volatile_db": {}})"), "/x/c.json");
    CHECK(c.volatile_db.present && c.volatile_db.type == DbType::Disabled && !c.tiered());
    // Aliases and fields.
    c = parse_db_config(nlohmann::json::parse(R"({"supportlonglong": true,
        "volatile_db": {"type": "redis", "address": "a:1,b:2", "num_partitions": 8, "overflow_policy": "oldest",
                        "cache_missed_embeddings": true, "update_filters": ["^hps_et\\.m\\..+$"]},
        "persistent_db": {"type": "rocksdb", "path": "db", "read_only": true, "num_threads": 4},
        "update_source": {"type": "kafka", "brokers": "k:9092"}})"),
                        "/x/c.json");
    CHECK(c.tiered());
    CHECK(c.volatile_db.type == DbType::RedisCluster && c.volatile_db.num_partitions == 8);
    CHECK(c.volatile_db.overflow_policy == OverflowPolicy::EvictOldest && c.volatile_db.cache_missed_embeddings);
    CHECK(c.volatile_db.update_filters.size() == 1);
    CHECK(c.persistent_db.type == DbType::RocksDB && c.persistent_db.read_only && c.persistent_db.num_threads == 4);
    CHECK(c.persistent_db.path == "/x/db");
    CHECK(c.update_source.type == UpdateSourceType::KafkaMessageQueue && c.update_source.brokers == "k:9092");
    CHECK(c.volatile_db.num_node_connections == 5 && c.volatile_db.max_batch_size == 65536);
    // Errors name the field.
    CHECK(config_error(R"({"volatile_db": {"type": "redis_clustr"}})").find("volatile_db.type is \"redis_clustr\"") !=
          std::string::npos);
    CHECK(config_error(R"({"volatile_db": {"type": "redis", "num_partitions": -1}})").find("num_partitions has the wrong type") !=
          std::string::npos);
    CHECK(config_error(R"({"volatile_db": {"type": "redis", "num_partitions": 2}})").find("num_node_connections") !=
          std::string::npos);
    CHECK(config_error(R"({"persistent_db": {"type": "redis"}})").find("rocks_db") != std::string::npos);
    CHECK(config_error(R"({"supportlonglong": "yes"})").find("supportlonglong") != std::string::npos);
    CHECK(config_error(R"({"volatile_db": {"update_filters": "x"}})").find("update_filters must be a list") !=
          std::string::npos);
}

}  // namespace

int main() {
    test_names();
    test_keys();
    test_slots();
    test_addresses();
    test_config();
    if (g_failures) std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    else std::printf("storage: all checks passed\n");
    return g_failures;
}
