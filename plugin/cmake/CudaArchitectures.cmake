# Which GPUs the fatbin covers, checked before project(): CMake's own compiler test would otherwise fail on
# an architecture nvcc no longer knows, with "Unsupported gpu architecture" inside a page of try-compile log.
#
# Default: SASS for T4 (75), A100 (80), A10/A40 (86), L4/L40 (89), H100/H200 (90), B200/GB200 (100),
# RTX PRO 6000 / RTX 50 (120), plus compute_120 PTX that newer GPUs JIT-compile. Override with
# -DCMAKE_CUDA_ARCHITECTURES=... ("90" builds faster). V100 (70) needs a CUDA 12 nvcc: CUDA 13 dropped
# every architecture below 75 (README "GPUs and CUDA toolkits").
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES "75-real;80-real;86-real;89-real;90-real;100-real;120" CACHE STRING
      "CUDA architectures of the fatbin (README \"GPUs and CUDA toolkits\")")
endif()

# The nvcc CMake will pick: CMAKE_CUDA_COMPILER, else $CUDACXX, else nvcc on PATH or in /usr/local/cuda.
set(_hps_nvcc "${CMAKE_CUDA_COMPILER}")
if(NOT _hps_nvcc)
  set(_hps_nvcc "$ENV{CUDACXX}")
endif()
if(NOT _hps_nvcc)
  find_program(HPS_NVCC_PROBE nvcc PATHS /usr/local/cuda/bin)
  set(_hps_nvcc "${HPS_NVCC_PROBE}")
endif()
set(_hps_cuda_major "")
if(_hps_nvcc)
  execute_process(COMMAND "${_hps_nvcc}" --version OUTPUT_VARIABLE _hps_nvcc_version ERROR_QUIET)
  if(_hps_nvcc_version MATCHES "release ([0-9]+)\\.([0-9]+)")
    set(_hps_cuda_major "${CMAKE_MATCH_1}")
    set(_hps_cuda_version "${CMAKE_MATCH_1}.${CMAKE_MATCH_2}")
  endif()
endif()

foreach(_hps_arch IN LISTS CMAKE_CUDA_ARCHITECTURES)
  string(REGEX MATCH "^[0-9]+" _hps_number "${_hps_arch}")
  if(NOT _hps_number)
    continue()  # "native", "all", "all-major": CMake resolves them
  endif()
  if(_hps_number LESS 70)
    message(FATAL_ERROR "CUDA architecture ${_hps_arch} is not a target of hps_plugin: it is built and checked for "
      "70 (V100, the oldest GPU HugeCTR's HPS served) and newer.")
  endif()
  if(_hps_number LESS 75 AND _hps_cuda_major AND _hps_cuda_major GREATER_EQUAL 13)
    message(FATAL_ERROR "CUDA architecture ${_hps_arch} needs a CUDA 12 nvcc: CUDA ${_hps_cuda_version} "
      "(${_hps_nvcc}) targets 75 and newer only. For V100 configure a fresh build folder with "
      "-DCMAKE_CUDA_COMPILER=<CUDA 12.x>/bin/nvcc (or: hps-surgeon build-native --cuda-arch 70 --cuda-root "
      "<CUDA 12.x>), or drop ${_hps_arch} from CMAKE_CUDA_ARCHITECTURES.")
  endif()
endforeach()
