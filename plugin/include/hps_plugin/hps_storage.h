/*
 * hps_storage.h: C ABI of libhps_storage.so, the database tiers of hps-surgeon (no CUDA needed).
 *
 * Tables live in HugeCTR's HPS layout: Redis Cluster (volatile_db.type "redis_cluster") and
 * RocksDB (persistent_db.type "rocks_db"), under the tag "hps_et.<model>.<table>". `hps-surgeon
 * publish` writes them through hps_db_*; hps_tiers_* run HugeCTR's lookup order below the GPU
 * cache (volatile -> persistent -> default) on the host, the same code libhps_plugin.so runs for
 * GPU-cache misses.
 *
 * Errors: an hps_status (hps.h) and a one-line message from hps_storage_last_error()
 * (thread-local). No C++ exception crosses this boundary.
 */
#ifndef HPS_PLUGIN_HPS_STORAGE_H
#define HPS_PLUGIN_HPS_STORAGE_H

#include <stdint.h>

#include "hps_plugin/hps.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hps_db hps_db;       /* one opened database (a Redis Cluster or a RocksDB folder) */
typedef struct hps_tiers hps_tiers; /* the tiers of one table of one model */

/* Status of one key after hps_db_fetch. */
#define HPS_KEY_FOUND 0
#define HPS_KEY_MISSING 1
#define HPS_KEY_UNAVAILABLE 2 /* node unreachable / I/O error */
#define HPS_KEY_CORRUPT 3     /* stored value has the wrong length */

/* Progress of a publish: rows done of total; return 0 to cancel (HPS_ERR_CANCELLED). */
typedef int32_t (*hps_progress_fn)(int64_t done, int64_t total, void* user);

HPS_API const char* hps_storage_last_error(void);

/* Opens the database a section describes. section: "volatile_db" or "persistent_db";
 * section_json: that section's JSON object as HugeCTR's parser reads it; key_bits: 64 when the
 * config's supportlonglong is true, else 32. */
HPS_API hps_status hps_db_open(const char* section, const char* section_json, int32_t key_bits, hps_db** out);
/* Opens the database of a section of an hps_config.json (relative RocksDB paths resolve against
 * the config's folder). */
HPS_API hps_status hps_db_open_config(const char* config_path, const char* section, hps_db** out);
HPS_API hps_status hps_db_close(hps_db* db);

/* Writes rows [first_row, first_row + rows) (rows < 0: all) of a sparse-model folder (key,
 * emb_vector) under tag, chunk_rows rows per batch. out_rows / out_new may be NULL. */
HPS_API hps_status hps_db_publish(hps_db* db, const char* tag, const char* sparse_dir, int32_t dim, int64_t first_row,
                                  int64_t rows, int64_t chunk_rows, hps_progress_fn progress, void* user,
                                  int64_t* out_rows, int64_t* out_new);
HPS_API hps_status hps_db_insert(hps_db* db, const char* tag, const int64_t* keys, int64_t n, const float* values,
                                 int32_t dim);
/* values: n * dim floats, written for found keys; status: n bytes (HPS_KEY_*). */
HPS_API hps_status hps_db_fetch(hps_db* db, const char* tag, const int64_t* keys, int64_t n, int32_t dim,
                                float* values, uint8_t* status);
HPS_API hps_status hps_db_evict(hps_db* db, const char* tag, const int64_t* keys, int64_t n, int64_t* out_evicted);
HPS_API hps_status hps_db_evict_table(hps_db* db, const char* tag, int64_t* out_evicted);
HPS_API hps_status hps_db_size(hps_db* db, const char* tag, int64_t* out_size);
/* HPS_ERR_DATABASE when the stored table does not match this configuration (partition count,
 * key width, vector size); HPS_OK for a matching or absent table (Redis). */
HPS_API hps_status hps_db_check_table(hps_db* db, const char* tag, int32_t dim);
/* Tags of a model, newline-separated, into buf (cap bytes, NUL-terminated); *needed = bytes required. */
HPS_API hps_status hps_db_find_tables(hps_db* db, const char* model, char* buf, int64_t cap, int64_t* needed);

/* The database sections of a config as this library parsed them (defaults filled in), as JSON. */
HPS_API hps_status hps_storage_describe_config(const char* config_path, char* buf, int64_t cap, int64_t* needed);
/* Tag "hps_et.<model>.<table>"; HPS_ERR_CONFIG when a name breaks HugeCTR's [A-Za-z0-9_-]{1,120}. */
HPS_API hps_status hps_storage_tag(const char* model, const char* table, char* buf, int64_t cap);

/* The tiers of (config, model, table_id) as the plugin opens them for GPU-cache misses. */
HPS_API hps_status hps_tiers_open(const char* config_path, const char* model_name, int32_t table_id, hps_tiers** out);
/* keys (host, distinct not required) -> values (n * dim floats): volatile -> persistent -> default. */
HPS_API hps_status hps_tiers_fetch(hps_tiers* tiers, const int64_t* keys, int64_t n, float* values);

/* hps_tier_stats_t: see hps.h. */

HPS_API hps_status hps_tiers_stats(hps_tiers* tiers, hps_tier_stats_t* out);
/* Makes rows written by other processes since opening visible (RocksDB is read as a secondary
 * instance); Redis needs no such step. */
HPS_API hps_status hps_tiers_catch_up(hps_tiers* tiers);
HPS_API hps_status hps_tiers_close(hps_tiers* tiers);

#ifdef __cplusplus
}
#endif
#endif /* HPS_PLUGIN_HPS_STORAGE_H */
