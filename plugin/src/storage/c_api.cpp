// c_api.cpp: the C ABI of libhps_storage.so (hps_storage.h).
#include <cstring>
#include <memory>
#include <string>

#include "backend.hpp"
#include "c_abi.hpp"
#include "host_table.hpp"
#include "hps_plugin/hps_storage.h"
#include "publish.hpp"
#include "tiers.hpp"

struct hps_db {
    std::unique_ptr<hps::storage::Backend> backend;
};

struct hps_tiers {
    std::unique_ptr<hps::storage::TierStack> stack;
};

namespace {

using hps::c_abi::fail;
using hps::c_abi::g_last_error;
using hps::c_abi::guarded;

void need(bool ok, const char* what) {
    if (!ok) throw hps::Error(HPS_ERR_INVALID_ARGUMENT, what);
}

std::unique_ptr<hps::storage::Backend> open_section(const hps::storage::DbConfig& c, const std::string& section) {
    using hps::storage::DbType;
    if (section == "volatile_db") {
        if (!c.volatile_db.present || c.volatile_db.type != DbType::RedisCluster)
            throw hps::Error(HPS_ERR_CONFIG, c.config_path + ": volatile_db is not a redis_cluster section");
        return hps::storage::open_volatile(c.volatile_db, c.key_width);
    }
    if (section == "persistent_db") {
        if (!c.persistent_db.present || c.persistent_db.type != DbType::RocksDB)
            throw hps::Error(HPS_ERR_CONFIG, c.config_path + ": persistent_db is not a rocks_db section");
        return hps::storage::open_persistent(c.persistent_db, c.key_width);
    }
    throw hps::Error(HPS_ERR_INVALID_ARGUMENT, "section must be volatile_db or persistent_db, not '" + section + "'");
}

void copy_out(const std::string& text, char* buf, int64_t cap, int64_t* needed) {
    if (needed) *needed = static_cast<int64_t>(text.size()) + 1;
    if (buf && cap > 0) {
        const size_t n = std::min<size_t>(text.size(), static_cast<size_t>(cap - 1));
        std::memcpy(buf, text.data(), n);
        buf[n] = '\0';
    }
}

}  // namespace

