// test_host.cpp: host-only tests of config parsing and table-file checks (no CUDA calls, runs on
// CPU-only CI through ctest). Each check prints what failed; the exit code is the failure count.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "check.hpp"
#include "host_table.hpp"

namespace {

std::string g_dir;

void write_file(const std::string& path, const void* data, size_t bytes) {
    std::ofstream f(path, std::ios::binary);
    f.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
}

void write_text(const std::string& path, const std::string& text) { write_file(path, text.data(), text.size()); }

// Writes tables/<name>/{key,emb_vector} with rows keys k*7+1 and vectors v[r][c] = r + c/100.
void write_table(const std::string& name, int rows, int dim, int drop_vec_bytes = 0, int drop_key_bytes = 0) {
    const std::string dir = g_dir + "/tables/" + name;
    std::filesystem::create_directories(dir);
    std::vector<long long> keys(rows);
    std::vector<float> vecs(static_cast<size_t>(rows) * dim);
    for (int r = 0; r < rows; ++r) {
        keys[r] = r * 7LL + 1;
        for (int c = 0; c < dim; ++c) vecs[static_cast<size_t>(r) * dim + c] = r + c / 100.0f;
    }
    write_file(dir + "/key", keys.data(), keys.size() * 8 - drop_key_bytes);
    write_file(dir + "/emb_vector", vecs.data(), vecs.size() * 4 - drop_vec_bytes);
}

std::string config(const std::string& sparse0, int dim0 = 8, const std::string& extra = "") {
    return R"({"supportlonglong": true, "models": [{"model": "dlrm",
      "sparse_files": [")" + sparse0 + R"(", "tables/t1"],
      "num_of_worker_buffer_in_pool": 3,
      "embedding_table_names": ["t0", "t1"],
      "embedding_vecsize_per_table": [)" + std::to_string(dim0) + R"(, 4],
      "maxnum_catfeature_query_per_table_per_sample": [26, 1],
      "default_value_for_each_table": [0.5, -1.0],
      "deployed_device_list": [0], "max_batch_size": 1024,
      "cache_refresh_percentage_per_iteration": 0.2, "hit_rate_threshold": 1.0,
      "gpucacheper": 0.25, "gpucache": true)" + extra + "}]}";
}

// Runs f, expects hps::Error with `code` whose message contains every needle.
void expect_error(const std::function<void()>& f, hps_status code, const std::vector<std::string>& needles,
                  int line) {
    try {
        f();
        std::fprintf(stderr, "line %d: expected an error, got none\n", line);
        ++g_failures;
    } catch (const hps::Error& e) {
        if (e.code() != code) {
            std::fprintf(stderr, "line %d: code %d, expected %d (%s)\n", line, e.code(), code, e.what());
            ++g_failures;
        }
        for (const auto& n : needles)
            if (std::string(e.what()).find(n) == std::string::npos) {
                std::fprintf(stderr, "line %d: message lacks '%s': %s\n", line, n.c_str(), e.what());
                ++g_failures;
            }
    }
}

void test_parse_ok() {
    write_text(g_dir + "/ok.json", config("tables/t0"));
    const hps::TableSpec s = hps::parse_config(g_dir + "/ok.json", "dlrm", 0);
    CHECK(s.table_name == "t0");
    CHECK(s.sparse_dir == g_dir + "/tables/t0");
    CHECK(s.emb_vec_size == 8);
    CHECK(s.default_value == 0.5f);
    CHECK(s.gpucache);
    CHECK(s.gpucacheper == 0.25);
    CHECK(s.deployed_devices.size() == 1 && s.deployed_devices[0] == 0);
    CHECK(s.max_batch_size == 1024);
    const hps::TableSpec s1 = hps::parse_config(g_dir + "/ok.json", "dlrm", 1);
    CHECK(s1.table_name == "t1" && s1.emb_vec_size == 4 && s1.default_value == -1.0f);
    // Absolute sparse path is used as is.
    write_text(g_dir + "/abs.json", config(g_dir + "/tables/t0"));
    CHECK(hps::parse_config(g_dir + "/abs.json", "dlrm", 0).sparse_dir == g_dir + "/tables/t0");
}

// A valid one-table config as nlohmann JSON, to break one field at a time.
nlohmann::json base_config() {
    return nlohmann::json::parse(R"({"supportlonglong": false, "models": [{"model": "m",
        "sparse_files": ["tables/t0"], "embedding_table_names": ["t0"], "embedding_vecsize_per_table": [8],
        "maxnum_catfeature_query_per_table_per_sample": [26], "default_value_for_each_table": [0.5],
        "deployed_device_list": [0]}]})");
}

