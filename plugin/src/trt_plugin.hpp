// trt_plugin.hpp: what the TensorRT glue's two halves share: the HPS_TRT creator (trt_plugin.cpp)
// and the ways it reaches a plugin registry (trt_register.cpp). Internal; not installed.
#pragma once

#include <NvInferRuntime.h>

#include <string>

namespace hps_trt {

// The one creator of this library: HPS_TRT, version "1", empty namespace.
nvinfer1::IPluginCreatorV3One& creator();

// Messages go to the logger TensorRT handed over (setLoggerFinder); without one, warnings and
// errors go to stderr and the rest is dropped.
void set_logger_finder(nvinfer1::ILoggerFinder* finder) noexcept;
void log(nvinfer1::ILogger::Severity severity, const std::string& message) noexcept;

}  // namespace hps_trt
