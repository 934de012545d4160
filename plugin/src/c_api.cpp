// c_api.cpp: the C ABI (hps.h) and the per-process table registry.
//
// Tables are shared: the registry keys them by (canonical config path, model, table_id, device)
// and counts handles, so N TensorRT execution contexts or plugin clones load a table once.
#include <climits>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <iterator>
#include <tuple>

#include <cuda_runtime.h>

#include "c_abi.hpp"
#include "db_table.hpp"
#include "gpu_table.hpp"
#include "storage/db_config.hpp"
#include "hps_plugin/hps.h"

struct hps_table {
    std::shared_ptr<hps::Table> table;
};

namespace {

using hps::c_abi::fail;
using hps::c_abi::g_last_error;
using hps::c_abi::guarded;

using Key = std::tuple<std::string, std::string, int32_t, int32_t>;
std::mutex g_mutex;
std::map<Key, std::weak_ptr<hps::Table>>& registry() {
    // Leaked on purpose: tables still open at exit must not be destroyed after the CUDA runtime
    // has been torn down (static destruction order across libraries is unspecified).
    static auto* r = new std::map<Key, std::weak_ptr<hps::Table>>();
    return *r;
}

std::string canonical(const char* path) {
    char* real = realpath(path, nullptr);
    if (!real) return path;  // parse_config reports the unreadable file
    std::string out(real);
    std::free(real);
    return out;
}

}  // namespace

extern "C" {

const char* hps_version(void) { return "hps_plugin 0.1.0 (abi 2)"; }

const char* hps_last_error(void) { return g_last_error.c_str(); }

hps_status hps_device_count(int32_t* out_count) {
    if (!out_count) return fail(HPS_ERR_INVALID_ARGUMENT, "hps_device_count: out_count is NULL");
    int count = 0;
    // No driver / no device is an answer (0), not an error: callers use it to skip GPU work.
    if (cudaGetDeviceCount(&count) != cudaSuccess) count = 0;
    cudaGetLastError();
    *out_count = count;
    return HPS_OK;
}

hps_status hps_open(const char* config_path, const char* model_name, int32_t table_id, int32_t device,
                    hps_table** out_handle) {
    if (!out_handle) return fail(HPS_ERR_INVALID_ARGUMENT, "hps_open: out_handle is NULL");
    *out_handle = nullptr;
    if (!config_path || !model_name) return fail(HPS_ERR_INVALID_ARGUMENT, "hps_open: config_path or model_name is NULL");
    return guarded([&] {
        const std::string path = canonical(config_path);
        hps::TableSpec spec = hps::parse_config(path, model_name, table_id);
        int dev = device;
        if (dev < 0) dev = spec.deployed_devices.empty() ? 0 : spec.deployed_devices.front();
        std::lock_guard<std::mutex> lock(g_mutex);
        const Key key{path, model_name, table_id, dev};
        std::shared_ptr<hps::Table> table = registry()[key].lock();
        if (!table) {
            // A redis_cluster volatile_db or rocks_db persistent_db puts the table in the databases;
            // otherwise it is read from the sparse files into GPU / pinned host memory.
            const hps::storage::DbConfig db = hps::storage::load_db_config(path);
            if (db.tiered())
                table = std::make_shared<hps::DbTable>(spec, db, dev);
            else
                table = std::make_shared<hps::GpuTable>(spec, dev);
            registry()[key] = table;
        }
        *out_handle = new hps_table{table};
    });
}

hps_status hps_lookup(hps_table* handle, const void* keys, int32_t key_bits, int64_t n, float* out, void* stream) {
    if (!handle || !handle->table) return fail(HPS_ERR_INVALID_ARGUMENT, "hps_lookup: handle is NULL or closed");
    return guarded([&] { handle->table->lookup(keys, key_bits, n, out, static_cast<cudaStream_t>(stream)); });
}

hps_status hps_lookup_host(hps_table* handle, const void* keys, int32_t key_bits, int64_t n, float* out) {
    if (!handle || !handle->table) return fail(HPS_ERR_INVALID_ARGUMENT, "hps_lookup_host: handle is NULL or closed");
    return guarded([&] { handle->table->lookup_host(keys, key_bits, n, out); });
}

hps_status hps_stats(hps_table* handle, hps_stats_t* out_stats) {
    if (!handle || !handle->table || !out_stats)
        return fail(HPS_ERR_INVALID_ARGUMENT, "hps_stats: handle is NULL/closed or out_stats is NULL");
    return guarded([&] { *out_stats = handle->table->stats(); });
}

hps_status hps_tier_stats(hps_table* handle, hps_tier_stats_t* out_stats) {
    if (!handle || !handle->table || !out_stats)
        return fail(HPS_ERR_INVALID_ARGUMENT, "hps_tier_stats: handle is NULL/closed or out_stats is NULL");
    return guarded([&] { *out_stats = handle->table->tier_stats(); });
}

hps_status hps_refresh(hps_table* handle, double fraction, int64_t* out_rows) {
    if (!handle || !handle->table) return fail(HPS_ERR_INVALID_ARGUMENT, "hps_refresh: handle is NULL or closed");
    return guarded([&] {
        const int64_t rows = handle->table->refresh(fraction);
        if (out_rows) *out_rows = rows;
    });
}

hps_status hps_table_info(hps_table* handle, hps_table_info_t* out_info) {
    if (!handle || !handle->table || !out_info)
        return fail(HPS_ERR_INVALID_ARGUMENT, "hps_table_info: handle is NULL/closed or out_info is NULL");
    return guarded([&] { *out_info = handle->table->info(); });
}

hps_status hps_close(hps_table* handle) {
    if (!handle) return HPS_OK;
    return guarded([&] {
        std::shared_ptr<hps::Table> table = std::move(handle->table);
        delete handle;
        // Drop the last reference under the lock so a concurrent hps_open cannot revive a table
        // that is being destroyed; the registry entry expires with it.
        std::lock_guard<std::mutex> lock(g_mutex);
        table.reset();
        for (auto it = registry().begin(); it != registry().end();)
            it = it->second.expired() ? registry().erase(it) : std::next(it);
    });
}

}  // extern "C"
