// publish.cpp: see publish.hpp.
#include "publish.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <future>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include "host_table.hpp"

namespace hps::storage {
namespace {

class File {
public:
    explicit File(const std::string& path) : path_(path), fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
        if (fd_ < 0) throw Error(HPS_ERR_TABLE_FILE, path + ": cannot open (" + std::strerror(errno) + ")");
    }
    ~File() { ::close(fd_); }
    File(const File&) = delete;
    File& operator=(const File&) = delete;

    void read_at(void* dst, size_t bytes, int64_t offset) const {
        char* p = static_cast<char*>(dst);
        while (bytes > 0) {
            const ssize_t got = ::pread(fd_, p, bytes, static_cast<off_t>(offset));
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0)
                throw Error(HPS_ERR_TABLE_FILE, path_ + ": read failed at byte " + std::to_string(offset) + " (" +
                                                    (got == 0 ? "file shrank while reading" : std::strerror(errno)) + ")");
            p += got, bytes -= static_cast<size_t>(got), offset += got;
        }
    }

private:
    std::string path_;
    int fd_;
};

struct Chunk {
    std::vector<int64_t> keys;
    std::vector<char> values;
};

}  // namespace

int64_t sparse_rows(const std::string& sparse_dir, int32_t dim) {
    TableSpec spec;
    spec.sparse_dir = sparse_dir;
    spec.emb_vec_size = dim;
    spec.table_name = sparse_dir;
    return inspect_table_files(spec).rows;
}

PublishResult publish_rows(Backend& db, const std::string& tag, const std::string& sparse_dir, int32_t dim,
                           int64_t first_row, int64_t rows, int64_t chunk_rows, const Progress& progress) {
    const int64_t total_rows = sparse_rows(sparse_dir, dim);
    if (first_row < 0 || first_row > total_rows)
        throw Error(HPS_ERR_INVALID_ARGUMENT, "first_row " + std::to_string(first_row) + " outside the table's " +
                                                  std::to_string(total_rows) + " rows");
    const int64_t end = rows < 0 ? total_rows : std::min(total_rows, first_row + rows);
    const int64_t step = std::max<int64_t>(1, chunk_rows);
    const uint32_t value_size = static_cast<uint32_t>(dim) * 4;
    File keys(sparse_dir + "/key"), vecs(sparse_dir + "/emb_vector");
    auto read_chunk = [&](int64_t r0) {
        Chunk c;
        const int64_t cnt = std::min(step, end - r0);
        c.keys.resize(static_cast<size_t>(cnt));
        c.values.resize(static_cast<size_t>(cnt) * value_size);
        keys.read_at(c.keys.data(), static_cast<size_t>(cnt) * 8, r0 * 8);
        vecs.read_at(c.values.data(), c.values.size(), r0 * static_cast<int64_t>(value_size));
        return c;
    };
    PublishResult result;
    if (progress && !progress(0, end - first_row)) throw Error(HPS_ERR_CANCELLED, "cancelled");
    // The next chunk is read while this one is written (two chunks in memory at most).
    std::future<Chunk> next;
    if (first_row < end) next = std::async(std::launch::async, read_chunk, first_row);
    for (int64_t r0 = first_row; r0 < end; r0 += step) {
        Chunk chunk = next.get();
        if (r0 + step < end) next = std::async(std::launch::async, read_chunk, r0 + step);
        result.new_keys += static_cast<int64_t>(
            db.insert_bulk(tag, chunk.keys.size(), chunk.keys.data(), chunk.values.data(), value_size));
        result.rows += static_cast<int64_t>(chunk.keys.size());
        if (progress && !progress(result.rows, end - first_row)) {
            if (next.valid()) next.wait();
            db.flush();
            throw Error(HPS_ERR_CANCELLED, "cancelled");
        }
    }
    db.flush();
    return result;
}

}  // namespace hps::storage
