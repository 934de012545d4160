// trt_plugin.cpp: TensorRT glue. IPluginV3 (OneCore/OneBuild/OneRuntime) named HPS_TRT, version
// "1", with HugeCTR's fields (ps_config_file, model_name: kCHAR; table_id, emb_vec_size: kINT32),
// over the lookup core (hps.h). Built only when NvInfer.h is found (-DTENSORRT_ROOT=...).
//
// Differences from HugeCTR's IPluginV2DynamicExt plugin (hps_trt/hps_plugin): keys may be int32 or
// int64 of any rank; output = keys' shape + [emb_vec_size], float32.
//
// Registration, without linking libnvinfer (so Python can load this library where TensorRT is
// absent):
//   * IPluginRegistry::loadLibrary / trtexec --dynamicPlugins: exported getCreators + setLoggerFinder.
//   * LD_PRELOAD into Triton (HugeCTR's documented launch line): when LD_PRELOAD names this library
//     (or HPS_TRT_AUTOREGISTER=1), a load-time constructor dlopens libnvinfer.so.<major> and
//     registers the creator with getPluginRegistry(), as REGISTER_TENSORRT_PLUGIN would.
#include <NvInferRuntime.h>
#include <NvInferVersion.h>

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "hps_plugin/hps.h"

namespace hps_trt {
namespace {

using namespace nvinfer1;

constexpr char kPluginName[] = "HPS_TRT";
constexpr char kPluginVersion[] = "1";

std::atomic<ILoggerFinder*> g_logger_finder{nullptr};

void log(ILogger::Severity severity, const std::string& message) noexcept {
    const std::string text = std::string("HPS_TRT: ") + message;
    ILoggerFinder* finder = g_logger_finder.load();
    ILogger* logger = finder ? finder->findLogger() : nullptr;
    if (logger) {
        logger->log(severity, text.c_str());
    } else if (severity <= ILogger::Severity::kWARNING) {
        std::fprintf(stderr, "%s\n", text.c_str());
    }
}

// kCHAR attributes arrive with or without a trailing NUL (TensorRT's ONNX parser appends one,
// HugeCTR's samples add "\0" themselves): keep the bytes up to the first NUL.
std::string field_string(const PluginField& f) {
    const char* p = static_cast<const char*>(f.data);
    if (!p || f.length <= 0) return std::string();
    return std::string(p, strnlen(p, static_cast<size_t>(f.length)));
}

bool field_int(const PluginField& f, int32_t* out) {
    if (!f.data || f.length < 1) return false;
    if (f.type == PluginFieldType::kINT32) {
        *out = *static_cast<const int32_t*>(f.data);
        return true;
    }
    if (f.type == PluginFieldType::kINT64) {  // tolerated: some exporters widen ints
        const int64_t v = *static_cast<const int64_t*>(f.data);
        if (v < INT32_MIN || v > INT32_MAX) return false;
        *out = static_cast<int32_t>(v);
        return true;
    }
    return false;
}

class HpsPlugin final : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime {
public:
    HpsPlugin(std::string config, std::string model, int32_t table_id, int32_t emb_vec_size, hps_table* table)
        : config_(std::move(config)), model_(std::move(model)), table_id_(table_id), emb_vec_size_(emb_vec_size),
          table_(table) {
        ser_fields_.emplace_back("ps_config_file", config_.c_str(), PluginFieldType::kCHAR,
                                 static_cast<int32_t>(config_.size() + 1));
        ser_fields_.emplace_back("model_name", model_.c_str(), PluginFieldType::kCHAR,
                                 static_cast<int32_t>(model_.size() + 1));
        ser_fields_.emplace_back("table_id", &table_id_, PluginFieldType::kINT32, 1);
        ser_fields_.emplace_back("emb_vec_size", &emb_vec_size_, PluginFieldType::kINT32, 1);
        ser_fc_.nbFields = static_cast<int32_t>(ser_fields_.size());
        ser_fc_.fields = ser_fields_.data();
    }
    ~HpsPlugin() override { hps_close(table_); }
    HpsPlugin(const HpsPlugin&) = delete;
    HpsPlugin& operator=(const HpsPlugin&) = delete;

