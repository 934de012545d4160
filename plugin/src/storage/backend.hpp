// backend.hpp: the database-backend interface of the storage tiers (HugeCTR's
// DatabaseBackendBase, include/hps/database_backend.hpp, reduced to what HPS lookups, publishing
// and updates use). Keys travel as int64 and are encoded to the config's key width inside the
// backend; values are `value_size` raw bytes (emb_vec_size float32s).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "db_config.hpp"

namespace hps::storage {

// Outcome of one key of a fetch.
enum KeyStatus : uint8_t {
    kFound = 0,
    kMissing = 1,      // the database answered: no such key
    kUnavailable = 2,  // the database (or the node holding the key) could not be asked
    kCorrupt = 3,      // a value whose length is not value_size: ignored, never copied
};

struct FetchCounts {
    uint64_t found = 0, missing = 0, unavailable = 0, corrupt = 0;
    FetchCounts& operator+=(const FetchCounts& o) {
        found += o.found, missing += o.missing, unavailable += o.unavailable, corrupt += o.corrupt;
        return *this;
    }
    // Tallies the statuses a fetch wrote.
    static FetchCounts of(size_t n, const uint8_t* status) {
        FetchCounts c;
        for (size_t i = 0; i < n; ++i) {
            c.found += status[i] == kFound;
            c.missing += status[i] == kMissing;
            c.unavailable += status[i] == kUnavailable;
            c.corrupt += status[i] == kCorrupt;
        }
        return c;
    }
};

// Called with (rows done, rows total) while a long insert runs; returning false cancels it.
using Progress = std::function<bool(int64_t done, int64_t total)>;

class Backend {
public:
    virtual ~Backend() = default;
    virtual const char* name() const = 0;
    virtual KeyWidth key_width() const = 0;

    // Looks up keys[0..n); for each key writes status[i] and, when found, value_size bytes at
    // values + i * value_size. Never throws for an unreachable node or a corrupt value (those are
    // statuses); throws hps::Error only for misuse.
    virtual FetchCounts fetch(const std::string& tag, size_t n, const int64_t* keys, uint32_t value_size,
                              char* values, uint8_t* status) = 0;
    // Inserts or overwrites n pairs; returns how many keys were new where the database says so.
    // Throws hps::Error(HPS_ERR_DATABASE) when a write fails (a publish must not go on silently).
    virtual size_t insert(const std::string& tag, size_t n, const int64_t* keys, const char* values,
                          uint32_t value_size) = 0;
    // insert() for loading a whole table (publish): backends with a faster bulk path override it
    // (RocksDB: sorted SST files ingested, HugeCTR's load_dump_sst). Same result as insert().
    virtual size_t insert_bulk(const std::string& tag, size_t n, const int64_t* keys, const char* values,
                               uint32_t value_size) {
        return insert(tag, n, keys, values, value_size);
    }
    virtual size_t evict(const std::string& tag, size_t n, const int64_t* keys) = 0;
    // Drops the whole table; returns the number of entries it had (approximate for RocksDB).
    virtual size_t evict_table(const std::string& tag) = 0;
    // Entries stored for the table (approximate for RocksDB, like HugeCTR's size()).
    virtual size_t size(const std::string& tag) = 0;
    // Whether the database holds the table at all.
    virtual bool has_table(const std::string& tag) { return size(tag) > 0; }
    // Tags "hps_et.<model>.*" present in the database.
    virtual std::vector<std::string> find_tables(const std::string& model) = 0;
    // Refuses (HPS_ERR_DATABASE) data that this configuration would read wrongly: a table laid out
    // with another partition count, or stored with another key width. No-op where not applicable.
    virtual void check_table(const std::string& tag, uint32_t value_size) { (void)tag, (void)value_size; }
    // Makes what was inserted durable (RocksDB: WAL flushed and synced).
    virtual void flush() {}
    // Sees writes made by other processes since opening (RocksDB secondary instances); no-op otherwise.
    virtual void catch_up() {}
};

// Opens the backend a section configures (volatile_db: redis_cluster; persistent_db: rocks_db).
// hash_map types are built by the lookup core itself from the sparse files (memory_backend.hpp).
std::unique_ptr<Backend> open_volatile(const VolatileDbParams& params, KeyWidth width);
std::unique_ptr<Backend> open_persistent(const PersistentDbParams& params, KeyWidth width);

}  // namespace hps::storage
