// fake_registry.cpp: a stand-in TensorRT core library for test_registration. Built as
// libnvinfer.so.<N> (its SONAME is what the plugin looks for with dlopen(RTLD_NOLOAD)); exports
// getPluginRegistry like libnvinfer, and its registry keeps what it is given, refuses duplicates
// (name, version, namespace) and implements loadLibrary as TensorRT documents it: dlopen, then
// register what getCreators returns and hand setLoggerFinder a finder.
#include <NvInferRuntime.h>

#include <dlfcn.h>

#include <cstring>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace {

std::string key_of(IPluginCreatorInterface const& c, char const* ns) {
    auto const& v3 = static_cast<IPluginCreatorV3One const&>(c);
    return std::string(v3.getPluginName()) + "/" + v3.getPluginVersion() + "/" + (ns ? ns : "");
}

class FakeRegistry final : public IPluginRegistry {
public:
    ~FakeRegistry() noexcept override = default;

#if NV_TENSORRT_MAJOR < 11 && !defined(TRT_MAJOR_RTX)
    bool registerCreator(IPluginCreator&, AsciiChar const* const) noexcept override { return false; }
    IPluginCreator* const* getPluginCreatorList(int32_t* const n) const noexcept override {
        *n = 0;
        return nullptr;
    }
    IPluginCreator* getPluginCreator(AsciiChar const* const, AsciiChar const* const,
                                     AsciiChar const* const) noexcept override {
        return nullptr;
    }
    bool deregisterCreator(IPluginCreator const&) noexcept override { return false; }
#endif
    void setErrorRecorder(IErrorRecorder* const) noexcept override {}
    IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
    bool isParentSearchEnabled() const override { return false; }
    void setParentSearchEnabled(bool const) override {}

    PluginLibraryHandle loadLibrary(AsciiChar const* path) noexcept override {
        void* handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!handle) return nullptr;
        using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
        using SetLoggerFinder = void (*)(ILoggerFinder*);
        auto get = reinterpret_cast<GetCreators>(dlsym(handle, "getCreators"));
        if (auto set = reinterpret_cast<SetLoggerFinder>(dlsym(handle, "setLoggerFinder"))) set(nullptr);
        if (!get) return nullptr;
        int32_t n = 0;
        IPluginCreatorInterface* const* list = get(n);
        for (int32_t i = 0; i < n; ++i)
            if (!registerCreator(*list[i], "")) return nullptr;  // TensorRT fails the load on a duplicate
        libraries_.push_back({handle, std::vector<IPluginCreatorInterface*>(list, list + n)});
        return handle;
    }
    void deregisterLibrary(PluginLibraryHandle handle) noexcept override {
        for (auto it = libraries_.begin(); it != libraries_.end(); ++it)
            if (it->handle == handle) {
                for (auto* c : it->creators) deregisterCreator(*c);
                libraries_.erase(it);
                return;
            }
    }
    bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const ns) noexcept override {
        ++register_calls_;
        for (auto const& e : entries_)
            if (e.key == key_of(creator, ns)) return false;
        entries_.push_back({&creator, key_of(creator, ns)});
        list_.push_back(&creator);
        return true;
    }
    IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override {
        *n = static_cast<int32_t>(list_.size());
        return list_.data();
    }
    IPluginCreatorInterface* getCreator(AsciiChar const* const name, AsciiChar const* const version,
                                        AsciiChar const* const ns) noexcept override {
        for (auto const& e : entries_)
            if (e.key == std::string(name) + "/" + version + "/" + (ns ? ns : "")) return e.creator;
        return nullptr;
    }
    bool deregisterCreator(IPluginCreatorInterface const& creator) noexcept override {
        for (size_t i = 0; i < entries_.size(); ++i)
            if (entries_[i].creator == &creator) {
                entries_.erase(entries_.begin() + static_cast<long>(i));
                list_.erase(list_.begin() + static_cast<long>(i));
                return true;
            }
        return false;
    }
    IPluginResource* acquirePluginResource(AsciiChar const*, IPluginResource*) noexcept override { return nullptr; }
    int32_t releasePluginResource(AsciiChar const*) noexcept override { return -1; }
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const n) noexcept override {
        return getAllCreators(n);
    }

    int32_t register_calls() const { return register_calls_; }

private:
    struct Entry {
        IPluginCreatorInterface* creator;
        std::string key;
    };
    struct Library {
        void* handle;
        std::vector<IPluginCreatorInterface*> creators;
    };
    std::vector<Entry> entries_;
    std::vector<IPluginCreatorInterface*> list_;
    std::vector<Library> libraries_;
    int32_t register_calls_ = 0;
};

FakeRegistry& registry() {
    static FakeRegistry* r = new FakeRegistry();  // leaked: creators may outlive static destruction
    return *r;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) IPluginRegistry* getPluginRegistry() noexcept { return &registry(); }

// Test-only: how often registerCreator was called (a refused duplicate counts too).
extern "C" __attribute__((visibility("default"))) int32_t fakeRegistryRegisterCalls() noexcept {
    return registry().register_calls();
}
