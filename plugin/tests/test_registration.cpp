// test_registration.cpp: how libhps_plugin.so reaches a plugin registry (trt_register.cpp), against
// the stand-in core library (fake_registry.cpp). One scenario per process, because registration
// happens once, when the library is loaded:
//
//   test_registration SCENARIO PLUGIN_LIB [CORE_LIB]
//     no-tensorrt    plugin loaded in a process without TensorRT: nothing loaded, nothing said
//     dlopen         CORE_LIB loaded first, then the plugin with a plain dlopen: registered once;
//                    then loadLibrary on the same plugin: still once; deregisterLibrary: gone
//     load-library   only loadLibrary (the constructor runs inside it): registered once
//     wrong-layout   CORE_LIB has another registry layout than our headers: not called, one line
//     preload        HPS_TRT_AUTOREGISTER=1 and no TensorRT loaded: the plugin loads libnvinfer
//                    itself (LD_LIBRARY_PATH points at the stand-in), registered once
//     off            HPS_TRT_AUTOREGISTER=0 with CORE_LIB loaded: not registered
// Needs no GPU: loading the plugin and registering its creator touch no CUDA.
#include <NvInferRuntime.h>

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "check.hpp"

using namespace nvinfer1;

namespace {

// Runs f with stderr sent to a file; returns what it wrote.
template <typename F>
std::string stderr_of(F&& f) {
    char path[] = "/tmp/hps_registration_XXXXXX";
    const int fd = mkstemp(path);
    std::fflush(stderr);
    const int saved = dup(2);
    dup2(fd, 2);
    f();
    std::fflush(stderr);
    dup2(saved, 2);
    close(saved);
    close(fd);
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    unlink(path);
    return text.str();
}

struct Core {
    IPluginRegistry* registry = nullptr;
    int32_t (*register_calls)() = nullptr;
};

Core core_from(void* handle) {
    Core core;
    auto get = reinterpret_cast<IPluginRegistry* (*)()>(dlsym(handle, "getPluginRegistry"));
    core.registry = get ? get() : nullptr;
    core.register_calls = reinterpret_cast<int32_t (*)()>(dlsym(handle, "fakeRegistryRegisterCalls"));
    CHECK(core.registry && core.register_calls);
    return core;
}

// How many HPS_TRT creators the registry holds (registerCreator itself refuses duplicates, so the
// calls counter is what proves "never twice").
int hps_creators(IPluginRegistry* registry) {
    int32_t n = 0;
    IPluginCreatorInterface* const* list = registry->getAllCreators(&n);
    int found = 0;
    for (int32_t i = 0; i < n; ++i)
        if (!std::strcmp(static_cast<IPluginCreatorV3One*>(list[i])->getPluginName(), "HPS_TRT")) ++found;
    return found;
}

void* load(const char* path, int flags = RTLD_NOW | RTLD_LOCAL) {
    void* handle = dlopen(path, flags);
    if (!handle) std::fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
    CHECK(handle != nullptr);
    return handle;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s SCENARIO PLUGIN_LIB [CORE_LIB]\n", argv[0]);
        return 2;
    }
    const std::string scenario = argv[1];
    const char* plugin = argv[2];
    const char* core_lib = argc > 3 ? argv[3] : nullptr;

    if (scenario == "no-tensorrt") {
        const std::string said = stderr_of([&] { load(plugin); });
        CHECK(said.empty());
        for (const char* name : {"libnvinfer.so.10", "libnvinfer.so.11", "libtensorrt_rtx.so.1"})
            CHECK(dlopen(name, RTLD_NOW | RTLD_NOLOAD) == nullptr);
    } else if (scenario == "dlopen") {
        Core core = core_from(load(core_lib, RTLD_NOW | RTLD_GLOBAL));
        const std::string said = stderr_of([&] { load(plugin); });
        CHECK(said.empty());
        CHECK(hps_creators(core.registry) == 1);
        CHECK(core.register_calls() == 1);
        void* lib = core.registry->loadLibrary(plugin);
        CHECK(lib != nullptr);
        CHECK(hps_creators(core.registry) == 1);
        CHECK(core.register_calls() == 2);  // taken back by getCreators, registered by loadLibrary
        core.registry->deregisterLibrary(lib);
        CHECK(hps_creators(core.registry) == 0);
    } else if (scenario == "load-library") {
        Core core = core_from(load(core_lib, RTLD_NOW | RTLD_GLOBAL));
        CHECK(core.registry->loadLibrary(plugin) != nullptr);
        CHECK(hps_creators(core.registry) == 1);
    } else if (scenario == "wrong-layout") {
        Core core = core_from(load(core_lib, RTLD_NOW | RTLD_GLOBAL));
        const std::string said = stderr_of([&] { load(plugin); });
        CHECK(core.register_calls() == 0);
        CHECK(said.find("built against TensorRT") != std::string::npos);
        CHECK(std::count(said.begin(), said.end(), '\n') == 1);
        std::printf("the plugin said: %s", said.c_str());
    } else if (scenario == "preload") {
        CHECK(dlopen("libnvinfer.so.11", RTLD_NOW | RTLD_NOLOAD) == nullptr &&
              dlopen("libnvinfer.so.10", RTLD_NOW | RTLD_NOLOAD) == nullptr);
        load(plugin);
        void* core = dlopen(NV_TENSORRT_MAJOR >= 11 ? "libnvinfer.so.11" : "libnvinfer.so.10", RTLD_NOW | RTLD_NOLOAD);
        CHECK(core != nullptr);
        if (core) CHECK(hps_creators(core_from(core).registry) == 1);
    } else if (scenario == "off") {
        Core core = core_from(load(core_lib, RTLD_NOW | RTLD_GLOBAL));
        load(plugin);
        CHECK(core.register_calls() == 0);
    } else {
        std::fprintf(stderr, "unknown scenario %s\n", scenario.c_str());
        return 2;
    }
    std::printf("%s: registration scenario %s, %d failure(s)\n", g_failures ? "FAILED" : "OK", scenario.c_str(),
                g_failures);
    return g_failures ? 1 : 0;
}
