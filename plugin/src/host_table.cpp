// host_table.cpp: hps_config.json parsing (nlohmann_json) and sparse-model file checks/reads.
#include "host_table.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <regex>
#include <set>
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

// HugeCTR's rules are cited as file:line of NVIDIA-Merlin/HugeCTR at af9025667e, the last commit
// with HPS; paths are under HugeCTR/src/hps/ unless given.
constexpr int kMaxDepth = 32;  // an HPS config nests 4 levels; deeper is not one
const std::regex& name_syntax() {
    // hier_parameter_server.cpp:34: HPS aborts on model and table names outside this.
    static const std::regex syntax{"[a-zA-Z0-9_\\-]{1,120}"};
    return syntax;
}
// Sections asking for something not served yet, with the type names that ask for nothing
// (HugeCTR's aliases): one place to drop a section from once it is served.
struct Unserved {
    const char* section;
    std::vector<std::string> inert_types;
};
const Unserved kUnservedSections[] = {{"update_source", {"null", "none"}}};

std::mutex g_warn_mutex;
WarningSink g_warning_sink = nullptr;

void warn(const std::string& message) {
    static std::set<std::string> seen;
    std::lock_guard<std::mutex> lock(g_warn_mutex);
    if (!seen.insert(message).second) return;
    if (g_warning_sink) g_warning_sink(message);
    else std::fprintf(stderr, "hps_plugin: warning: %s\n", message.c_str());
}

json read_json(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw Error(HPS_ERR_CONFIG, path + ": cannot open the HPS config (" + std::strerror(errno) +
                                             "); pass the hps_config.json written by `hps-surgeon rewrite`");
    // The callback bounds the nesting before anything deep is built (nor later destroyed).
    const json::parser_callback_t depth_limit = [&path](int depth, json::parse_event_t event, json&) {
        if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
            depth >= kMaxDepth)
            config_error(path, "JSON nested more than " + std::to_string(kMaxDepth) +
                                   " levels deep; an HPS config nests 4, this is not one");
        return true;
    };
    try {
        return json::parse(in, depth_limit);
    } catch (const json::parse_error& e) {
        config_error(path, std::string("not valid JSON: ") + e.what());
    }
}

// A field HugeCTR's parser demands: it throws "[Parser] No Such Key" (parser.hpp:114) when absent.
const json& required(const std::string& path, const json& object, const std::string& where, const char* field,
                     int hugectr_line) {
    auto it = object.find(field);
    if (it == object.end())
        config_error(path, where + ": \"" + field + "\" is missing; HugeCTR's HPS refuses the config (\"[Parser] No " +
                               "Such Key: " + field + "\", inference_utils.cpp:" + std::to_string(hugectr_line) +
                               "); add it");
    return *it;
}

const json& list(const std::string& path, const json& value, const std::string& where) {
    if (!value.is_array()) config_error(path, where + " must be a list (got " + value.dump() + ")");
    return value;
}

// A list that holds one entry per table, as HugeCTR reads them (its line, quoted in the error).
const json& per_table_list(const std::string& path, const json& value, const std::string& where, size_t tables,
                           const char* hugectr_reads) {
    list(path, value, where);
    if (value.size() != tables)
        config_error(path, where + " has " + std::to_string(value.size()) + " entries, sparse_files has " +
                               std::to_string(tables) + "; HugeCTR needs one per table (" + hugectr_reads +
                               "); give one per table");
    return value;
}

std::string text(const std::string& path, const json& value, const std::string& where) {
    if (!value.is_string()) config_error(path, where + " must be a string (got " + value.dump() + ")");
    return value.get<std::string>();
}

double number(const std::string& path, const json& value, const std::string& where) {
    if (!value.is_number()) config_error(path, where + " must be a number (got " + value.dump() + ")");
    return value.get<double>();
}

int64_t integer(const std::string& path, const json& value, const std::string& where, int64_t at_least) {
    const double v = value.is_number() ? value.get<double>() : 0.0;
    if (!value.is_number() || v != std::floor(v) || v < double(at_least) || v > 9.0e15)
        config_error(path, where + " = " + value.dump() + " must be an integer of at least " + std::to_string(at_least));
    return static_cast<int64_t>(v);
}

