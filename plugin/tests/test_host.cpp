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

#include "host_table.hpp"

namespace {

int g_failures = 0;
std::string g_dir;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            ++g_failures;                                                            \
        }                                                                            \
    } while (0)

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

void test_parse_errors() {
    const std::string missing = g_dir + "/nope.json";
    expect_error([&] { hps::parse_config(missing, "dlrm", 0); }, HPS_ERR_CONFIG, {missing, "cannot open"}, __LINE__);
    write_text(g_dir + "/bad.json", "{\"models\": [");
    expect_error([&] { hps::parse_config(g_dir + "/bad.json", "dlrm", 0); }, HPS_ERR_CONFIG, {"bad.json", "not valid JSON"},
                 __LINE__);
    write_text(g_dir + "/nomodels.json", "{\"x\": 1}");
    expect_error([&] { hps::parse_config(g_dir + "/nomodels.json", "dlrm", 0); }, HPS_ERR_CONFIG, {"\"models\""}, __LINE__);
    write_text(g_dir + "/ok.json", config("tables/t0"));
    expect_error([&] { hps::parse_config(g_dir + "/ok.json", "wdl", 0); }, HPS_ERR_CONFIG,
                 {"no model named \"wdl\"", "\"dlrm\"", "model_name"}, __LINE__);
    expect_error([&] { hps::parse_config(g_dir + "/ok.json", "dlrm", 2); }, HPS_ERR_CONFIG,
                 {"models[0].sparse_files", "no entry for table_id 2"}, __LINE__);
    expect_error([&] { hps::parse_config(g_dir + "/ok.json", "dlrm", -1); }, HPS_ERR_CONFIG, {"negative"}, __LINE__);
    write_text(g_dir + "/type.json", config("tables/t0", 8, ", \"gpucacheper\": \"all\""));
    expect_error([&] { hps::parse_config(g_dir + "/type.json", "dlrm", 0); }, HPS_ERR_CONFIG,
                 {"gpucacheper", "wrong type"}, __LINE__);
    write_text(g_dir + "/range.json", R"({"models": [{"model": "m", "sparse_files": ["a"],
        "embedding_vecsize_per_table": [8], "gpucacheper": 1.5}]})");
    expect_error([&] { hps::parse_config(g_dir + "/range.json", "m", 0); }, HPS_ERR_CONFIG, {"gpucacheper", "[0, 1]"},
                 __LINE__);
    write_text(g_dir + "/dim0.json", R"({"models": [{"model": "m", "sparse_files": ["a"],
        "embedding_vecsize_per_table": [0]}]})");
    expect_error([&] { hps::parse_config(g_dir + "/dim0.json", "m", 0); }, HPS_ERR_CONFIG, {"must be positive"}, __LINE__);
    write_text(g_dir + "/nodim.json", R"({"models": [{"model": "m", "sparse_files": ["a"]}]})");
    expect_error([&] { hps::parse_config(g_dir + "/nodim.json", "m", 0); }, HPS_ERR_CONFIG,
                 {"embedding_vecsize_per_table is missing"}, __LINE__);
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

int main() {
    char tmpl[] = "/tmp/hps_test_host.XXXXXX";
    if (!mkdtemp(tmpl)) return 99;
    g_dir = tmpl;
    test_parse_ok();
    test_parse_errors();
    test_files();
    std::filesystem::remove_all(g_dir);
    std::printf("%s: %d failure(s)\n", g_failures ? "FAILED" : "OK", g_failures);
    return g_failures == 0 ? 0 : 1;
}
