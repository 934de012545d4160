// layout.hpp: how HugeCTR's HPS names and places embedding tables in its databases. Every
// constant here is HugeCTR's (NVIDIA-Merlin/HugeCTR at af9025667e); a database written through
// these functions is read by HugeCTR unchanged, and the other way round.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace hps::storage {

// HierParameterServerBase::PS_EMBEDDING_TABLE_TAG_PREFIX (include/hps/hier_parameter_server_base.hpp:33).
inline constexpr const char* kTagPrefix = "hps_et";

// make_tag_name's check (src/hps/hier_parameter_server.cpp:34): [a-zA-Z0-9_\-]{1,120}.
inline bool valid_tag_part(const std::string& s) {
    if (s.empty() || s.size() > 120) return false;
    for (const char c : s)
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    return true;
}

// "hps_et.<model>.<table>" (hier_parameter_server.cpp:41-44); the RocksDB column family name and
// the table part of the Redis hash names.
inline std::string make_tag_name(const std::string& model, const std::string& table) {
    return std::string(kTagPrefix) + "." + model + "." + table;
}

// Pelle Evensen's rrxmrrxmsx_0 (include/hps/database_backend_detail.hpp:53-59).
inline uint64_t rotr64(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }
inline uint64_t rrxmrrxmsx_0(uint64_t x) {
    x ^= rotr64(x, 25) ^ rotr64(x, 50);
    x *= UINT64_C(0xA24BAED4963EE407);
    x ^= rotr64(x, 24) ^ rotr64(x, 49);
    x *= UINT64_C(0x9FB21C651E98DF25);
    return x ^ x >> 28;
}

// Keys are `long long` when the config says "supportlonglong": true and `unsigned int` otherwise
// (hier_parameter_server.cpp:66-70); 32-bit keys are the int64 file keys cast to unsigned
// (src/hps/modelloader.cpp, `static_cast<unsigned>(key)`).
enum class KeyWidth : uint32_t { k32 = 4, k64 = 8 };

inline uint64_t key_as_u64(int64_t key, KeyWidth width) {
    return width == KeyWidth::k64 ? static_cast<uint64_t>(key) : static_cast<uint64_t>(static_cast<uint32_t>(key));
}

// HCTR_HPS_KEY_TO_PART_INDEX_ (database_backend_detail.hpp:64): the Key converts to uint64_t.
inline size_t partition_of(int64_t key, KeyWidth width, size_t num_partitions) {
    return static_cast<size_t>(rrxmrrxmsx_0(key_as_u64(key, width)) % num_partitions);
}

// The key's bytes as HugeCTR stores them: the native (little-endian) Key object.
inline void encode_key(int64_t key, KeyWidth width, char* dst) {
    if (width == KeyWidth::k64) {
        std::memcpy(dst, &key, 8);
    } else {
        const uint32_t k = static_cast<uint32_t>(key);
        std::memcpy(dst, &k, 4);
    }
}

inline int64_t decode_key(const char* src, KeyWidth width) {
    if (width == KeyWidth::k64) {
        int64_t k;
        std::memcpy(&k, src, 8);
        return k;
    }
    uint32_t k;
    std::memcpy(&k, src, 4);
    return static_cast<int64_t>(k);
}

// Redis hash of one partition: "hps_et{<tag>/p<part>}<suffix>", 'v' for values and 't' for
// access metadata (src/hps/redis_backend.cpp:35-41). The braces make both hashes of a partition
// one Redis Cluster hash slot.
inline std::string redis_hash_key(const std::string& tag, size_t part, char suffix) {
    return std::string(kTagPrefix) + "{" + tag + "/p" + std::to_string(part) + "}" + suffix;
}

}  // namespace hps::storage