    // Opens (or shares, via the process-wide registry) the table on the current device and checks
    // that emb_vec_size matches it. Returns null and logs on failure.
    static HpsPlugin* create(const std::string& config, const std::string& model, int32_t table_id,
                             int32_t emb_vec_size) noexcept {
        try {
            int device = 0;
            if (cudaGetDevice(&device) != cudaSuccess) device = 0;
            hps_table* table = nullptr;
            if (hps_open(config.c_str(), model.c_str(), table_id, device, &table) != HPS_OK) {
                log(ILogger::Severity::kERROR, std::string("cannot open table: ") + hps_last_error());
                return nullptr;
            }
            hps_table_info_t info{};
            hps_table_info(table, &info);
            if (info.dim != emb_vec_size) {
                log(ILogger::Severity::kERROR,
                    "node attribute emb_vec_size = " + std::to_string(emb_vec_size) + " but table " +
                        std::to_string(table_id) + " of model '" + model + "' in " + config + " has vectors of " +
                        std::to_string(info.dim) + " floats; re-run the rewrite or fix embedding_vecsize_per_table");
                hps_close(table);
                return nullptr;
            }
            return new HpsPlugin(config, model, table_id, emb_vec_size, table);
        } catch (...) {
            log(ILogger::Severity::kERROR, "out of memory creating the plugin");
            return nullptr;
        }
    }

    // IPluginV3
    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
        switch (type) {
            case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
            case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
            case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }
    IPluginV3* clone() noexcept override { return create(config_, model_, table_id_, emb_vec_size_); }

