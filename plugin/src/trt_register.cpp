// trt_register.cpp: how the HPS_TRT creator reaches a TensorRT plugin registry, without linking
// TensorRT (so the Python binding loads this library where TensorRT is absent).
//
//   * Plain dlopen (ctypes.CDLL after `import tensorrt` in HugeCTR's notebooks, trtexec
//     --staticPlugins): at load time, register with the TensorRT core library already in the
//     process, as HugeCTR's plugin does (hps_trt/hps_plugin/hps_plugin.cpp, REGISTER_TENSORRT_PLUGIN).
//     Found with dlopen(RTLD_NOLOAD): a process without TensorRT gets nothing loaded and no message.
//   * LD_PRELOAD into Triton (HugeCTR's documented launch line) or HPS_TRT_AUTOREGISTER=1 (what
//     deploy's build_engine.sh sets: polygraphy --plugins dlopens before importing TensorRT):
//     TensorRT is not loaded yet when the library starts, so libnvinfer.so.<major> is loaded here.
//     HPS_TRT_AUTOREGISTER=0 turns load-time registration off.
//   * IPluginRegistry::loadLibrary / trtexec --dynamicPlugins: exported getCreators and
//     setLoggerFinder. loadLibrary registers what getCreators returns, so getCreators first takes
//     back a load-time registration: the creator is never registered twice.
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "trt_plugin.hpp"

namespace hps_trt {
namespace {

using namespace nvinfer1;

// IPluginRegistry's virtual table lost its IPluginV2 methods in TensorRT 11, so a registry can
// only be called through headers of the same layout. TensorRT-RTX 1.x has the 11 layout (probed on
// 1.7.1: loadLibrary and getAllCreators answer in the 11 slots).
#if defined(TRT_MAJOR_RTX) || NV_TENSORRT_MAJOR >= 11
constexpr int kOurLayout = 11;
#else
constexpr int kOurLayout = 10;
#endif

struct CoreLibrary {
    const char* soname;
    int registry_layout;
};
constexpr CoreLibrary kCoreLibraries[] = {
    {"libnvinfer.so.11", 11}, {"libnvinfer.so.10", 10}, {"libtensorrt_rtx.so.1", 11}};

std::mutex g_mutex;
IPluginRegistry* g_registered_with = nullptr;  // set by a load-time registration

bool env_set(const char* name, const char* value) {
    const char* v = std::getenv(name);
    return v && !std::strcmp(v, value);
}

// The TensorRT core library in this process, or (when load_if_absent) libnvinfer.so.<major>
// loaded now. Null when there is none.
void* core_library(bool load_if_absent, const CoreLibrary** which) {
    for (const CoreLibrary& lib : kCoreLibraries) {
        if (void* handle = dlopen(lib.soname, RTLD_NOW | RTLD_NOLOAD)) {
            *which = &lib;
            return handle;
        }
    }
    if (!load_if_absent) return nullptr;
    for (const CoreLibrary& lib : kCoreLibraries) {
        if (lib.registry_layout != kOurLayout || std::strncmp(lib.soname, "libnvinfer", 10) != 0) continue;
        if (void* handle = dlopen(lib.soname, RTLD_NOW | RTLD_GLOBAL)) {
            *which = &lib;
            return handle;
        }
        std::fprintf(stderr, "HPS_TRT: %s not loadable (%s); the plugin is not registered\n", lib.soname, dlerror());
    }
    return nullptr;
}

__attribute__((constructor)) void register_at_load() {
    if (env_set("HPS_TRT_AUTOREGISTER", "0")) return;
    const char* preload = std::getenv("LD_PRELOAD");
    const bool load_tensorrt = env_set("HPS_TRT_AUTOREGISTER", "1") || (preload && std::strstr(preload, "hps_plugin"));
    const CoreLibrary* lib = nullptr;
    void* handle = core_library(load_tensorrt, &lib);
    if (!handle) return;  // no TensorRT in this process (the Python binding): nothing to register with
    if (lib->registry_layout != kOurLayout) {
        std::fprintf(stderr,
                     "HPS_TRT: %s is loaded but this plugin was built against TensorRT %d headers; not registered "
                     "(rebuild it with -DTENSORRT_ROOT=<TensorRT matching %s>)\n",
                     lib->soname, NV_TENSORRT_MAJOR, lib->soname);
        return;
    }
    using GetRegistry = IPluginRegistry* (*)();
    auto get = reinterpret_cast<GetRegistry>(dlsym(handle, "getPluginRegistry"));
    IPluginRegistry* registry = get ? get() : nullptr;
    if (!registry) {
        std::fprintf(stderr, "HPS_TRT: %s has no plugin registry; the plugin is not registered\n", lib->soname);
        return;
    }
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!registry->registerCreator(creator(), "")) {
        std::fprintf(stderr, "HPS_TRT: %s refused the HPS_TRT creator (another HPS_TRT version 1 registered?)\n",
                     lib->soname);
        return;
    }
    g_registered_with = registry;
}

}  // namespace
}  // namespace hps_trt

// Entry points of a TensorRT plugin library (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins).
extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(
    int32_t& nbCreators) {
    {
        std::lock_guard<std::mutex> lock(hps_trt::g_mutex);
        if (hps_trt::g_registered_with) {
            hps_trt::g_registered_with->deregisterCreator(hps_trt::creator());
            hps_trt::g_registered_with = nullptr;
        }
    }
    static nvinfer1::IPluginCreatorInterface* const list[] = {&hps_trt::creator()};
    nbCreators = 1;
    return list;
}

extern "C" __attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
    hps_trt::set_logger_finder(finder);
}