std::string write_config(const std::string& name, const nlohmann::json& config) {
    const std::string path = g_dir + "/" + name;
    write_text(path, config.dump());
    return path;
}

void test_parse_errors() {
    const std::string missing = g_dir + "/nope.json";
    expect_error([&] { hps::parse_config(missing, "dlrm", 0); }, HPS_ERR_CONFIG, {missing, "cannot open"}, __LINE__);
    write_text(g_dir + "/bad.json", "{\"models\": [");
    expect_error([&] { hps::parse_config(g_dir + "/bad.json", "dlrm", 0); }, HPS_ERR_CONFIG, {"bad.json", "not valid JSON"},
                 __LINE__);
    write_text(g_dir + "/ok.json", config("tables/t0"));
    expect_error([&] { hps::parse_config(g_dir + "/ok.json", "wdl", 0); }, HPS_ERR_CONFIG,
                 {"no model named \"wdl\"", "\"dlrm\"", "model_name"}, __LINE__);
    expect_error([&] { hps::parse_config(g_dir + "/ok.json", "dlrm", 2); }, HPS_ERR_CONFIG,
                 {"models[0]: table_id 2 is out of range", "has 2 table(s)"}, __LINE__);
    expect_error([&] { hps::parse_config(g_dir + "/ok.json", "dlrm", -1); }, HPS_ERR_CONFIG, {"table_id -1 is out of range"},
                 __LINE__);
    write_text(g_dir + "/type.json", config("tables/t0", 8, ", \"gpucacheper\": \"all\""));
    expect_error([&] { hps::parse_config(g_dir + "/type.json", "dlrm", 0); }, HPS_ERR_CONFIG,
                 {"gpucacheper must be a number"}, __LINE__);
    auto c = base_config();
    c["models"][0]["gpucacheper"] = -0.5;
    expect_error([&] { hps::parse_config(write_config("range.json", c), "m", 0); }, HPS_ERR_CONFIG,
                 {"gpucacheper = -0.5 must be at least 0"}, __LINE__);
    c = base_config();
    c["models"][0]["embedding_vecsize_per_table"] = {0};
    expect_error([&] { hps::parse_config(write_config("dim0.json", c), "m", 0); }, HPS_ERR_CONFIG,
                 {"embedding_vecsize_per_table[0] = 0 must be an integer of at least 1"}, __LINE__);
}

// Each case mirrors a rule of HugeCTR's parser (NVIDIA-Merlin/HugeCTR af9025667e, HugeCTR/src/hps/ unless
// given): a field it requires ("[Parser] No Such Key", HugeCTR/include/parser.hpp:114) and the line reading it.
void test_refused_as_hugectr_refuses() {
    const std::pair<const char*, int> top[] = {{"supportlonglong", 383}, {"models", 507}};
    for (const auto& [field, line] : top) {
        auto c = base_config();
        c.erase(field);
        expect_error([&] { hps::parse_config(write_config(std::string("no_") + field + ".json", c), "m", 0); },
                     HPS_ERR_CONFIG, {std::string("(top level): \"") + field + "\" is missing", "[Parser] No Such Key: " +
                     std::string(field), "inference_utils.cpp:" + std::to_string(line)}, __LINE__);
    }
    const std::pair<const char*, int> per_model[] = {
        {"sparse_files", 521}, {"deployed_device_list", 557}, {"maxnum_catfeature_query_per_table_per_sample", 567},
        {"embedding_vecsize_per_table", 579}, {"default_value_for_each_table", 590}};
    for (const auto& [field, line] : per_model) {
        auto c = base_config();
        c["models"][0].erase(field);
        expect_error([&] { hps::parse_config(write_config(std::string("no_") + field + ".json", c), "m", 0); },
                     HPS_ERR_CONFIG, {std::string("models[0]: \"") + field + "\" is missing",
                     "inference_utils.cpp:" + std::to_string(line)}, __LINE__);
    }
    auto c = base_config();
    c["models"] = nlohmann::json::array();  // inference_utils.cpp:508
    expect_error([&] { hps::parse_config(write_config("no_models.json", c), "m", 0); }, HPS_ERR_CONFIG,
                 {"models is empty", "No model configurations in JSON", "inference_utils.cpp:508"}, __LINE__);
    c = base_config();
    c["models"][0]["deployed_device_list"] = nlohmann::json::array();  // inference_utils.cpp:564 takes .back()
    expect_error([&] { hps::parse_config(write_config("no_devices.json", c), "m", 0); }, HPS_ERR_CONFIG,
                 {"deployed_device_list is empty", "inference_utils.cpp:564"}, __LINE__);
    const std::pair<const char*, const char*> counts[] = {
        {"embedding_vecsize_per_table", "hier_parameter_server.cpp:259"},
        {"maxnum_catfeature_query_per_table_per_sample", "embedding_cache.cpp:180-182"},
        {"embedding_table_names", "hier_parameter_server.cpp:281"}};
    for (const auto& [field, cite] : counts) {
        c = base_config();
        c["models"][0][field].push_back(c["models"][0][field][0]);
        expect_error([&] { hps::parse_config(write_config(std::string("count_") + field + ".json", c), "m", 0); },
                     HPS_ERR_CONFIG, {std::string("models[0].") + field + " has 2 entries, sparse_files has 1", cite},
                     __LINE__);
    }
    // hier_parameter_server.cpp:34-38: names outside [a-zA-Z0-9_-]{1,120} abort HugeCTR's HPS.
    c = base_config();
    c["models"][0]["model"] = "emb.v2";
    expect_error([&] { hps::parse_config(write_config("model_name.json", c), "emb.v2", 0); }, HPS_ERR_CONFIG,
                 {"models[0].model 'emb.v2' is not a valid HugeCTR model name", "hier_parameter_server.cpp:34-38"},
                 __LINE__);
    c = base_config();
    c["models"][0].erase("model");  // inference_utils.cpp:513: named "", which the rule refuses
    expect_error([&] { hps::parse_config(write_config("no_model_name.json", c), "", 0); }, HPS_ERR_CONFIG,
                 {"models[0].model '' is not a valid HugeCTR model name"}, __LINE__);
    c = base_config();
    c["models"][0]["embedding_table_names"] = {"emb_l.0.weight"};
    expect_error([&] { hps::parse_config(write_config("table_name.json", c), "m", 0); }, HPS_ERR_CONFIG,
                 {"models[0].embedding_table_names[0] 'emb_l.0.weight' is not a valid HugeCTR table name"}, __LINE__);
    c = base_config();
    c["models"][0]["model"] = std::string(121, 'a');
    expect_error([&] { hps::parse_config(write_config("long_name.json", c), std::string(121, 'a'), 0); },
                 HPS_ERR_CONFIG, {"is not a valid HugeCTR model name"}, __LINE__);
}

