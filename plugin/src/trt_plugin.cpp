// trt_plugin.cpp: TensorRT glue. IPluginV3 (OneCore/OneBuild/OneRuntime) named HPS_TRT, version
// "1", with HugeCTR's fields (ps_config_file, model_name: kCHAR; table_id, emb_vec_size: kINT32),
// over the lookup core (hps.h). Built only when NvInfer.h is found (-DTENSORRT_ROOT=...).
//
// Differences from HugeCTR's IPluginV2DynamicExt plugin (hps_trt/hps_plugin): keys may be int32 or
// int64 of any rank; output = keys' shape + [emb_vec_size], float32.
//
// Phases. Everything the builder asks (output types and shapes, formats, fields to serialize)
// follows from the node's fields, so the build phase touches no GPU: createPlugin(kBUILD) checks
// the fields against the HPS config and the table files on the host, and the table is opened in
// the runtime phase (createPlugin(kRUNTIME), attachToContext) or by the first enqueue (TensorRT may
// time a build-phase plugin on a GPU machine). This is what lets TensorRT-RTX build engines ahead
// of time on a machine without a GPU. Registration: trt_register.cpp.
#include "trt_plugin.hpp"

#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "hps_plugin/hps.h"
#include "host_table.hpp"

namespace hps_trt {

using namespace nvinfer1;

namespace {

constexpr char kPluginName[] = "HPS_TRT";
constexpr char kPluginVersion[] = "1";

std::atomic<ILoggerFinder*> g_logger_finder{nullptr};

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

// The four HugeCTR fields of one HPS_TRT node.
struct Fields {
    std::string config;
    std::string model;
    int32_t table_id = -1;
    int32_t emb_vec_size = -1;

    std::string table() const { return "table " + std::to_string(table_id) + " of model '" + model + "' in " + config; }
};

// Build phase: the config names the model and table, agrees on emb_vec_size, and the table files
// exist with consistent sizes. Host only (no CUDA call). Returns "" or what is wrong.
std::string check_on_host(const Fields& f) noexcept {
    try {
        const hps::TableSpec spec = hps::parse_config(f.config, f.model, f.table_id);
        if (spec.emb_vec_size != f.emb_vec_size)
            return "node attribute emb_vec_size = " + std::to_string(f.emb_vec_size) + " but " + f.table() +
                   " has vectors of " + std::to_string(spec.emb_vec_size) +
                   " floats; re-run the rewrite or fix embedding_vecsize_per_table";
        hps::inspect_table_files(spec);
        return std::string();
    } catch (const std::exception& e) {
        return e.what();
    } catch (...) {
        return "unknown error reading " + f.config;
    }
}

class HpsPlugin final : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime {
public:
    HpsPlugin(std::string node, Fields fields) : node_(std::move(node)), fields_(std::move(fields)) {
        ser_fields_.emplace_back("ps_config_file", fields_.config.c_str(), PluginFieldType::kCHAR,
                                 static_cast<int32_t>(fields_.config.size() + 1));
        ser_fields_.emplace_back("model_name", fields_.model.c_str(), PluginFieldType::kCHAR,
                                 static_cast<int32_t>(fields_.model.size() + 1));
        ser_fields_.emplace_back("table_id", &fields_.table_id, PluginFieldType::kINT32, 1);
        ser_fields_.emplace_back("emb_vec_size", &fields_.emb_vec_size, PluginFieldType::kINT32, 1);
        ser_fc_.nbFields = static_cast<int32_t>(ser_fields_.size());
        ser_fc_.fields = ser_fields_.data();
    }
    ~HpsPlugin() override { hps_close(table_.load()); }
    HpsPlugin(const HpsPlugin&) = delete;
    HpsPlugin& operator=(const HpsPlugin&) = delete;