    // IPluginV3OneCore
    const char* getPluginName() const noexcept override { return kPluginName; }
    const char* getPluginVersion() const noexcept override { return kPluginVersion; }
    const char* getPluginNamespace() const noexcept override { return ""; }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override { return 1; }
    int32_t configurePlugin(const DynamicPluginTensorDesc* in, int32_t nbInputs, const DynamicPluginTensorDesc*,
                            int32_t nbOutputs) noexcept override {
        return (in && nbInputs == 1 && nbOutputs == 1) ? 0 : -1;
    }
    int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, const DataType* inputTypes,
                               int32_t nbInputs) const noexcept override {
        if (nbOutputs != 1 || nbInputs != 1) return -1;
        if (inputTypes[0] != DataType::kINT32 && inputTypes[0] != DataType::kINT64) {
            log(ILogger::Severity::kERROR, "keys must be int32 or int64 (model '" + model_ + "', table " +
                                               std::to_string(table_id_) + ")");
            return -1;
        }
        outputTypes[0] = DataType::kFLOAT;
        return 0;
    }
    int32_t getOutputShapes(const DimsExprs* inputs, int32_t nbInputs, const DimsExprs*, int32_t, DimsExprs* outputs,
                            int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept override {
        if (nbInputs != 1 || nbOutputs != 1 || inputs[0].nbDims + 1 > Dims::MAX_DIMS) return -1;
        outputs[0].nbDims = inputs[0].nbDims + 1;
        for (int32_t i = 0; i < inputs[0].nbDims; ++i) outputs[0].d[i] = inputs[0].d[i];
        outputs[0].d[inputs[0].nbDims] = exprBuilder.constant(emb_vec_size_);
        return 0;
    }
    bool supportsFormatCombination(int32_t pos, const DynamicPluginTensorDesc* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override {
        if (nbInputs != 1 || nbOutputs != 1 || pos < 0 || pos > 1) return false;
        const PluginTensorDesc& d = inOut[pos].desc;
        if (d.format != TensorFormat::kLINEAR) return false;
        if (pos == 0) return d.type == DataType::kINT32 || d.type == DataType::kINT64;
        return d.type == DataType::kFLOAT;
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(const PluginTensorDesc* in, int32_t nbInputs, const PluginTensorDesc*,
                          int32_t nbOutputs) noexcept override {
        return (in && nbInputs == 1 && nbOutputs == 1) ? 0 : -1;
    }
    int32_t enqueue(const PluginTensorDesc* inputDesc, const PluginTensorDesc*, const void* const* inputs,
                    void* const* outputs, void*, cudaStream_t stream) noexcept override {
        int64_t n = 1;
        for (int32_t i = 0; i < inputDesc[0].dims.nbDims; ++i) n *= inputDesc[0].dims.d[i];
        const int32_t key_bits = inputDesc[0].type == DataType::kINT64 ? 64 : 32;
        if (hps_lookup(table_, inputs[0], key_bits, n, static_cast<float*>(outputs[0]), stream) != HPS_OK) {
            log(ILogger::Severity::kERROR, std::string("lookup failed: ") + hps_last_error());
            return -1;
        }
        return 0;
    }
    IPluginV3* attachToContext(IPluginResourceContext*) noexcept override { return clone(); }
    const PluginFieldCollection* getFieldsToSerialize() noexcept override { return &ser_fc_; }

private:
    std::string config_;
    std::string model_;
    int32_t table_id_;
    int32_t emb_vec_size_;
    hps_table* table_;
    std::vector<PluginField> ser_fields_;
    PluginFieldCollection ser_fc_{};
};

class HpsPluginCreator final : public IPluginCreatorV3One {
public:
    HpsPluginCreator() {
        fields_.emplace_back("ps_config_file", nullptr, PluginFieldType::kCHAR, 1);
        fields_.emplace_back("model_name", nullptr, PluginFieldType::kCHAR, 1);
        fields_.emplace_back("table_id", nullptr, PluginFieldType::kINT32, 1);
        fields_.emplace_back("emb_vec_size", nullptr, PluginFieldType::kINT32, 1);
        fc_.nbFields = static_cast<int32_t>(fields_.size());
        fc_.fields = fields_.data();
    }
    const char* getPluginName() const noexcept override { return kPluginName; }
    const char* getPluginVersion() const noexcept override { return kPluginVersion; }
    const char* getPluginNamespace() const noexcept override { return ""; }
    const PluginFieldCollection* getFieldNames() noexcept override { return &fc_; }

    IPluginV3* createPlugin(const char* name, const PluginFieldCollection* fc, TensorRTPhase) noexcept override {
        const std::string node = name ? name : "?";
        std::string config, model;
        int32_t table_id = -1, emb_vec_size = -1;
        bool seen[4] = {false, false, false, false};
        for (int32_t i = 0; fc && i < fc->nbFields; ++i) {
            const PluginField& f = fc->fields[i];
            if (!f.name) continue;
            if (!std::strcmp(f.name, "ps_config_file")) {
                config = field_string(f);
                seen[0] = true;
            } else if (!std::strcmp(f.name, "model_name")) {
                model = field_string(f);
                seen[1] = true;
            } else if (!std::strcmp(f.name, "table_id")) {
                seen[2] = field_int(f, &table_id);
            } else if (!std::strcmp(f.name, "emb_vec_size")) {
                seen[3] = field_int(f, &emb_vec_size);
            }
        }
        static const char* const names[4] = {"ps_config_file (string)", "model_name (string)", "table_id (int32)",
                                             "emb_vec_size (int32)"};
        for (int k = 0; k < 4; ++k)
            if (!seen[k]) {
                log(ILogger::Severity::kERROR, "node '" + node + "': attribute " + names[k] +
                                                   " is missing or has the wrong type; HPS_TRT needs ps_config_file, "
                                                   "model_name, table_id, emb_vec_size");
                return nullptr;
            }
        if (config.empty() || model.empty() || table_id < 0 || emb_vec_size <= 0) {
            log(ILogger::Severity::kERROR, "node '" + node + "': empty ps_config_file/model_name, negative table_id "
                                               "or non-positive emb_vec_size");
            return nullptr;
        }
        return HpsPlugin::create(config, model, table_id, emb_vec_size);
    }

private:
    std::vector<PluginField> fields_;
    PluginFieldCollection fc_{};
};

HpsPluginCreator& creator() {
    static HpsPluginCreator instance;
    return instance;
}

// LD_PRELOAD path: register with libnvinfer's global registry at load time.
__attribute__((constructor)) void auto_register() {
    const char* force = std::getenv("HPS_TRT_AUTOREGISTER");
    const char* preload = std::getenv("LD_PRELOAD");
    const bool wanted = force ? std::strcmp(force, "0") != 0 : (preload && std::strstr(preload, "hps_plugin"));
    if (!wanted) return;
    const std::string soname = "libnvinfer.so." + std::to_string(NV_TENSORRT_MAJOR);
    void* nvinfer = dlopen(soname.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (!nvinfer) nvinfer = dlopen("libnvinfer.so", RTLD_NOW | RTLD_GLOBAL);
    using GetRegistry = IPluginRegistry* (*)();
    auto get = nvinfer ? reinterpret_cast<GetRegistry>(dlsym(nvinfer, "getPluginRegistry")) : nullptr;
    if (!get) {
        std::fprintf(stderr, "HPS_TRT: %s not loadable (%s); the plugin is not registered\n", soname.c_str(), dlerror());
        return;
    }
    IPluginRegistry* registry = get();
    if (!registry || !registry->registerCreator(creator(), "")) {
        std::fprintf(stderr, "HPS_TRT: registering the plugin creator failed (already registered?)\n");
    }
}

}  // namespace
}  // namespace hps_trt

// Entry points of a TensorRT plugin library (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins).
extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(
    int32_t& nbCreators) {
    static nvinfer1::IPluginCreatorInterface* const list[] = {&hps_trt::creator()};
    nbCreators = 1;
    return list;
}

extern "C" __attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
    if (finder) hps_trt::g_logger_finder.store(finder);
}