bool boolean(const std::string& path, const json& value, const std::string& where) {
    if (!value.is_boolean()) config_error(path, where + " must be true or false (got " + value.dump() + ")");
    return value.get<bool>();
}

void check_name(const std::string& path, const std::string& name, const std::string& where, const char* kind) {
    if (!std::regex_match(name, name_syntax()))
        config_error(path, where + " '" + name + "' is not a valid HugeCTR " + kind + " name: HugeCTR's HPS aborts " +
                               "unless names match [a-zA-Z0-9_-]{1,120} (hier_parameter_server.cpp:34-38); rename it");
}

void warn_about_sections(const std::string& path, const json& root) {
    for (const Unserved& u : kUnservedSections) {
        const auto section = root.find(u.section);
        if (section == root.end() || !section->is_object()) continue;
        const auto type = section->find("type");
        std::string name = type != section->end() && type->is_string() ? type->get<std::string>() : u.inert_types[0];
        for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        if (std::find(u.inert_types.begin(), u.inert_types.end(), name) == u.inert_types.end())
            warn(path + ": the '" + u.section + "' section (type " + name + ") is not consumed by hps_plugin yet: "
                 "tables change only through publish --update and refresh");
    }
    if (root.contains("fuse_embedding_table") && boolean(path, root["fuse_embedding_table"], "fuse_embedding_table"))
        warn(path + ": fuse_embedding_table is true, which HugeCTR's HPS_TRT plugin refuses "
                    "(plugin/lookup_manager.cpp:138); hps_plugin serves each table on its own");
}

