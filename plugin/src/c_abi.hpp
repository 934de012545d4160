// c_abi.hpp: how the two C ABIs (hps.h in libhps_plugin, hps_storage.h in libhps_storage) turn
// C++ exceptions into an hps_status and a one-line last error.
#pragma once

#include <new>
#include <string>

#include "host_table.hpp"
#include "hps_plugin/hps.h"

namespace hps::c_abi {
// Internal linkage on purpose: each library's c_api.cpp gets its own last error, so
// hps_last_error() and hps_storage_last_error() answer for their own library only.
namespace {

thread_local std::string g_last_error;

inline hps_status fail(hps_status code, const std::string& message) {
    g_last_error = message;
    return code;
}

template <typename F>
hps_status guarded(F&& f) noexcept {
    try {
        g_last_error.clear();
        f();
        return HPS_OK;
    } catch (const hps::Error& e) {
        return fail(e.code(), e.what());
    } catch (const std::bad_alloc&) {
        return fail(HPS_ERR_OUT_OF_MEMORY, "host memory allocation failed");
    } catch (const std::exception& e) {
        return fail(HPS_ERR_INTERNAL, std::string("internal error: ") + e.what());
    } catch (...) {
        return fail(HPS_ERR_INTERNAL, "internal error (unknown exception)");
    }
}

}  // namespace
}  // namespace hps::c_abi
