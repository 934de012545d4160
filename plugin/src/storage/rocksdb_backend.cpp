// rocksdb_backend.cpp: HugeCTR's RocksDBBackend layout (src/hps/rocksdb_backend.cpp): one
// column family per table tag, key = the native Key bytes, value = the float32 vector bytes,
// opened with HugeCTR's options (rocksdb_backend.cpp:35-48) so either side can open the other's
// database.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>
#include <sys/stat.h>

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/sst_file_writer.h>
#include <rocksdb/write_batch.h>

#include "backend.hpp"
#include "host_table.hpp"
#include "thread_pool.hpp"

namespace hps::storage {
namespace {

class RocksBackend final : public Backend {
public:
    RocksBackend(const PersistentDbParams& p, KeyWidth width) : params_(p), width_(width) {
        rocksdb::Options options;
        options.create_if_missing = true;
        options.manual_wal_flush = true;
        options.OptimizeForPointLookup(8);
        options.OptimizeLevelStyleCompaction();
        options.IncreaseParallelism(static_cast<int>(std::min<size_t>(p.num_threads, 1024)));
        cf_options_.OptimizeForPointLookup(8);
        cf_options_.OptimizeLevelStyleCompaction();
        write_options_.sync = false;

        struct stat st;
        if ((p.read_only || p.secondary) && stat(p.path.c_str(), &st) != 0)
            throw hps::Error(HPS_ERR_DATABASE, "persistent_db.path " + p.path + " does not exist" +
                                                   (p.read_only ? " and read_only is true" : "") +
                                                   "; publish the tables there first (hps-surgeon publish --persistent-db)");
        std::vector<std::string> names;
        if (!rocksdb::DB::ListColumnFamilies(options, p.path, &names).ok()) names.clear();  // new database
        if (std::find(names.begin(), names.end(), rocksdb::kDefaultColumnFamilyName) == names.end())
            names.push_back(rocksdb::kDefaultColumnFamilyName);
        std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
        for (const auto& n : names) descriptors.emplace_back(n, cf_options_);
        std::vector<rocksdb::ColumnFamilyHandle*> handles;
        rocksdb::DB* db = nullptr;
        rocksdb::Status s;
        if (p.secondary) {
            char dir[] = "/tmp/hps_rocksdb_secondary.XXXXXX";
            if (!mkdtemp(dir)) throw hps::Error(HPS_ERR_DATABASE, std::string("cannot create ") + dir + ": " + std::strerror(errno));
            secondary_dir_ = dir;
            options.max_open_files = -1;  // required by secondary instances
            s = rocksdb::DB::OpenAsSecondary(options, p.path, secondary_dir_, descriptors, &handles, &db);
        } else if (p.read_only) {
            s = rocksdb::DB::OpenForReadOnly(options, p.path, descriptors, &handles, &db);
        } else {
            s = rocksdb::DB::Open(options, p.path, descriptors, &handles, &db);
        }
        if (!s.ok()) throw hps::Error(HPS_ERR_DATABASE, open_message(s));
        db_.reset(db);
        for (size_t i = 0; i < handles.size(); ++i) handles_.emplace(descriptors[i].name, handles[i]);
    }

    ~RocksBackend() override {
        if (db_) {
            if (writable()) db_->FlushWAL(true);
            for (auto& [name, h] : handles_) db_->DestroyColumnFamilyHandle(h);
            handles_.clear();
            db_->Close();
            db_.reset();
        }
        if (!secondary_dir_.empty()) std::filesystem::remove_all(secondary_dir_);
    }

    void catch_up() override {
        if (params_.secondary) check(db_->TryCatchUpWithPrimary(), "(catch up)");
    }

    const char* name() const override { return "rocks_db"; }
    KeyWidth key_width() const override { return width_; }

    FetchCounts fetch(const std::string& tag, size_t n, const int64_t* keys, uint32_t value_size, char* values,
                      uint8_t* status) override {
        rocksdb::ColumnFamilyHandle* cf = handle(tag, false);
        if (!cf) {
            std::fill(status, status + n, kMissing);
            FetchCounts c;
            c.missing = n;
            return c;
        }
        const size_t kw = static_cast<size_t>(width_);
        // MultiGet per chunk, chunks in parallel (RocksDB reads are thread-safe): at most
        // max_batch_size keys, and small enough for every pool thread to get one.
        const size_t per_thread = (n + ThreadPool::shared().size() - 1) / ThreadPool::shared().size();
        const size_t batch = std::max<size_t>(1, std::min(params_.max_batch_size, std::max<size_t>(per_thread, 1024)));
        const size_t chunks = (n + batch - 1) / batch;
        ThreadPool::shared().parallel_for(chunks, [&](size_t chunk) {
            const size_t b = chunk * batch, e = std::min(n, b + batch);
            std::vector<char> kbytes((e - b) * kw);
            std::vector<rocksdb::Slice> slices;
            slices.reserve(e - b);
            for (size_t i = b; i < e; ++i) {
                encode_key(keys[i], width_, kbytes.data() + (i - b) * kw);
                slices.emplace_back(kbytes.data() + (i - b) * kw, kw);
            }
            std::vector<rocksdb::PinnableSlice> got(e - b);
            std::vector<rocksdb::Status> st(e - b);
            db_->MultiGet(read_options_, cf, e - b, slices.data(), got.data(), st.data());
            for (size_t i = b; i < e; ++i) {
                const rocksdb::Status& s = st[i - b];
                if (s.ok()) {
                    if (got[i - b].size() == value_size) {
                        std::memcpy(values + i * value_size, got[i - b].data(), value_size);
                        status[i] = kFound;
                    } else {
                        status[i] = kCorrupt;
                    }
                } else {
                    status[i] = s.IsNotFound() ? kMissing : kUnavailable;
                }
            }
        });
        return FetchCounts::of(n, status);
    }