TableSpec parse_model(const std::string& path, const json& model, size_t m, const std::string& model_name,
                      int32_t table_id) {
    const std::string at = "models[" + std::to_string(m) + "]";
    TableSpec spec;
    spec.config_path = path;
    spec.model_name = model_name;
    spec.table_id = table_id;
    check_name(path, model_name, at + ".model", "model");

    const json& sparse = list(path, required(path, model, at, "sparse_files", 521), at + ".sparse_files");
    const size_t tables = sparse.size();
    if (table_id < 0 || static_cast<size_t>(table_id) >= tables)
        config_error(path, at + ": table_id " + std::to_string(table_id) + " is out of range: model '" + model_name +
                               "' has " + std::to_string(tables) + " table(s) in sparse_files; check the HPS_TRT node");
    const std::string file = text(path, sparse[table_id], at + ".sparse_files[" + std::to_string(table_id) + "]");
    if (file.empty()) config_error(path, at + ".sparse_files[" + std::to_string(table_id) + "] is empty");
    // Our rule, not HugeCTR's (which reads relative paths against its working directory): relative to
    // the config, so a folder written with --relative-paths can move.
    spec.sparse_dir = file[0] == '/' ? file : dirname_of(path) + "/" + file;

    const json& devices = list(path, required(path, model, at, "deployed_device_list", 557), at + ".deployed_device_list");
    if (devices.empty())
        config_error(path, at + ".deployed_device_list is empty; HugeCTR reads its last entry "
                                "(inference_utils.cpp:564); list the GPUs HPS serves, e.g. [0]");
    for (size_t i = 0; i < devices.size(); ++i)
        spec.deployed_devices.push_back(static_cast<int32_t>(
            integer(path, devices[i], at + ".deployed_device_list[" + std::to_string(i) + "]", 0)));

    const std::string t = "[" + std::to_string(table_id) + "]";
    const json& maxnum = per_table_list(path, required(path, model, at, "maxnum_catfeature_query_per_table_per_sample", 567),
                                        at + ".maxnum_catfeature_query_per_table_per_sample", tables,
                                        "embedding_cache.cpp:180-182 reads one per table");
    spec.max_keys_per_sample = integer(path, maxnum[table_id], at + ".maxnum_catfeature_query_per_table_per_sample" + t, 1);
    const json& dims = per_table_list(path, required(path, model, at, "embedding_vecsize_per_table", 579),
                                      at + ".embedding_vecsize_per_table", tables,
                                      "hier_parameter_server.cpp:259 refuses another count");
    spec.emb_vec_size = static_cast<int32_t>(integer(path, dims[table_id], at + ".embedding_vecsize_per_table" + t, 1));
    // inference_utils.cpp:593-605: a short list is padded with 0.0, extra entries are ignored.
    const json& defaults = list(path, required(path, model, at, "default_value_for_each_table", 590),
                                at + ".default_value_for_each_table");
    if (static_cast<size_t>(table_id) < defaults.size())
        spec.default_value = static_cast<float>(number(path, defaults[table_id], at + ".default_value_for_each_table" + t));

    spec.table_name = "sparse_embedding" + std::to_string(table_id);  // inference_utils.cpp:630
    if (model.contains("embedding_table_names")) {
        const json& names = per_table_list(path, model["embedding_table_names"], at + ".embedding_table_names", tables,
                                           "hier_parameter_server.cpp:281 reads one name per table");
        for (size_t i = 0; i < names.size(); ++i) {
            const std::string where = at + ".embedding_table_names[" + std::to_string(i) + "]";
            check_name(path, text(path, names[i], where), where, "table");
        }
        spec.table_name = names[table_id].get<std::string>();
    }
    if (model.contains("max_batch_size"))  // inference_utils.cpp:519, default 64
        spec.max_batch_size = integer(path, model["max_batch_size"], at + ".max_batch_size", 1);
    if (model.contains("gpucache")) spec.gpucache = boolean(path, model["gpucache"], at + ".gpucache");
    if (model.contains("gpucacheper")) {  // inference_utils.cpp:533, default 0.2; any size is read
        spec.gpucacheper = number(path, model["gpucacheper"], at + ".gpucacheper");
        if (!(spec.gpucacheper >= 0.0))
            config_error(path, at + ".gpucacheper = " + model["gpucacheper"].dump() +
                                   " must be at least 0 (fraction of rows kept in GPU memory)");
    }
    if (model.contains("hit_rate_threshold"))  // read, no effect: lookups are exact at any hit rate
        number(path, model["hit_rate_threshold"], at + ".hit_rate_threshold");
    if (model.contains("num_of_worker_buffer_in_pool"))
        integer(path, model["num_of_worker_buffer_in_pool"], at + ".num_of_worker_buffer_in_pool", 1);
    return spec;
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
    const json root = read_json(path);
    if (!root.is_object()) config_error(path, "top level must be an object with \"supportlonglong\" and \"models\"");
    // supportlonglong: required (inference_utils.cpp:383); both key widths are served whatever it says.
    boolean(path, required(path, root, "(top level)", "supportlonglong", 383), "supportlonglong");
    const json& models = list(path, required(path, root, "(top level)", "models", 507), "models");
    if (models.empty())
        config_error(path, "models is empty; HugeCTR refuses it (\"No model configurations in JSON\", "
                           "inference_utils.cpp:508); add a model entry");
    warn_about_sections(path, root);

    std::vector<std::string> names;
    for (size_t m = 0; m < models.size(); ++m) {
        const json& model = models[m];
        const std::string at = "models[" + std::to_string(m) + "]";
        if (!model.is_object()) config_error(path, at + " must be an object");
        // inference_utils.cpp:513: a model without "model" is named "" (which the name rule refuses).
        names.push_back(model.contains("model") ? text(path, model["model"], at + ".model") : std::string());
        if (names.back() == model_name) return parse_model(path, model, m, model_name, table_id);
    }
    std::ostringstream known;
    for (size_t i = 0; i < names.size(); ++i) known << (i ? ", " : "") << '"' << names[i] << '"';
    config_error(path, "no model named \"" + model_name + "\" (models: " + known.str() +
                           "); check the model_name attribute of the HPS_TRT node");
}

void set_warning_sink(WarningSink sink) {
    std::lock_guard<std::mutex> lock(g_warn_mutex);
    g_warning_sink = sink;
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
