// trt_glue_check.cpp: drives the HPS_TRT creator and plugin the way TensorRT would, without
// TensorRT: getCreators, field parsing with and without trailing NUL, type/shape/format queries,
// serialisation round trip, enqueue vs the CPU, and the error paths.
//
//   hps_trt_glue_check DIR                 build phase, then runtime phase (needs a GPU)
//   hps_trt_glue_check DIR --build-phase   build phase only; run with CUDA_VISIBLE_DEVICES= to
//                                          prove it needs no GPU (a ctest on every machine)
#include <NvInferRuntime.h>

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

using namespace nvinfer1;
extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

namespace {

int g_fail = 0;
#define CHECK(c) do { if (!(c)) { std::fprintf(stderr, "line %d: CHECK failed: %s\n", __LINE__, #c); ++g_fail; } } while (0)

constexpr int kRows = 1000, kDim = 8;

// Constant dimension expressions: all getOutputShapes needs (TensorRT's own live in libnvinfer).
class ConstantExpr final : public apiv::VDimensionExpr {
public:
    explicit ConstantExpr(int64_t v) : value_(v) {}
    bool isConstant() const override { return true; }
    int64_t getConstantValue() const override { return value_; }
    bool isSizeTensor() const override { return false; }

private:
    int64_t value_;
};
class Expr final : public IDimensionExpr {
public:
    explicit Expr(int64_t v) : impl_(v) { mImpl = &impl_; }

private:
    ConstantExpr impl_;
};
class ConstantBuilder final : public apiv::VExprBuilder {
public:
    IDimensionExpr const* constant(int64_t value) override {
        exprs_.push_back(std::make_unique<Expr>(value));
        return exprs_.back().get();
    }
    IDimensionExpr const* operation(DimensionOperation, IDimensionExpr const&, IDimensionExpr const&) override {
        return nullptr;
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override {
        return nullptr;
    }

private:
    std::vector<std::unique_ptr<Expr>> exprs_;
};
class ExprBuilder final : public IExprBuilder {
public:
    ExprBuilder() { mImpl = &impl_; }

private:
    ConstantBuilder impl_;
};

struct Table {
    std::string config;
    std::vector<long long> keys;
    std::vector<float> vecs;
};

Table write_table(const std::string& dir) {
    Table t{dir + "/hps.json", std::vector<long long>(kRows), std::vector<float>(kRows * kDim)};
    std::filesystem::create_directories(dir + "/t0");
    for (int r = 0; r < kRows; ++r) {
        t.keys[r] = 10LL * r;
        for (int c = 0; c < kDim; ++c) t.vecs[r * kDim + c] = r + c * 0.125f;
    }
    std::ofstream(dir + "/t0/key", std::ios::binary).write(reinterpret_cast<char*>(t.keys.data()), kRows * 8);
    std::ofstream(dir + "/t0/emb_vector", std::ios::binary)
        .write(reinterpret_cast<char*>(t.vecs.data()), kRows * kDim * 4);
    std::ofstream(t.config) << R"({"supportlonglong": true, "models": [{"model": "dlrm", "sparse_files": ["t0", "missing"],
        "embedding_vecsize_per_table": [8, 8], "default_value_for_each_table": [-1.0, 0.0], "gpucacheper": 0.5,
        "deployed_device_list": [0], "maxnum_catfeature_query_per_table_per_sample": [1, 1]}]})";
    return t;
}

// The node's fields as the ONNX parser passes them: strings with a NUL (HugeCTR's samples add one more).
struct NodeFields {
    std::string config_nul;
    std::string model = std::string("dlrm") + '\0';
    int32_t table_id = 0, emb = kDim;
    std::vector<PluginField> f;
    PluginFieldCollection fc{};

    explicit NodeFields(const std::string& config) : config_nul(config + '\0') { refresh(); }
    PluginFieldCollection* refresh() {
        f = {{"ps_config_file", config_nul.data(), PluginFieldType::kCHAR, static_cast<int32_t>(config_nul.size() + 1)},
             {"model_name", model.data(), PluginFieldType::kCHAR, static_cast<int32_t>(model.size() + 1)},
             {"table_id", &table_id, PluginFieldType::kINT32, 1},
             {"emb_vec_size", &emb, PluginFieldType::kINT32, 1}};
        fc = {static_cast<int32_t>(f.size()), f.data()};
        return &fc;
    }
};