    // Opens (or shares, via the process-wide registry) the table on the current device and checks
    // that emb_vec_size matches it. Logs and returns false on failure.
    bool open() noexcept {
        std::lock_guard<std::mutex> lock(open_mutex_);
        if (table_.load()) return true;
        int device = 0;
        if (cudaGetDevice(&device) != cudaSuccess) device = 0;
        hps_table* table = nullptr;
        if (hps_open(fields_.config.c_str(), fields_.model.c_str(), fields_.table_id, device, &table) != HPS_OK) {
            log(ILogger::Severity::kERROR, "node '" + node_ + "': cannot open the table: " + hps_last_error());
            return false;
        }
        hps_table_info_t info{};
        hps_table_info(table, &info);
        if (info.dim != fields_.emb_vec_size) {
            log(ILogger::Severity::kERROR, "node '" + node_ + "': node attribute emb_vec_size = " +
                                               std::to_string(fields_.emb_vec_size) + " but " + fields_.table() +
                                               " has vectors of " + std::to_string(info.dim) +
                                               " floats; re-run the rewrite or fix embedding_vecsize_per_table");
            hps_close(table);
            return false;
        }
        table_.store(table);
        return true;
    }

    // IPluginV3
    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
        trace("getCapabilityInterface");
        switch (type) {
            case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
            case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
            case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }
    // A clone of an opened plugin shares its table; a build-phase clone stays GPU-free.
    IPluginV3* clone() noexcept override {
        trace("clone");
        try {
            auto* copy = new HpsPlugin(node_, fields_);
            if (table_.load() && !copy->open()) {
                delete copy;
                return nullptr;
            }
            return copy;
        } catch (...) {
            log(ILogger::Severity::kERROR, "node '" + node_ + "': out of memory cloning the plugin");
            return nullptr;
        }
    }