// What HugeCTR accepts loads here, with HugeCTR's defaults (inference_utils.cpp line in each comment).
void test_accepted_as_hugectr_accepts() {
    auto c = base_config();
    for (const char* field : {"embedding_table_names"}) c["models"][0].erase(field);
    c["models"][0]["default_value_for_each_table"] = nlohmann::json::array();  // :593-605 pads with 0.0
    c["models"][0]["hit_rate_threshold"] = 1.5;                                // :531, any float
    c["models"][0]["gpucacheper"] = 0;                                         // :533; embedding_cache.cpp:193
    c["models"][0]["use_static_table"] = false;                                // :650, other modes: ignored
    hps::TableSpec s = hps::parse_config(write_config("accepted.json", c), "m", 0);
    CHECK(s.table_name == "sparse_embedding0");  // :630
    CHECK(s.max_batch_size == 64);                // :519
    CHECK(s.gpucache);                            // :529
    CHECK(s.gpucacheper == 0.0);
    CHECK(s.default_value == 0.0f);
    CHECK(s.max_keys_per_sample == 26);
    c = base_config();
    c["models"][0]["gpucacheper"] = 3.0;  // more than the table: the whole table
    CHECK(hps::parse_config(write_config("big_cache.json", c), "m", 0).gpucacheper == 3.0);
    c["models"][0].erase("gpucacheper");
    CHECK(hps::parse_config(write_config("default_cache.json", c), "m", 0).gpucacheper == 0.2);  // :533
}

std::vector<std::string> g_warnings;
void capture_warning(const std::string& message) { g_warnings.push_back(message); }

void test_unserved_sections_are_logged_once() {
    hps::set_warning_sink(capture_warning);
    auto c = base_config();
    c["volatile_db"] = {{"type", "redis_cluster"}};  // served by the storage tiers: no warning
    c["update_source"] = {{"type", "Kafka_Message_Queue"}};
    const std::string path = write_config("tiers.json", c);
    hps::parse_config(path, "m", 0);
    hps::parse_config(path, "m", 0);
    CHECK(g_warnings.size() == 1);
    CHECK(!g_warnings.empty() && g_warnings[0].find("the 'update_source' section (type kafka_message_queue) is not "
                                                    "consumed") != std::string::npos);
    c["update_source"] = {{"type", "null"}};
    hps::parse_config(write_config("null_source.json", c), "m", 0);
    CHECK(g_warnings.size() == 1);
    hps::set_warning_sink(nullptr);
}