extern "C" {

const char* hps_storage_last_error(void) { return g_last_error.c_str(); }

hps_status hps_db_open(const char* section, const char* section_json, int32_t key_bits, hps_db** out) {
    return guarded([&] {
        need(out && section && section_json, "hps_db_open: NULL argument");
        *out = nullptr;
        need(key_bits == 32 || key_bits == 64, "hps_db_open: key_bits must be 32 or 64");
        const auto c = hps::storage::parse_db_section(section, section_json, key_bits == 64);
        *out = new hps_db{open_section(c, section)};
    });
}

hps_status hps_db_open_config(const char* config_path, const char* section, hps_db** out) {
    return guarded([&] {
        need(out && config_path && section, "hps_db_open_config: NULL argument");
        *out = nullptr;
        const auto c = hps::storage::load_db_config(config_path);
        *out = new hps_db{open_section(c, section)};
    });
}

hps_status hps_db_close(hps_db* db) {
    return guarded([&] { delete db; });
}

hps_status hps_db_publish(hps_db* db, const char* tag, const char* sparse_dir, int32_t dim, int64_t first_row,
                          int64_t rows, int64_t chunk_rows, hps_progress_fn progress, void* user, int64_t* out_rows,
                          int64_t* out_new) {
    return guarded([&] {
        need(db && tag && sparse_dir, "hps_db_publish: NULL argument");
        need(dim > 0, "hps_db_publish: dim must be positive");
        hps::storage::Progress p;
        if (progress) p = [&](int64_t done, int64_t total) { return progress(done, total, user) != 0; };
        const auto r = hps::storage::publish_rows(*db->backend, tag, sparse_dir, dim, first_row, rows, chunk_rows, p);
        if (out_rows) *out_rows = r.rows;
        if (out_new) *out_new = r.new_keys;
    });
}

hps_status hps_db_insert(hps_db* db, const char* tag, const int64_t* keys, int64_t n, const float* values, int32_t dim) {
    return guarded([&] {
        need(db && tag && (n == 0 || (keys && values)) && n >= 0 && dim > 0, "hps_db_insert: bad argument");
        db->backend->insert(tag, static_cast<size_t>(n), keys, reinterpret_cast<const char*>(values),
                            static_cast<uint32_t>(dim) * 4);
        db->backend->flush();
    });
}

hps_status hps_db_fetch(hps_db* db, const char* tag, const int64_t* keys, int64_t n, int32_t dim, float* values,
                        uint8_t* status) {
    return guarded([&] {
        need(db && tag && (n == 0 || (keys && values && status)) && n >= 0 && dim > 0, "hps_db_fetch: bad argument");
        db->backend->fetch(tag, static_cast<size_t>(n), keys, static_cast<uint32_t>(dim) * 4,
                           reinterpret_cast<char*>(values), status);
    });
}

hps_status hps_db_evict(hps_db* db, const char* tag, const int64_t* keys, int64_t n, int64_t* out_evicted) {
    return guarded([&] {
        need(db && tag && (n == 0 || keys) && n >= 0, "hps_db_evict: bad argument");
        const size_t count = db->backend->evict(tag, static_cast<size_t>(n), keys);
        if (out_evicted) *out_evicted = static_cast<int64_t>(count);
    });
}

hps_status hps_db_evict_table(hps_db* db, const char* tag, int64_t* out_evicted) {
    return guarded([&] {
        need(db && tag, "hps_db_evict_table: NULL argument");
        const size_t count = db->backend->evict_table(tag);
        if (out_evicted) *out_evicted = static_cast<int64_t>(count);
    });
}

hps_status hps_db_size(hps_db* db, const char* tag, int64_t* out_size) {
    return guarded([&] {
        need(db && tag && out_size, "hps_db_size: NULL argument");
        *out_size = static_cast<int64_t>(db->backend->size(tag));
    });
}

hps_status hps_db_check_table(hps_db* db, const char* tag, int32_t dim) {
    return guarded([&] {
        need(db && tag && dim > 0, "hps_db_check_table: bad argument");
        db->backend->check_table(tag, static_cast<uint32_t>(dim) * 4);
    });
}

hps_status hps_db_find_tables(hps_db* db, const char* model, char* buf, int64_t cap, int64_t* needed) {
    return guarded([&] {
        need(db && model, "hps_db_find_tables: NULL argument");
        std::string text;
        for (const auto& t : db->backend->find_tables(model)) text += t + "\n";
        copy_out(text, buf, cap, needed);
    });
}

hps_status hps_storage_describe_config(const char* config_path, char* buf, int64_t cap, int64_t* needed) {
    return guarded([&] {
        need(config_path, "hps_storage_describe_config: NULL argument");
        copy_out(hps::storage::describe(hps::storage::load_db_config(config_path)), buf, cap, needed);
    });
}

hps_status hps_storage_tag(const char* model, const char* table, char* buf, int64_t cap) {
    return guarded([&] {
        need(model && table && buf && cap > 0, "hps_storage_tag: bad argument");
        for (const char* part : {model, table})
            if (!hps::storage::valid_tag_part(part))
                throw hps::Error(HPS_ERR_CONFIG, std::string("'") + part +
                                                     "' is not a valid HugeCTR table tag part ([A-Za-z0-9_-]{1,120}, "
                                                     "hier_parameter_server.cpp:34)");
        copy_out(hps::storage::make_tag_name(model, table), buf, cap, nullptr);
    });
}

hps_status hps_tiers_open(const char* config_path, const char* model_name, int32_t table_id, hps_tiers** out) {
    return guarded([&] {
        need(out && config_path && model_name, "hps_tiers_open: NULL argument");
        *out = nullptr;
        const hps::TableSpec spec = hps::parse_config(config_path, model_name, table_id);
        const auto db = hps::storage::load_db_config(config_path);
        if (!db.tiered())
            throw hps::Error(HPS_ERR_CONFIG, std::string(config_path) +
                                                 ": no redis_cluster volatile_db or rocks_db persistent_db; the table is "
                                                 "served from host memory");
        for (const std::string* part : {&spec.model_name, &spec.table_name})
            if (!hps::storage::valid_tag_part(*part))
                throw hps::Error(HPS_ERR_CONFIG, std::string(config_path) + ": '" + *part +
                                                     "' is not a valid HugeCTR table tag part ([A-Za-z0-9_-]{1,120}); "
                                                     "rename it (hps-surgeon publish renames tables for you)");
        *out = new hps_tiers{std::make_unique<hps::storage::TierStack>(
            db, hps::storage::make_tag_name(spec.model_name, spec.table_name), spec.emb_vec_size, spec.default_value,
            spec.sparse_dir)};
    });
}

hps_status hps_tiers_fetch(hps_tiers* tiers, const int64_t* keys, int64_t n, float* values) {
    return guarded([&] {
        need(tiers && n >= 0 && (n == 0 || (keys && values)), "hps_tiers_fetch: bad argument");
        tiers->stack->fetch(static_cast<size_t>(n), keys, values);
    });
}

hps_status hps_tiers_stats(hps_tiers* tiers, hps_tier_stats_t* out) {
    return guarded([&] {
        need(tiers && out, "hps_tiers_stats: NULL argument");
        const auto s = tiers->stack->stats();
        *out = hps_tier_stats_t{s.volatile_hits, s.persistent_hits, s.defaults, s.unavailable, s.corrupt, s.elevated};
    });
}

hps_status hps_tiers_catch_up(hps_tiers* tiers) {
    return guarded([&] {
        need(tiers, "hps_tiers_catch_up: NULL argument");
        tiers->stack->catch_up();
    });
}

hps_status hps_tiers_close(hps_tiers* tiers) {
    return guarded([&] { delete tiers; });
}

}  // extern "C"
