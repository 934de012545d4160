/*
 * hps.h: C ABI of libhps_plugin.so, the embedding lookup core of hps-surgeon.
 *
 * One table = one (hps_config.json, model_name, table_id) triple, loaded once per process and
 * device and shared by every handle that opens it (TensorRT builds one plugin per execution
 * context; they must not each load a copy of a 16 GB table).
 *
 * Every function returns an hps_status; on failure hps_last_error() gives a one-line message
 * (thread-local, valid until the next call on the same thread). No C++ exception crosses this
 * boundary.
 */
#ifndef HPS_PLUGIN_HPS_H
#define HPS_PLUGIN_HPS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define HPS_API __attribute__((visibility("default")))
#else
#define HPS_API
#endif

#define HPS_ABI_VERSION 2

typedef enum hps_status {
    HPS_OK = 0,
    HPS_ERR_INVALID_ARGUMENT = 1, /* null pointer, bad key_bits, negative n, closed handle */
    HPS_ERR_CONFIG = 2,           /* hps_config.json unreadable, not JSON, or missing/invalid fields */
    HPS_ERR_TABLE_FILE = 3,       /* key / emb_vector missing, truncated, or inconsistent */
    HPS_ERR_CUDA = 4,             /* a CUDA runtime call failed (message names it) */
    HPS_ERR_OUT_OF_MEMORY = 5,    /* device or pinned host allocation failed */
    HPS_ERR_INTERNAL = 6,
    HPS_ERR_DATABASE = 7,         /* Redis/RocksDB unreachable, refused (auth, lock, read-only) or
                                     holding data that does not match the config (see hps_storage.h) */
    HPS_ERR_CANCELLED = 8         /* a progress callback asked to stop (what was written stays valid) */
} hps_status;

typedef struct hps_table hps_table; /* opaque handle */

/* Counters since the table was loaded, summed over all handles and streams. */
typedef struct hps_stats_t {
    uint64_t lookups;        /* keys looked up */
    uint64_t cache_hits;     /* served from the GPU cache */
    uint64_t host_hits;      /* found in the table but not in the GPU cache: read from the host tier */
    uint64_t not_found;      /* absent from the table: default value returned */
    uint64_t insertions;     /* rows copied into the GPU cache after a miss */
    uint64_t evictions;      /* rows evicted to make room for an insertion */
} hps_stats_t;

/* Static description of an opened table. */
typedef struct hps_table_info_t {
    int64_t rows;            /* keys in the table file */
    int32_t dim;             /* emb_vec_size (floats per vector) */
    int32_t device;          /* CUDA device the cache lives on */
    int64_t cache_slots;     /* vectors the GPU cache holds (= rows when resident) */
    int32_t resident;        /* 1: whole table in GPU memory, no host tier kept */
    float default_value;     /* returned in every component for absent keys */
    int32_t identity_keys;   /* 1: key r is row r for every row (a rewrite's tables): served by direct
                                index with a bounds check, no hash index built (abi 2) */
    int32_t reserved;
} hps_table_info_t;

/* Counters of the database tiers below the GPU cache (tables with a redis_cluster volatile_db
 * and/or a rocks_db persistent_db; all zero otherwise). */
typedef struct hps_tier_stats_t {
    uint64_t volatile_hits;   /* keys served by the volatile DB (Redis Cluster) */
    uint64_t persistent_hits; /* keys served by the persistent DB (RocksDB) */
    uint64_t defaults;        /* keys no tier had: default value */
    uint64_t unavailable;     /* key lookups a tier could not answer (node down, I/O error) */
    uint64_t corrupt;         /* stored values of the wrong length, ignored */
    uint64_t elevated;        /* keys copied up into the volatile DB (cache_missed_embeddings) */
} hps_tier_stats_t;

/* Library version string, e.g. "hps_plugin 0.1.0 (abi 2)". */
HPS_API const char* hps_version(void);

/* Number of visible CUDA devices (0 and HPS_OK when there is no driver or no device). */
HPS_API hps_status hps_device_count(int32_t* out_count);

/* Message for the last failed call on this thread ("" if none). */
HPS_API const char* hps_last_error(void);

/* Opens (or shares, when already open in this process on this device) a table.
 * config_path: hps_config.json; sparse_files are relative to its folder unless absolute.
 * device: CUDA device ordinal, or -1 for the first entry of the model's deployed_device_list. */
HPS_API hps_status hps_open(const char* config_path, const char* model_name, int32_t table_id,
                            int32_t device, hps_table** out_handle);

/* Looks up n keys (int32 or int64 per key_bits = 32/64, device memory) into out (device memory,
 * n * dim float32, row-major), asynchronously on stream (0 = legacy default stream). For tables
 * in GPU and host memory it never synchronises with the host and allocates nothing, so it can be
 * captured in a CUDA graph; two exceptions return only when the lookup is done: tables served from
 * Redis / RocksDB (volatile_db / persistent_db), and host-memory tables for batches of at least
 * $HPS_COPY_ENGINE_MIN_KEYS keys (read at hps_open; default never) outside graph capture.
 * Safe to call concurrently from several threads and streams on the same or different handles. */
HPS_API hps_status hps_lookup(hps_table* handle, const void* keys, int32_t key_bits, int64_t n,
                              float* out, void* stream);

/* Convenience for host memory (tests, `hps-surgeon verify`): copies keys in, looks up on an
 * internal stream, copies the result out and synchronises. Not for production paths. */
HPS_API hps_status hps_lookup_host(hps_table* handle, const void* keys, int32_t key_bits,
                                   int64_t n, float* out);

HPS_API hps_status hps_stats(hps_table* handle, hps_stats_t* out_stats);
HPS_API hps_status hps_tier_stats(hps_table* handle, hps_tier_stats_t* out_stats);

/* Online updates: re-reads `fraction` (0..1] of the GPU cache's rows from the database tiers, so
 * rows changed there (hps-surgeon publish --update, or an update source writing Redis) are served
 * from now on. Tables configured with refresh_interval > 0 also do this by themselves, every
 * refresh_interval seconds with cache_refresh_percentage_per_iteration (after refresh_delay): an
 * update is then visible within refresh_interval / cache_refresh_percentage_per_iteration seconds.
 * Tables without database tiers refresh nothing (their rows come from the sparse files).
 * out_rows (may be NULL): rows re-read. */
HPS_API hps_status hps_refresh(hps_table* handle, double fraction, int64_t* out_rows);
HPS_API hps_status hps_table_info(hps_table* handle, hps_table_info_t* out_info);

/* Releases the handle; the table is freed when its last handle closes. NULL is a no-op. */
HPS_API hps_status hps_close(hps_table* handle);

#ifdef __cplusplus
}
#endif
#endif /* HPS_PLUGIN_HPS_H */
