// trt_glue_check.cpp: drives the HPS_TRT creator and plugin the way TensorRT would, without
// TensorRT (its runtime cannot run on these machines): getCreators, field parsing with and
// without trailing NUL, type/format queries, serialisation round trip, enqueue vs the CPU, and
// the error paths. Needs a GPU (the plugin opens its table).   usage: trt_glue_check <scratch dir>
#include <NvInferRuntime.h>

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

using namespace nvinfer1;
extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

static int g_fail = 0;
#define CHECK(c) do { if (!(c)) { std::fprintf(stderr, "line %d: CHECK failed: %s\n", __LINE__, #c); ++g_fail; } } while (0)

int main(int argc, char** argv) {
    if (argc < 2) return 2;
    const std::string dir = argv[1];
    std::filesystem::create_directories(dir + "/t0");
    const int rows = 1000, dim = 8;
    std::vector<long long> keys(rows);
    std::vector<float> vecs(rows * dim);
    for (int r = 0; r < rows; ++r) {
        keys[r] = 10LL * r;
        for (int c = 0; c < dim; ++c) vecs[r * dim + c] = r + c * 0.125f;
    }
    std::ofstream(dir + "/t0/key", std::ios::binary).write(reinterpret_cast<char*>(keys.data()), rows * 8);
    std::ofstream(dir + "/t0/emb_vector", std::ios::binary).write(reinterpret_cast<char*>(vecs.data()), rows * dim * 4);
    std::ofstream(dir + "/hps.json") << R"({"supportlonglong": true, "models": [{"model": "dlrm", "sparse_files": ["t0"],
        "embedding_vecsize_per_table": [8], "default_value_for_each_table": [-1.0], "gpucacheper": 0.5,
        "deployed_device_list": [0], "maxnum_catfeature_query_per_table_per_sample": [1]}]})";

    int32_t nb = 0;
    IPluginCreatorInterface* const* list = getCreators(nb);
    CHECK(nb == 1);
    CHECK(std::strcmp(list[0]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0);
    auto* creator = static_cast<IPluginCreatorV3One*>(list[0]);
    CHECK(std::strcmp(creator->getPluginName(), "HPS_TRT") == 0 && std::strcmp(creator->getPluginVersion(), "1") == 0);
    CHECK(creator->getFieldNames()->nbFields == 4);

    // Fields as the ONNX parser passes them: strings with a NUL (HugeCTR's samples add one more).
    const std::string cfg = dir + "/hps.json";
    const std::string cfg_nul = cfg + std::string(1, '\0');
    const char model_nul[] = "dlrm\0";
    int32_t table_id = 0, emb = dim;
    std::vector<PluginField> f = {
        {"ps_config_file", cfg_nul.data(), PluginFieldType::kCHAR, static_cast<int32_t>(cfg_nul.size() + 1)},
        {"model_name", model_nul, PluginFieldType::kCHAR, static_cast<int32_t>(sizeof(model_nul))},
        {"table_id", &table_id, PluginFieldType::kINT32, 1},
        {"emb_vec_size", &emb, PluginFieldType::kINT32, 1}};
    PluginFieldCollection fc{static_cast<int32_t>(f.size()), f.data()};
    IPluginV3* plugin = creator->createPlugin("emb0", &fc, TensorRTPhase::kBUILD);
    CHECK(plugin != nullptr);
    if (!plugin) return 1;
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    CHECK(std::strcmp(core->getPluginName(), "HPS_TRT") == 0);
    CHECK(build->getNbOutputs() == 1);
    DataType in_t = DataType::kINT64, out_t = DataType::kHALF;
    CHECK(build->getOutputDataTypes(&out_t, 1, &in_t, 1) == 0 && out_t == DataType::kFLOAT);
    in_t = DataType::kFLOAT;
    CHECK(build->getOutputDataTypes(&out_t, 1, &in_t, 1) != 0);
    DynamicPluginTensorDesc io[2]{};
    io[0].desc.type = DataType::kINT32;
    io[0].desc.format = TensorFormat::kLINEAR;
    io[1].desc.type = DataType::kFLOAT;
    io[1].desc.format = TensorFormat::kLINEAR;
    CHECK(build->supportsFormatCombination(0, io, 1, 1) && build->supportsFormatCombination(1, io, 1, 1));
    io[1].desc.type = DataType::kHALF;
    CHECK(!build->supportsFormatCombination(1, io, 1, 1));

    // Serialisation round trip: the runtime phase re-creates the plugin from getFieldsToSerialize.
    auto* rt = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    const PluginFieldCollection* ser = rt->getFieldsToSerialize();
    CHECK(ser->nbFields == 4);
    IPluginV3* restored = creator->createPlugin("emb0", ser, TensorRTPhase::kRUNTIME);
    CHECK(restored != nullptr);
    IPluginV3* attached = restored ? static_cast<IPluginV3OneRuntime*>(
                                         restored->getCapabilityInterface(PluginCapabilityType::kRUNTIME))
                                         ->attachToContext(nullptr)
                                   : nullptr;
    CHECK(attached != nullptr);

    // enqueue: int32 and int64 keys of shape [4, 3], some absent.
    for (int bits : {32, 64}) {
        const int n = 12;
        std::vector<long long> q(n);
        for (int i = 0; i < n; ++i) q[i] = (i % 4 == 3) ? 10LL * i + 5 : 10LL * (i * 37 % rows);
        std::vector<int> q32(q.begin(), q.end());
        void* dk = nullptr;
        float* dout = nullptr;
        cudaMalloc(&dk, n * 8);
        cudaMalloc(&dout, n * dim * 4);
        cudaMemcpy(dk, bits == 64 ? static_cast<void*>(q.data()) : static_cast<void*>(q32.data()), n * bits / 8,
                   cudaMemcpyHostToDevice);
        PluginTensorDesc in{}, out{};
        in.dims.nbDims = 2;
        in.dims.d[0] = 4;
        in.dims.d[1] = 3;
        in.type = bits == 64 ? DataType::kINT64 : DataType::kINT32;
        out.type = DataType::kFLOAT;
        const void* ins[] = {dk};
        void* outs[] = {dout};
        auto* art = static_cast<IPluginV3OneRuntime*>(attached->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        CHECK(art->onShapeChange(&in, 1, &out, 1) == 0);
        CHECK(art->enqueue(&in, &out, ins, outs, nullptr, nullptr) == 0);
        std::vector<float> got(n * dim);
        cudaMemcpy(got.data(), dout, got.size() * 4, cudaMemcpyDeviceToHost);
        for (int i = 0; i < n; ++i)
            for (int c = 0; c < dim; ++c) {
                const bool present = q[i] % 10 == 0;
                const float want = present ? vecs[(q[i] / 10) * dim + c] : -1.0f;
                CHECK(got[i * dim + c] == want);
            }
        cudaFree(dk);
        cudaFree(dout);
    }

    // Error paths: missing field, wrong emb_vec_size, unknown model.
    PluginFieldCollection three{3, f.data()};
    CHECK(creator->createPlugin("emb0", &three, TensorRTPhase::kBUILD) == nullptr);
    emb = 16;
    CHECK(creator->createPlugin("emb0", &fc, TensorRTPhase::kBUILD) == nullptr);
    emb = dim;
    const char other[] = "wdl";
    f[1].data = other;
    f[1].length = sizeof(other);
    CHECK(creator->createPlugin("emb0", &fc, TensorRTPhase::kBUILD) == nullptr);

    delete attached;
    delete restored;
    delete plugin;
    std::printf("%s: trt glue check, %d failure(s)\n", g_fail ? "FAILED" : "OK", g_fail);
    return g_fail ? 1 : 0;
}
