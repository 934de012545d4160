// host_table.cpp: hps_config.json parsing (nlohmann_json) and sparse-model file checks/reads.
#include "host_table.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <sys/stat.h>

#include <nlohmann/json.hpp>

namespace hps {
namespace {

using nlohmann::json;

[[noreturn]] void config_error(const std::string& path, const std::string& what) {
    throw Error(HPS_ERR_CONFIG, path + ": " + what);
}

std::string dirname_of(const std::string& path) {
    const auto pos = path.find_last_of('/');
    if (pos == std::string::npos) return ".";
    if (pos == 0) return "/";
    return path.substr(0, pos);
}

// Reads models[m].<field>[table_id] when the field is present; absent fields keep the default.
template <typename T>
bool per_table(const std::string& path, const json& model, size_t m, const char* field, int32_t table_id,
               T* out) {
    auto it = model.find(field);
    if (it == model.end()) return false;
    const std::string where = "models[" + std::to_string(m) + "]." + field;
    if (!it->is_array()) config_error(path, where + " must be a list with one entry per table");
    if (static_cast<size_t>(table_id) >= it->size())
        config_error(path, where + " has " + std::to_string(it->size()) + " entries, no entry for table_id " +
                               std::to_string(table_id) + "; give one entry per sparse file");
    try {
        *out = (*it)[static_cast<size_t>(table_id)].get<T>();
    } catch (const json::exception&) {
        config_error(path, where + "[" + std::to_string(table_id) + "] has the wrong type (" +
                               (*it)[static_cast<size_t>(table_id)].dump() + ")");
    }
    return true;
}

template <typename T>
void scalar(const std::string& path, const json& model, size_t m, const char* field, T* out) {
    auto it = model.find(field);
    if (it == model.end()) return;
    try {
        *out = it->get<T>();
    } catch (const json::exception&) {
        config_error(path, "models[" + std::to_string(m) + "]." + field + " has the wrong type (" + it->dump() + ")");
    }
}

int64_t file_size(const std::string& path, const std::string& what_for) {
    struct stat st;
    if (stat(path.c_str(), &st) != 0)
        throw Error(HPS_ERR_TABLE_FILE, path + ": cannot open " + what_for + " (" + std::strerror(errno) +
                                            "); check sparse_files in the config or re-run `hps-surgeon export`");
    if (!S_ISREG(st.st_mode)) throw Error(HPS_ERR_TABLE_FILE, path + ": not a regular file (" + what_for + ")");
    return static_cast<int64_t>(st.st_size);
}

struct FileClose {
    void operator()(FILE* f) const noexcept { std::fclose(f); }  // read-only: nothing to flush
};
using File = std::unique_ptr<FILE, FileClose>;

void read_exact(const std::string& path, void* dst, int64_t bytes, int64_t offset = 0) {
    File f(std::fopen(path.c_str(), "rb"));
    if (!f) throw Error(HPS_ERR_TABLE_FILE, path + ": cannot open (" + std::strerror(errno) + ")");
    if (offset != 0 && fseeko(f.get(), static_cast<off_t>(offset), SEEK_SET) != 0)
        throw Error(HPS_ERR_TABLE_FILE, path + ": cannot seek to byte " + std::to_string(offset));
    char* p = static_cast<char*>(dst);
    int64_t left = bytes;
    while (left > 0) {
        // 64 MiB pieces keep one fread well under any size_t or filesystem limit.
        const size_t chunk = static_cast<size_t>(left < (int64_t(64) << 20) ? left : (int64_t(64) << 20));
        const size_t got = std::fread(p, 1, chunk, f.get());
        if (got != chunk)
            throw Error(HPS_ERR_TABLE_FILE, path + ": read failed after " + std::to_string(bytes - left + int64_t(got)) +
                                                " of " + std::to_string(bytes) + " bytes (" +
                                                (std::feof(f.get()) ? "file shrank while reading" : std::strerror(errno)) +
                                                ")");
        p += got;
        left -= static_cast<int64_t>(got);
    }
}

}  // namespace

TableSpec parse_config(const std::string& path, const std::string& model_name, int32_t table_id) {
    std::ifstream in(path);
    if (!in) throw Error(HPS_ERR_CONFIG, path + ": cannot open the HPS config (" + std::strerror(errno) +
                                             "); pass the hps_config.json written by `hps-surgeon export`");
    json root;
    try {
        in >> root;
    } catch (const json::parse_error& e) {
        config_error(path, std::string("not valid JSON: ") + e.what());
    }
    if (!root.is_object()) config_error(path, "top level must be an object with a \"models\" list");
    auto models = root.find("models");
    if (models == root.end() || !models->is_array()) config_error(path, "missing \"models\" list");

    std::vector<std::string> names;
    for (size_t m = 0; m < models->size(); ++m) {
        const json& model = (*models)[m];
        auto name = model.find("model");
        if (!model.is_object() || name == model.end() || !name->is_string())
            config_error(path, "models[" + std::to_string(m) + "] has no string \"model\" name");
        names.push_back(name->get<std::string>());
        if (names.back() != model_name) continue;

        TableSpec spec;
        spec.config_path = path;
        spec.model_name = model_name;
        spec.table_id = table_id;
        const std::string where = "models[" + std::to_string(m) + "]";
        if (table_id < 0) config_error(path, where + ": table_id " + std::to_string(table_id) + " is negative");

        std::string sparse;
        if (!per_table(path, model, m, "sparse_files", table_id, &sparse))
            config_error(path, where + ".sparse_files is missing; list one table folder per table");
        spec.sparse_dir = (!sparse.empty() && sparse[0] == '/') ? sparse : dirname_of(path) + "/" + sparse;
        if (!per_table(path, model, m, "embedding_vecsize_per_table", table_id, &spec.emb_vec_size))
            config_error(path, where + ".embedding_vecsize_per_table is missing; give each table's vector size");
        if (spec.emb_vec_size <= 0)
            config_error(path, where + ".embedding_vecsize_per_table[" + std::to_string(table_id) + "] = " +
                                   std::to_string(spec.emb_vec_size) + " must be positive");
        spec.table_name = "table" + std::to_string(table_id);
        per_table(path, model, m, "embedding_table_names", table_id, &spec.table_name);
        per_table(path, model, m, "default_value_for_each_table", table_id, &spec.default_value);
        scalar(path, model, m, "gpucache", &spec.gpucache);
        scalar(path, model, m, "gpucacheper", &spec.gpucacheper);
        if (!(spec.gpucacheper >= 0.0 && spec.gpucacheper <= 1.0))
            config_error(path, where + ".gpucacheper = " + std::to_string(spec.gpucacheper) +
                                   " must lie in [0, 1] (fraction of rows kept in GPU memory)");
        scalar(path, model, m, "deployed_device_list", &spec.deployed_devices);
        scalar(path, model, m, "max_batch_size", &spec.max_batch_size);
        return spec;
    }
    std::ostringstream known;
    for (size_t i = 0; i < names.size(); ++i) known << (i ? ", " : "") << '"' << names[i] << '"';
    config_error(path, "no model named \"" + model_name + "\" (models: " + known.str() +
                           "); check the model_name attribute of the HPS_TRT node");
}

TableFiles inspect_table_files(const TableSpec& spec) {
    TableFiles files;
    files.key_path = spec.sparse_dir + "/key";
    files.vec_path = spec.sparse_dir + "/emb_vector";
    const int64_t key_bytes = file_size(files.key_path, "the key file of table '" + spec.table_name + "'");
    const int64_t vec_bytes = file_size(files.vec_path, "the emb_vector file of table '" + spec.table_name + "'");
    if (key_bytes % 8 != 0)
        throw Error(HPS_ERR_TABLE_FILE, files.key_path + ": " + std::to_string(key_bytes) +
                                            " bytes is not a whole number of int64 keys (truncated?); re-export the table");
    files.rows = key_bytes / 8;
    const int64_t row_bytes = int64_t(spec.emb_vec_size) * 4;
    const int64_t want = files.rows * row_bytes;
    if (vec_bytes != want) {
        std::string hint;
        if (vec_bytes < want) hint = "truncated?";
        if (vec_bytes % row_bytes == 0 && vec_bytes != want)
            hint = "holds " + std::to_string(vec_bytes / row_bytes) + " vectors for " + std::to_string(files.rows) + " keys";
        else if (files.rows > 0 && vec_bytes % (files.rows * 4) == 0)
            hint = "matches emb_vec_size " + std::to_string(vec_bytes / (files.rows * 4)) + ", not " +
                   std::to_string(spec.emb_vec_size);
        throw Error(HPS_ERR_TABLE_FILE, files.vec_path + ": " + std::to_string(vec_bytes) + " bytes, expected " +
                                            std::to_string(want) + " (" + std::to_string(files.rows) + " keys x " +
                                            std::to_string(spec.emb_vec_size) + " float32)" +
                                            (hint.empty() ? "" : "; " + hint) +
                                            "; check embedding_vecsize_per_table or re-export the table");
    }
    if (files.rows > int64_t(INT32_MAX) - 1)
        throw Error(HPS_ERR_TABLE_FILE, files.key_path + ": " + std::to_string(files.rows) +
                                            " rows exceed the 2^31-2 rows one table may hold; split the table");
    return files;
}

void read_table_files(const TableFiles& files, int32_t dim, int64_t* keys, float* vectors) {
    read_exact(files.key_path, keys, files.rows * 8);
    if (vectors) read_exact(files.vec_path, vectors, files.rows * int64_t(dim) * 4);
}

void read_vector_rows(const TableFiles& files, int32_t dim, int64_t row0, int64_t count, float* dst) {
    read_exact(files.vec_path, dst, count * int64_t(dim) * 4, row0 * int64_t(dim) * 4);
}

}  // namespace hps
