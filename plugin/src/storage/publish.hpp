// publish.hpp: streaming a HugeCTR sparse-model folder (key, emb_vector) into a backend, in
// bounded chunks (flat memory whatever the table size). Re-running it is harmless: every write
// overwrites the same (key -> vector), so an interrupted publish is completed by running it again.
#pragma once

#include <cstdint>
#include <string>

#include "backend.hpp"

namespace hps::storage {

struct PublishResult {
    int64_t rows = 0;      // rows written
    int64_t new_keys = 0;  // of which the database reported as new (Redis; RocksDB counts all)
};

// Rows of a sparse folder: checks key/emb_vector sizes against dim (throws HPS_ERR_TABLE_FILE).
int64_t sparse_rows(const std::string& sparse_dir, int32_t dim);

// Writes rows [first_row, first_row + rows) (rows < 0: to the end) of sparse_dir into db under
// tag, chunk_rows rows per insert call. `progress` may cancel (returns false): throws
// hps::Error(HPS_ERR_CANCELLED, "cancelled") after the chunk in flight is written.
PublishResult publish_rows(Backend& db, const std::string& tag, const std::string& sparse_dir, int32_t dim,
                           int64_t first_row, int64_t rows, int64_t chunk_rows, const Progress& progress);

}  // namespace hps::storage