    size_t insert(const std::string& tag, size_t n, const int64_t* keys, const char* values,
                  uint32_t value_size) override {
        rocksdb::ColumnFamilyHandle* cf = handle(tag, true);
        const size_t kw = static_cast<size_t>(width_);
        char kbuf[8];
        rocksdb::WriteBatch batch;
        for (size_t b = 0; b < n; b += params_.max_batch_size) {
            batch.Clear();
            for (size_t i = b; i < std::min(n, b + params_.max_batch_size); ++i) {
                encode_key(keys[i], width_, kbuf);
                check(batch.Put(cf, rocksdb::Slice(kbuf, kw), rocksdb::Slice(values + i * value_size, value_size)), tag);
            }
            check(db_->Write(write_options_, &batch), tag);
        }
        check(db_->FlushWAL(true), tag);  // as HugeCTR after each insert (rocksdb_backend.cpp:229)
        return n;  // RocksDB cannot tell new keys from overwritten ones cheaply (HugeCTR counts the same)
    }

    // Publishing a table: the chunk sorted by key bytes, written as one SST file with the column
    // family's options and ingested (moved) into the database, as HugeCTR's load_dump_sst
    // (rocksdb_backend.cpp:455-459): no WAL, no memtable, no flush; a key written twice in the chunk
    // keeps its last value, as consecutive Puts would. Reaches durable state on return.
    size_t insert_bulk(const std::string& tag, size_t n, const int64_t* keys, const char* values,
                       uint32_t value_size) override {
        if (n == 0) return 0;
        rocksdb::ColumnFamilyHandle* cf = handle(tag, true);
        const size_t kw = static_cast<size_t>(width_);
        // memcmp order of the stored (little-endian) key bytes = numeric order of the byte-swapped key.
        std::vector<std::pair<uint64_t, size_t>> order(n);
        for (size_t i = 0; i < n; ++i) {
            const uint64_t k = width_ == KeyWidth::k64 ? static_cast<uint64_t>(keys[i])
                                                       : static_cast<uint64_t>(static_cast<uint32_t>(keys[i]));
            order[i] = {width_ == KeyWidth::k64 ? __builtin_bswap64(k) : __builtin_bswap32(static_cast<uint32_t>(k)), i};
        }
        std::sort(order.begin(), order.end());
        const std::string file =
            params_.path + "/hps_publish." + tag + "." + std::to_string(++ingest_files_) + ".sst.tmp";
        rocksdb::SstFileWriter writer(rocksdb::EnvOptions(), rocksdb::Options(db_->GetDBOptions(), cf_options_), cf);
        check(writer.Open(file), tag + " (" + file + ")");
        char kbuf[8];
        for (size_t j = 0; j < n; ++j) {
            if (j + 1 < n && order[j + 1].first == order[j].first) continue;  // the later duplicate wins
            const size_t i = order[j].second;
            encode_key(keys[i], width_, kbuf);
            check(writer.Put(rocksdb::Slice(kbuf, kw), rocksdb::Slice(values + i * value_size, value_size)), tag);
        }
        check(writer.Finish(), tag + " (" + file + ")");
        rocksdb::IngestExternalFileOptions ingest;
        ingest.move_files = true;
        check(db_->IngestExternalFile(cf, {file}, ingest), tag + " (ingesting " + file + ")");
        wait_for_level0(cf);
        return n;
    }

    size_t evict(const std::string& tag, size_t n, const int64_t* keys) override {
        rocksdb::ColumnFamilyHandle* cf = handle(tag, false);
        if (!cf) return 0;
        const size_t kw = static_cast<size_t>(width_);
        char kbuf[8];
        rocksdb::WriteBatch batch;
        for (size_t i = 0; i < n; ++i) {
            encode_key(keys[i], width_, kbuf);
            check(batch.Delete(cf, rocksdb::Slice(kbuf, kw)), tag);
        }
        check(db_->Write(write_options_, &batch), tag);
        check(db_->FlushWAL(true), tag);
        return n;
    }

    size_t evict_table(const std::string& tag) override {
        rocksdb::ColumnFamilyHandle* cf = handle(tag, false);
        if (!cf) return 0;
        const size_t count = size(tag);
        std::lock_guard<std::mutex> lock(mutex_);
        check(db_->DropColumnFamily(cf), tag);
        check(db_->DestroyColumnFamilyHandle(cf), tag);
        handles_.erase(tag);
        return count;
    }