template <typename T>
T* capability(IPluginV3* plugin, PluginCapabilityType type) {
    return static_cast<T*>(plugin->getCapabilityInterface(type));
}

IPluginCreatorV3One* the_creator() {
    int32_t nb = 0;
    IPluginCreatorInterface* const* list = getCreators(nb);
    CHECK(nb == 1);
    CHECK(std::strcmp(list[0]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0);
    auto* creator = static_cast<IPluginCreatorV3One*>(list[0]);
    CHECK(std::strcmp(creator->getPluginName(), "HPS_TRT") == 0 && std::strcmp(creator->getPluginVersion(), "1") == 0);
    CHECK(creator->getFieldNames()->nbFields == 4);
    return creator;
}

// Everything a builder calls, on a plugin created for the build phase. No CUDA call may succeed
// or be needed here: under CUDA_VISIBLE_DEVICES= any table opening would fail.
void build_phase(IPluginCreatorV3One* creator, const Table& table) {
    NodeFields node(table.config);
    IPluginV3* plugin = creator->createPlugin("emb0", node.refresh(), TensorRTPhase::kBUILD);
    CHECK(plugin != nullptr);
    if (!plugin) return;
    auto* core = capability<IPluginV3OneCore>(plugin, PluginCapabilityType::kCORE);
    auto* build = capability<IPluginV3OneBuild>(plugin, PluginCapabilityType::kBUILD);
    CHECK(std::strcmp(core->getPluginName(), "HPS_TRT") == 0);
    CHECK(build->getNbOutputs() == 1);
    DataType in_t = DataType::kINT64, out_t = DataType::kHALF;
    CHECK(build->getOutputDataTypes(&out_t, 1, &in_t, 1) == 0 && out_t == DataType::kFLOAT);
    in_t = DataType::kFLOAT;
    CHECK(build->getOutputDataTypes(&out_t, 1, &in_t, 1) != 0);

    ExprBuilder exprs;
    DimsExprs keys{};
    keys.nbDims = 2;
    keys.d[0] = exprs.constant(4);
    keys.d[1] = exprs.constant(3);
    DimsExprs out{};
    CHECK(build->getOutputShapes(&keys, 1, nullptr, 0, &out, 1, exprs) == 0);
    CHECK(out.nbDims == 3 && out.d[0] == keys.d[0] && out.d[1] == keys.d[1]);
    CHECK(out.d[2] && out.d[2]->isConstant() && out.d[2]->getConstantValue() == kDim);

    DynamicPluginTensorDesc io[2]{};
    io[0].desc.type = DataType::kINT32;
    io[0].desc.format = TensorFormat::kLINEAR;
    io[1].desc.type = DataType::kFLOAT;
    io[1].desc.format = TensorFormat::kLINEAR;
    CHECK(build->supportsFormatCombination(0, io, 1, 1) && build->supportsFormatCombination(1, io, 1, 1));
    io[1].desc.type = DataType::kHALF;
    CHECK(!build->supportsFormatCombination(1, io, 1, 1));
    io[1].desc.type = DataType::kFLOAT;
    CHECK(build->configurePlugin(io, 1, io + 1, 1) == 0);

    IPluginV3* copy = plugin->clone();
    CHECK(copy != nullptr);
    auto* rt = capability<IPluginV3OneRuntime>(copy, PluginCapabilityType::kRUNTIME);
    const PluginFieldCollection* ser = rt->getFieldsToSerialize();
    CHECK(ser->nbFields == 4);
    CHECK(std::strcmp(static_cast<const char*>(ser->fields[0].data), table.config.c_str()) == 0);
    CHECK(std::strcmp(static_cast<const char*>(ser->fields[1].data), "dlrm") == 0);
    CHECK(*static_cast<const int32_t*>(ser->fields[3].data) == kDim);
    delete copy;
    delete plugin;

    // Errors found on the host: missing field, wrong emb_vec_size, unknown model, no table files.
    PluginFieldCollection three{3, node.f.data()};
    CHECK(creator->createPlugin("emb0", &three, TensorRTPhase::kBUILD) == nullptr);
    node.emb = 16;
    CHECK(creator->createPlugin("emb0", node.refresh(), TensorRTPhase::kBUILD) == nullptr);
    node.emb = kDim;
    node.table_id = 1;  // sparse_files[1] = "missing"
    CHECK(creator->createPlugin("emb0", node.refresh(), TensorRTPhase::kBUILD) == nullptr);
    node.table_id = 0;
    node.model = "wdl";
    CHECK(creator->createPlugin("emb0", node.refresh(), TensorRTPhase::kBUILD) == nullptr);
}

void lookup_matches(IPluginV3* plugin, const Table& table, int bits) {
    const int n = 12;
    std::vector<long long> q(n);
    for (int i = 0; i < n; ++i) q[i] = (i % 4 == 3) ? 10LL * i + 5 : 10LL * (i * 37 % kRows);
    std::vector<int> q32(q.begin(), q.end());
    void* dk = nullptr;
    float* dout = nullptr;
    cudaMalloc(&dk, n * 8);
    cudaMalloc(&dout, n * kDim * 4);
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
    auto* rt = capability<IPluginV3OneRuntime>(plugin, PluginCapabilityType::kRUNTIME);
    CHECK(rt->onShapeChange(&in, 1, &out, 1) == 0);
    const bool ran = rt->enqueue(&in, &out, ins, outs, nullptr, nullptr) == 0;
    CHECK(ran);
    std::vector<float> got(n * kDim);
    cudaMemcpy(got.data(), dout, got.size() * 4, cudaMemcpyDeviceToHost);
    for (int i = 0; ran && i < n; ++i)
        for (int c = 0; c < kDim; ++c) {
            const bool present = q[i] % 10 == 0;
            const float want = present ? table.vecs[(q[i] / 10) * kDim + c] : -1.0f;
            CHECK(got[i * kDim + c] == want);
        }
    cudaFree(dk);
    cudaFree(dout);
}

// Deserialisation and execution: the runtime phase opens the table.
void runtime_phase(IPluginCreatorV3One* creator, const Table& table) {
    NodeFields node(table.config);
    IPluginV3* built = creator->createPlugin("emb0", node.refresh(), TensorRTPhase::kBUILD);
    CHECK(built != nullptr);
    if (!built) return;
    // TensorRT may time a build-phase plugin on a GPU machine: its first enqueue opens the table.
    lookup_matches(built, table, 32);

    const PluginFieldCollection* ser =
        capability<IPluginV3OneRuntime>(built, PluginCapabilityType::kRUNTIME)->getFieldsToSerialize();
    IPluginV3* restored = creator->createPlugin("emb0", ser, TensorRTPhase::kRUNTIME);
    CHECK(restored != nullptr);
    IPluginV3* attached =
        restored ? capability<IPluginV3OneRuntime>(restored, PluginCapabilityType::kRUNTIME)->attachToContext(nullptr)
                 : nullptr;
    CHECK(attached != nullptr);
    if (attached)
        for (int bits : {32, 64}) lookup_matches(attached, table, bits);

    // The runtime phase refuses what the table contradicts.
    node.emb = 16;
    CHECK(creator->createPlugin("emb0", node.refresh(), TensorRTPhase::kRUNTIME) == nullptr);
    delete attached;
    delete restored;
    delete built;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) return 2;
    const bool build_only = argc > 2 && std::strcmp(argv[2], "--build-phase") == 0;
    const Table table = write_table(argv[1]);
    IPluginCreatorV3One* creator = the_creator();
    build_phase(creator, table);
    if (!build_only) runtime_phase(creator, table);
    std::printf("%s: trt glue check (%s), %d failure(s)\n", g_fail ? "FAILED" : "OK",
                build_only ? "build phase, no GPU" : "build and runtime phases", g_fail);
    return g_fail ? 1 : 0;
}
