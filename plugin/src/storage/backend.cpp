// backend.cpp: choosing the backend a config section names.
#include "backend.hpp"

#include "host_table.hpp"

namespace hps::storage {

std::unique_ptr<Backend> make_redis_backend(const VolatileDbParams& params, KeyWidth width);
std::unique_ptr<Backend> make_rocksdb_backend(const PersistentDbParams& params, KeyWidth width);

std::unique_ptr<Backend> open_volatile(const VolatileDbParams& params, KeyWidth width) {
    if (params.type == DbType::RedisCluster) return make_redis_backend(params, width);
    throw Error(HPS_ERR_CONFIG, std::string("volatile_db.type ") + to_string(params.type) +
                                    " is served from host memory by the lookup core itself; only redis_cluster "
                                    "is a separate database");
}

std::unique_ptr<Backend> open_persistent(const PersistentDbParams& params, KeyWidth width) {
    if (params.type == DbType::RocksDB) return make_rocksdb_backend(params, width);
    throw Error(HPS_ERR_CONFIG, std::string("persistent_db.type ") + to_string(params.type) + " is not rocks_db");
}

}  // namespace hps::storage