void test_deep_json_is_one_error() {
    const std::string path = g_dir + "/deep.json";
    write_text(path, std::string(100000, '[') + std::string(100000, ']'));
    expect_error([&] { hps::parse_config(path, "m", 0); }, HPS_ERR_CONFIG,
                 {"deep.json: JSON nested more than 32 levels deep"}, __LINE__);
}

void test_files() {
    write_table("t0", 10, 8);
    write_text(g_dir + "/ok.json", config("tables/t0"));
    const hps::TableSpec s = hps::parse_config(g_dir + "/ok.json", "dlrm", 0);
    const hps::TableFiles f = hps::inspect_table_files(s);
    CHECK(f.rows == 10);
    std::vector<long long> keys(10);
    std::vector<float> vecs(80);
    hps::read_table_files(f, 8, reinterpret_cast<int64_t*>(keys.data()), vecs.data());
    CHECK(keys[3] == 22 && vecs[3 * 8 + 2] == 3.02f);
    std::vector<float> part(2 * 8);
    hps::read_vector_rows(f, 8, 4, 2, part.data());
    CHECK(part[0] == 4.0f && part[8 + 1] == 5.01f);

    // Missing folder / files.
    write_text(g_dir + "/missing.json", config("tables/absent"));
    expect_error([&] { hps::inspect_table_files(hps::parse_config(g_dir + "/missing.json", "dlrm", 0)); },
                 HPS_ERR_TABLE_FILE, {"tables/absent/key", "cannot open", "sparse_files"}, __LINE__);
    // Truncated emb_vector.
    write_table("trunc", 10, 8, 12);
    write_text(g_dir + "/trunc.json", config("tables/trunc"));
    expect_error([&] { hps::inspect_table_files(hps::parse_config(g_dir + "/trunc.json", "dlrm", 0)); },
                 HPS_ERR_TABLE_FILE, {"emb_vector", "308 bytes, expected 320", "10 keys x 8 float32"}, __LINE__);
    // Key file not a multiple of 8 bytes.
    write_table("badkey", 10, 8, 0, 3);
    write_text(g_dir + "/badkey.json", config("tables/badkey"));
    expect_error([&] { hps::inspect_table_files(hps::parse_config(g_dir + "/badkey.json", "dlrm", 0)); },
                 HPS_ERR_TABLE_FILE, {"77 bytes", "int64"}, __LINE__);
    // emb_vec_size in the config disagrees with the files.
    write_table("dim16", 10, 16);
    write_text(g_dir + "/dim.json", config("tables/dim16", 8));
    expect_error([&] { hps::inspect_table_files(hps::parse_config(g_dir + "/dim.json", "dlrm", 0)); },
                 HPS_ERR_TABLE_FILE, {"holds 20 vectors for 10 keys", "embedding_vecsize_per_table"}, __LINE__);
    // Empty table is valid.
    write_table("empty", 0, 8);
    write_text(g_dir + "/empty.json", config("tables/empty"));
    CHECK(hps::inspect_table_files(hps::parse_config(g_dir + "/empty.json", "dlrm", 0)).rows == 0);
}

}  // namespace

// `test_host --check CONFIG MODEL TABLE_ID`: what hps_open checks before it touches a GPU (the config
// as the plugin parses it, the table files), for the Python tests to run on every rewrite output.
int check_one(const char* config, const char* model, const char* table_id) {
    try {
        const hps::TableSpec spec = hps::parse_config(config, model, std::atoi(table_id));
        const hps::TableFiles files = hps::inspect_table_files(spec);
        std::printf("rows=%lld dim=%d name=%s dir=%s\n", static_cast<long long>(files.rows), spec.emb_vec_size,
                    spec.table_name.c_str(), spec.sparse_dir.c_str());
        return 0;
    } catch (const hps::Error& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 2;
    }
}

int main(int argc, char** argv) {
    if (argc == 5 && std::strcmp(argv[1], "--check") == 0) return check_one(argv[2], argv[3], argv[4]);
    char tmpl[] = "/tmp/hps_test_host.XXXXXX";
    if (!mkdtemp(tmpl)) return 99;
    g_dir = tmpl;
    test_parse_ok();
    test_parse_errors();
    test_refused_as_hugectr_refuses();
    test_accepted_as_hugectr_accepts();
    test_unserved_sections_are_logged_once();
    test_deep_json_is_one_error();
    test_files();
    std::filesystem::remove_all(g_dir);
    std::printf("%s: %d failure(s)\n", g_failures ? "FAILED" : "OK", g_failures);
    return g_failures == 0 ? 0 : 1;
}