    // IPluginV3OneCore
    const char* getPluginName() const noexcept override { return kPluginName; }
    const char* getPluginVersion() const noexcept override { return kPluginVersion; }
    const char* getPluginNamespace() const noexcept override { return ""; }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override {
        trace("getNbOutputs");
        return 1;
    }
    int32_t configurePlugin(const DynamicPluginTensorDesc* in, int32_t nbInputs, const DynamicPluginTensorDesc*,
                            int32_t nbOutputs) noexcept override {
        trace("configurePlugin");
        return (in && nbInputs == 1 && nbOutputs == 1) ? 0 : -1;
    }
    int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, const DataType* inputTypes,
                               int32_t nbInputs) const noexcept override {
        trace("getOutputDataTypes");
        if (nbOutputs != 1 || nbInputs != 1) return -1;
        if (inputTypes[0] != DataType::kINT32 && inputTypes[0] != DataType::kINT64) {
            log(ILogger::Severity::kERROR, "node '" + node_ + "': keys must be int32 or int64 (" + fields_.table() + ")");
            return -1;
        }
        outputTypes[0] = DataType::kFLOAT;
        return 0;
    }
    int32_t getOutputShapes(const DimsExprs* inputs, int32_t nbInputs, const DimsExprs*, int32_t, DimsExprs* outputs,
                            int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept override {
        trace("getOutputShapes");
        if (nbInputs != 1 || nbOutputs != 1 || inputs[0].nbDims + 1 > Dims::MAX_DIMS) return -1;
        outputs[0].nbDims = inputs[0].nbDims + 1;
        for (int32_t i = 0; i < inputs[0].nbDims; ++i) outputs[0].d[i] = inputs[0].d[i];
        outputs[0].d[inputs[0].nbDims] = exprBuilder.constant(fields_.emb_vec_size);
        return 0;
    }
    bool supportsFormatCombination(int32_t pos, const DynamicPluginTensorDesc* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override {
        trace("supportsFormatCombination");
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
        hps_table* table = table_.load();
        if (!table) {  // a build-phase plugin that TensorRT times on a GPU machine
            if (!open()) return -1;
            table = table_.load();
        }
        int64_t n = 1;
        for (int32_t i = 0; i < inputDesc[0].dims.nbDims; ++i) n *= inputDesc[0].dims.d[i];
        const int32_t key_bits = inputDesc[0].type == DataType::kINT64 ? 64 : 32;
        if (hps_lookup(table, inputs[0], key_bits, n, static_cast<float*>(outputs[0]), stream) != HPS_OK) {
            log(ILogger::Severity::kERROR, "node '" + node_ + "': lookup failed: " + hps_last_error());
            return -1;
        }
        return 0;
    }
    // Runtime phase: open now, so a context whose table cannot load fails at creation, not mid-inference.
    IPluginV3* attachToContext(IPluginResourceContext*) noexcept override {
        auto* copy = static_cast<HpsPlugin*>(clone());
        if (copy && !copy->open()) {
            delete copy;
            return nullptr;
        }
        return copy;
    }
    const PluginFieldCollection* getFieldsToSerialize() noexcept override {
        trace("getFieldsToSerialize");
        return &ser_fc_;
    }

private:
    // One verbose line per build-time call: shows which of our methods a builder really called.
    void trace(const char* method) const noexcept {
        log(ILogger::Severity::kVERBOSE, "node '" + node_ + "': " + method);
    }

    std::string node_;
    Fields fields_;
    std::mutex open_mutex_;
    std::atomic<hps_table*> table_{nullptr};
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

    IPluginV3* createPlugin(const char* name, const PluginFieldCollection* fc, TensorRTPhase phase) noexcept override {
        try {
            const std::string node = name ? name : "?";
            Fields fields;
            if (!parse(node, fc, &fields)) return nullptr;
            if (phase == TensorRTPhase::kBUILD) {
                const std::string problem = check_on_host(fields);
                if (!problem.empty()) {
                    log(ILogger::Severity::kERROR, "node '" + node + "': " + problem);
                    return nullptr;
                }
                log(ILogger::Severity::kVERBOSE, "node '" + node + "': created for the build phase (" +
                                                     fields.table() + ", emb_vec_size " +
                                                     std::to_string(fields.emb_vec_size) + "), no GPU used");
                return new HpsPlugin(node, fields);
            }
            auto* plugin = new HpsPlugin(node, fields);
            if (!plugin->open()) {
                delete plugin;
                return nullptr;
            }
            return plugin;
        } catch (...) {
            log(ILogger::Severity::kERROR, "out of memory creating the plugin");
            return nullptr;
        }
    }

private:
    static bool parse(const std::string& node, const PluginFieldCollection* fc, Fields* out) {
        bool seen[4] = {false, false, false, false};
        for (int32_t i = 0; fc && i < fc->nbFields; ++i) {
            const PluginField& f = fc->fields[i];
            if (!f.name) continue;
            if (!std::strcmp(f.name, "ps_config_file")) {
                out->config = field_string(f);
                seen[0] = true;
            } else if (!std::strcmp(f.name, "model_name")) {
                out->model = field_string(f);
                seen[1] = true;
            } else if (!std::strcmp(f.name, "table_id")) {
                seen[2] = field_int(f, &out->table_id);
            } else if (!std::strcmp(f.name, "emb_vec_size")) {
                seen[3] = field_int(f, &out->emb_vec_size);
            }
        }
        static const char* const names[4] = {"ps_config_file (string)", "model_name (string)", "table_id (int32)",
                                             "emb_vec_size (int32)"};
        for (int k = 0; k < 4; ++k)
            if (!seen[k]) {
                log(ILogger::Severity::kERROR, "node '" + node + "': attribute " + names[k] +
                                                   " is missing or has the wrong type; HPS_TRT needs ps_config_file, "
                                                   "model_name, table_id, emb_vec_size");
                return false;
            }
        if (out->config.empty() || out->model.empty() || out->table_id < 0 || out->emb_vec_size <= 0) {
            log(ILogger::Severity::kERROR, "node '" + node + "': empty ps_config_file/model_name, negative table_id "
                                               "or non-positive emb_vec_size");
            return false;
        }
        return true;
    }

    std::vector<PluginField> fields_;
    PluginFieldCollection fc_{};
};

}  // namespace

IPluginCreatorV3One& creator() {
    static HpsPluginCreator instance;
    return instance;
}

void set_logger_finder(ILoggerFinder* finder) noexcept {
    if (finder) g_logger_finder.store(finder);
}

void log(ILogger::Severity severity, const std::string& message) noexcept {
    try {
        const std::string text = "HPS_TRT: " + message;
        ILoggerFinder* finder = g_logger_finder.load();
        ILogger* logger = finder ? finder->findLogger() : nullptr;
        if (logger) {
            logger->log(severity, text.c_str());
        } else if (severity <= ILogger::Severity::kWARNING) {
            std::fprintf(stderr, "%s\n", text.c_str());
        }
    } catch (...) {  // out of memory building the message: nothing better to do
    }
}

}  // namespace hps_trt