    size_t size(const std::string& tag) override {
        rocksdb::ColumnFamilyHandle* cf = handle(tag, false);
        uint64_t count = 0;
        if (cf) db_->GetIntProperty(cf, rocksdb::DB::Properties::kEstimateNumKeys, &count);
        return static_cast<size_t>(count);
    }

    bool has_table(const std::string& tag) override { return handle(tag, false) != nullptr; }

    std::vector<std::string> find_tables(const std::string& model) override {
        const std::string prefix = std::string(kTagPrefix) + "." + model + ".";
        std::lock_guard<std::mutex> lock(mutex_);
        std::vector<std::string> out;
        for (const auto& [name, h] : handles_)
            if (name.rfind(prefix, 0) == 0) out.push_back(name);
        return out;
    }

    void check_table(const std::string& tag, uint32_t value_size) override {
        rocksdb::ColumnFamilyHandle* cf = handle(tag, false);
        if (!cf) return;
        std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read_options_, cf));
        it->SeekToFirst();
        if (it->Valid() && (it->key().size() != static_cast<size_t>(width_) || it->value().size() != value_size))
            throw hps::Error(HPS_ERR_DATABASE,
                        "RocksDB column family '" + tag + "' holds " + std::to_string(it->key().size()) + "-byte keys and " +
                            std::to_string(it->value().size()) + "-byte values; the config reads " +
                            std::to_string(static_cast<size_t>(width_)) + "-byte keys (supportlonglong) and " +
                            std::to_string(value_size) + "-byte vectors; re-publish or fix the config");
    }

    void flush() override {
        if (writable()) check(db_->FlushWAL(true), "(flush)");
    }

private:
    rocksdb::ColumnFamilyHandle* handle(const std::string& tag, bool create) {
        std::lock_guard<std::mutex> lock(mutex_);
        const auto it = handles_.find(tag);
        if (it != handles_.end()) return it->second;
        if (!create) return nullptr;
        if (!writable())
            throw hps::Error(HPS_ERR_DATABASE, "RocksDB at " + params_.path + " is opened read-only; cannot create table '" +
                                              tag + "' (set persistent_db.read_only to false to publish)");
        rocksdb::ColumnFamilyHandle* h = nullptr;
        check(db_->CreateColumnFamily(cf_options_, tag, &h), tag);
        handles_.emplace(tag, h);
        return h;
    }

    // Chunks of random keys overlap each other, so each ingested file lands in level 0, where every
    // lookup probes all files. Like a writer under RocksDB's write stall, wait while level 0 holds as
    // many files as the column family's slowdown trigger, so background compaction keeps up.
    void wait_for_level0(rocksdb::ColumnFamilyHandle* cf) {
        const uint64_t limit = static_cast<uint64_t>(std::max(cf_options_.level0_slowdown_writes_trigger, 4));
        uint64_t files = 0;
        while (db_->GetIntProperty(cf, "rocksdb.num-files-at-level0", &files) && files >= limit)
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }

    void check(const rocksdb::Status& s, const std::string& tag) const {
        if (!s.ok()) throw hps::Error(HPS_ERR_DATABASE, "RocksDB at " + params_.path + ", table " + tag + ": " + s.ToString());
    }

    std::string open_message(const rocksdb::Status& s) const {
        const std::string text = s.ToString();
        std::string hint = "check persistent_db.path";
        if (text.find("No such file") != std::string::npos || text.find("does not exist") != std::string::npos)
            hint = "the folder or its parent is missing; create the parent folder or publish there first";
        else if (text.find("Resource temporarily unavailable") != std::string::npos || text.find("lock hold") != std::string::npos)
            hint = "another process holds its LOCK; stop it, or open with persistent_db.read_only = true";
        else if (text.find("Permission denied") != std::string::npos || text.find("Read-only file system") != std::string::npos)
            hint = "the folder is not writable; fix its permissions, or set persistent_db.read_only = true to read it";
        return "cannot open RocksDB at " + params_.path + (params_.read_only ? " (read-only)" : "") + ": " + text + "; " + hint;
    }

    bool writable() const { return !params_.read_only && !params_.secondary; }

    PersistentDbParams params_;
    std::string secondary_dir_;
    KeyWidth width_;
    rocksdb::ColumnFamilyOptions cf_options_;
    rocksdb::ReadOptions read_options_;
    rocksdb::WriteOptions write_options_;
    std::unique_ptr<rocksdb::DB> db_;
    std::mutex mutex_;
    std::map<std::string, rocksdb::ColumnFamilyHandle*> handles_;
    std::atomic<uint64_t> ingest_files_{0};  // names the SST files being written (tables may publish in parallel)
};

}  // namespace

std::unique_ptr<Backend> make_rocksdb_backend(const PersistentDbParams& params, KeyWidth width) {
    return std::make_unique<RocksBackend>(params, width);
}

}  // namespace hps::storage
